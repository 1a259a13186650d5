"""The routing table: buckets and splitting, node states, eviction, replacements, IP limits, persistence."""

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zentalk_relay.dht.bep42 import Bep42Policy
from zentalk_relay.dht.routing import (
    BUCKET_REFRESH,
    GOOD_FOR,
    NodeState,
    Outcome,
    RoutingTable,
    distance,
)

OWN = bytes(20)


def _id(first_bits: int, prefix_len: int, rest: int) -> bytes:
    """An id whose top ``prefix_len`` bits are ``first_bits``, then ``rest``."""
    num = (first_bits << (160 - prefix_len)) | (rest & ((1 << (160 - prefix_len)) - 1))
    return num.to_bytes(20, "big")


def _address(i: int) -> tuple[str, int]:
    # A distinct /24 per node, so that the IP limits stay out of the way.
    return (f"{11 + i // 65536}.{(i // 256) % 256}.{i % 256}.1", 6881)


def _table(**options) -> RoutingTable:
    options.setdefault("bep42", Bep42Policy.OFF)
    return RoutingTable(OWN, 0.0, **options)


def test_far_bucket_fills_then_keeps_replacements():
    table = _table(k=4, max_replacements=2)
    far = [_id(1, 1, i) for i in range(7)]  # top bit 1: the far half, never splits
    outcomes = [table.heard_from(n, _address(i), 0.0, responded=True).outcome for i, n in enumerate(far)]
    # The first bucket (everything) splits once: [far half | near half].
    assert outcomes[:4] == [Outcome.ADDED] * 4
    assert outcomes[4:] == [Outcome.REPLACEMENT] * 3
    assert table.bucket_count == 2 and len(table) == 4
    assert table.replacement_count == 2  # the oldest replacement was dropped


def test_only_the_bucket_with_our_id_splits():
    table = _table(k=2)
    near = [_id(0, 8, i) for i in range(1, 4)]  # share 8 leading zero bits with OWN
    for i, n in enumerate(near):
        assert table.heard_from(n, _address(i), 0.0, responded=True).outcome is Outcome.ADDED
    assert table.bucket_count >= 9
    indexes = {table.bucket_index(n) for n in near}
    assert len(table) == 3
    # Far nodes now land in bucket 0, which is full after two and does not split.
    for i in range(3):
        table.heard_from(_id(1, 1, i), _address(10 + i), 0.0, responded=True)
    assert table.bucket_index(_id(1, 1, 0)) == 0
    assert sum(1 for e in table.entries() if table.bucket_index(e.id) == 0) == 2
    assert indexes  # near nodes stay where they were


def test_node_states_follow_bep5():
    table = _table()
    node, address = _id(1, 1, 5), _address(1)
    table.heard_from(node, address, 0.0, responded=True)
    entry = table.get(node)
    assert entry.state(10.0) is NodeState.GOOD
    assert entry.state(GOOD_FOR + 1) is NodeState.QUESTIONABLE
    # A query from it within 15 minutes keeps it good (it has answered before).
    table.heard_from(node, address, GOOD_FOR, responded=False)
    assert entry.state(GOOD_FOR + 1) is NodeState.GOOD
    # A good node that fails once is still good; twice in a row, bad.
    table.failed(address, 100.0)
    assert entry.state(100.0) is NodeState.GOOD
    table.failed(address, 100.0)
    assert entry.state(100.0) is NodeState.BAD
    # An answer makes it good again.
    table.heard_from(node, address, 101.0, responded=True)
    assert entry.state(101.0) is NodeState.GOOD and entry.failures == 0
    # A questionable node that fails once is bad.
    table.failed(address, 101.0 + GOOD_FOR + GOOD_FOR)
    assert entry.state(101.0 + 2 * GOOD_FOR) is NodeState.BAD


def test_bad_node_is_replaced_by_a_new_one():
    table = _table(k=2)
    a, b, c = _id(1, 1, 1), _id(1, 1, 2), _id(1, 1, 3)
    table.heard_from(a, _address(1), 0.0, responded=True)
    table.heard_from(b, _address(2), 0.0, responded=True)
    table.heard_from(_id(0, 2, 1), _address(3), 0.0, responded=True)  # splits the first bucket
    table.failed(_address(1), 1.0)
    table.failed(_address(1), 1.0)
    assert table.heard_from(c, _address(4), 2.0, responded=True).outcome is Outcome.ADDED
    assert table.get(a) is None and table.get(c) is not None


