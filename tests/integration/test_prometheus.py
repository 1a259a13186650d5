"""deploy/prometheus and deploy/grafana against the real Prometheus (the Debian package's binaries).

promtool checks the configuration and the rules and runs the rules' unit
tests. Then a real ``prometheus`` scrapes the three relays of
``zentalk-relay testnet --nodes 3`` (TURN on, through ``--set``) every second while clients put light
load on them, and every query of the dashboard (its variables substituted)
and every rule must evaluate and return data. The load is chosen so that the
panels show more than zeros where it matters: STUN requests and garbage, a
TURN allocation relaying to a peer and refused another, messages, an onion
message over three hops and a replayed packet, a handshake with a wrong key, a
refused link, a refused metrics connection, a BEP 44 put and an announce.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from nacl.signing import SigningKey
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from zentalk_relay import bootstrap
from zentalk_relay.client import LinkClosed, connect
from zentalk_relay.link.frames import ErrorCode, Onion, ReceiptStatus

from .conftest import CHECKOUT_ENV, ROOT, NodeProcess, cli, free_port_range, run

pytestmark = pytest.mark.integration

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "zentalk-relay.json"
BOUND = 30.0  # seconds any single step may take
#: Seconds after the load for every query to have data: links ping only 30-35 s after they come
#: up, and later than RATE_INTERVAL after the load its rates are zero again.
DATA_BOUND = 60.0
#: What $__rate_interval becomes. Grafana makes it at least four scrape intervals; here
#: it must also hold the last PING/PONG of a link (every 30-35 s) and the load.
RATE_INTERVAL = "1m"
TURN_USER, TURN_PASSWORD = "alice", "wonderland"


def tools() -> tuple[str, str]:
    """The prometheus and promtool binaries; a skip without them, a failure under CI."""
    found = {name: shutil.which(name) for name in ("prometheus", "promtool")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        reason = f"{' and '.join(missing)} not installed (Debian package prometheus; scripts/test installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found["prometheus"], found["promtool"]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- promtool ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", [("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml"),
                                     ("test", "rules", "alerts_test.yml")], ids=" ".join)
def test_promtool_accepts_the_configuration_and_the_rules(command):
    _, promtool = tools()
    result = run(promtool, *command, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


# -- a real Prometheus scraping a live network -------------------------------------------


class Prometheus:
    """``prometheus`` scraping ``targets`` every second, with the rules of deploy/prometheus/alerts.yml."""

    def __init__(self, binary: str, workdir: Path, job: str, targets: list[str]) -> None:
        workdir.mkdir()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.port = free_port()
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT)

    def _get(self, path: str, **params) -> tuple[int, bytes]:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited ({self.process.returncode}):\n{self.log_path.read_text()}")
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (ConnectionError, urllib.error.URLError):
            return 0, b""

    def ready(self) -> bool:
        return self._get("/-/ready")[0] == 200

    def api(self, path: str, **params) -> dict:
        """The answer of /api/v1/<path>: {"status": "success", "data": ...} or the error."""
        status, body = self._get(f"/api/v1/{path}", **params)
        try:
            return json.loads(body)
        except ValueError:
            return {"status": "error", "error": f"HTTP {status}: {body[:200]!r}"}

    def query(self, expr: str) -> tuple[list | None, str]:
        """(the instant vector, "") or (None, the error)."""
        answer = self.api("query", query=expr)
        if answer.get("status") != "success":
            return None, answer.get("error", repr(answer))
        data = answer["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}], ""
        return data["result"], ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=BOUND)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=BOUND)
        self._log.close()


def job_name() -> str:
    """The job of deploy/prometheus/prometheus.yml, which the alert rules select."""
    return re.search(r"job_name:\s*(\S+)", (PROMETHEUS_DIR / "prometheus.yml").read_text()).group(1)


def substitute(expr: str, job: str) -> str:
    """A dashboard expression with Grafana's variables replaced: this job, every instance."""
    for name, value in (("$__rate_interval", RATE_INTERVAL), ("$job", job), ("$instance", ".*")):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a template variable is left: {expr}"
    return expr


