"""The node's server side and its driving: answers, refusals, rate limits, amplification, timers."""

import random

import fastbencode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zentalk_relay.dht import krpc
from zentalk_relay.dht.bep42 import Bep42Policy
from zentalk_relay.dht.krpc import (
    AnnouncePeer,
    ErrorCode,
    ErrorMessage,
    FindNode,
    GetPeers,
    NodeInfo,
    Ping,
    Response,
)
from zentalk_relay.dht.node import (
    CLIENT_VERSION,
    DhtConfig,
    DhtNode,
    ExternalAddressChanged,
    OperationDone,
)
from zentalk_relay.ratelimit import Rate

OWN = b"n" * 20
OTHER = b"o" * 20
SOURCE = ("198.51.100.7", 6881)
CONFIG = DhtConfig(bep42=Bep42Policy.OFF)


def _node(**options) -> DhtNode:
    config = DhtConfig(**{"bep42": Bep42Policy.OFF, **options})
    return DhtNode(OWN, now=0.0, rng=random.Random(9), config=config)


def _decoded(out):
    return [(krpc.decode(d.data), d.address) for d in out]


def _answer(node, query, source=SOURCE, now=1.0):
    replies = [m for m, _ in _decoded(node.handle(krpc.encode(query), source, now)) if not isinstance(m, Ping)]
    assert len(replies) == 1 and replies[0].tid == query.tid
    return replies[0]


def _fill(node, count, now=0.0):
    """Put ``count`` answering nodes in the table."""
    rng = random.Random(count)
    nodes = [NodeInfo(rng.randbytes(20), f"203.0.{i}.1", 6881) for i in range(count)]
    for n in nodes:
        node.table.heard_from(n.id, n.address, now, responded=True)
    return nodes


def test_ping_answer_names_us_and_the_querier():
    node = _node()
    answer = _answer(node, Ping(b"aa", OTHER))
    assert answer == Response(b"aa", OWN, your_ip=SOURCE, client=CLIENT_VERSION)
    assert node.stats.queries["ping", "ok"] == 1


def test_unknown_querier_gets_one_verification_ping_and_enters_the_table_when_it_answers():
    node = _node()
    out = _decoded(node.handle(krpc.encode(Ping(b"aa", OTHER)), SOURCE, 1.0))
    pings = [m for m, _ in out if isinstance(m, Ping)]
    assert len(pings) == 1 and node.table.get(OTHER) is None
    # Another query from the same address within the back-off: no second ping.
    again = _decoded(node.handle(krpc.encode(Ping(b"ab", OTHER)), SOURCE, 2.0))
    assert not [m for m, _ in again if isinstance(m, Ping)]
    node.handle(krpc.encode(Response(pings[0].tid, OTHER)), SOURCE, 2.5)
    assert node.table.get(OTHER) is not None
    # A read-only querier (BEP 43) is never added nor pinged.
    ro = _decoded(node.handle(krpc.encode(Ping(b"ac", b"r" * 20, read_only=True)), ("198.51.100.9", 1), 3.0))
    assert [type(m) for m, _ in ro] == [Response]


def test_find_node_returns_the_nearest_good_nodes():
    node = _node()
    nodes = _fill(node, 40)
    target = nodes[5].id
    answer = _answer(node, FindNode(b"f", OTHER, target + b""), source=nodes[0].address)
    expected = node.table.closest(target, 8, 1.0)
    assert answer.nodes == tuple(expected) and answer.nodes[0] == nodes[5]


def test_ipv6_node_answers_with_nodes6():
    node = DhtNode(OWN, now=0.0, rng=random.Random(1), config=DhtConfig(family=6, bep42=Bep42Policy.OFF))
    peer = NodeInfo(b"p" * 20, "2001:db8::5", 6881)
    node.table.heard_from(peer.id, peer.address, 0.0, responded=True)
    answer = _answer(node, FindNode(b"f", OTHER, peer.id), source=("2001:db8::9", 1))
    assert answer.nodes is None and answer.nodes6 == (peer,)
    # An IPv4 datagram on an IPv6 node's socket is dropped.
    assert node.handle(krpc.encode(Ping(b"x", OTHER)), SOURCE, 1.0) == []
    assert node.stats.dropped["wrong_family"] == 1


def test_source_forms_are_normalised():
    node = _node()
    answer = _answer(node, Ping(b"aa", OTHER), source=("::ffff:198.51.100.7", 6881, 0, 0))
    assert answer.your_ip == SOURCE
    assert node.handle(b"junk", ("198.51.100.7", 0), 1.0) == []
    assert node.stats.dropped["bad_source"] == 1