def test_questionable_node_is_pinged_and_replaced_when_it_fails():
    table = _table(k=2)
    a, b, c = _id(1, 1, 1), _id(1, 1, 2), _id(1, 1, 3)
    table.heard_from(_id(0, 2, 1), _address(9), 0.0, responded=True)
    table.heard_from(a, _address(1), 0.0, responded=True)
    table.heard_from(b, _address(2), 10.0, responded=True)
    table.heard_from(_id(0, 3, 1), _address(8), 0.0, responded=True)  # splits
    now = GOOD_FOR + 20.0  # a and b are questionable now
    heard = table.heard_from(c, _address(3), now, responded=True)
    # c waits in the replacement cache; a, the least recently seen, is to be pinged.
    assert heard.outcome is Outcome.REPLACEMENT and heard.ping == _address(1)
    # Not pinged again at once.
    assert table.heard_from(_id(1, 1, 4), _address(4), now, responded=True).ping == _address(2)
    table.failed(_address(1), now + 2)
    assert table.get(a) is None
    # The most recently seen replacement took its place.
    assert table.get(_id(1, 1, 4)) is not None or table.get(c) is not None
    assert len([e for e in table.entries() if table.bucket_index(e.id) == 0]) == 2


def test_unverified_querier_is_to_be_pinged_not_inserted():
    table = _table(k=2)
    node = _id(1, 1, 1)
    heard = table.heard_from(node, _address(1), 0.0, responded=False)
    assert heard == type(heard)(Outcome.PING_FIRST, _address(1))
    assert table.get(node) is None and len(table) == 0
    assert table.heard_from(node, _address(1), 1.0, responded=True).outcome is Outcome.ADDED


def test_known_id_from_another_address_is_ignored():
    table = _table()
    node = _id(1, 1, 1)
    table.heard_from(node, _address(1), 0.0, responded=True)
    assert table.heard_from(node, _address(2), 1.0, responded=True).outcome is Outcome.ADDRESS_MISMATCH
    assert table.get(node).address == _address(1)
    # Another id at a known, good address is refused too.
    assert table.heard_from(_id(1, 1, 2), _address(1), 1.0, responded=True).outcome is Outcome.ADDRESS_MISMATCH


def test_own_id_is_refused():
    assert _table().heard_from(OWN, _address(1), 0.0, responded=True).outcome is Outcome.REFUSED_SELF


def test_ip_and_subnet_limits():
    table = _table()
    assert table.heard_from(_id(1, 1, 1), ("203.0.113.1", 1), 0.0, responded=True).outcome is Outcome.ADDED
    # One node per IP, whatever the port.
    assert table.heard_from(_id(1, 1, 2), ("203.0.113.1", 2), 0.0, responded=True).outcome is Outcome.REFUSED_IP
    # Two per /24.
    assert table.heard_from(_id(1, 1, 3), ("203.0.113.2", 1), 0.0, responded=True).outcome is Outcome.ADDED
    assert table.heard_from(_id(1, 1, 4), ("203.0.113.3", 1), 0.0, responded=True).outcome is Outcome.REFUSED_IP
    assert table.heard_from(_id(1, 1, 5), ("203.0.114.3", 1), 0.0, responded=True).outcome is Outcome.ADDED
    # IPv6: per /64 and per /48.
    assert table.heard_from(_id(1, 1, 6), ("2001:db8:0:1::1", 1), 0.0, responded=True).outcome is Outcome.ADDED
    assert table.heard_from(_id(1, 1, 7), ("2001:db8:0:1::2", 1), 0.0, responded=True).outcome is Outcome.REFUSED_IP
    # Loopback is exempt: many local nodes on one host.
    for i in range(5):
        heard = table.heard_from(_id(1, 1, 10 + i), ("127.0.0.1", 7000 + i), 0.0, responded=True)
        assert heard.outcome is Outcome.ADDED


def test_limits_free_up_when_a_node_leaves():
    table = _table(k=1)
    table.heard_from(_id(1, 1, 1), ("203.0.113.1", 1), 0.0, responded=True)
    table.heard_from(_id(0, 1, 1), ("198.51.100.1", 1), 0.0, responded=True)
    table.failed(("203.0.113.1", 1), 1.0)
    table.failed(("203.0.113.1", 1), 1.0)
    assert table.heard_from(_id(1, 1, 2), ("203.0.113.1", 2), 2.0, responded=True).outcome is Outcome.ADDED


