"""The ``zr`` ping extension (a relay's key) and the owner's ``DhtNode.ping``: answers, retries, errors."""

from __future__ import annotations

import random

import fastbencode
import pytest

from zentalk_relay.dht import krpc
from zentalk_relay.dht.bep42 import Bep42Policy
from zentalk_relay.dht.krpc import ErrorMessage, NodeInfo, Ping, Response
from zentalk_relay.dht.node import CLIENT_VERSION, DhtConfig, DhtNode, Pinged

OWN = b"n" * 20
OTHER = b"o" * 20
RELAY_KEY = bytes(range(32))
SOURCE = ("198.51.100.7", 6881)
PEER = NodeInfo(b"p" * 20, "203.0.113.9", 6881)


def _node(**options) -> DhtNode:
    config = DhtConfig(**{"bep42": Bep42Policy.OFF, **options})
    return DhtNode(OWN, now=0.0, rng=random.Random(3), config=config)


def _raw_response(**body) -> bytes:
    fields = {name.encode(): value for name, value in body.items()}
    return fastbencode.bencode({b"t": b"aa", b"y": b"r", b"r": {b"id": OTHER, **fields}})


# -- the codec ---------------------------------------------------------------------------------


def test_ping_asking_for_the_relay_key_carries_zr_1():
    data = krpc.encode(Ping(b"aa", OTHER, want_relay=True))
    assert fastbencode.bdecode(data)[b"a"] == {b"id": OTHER, b"zr": 1}
    assert krpc.decode(data) == Ping(b"aa", OTHER, want_relay=True)
    plain = krpc.encode(Ping(b"aa", OTHER))
    assert b"zr" not in fastbencode.bdecode(plain)[b"a"]
    assert krpc.decode(plain).want_relay is False


@pytest.mark.parametrize("value", [0, 2, -1, b"1", [1]])
def test_a_zr_argument_other_than_1_does_not_ask(value):
    data = fastbencode.bencode({b"a": {b"id": OTHER, b"zr": value}, b"q": b"ping", b"t": b"aa", b"y": b"q"})
    assert krpc.decode(data) == Ping(b"aa", OTHER)


def test_response_with_a_relay_key_round_trips():
    response = Response(b"aa", OTHER, your_ip=SOURCE, client=CLIENT_VERSION, relay_key=RELAY_KEY)
    data = krpc.encode(response)
    assert fastbencode.bdecode(data)[b"r"][b"zr"] == RELAY_KEY
    assert krpc.decode(data) == response
    assert krpc.decode(_raw_response(zr=RELAY_KEY)).relay_key == RELAY_KEY


@pytest.mark.parametrize("value", [RELAY_KEY[:31], RELAY_KEY + b"\x00", b"", 1, [RELAY_KEY], {b"k": RELAY_KEY}],
                         ids=["31", "33", "empty", "int", "list", "dict"])
def test_a_malformed_relay_key_is_ignored(value):
    response = krpc.decode(_raw_response(zr=value))
    assert response == Response(b"aa", OTHER)
    assert krpc.decode(_raw_response()).relay_key is None


# -- the server side ---------------------------------------------------------------------------


def _answers(node, query, source=SOURCE, now=1.0):
    """What ``node`` sends back to ``query``, less the verification ping of an unknown querier."""
    data = krpc.encode(query)
    out = node.handle(data, source, now)
    answers = [d for d in out if not isinstance(krpc.decode(d.data), Ping)]
    assert len(answers) == 1 and answers[0].address == source
    return data, answers[0].data


def test_a_relay_answers_a_ping_that_asks_with_its_key():
    node = _node()
    node.relay_key = RELAY_KEY
    _, data = _answers(node, Ping(b"aa", OTHER, want_relay=True))
    assert krpc.decode(data) == Response(b"aa", OWN, your_ip=SOURCE, client=CLIENT_VERSION, relay_key=RELAY_KEY)


def test_no_relay_key_without_asking_or_without_one():
    relay = _node()
    relay.relay_key = RELAY_KEY
    _, data = _answers(relay, Ping(b"aa", OTHER))
    assert krpc.decode(data).relay_key is None and b"zr" not in fastbencode.bdecode(data)[b"r"]
    plain = _node()
    _, data = _answers(plain, Ping(b"aa", OTHER, want_relay=True))
    assert krpc.decode(data) == Response(b"aa", OWN, your_ip=SOURCE, client=CLIENT_VERSION)


@pytest.mark.parametrize("source", [SOURCE, ("2001:db8::7", 6881)])
def test_the_relay_key_answer_stays_within_the_amplification_budget(source):
    family = 6 if ":" in source[0] else 4
    node = _node(family=family)
    node.relay_key = RELAY_KEY
    # The smallest ping that asks: a read-only querier (never verified), no version, a short tid.
    query, data = _answers(node, Ping(b"", OTHER, read_only=True, want_relay=True), source)
    assert not node.table.is_verified(source, 1.0)
    assert len(data) <= node.config.amplification * len(query)
    assert krpc.decode(data).relay_key == RELAY_KEY  # 3 × is room enough for the key


def test_a_tighter_budget_cuts_the_answer_not_the_limit():
    node = _node(amplification=1)
    node.relay_key = RELAY_KEY
    query, data = _answers(node, Ping(b"", OTHER, read_only=True, want_relay=True))
    assert len(data) <= len(query)
    answer = krpc.decode(data)
    assert answer.tid == b"" and answer.sender == OWN
    assert node.stats.trimmed == 1


# -- DhtNode.ping ------------------------------------------------------------------------------


