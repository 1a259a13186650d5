"""Hundreds of DHT nodes in memory on one fake clock: lookups, announces, items, churn."""

import math
import statistics

import pytest
from nacl.signing import SigningKey

from zentalk_relay.dht.bep42 import node_id_matches
from zentalk_relay.dht.items import Item
from zentalk_relay.dht.simulation import EventLoop, Network

NODES = 200


@pytest.fixture(scope="module")
def network():
    net = Network(seed=11)
    net.grow(NODES, spacing=0.02)
    return net


def _lookup_success(net, count, nodes):
    found, rounds = 0, []
    for _ in range(count):
        querier, target = net.rng.sample(nodes, 2)
        op = net.start(querier, querier.dht.find_node, target.dht.node_id)
        done = net.wait(querier, op)
        assert done is not None
        if done.result.nodes and done.result.nodes[0].id == target.dht.node_id:
            found += 1
        rounds.append(done.result.rounds)
    return found, rounds


def test_every_node_has_a_bep42_id_and_a_table(network):
    for node in network.nodes.values():
        assert node_id_matches(node.dht.node_id, node.address[0])
        assert len(node.dht.table) >= 8


def test_find_node_lookups_succeed(network):
    found, rounds = _lookup_success(network, 100, list(network.nodes.values()))
    assert found >= 99
    assert statistics.median(rounds) <= math.log2(NODES)


def test_announce_then_get_peers(network):
    info_hash = b"zentalk relays hash!"
    announcers = network.rng.sample(list(network.nodes.values()), 5)
    for node in announcers:
        op = network.start(node, node.dht.announce, info_hash)
        done = network.wait(node, op)
        assert done.kind == "announce" and done.stored >= 15 and not done.errors
    seeker = network.rng.choice(list(network.nodes.values()))
    done = network.wait(seeker, network.start(seeker, seeker.dht.get_peers, info_hash))
    assert set(done.result.peers) >= {n.address for n in announcers}


def test_put_then_get_items(network):
    nodes = list(network.nodes.values())
    writer, reader = network.rng.sample(nodes, 2)
    immutable = Item.immutable(b"12:Hello World!")
    done = network.wait(writer, network.start(writer, writer.dht.put, immutable))
    assert done.kind == "put" and done.stored >= 15
    got = network.wait(reader, network.start(reader, reader.dht.get, immutable.target))
    assert got.result.item == immutable

    key = SigningKey(bytes(range(32)))
    for seq in (1, 2):
        item = Item.signed(key, b"d4:addrl15:203.0.113.1:443ee" if seq == 1 else b"i2e", seq, b"zentalk-relay")
        done = network.wait(writer, network.start(writer, writer.dht.put, item))
        assert done.stored >= 15
    got = network.wait(reader, network.start(reader, reader.dht.get, item.target, salt=b"zentalk-relay"))
    assert got.result.item == item and got.result.item.seq == 2
    # An older seq is refused by the nodes that hold the newer one.
    old = Item.signed(key, b"i1e", 1, b"zentalk-relay")
    done = network.wait(writer, network.start(writer, writer.dht.put, old))
    assert done.stored == 0 and set(done.errors) == {302}


def test_lookups_survive_churn():
    net = Network(seed=5)
    net.grow(NODES, spacing=0.02)
    nodes = list(net.nodes.values())
    for node in net.rng.sample(nodes, NODES // 5):
        net.kill(node)
    live = net.live_nodes()
    found, _ = _lookup_success(net, 60, live)
    assert found >= 57


def test_event_loop_orders_by_time_then_insertion():
    loop = EventLoop()
    seen = []
    loop.call_at(2.0, seen.append, "b")
    loop.call_at(1.0, seen.append, "a")
    loop.call_at(2.0, seen.append, "c")
    loop.run_until(1.5)
    assert seen == ["a"] and loop.now == 1.5
    loop.run_until(5.0)
    assert seen == ["a", "b", "c"] and loop.now == 5.0
