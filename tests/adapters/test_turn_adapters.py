"""The NAT adapters on MemoryReactorClock: UDP and stream TURN clients, relayed sockets, the timer, RFC 5780."""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from tests.support.turnclient import PEER_V4, REALM, TurnClient, error_code, make_server
from zentalk_relay.nat import stun
from zentalk_relay.nat.binding import BehaviourResponder, BindingResponder, BindingStats
from zentalk_relay.nat.protocol import (
    BehaviourDatagramProtocol,
    NatDatagramProtocol,
    NatHub,
    NatStreamProtocol,
    RelayProtocol,
)
from zentalk_relay.nat.stun import Attr, MessageClass, Method
from zentalk_relay.nat.turn import RelayAddress

LOCAL = ("130.0.0.1", 3478)
CLIENT_ADDRESS = ("192.0.2.50", 40000)


class FakeSocket:
    def __init__(self, host="130.0.0.1", port=0):
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.address = (host, port)
        self.sent: list[tuple[bytes, tuple]] = []
        self.closed = False

    def fileno(self):
        return -1

    def sendto(self, data, address):
        self.sent.append((data, address))

    def recvfrom(self, size):
        raise BlockingIOError(errno.EAGAIN, "nothing queued")

    def close(self):
        self.closed = True


class FakeBinder:
    """``bind_udp`` without the kernel: ports in ``taken`` are in use."""

    def __init__(self, taken=()):
        self.taken = set(taken)
        self.sockets: dict[tuple, FakeSocket] = {}

    def __call__(self, host, port, buffer):
        if port in self.taken:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        sock = FakeSocket(host, port)
        self.sockets[host, port] = sock
        return sock


class Harness:
    """A TURN listener on a fake socket, a hub with fake relayed sockets, a memory reactor."""

    def __init__(self, **server_options):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000.0)
        self.server = make_server(relays={4: RelayAddress("130.0.0.1", "130.0.0.1")}, **server_options)
        self.binder = FakeBinder()
        self.hub = NatHub(self.reactor, self.server, 65536, bind=self.binder)
        self.listener = FakeSocket(*LOCAL)
        self.protocol = NatDatagramProtocol(BindingResponder("test"), self.hub)
        self.protocol.bind(LOCAL, self.listener.sendto)
        self.turn = TurnClient(self.server, client=("udp", LOCAL, CLIENT_ADDRESS))

    def datagram(self, data: bytes) -> list[bytes]:
        before = len(self.listener.sent)
        self.protocol.datagramReceived(data, CLIENT_ADDRESS)
        return [data for data, _ in self.listener.sent[before:]]

    def request(self, method, attributes=(), **kwargs) -> stun.Message:
        (reply,) = self.datagram(self.turn.build(method, attributes, **kwargs))
        return stun.decode(reply)

    def allocate(self) -> stun.Message:
        (challenge,) = self.datagram(self.turn.build(Method.ALLOCATE, auth=False))
        self.turn.nonce = stun.decode(challenge).get(Attr.NONCE)
        return self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0")])

    def relay_protocol(self) -> RelayProtocol:
        (relay,) = [entry for entry in self.hub.relays.values()]
        return relay.protocol

    def relay_socket(self) -> FakeSocket:
        (key,) = self.hub.relays
        return self.binder.sockets[key]


@pytest.fixture
def harness():
    return Harness()


def test_udp_allocation_relays_channel_data_both_ways(harness):
    reply = harness.allocate()
    assert reply.cls is MessageClass.SUCCESS, error_code(reply.raw)
    relayed = stun.decode_xor_address(reply.get(Attr.XOR_RELAYED_ADDRESS), reply.transaction_id)
    assert relayed in harness.binder.sockets and len(harness.reactor.readers) == 1
    assert harness.request(Method.CHANNEL_BIND, [
        (Attr.CHANNEL_NUMBER, b"\x40\x00\x00\x00"),
        (Attr.XOR_PEER_ADDRESS, lambda tid: stun.encode_xor_address(*PEER_V4, tid))]).cls is MessageClass.SUCCESS
    assert harness.datagram(b"\x40\x00\x00\x04ping") == []
    assert harness.relay_socket().sent == [(b"ping", PEER_V4)]
    harness.relay_protocol().datagramReceived(b"pong!", PEER_V4)
    assert harness.listener.sent[-1] == (b"\x40\x00\x00\x05pong!", CLIENT_ADDRESS)
    assert harness.server.stats.to_peer_bytes == 4 and harness.server.stats.to_client_bytes == 5