def _sent(out):
    return [(krpc.decode(d.data), d.address) for d in out]


def _pinged(node, events=None):
    events = node.take_events() if events is None else events
    return [event for event in events if isinstance(event, Pinged)]


def test_ping_answered_ends_with_the_response():
    node = _node()
    op, out = node.ping(PEER.address, 10.0, want_relay=True)
    ((query, address),) = _sent(out)
    assert address == PEER.address and isinstance(query, Ping) and query.want_relay and query.sender == OWN
    assert node.next_deadline() == 10.0 + node.config.query_timeout
    answer = Response(query.tid, PEER.id, relay_key=RELAY_KEY)
    assert node.handle(krpc.encode(answer), PEER.address, 10.5) == []
    assert _pinged(node) == [Pinged(op, PEER.address, answer)]
    assert node.gauges(10.5)["operations"] == 0 and node.gauges(10.5)["transactions"] == 0
    assert node.table.get(PEER.id) is not None  # it answered: it may enter the table
    # A second answer to the same transaction is nobody's.
    assert node.handle(krpc.encode(answer), PEER.address, 10.6) == []
    assert node.take_events() == [] and node.stats.dropped["unknown_transaction"] == 1


def test_ping_without_want_relay_does_not_ask():
    node = _node()
    _, out = node.ping(PEER.address, 0.0)
    ((query, _),) = _sent(out)
    assert isinstance(query, Ping) and not query.want_relay
    assert b"zr" not in fastbencode.bdecode(out[0].data)[b"a"]


def test_ping_unanswered_is_retried_once_then_ends_with_none():
    node = _node()
    node.table.heard_from(PEER.id, PEER.address, 0.0, responded=True)
    timeout = node.config.query_timeout
    op, out = node.ping(PEER.address, 1.0, want_relay=True)
    ((first, _),) = _sent(out)
    # Not due yet: nothing happens just before the timeout.
    assert node.tick(1.0 + timeout - 0.01) == [] and _pinged(node) == []
    retry = _sent(node.tick(1.0 + timeout))
    assert [(type(m), m.want_relay, a) for m, a in retry] == [(Ping, True, PEER.address)]
    assert retry[0][0].tid != first.tid
    assert _pinged(node) == [] and node.next_deadline() == 1.0 + 2 * timeout
    assert node.table.get(PEER.id).failures == 0
    assert node.tick(1.0 + 2 * timeout) == []
    assert _pinged(node) == [Pinged(op, PEER.address, None)]
    assert node.table.get(PEER.id).failures == 1
    assert node.stats.outcomes["ping", "timeout"] == 1
    assert node.gauges(10.0)["operations"] == 0 and node.gauges(10.0)["transactions"] == 0


def test_late_answer_to_the_first_attempt_is_not_taken():
    node = _node()
    op, out = node.ping(PEER.address, 0.0)
    ((first, _),) = _sent(out)
    ((retry, _),) = _sent(node.tick(2.0))
    node.handle(krpc.encode(Response(first.tid, PEER.id)), PEER.address, 2.5)
    assert _pinged(node) == []
    answer = Response(retry.tid, PEER.id)
    node.handle(krpc.encode(answer), PEER.address, 2.6)
    assert _pinged(node) == [Pinged(op, PEER.address, answer)]


def test_no_retries_configured_gives_up_after_one_timeout():
    node = _node(query_retries=0)
    op, _ = node.ping(PEER.address, 0.0)
    assert node.tick(2.0) == []
    assert _pinged(node) == [Pinged(op, PEER.address, None)]


def test_ping_error_answer_ends_with_none():
    node = _node()
    op, out = node.ping(PEER.address, 0.0, want_relay=True)
    ((query, _),) = _sent(out)
    node.handle(krpc.encode(ErrorMessage(query.tid, 204, "Method Unknown")), PEER.address, 0.5)
    assert _pinged(node) == [Pinged(op, PEER.address, None)]
    assert node.stats.outcomes["ping", "error"] == 1
    # Over: its timeout sends nothing and ends nothing.
    assert node.tick(10.0) == [] and _pinged(node) == []


def test_answers_from_another_address_are_ignored():
    node = _node()
    op, out = node.ping(PEER.address, 0.0, want_relay=True)
    ((query, _),) = _sent(out)
    forged = Response(query.tid, PEER.id, relay_key=b"f" * 32)
    for source in [("203.0.113.66", 6881), (PEER.ip, 6882)]:
        assert node.handle(krpc.encode(forged), source, 0.5) == []
        node.handle(krpc.encode(ErrorMessage(query.tid, 201, "x")), source, 0.5)
    assert _pinged(node) == [] and node.stats.dropped["unexpected_source"] == 4
    # The genuine answer still counts.
    answer = Response(query.tid, PEER.id, relay_key=RELAY_KEY)
    node.handle(krpc.encode(answer), PEER.address, 0.6)
    assert _pinged(node) == [Pinged(op, PEER.address, answer)]


def test_several_pings_end_separately():
    node = _node()
    a, out_a = node.ping(("203.0.113.1", 1), 0.0)
    b, out_b = node.ping(("203.0.113.2", 2), 0.0)
    assert a != b
    ((query_b, _),) = _sent(out_b)
    answer = Response(query_b.tid, b"b" * 20)
    node.handle(krpc.encode(answer), ("203.0.113.2", 2), 0.1)
    assert _pinged(node) == [Pinged(b, ("203.0.113.2", 2), answer)]
    node.tick(2.0)
    node.tick(4.0)
    assert _pinged(node) == [Pinged(a, ("203.0.113.1", 1), None)]
