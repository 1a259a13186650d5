"""The node's Twisted shell on a MemoryReactorClock: listeners, HTTP resources, lifecycle."""

import json
import os
import socket

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher

from zentalk_relay.config import load
from zentalk_relay.nat import stun
from zentalk_relay.nat.protocol import StunDatagramProtocol
from zentalk_relay.node import ENDPOINTS_FILE, StartupError, build_node


class RecordingDatagramTransport:
    def __init__(self):
        self.written = []

    def write(self, data, addr):
        self.written.append((data, addr))


def _config(tmp_path, *extra):
    return load(None, [
        ("test", "node.data_dir", str(tmp_path)),
        ("test", "stun.udp", ["127.0.0.1:0"]),
        ("test", "metrics.listen", "tcp:9464:interface=127.0.0.1"),
        ("test", "link.tcp", ["tcp:7400:interface=127.0.0.1"]),
        ("test", "dht.udp", ["127.0.0.1:0"]),
        *extra,
    ])


@pytest.fixture
def events():
    seen = []

    def observer(event):
        if event.get("log_namespace", "").startswith("zentalk_relay"):
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def running(tmp_path, events):
    memory = MemoryReactorClock()
    node = build_node(memory, _config(tmp_path))
    node.privilegedStartService()
    node.startService()
    memory.run()  # the memory reactor's run: it fires callWhenRunning hooks and returns
    yield memory, node
    if node.running:
        node.stopService()


def _http_get(reactor, path):
    (site,) = [server[1] for server in reactor.tcpServers if server[0] == 9464]
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    head, _, body = transport.value().partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head.decode(), body


def _datagram(reactor, data, source):
    protocol = reactor.adoptedPorts[0][2]
    transport = RecordingDatagramTransport()
    protocol.transport = transport
    protocol.datagramReceived(data, source)
    return transport.written


def test_protocol_answers_through_its_transport():
    from zentalk_relay.nat.binding import BindingResponder

    protocol = StunDatagramProtocol(BindingResponder(""))
    transport = RecordingDatagramTransport()
    protocol.makeConnection(transport)
    request = stun.encode(stun.Method.BINDING, stun.MessageClass.REQUEST, os.urandom(12), fingerprint=False)
    protocol.datagramReceived(request, ("192.0.2.1", 4000))
    protocol.datagramReceived(b"junk", ("192.0.2.1", 4000))
    assert len(transport.written) == 1
    assert transport.written[0][1] == ("192.0.2.1", 4000)
    assert stun.decode(transport.written[0][0]).cls is stun.MessageClass.SUCCESS


def test_services_are_named_children(running):
    _, node = running
    assert sorted(service.name for service in node) == ["dht", "link", "metrics", "pex", "relay", "stun"]


def test_disabled_services_are_absent(tmp_path):
    node = build_node(MemoryReactorClock(), _config(tmp_path, ("test", "stun.enabled", False),
                                                    ("test", "link.enabled", False), ("test", "dht.enabled", False)))
    assert [service.name for service in node] == ["metrics"]


def test_one_log_line_per_listening_endpoint(running, events):
    lines = [event["log_format"].format(**event) for event in events if "listening on" in event["log_format"]]
    node_id = running[1].getServiceNamed("dht").primary.node.node_id.hex()
    dht_line = f"DHT listening on udp:0.0.0.0:1234, node id {node_id}"
    assert lines == ["STUN listening on udp:0.0.0.0:1234", "links (tcp) listening on tcp:0.0.0.0:7400",
                     dht_line, "metrics listening on tcp:0.0.0.0:9464"]


def test_endpoints_file_is_written_at_start_and_removed_at_stop(running, tmp_path):
    _, node = running
    written = json.loads((tmp_path / ENDPOINTS_FILE).read_text())
    assert written["services"] == {"stun": ["udp:0.0.0.0:1234"], "relay": [], "link": ["tcp:0.0.0.0:7400"],
                                   "pex": [], "dht": ["udp:0.0.0.0:1234"], "metrics": ["tcp:0.0.0.0:9464"]}
    assert written["pid"] == os.getpid()
    node.stopService()
    assert not (tmp_path / ENDPOINTS_FILE).exists()


