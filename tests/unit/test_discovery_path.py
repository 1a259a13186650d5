"""Choosing an onion path from relay records: distinct relays, the exit last, loaded relays avoided."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zentalk_relay.client.discovery import choose_path, hops
from zentalk_relay.dht.records import RelayRecord


def _record(i: int, load: int = 0, addresses=None) -> RelayRecord:
    return RelayRecord(
        key=bytes([i]) * 32, link_key=bytes([i, 1]) * 16, onion_key=bytes([i, 2]) * 16,
        addresses=((f"192.0.2.{i}", 443),) if addresses is None else addresses, load=load,
    )


RELAYS = [_record(i) for i in range(1, 9)]


@pytest.mark.parametrize("seed", range(20))
def test_path_of_distinct_relays(seed):
    path = choose_path(RELAYS, 3, rng=random.Random(seed))
    assert len(path) == 3 and len({r.key for r in path}) == 3
    assert all(r in RELAYS for r in path)


def test_every_relay_can_be_chosen():
    seen = set()
    rng = random.Random(1)
    for _ in range(200):
        seen.update(r.key for r in choose_path(RELAYS, 3, rng=rng))
    assert seen == {r.key for r in RELAYS}


def test_duplicate_records_of_one_relay_count_once():
    records = RELAYS[:2] + [replace(RELAYS[0], timestamp=5), replace(RELAYS[1], load=3)]
    path = choose_path(records, 2, rng=random.Random(0))
    assert len({r.key for r in path}) == 2
    with pytest.raises(ValueError):
        choose_path(records, 3, rng=random.Random(0))


@pytest.mark.parametrize("seed", range(20))
def test_exit_relay_comes_last_and_only_once(seed):
    exit_relay = RELAYS[3]
    path = choose_path(RELAYS, 3, rng=random.Random(seed), exit_relay=exit_relay)
    assert len(path) == 3 and path[-1] == exit_relay
    assert exit_relay.key not in {r.key for r in path[:-1]}
    assert len({r.key for r in path}) == 3


def test_exit_relay_need_not_be_among_the_records():
    outsider = _record(42)
    path = choose_path(RELAYS[:2], 3, rng=random.Random(0), exit_relay=outsider)
    assert path[-1] == outsider and {r.key for r in path[:-1]} == {RELAYS[0].key, RELAYS[1].key}


def test_a_path_of_one_is_the_exit_relay():
    assert choose_path([], 1, exit_relay=RELAYS[0], rng=random.Random(0)) == [RELAYS[0]]


@pytest.mark.parametrize("seed", range(20))
def test_loaded_relays_are_avoided_while_enough_remain(seed):
    light = [_record(i, load=90) for i in range(1, 4)]  # at the limit: still light
    loaded = [_record(i, load=91) for i in range(10, 16)]
    path = choose_path(light + loaded, 3, rng=random.Random(seed))
    assert {r.key for r in path} == {r.key for r in light}
    exit_path = choose_path(light[:2] + loaded, 3, rng=random.Random(seed), exit_relay=loaded[0])
    assert {r.key for r in exit_path[:-1]} == {r.key for r in light[:2]} and exit_path[-1] == loaded[0]


def test_loaded_relays_are_used_when_too_few_others_remain():
    records = [_record(1, load=10), _record(2, load=95), _record(3, load=100)]
    path = choose_path(records, 3, rng=random.Random(0))
    assert {r.key for r in path} == {r.key for r in records}


def test_max_load_is_the_callers():
    records = [_record(i, load=50) for i in range(1, 4)] + [_record(i, load=10) for i in range(4, 7)]
    for seed in range(10):
        path = choose_path(records, 3, rng=random.Random(seed), max_load=20)
        assert all(r.load == 10 for r in path)


def test_too_few_relays_is_a_value_error():
    with pytest.raises(ValueError, match="2 usable relays for a path of 3"):
        choose_path(RELAYS[:2], 3, rng=random.Random(0))
    with pytest.raises(ValueError):
        choose_path([], 3, rng=random.Random(0))
    # The exit relay does not count twice.
    with pytest.raises(ValueError):
        choose_path(RELAYS[:2], 3, rng=random.Random(0), exit_relay=RELAYS[0])


def test_relays_without_addresses_are_not_usable():
    records = RELAYS[:2] + [_record(7, addresses=())]
    with pytest.raises(ValueError, match="2 usable relays"):
        choose_path(records, 3, rng=random.Random(0))


def test_hops_are_node_ids_and_onion_keys():
    path = RELAYS[:3]
    assert hops(path) == [(hashlib.sha256(r.key).digest(), r.onion_key) for r in path]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), st.integers(0, 100), st.booleans()), max_size=12),
       st.integers(1, 5), st.one_of(st.none(), st.integers(1, 30)), st.integers(0, 2**32))
def test_path_properties(specs, length, exit_index, seed):
    records = [_record(i, load, None if has_address else ()) for i, load, has_address in specs]
    exit_relay = None if exit_index is None else _record(exit_index)
    usable = {r.key: r for r in records if r.addresses}
    if exit_relay is not None:
        usable.pop(exit_relay.key, None)
    wanted = length - (exit_relay is not None)
    try:
        path = choose_path(records, length, rng=random.Random(seed), exit_relay=exit_relay)
    except ValueError:
        assert len(usable) < wanted
        return
    assert len(path) == length and len({r.key for r in path}) == length
    if exit_relay is not None:
        assert path[-1] == exit_relay
    chosen = path[:-1] if exit_relay is not None else path
    assert all(r.key in usable and r.addresses for r in chosen)
    light = [r for r in usable.values() if r.load <= 90]
    if len(light) >= wanted:
        assert all(r.load <= 90 for r in chosen)