def test_send_indication_and_data_indication(harness):
    harness.allocate()
    harness.request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, lambda tid: stun.encode_xor_address(*PEER_V4,
                                                                                                          tid))])
    send = harness.turn.build(Method.SEND, [(Attr.XOR_PEER_ADDRESS, lambda tid: stun.encode_xor_address(*PEER_V4, tid)),
                                           (Attr.DATA, b"hi")], auth=False, cls=MessageClass.INDICATION)
    assert harness.datagram(send) == []
    assert harness.relay_socket().sent == [(b"hi", PEER_V4)]
    harness.relay_protocol().datagramReceived(b"yo", PEER_V4)
    data = stun.decode(harness.listener.sent[-1][0])
    assert (data.method, data.cls, data.get(Attr.DATA)) == (Method.DATA, MessageClass.INDICATION, b"yo")


def test_binding_on_a_turn_listener_is_answered_without_credentials(harness):
    request = stun.encode(Method.BINDING, MessageClass.REQUEST, os.urandom(12), fingerprint=False)
    (reply,) = harness.datagram(request)
    message = stun.decode(reply)
    assert stun.decode_xor_address(message.get(Attr.XOR_MAPPED_ADDRESS), message.transaction_id) == CLIENT_ADDRESS


def test_a_taken_port_is_skipped():
    harness = Harness(port_min=60000, port_max=60003)
    harness.binder.taken = {60000, 60001, 60003}
    reply = harness.allocate()
    assert stun.decode_xor_address(reply.get(Attr.XOR_RELAYED_ADDRESS), reply.transaction_id)[1] == 60002


def test_every_port_taken_is_508(harness):
    harness.binder.taken = set(range(49152, 65536))
    assert error_code(harness.allocate().raw) == 508
    assert harness.hub.relay_count == 0


def test_one_timer_follows_the_next_deadline_and_expiry_closes_the_socket(harness):
    harness.allocate()
    sock = harness.relay_socket()
    (call,) = harness.reactor.getDelayedCalls()
    assert call.getTime() == 1600.0
    harness.request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, lambda tid: stun.encode_xor_address(*PEER_V4,
                                                                                                          tid))])
    (call,) = harness.reactor.getDelayedCalls()
    assert call.getTime() == 1300.0
    harness.reactor.advance(300.0)
    (call,) = harness.reactor.getDelayedCalls()
    assert call.getTime() == 1600.0
    harness.reactor.advance(300.0)
    assert harness.reactor.getDelayedCalls() == []
    assert sock.closed and harness.hub.relay_count == 0


def test_stop_closes_relays_and_cancels_the_timer(harness):
    harness.allocate()
    sock = harness.relay_socket()
    harness.hub.stop()
    assert sock.closed and harness.reactor.getDelayedCalls() == [] and not harness.reactor.readers


class ScriptedSocket(FakeSocket):
    """recvfrom hands out queued datagrams, then EAGAIN."""

    def __init__(self, queue):
        super().__init__()
        self.queue = list(queue)

    def fileno(self):
        return 99

    def recvfrom(self, size):
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "again")
        item = self.queue.pop(0)
        if isinstance(item, OSError):
            raise item
        return item


def test_datagram_reader_reads_until_eagain_within_its_budget_and_survives_errors():
    from zentalk_relay.nat.protocol import DatagramReader

    reactor = MemoryReactorClock()
    got = []
    sock = ScriptedSocket([(b"a", ("192.0.2.1", 1)), OSError(errno.ECONNREFUSED, "refused"),
                           (b"b", ("2001:db8::1", 2, 0, 0)), (b"boom", ("192.0.2.1", 1)), (b"c", ("192.0.2.1", 1))])

    def receive(data, address):
        if data == b"boom":
            raise ValueError("a bug")
        got.append((data, address))

    reader = DatagramReader(reactor, sock, receive, budget=4)
    reader.start()
    assert reader in reactor.readers
    reader.doRead()
    assert got == [(b"a", ("192.0.2.1", 1)), (b"b", ("2001:db8::1", 2))] and reader.errors == 2
    reader.doRead()
    assert got[-1] == (b"c", ("192.0.2.1", 1))
    reader.stop()
    assert reader not in reactor.readers


