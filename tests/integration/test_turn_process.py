"""TURN through the real node: coturn's turnutils_uclient and turnutils_peer, and aioice's TURN client.

Everything runs on loopback; loopback peers are allowed by the normal setting
``turn.allowed_peer_ranges``, which a production node leaves empty.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import socket
import ssl
import subprocess
import time

import pytest

from zentalk_relay.nat.credentials import rest_credentials

from .conftest import cli, metric, program, run

pytestmark = pytest.mark.integration

USER, PASSWORD = "alice", "wonderland"
SECRET = "integration-shared-secret"
LOOPBACK_PEERS = '["127.0.0.0/8", "::1/128"]'


def _private_file(path, text):
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture
def turn_node(start_node, tmp_path):
    """Start a node serving TURN over UDP (IPv4 and IPv6) and TCP on loopback, plus any extra ``--set``."""
    users = _private_file(tmp_path / "turn-users", f"{USER}:{PASSWORD}\nbob:builder\n")
    secret = _private_file(tmp_path / "turn-secret", SECRET + "\n")

    def start(*settings: str, peers: str | None = LOOPBACK_PEERS, tcp: bool = True):
        args = ["--stun-udp", "127.0.0.1:0", "--stun-udp", "[::1]:0", "--metrics-listen", "tcp:0:interface=127.0.0.1",
                "--set", "link.enabled=false", "--set", "turn.enabled=true", "--set", 'turn.realm="zentalk.test"',
                "--set", f'turn.users_file="{users}"', "--set", f'turn.secret_file="{secret}"']
        if tcp:
            args += ["--set", 'stun.tcp=["tcp:0:interface=127.0.0.1"]']
        if peers is not None:
            args += ["--set", f"turn.allowed_peer_ranges={peers}"]
        for setting in settings:
            args += ["--set", setting]
        return start_node(*args)

    return start


class Peer:
    """coturn's UDP echo server, turnutils_peer, on a loopback port."""

    def __init__(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
            self.port = probe.getsockname()[1]
        self.host = host
        self.process = subprocess.Popen([program("turnutils_peer"), "-L", host, "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_for_echo(family)

    def _wait_for_echo(self, family) -> None:
        deadline = time.monotonic() + 10
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, "turnutils_peer exited"
                sock.sendto(b"ready?", (self.host, self.port))
                readable, _, _ = select.select([sock], [], [], 0.1)
                if readable:
                    try:
                        if sock.recv(64) == b"ready?":
                            return
                    except ConnectionRefusedError:
                        continue
        raise AssertionError("turnutils_peer did not echo within 10 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def peer():
    peers = []

    def start(host="127.0.0.1") -> Peer:
        peers.append(Peer(host))
        return peers[-1]

    yield start
    for each in peers:
        each.stop()


def _uclient(node_port: int, peer: Peer, *flags: str, user=USER, password=PASSWORD, server="127.0.0.1",
             messages=10) -> subprocess.CompletedProcess:
    credentials = ["-u", user, "-w", password] if password is not None else ["-u", user]
    return run(program("turnutils_uclient"), *flags, *credentials, "-p", str(node_port), "-e", peer.host,
               "-r", str(peer.port), "-n", str(messages), "-l", "180", "-z", "5", "-m", "1", server, timeout=60)


def _relayed(result: subprocess.CompletedProcess) -> tuple[int, int, int]:
    """(messages sent, messages received, lost) from turnutils_uclient's summary."""
    output = result.stdout + result.stderr
    totals = re.search(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", output)
    lost = re.search(r"Total lost packets (\d+)", output)
    assert totals and lost, output
    return int(totals.group(1)), int(totals.group(2)), int(lost.group(1))


def _turn_metrics(node) -> str:
    return node.http("/metrics")[1].decode()


# -- turnutils_uclient ------------------------------------------------------------


def test_uclient_relays_send_indications_over_udp_with_the_rfc8656_defaults(turn_node, peer):
    node = turn_node()
    echo = peer()
    _, port = node.address("stun")
    result = _uclient(port, echo, "-s")
    sent, received, lost = _relayed(result)
    assert sent >= 10 and received == sent and lost == 0, result.stdout
    text = _turn_metrics(node)
    assert metric(text, "zentalk_turn_allocations_total", result="success") >= 1
    assert metric(text, "zentalk_turn_relayed_packets_total", direction="to_peer") >= sent
    assert metric(text, "zentalk_turn_relayed_packets_total", direction="to_client") >= sent
    assert metric(text, "zentalk_turn_relayed_bytes_total", direction="to_peer") >= sent * 180
    assert "Traceback" not in node.text


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_uclient_relays_channel_data(turn_node, peer, transport):
    # turnutils_uclient picks channel numbers up to 0x7FFF as RFC 5766 allowed.
    node = turn_node("turn.rfc5766_channels=true")
    echo = peer()
    if transport == "udp":
        _, port = node.address("stun")
        flags = ()
    else:
        _, port = node.stream_address("stun", "tcp")
        flags = ("-t",)
    sent, received, lost = _relayed(_uclient(port, echo, *flags))
    assert sent >= 10 and received == sent and lost == 0
    text = _turn_metrics(node)
    assert metric(text, "zentalk_turn_requests_total", method="channel_bind", result="success") >= 1
    assert "Traceback" not in node.text


def _certificate(directory):
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=turn.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    key.chmod(0o600)
    return cert, key


def _tls_settings(cert, key):
    return ('stun.tls="tcp:0:interface=127.0.0.1"', f'stun.tls_certificate="{cert}"', f'stun.tls_private_key="{key}"')


def test_uclient_over_tls(turn_node, peer, tmp_path):
    node = turn_node("turn.rfc5766_channels=true", *_tls_settings(*_certificate(tmp_path)))
    echo = peer()
    _, port = node.stream_address("stun", "tls")
    sent, received, lost = _relayed(_uclient(port, echo, "-t", "-S"))
    assert sent >= 10 and received == sent and lost == 0
    text = _turn_metrics(node)
    assert metric(text, "zentalk_turn_allocations_total", result="success") >= 1


def test_uclient_over_ipv6_with_an_ipv6_relayed_address(turn_node, peer):
    node = turn_node()
    echo = peer("::1")
    _, port = node.address("stun", "::1")
    sent, received, lost = _relayed(_uclient(port, echo, "-s", "-x", server="::1"))
    assert sent >= 10 and received == sent and lost == 0


def test_uclient_with_turn_rest_api_credentials(turn_node, peer):
    node = turn_node()
    echo = peer()
    _, port = node.address("stun")
    result = run(program("turnutils_uclient"), "-s", "-W", SECRET, "-u", "carol", "-p", str(port), "-e", echo.host,
                 "-r", str(echo.port), "-n", "10", "-z", "5", "-m", "1", "127.0.0.1", timeout=60)
    sent, received, lost = _relayed(result)
    assert sent >= 10 and received == sent and lost == 0


@pytest.mark.parametrize("password", ["wrong", None])
def test_uclient_fails_without_valid_credentials(turn_node, peer, password):
    node = turn_node()
    echo = peer()
    _, port = node.address("stun")
    result = _uclient(port, echo, "-s", password=password, messages=3)
    output = result.stdout + result.stderr
    assert "Cannot complete Allocation" in output or "tot_recv_msgs=0" in output, output
    assert "tot_recv_msgs=10" not in output
    text = _turn_metrics(node)
    assert metric(text, "zentalk_turn_allocations_total", result="success") == 0
    assert metric(text, "zentalk_turn_allocations_total", result="unauthenticated") >= 1


# -- aioice --------------------------------------------------------------------------


class _Queue(asyncio.DatagramProtocol):
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


async def _aioice_round_trips(server: tuple[str, int], transport: str, username=USER, password=PASSWORD,
                              tls: ssl.SSLContext | None = None) -> tuple[tuple, list]:
    """Relay payloads of several sizes to a local peer and back; every byte must arrive as sent."""
    from aioice import turn

    loop = asyncio.get_running_loop()
    peer_transport, peer = await loop.create_datagram_endpoint(_Queue, local_addr=("127.0.0.1", 0))
    peer_address = peer_transport.get_extra_info("sockname")
    relay, client = await asyncio.wait_for(turn.create_turn_endpoint(
        _Queue, server, username, password, transport=transport, ssl=tls), 15)
    try:
        relayed = relay.get_extra_info("sockname")
        for size in (1, 3, 100, 1200, 1400, 4000):
            data = os.urandom(size)
            relay.sendto(data, peer_address)
            got, source = await asyncio.wait_for(peer.queue.get(), 10)
            assert got == data and source == tuple(relayed)
            peer_transport.sendto(data[::-1], source)
            back, origin = await asyncio.wait_for(client.queue.get(), 10)
            assert back == data[::-1] and origin == peer_address
        return relayed, client.errors.qsize()
    finally:
        relay.close()
        # aioice calls connection_lost once its deleting Refresh is answered.
        await asyncio.wait_for(client.closed, 10)
        peer_transport.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_aioice_relays_data_intact(turn_node, transport):
    node = turn_node()
    server = node.address("stun") if transport == "udp" else node.stream_address("stun", "tcp")
    relayed, errors = asyncio.run(_aioice_round_trips(server, transport))
    assert relayed[0] == "127.0.0.1" and 49152 <= relayed[1] <= 65535 and errors == 0
    text = _turn_metrics(node)
    assert metric(text, "zentalk_turn_relayed_bytes_total", direction="to_client") >= 1 + 3 + 100 + 1200 + 1400 + 4000
    assert metric(text, "zentalk_turn_allocations_active", family="ipv4", transport=transport) == 0  # deleted on close


def test_aioice_with_rest_api_credentials(turn_node):
    node = turn_node()
    username, password = rest_credentials(SECRET.encode(), time.time(), 600, "dave")
    relayed, _ = asyncio.run(_aioice_round_trips(node.address("stun"), "udp", username, password))
    assert relayed[0] == "127.0.0.1"


def test_cli_turn_credentials_log_in(turn_node, tmp_path):
    node = turn_node()
    config = tmp_path / "relay.toml"
    config.write_text(f'[turn]\nsecret_file = "{tmp_path / "turn-secret"}"\nrealm = "zentalk.test"\n')
    printed = cli("turn-credentials", "--config", str(config), "--ttl", "300", "--user", "erin", "--json")
    assert printed.returncode == 0, printed.stderr
    issued = json.loads(printed.stdout)
    assert issued["username"].endswith(":erin") and issued["realm"] == "zentalk.test"
    relayed, _ = asyncio.run(_aioice_round_trips(node.address("stun"), "udp", issued["username"], issued["password"]))
    assert relayed[0] == "127.0.0.1"


@pytest.mark.parametrize("password", ["wrong", None])
def test_aioice_fails_without_valid_credentials(turn_node, password):
    from aioice import stun as aioice_stun

    node = turn_node()
    with pytest.raises((aioice_stun.TransactionFailed, aioice_stun.TransactionTimeout)) as caught:
        asyncio.run(_aioice_round_trips(node.address("stun"), "udp", password=password))
    if isinstance(caught.value, aioice_stun.TransactionFailed):
        assert caught.value.response.attributes["ERROR-CODE"][0] == 401


def test_aioice_over_tls(turn_node, tmp_path):
    cert, key = _certificate(tmp_path)
    node = turn_node(*_tls_settings(cert, key))
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    relayed, _ = asyncio.run(_aioice_round_trips(node.stream_address("stun", "tls"), "tcp", tls=context))
    assert relayed[0] == "127.0.0.1"
    text = _turn_metrics(node)
    assert metric(text, "zentalk_turn_requests_total", method="allocate", result="success") >= 1


async def _send_to_loopback(server: tuple[str, int]):
    """Ask for a channel to a loopback peer; the error aioice reports."""
    from aioice import turn

    relay, client = await asyncio.wait_for(turn.create_turn_endpoint(_Queue, server, USER, PASSWORD), 15)
    try:
        relay.sendto(b"to loopback", ("127.0.0.1", 9))
        return await asyncio.wait_for(client.errors.get(), 10)
    finally:
        relay.close()
        await asyncio.wait_for(client.closed, 10)


def test_loopback_peers_are_refused_without_the_allowance(turn_node):
    node = turn_node(peers=None)
    error = asyncio.run(_send_to_loopback(node.address("stun")))
    assert error.response.attributes["ERROR-CODE"][0] == 403
    text = _turn_metrics(node)
    assert metric(text, "zentalk_turn_refusals_total", reason="peer_loopback") >= 1
    assert metric(text, "zentalk_turn_requests_total", method="channel_bind", result="forbidden") >= 1
