"""``zentalk-relay testnet``: nodes that find each other, and all stop on Ctrl-C."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from .conftest import CHECKOUT_ENV, cli, free_port_range, wait_until

pytestmark = pytest.mark.integration
BOUND = 40.0


def _read_until(process: subprocess.Popen, marker: str, timeout: float) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while marker not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or process.poll() is not None:
                raise AssertionError(f"no {marker!r} within {timeout:g} s:\n{seen}")
            if selector.select(timeout=left):
                chunk = os.read(process.stdout.fileno(), 65536).decode()
                if not chunk:
                    raise AssertionError(f"output ended before {marker!r}:\n{seen}")
                seen += chunk
    return seen


def _status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
        return json.loads(response.read())


def test_the_testnet_meets_through_the_dht_and_stops_on_ctrl_c(tmp_path):
    base = free_port_range(3)
    process = subprocess.Popen(
        [sys.executable, "-m", "zentalk_relay.cli", "testnet", "--nodes", "3", "--dir", str(tmp_path / "net"),
         "--base-port", str(base), "--duration", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=CHECKOUT_ENV)
    try:
        banner = _read_until(process, "Ctrl-C stops every node.", BOUND)
        assert f"DHT bootstrap node: 127.0.0.1:{base + 3}" in banner
        assert (tmp_path / "net" / "prometheus.yml").read_text().count("127.0.0.1:") == 3
        pids = [int(line.split("pid ")[1].split()[0]) for line in banner.splitlines() if " pid " in line]
        assert len(pids) == 3

        wait_until(lambda: all(_status(base + 10 * i + 4)["dht"]["relays_known"] >= 2 for i in range(3)),
                   "the nodes find each other", BOUND, interval=0.2)
        relays = cli("dht", "relays", "--bootstrap", f"127.0.0.1:{base + 3}", "--bind", "127.0.0.1:0", "--json")
        assert len(json.loads(relays.stdout)["relays"]) == 3

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=BOUND) == 0
        assert "testnet stopped" in process.stdout.read().decode()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