def test_malformed_query_gets_203_and_garbage_gets_nothing():
    node = _node()
    bad = fastbencode.bencode({b"t": b"zz", b"y": b"q", b"q": b"find_node", b"a": {b"id": OTHER}})
    (answer, address), = _decoded(node.handle(bad, SOURCE, 1.0))
    assert isinstance(answer, ErrorMessage) and (answer.tid, answer.code, address) == (b"zz", 203, SOURCE)
    unknown = fastbencode.bencode({b"t": b"zz", b"y": b"q", b"q": b"vote", b"a": {b"id": OTHER}})
    assert _decoded(node.handle(unknown, SOURCE, 1.0))[0][0].code == ErrorCode.METHOD_UNKNOWN
    assert node.handle(b"d1:rde1:t2:zz1:y1:re", SOURCE, 1.0) == []  # a malformed response: never answered
    assert node.handle(b"\xff" * 50, SOURCE, 1.0) == []
    assert node.stats.queries["find_node", "203"] == 1 and node.stats.queries["unknown", "204"] == 1
    assert node.stats.dropped["not_bencoded"] == 1 and node.stats.dropped["bad_id"] == 1


def test_responses_must_match_a_transaction_and_its_address():
    node = _node()
    _fill(node, 5)
    op, out = node.find_node(b"t" * 20, 0.0)
    query, address = _decoded(out)[0]
    wrong_source = node.handle(krpc.encode(Response(query.tid, b"x" * 20)), ("192.0.2.200", 9), 0.1)
    unknown = node.handle(krpc.encode(Response(b"none", b"x" * 20)), address, 0.1)
    assert wrong_source == unknown == []
    assert node.stats.dropped["unexpected_source"] == 1 and node.stats.dropped["unknown_transaction"] == 1


def test_rate_limit_per_ip_is_counted():
    node = _node(rate=Rate(limit=1, period=1.0, burst=3))
    answers = [node.handle(krpc.encode(Ping(b"%d" % i, OTHER, read_only=True)), SOURCE, 1.0) for i in range(5)]
    assert [len(a) for a in answers] == [1, 1, 1, 0, 0]
    assert node.stats.dropped["rate_limited"] == 2
    # Another IP has its own bucket; time refills.
    assert node.handle(krpc.encode(Ping(b"x", OTHER, read_only=True)), ("198.51.100.8", 1), 1.0)
    assert node.handle(krpc.encode(Ping(b"y", OTHER, read_only=True)), SOURCE, 2.0)


def _store_peers(node, info_hash, count):
    for i in range(count):
        node.peers.announce(info_hash, (f"192.0.{i // 200}.{i % 200 + 1}", 1000 + i), 0.0)


def test_amplification_cap_for_unverified_sources():
    node = _node()
    _fill(node, 30)
    info_hash = b"h" * 20
    _store_peers(node, info_hash, 50)
    query = krpc.encode(GetPeers(b"aa", OTHER, info_hash, read_only=True))
    (data,) = [d.data for d in node.handle(query, SOURCE, 1.0)]
    assert len(data) <= 3 * len(query)
    answer = krpc.decode(data)
    # Peers are what get_peers is for: nodes go first, then the client version.
    assert answer.values and answer.nodes == () and answer.client is None and answer.token
    assert node.stats.trimmed == 1


def test_verified_source_gets_the_full_answer():
    node = _node()
    nodes = _fill(node, 30)
    info_hash = b"h" * 20
    _store_peers(node, info_hash, 50)
    query = krpc.encode(GetPeers(b"aa", nodes[0].id, info_hash))
    (data,) = [d.data for d in node.handle(query, nodes[0].address, 1.0)]
    answer = krpc.decode(data)
    assert len(answer.values) == 50 and len(answer.nodes) == 8
    assert len(data) <= node.config.max_response


def test_tiny_malformed_query_error_stays_within_the_cap():
    node = _node()
    query = b"d1:t0:1:y1:qe"  # 13 bytes: no method
    (data,) = [d.data for d in node.handle(query, SOURCE, 1.0)]
    assert len(data) <= 3 * len(query) and krpc.decode(data).code == 203


def test_read_only_node_answers_nothing_and_says_ro():
    node = _node(read_only=True)
    assert node.handle(krpc.encode(Ping(b"aa", OTHER)), SOURCE, 1.0) == []
    _fill(node, 3)
    _, out = node.find_node(b"t" * 20, 1.0)
    assert all(krpc.decode(d.data).read_only for d in out)


def test_announce_implied_port_uses_the_source_port():
    node = _node()
    token = _answer(node, GetPeers(b"g", OTHER, b"h" * 20)).token
    _answer(node, AnnouncePeer(b"a", OTHER, b"h" * 20, 1, token, implied_port=True))
    _answer(node, AnnouncePeer(b"b", OTHER, b"h" * 20, 7000, token), source=(SOURCE[0], 9999))
    assert sorted(node.peers.peers(b"h" * 20, 2.0, 10, random.Random())) == [(SOURCE[0], 6881), (SOURCE[0], 7000)]