def _framed_client(harness, kind="tcp"):
    transport = StringTransport(hostAddress=IPv4Address("TCP", *LOCAL), peerAddress=IPv4Address("TCP", *CLIENT_ADDRESS))
    protocol = NatStreamProtocol(BindingResponder("test"), harness.hub, kind)
    protocol.makeConnection(transport)
    turn = TurnClient(harness.server, client=(kind, LOCAL, CLIENT_ADDRESS))
    return protocol, transport, turn


def _read(transport) -> list[bytes]:
    data = transport.value()
    transport.clear()
    out = []
    while data:
        length = struct.unpack_from("!H", data, 2)[0]
        size = 20 + length if data[0] < 0x40 else (4 + length + 3) & ~3
        out.append(data[:size])
        data = data[size:]
    return out


def test_turn_over_tcp_split_anywhere_and_padded_channel_data(harness):
    protocol, transport, turn = _framed_client(harness)
    challenge = turn.build(Method.ALLOCATE, auth=False)
    for index in range(len(challenge)):
        protocol.dataReceived(challenge[index:index + 1])
    (reply,) = _read(transport)
    turn.nonce = stun.decode(reply).get(Attr.NONCE)
    allocate = turn.build(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0")])
    bind = turn.build(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, b"\x40\x01\x00\x00"),
                                             (Attr.XOR_PEER_ADDRESS, lambda t: stun.encode_xor_address(*PEER_V4, t))])
    protocol.dataReceived(allocate + bind)
    replies = [stun.decode(r) for r in _read(transport)]
    assert [r.cls for r in replies] == [MessageClass.SUCCESS, MessageClass.SUCCESS]
    protocol.dataReceived(b"\x40\x01\x00\x03abc\x00" + b"\x40\x01\x00\x01d")
    protocol.dataReceived(b"\x00\x00\x00")
    assert harness.relay_socket().sent == [(b"abc", PEER_V4), (b"d", PEER_V4)]
    harness.relay_protocol().datagramReceived(b"xyz", PEER_V4)
    assert transport.value() == b"\x40\x01\x00\x03xyz\x00"


def test_binding_over_tcp(harness):
    protocol, transport, _ = _framed_client(harness)
    protocol.dataReceived(stun.encode(Method.BINDING, MessageClass.REQUEST, os.urandom(12)))
    (reply,) = _read(transport)
    assert stun.decode(reply).cls is MessageClass.SUCCESS


def test_closing_the_stream_deletes_the_allocation(harness):
    protocol, transport, turn = _framed_client(harness, "tls")
    turn.login()
    turn.allocate()
    assert harness.server.allocation_for(turn.client) is not None
    protocol.connectionLost(None)
    assert harness.server.allocation_for(turn.client) is None


def test_garbage_on_the_stream_closes_it(harness):
    protocol, transport, _ = _framed_client(harness)
    protocol.dataReceived(bytes.fromhex("160301020001000100") + os.urandom(40))  # a TLS ClientHello
    assert transport.disconnecting
    assert harness.server.stats.dropped["bad_framing"] == 1


