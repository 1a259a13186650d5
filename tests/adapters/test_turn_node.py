"""The node with TURN enabled, on a MemoryReactorClock: wiring, start-up errors, metrics."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from zentalk_relay.config import load
from zentalk_relay.node import StartupError, build_node


def _config(tmp_path, *extra, users="alice:wonderland\n", mode=0o600):
    users_file = tmp_path / "turn-users"
    users_file.write_text(users)
    users_file.chmod(mode)
    return load(None, [
        ("test", "node.data_dir", str(tmp_path / "data")),
        ("test", "stun.udp", ["127.0.0.1:0"]),
        ("test", "metrics.listen", "tcp:9464:interface=127.0.0.1"),
        ("test", "link.enabled", False),
        ("test", "dht.enabled", False),
        ("test", "turn.enabled", True),
        ("test", "turn.users_file", str(users_file)),
        *extra,
    ])


def _start(config):
    memory = MemoryReactorClock()
    node = build_node(memory, config)
    node.privilegedStartService()
    node.startService()
    memory.run()  # the memory reactor's run: it fires callWhenRunning hooks and returns
    return memory, node


def _metrics(reactor) -> str:
    (site,) = [server[1] for server in reactor.tcpServers if server[0] == 9464]
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return transport.value().partition(b"\r\n\r\n")[2].decode()


def test_turn_metrics_exist_from_the_first_scrape(tmp_path):
    reactor, node = _start(_config(tmp_path))
    try:
        text = _metrics(reactor)
        for line in ('zentalk_turn_allocations_active{family="ipv4",transport="udp"} 0.0',
                     'zentalk_turn_allocations_total{result="success"} 0.0',
                     'zentalk_turn_allocations_total{result="quota"} 0.0',
                     "zentalk_turn_permissions_active 0.0", "zentalk_turn_channels_active 0.0",
                     'zentalk_turn_relayed_bytes_total{direction="to_peer"} 0.0',
                     'zentalk_turn_relayed_packets_total{direction="to_client"} 0.0',
                     'zentalk_turn_refusals_total{reason="peer_loopback"} 0.0',
                     'zentalk_turn_refusals_total{reason="user_quota"} 0.0',
                     'zentalk_turn_dropped_total{reason="no_permission"} 0.0',
                     'zentalk_turn_requests_total{method="allocate",result="success"} 0.0'):
            assert line in text, line
        type_lines = [line for line in text.splitlines() if line.startswith("# TYPE ")]
        assert len(type_lines) == len(set(type_lines)), "a metric family is declared twice"
        names = [line.split()[2] for line in type_lines]
        assert len(names) == len(set(names)), "two families share a name"
        stun = node.getServiceNamed("stun")
        assert stun.turn is not None and stun.turn.settings.relays[4].bind == "127.0.0.1"
    finally:
        node.stopService()


def test_tcp_listener_for_stun_and_turn(tmp_path):
    reactor, node = _start(_config(tmp_path, ("test", "stun.tcp", ["tcp:3478:interface=127.0.0.1"])))
    try:
        assert [port for port, *_ in reactor.tcpServers] == [3478, 9464]
        assert node.endpoints()["stun"][1] == "tcp:0.0.0.0:3478"
    finally:
        node.stopService()


def test_users_file_readable_by_others_stops_start(tmp_path):
    with pytest.raises(StartupError, match=r"turn-users is readable by others \(mode 0644\)"):
        build_node(MemoryReactorClock(), _config(tmp_path, mode=0o644))


def test_turn_without_credentials_stops_start(tmp_path):
    config = _config(tmp_path, ("test", "turn.users_file", ""))
    with pytest.raises(StartupError, match="turn.enabled needs turn.users_file or turn.secret_file"):
        build_node(MemoryReactorClock(), config)


def test_wildcard_listeners_need_relay_addresses(tmp_path):
    config = _config(tmp_path, ("test", "stun.udp", ["0.0.0.0:0"]))
    with pytest.raises(StartupError, match="turn.relay_addresses is needed"):
        build_node(MemoryReactorClock(), config)
    config = _config(tmp_path, ("test", "stun.udp", ["0.0.0.0:0"]),
                     ("test", "turn.relay_addresses", ["203.0.113.5/127.0.0.1"]))
    reactor, node = _start(config)
    try:
        relay = node.getServiceNamed("stun").turn.settings.relays[4]
        assert (relay.bind, relay.advertised) == ("127.0.0.1", "203.0.113.5")
    finally:
        node.stopService()


def test_tls_without_certificate_stops_start(tmp_path):
    node = build_node(MemoryReactorClock(), _config(tmp_path, ("test", "stun.tls", "tcp:5349")))
    with pytest.raises(StartupError, match="stun.tls needs stun.tls_certificate and stun.tls_private_key"):
        node.privilegedStartService()
