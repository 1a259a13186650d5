"""``zentalk-relay testnet``: N nodes on loopback, one process each, that find each other.

Each node is what ``zentalk-relay@.service`` runs on a host with several
cores: its own process (one reactor, one core), its own configuration file
(``node-<i>.toml``, as ``/etc/zentalk-relay/<i>.toml``), identity, data
directory and ports. Node 0 is the DHT bootstrap node; the others name it.
They meet through the DHT, form a mesh and publish their records, so a
client pointed at node 0's DHT address finds them all.

The command writes everything under ``--dir`` (a ``prometheus.yml`` that
scrapes every node too), prints how to use them, and stops them all on
Ctrl-C, SIGTERM, or after ``--duration`` seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
#: Ports of node i: BASE + 10 i + offset.
LINK, LINK_WS, STUN, DHT, METRICS = 0, 1, 2, 3, 4
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class TestnetNode:
    index: int
    base: int
    directory: Path

    def port(self, offset: int) -> int:
        return self.base + 10 * self.index + offset

    @property
    def config_file(self) -> Path:
        return self.directory / f"node-{self.index}.toml"

    @property
    def data_dir(self) -> Path:
        return self.directory / f"node-{self.index}"

    def config(self, bootstrap: str | None) -> str:
        return f"""# zentalk-relay testnet node {self.index}: what /etc/zentalk-relay/{self.index}.toml holds
# for zentalk-relay@{self.index}.service on a host that runs one node per core.
[node]
data_dir = "{self.data_dir}"

[stun]
udp = ["{HOST}:{self.port(STUN)}"]

[link]
tcp = ["tcp:{self.port(LINK)}:interface={HOST}"]
websocket = "tcp:{self.port(LINK_WS)}:interface={HOST}"
messages_per_minute = 6000
messages_burst = 600

[pex]
allow_private_addresses = true
min_uptime = 0.0

[dht]
udp = ["{HOST}:{self.port(DHT)}"]
bootstrap = [{'"' + bootstrap + '"' if bootstrap else ""}]

[metrics]
listen = "tcp:{self.port(METRICS)}:interface={HOST}"
"""


def plan(count: int, base: int, directory: Path) -> list[TestnetNode]:
    if not 1 <= count <= 50:
        raise ValueError("a testnet has 1 to 50 nodes")
    if not 1024 <= base or base + 10 * count > 65535:
        raise ValueError("the ports do not fit: choose another --base-port")
    return [TestnetNode(index, base, directory) for index in range(count)]


def prometheus_config(nodes: list[TestnetNode]) -> str:
    targets = ", ".join(f'"{HOST}:{node.port(METRICS)}"' for node in nodes)
    return f"""# prometheus --config.file={nodes[0].directory / 'prometheus.yml'}
global:
  scrape_interval: 5s
scrape_configs:
  - job_name: zentalk-relay
    static_configs:
      - targets: [{targets}]
"""


def node_settings(index: int, settings: tuple[str, ...]) -> list[str]:
    """The ``KEY=VALUE`` settings for node ``index``: all unprefixed ones, and ``<index>:KEY=VALUE``."""
    chosen = []
    for setting in settings:
        prefix, colon, rest = setting.partition(":")
        if colon and prefix.isdigit() and "=" not in prefix:
            if int(prefix) == index:
                chosen.append(rest)
        else:
            chosen.append(setting)
    return chosen


def _twistd(node: TestnetNode, settings: tuple[str, ...] = ()) -> list[str]:
    overrides = [item for setting in node_settings(node.index, settings) for item in ("--set", setting)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
            "--logfile", str(node.directory / f"node-{node.index}.log"), "zentalk-relay",
            "--config", str(node.config_file), *overrides]


def _wait_ready(nodes: list[TestnetNode], processes: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = {node.index for node in nodes}
    while waiting:
        for node in nodes:
            if node.index in waiting and (node.data_dir / "endpoints.json").exists():
                waiting.discard(node.index)
            if processes[node.index].poll() is not None:
                raise RuntimeError(f"node {node.index} exited with {processes[node.index].returncode}; "
                                   f"see {node.directory / f'node-{node.index}.log'}")
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"nodes {sorted(waiting)} not ready within {timeout:g} s")
        time.sleep(0.1)


def _status(node: TestnetNode) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://{HOST}:{node.port(METRICS)}/status", timeout=5) as response:
        return json.loads(response.read())


def run(count: int, base: int, directory: Path, duration: float | None, out=sys.stdout,
        settings: tuple[str, ...] = ()) -> int:
    """``settings`` (``KEY=VALUE``, as twistd's ``--set``) apply to every node after its file;
    ``<i>:KEY=VALUE`` to node ``i`` only."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    nodes = plan(count, base, directory)
    bootstrap = f"{HOST}:{nodes[0].port(DHT)}"
    for node in nodes:
        node.config_file.write_text(node.config(None if node.index == 0 else bootstrap))
    (directory / "prometheus.yml").write_text(prometheus_config(nodes))
    stop = {"now": False}

    def ask_to_stop(signum, frame) -> None:
        stop["now"] = True

    previous = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    processes: list[subprocess.Popen] = []
    try:
        for node in nodes:
            processes.append(subprocess.Popen(_twistd(node, settings), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        _wait_ready(nodes, processes, START_TIMEOUT)
        print(f"zentalk-relay testnet: {count} nodes on {HOST}, state in {directory}", file=out)
        for node in nodes:
            status = _status(node)
            print(f"  node {node.index}  pid {processes[node.index].pid}  link {HOST}:{node.port(LINK)}  "
                  f"ws {HOST}:{node.port(LINK_WS)}  dht {HOST}:{node.port(DHT)}  metrics "
                  f"http://{HOST}:{node.port(METRICS)}/metrics", file=out)
            print(f"          {status['bootstrap']}", file=out)
        print(f"\nDHT bootstrap node: {bootstrap}\n"
              f"  relays:      zentalk-relay dht relays --bootstrap {bootstrap} --bind {HOST}:0\n"
              f"  a client:    connect with any bootstrap string above, or discover_relays(reactor, "
              f"['{bootstrap}'])\n"
              f"  Prometheus:  prometheus --config.file={directory / 'prometheus.yml'}\n"
              f"  logs:        {directory}/node-*.log\n"
              f"Ctrl-C stops every node.", file=out, flush=True)
        deadline = None if duration is None else time.monotonic() + duration
        while not stop["now"] and (deadline is None or time.monotonic() < deadline):
            for node, process in zip(nodes, processes):
                if process.poll() is not None:
                    print(f"node {node.index} exited with {process.returncode}", file=out, flush=True)
                    stop["now"] = True
            time.sleep(0.2)
        return 0
    finally:
        _stop_all(processes)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("testnet stopped", file=out, flush=True)


def _stop_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # each drains, like a systemd stop
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