def with_bool(expr: str) -> str:
    """An alert expression whose comparisons keep every series (0 or 1) instead of filtering.

    The alert's own expression is empty while it does not fire; this one is
    empty only if the series it compares do not exist or do not match.
    """
    return re.sub(r'(==|!=|>=|<=|>|<)(?=\s*[^\s"=~])', r"\1 bool", expr)


def problem(result: list | None, error: str) -> str | None:
    """Why a query's answer is no data: an error, no series, or only NaN (a quantile of nothing)."""
    if result is None:
        return f"error: {error}"
    if not result:
        return "no series"
    if not any(math.isfinite(float(series["value"][1])) for series in result):
        return "only NaN"
    return None


def dashboard_queries(job: str) -> list[tuple[str, str]]:
    """(panel title, expression) for every target of every panel."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], substitute(target["expr"], job))
            for panel in panels if panel["type"] != "row" for target in panel["targets"]]


def variable_values(prometheus: Prometheus, job: str) -> dict[str, set[str]]:
    """What each query variable of the dashboard offers: ``label_values(expr, label)`` evaluated."""
    offered = {}
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if variable["type"] == "query":
            expr, label = re.fullmatch(r"label_values\((.*), *(\w+)\)", variable["definition"]).groups()
            result, error = prometheus.query(substitute(expr, job))
            assert result is not None, f"variable {variable['name']}: {error}"
            offered[variable["name"]] = {series["metric"][label] for series in result}
    return offered


#: Panels that must show more than zeros. The others show what did not happen here (TURN drops, mailbox
#: refusals, rate-limited frames, DHT drops...) or what is over by now (TURN allocations, packets held).
MOVED_BY_THE_LOAD = (
    "Up", "Uptime", "Services up", "Versions", "File descriptors used", "Resident memory", "CPU",
    "Metrics connections refused", "STUN requests", "STUN datagrams dropped", "Allocate results",
    "TURN requests", "Relayed packets", "TURN refusals", "Links", "Handshakes", "Handshake failures", "Frames",
    "Link bytes", "Link refusals", "Link closes", "Link round-trip time", "Onion packets", "Onion drops",
    "Hop processing time", "Cover loops", "Mixing delay", "Mailbox messages", "Mailbox bytes",
    "Mailbox quota used", "Mailbox events", "Mesh links", "Peer book", "Routing table",
    "Buckets and replacements", "Relays known", "Queries received", "Queries sent", "Query outcomes", "Lookups",
    "Lookup time", "Stored for others", "Record publishes (last hour)", "DHT traffic", "Routing events",
)


def missing_data(prometheus: Prometheus, job: str, count: int) -> list[str]:
    """Everything that does not yet have data; empty when every panel and every rule has it."""
    missing = []
    up, _ = prometheus.query(f'count_over_time(up{{job="{job}"}}[1m]) >= 3 and up == 1')
    if len(up or ()) != count:
        missing.append(f"targets up and scraped three times: {len(up or ())} of {count}")
    moved: dict[str, bool] = {}
    for title, expr in dashboard_queries(job):
        result, error = prometheus.query(expr)
        why = problem(result, error)
        if why:
            missing.append(f"panel {title!r}: {why}: {expr}")
        else:
            moved[title] = moved.get(title, False) or any(float(s["value"][1]) > 0 for s in result)
    missing += [f"panel {title!r}: only zeros" for title in MOVED_BY_THE_LOAD if moved.get(title) is False]
    for group in prometheus.api("rules").get("data", {}).get("groups", ()):
        for rule in group["rules"]:
            if rule["health"] != "ok":
                missing.append(f"rule {rule['name']}: health {rule['health']} {rule.get('lastError', '')}")
            elif rule["type"] == "recording":
                why = problem(*prometheus.query(rule["name"]))
                if why:
                    missing.append(f"recording rule {rule['name']}: {why}")
            else:
                why = problem(*prometheus.query(with_bool(rule["query"])))
                if why:
                    missing.append(f"alert {rule['name']}: {why}: {with_bool(rule['query'])}")
    return missing


#: Settings for every node of the testnet: exact statistics (blurred, a light load rounds down to
#: zero), looking and publishing in the DHT every 5 s, room for the load, and a metrics allow-list
#: that Prometheus (127.0.0.1) passes and a client from 127.0.0.2 does not.
TESTNET_SETTINGS = ("metrics.blur_interval=0", "dht.discover_interval=5", "dht.republish_interval=5",
                    "link.messages_per_minute=100000", "link.messages_burst=10000",
                    'metrics.allow=["127.0.0.1/32"]')


def turn_settings(tmp_path: Path) -> tuple[str, ...]:
    users = tmp_path / "turn-users"
    users.write_text(f"{TURN_USER}:{TURN_PASSWORD}\n")
    users.chmod(0o600)
    return tuple("0:" + setting for setting in (  # on node 0 only: the others count STUN drops as STUN
        "turn.enabled=true", 'turn.realm="zentalk.test"', f'turn.users_file="{users}"',
        'turn.allowed_peer_ranges=["127.0.0.1/32"]'))


class _Testnet:
    """``zentalk-relay testnet --nodes 3`` as an operator runs it, with ``--set`` for the test's settings."""

    def __init__(self, directory: Path, settings: tuple[str, ...]) -> None:
        self.base = free_port_range(3)
        self.dht_port = self.base + 3
        command = [sys.executable, "-m", "zentalk_relay.cli", "testnet", "--nodes", "3", "--dir", str(directory),
                   "--base-port", str(self.base), "--duration", "600"]
        for setting in settings:
            command += ["--set", setting]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=CHECKOUT_ENV)
        banner = b""
        deadline = time.monotonic() + BOUND
        while b"Ctrl-C stops every node." not in banner:
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise AssertionError(f"the testnet did not start:\n{banner.decode()}")
            ready, _, _ = select.select([self.process.stdout], [], [], 0.5)
            if ready:
                banner += os.read(self.process.stdout.fileno(), 65536)
        self.nodes = []
        for index in range(3):
            node = NodeProcess(directory)
            node.data_dir = directory / f"node-{index}"
            self.nodes.append(node)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # drains and stops every node
            try:
                self.process.wait(timeout=BOUND)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def until(check, what: str, timeout: float = BOUND):
    """Poll ``check`` (a cheap read over HTTP) until it is true, letting the reactor run between; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await deferLater(reactor, 0.2, lambda: None)


def within(deferred: Deferred, seconds: float = BOUND) -> Deferred:
    return deferred.addTimeout(seconds, reactor)


def metric_value(node, name: str) -> float:
    for line in node.http("/metrics")[1].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def node_id(key: SigningKey) -> bytes:
    return hashlib.sha256(bytes(key.verify_key)).digest()


async def join(node, key: SigningKey | None = None, boot: bootstrap.Bootstrap | None = None):
    boot = boot or bootstrap.parse(node.status()["bootstrap"])
    return await within(Deferred.fromCoroutine(connect(reactor, boot, key or SigningKey.generate())))


# -- the load ---------------------------------------------------------------------------


def metrics_refusal(node) -> None:
    """A connection to the metrics listener from 127.0.0.2, outside the node's metrics.allow: closed at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(BOUND)
        sock.bind(("127.0.0.2", 0))
        sock.connect(node.address("metrics"))
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        try:
            assert sock.recv(1024) == b""
        except ConnectionResetError:
            pass


