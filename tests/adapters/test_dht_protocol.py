"""DhtProtocol on a task.Clock with fake UDP transports: datagrams, the one timer, Deferreds, find_relays.

Time moves only by ``clock.advance()``. Two protocols talk through a
``Wire`` that hands each datagram to the other side at once or after a
fixed latency (a ``callLater`` on the same clock).
"""

from __future__ import annotations

import errno
import random
from dataclasses import replace

import pytest
from nacl.signing import SigningKey
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import InvalidAddressError
from twisted.python.failure import Failure

from zentalk_relay.dht import krpc
from zentalk_relay.dht.bep42 import Bep42Policy
from zentalk_relay.dht.items import Item
from zentalk_relay.dht.krpc import FindNode, GetItem, GetPeers, Ping, Response
from zentalk_relay.dht.lookup import LookupKind, LookupResult
from zentalk_relay.dht.node import DhtConfig, DhtNode, OperationDone, PeerAnnounced, Pinged
from zentalk_relay.dht.protocol import DhtProtocol, fetch_record, find_relays
from zentalk_relay.dht.records import RECORD_SALT, RELAYS_INFO_HASH, RelayRecord, record_target

START = 1_000_000.0
OWN_ID = b"n" * 20
OTHER_ID = b"o" * 20
LOCAL = ("192.0.2.1", 6881)
SOURCE = ("198.51.100.7", 6881)
PEER = ("203.0.113.9", 6881)
RELAY = ("192.0.2.10", 6881)
READER = ("192.0.2.20", 6881)
RELAY_SIGNING_KEY = SigningKey(bytes(range(32)))
RELAY_KEY = bytes(RELAY_SIGNING_KEY.verify_key)
OTHER_SIGNING_KEY = SigningKey(bytes(range(1, 33)))
OTHER_KEY = bytes(OTHER_SIGNING_KEY.verify_key)


# -- fakes and helpers ---------------------------------------------------------------------------


class FakeUdpTransport:
    """What DhtProtocol uses of a UDP port: ``write(data, address)``, refusing what a real port refuses.

    Like twisted.internet.udp.Port: an address of the other family raises
    InvalidAddressError; like the kernel: port 0 raises EINVAL. ``error``,
    when set, is raised by every write (an unreachable network, say).
    """

    def __init__(self, address, family=4, wire=None):
        self.address = address
        self.family = family
        self.wire = wire
        self.error: Exception | None = None
        self.attempts: list[tuple[bytes, tuple]] = []
        self.written: list[tuple[bytes, tuple]] = []

    def write(self, data, address):
        self.attempts.append((data, address))
        if (":" in address[0]) != (self.family == 6):
            raise InvalidAddressError(address[0], "an address of the other family")
        if address[1] == 0:
            raise OSError(errno.EINVAL, "Invalid argument")
        if self.error is not None:
            raise self.error
        self.written.append((data, address))
        if self.wire is not None:
            self.wire.deliver(self.address, address, data)

    def decoded(self):
        return [(krpc.decode(data), address) for data, address in self.written]


class Wire:
    """Datagrams between protocols on one clock: ``latency`` None delivers synchronously.

    ``tamper(source, destination, data)`` may rewrite a datagram on its way.
    """

    def __init__(self, clock, latency=0.01, tamper=None):
        self.clock = clock
        self.latency = latency
        self.tamper = tamper
        self.protocols: dict[tuple, DhtProtocol] = {}

    def attach(self, protocol, address):
        transport = FakeUdpTransport(address, wire=self)
        self.protocols[address] = protocol
        protocol.makeConnection(transport)
        return transport

    def deliver(self, source, destination, data):
        target = self.protocols.get(destination)
        if target is None:
            return  # nobody there: lost
        if self.tamper is not None:
            data = self.tamper(source, destination, data)
        if self.latency is None:
            target.datagramReceived(data, source)
        else:
            self.clock.callLater(self.latency, target.datagramReceived, data, source)


def _clock() -> task.Clock:
    clock = task.Clock()
    clock.advance(START)
    return clock


def _node(clock, node_id=OWN_ID, **options) -> DhtNode:
    config = DhtConfig(**{"bep42": Bep42Policy.OFF, **options})
    return DhtNode(node_id, now=clock.seconds(), rng=random.Random(node_id), config=config)


def _connected(clock, node=None, **options):
    node = node or _node(clock, **options)
    protocol = DhtProtocol(clock, node)
    transport = FakeUdpTransport(LOCAL)
    protocol.makeConnection(transport)
    return protocol, transport


def _timers(clock) -> list[float]:
    return sorted(call.getTime() for call in clock.getDelayedCalls() if call.active())


