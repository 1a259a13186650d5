"""RFC 5780 behaviour discovery: the probe against our own RFC 5780 responder behind simulated NATs."""

from __future__ import annotations

import os
import random

import pytest

from zentalk_relay.nat import stun
from zentalk_relay.nat.binding import BehaviourResponder, BindingResponder, BindingStats
from zentalk_relay.nat.nat_type import (
    ADDRESS_AND_PORT_DEPENDENT,
    ADDRESS_DEPENDENT,
    ENDPOINT_INDEPENDENT,
    UNKNOWN,
    NatBehaviour,
    NatTypeProbe,
)
from zentalk_relay.nat.stun import Attr, MessageClass, Method

SERVER = [("198.51.100.1", 3478), ("198.51.100.1", 3479), ("198.51.100.2", 3478), ("198.51.100.2", 3479)]
LOCAL = ("10.0.0.2", 5000)
PUBLIC_IP = "203.0.113.1"


class SimulatedNat:
    def __init__(self, mapping: str | None, filtering: str | None) -> None:
        self.mapping = mapping  # None: no NAT at all
        self.filtering = filtering
        self.ports: dict = {}
        self.contacted: set = set()

    def outbound(self, destination) -> tuple:
        if self.mapping is None:
            return LOCAL
        key = {ENDPOINT_INDEPENDENT: (), ADDRESS_DEPENDENT: destination[0],
               ADDRESS_AND_PORT_DEPENDENT: destination}[self.mapping]
        port = self.ports.setdefault(key, 40000 + len(self.ports))
        self.contacted.add(destination)
        return PUBLIC_IP, port

    def inbound_allowed(self, source) -> bool:
        if self.filtering in (None, ENDPOINT_INDEPENDENT):
            return True
        if self.filtering == ADDRESS_DEPENDENT:
            return any(source[0] == host for host, _ in self.contacted)
        return source in self.contacted


def _run(nat: SimulatedNat | None, responder=None, drop_all=False) -> NatBehaviour:
    responder = responder or BehaviourResponder("", BindingStats(), SERVER)
    probe = NatTypeProbe(SERVER[0], random.Random(1), local=LOCAL)
    now = 0.0
    sends = probe.start(now)
    for _ in range(100):
        if probe.result is not None:
            return probe.result
        delivered = []
        for destination, data in sends:
            if drop_all:
                continue
            source = nat.outbound(destination) if nat else LOCAL
            answer = responder.respond(data, source, SERVER.index(destination))
            if answer is None:
                continue
            reply, role = answer
            if nat is None or nat.inbound_allowed(SERVER[role]):
                delivered.append((reply, SERVER[role]))
        sends = []
        for reply, origin in delivered:
            sends += probe.receive(reply, origin, now)
        if not delivered and probe.result is None:
            now = probe.next_deadline()
            sends = probe.timeout(now)
    raise AssertionError("the probe did not finish")


@pytest.mark.parametrize("mapping", [ENDPOINT_INDEPENDENT, ADDRESS_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT])
@pytest.mark.parametrize("filtering", [ENDPOINT_INDEPENDENT, ADDRESS_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT])
def test_every_mapping_and_filtering_behaviour_is_told_apart(mapping, filtering):
    result = _run(SimulatedNat(mapping, filtering))
    assert (result.mapping, result.filtering) == (mapping, filtering)
    assert result.behind_nat is True and result.rfc5780 and result.other == SERVER[3]
    assert result.mapped[0] == PUBLIC_IP


@pytest.mark.parametrize("mapping,filtering,name", [
    (ENDPOINT_INDEPENDENT, ENDPOINT_INDEPENDENT, "full cone"),
    (ENDPOINT_INDEPENDENT, ADDRESS_DEPENDENT, "restricted cone"),
    (ENDPOINT_INDEPENDENT, ADDRESS_AND_PORT_DEPENDENT, "port-restricted cone"),
    (ADDRESS_DEPENDENT, ENDPOINT_INDEPENDENT, "symmetric"),
    (ADDRESS_AND_PORT_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT, "symmetric"),
])
def test_classic_names(mapping, filtering, name):
    assert _run(SimulatedNat(mapping, filtering)).classic == name


def test_no_nat_is_open_internet():
    result = _run(None)
    assert (result.behind_nat, result.mapping, result.filtering, result.classic) == \
        (False, ENDPOINT_INDEPENDENT, ENDPOINT_INDEPENDENT, "open internet")


def test_a_server_without_rfc5780_gives_the_mapped_address_only():
    class Plain:
        def respond(self, data, source, role):
            reply = BindingResponder("").respond(data, source)
            return None if reply is None else (reply, role)

    result = _run(SimulatedNat(ENDPOINT_INDEPENDENT, ENDPOINT_INDEPENDENT), responder=Plain())
    assert result.reachable and not result.rfc5780 and result.mapping == UNKNOWN and result.classic == UNKNOWN
    assert result.mapped == (PUBLIC_IP, 40000)


def test_silence_is_udp_blocked_after_bounded_retransmissions():
    probe = NatTypeProbe(SERVER[0], random.Random(1), rto=0.5, retries=2)
    sends = probe.start(0.0)
    times = [0.0]
    while probe.result is None:
        now = probe.next_deadline()
        sends += probe.timeout(now)
        times.append(now)
    assert len(sends) == 3 and times == [0.0, 0.5, 1.5, 3.5]
    assert probe.result.classic == "UDP blocked" and not probe.result.reachable


def test_stray_and_malformed_datagrams_are_ignored():
    probe = NatTypeProbe(SERVER[0], random.Random(1))
    ((_, request),) = probe.start(0.0)
    assert probe.receive(b"junk", SERVER[0], 0.1) == []
    other = stun.encode(Method.BINDING, MessageClass.SUCCESS, os.urandom(12))
    assert probe.receive(other, SERVER[0], 0.1) == [] and probe.result is None
    tid = stun.decode(request).transaction_id
    error = stun.encode(Method.BINDING, MessageClass.ERROR, tid, [(Attr.ERROR_CODE, stun.encode_error_code(400, "x"))])
    probe.receive(error, SERVER[0], 0.1)
    assert probe.result.reachable and probe.result.mapped is None


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=500)
@given(data=st.binary(max_size=200), role=st.integers(0, 3), change=st.binary(min_size=0, max_size=6))
def test_behaviour_responder_never_raises_and_answers_from_a_known_socket(data, role, change):
    responder = BehaviourResponder("x", BindingStats(), SERVER)
    for datagram in (data, stun.encode(Method.BINDING, MessageClass.REQUEST, os.urandom(12),
                                       [(Attr.CHANGE_REQUEST, change)])):
        answer = responder.respond(datagram, ("192.0.2.1", 9), role)
        if answer is not None:
            reply, sender = answer
            assert 0 <= sender <= 3
            stun.decode(reply)


@settings(max_examples=300)
@given(replies=st.lists(st.binary(max_size=120), max_size=10))
def test_probe_survives_garbage(replies):
    probe = NatTypeProbe(SERVER[0], random.Random(2), local=LOCAL)
    probe.start(0.0)
    for reply in replies:
        probe.receive(reply, SERVER[0], 0.1)
    now = 0.0
    for _ in range(40):
        if probe.result is not None:
            break
        now = probe.next_deadline()
        probe.timeout(now)
    assert probe.result is not None