def stun_load(nodes) -> None:
    """A Binding request to each node, answered; a datagram that is not STUN, dropped."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(BOUND)
        for node in nodes:
            transaction = os.urandom(12)
            server = node.address("stun")
            sock.sendto(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + transaction, server)
            answer, _ = sock.recvfrom(2048)
            assert answer[:2] == b"\x01\x01" and answer[8:20] == transaction, answer
            sock.sendto(b"not a STUN message", server)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.errors: asyncio.Queue = asyncio.Queue()
        self.closed = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr) -> None:
        self.queue.put_nowait((data, addr))

    def error_received(self, exc) -> None:
        self.errors.put_nowait(exc)

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


async def _turn_session(server: tuple[str, int]) -> None:
    """aioice allocates, relays a datagram to a loopback peer and back, and is refused another peer."""
    from aioice import turn

    loop = asyncio.get_running_loop()
    peer_transport, peer = await loop.create_datagram_endpoint(_Datagrams, local_addr=("127.0.0.1", 0))
    relay, client = await asyncio.wait_for(
        turn.create_turn_endpoint(_Datagrams, server, TURN_USER, TURN_PASSWORD, transport="udp"), BOUND)
    try:
        relay.sendto(b"to the peer", peer_transport.get_extra_info("sockname"))
        data, source = await asyncio.wait_for(peer.queue.get(), BOUND)
        peer_transport.sendto(data[::-1], source)
        await asyncio.wait_for(client.queue.get(), BOUND)
        relay.sendto(b"refused", ("127.0.0.2", 9))  # loopback outside turn.allowed_peer_ranges: 403
        await asyncio.wait_for(client.errors.get(), BOUND)
    finally:
        relay.close()
        await asyncio.wait_for(client.closed, BOUND)
        peer_transport.close()


def turn_load(node) -> None:
    asyncio.run(_turn_session(node.address("stun")))


def dht_load(port: int) -> None:
    """A BEP 44 put and an announce through the DHT command: items and peers stored on the relays."""
    boot = ("--bootstrap", f"127.0.0.1:{port}", "--bind", "127.0.0.1:0", "--json")
    for command in (("put", "hello prometheus"), ("announce", os.urandom(20).hex(), "--port", "4242")):
        done = cli("dht", *command, *boot)
        assert done.returncode == 0 and json.loads(done.stdout)["stored"] >= 1, done.stdout + done.stderr


async def link_load(a, b, c) -> list:
    """Messages, an onion path A-B-C, a replayed onion packet; returns the clients, which stay connected."""
    from zentalk_relay.relay import delivery, onion

    alice_key, bob_key, carol_key = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    alice, bob, carol = await join(a, alice_key), await join(a, bob_key), await join(c, carol_key)
    receipt = await within(alice.send(node_id(bob_key), b"hello bob"))
    assert receipt.status == ReceiptStatus.DELIVERED
    assert (await within(bob.receive())).body == b"hello bob"
    receipt = await within(alice.send(os.urandom(32), b"for someone offline"))
    assert receipt.status == ReceiptStatus.STORED

    path = []
    for node in (a, b, c):
        status = node.status()
        path.append((bytes.fromhex(status["node_id"]), bytes.fromhex(status["onion_public"])))
    sent = alice.send_onion(path, node_id(carol_key), b"over three hops")
    assert (await within(carol.receive())).message_id == sent

    hop = onion.Hop(path[0][1], onion.Instruction.DELIVER, os.urandom(32))
    packet = onion.build_packet([hop], delivery.encode(os.urandom(16), b"x", onion.MAX_PAYLOAD))
    alice.adapter.send(Onion(packet))
    alice.adapter.send(Onion(packet))  # a replay: dropped
    await within(alice.sync())  # a round trip: both were handled

    return [alice, bob, carol]


async def link_failures(b, c) -> None:
    """A handshake with a wrong link key at B; links to C until it refuses one for their IP."""
    wrong_key = dataclasses.replace(bootstrap.parse(b.status()["bootstrap"]), link_public=bytes(32 * [9]))
    with pytest.raises(LinkClosed):
        await join(b, boot=wrong_key)
    extra = []
    try:
        for _ in range(10):
            try:
                extra.append(await join(c))
            except LinkClosed as refused:
                assert refused.code == ErrorCode.TOO_MANY_CONNECTIONS_FROM_IP, refused
                break
        else:
            raise AssertionError("C never refused a link from 127.0.0.1")
    finally:
        for client in extra:
            await within(client.close())


@pytest_twisted.ensureDeferred
async def test_every_dashboard_query_and_rule_has_data_from_a_live_network(tmp_path):
    prometheus_binary, _ = tools()
    job = job_name()
    assert set(MOVED_BY_THE_LOAD) <= {title for title, _ in dashboard_queries(job)}
    testnet = _Testnet(tmp_path / "testnet", TESTNET_SETTINGS + turn_settings(tmp_path))
    a, b, c = nodes = testnet.nodes
    port_a = testnet.dht_port
    targets = ["%s:%d" % node.address("metrics") for node in nodes]
    prometheus = Prometheus(prometheus_binary, tmp_path / "prometheus", job, targets)
    clients = []
    try:
        await until(prometheus.ready, "Prometheus is ready")
        # Load before the first scrape would be lost to rate(): the first sample holds it already.
        scraped = f'count_over_time(up{{job="{job}"}}[1m]) >= 2'
        await until(lambda: len(prometheus.query(scraped)[0] or ()) == len(nodes),
                    "Prometheus has scraped every node twice")
        for name, node in zip("abc", nodes):
            await until(lambda: node.status()["dht"]["relays_known"] >= 2, f"relay {name} knows the two others")
            await until(lambda: metric_value(node, "zentalk_mesh_links_up") >= 1, f"relay {name} has a mesh link")

        await deferToThread(metrics_refusal, c)
        await deferToThread(stun_load, nodes)
        await deferToThread(turn_load, a)
        await deferToThread(dht_load, port_a)
        clients = await link_load(a, b, c)
        # The series of a handshake error, a refusal or a close reason appear with their first
        # increment, which rate() cannot see (no earlier sample): fail again once Prometheus has them.
        await link_failures(b, c)
        await until(lambda: all(prometheus.query(expr)[0] for expr in (
            'zentalk_link_handshakes_total{result!~"success|resumed"}', "zentalk_link_refusals_total")),
            "Prometheus has scraped the first failures")
        await link_failures(b, c)

        fewest: list[str] | None = None  # what was missing when the least was: older load leaves the window

        def complete() -> bool:
            nonlocal fewest
            missing = missing_data(prometheus, job, len(nodes))
            if fewest is None or len(missing) < len(fewest):
                fewest = missing
            return not missing

        try:
            await until(complete, "every panel and rule has data", timeout=DATA_BOUND)
        except AssertionError:
            raise AssertionError("no data within %g s; at best, missing:\n  %s" % (
                DATA_BOUND, "\n  ".join(fewest))) from None

        # and the alerts' own expressions run; on a healthy network none is pending or firing
        for group in prometheus.api("rules")["data"]["groups"]:
            for rule in group["rules"]:
                result, error = prometheus.query(rule["query"])
                assert result is not None, f"{rule['name']}: {error}"
        assert prometheus.api("alerts")["data"]["alerts"] == []
        loaded = {rule["name"] for group in prometheus.api("rules")["data"]["groups"] for rule in group["rules"]}
        alerts_yml = (PROMETHEUS_DIR / "alerts.yml").read_text()
        assert loaded == set(re.findall(r"^\s*- (?:alert|record): (\S+)", alerts_yml, re.M))

        # the dashboard's variables offer this job and every node
        assert variable_values(prometheus, job) == {"job": {job}, "instance": set(targets)}
    finally:
        try:
            for client in clients:
                await within(client.close())
        finally:
            prometheus.stop()
            testnet.stop()