def _outcome(d: Deferred):
    """What ``d`` fired with (a Failure for an error); fails the test if it has not fired."""
    box = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


def _result(d: Deferred):
    outcome = _outcome(d)
    if isinstance(outcome, Failure):
        outcome.raiseException()
    return outcome


def _run(clock, d: Deferred, limit=120.0):
    """Advance the clock from one delayed call to the next until ``d`` fires; its result."""
    end = clock.seconds() + limit
    while not d.called:
        times = _timers(clock)
        assert times and times[0] <= end, "nothing left to run or out of time before the Deferred fired"
        clock.advance(max(0.0, times[0] - clock.seconds()))
    return _result(d)


# -- one protocol: datagrams, the timer, operations -------------------------------------------------


def test_a_query_is_answered_to_its_source():
    clock = _clock()
    protocol, transport = _connected(clock)
    protocol.datagramReceived(krpc.encode(Ping(b"aa", OTHER_ID)), SOURCE)
    sent = transport.decoded()
    answers = [(m, a) for m, a in sent if isinstance(m, Response)]
    assert answers == [(Response(b"aa", OWN_ID, your_ip=SOURCE, client=protocol.node.config.client_version),
                        SOURCE)]
    # And the unknown querier is pinged once to verify it: a transaction with a deadline.
    assert [(type(m), a) for m, a in sent if not isinstance(m, Response)] == [(Ping, SOURCE)]
    assert _timers(clock) == [protocol.node.next_deadline()] == [START + 2.0]


def test_the_relay_key_goes_out_to_a_ping_that_asks():
    clock = _clock()
    protocol, transport = _connected(clock)
    protocol.node.relay_key = RELAY_KEY
    protocol.datagramReceived(krpc.encode(Ping(b"aa", OTHER_ID, read_only=True, want_relay=True)), SOURCE)
    ((answer, address),) = transport.decoded()
    assert address == SOURCE and answer.relay_key == RELAY_KEY


def test_one_timer_follows_the_node_deadline_through_a_ping_that_times_out():
    clock = _clock()
    protocol, transport = _connected(clock)
    node = protocol.node
    assert _timers(clock) == [node.next_deadline()] == [START + node.config.expiry_interval]
    d = protocol.ping(PEER, want_relay=True)
    ((query, address),) = transport.decoded()
    assert isinstance(query, Ping) and query.want_relay and address == PEER
    assert not d.called
    assert _timers(clock) == [node.next_deadline()] == [START + 2.0]
    clock.advance(1.5)
    assert len(transport.written) == 1 and not d.called
    clock.advance(0.5)  # the timeout: sent again
    assert [type(m) for m, _ in transport.decoded()] == [Ping, Ping]
    assert _timers(clock) == [node.next_deadline()] == [START + 4.0]
    assert not d.called
    clock.advance(2.0)  # the retry's timeout: over
    pinged = _result(d)
    assert isinstance(pinged, Pinged) and (pinged.address, pinged.response) == (PEER, None)
    assert len(transport.written) == 2
    assert _timers(clock) == [node.next_deadline()] == [START + node.config.expiry_interval]


def test_an_answer_fires_the_ping_and_moves_the_timer():
    clock = _clock()
    protocol, transport = _connected(clock)
    d = protocol.ping(PEER, want_relay=True)
    ((query, _),) = transport.decoded()
    clock.advance(0.5)
    answer = Response(query.tid, OTHER_ID, relay_key=RELAY_KEY)
    protocol.datagramReceived(krpc.encode(answer), PEER)
    pinged = _result(d)
    assert isinstance(pinged, Pinged) and (pinged.address, pinged.response) == (PEER, answer)
    assert _timers(clock) == [protocol.node.next_deadline()]
    assert protocol.node.next_deadline() > START + 2.0  # no transaction left


def test_a_send_error_is_counted_and_the_operation_still_ends():
    clock = _clock()
    protocol, transport = _connected(clock)
    transport.error = OSError(errno.ENETUNREACH, "Network is unreachable")
    d = protocol.ping(PEER)
    assert protocol.send_errors == 1 and len(transport.attempts) == 1 and not d.called
    clock.advance(2.0)
    assert protocol.send_errors == 2
    clock.advance(2.0)
    assert _result(d).response is None
    assert protocol.send_errors == 2


def test_an_address_of_the_other_family_is_a_send_error_too():
    clock = _clock()
    protocol, transport = _connected(clock)
    d = protocol.ping(("2001:db8::9", 6881), want_relay=True)
    assert protocol.send_errors == 1 and transport.written == []
    clock.pump([2.0, 2.0])  # each timeout at its time
    assert _result(d).response is None and protocol.send_errors == 2