def test_metrics_count_stun_traffic(running):
    reactor, _ = running
    request = stun.encode(stun.Method.BINDING, stun.MessageClass.REQUEST, os.urandom(12), fingerprint=False)
    for _ in range(3):
        assert len(_datagram(reactor, request, ("192.0.2.1", 4000))) == 1
    assert _datagram(reactor, b"\x00" * 3, ("192.0.2.1", 4000)) == []
    status, head, body = _http_get(reactor, "/metrics")
    assert status == 200 and "text/plain; version=0.0.4" in head
    text = body.decode()
    assert 'zentalk_stun_requests_total{method="binding",result="success"} 3.0' in text
    assert 'zentalk_stun_dropped_total{reason="truncated"} 1.0' in text
    assert 'zentalk_build_info{' in text
    assert "process_cpu_seconds_total" in text
    assert 'zentalk_service_up{service="stun"} 1.0' in text
    assert "192.0.2.1" not in text


def test_healthz_is_200_only_while_every_service_runs(running):
    reactor, node = running
    assert _http_get(reactor, "/healthz")[0] == 200
    node.getServiceNamed("stun").stopService()
    status, _, body = _http_get(reactor, "/healthz")
    assert (status, body) == (503, b"not running: stun\n")


def test_status_reports_identity_uptime_and_endpoints(running):
    reactor, node = running
    reactor.advance(12.5)
    status, head, body = _http_get(reactor, "/status")
    document = json.loads(body)
    assert status == 200 and "application/json" in head
    assert document["node_id"] == node.identity.node_id.hex()
    assert document["uptime_seconds"] == 12.5
    assert document["services"]["stun"] == {"running": True, "endpoints": ["udp:0.0.0.0:1234"]}
    assert document["bootstrap"].startswith("ztr1:")


def test_unknown_path_is_404(running):
    reactor, _ = running
    assert _http_get(reactor, "/nothing")[0] == 404


def test_port_in_use_stops_start_with_the_endpoint_named(tmp_path):
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        node = build_node(MemoryReactorClock(), _config(tmp_path, ("test", "stun.udp", [f"127.0.0.1:{port}"])))
        with pytest.raises(StartupError) as caught:
            node.privilegedStartService()
    finally:
        taken.close()
    assert str(caught.value) == f"zentalk-relay: cannot listen on udp 127.0.0.1:{port}: Address already in use"


def test_the_metrics_listener_serves_only_the_allowed_networks():
    from twisted.internet.address import IPv6Address
    from twisted.web.resource import Resource

    from zentalk_relay.monitoring import _QuietSite

    site = _QuietSite(Resource(), ("127.0.0.0/8", "::1/128", "10.1.0.0/16"))
    assert site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000)) is not None
    assert site.buildProtocol(IPv4Address("TCP", "10.1.2.3", 40000)) is not None
    assert site.buildProtocol(IPv6Address("TCP", "::ffff:10.1.2.3", 40000)) is not None
    assert site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000)) is None
    assert site.buildProtocol(IPv6Address("TCP", "2001:db8::1", 40000)) is None
    assert site.refused == 2
    assert _QuietSite(Resource(), ()).buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000)) is not None


def test_no_metric_label_is_an_address_or_a_peer_id(running):
    reactor, _ = running
    _, _, body = _http_get(reactor, "/metrics")
    import re

    labels = re.findall(r'(\w+)="([^"]*)"', body.decode())
    names = {name for name, _ in labels}
    assert not names & {"ip", "address", "peer", "peer_id", "node_id", "client", "host", "port"}
    for _, value in labels:
        assert not re.fullmatch(r"[0-9a-f]{16,}", value), value
        assert not re.fullmatch(r"\d+\.\d+\.\d+\.\d+(:\d+)?", value), value
