"""Hostile input for the TURN server, with hypothesis: it never raises, answers only requests, and leaks nothing."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.support.turnclient import CLIENT, PEER_V4, PEER_V4_B, PEER_V6, TurnClient, make_server
from zentalk_relay.nat import stun
from zentalk_relay.nat.stun import Attr, MessageClass, Method
from zentalk_relay.nat.turn import CloseRelay, OpenRelays, ToClient, ToPeer

TURN_METHODS = [Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND, Method.SEND, 0x0FF]
ATTRIBUTE_TYPES = [int(a) for a in Attr] + [0x7F00, 0xC000, 0x0000]


def _check_actions(actions, request: bytes | None = None) -> None:
    for action in actions:
        assert isinstance(action, (ToClient, ToPeer, OpenRelays, CloseRelay))
        if isinstance(action, ToClient):
            reply = stun.decode(action.data)
            assert reply.cls in (MessageClass.SUCCESS, MessageClass.ERROR)
            if request is not None and len(request) >= 20:
                assert reply.transaction_id == request[8:20]


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), tcp=st.booleans())
def test_random_bytes_never_raise(data, tcp):
    server = make_server()
    client = ("tcp" if tcp else "udp", CLIENT[1], CLIENT[2])
    _check_actions(server.handle(client, data, 0.0), data)
    assert server.channel_from_client(client, data, 0.0) is None
    assert server.from_peer(("130.0.0.1", 50000), data, PEER_V4, 0.0) is None


@st.composite
def _attributes(draw):
    return draw(st.lists(st.tuples(st.sampled_from(ATTRIBUTE_TYPES), st.binary(max_size=40)), max_size=8))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(TURN_METHODS), attributes=_attributes(), sha256=st.booleans(),
       cls=st.sampled_from([MessageClass.REQUEST, MessageClass.INDICATION]))
def test_signed_requests_with_arbitrary_attributes_never_raise(method, attributes, sha256, cls):
    server = make_server()
    client = TurnClient(server)
    client.allocate()
    client.sha256 = sha256
    data = client.build(method, attributes, cls=cls)
    actions = client.send(data, 1.0)
    _check_actions(actions, data)
    if cls is MessageClass.INDICATION:
        assert not [a for a in actions if isinstance(a, ToClient)]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), min_size=1, max_size=6),
       method=st.sampled_from(TURN_METHODS[:4]))
def test_byte_flipped_requests_never_succeed_unless_untouched(flips, method):
    server = make_server()
    client = TurnClient(server)
    client.allocate()
    original = client.build(method, [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0"), (Attr.LIFETIME, b"\0\0\x02\x58"),
                                     (Attr.CHANNEL_NUMBER, b"\x40\x00\0\0"),
                                     (Attr.XOR_PEER_ADDRESS, lambda t: stun.encode_xor_address(*PEER_V4, t))])
    data = bytearray(original)
    for index, value in flips:
        if index < len(data):
            data[index] = value
    actions = client.send(bytes(data), 1.0)
    _check_actions(actions)
    # MESSAGE-INTEGRITY covers what precedes it; what follows it may change (RFC 8489 section 14.5).
    covered = stun.decode(original).find(Attr.MESSAGE_INTEGRITY).offset + 24
    if bytes(data[:covered]) != original[:covered]:
        for action in actions:
            if isinstance(action, ToClient):
                assert stun.decode(action.data).cls is MessageClass.ERROR


class TurnLifecycle(RuleBasedStateMachine):
    """Random requests, data and time; sockets opened are closed exactly once, counts stay consistent."""

    def __init__(self) -> None:
        super().__init__()
        self.server = make_server(port_min=50000, port_max=50031, allocations_per_user=3, max_allocations=6)
        self.now = 0.0
        self.open: set = set()
        self.clients = []
        for index in range(4):
            transport = "tcp" if index % 2 else "udp"
            user, password = ("alice", "wonderland") if index < 2 else ("bob", "builder")
            client = TurnClient(self.server, client=(transport, CLIENT[1], ("192.0.2.30", 1000 + index)),
                                username=user, password=password)
            client.login()
            self.clients.append(client)

    def _run(self, actions) -> None:
        for action in actions:
            if isinstance(action, OpenRelays):
                ports = []
                for bind in action.binds:
                    port = next((p for p in bind.ports if (bind.host, p) not in self.open
                                 and (not bind.pair or (bind.host, p + 1) not in self.open)), None)
                    ports.append(port)
                    if port is not None:
                        self.open.add((bind.host, port))
                        if bind.pair:
                            self.open.add((bind.host, port + 1))
                self._run(self.server.relays_opened(action.token, ports, self.now))
            elif isinstance(action, CloseRelay):
                assert action.relay in self.open, f"closing {action.relay} twice or never opened"
                self.open.remove(action.relay)
            elif isinstance(action, ToClient):
                reply = stun.decode(action.data)
                if reply.get(Attr.NONCE) is not None:
                    for client in self.clients:
                        if client.client == action.client:
                            client.nonce = reply.get(Attr.NONCE)

    def _request(self, client, method, attributes) -> None:
        self._run(self.server.handle(client.client, client.build(method, attributes), self.now))

    @rule(index=st.integers(0, 3), lifetime=st.sampled_from([None, 0, 1, 900, 5000]),
          extra=st.sampled_from([(), ((Attr.EVEN_PORT, b"\x80"),), ((Attr.ADDITIONAL_ADDRESS_FAMILY, b"\x02\0\0\0"),),
                                 ((Attr.REQUESTED_ADDRESS_FAMILY, b"\x02\0\0\0"),)]))
    def allocate(self, index, lifetime, extra):
        attributes = [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0"), *extra]
        if lifetime is not None:
            attributes.append((Attr.LIFETIME, struct.pack("!I", lifetime)))
        self._request(self.clients[index], Method.ALLOCATE, attributes)

    @rule(index=st.integers(0, 3), lifetime=st.sampled_from([None, 0, 700]))
    def refresh(self, index, lifetime):
        attributes = [] if lifetime is None else [(Attr.LIFETIME, struct.pack("!I", lifetime))]
        self._request(self.clients[index], Method.REFRESH, attributes)

    @rule(index=st.integers(0, 3), peer=st.sampled_from([PEER_V4, PEER_V4_B, PEER_V6, ("127.0.0.1", 1)]))
    def permit(self, index, peer):
        self._request(self.clients[index], Method.CREATE_PERMISSION,
                      [(Attr.XOR_PEER_ADDRESS, lambda t: stun.encode_xor_address(*peer, t))])

    @rule(index=st.integers(0, 3), number=st.sampled_from([0x4000, 0x4001, 0x4FFF, 0x5000]),
          peer=st.sampled_from([PEER_V4, PEER_V4_B, PEER_V6]))
    def bind(self, index, number, peer):
        self._request(self.clients[index], Method.CHANNEL_BIND, [
            (Attr.CHANNEL_NUMBER, struct.pack("!HH", number, 0)),
            (Attr.XOR_PEER_ADDRESS, lambda t: stun.encode_xor_address(*peer, t))])

    @rule(index=st.integers(0, 3), number=st.sampled_from([0x4000, 0x4001, 0x4FFF]), size=st.integers(0, 1500))
    def channel_data(self, index, number, size):
        client = self.clients[index]
        hit = self.server.channel_from_client(client.client, struct.pack("!HH", number, size) + bytes(size), self.now)
        if hit is not None:
            assert hit[0] in self.open and len(hit[1]) == size

    @rule(peer=st.sampled_from([PEER_V4, PEER_V4_B, PEER_V6]), size=st.integers(0, 1500))
    def peer_data(self, peer, size):
        for relay in list(self.open):
            out = self.server.from_peer(relay, bytes(size), peer, self.now)
            if out is not None:
                assert self.server.relay_client(relay) is not None

    @rule(index=st.integers(0, 3))
    def close_stream(self, index):
        client = self.clients[index]
        if client.client[0] == "tcp":
            self._run(self.server.client_closed(client.client, self.now))

    @rule(seconds=st.sampled_from([0.5, 29.0, 31.0, 299.0, 301.0, 601.0, 1000.0]))
    def advance(self, seconds):
        self.now += seconds
        deadline = self.server.next_deadline()
        if deadline is not None and deadline <= self.now:
            self._run(self.server.expire(self.now))
        assert self.server.next_deadline() is None or self.server.next_deadline() > self.now

    @invariant()
    def counts_agree(self):
        gauges = self.server.gauges(self.now)
        live = sum(gauges["allocations"].values())
        assert live <= sum(len(a.relays) for a in map(self.server.allocation_for, [c.client for c in self.clients]) if a)
        assert self.server.allocation_count <= 6

    @precondition(lambda self: True)
    @rule()
    def everything_closes_at_the_end(self):
        self._run(self.server.close_all())
        assert self.open == set()
        assert self.server.allocation_count == 0


TurnLifecycle.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
test_turn_lifecycle = TurnLifecycle.TestCase