def test_operations_fire_with_operation_done():
    clock = _clock()
    done = []
    node = _node(clock)
    protocol = DhtProtocol(clock, node, on_operation=done.append)
    transport = FakeUdpTransport(LOCAL)
    protocol.makeConnection(transport)
    d = protocol.find_node(b"t" * 20)  # an empty table and no bootstrap: over at once
    result = _result(d)
    assert isinstance(result, OperationDone) and result.kind == "find_node" and done == [result]
    d = protocol.bootstrap([PEER])
    ((query, address),) = transport.decoded()
    assert isinstance(query, FindNode) and query.target == OWN_ID and address == PEER
    clock.pump([2.0, 2.0])  # each timeout at its time
    assert _result(d).kind == "bootstrap" and len(done) == 2


def test_other_events_go_to_on_event():
    clock = _clock()
    events = []
    protocol = DhtProtocol(clock, _node(clock), on_event=events.append)
    transport = FakeUdpTransport(LOCAL)
    protocol.makeConnection(transport)
    protocol.datagramReceived(krpc.encode(GetPeers(b"g", OTHER_ID, b"h" * 20)), SOURCE)
    ((answer, _),) = [(m, a) for m, a in transport.decoded() if isinstance(m, Response)]
    protocol.datagramReceived(krpc.encode(krpc.AnnouncePeer(b"a", OTHER_ID, b"h" * 20, 7000, answer.token)),
                              SOURCE)
    assert events == [PeerAnnounced(b"h" * 20, (SOURCE[0], 7000))]


def test_replace_node_fails_pending_operations_and_serves_the_new_node():
    clock = _clock()
    protocol, transport = _connected(clock)
    old = protocol.node
    pending = [protocol.ping(PEER), protocol.bootstrap([PEER])]
    new = _node(clock, node_id=b"m" * 20)
    protocol.replace_node(new)
    assert protocol.node is new
    for d in pending:
        outcome = _outcome(d)
        assert isinstance(outcome, Failure) and outcome.check(RuntimeError)
    assert _timers(clock) == [new.next_deadline()]
    # The old node's timeouts are no longer run, nor do they fire anything.
    clock.advance(10.0)
    assert old.gauges(clock.seconds())["operations"] == 2
    d = protocol.ping(PEER)
    assert transport.decoded()[-1][0].sender == b"m" * 20
    clock.pump([2.0, 2.0])  # each timeout at its time
    assert _result(d).response is None


def test_stopping_cancels_the_timer_and_sends_nothing():
    clock = _clock()
    protocol, transport = _connected(clock)
    protocol.ping(PEER)
    protocol.doStop()
    assert _timers(clock) == []
    clock.advance(10.0)
    assert len(transport.written) == 1


# -- two protocols: finding relays -------------------------------------------------------------------


RECORD = RelayRecord(RELAY_KEY, bytes(range(100, 132)), bytes(range(200, 232)), (("192.0.2.10", 443),),
                     capabilities=1, version="test", load=10, timestamp=1767225600)


def _relay(clock, wire, *, relay_key=RELAY_KEY, item: Item | None = None, extra_peers=()):
    """A relay's node: its key answered to ``zr`` pings, its record stored, its address announced."""
    node = _node(clock, node_id=b"r" * 20)
    now = clock.seconds()
    node.relay_key = relay_key
    node.items.put(item if item is not None else RECORD.sign(RELAY_SIGNING_KEY, 3), now)
    for address in (RELAY, *extra_peers):
        node.peers.announce(RELAYS_INFO_HASH, address, now)
    protocol = DhtProtocol(clock, node)
    wire.attach(protocol, RELAY)
    return protocol


def _reader(clock, wire):
    """A client's read-only node (what discovery runs), bootstrapped through the relay."""
    node = _node(clock, node_id=b"c" * 20, read_only=True, get_padding=400)
    protocol = DhtProtocol(clock, node)
    transport = wire.attach(protocol, READER)
    done = _run(clock, protocol.bootstrap([RELAY]))
    assert done.kind == "bootstrap" and done.result.responded == 1
    return protocol, transport


def _find(clock, reader, **options):
    return _run(clock, Deferred.fromCoroutine(find_relays(reader, rng=random.Random(0), **options)))


def _queries(transport, kind):
    return [(m, a) for m, a in transport.decoded() if isinstance(m, kind)]