def test_peer_store_is_bounded():
    node = _node(max_torrents=2, max_peers_per_torrent=3)
    token = _answer(node, GetPeers(b"g", OTHER, b"h" * 20)).token
    for i in range(5):
        _answer(node, AnnouncePeer(b"a", OTHER, bytes([i]) * 20, 6881, token), source=("198.51.100.7", 6881))
        for port in range(5):
            _answer(node, AnnouncePeer(b"b", OTHER, b"\x04" * 20, 7000 + port, token))
    assert len(node.peers) == 2 and node.peers.peer_count <= 5
    assert len(node.peers.peers(b"\x04" * 20, 2.0, 10, random.Random())) == 3


def test_lookup_timeouts_retries_and_routing_failures():
    node = _node(query_timeout=2.0, query_retries=1)
    peers = _fill(node, 3)
    op, out = node.find_node(b"t" * 20, 0.0)
    assert len(out) == 3 and node.next_deadline() == 2.0
    retries = node.tick(2.0)
    assert sorted(d.address for d in retries) == sorted(p.address for p in peers)
    assert node.tick(3.9) == [] and node.next_deadline() == 4.0
    assert node.tick(4.0) == []
    (done,) = node.take_events()
    assert isinstance(done, OperationDone) and done.op == op and done.result.failed == 3
    # Each peer failed once (after its retry); having answered at 0, it is still good.
    assert all(node.table.get(p.id).failures == 1 for p in peers)
    assert node.stats.outcomes["find_node", "timeout"] == 3


def test_lookup_through_answers_ends_with_an_event():
    node = _node()
    peer = _fill(node, 1)[0]
    op, out = node.find_node(b"t" * 20, 0.0)
    (query, address), = _decoded(out)
    far = NodeInfo(b"f" * 20, "203.0.113.50", 6881)
    more = node.handle(krpc.encode(Response(query.tid, peer.id, nodes=(far,))), address, 0.1)
    (second, second_address), = _decoded(more)
    assert second_address == far.address and isinstance(second, FindNode)
    node.handle(krpc.encode(Response(second.tid, far.id, nodes=())), far.address, 0.2)
    (done,) = node.take_events()
    assert done.op == op and [n.id for n in done.result.nodes] == sorted(
        [peer.id, far.id], key=lambda i: int.from_bytes(i, "big") ^ int.from_bytes(b"t" * 20, "big")
    )
    assert node.table.get(far.id) is not None  # it answered: into the table


def test_bootstrap_retries_while_the_table_is_empty():
    node = _node(bootstrap_retry=60.0)
    op, out = node.bootstrap([("192.0.2.1", 6881)], 0.0)
    assert [d.address for d in out] == [("192.0.2.1", 6881)]
    node.tick(2.0)
    node.tick(4.0)
    assert [e.kind for e in node.take_events()] == ["bootstrap"]
    assert node.next_deadline() == 60.0
    again = node.tick(60.0)
    assert [d.address for d in again] == [("192.0.2.1", 6881)]


def test_external_address_votes():
    node = _node(address_quorum=3)
    _fill(node, 5)
    _, out = node.find_node(b"t" * 20, 0.0)
    for datagram in out[:3]:
        query = krpc.decode(datagram.data)
        entry = node.table.by_address(datagram.address)
        node.handle(krpc.encode(Response(query.tid, entry.id, your_ip=("203.0.113.77", 6881))), datagram.address, 0.1)
    events = [e for e in node.take_events() if isinstance(e, ExternalAddressChanged)]
    assert events == [ExternalAddressChanged("203.0.113.77")] and node.external_ip == "203.0.113.77"


def test_refresh_lookups_run_when_buckets_are_due():
    node = _node(refresh_interval=900.0)
    _fill(node, 25)
    assert node.next_deadline() == 60.0  # the expiry sweep comes first
    node.tick(60.0)
    assert node.next_deadline() == 120.0
    out = node.tick(900.0)
    assert out and all(isinstance(krpc.decode(d.data), FindNode) for d in out)
    assert node.table.next_refresh() > 900.0


def test_put_refuses_an_invalid_item():
    from zentalk_relay.dht.items import Item

    with pytest.raises(ValueError):
        _node().put(Item(b"x" * 1001), 0.0)


def test_gauges():
    node = _node()
    _fill(node, 4)
    gauges = node.gauges(1.0)
    assert gauges["nodes"] == {"good": 4, "questionable": 0, "bad": 0}
    assert gauges["buckets"] == 1 and gauges["items"] == 0


# -- hostile datagrams: handle never raises, answers stay within the cap ----------------

