"""The DHT between real nodes on loopback: discovery, records, paths, persistence, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from functools import partial

import pytest
import pytest_twisted
from nacl.signing import SigningKey
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from zentalk_relay.client import connect
from zentalk_relay.client.discovery import choose_path, discover_relays, hops
from zentalk_relay.dht.records import RELAYS_INFO_HASH

from .conftest import cli, metric, wait_until

pytestmark = pytest.mark.integration
BOUND = 40.0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def relay_args(dht_port: int, *bootstrap: int) -> tuple[str, ...]:
    """A relay on loopback whose only way to other relays is the DHT: no mesh peers configured."""
    return ("--stun-udp", "127.0.0.1:0", "--metrics-listen", "tcp:0:interface=127.0.0.1",
            "--dht-udp", f"127.0.0.1:{dht_port}",
            "--set", f'link.tcp=["tcp:{free_port()}:interface=127.0.0.1"]',
            "--set", "dht.bootstrap=" + json.dumps([f"127.0.0.1:{port}" for port in bootstrap]),
            "--set", "pex.allow_private_addresses=true",
            "--set", "link.messages_per_minute=100000", "--set", "link.messages_burst=10000")


wait_until = partial(wait_until, timeout=BOUND)


def metrics_of(node) -> str:
    return node.http("/metrics")[1].decode()


@pytest.fixture
def dht_relays(start_node):
    """A, the bootstrap node (no bootstrap list), and B and C, which know only A's DHT address."""
    port_a = free_port(socket.SOCK_DGRAM)
    a = start_node(*relay_args(port_a))
    b = start_node(*relay_args(free_port(socket.SOCK_DGRAM), port_a))
    c = start_node(*relay_args(free_port(socket.SOCK_DGRAM), port_a))
    return port_a, {"a": a, "b": b, "c": c}


@pytest_twisted.ensureDeferred
async def test_relays_find_each_other_through_the_dht_form_a_mesh_and_carry_a_message(dht_relays):
    port_a, nodes = dht_relays
    for name, node in nodes.items():
        wait_until(lambda: node.status()["dht"]["relays_known"] >= 2, f"relay {name} knows the two others")
        wait_until(lambda: metric(metrics_of(node), "zentalk_mesh_links_up") >= 1, f"relay {name} has a mesh link")
    assert "no bootstrap nodes configured" in nodes["a"].text

    records = await Deferred.fromCoroutine(
        discover_relays(reactor, [f"127.0.0.1:{port_a}"], bind="127.0.0.1:0")).addTimeout(BOUND, reactor)
    by_id = {record.node_id.hex(): record for record in records}
    for node in nodes.values():
        status = node.status()
        record = by_id[status["node_id"]]
        assert record.onion_key.hex() == status["onion_public"]
        assert str(record.bootstrap()) == status["bootstrap"]

    path = choose_path(records, 3)
    sender_key, recipient_key = SigningKey.generate(), SigningKey.generate()
    recipient_id = hashlib.sha256(bytes(recipient_key.verify_key)).digest()
    sender = await connect(reactor, path[0].bootstrap(), sender_key)
    recipient = await connect(reactor, path[-1].bootstrap(), recipient_key)
    try:
        body = os.urandom(200)
        message_id = sender.send_onion(hops(path), recipient_id, body)
        deliver = await recipient.receive().addTimeout(BOUND, reactor)
        assert (deliver.message_id, deliver.body) == (message_id, body)
    finally:
        await sender.close()
        await recipient.close()


def test_the_routing_table_survives_a_restart(start_node, tmp_path):
    port_a = free_port(socket.SOCK_DGRAM)
    a = start_node(*relay_args(port_a))
    port_b = free_port(socket.SOCK_DGRAM)
    b = start_node(*relay_args(port_b, port_a), workdir=tmp_path / "b")
    a_id = a.status()["dht"]["families"]["ipv4"]["node_id"]
    wait_until(lambda: b.status()["dht"]["families"]["ipv4"]["good"] >= 1, "B has A in its table")
    b_id = b.status()["dht"]["families"]["ipv4"]["node_id"]
    assert b.terminate() == -15  # twistd re-raises SIGTERM after a clean stop
    saved = json.loads((b.data_dir / "dht" / "routing4.json").read_text())
    assert saved["id"] == b_id and a_id in [row[0] for row in saved["nodes"]]

    again = start_node(*relay_args(port_b), workdir=tmp_path / "b")  # no bootstrap list this time
    family = again.status()["dht"]["families"]["ipv4"]
    assert family["node_id"] == b_id and family["nodes"] >= 1 and family["good"] >= 1
    assert "DHT routing table loaded: 1 nodes" in again.text
    # and it works from there: it reaches A, with nothing but the restored table
    lookup = cli("dht", "lookup", a_id, "--bootstrap", f"127.0.0.1:{port_b}", "--bind", "127.0.0.1:0", "--json")
    assert lookup.returncode == 0, lookup.stderr
    assert a_id in [node["id"] for node in json.loads(lookup.stdout)["nodes"]]


def test_the_dht_command_puts_gets_announces_and_finds(dht_relays, tmp_path):
    port_a, nodes = dht_relays
    boot = ("--bootstrap", f"127.0.0.1:{port_a}", "--bind", "127.0.0.1:0", "--json")
    wait_until(lambda: nodes["b"].status()["dht"]["families"]["ipv4"]["good"] >= 1, "B joined")

    put = cli("dht", "put", "hello", *boot)
    assert put.returncode == 0, put.stderr
    stored = json.loads(put.stdout)
    assert stored["stored"] >= 1
    get = json.loads(cli("dht", "get", stored["target"], *boot).stdout)
    assert get == {"found": True, "value": "hello", "rounds": get["rounds"]}

    data = tmp_path / "cli-identity"
    assert cli("keygen", "--data-dir", str(data)).returncode == 0
    mutable = cli("dht", "put", "v1", "--mutable", "--salt", "s", "--seq", "7", "--data-dir", str(data), *boot)
    assert mutable.returncode == 0, mutable.stderr
    target = json.loads(mutable.stdout)["target"]
    read = json.loads(cli("dht", "get", target, "--salt", "s", *boot).stdout)
    assert (read["value"], read["seq"]) == ("v1", 7)

    info_hash = os.urandom(20).hex()
    assert cli("dht", "peers", info_hash, *boot).returncode == 2  # nothing announced yet
    announce = cli("dht", "announce", info_hash, "--port", "4242", *boot)
    assert json.loads(announce.stdout)["stored"] >= 1
    peers = json.loads(cli("dht", "peers", info_hash, *boot).stdout)["peers"]
    assert "127.0.0.1:4242" in peers

    relays = wait_until(lambda: _relays(boot), "the three relays are announced", timeout=BOUND)
    assert {r["node_id"] for r in relays} == {n.status()["node_id"] for n in nodes.values()}
    relay_peers = json.loads(cli("dht", "peers", RELAYS_INFO_HASH.hex(), *boot).stdout)["peers"]
    assert len(relay_peers) == 3


def _relays(boot) -> list | None:
    listed = json.loads(cli("dht", "relays", *boot).stdout)
    return listed["relays"] if len(listed.get("relays", ())) == 3 else None