@pytest.mark.parametrize("latency", [None, 0.01], ids=["synchronous", "latency"])
def test_find_relays_finds_and_verifies_a_record(latency):
    clock = _clock()
    wire = Wire(clock, latency)
    _relay(clock, wire)
    reader, transport = _reader(clock, wire)
    known: dict = {}
    assert _find(clock, reader, known=known) == [RECORD]
    assert known == {RELAY: RELAY_KEY}
    (ping, _), = _queries(transport, Ping)
    assert ping.want_relay
    assert [m.target for m, _ in _queries(transport, GetItem)] == [record_target(RELAY_KEY)]
    # Walking again: the key is known, so no ping; ``skip`` leaves the record out, and its get.
    assert _find(clock, reader, known=known) == [RECORD]
    assert _find(clock, reader, known=known, skip=lambda key: key == RELAY_KEY) == []
    assert len(_queries(transport, Ping)) == 1 and len(_queries(transport, GetItem)) == 2


def test_fetch_record_reads_one_relay():
    clock = _clock()
    wire = Wire(clock)
    _relay(clock, wire)
    reader, _ = _reader(clock, wire)
    assert _run(clock, Deferred.fromCoroutine(fetch_record(reader, RELAY_KEY))) == RECORD
    assert _run(clock, Deferred.fromCoroutine(fetch_record(reader, OTHER_KEY))) is None


def test_a_record_of_another_key_than_the_ping_said_is_not_taken():
    clock = _clock()
    wire = Wire(clock)
    foreign = replace(RECORD, key=OTHER_KEY).sign(OTHER_SIGNING_KEY, 3)
    _relay(clock, wire, item=foreign)  # says RELAY_KEY, holds a record of OTHER_KEY
    reader, transport = _reader(clock, wire)
    assert _find(clock, reader) == []
    assert [m.target for m, _ in _queries(transport, GetItem)] == [record_target(RELAY_KEY)]


def test_a_record_signed_by_another_key_is_refused_even_when_served_for_the_key():
    clock = _clock()
    foreign = replace(RECORD, key=OTHER_KEY).sign(OTHER_SIGNING_KEY, 3)
    served = []

    def substitute(source, destination, data):
        # On the way to the reader, every item in an answer becomes the other key's record.
        message = krpc.decode(data)
        if isinstance(message, Response) and message.value is not None:
            served.append(message)
            message = replace(message, value=foreign.value, key=foreign.key, signature=foreign.signature,
                              seq=foreign.seq)
            return krpc.encode(message)
        return data

    wire = Wire(clock, tamper=substitute)
    _relay(clock, wire)
    reader, _ = _reader(clock, wire)
    assert _find(clock, reader) == []
    assert len(served) == 1 and served[0].key == RELAY_KEY  # the genuine record was on its way


class GetAnsweredWith:
    """Stands in for a DhtProtocol whose every ``get`` ends at once with ``item`` (no lookup, no target check)."""

    def __init__(self, item):
        self.item = item
        self.asked: list[tuple] = []

    def get(self, target, salt=b"", seq=None):
        self.asked.append((target, salt, seq))
        result = LookupResult(LookupKind.GET, target, (), (), (), self.item, 1, 1, 1, 1, 0, START, START)
        return succeed(OperationDone(1, "get", result))


def test_fetch_record_checks_the_key_itself():
    """Whatever a lookup lets through, a record signed by another key than the one asked for is refused."""
    foreign = replace(RECORD, key=OTHER_KEY).sign(OTHER_SIGNING_KEY, 3)
    dht = GetAnsweredWith(foreign)
    assert _result(Deferred.fromCoroutine(fetch_record(dht, RELAY_KEY))) is None
    assert dht.asked == [(record_target(RELAY_KEY), RECORD_SALT, None)]
    assert _result(Deferred.fromCoroutine(fetch_record(dht, OTHER_KEY))) == replace(RECORD, key=OTHER_KEY)
    assert _result(Deferred.fromCoroutine(fetch_record(GetAnsweredWith(None), RELAY_KEY))) is None


def test_an_item_that_verifies_but_is_not_a_record_is_refused():
    clock = _clock()
    wire = Wire(clock)
    not_a_record = Item.signed(RELAY_SIGNING_KEY, b"d1:fi2ee", 3, RECORD_SALT)
    _relay(clock, wire, item=not_a_record)
    reader, _ = _reader(clock, wire)
    assert _find(clock, reader) == []


def test_unusable_announced_addresses_do_not_stop_the_walk():
    """An IPv6 address or port 0 among an IPv4 node's peers cannot be pinged; the walk goes on."""
    clock = _clock()
    wire = Wire(clock)
    silent = ("192.0.2.99", 6881)  # announced, nobody there
    _relay(clock, wire, extra_peers=[("2001:db8::9", 6881), ("192.0.2.98", 0), silent])
    reader, transport = _reader(clock, wire)
    started = clock.seconds()
    assert _find(clock, reader) == [RECORD]
    tried = {address for data, address in transport.attempts if isinstance(krpc.decode(data), Ping)}
    assert tried == {RELAY, silent}
    assert clock.seconds() - started >= 4.0  # the silent address was given its two timeouts