_ANSWERABLE = [
    Ping(b"aa", OTHER),
    FindNode(b"ab", OTHER, b"t" * 20),
    GetPeers(b"ac", OTHER, b"h" * 20),
    AnnouncePeer(b"ad", OTHER, b"h" * 20, 6881, b"12345678"),
    krpc.GetItem(b"ae", OTHER, b"h" * 20),
    krpc.PutItem(b"af", OTHER, b"12345678", b"1:x"),
]
_SHARED = _node()
_fill(_SHARED, 60)
_SHARED.peers.announce(b"h" * 20, ("192.0.2.1", 1), 0.0)


def check_handle(node, data, source, now):
    out = node.handle(data, source, now)
    assert isinstance(out, list)
    for datagram in out:
        message = krpc.decode(datagram.data)
        if isinstance(message, (Response, ErrorMessage)):
            assert datagram.address[0] == source[0].replace("::ffff:", "")
            if not node.table.is_verified(datagram.address, now):
                assert len(datagram.data) <= 3 * len(data)
        else:
            assert isinstance(message, Ping)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_ANSWERABLE), st.data())
def test_hostile_datagrams(message, data):
    raw = bytearray(krpc.encode(message))
    for _ in range(data.draw(st.integers(0, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    source = (f"198.51.{data.draw(st.integers(0, 3))}.7", data.draw(st.integers(1, 65535)))
    check_handle(_SHARED, bytes(raw), source, 1.0 + data.draw(st.floats(0, 5000)))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_random_datagrams(data):
    check_handle(_SHARED, data, ("203.0.113.5", 4), 1.0)


def test_a_persisted_table_restarts_the_node():
    import json

    from zentalk_relay.dht.routing import RoutingTable

    node = _node()
    _fill(node, 12)
    data = json.loads(json.dumps(node.table.to_dict()))
    table = RoutingTable.from_dict(data, 500.0, **node.config.table_options())
    again = DhtNode(OWN, now=500.0, rng=random.Random(2), config=node.config, table=table)
    assert len(again.table) == 12
    # Their last answers are kept: 500 s later they are still good, 15 minutes later questionable.
    assert again.gauges(500.0)["nodes"]["good"] == 12
    assert again.gauges(1000.0)["nodes"]["questionable"] == 12
    with pytest.raises(ValueError):
        DhtNode(b"x" * 20, now=0.0, rng=random.Random(2), table=table)


def test_answers_to_our_queries_are_not_rate_limited():
    node = _node(rate=Rate(limit=1, period=60.0, burst=1))
    peer = _fill(node, 1)[0]
    node.handle(krpc.encode(Ping(b"x", peer.id, read_only=True)), peer.address, 0.0)  # spends the burst
    assert node.handle(krpc.encode(Ping(b"y", peer.id, read_only=True)), peer.address, 0.0) == []
    _, out = node.find_node(b"t" * 20, 0.0)
    (query, address), = _decoded(out)
    node.handle(krpc.encode(Response(query.tid, peer.id, nodes=())), address, 0.1)
    assert node.stats.outcomes["find_node", "response"] == 1
    assert node.stats.dropped["rate_limited"] == 1


def test_trimmed_find_node_keeps_the_nearest_nodes():
    node = _node()
    nodes = _fill(node, 30)
    target = nodes[3].id
    query = krpc.encode(FindNode(b"aa", OTHER, target))  # 92 bytes: no client version, no ro
    (data,) = [d.data for d in node.handle(query, SOURCE, 1.0) if isinstance(krpc.decode(d.data), Response)]
    answer = krpc.decode(data)
    assert len(data) <= 3 * len(query) and answer.client is None and answer.your_ip == SOURCE
    assert 0 < len(answer.nodes) < 8
    assert answer.nodes == tuple(node.table.closest(target, 8, 1.0))[: len(answer.nodes)]


def test_a_lookup_counts_what_the_node_itself_stores():
    """A node may be among the nearest to a target: its own store answers its own lookups."""
    from nacl.signing import SigningKey

    from zentalk_relay.dht.items import Item

    node = _node()
    info_hash = b"i" * 20
    node.peers.announce(info_hash, ("192.0.2.9", 4000), 0.0)
    item = Item.signed(SigningKey.generate(), b"5:hello", 3, b"salt")
    node.items.put(item, 0.0)
    _, out = node.get_peers(info_hash, 1.0)  # an empty table: the lookup ends at once
    (done,) = [e for e in node.take_events() if isinstance(e, OperationDone)]
    assert done.result.peers == (("192.0.2.9", 4000),) and out == []
    node.get(item.target, 1.0, salt=b"salt")
    (done,) = [e for e in node.take_events() if isinstance(e, OperationDone)]
    assert done.result.item == item