def test_closest_excludes_bad_nodes():
    table = _table()
    ids = [_id(1, 1, i) for i in range(5)]
    for i, n in enumerate(ids):
        table.heard_from(n, _address(i), 0.0, responded=True)
    table.failed(_address(0), 1.0)
    table.failed(_address(0), 1.0)
    assert ids[0] not in [n.id for n in table.closest(ids[0], 20, 1.0)]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 300), st.binary(min_size=20, max_size=20))
def test_closest_matches_brute_force(seed, count, target):
    rng = random.Random(seed)
    own = rng.randbytes(20)
    table = RoutingTable(own, 0.0, k=4, bep42=Bep42Policy.OFF)
    for i in range(count):
        table.heard_from(rng.randbytes(20), _address(i), 0.0, responded=True)
    everyone = sorted((e.info for e in table.entries()), key=lambda n: distance(n.id, target))
    for want in (1, 8, 20):
        assert table.closest(target, want, 0.0) == everyone[:want]


def test_refresh_deadlines_and_targets():
    table = _table(k=2)
    rng = random.Random(1)
    for i in range(40):
        table.heard_from(rng.randbytes(20), _address(i), 0.0, responded=True)
    assert table.next_refresh() == BUCKET_REFRESH
    assert table.refresh_due(BUCKET_REFRESH - 1, rng) == []
    targets = table.refresh_due(BUCKET_REFRESH, rng)
    assert len(targets) == table.bucket_count
    # Each target lies in its bucket's range.
    assert [table.bucket_index(t) for t in targets] == list(range(table.bucket_count))
    assert table.next_refresh() == 2 * BUCKET_REFRESH


def test_answer_moves_the_refresh_deadline():
    table = _table()
    node = _id(1, 1, 1)
    table.heard_from(node, _address(1), 0.0, responded=True)
    table.heard_from(node, _address(1), 100.0, responded=True)
    assert table.next_refresh() == 100.0 + BUCKET_REFRESH


def test_persistence_round_trip_through_json():
    rng = random.Random(2)
    table = RoutingTable(rng.randbytes(20), 0.0, k=3, bep42=Bep42Policy.OFF)
    for i in range(60):
        table.heard_from(rng.randbytes(20), _address(i), float(i), responded=True)
    data = json.loads(json.dumps(table.to_dict()))
    restored = RoutingTable.from_dict(data, 100.0, k=3, bep42=Bep42Policy.OFF)
    assert restored.own_id == table.own_id
    assert [(e.id, e.address) for e in restored.entries()] == [(e.id, e.address) for e in table.entries()]
    assert restored.replacement_count == table.replacement_count
    assert restored.bucket_count == table.bucket_count
    assert [e.last_response for e in restored.entries()] == [e.last_response for e in table.entries()]
    # With a new own id, the nodes are sorted into buckets again.
    other = RoutingTable.from_dict(data, 100.0, own_id=bytes(20), k=3, bep42=Bep42Policy.OFF)
    assert other.own_id == bytes(20) and len(other) > 0


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"format": "other"},
        {"format": "zentalk-dht-routing/1", "id": "00", "nodes": [], "replacements": []},
        {"format": "zentalk-dht-routing/1", "id": "zz" * 20, "nodes": [], "replacements": []},
        {"format": "zentalk-dht-routing/1", "id": "00" * 20, "nodes": {}, "replacements": []},
        {"format": "zentalk-dht-routing/1", "id": "00" * 20, "nodes": [["00" * 20, "1.2.3.4", 0, None]],
         "replacements": []},
        {"format": "zentalk-dht-routing/1", "id": "00" * 20, "nodes": [["00" * 20, "nonsense", 1, None]],
         "replacements": []},
        {"format": "zentalk-dht-routing/1", "id": "00" * 20, "nodes": [["00" * 20, "1.2.3.4", 1, "x"]],
         "replacements": []},
        {"format": "zentalk-dht-routing/1", "id": "00" * 20, "nodes": [["00" * 20, "1.2.3.4", 1]],
         "replacements": []},
    ],
)
def test_malformed_persisted_table_is_value_error(data):
    with pytest.raises(ValueError):
        RoutingTable.from_dict(data, 0.0)
