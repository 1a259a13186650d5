"""Real processes on loopback: twistd running the node, coturn's clients.

Waits are tied to events (a log line, a process exit) and bounded; nothing
sleeps for a fixed time.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).parents[2]
#: Child processes run the checkout's code (and find its plugin), not whatever
#: version happens to be installed; the installed plugin has tests of its own.
CHECKOUT_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def program(name: str) -> str:
    found = BIN / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed; scripts/test installs it")
    return path


class NodeProcess:
    """``twistd -n zentalk-relay`` in its own working directory."""

    READY = re.compile(r"node [0-9a-f]{16} running")

    def __init__(self, workdir: Path, *args: str, env: dict | None = None) -> None:
        self.env = {**CHECKOUT_ENV, **(env or {})}
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.args = args
        self.output: list[str] = []
        self._partial = ""
        self.process: subprocess.Popen | None = None

    def start(self, *, wait: bool = True) -> "NodeProcess":
        args = self.args
        if not any(a == "--dht-udp" or a.startswith("dht.") for a in args):
            args = ("--dht-udp", "127.0.0.1:0", *args)  # not the default port: tests run nodes side by side
        if not any(a.startswith("metrics.blur_interval") for a in args):
            args = ("--set", "metrics.blur_interval=0", *args)  # exact counters; the privacy tests turn it on
        self.process = subprocess.Popen(
            [program("twistd"), "-n", "--pidfile=", "zentalk-relay", "--data-dir", str(self.data_dir), *args],
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        if wait:
            self.wait_for(self.READY)
        return self

    def wait_for(self, pattern: re.Pattern, timeout: float = 20.0) -> str:
        """Read output until a line matches; fail if the process exits or time runs out.

        Reads the raw descriptor: a buffered reader could hold the awaited line
        while select() waits on an empty pipe.
        """
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                while "\n" in self._partial:
                    line, self._partial = self._partial.split("\n", 1)
                    self.output.append(line + "\n")
                    if pattern.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(timeout=remaining):
                    break
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"node exited ({self.process.wait()}):\n" + self.text)
                self._partial += chunk.decode("utf-8", "replace")
        raise AssertionError(f"no line matching {pattern.pattern!r} within {timeout} s:\n" + self.text)

    def finish(self, timeout: float = 20.0) -> int:
        """Wait for exit and collect the rest of the output."""
        assert self.process is not None
        rest = b""
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=deadline - time.monotonic()):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                rest += chunk
        self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        self.output.append(self._partial + rest.decode("utf-8", "replace"))
        self._partial = ""
        return self.process.returncode

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.finish(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=10)

    @property
    def text(self) -> str:
        return "".join(self.output) + self._partial

    def endpoints(self) -> dict[str, list[str]]:
        return json.loads((self.data_dir / "endpoints.json").read_text())["services"]

    def address(self, service: str, family: str = "127.0.0.1") -> tuple[str, int]:
        for endpoint in self.endpoints()[service]:
            _, host, port = endpoint.rsplit(":", 2) if not endpoint.count("[") else (
                None, endpoint[endpoint.index("[") + 1:endpoint.index("]")], endpoint.rsplit(":", 1)[1])
            if host == family:
                return host, int(port)
        raise AssertionError(f"{service} has no {family} endpoint: {self.endpoints()}")

    def status(self) -> dict:
        return json.loads(self.http("/status")[1])

    def stream_address(self, service: str, kind: str) -> tuple[str, int]:
        """The first ``kind:host:port`` endpoint of a service, e.g. ("link", "tls")."""
        for endpoint in self.endpoints()[service]:
            if endpoint.startswith(kind + ":"):
                host, _, port = endpoint[len(kind) + 1:].rpartition(":")
                return host.strip("[]"), int(port)
        raise AssertionError(f"{service} has no {kind} endpoint: {self.endpoints()}")

    def http(self, path: str) -> tuple[int, bytes]:
        host, port = self.address("metrics")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


@pytest.fixture
def start_node(tmp_path):
    nodes: list[NodeProcess] = []

    def start(*args: str, wait: bool = True, workdir: Path | None = None, env: dict | None = None) -> NodeProcess:
        directory = workdir or tmp_path / f"node{len(nodes)}"
        directory.mkdir(exist_ok=True)
        node = NodeProcess(directory, *args, env=env)
        nodes.append(node)
        return node.start(wait=wait)

    yield start
    for node in nodes:
        node.kill()


LOOPBACK_ARGS = ("--stun-udp", "127.0.0.1:0", "--stun-udp", "[::1]:0", "--metrics-listen", "tcp:0:interface=127.0.0.1",
                 "--set", 'link.tcp=["tcp:0:interface=127.0.0.1"]')


def wait_until(check, what: str, timeout: float, interval: float = 0.1):
    """Poll ``check`` (a cheap read of a node's endpoints or files) until it is true, at most ``timeout`` s.

    For tests that do not run the reactor; returns what ``check`` returned.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    series = f"{name}{{{wanted}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in /metrics")


def run(*command: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", CHECKOUT_ENV)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)


def cli(*args: str) -> subprocess.CompletedProcess:
    """The zentalk-relay command from the checkout."""
    return run(sys.executable, "-m", "zentalk_relay.cli", *args)


def free_port_range(count: int) -> int:
    """A base port whose 10 * count ports (TCP and UDP) are free on loopback now: room for a testnet."""
    import random
    import socket

    for _ in range(50):
        base = random.randrange(20000, 60000, 10)
        try:
            for port in range(base, base + 10 * count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as probe:
                        probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


__all__ = ["LOOPBACK_ARGS", "NodeProcess", "cli", "free_port_range", "metric", "program", "run"]
