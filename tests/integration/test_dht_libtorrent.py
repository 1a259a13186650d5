"""Interoperability with libtorrent's DHT on loopback, both ways.

libtorrent finds our node, stores and reads a mutable item through it, and
announces and finds peers through it; our node publishes its relay record
and announces through libtorrent, and reads what libtorrent stored.
"""

from __future__ import annotations

import json
import os
import socket
from functools import partial

import pytest

from zentalk_relay.dht.records import RECORD_SALT, RELAYS_INFO_HASH, RelayRecord, record_target

from tests.support import libtorrent_peer as lt_peer  # the libtorrent wheel: a test dependency

from .conftest import cli, metric, wait_until

pytestmark = pytest.mark.integration
BOUND = 30.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


wait_until = partial(wait_until, timeout=BOUND)


def dht_metric(node, name: str) -> float:
    return metric(node.http("/metrics")[1].decode(), name, family="ipv4")


@pytest.fixture
def peers():
    opened = []

    def open_peer():
        peer = lt_peer.LibtorrentPeer()
        opened.append(peer)
        return peer

    yield open_peer
    for peer in opened:
        peer.close()


def test_libtorrent_stores_reads_and_finds_peers_through_our_node(start_node, peers):
    port = free_udp_port()
    ours = start_node("--stun-udp", "127.0.0.1:0", "--metrics-listen", "tcp:0:interface=127.0.0.1",
                      "--dht-udp", f"127.0.0.1:{port}", "--set", "link.enabled=false")
    writer, reader = peers(), peers()
    for peer in (writer, reader):  # they know only our node
        peer.add_node("127.0.0.1", port)
        peer.wait_for_nodes(1, timeout=BOUND)

    public, secret = lt_peer.ed25519_keypair(os.urandom(32))
    put = writer.put_mutable(public, secret, b"hello from libtorrent", salt=b"interop", timeout=BOUND)
    assert put.num_success >= 1
    wait_until(lambda: dht_metric(ours, "zentalk_dht_items") >= 1, "our node stored libtorrent's item")
    got = reader.get_mutable(public, salt=b"interop", timeout=BOUND)
    assert got.found and got.signature_valid and got.value == b"hello from libtorrent" and got.seq == put.seq

    info_hash = os.urandom(20)
    writer.announce(info_hash, 6881, timeout=BOUND)
    wait_until(lambda: dht_metric(ours, "zentalk_dht_peers") >= 1, "our node stored libtorrent's announce")
    assert ("127.0.0.1", 6881) in reader.get_peers(info_hash, timeout=BOUND)
    # and our own read-only client agrees, through our node
    found = cli("dht", "get", lt_peer.mutable_target(public, b"interop").hex(), "--salt", "interop",
                "--bootstrap", f"127.0.0.1:{port}", "--bind", "127.0.0.1:0", "--json")
    assert json.loads(found.stdout)["value"] == "hello from libtorrent"


def test_our_node_publishes_announces_and_reads_through_libtorrent(start_node, peers):
    first, second = peers(), peers()
    first.add_node(*second.endpoint)
    second.add_node(*first.endpoint)
    first.wait_for_nodes(1, timeout=BOUND)
    dht_port = free_udp_port()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        link_port = probe.getsockname()[1]
    relay = start_node("--stun-udp", "127.0.0.1:0", "--metrics-listen", "tcp:0:interface=127.0.0.1",
                       "--dht-udp", f"127.0.0.1:{dht_port}",
                       "--set", f'link.tcp=["tcp:{link_port}:interface=127.0.0.1"]',
                       "--set", f'dht.bootstrap=["127.0.0.1:{first.port}"]')  # its only way in: libtorrent
    status = relay.status()
    key = bytes.fromhex(json.loads(cli("info", "--json", "--data-dir", str(relay.data_dir)).stdout)["ed25519_public"])

    # our node's put: libtorrent nodes store the record and hand it to a libtorrent reader
    wait_until(lambda: metric(relay.http("/metrics")[1].decode(), "zentalk_dht_record_publishes_total",
                              result="stored") >= 1, "the relay record was stored")
    got = second.get_mutable(key, salt=RECORD_SALT, timeout=BOUND)
    assert got.found and got.signature_valid
    record = RelayRecord.parse(key, got.value_bencoded)
    assert record.node_id.hex() == status["node_id"] and record.addresses == (("127.0.0.1", link_port),)
    assert record.onion_key.hex() == status["onion_public"]

    # our node's announce: libtorrent finds it
    assert ("127.0.0.1", dht_port) in second.get_peers(RELAYS_INFO_HASH, timeout=BOUND)

    # our reads through libtorrent: an item libtorrent put, and libtorrent's peers
    public, secret = lt_peer.ed25519_keypair(os.urandom(32))
    assert second.put_mutable(public, secret, b"from libtorrent", salt=b"s", timeout=BOUND).num_success >= 1
    boot = ("--bootstrap", f"127.0.0.1:{first.port}", "--bind", "127.0.0.1:0", "--json")
    read = json.loads(cli("dht", "get", lt_peer.mutable_target(public, b"s").hex(), "--salt", "s", *boot).stdout)
    assert read["found"] and read["value"] == "from libtorrent"
    info_hash = os.urandom(20)
    second.announce(info_hash, 7777, timeout=BOUND)
    peers_seen = wait_until(
        lambda: json.loads(cli("dht", "peers", info_hash.hex(), *boot).stdout).get("peers"), "libtorrent's peer")
    assert "127.0.0.1:7777" in peers_seen
    # and the relay's own record, read by our client through libtorrent
    mine = json.loads(cli("dht", "get", record_target(key).hex(), "--salt", RECORD_SALT.decode(), *boot).stdout)
    assert mine["found"] and mine["key"] == key.hex()
