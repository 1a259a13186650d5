"""The iterative lookup state machine, driven by hand: α, k, timeouts, retries, rounds, items."""

import hashlib
import random

import pytest
from nacl.signing import SigningKey

from zentalk_relay.dht.items import Item
from zentalk_relay.dht.krpc import NodeInfo, Response
from zentalk_relay.dht.lookup import Lookup, LookupKind
from zentalk_relay.dht.routing import distance


class World:
    """``count`` nodes; each knows its 20 nearest and 30 others, and answers with the 8 of those nearest the target."""

    def __init__(self, count: int, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.nodes = [NodeInfo(rng.randbytes(20), f"10.0.{i // 250}.{i % 250 + 1}", 6881) for i in range(count)]
        self.by_address = {n.address: n for n in self.nodes}
        self.known = {
            n.address: set(self.nearest(n.id, 21)[1:]) | set(rng.sample(self.nodes, min(30, count))) - {n}
            for n in self.nodes
        }

    def nearest(self, target: bytes, count: int, among=None) -> list[NodeInfo]:
        return sorted(among if among is not None else self.nodes, key=lambda n: distance(n.id, target))[:count]

    def answer(self, address, target, **extra) -> Response:
        node = self.by_address[address]
        nodes = tuple(self.nearest(target, 8, self.known[address]))
        return Response(b"t", node.id, nodes=nodes, token=b"tok" + node.id[:2], **extra)


def run(lookup: Lookup, world: World, now: float = 0.0, silent=(), max_in_flight=None):
    """Answer every request at once (``silent`` addresses never answer); returns the time it ends."""
    pending = []
    while not lookup.done:
        step = lookup.poll(now)
        pending.extend(r for r in step.requests if r.address not in silent)
        if max_in_flight is not None:
            assert lookup.in_flight <= max_in_flight
        if pending:
            request = pending.pop(0)
            lookup.on_response(request.address, world.answer(request.address, lookup.target), now)
        else:
            deadline = lookup.next_deadline()
            if deadline is None:
                lookup.poll(now)
                break
            now = deadline
    return now


def test_finds_the_k_nearest_and_counts_rounds():
    world = World(500)
    rng = random.Random(7)
    target = rng.randbytes(20)
    seeds = rng.sample(world.nodes, 3)
    lookup = Lookup(LookupKind.FIND_NODE, target, seeds, 0.0)
    run(lookup, world, max_in_flight=3)
    result = lookup.result()
    nearest = world.nearest(target, 20)
    # The nearest node for sure; most of the 20 (a node no one answered with stays unknown).
    assert result.nodes[0] == nearest[0] and len(result.nodes) == 20
    assert len(set(result.nodes) & set(nearest)) >= 15
    assert list(result.nodes) == sorted(result.nodes, key=lambda n: distance(n.id, target))
    assert result.hops >= 1 and result.rounds >= result.hops
    assert result.responded == result.queried >= 20
    assert [node for node, _ in result.tokens] == list(result.nodes)
    assert result.tokens[0][1] == b"tok" + result.nodes[0].id[:2]


def test_alpha_bounds_the_queries_in_flight():
    world = World(100)
    lookup = Lookup(LookupKind.FIND_NODE, bytes(20), world.nodes[:30], 0.0, alpha=3)
    step = lookup.poll(0.0)
    assert len(step.requests) == 3 and lookup.in_flight == 3
    assert lookup.poll(0.5).requests == ()  # nothing new while three are out
    first = step.requests[0]
    lookup.on_response(first.address, world.answer(first.address, bytes(20)), 0.6)
    assert len(lookup.poll(0.6).requests) == 1


def test_timeout_then_retry_then_failure():
    world = World(50)
    silent = world.nodes[0]
    lookup = Lookup(LookupKind.FIND_NODE, silent.id, [silent], 0.0, timeout=2.0, retries=1)
    step = lookup.poll(0.0)
    assert [(r.address, r.attempt) for r in step.requests] == [(silent.address, 1)]
    assert lookup.next_deadline() == 2.0
    assert lookup.poll(1.9) == type(step)()
    retry = lookup.poll(2.0)
    assert [(r.address, r.node_id, r.attempt) for r in retry.requests] == [(silent.address, silent.id, 2)]
    gone = lookup.poll(4.0)
    assert gone.failed == (silent.address,) and gone.requests == ()
    assert lookup.done and lookup.result().failed == 1 and lookup.result().nodes == ()


def test_a_late_answer_to_the_first_attempt_counts():
    world = World(50)
    node = world.nodes[0]
    lookup = Lookup(LookupKind.FIND_NODE, node.id, [node], 0.0)
    lookup.poll(0.0)
    lookup.poll(2.0)  # retried
    assert lookup.on_response(node.address, world.answer(node.address, node.id), 2.5)
    assert lookup.result().responded == 1


def test_lookup_survives_silent_nodes():
    world = World(300)
    rng = random.Random(3)
    target = rng.randbytes(20)
    nearest = world.nearest(target, 40)
    silent = {n.address for n in nearest[:5]}  # the five nearest are down
    lookup = Lookup(LookupKind.FIND_NODE, target, rng.sample(world.nodes, 8), 0.0)
    end = run(lookup, world, silent=silent)
    result = lookup.result()
    assert result.nodes[0] == nearest[5] and not silent & {n.address for n in result.nodes}
    assert result.failed == 5 and end >= 4.0  # two attempts of 2 s each


def test_error_answer_fails_without_retry():
    world = World(10)
    node = world.nodes[0]
    lookup = Lookup(LookupKind.FIND_NODE, node.id, [node], 0.0)
    lookup.poll(0.0)
    lookup.on_error(node.address, 0.1)
    assert lookup.poll(0.1).requests == () and lookup.done


def test_answer_from_an_unexpected_id_is_refused():
    world = World(10)
    node, other = world.nodes[0], world.nodes[1]
    lookup = Lookup(LookupKind.FIND_NODE, node.id, [node], 0.0)
    lookup.poll(0.0)
    assert not lookup.on_response(node.address, Response(b"t", other.id, nodes=(other,)), 0.1)
    assert lookup.poll(0.1).requests == () and lookup.result().failed == 1
    # Answers from addresses never asked are ignored.
    assert not lookup.on_response(("10.9.9.9", 1), Response(b"t", other.id), 0.2)


def test_bootstrap_addresses_go_first_and_learn_their_id():
    world = World(100)
    bootstrap = world.nodes[42]
    own = world.nodes[0]
    lookup = Lookup(LookupKind.FIND_NODE, own.id, [bootstrap.address], 0.0, own_id=own.id)
    step = lookup.poll(0.0)
    assert [(r.address, r.node_id) for r in step.requests] == [(bootstrap.address, None)]
    run(lookup, world)
    result = lookup.result()
    assert own not in result.nodes  # never ourselves
    assert result.nodes[0] == world.nearest(own.id, 2)[1]


def test_get_peers_collects_values():
    world = World(60)
    target = bytes(20)
    lookup = Lookup(LookupKind.GET_PEERS, target, world.nodes[:3], 0.0)
    for _ in range(200):
        for request in lookup.poll(0.0).requests:
            peers = (("203.0.113.1", 1), ("203.0.113.2", 2)) if request.address == world.nodes[1].address else None
            lookup.on_response(request.address, world.answer(request.address, target, values=peers), 0.0)
        if lookup.done:
            break
    assert set(lookup.result().peers) == {("203.0.113.1", 1), ("203.0.113.2", 2)}


def test_immutable_get_stops_at_the_first_good_value():
    world = World(100)
    value = b"12:Hello World!"
    target = hashlib.sha1(value).digest()
    lookup = Lookup(LookupKind.GET, target, world.nodes[:3], 0.0)
    requests = lookup.poll(0.0).requests
    # A wrong value (hash mismatch) is ignored; the right one ends the lookup.
    lookup.on_response(requests[0].address, world.answer(requests[0].address, target, value=b"1:x"), 0.1)
    assert not lookup.done
    lookup.on_response(requests[1].address, world.answer(requests[1].address, target, value=value), 0.2)
    assert lookup.done and lookup.result().item == Item(value)


def test_mutable_get_keeps_the_newest_valid_item():
    key = SigningKey(bytes(range(32)))
    salt = b"zentalk-relay"
    old, new = Item.signed(key, b"3:old", 1, salt), Item.signed(key, b"3:new", 5, salt)
    target = new.target
    world = World(30)
    lookup = Lookup(LookupKind.GET, target, world.nodes[:3], 0.0, salt=salt)
    answers = [
        dict(value=new.value, key=new.key, signature=old.signature, seq=5),  # bad signature
        dict(value=new.value, key=new.key, signature=new.signature, seq=5),
        dict(value=old.value, key=old.key, signature=old.signature, seq=1),  # older, ignored
    ]
    requests = lookup.poll(0.0).requests
    for request, extra in zip(requests, answers):
        lookup.on_response(request.address, world.answer(request.address, target, **extra), 0.1)
    assert lookup.result().item == new
    # Without the salt the signature cannot be checked (and the target does not match).
    unsalted = Lookup(LookupKind.GET, target, world.nodes[:1], 0.0)
    (request,) = unsalted.poll(0.0).requests
    unsalted.on_response(request.address, world.answer(request.address, target, **answers[1]), 0.1)
    assert unsalted.result().item is None


def test_mutable_get_with_seq_ignores_older_items():
    key = SigningKey(bytes(range(32)))
    item = Item.signed(key, b"3:old", 3)
    world = World(10)
    lookup = Lookup(LookupKind.GET, item.target, world.nodes[:1], 0.0, seq=3)
    (request,) = lookup.poll(0.0).requests
    extra = dict(value=item.value, key=item.key, signature=item.signature, seq=3)
    lookup.on_response(request.address, world.answer(request.address, item.target, **extra), 0.1)
    assert lookup.result().item is None


def test_no_seeds_is_done_at_once():
    lookup = Lookup(LookupKind.FIND_NODE, bytes(20), [], 5.0)
    assert lookup.poll(5.0).requests == () and lookup.done
    assert lookup.result().finished == 5.0


def test_target_must_be_20_bytes():
    with pytest.raises(ValueError):
        Lookup(LookupKind.FIND_NODE, b"x", [], 0.0)