def test_a_client_that_does_not_read_loses_data_not_memory(harness):
    protocol, transport, turn = _framed_client(harness)
    protocol.dataReceived(turn.build(Method.ALLOCATE, auth=False))
    turn.nonce = stun.decode(_read(transport)[0]).get(Attr.NONCE)
    protocol.dataReceived(turn.build(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0")]))
    protocol.dataReceived(turn.build(Method.CHANNEL_BIND, [
        (Attr.CHANNEL_NUMBER, b"\x40\x01\x00\x00"), (Attr.XOR_PEER_ADDRESS, lambda t: stun.encode_xor_address(*PEER_V4, t))]))
    transport.clear()
    assert transport.producer is protocol
    protocol.pauseProducing()
    harness.relay_protocol().datagramReceived(b"lost", PEER_V4)
    assert transport.value() == b""
    assert harness.server.stats.dropped["client_backpressure"] == 1
    protocol.resumeProducing()
    harness.relay_protocol().datagramReceived(b"kept", PEER_V4)
    assert transport.value() == b"\x40\x01\x00\x04kept"


def test_rfc5780_change_request_leaves_from_the_asked_socket():
    addresses = [("127.0.0.1", 3478), ("127.0.0.1", 3479), ("127.0.0.2", 3478), ("127.0.0.2", 3479)]
    responder = BehaviourResponder("", BindingStats(), addresses)
    sockets = [FakeSocket(*address) for address in addresses]
    senders = [sock.sendto for sock in sockets]
    protocols = [BehaviourDatagramProtocol(responder, role, senders, None) for role in range(4)]
    source = ("192.0.2.9", 5555)
    plain = stun.encode(Method.BINDING, MessageClass.REQUEST, os.urandom(12), fingerprint=False)
    protocols[0].datagramReceived(plain, source)
    ((reply, to),) = sockets[0].sent
    message = stun.decode(reply)
    assert to == source
    assert stun.decode_address(message.get(Attr.OTHER_ADDRESS)) == addresses[3]
    assert stun.decode_address(message.get(Attr.RESPONSE_ORIGIN)) == addresses[0]
    for flags, role in ((0x06, 3), (0x04, 2), (0x02, 1), (0x00, 0)):
        for sock in sockets:
            sock.sent.clear()
        request = stun.encode(Method.BINDING, MessageClass.REQUEST, os.urandom(12),
                              [(Attr.CHANGE_REQUEST, bytes([0, 0, 0, flags]))])
        protocols[0].datagramReceived(request, source)
        assert [len(sock.sent) for sock in sockets] == [1 if index == role else 0 for index in range(4)]
        message = stun.decode(sockets[role].sent[0][0])
        assert message.cls is MessageClass.SUCCESS
        assert stun.decode_address(message.get(Attr.RESPONSE_ORIGIN)) == addresses[role]
        assert stun.decode_address(message.get(Attr.OTHER_ADDRESS)) == addresses[3]
        assert stun.decode_xor_address(message.get(Attr.XOR_MAPPED_ADDRESS), message.transaction_id) == source


def test_rfc5780_request_on_the_alternate_socket_names_the_primary_as_other():
    addresses = [("127.0.0.1", 3478), ("127.0.0.1", 3479), ("127.0.0.2", 3478), ("127.0.0.2", 3479)]
    responder = BehaviourResponder("", BindingStats(), addresses)
    reply, role = responder.respond(stun.encode(Method.BINDING, MessageClass.REQUEST, os.urandom(12)),
                                    ("192.0.2.9", 1), 3)
    assert role == 3 and stun.decode_address(stun.decode(reply).get(Attr.OTHER_ADDRESS)) == addresses[0]
    bad = stun.encode(Method.BINDING, MessageClass.REQUEST, os.urandom(12), [(Attr.CHANGE_REQUEST, b"\x06")])
    assert error_code(responder.respond(bad, ("192.0.2.9", 1), 0)[0]) == 400


def test_turn_client_realm_is_the_configured_one(harness):
    (challenge,) = harness.datagram(harness.turn.build(Method.ALLOCATE, auth=False))
    assert stun.decode(challenge).get(Attr.REALM) == REALM.encode()


class RecordingTransport:
    def __init__(self):
        self.written = []

    def write(self, data, address):
        self.written.append((data, address))


def test_probe_protocol_retransmits_on_the_clock_and_fires_done():
    import random

    from zentalk_relay.nat.nat_type import NatTypeProbe
    from zentalk_relay.nat.protocol import ProbeProtocol

    reactor = MemoryReactorClock()
    probe = NatTypeProbe(("127.0.0.1", 3478), random.Random(3), local=("127.0.0.1", 5000), rto=0.5, retries=1)
    protocol = ProbeProtocol(reactor, probe)
    transport = RecordingTransport()
    protocol.transport = transport
    protocol.startProtocol()
    assert len(transport.written) == 1
    reactor.advance(0.5)
    assert len(transport.written) == 2 and transport.written[0] == transport.written[1]
    request = stun.decode(transport.written[-1][0])
    reply = BindingResponder("").respond(request.raw, ("127.0.0.1", 5000))
    protocol.datagramReceived(reply, ("127.0.0.1", 3478))
    result = protocol.done.result
    assert result.reachable and not result.rfc5780 and result.behind_nat is False
    assert reactor.getDelayedCalls() == []
