"""Delivery end to end: three relays, an onion path, the mailbox, SIGKILL, resumption, hole punching."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket

import pytest
import pytest_twisted
from nacl.signing import SigningKey
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from zentalk_relay import bootstrap
from zentalk_relay.client import connect
from zentalk_relay.link.frames import ReceiptStatus

from .conftest import cli, metric

pytestmark = pytest.mark.integration
BOUND = 30.0


def within(deferred, seconds: float = BOUND):
    return deferred.addTimeout(seconds, reactor)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_args(port: int, *extra: str) -> tuple[str, ...]:
    return ("--stun-udp", "127.0.0.1:0", "--metrics-listen", "tcp:0:interface=127.0.0.1",
            "--set", f'link.tcp=["tcp:{port}:interface=127.0.0.1"]',
            "--set", "link.messages_per_minute=100000", "--set", "link.messages_burst=10000", *extra)


async def join(node, key: SigningKey, **kwargs):
    boot = bootstrap.parse(node.status()["bootstrap"])
    return await within(Deferred.fromCoroutine(connect(reactor, boot, key, **kwargs)))


def node_id(key: SigningKey) -> bytes:
    return hashlib.sha256(bytes(key.verify_key)).digest()


@pytest.fixture
def three_relays(start_node, tmp_path):
    """A, B and C, each configured with the others as mesh peers."""
    names = "abc"
    infos, ports = {}, {}
    for name in names:
        data = tmp_path / f"relay-{name}" / "data"
        assert cli("keygen", "--data-dir", str(data)).returncode == 0
        infos[name] = json.loads(cli("info", "--json", "--data-dir", str(data)).stdout)
        ports[name] = free_port()
    nodes = {}
    for name in names:
        peers = [f'{infos[o]["bootstrap"]}@127.0.0.1:{ports[o]}' for o in names if o != name]
        nodes[name] = start_node(*node_args(ports[name], "--set", "mesh.peers=" + json.dumps(peers)),
                                 workdir=tmp_path / f"relay-{name}")
    return nodes


def path_of(*nodes) -> list[tuple[bytes, bytes]]:
    hops = []
    for node in nodes:
        status = node.status()
        hops.append((bytes.fromhex(status["node_id"]), bytes.fromhex(status["onion_public"])))
    return hops


@pytest_twisted.ensureDeferred
async def test_three_hop_path_to_an_online_then_offline_recipient(three_relays):
    a, b, c = three_relays["a"], three_relays["b"], three_relays["c"]
    alice_key, bob_key = SigningKey.generate(), SigningKey.generate()
    alice = await join(a, alice_key)
    bob = await join(c, bob_key)
    path = path_of(a, b, c)

    sent = alice.send_onion(path, node_id(bob_key), b"hello over three hops")
    delivered = await within(bob.receive())
    assert (delivered.message_id, delivered.body) == (sent, b"hello over three hops")

    await within(bob.close())
    offline = [alice.send_onion(path, node_id(bob_key), b"offline %d" % i) for i in range(5)]
    await until(lambda: metric(c.http("/metrics")[1].decode(), "zentalk_mailbox_messages") == len(offline))
    # Bob comes back, syncs, acknowledges, and sees each message once
    bob = await join(c, bob_key)
    page = await within(bob.sync())
    assert sorted(m.message_id for m in page.messages) == sorted(offline) and not page.has_more
    assert sorted(m.body for m in page.messages) == [b"offline %d" % i for i in range(5)]
    bob.ack(m.message_id for m in page.messages)
    assert (await within(bob.sync())).messages == ()
    text = b.http("/metrics")[1].decode()
    assert metric(text, "zentalk_relay_onion_packets_total", result="forwarded") >= 6
    assert metric(text, "zentalk_mesh_links_up") >= 1
    for client in (alice, bob):
        await within(client.close())


async def until(condition, seconds: float = BOUND, step: float = 0.05) -> None:
    """Wait for a condition that another process makes true, checking every ``step``, at most ``seconds``."""
    from twisted.internet.task import deferLater

    for _ in range(int(seconds / step)):
        if condition():
            return
        await deferLater(reactor, step, lambda: None)
    raise AssertionError("condition not met within %s s" % seconds)


@pytest_twisted.ensureDeferred
async def test_tampered_and_replayed_packets_are_dropped_and_counted(three_relays):
    a = three_relays["a"]
    alice = await join(a, SigningKey.generate())
    from zentalk_relay.link.frames import Onion
    from zentalk_relay.relay import delivery, onion

    hops = [onion.Hop(bytes.fromhex(a.status()["onion_public"]), onion.Instruction.DELIVER, os.urandom(32))]
    packet = onion.build_packet(hops, delivery.encode(os.urandom(16), b"x", onion.MAX_PAYLOAD))
    alice.adapter.send(Onion(packet))
    alice.adapter.send(Onion(packet))  # replay
    alice.adapter.send(Onion(packet[:100] + bytes([packet[100] ^ 1]) + packet[101:]))  # tampered header
    alice.adapter.send(Onion(packet[:-1]))  # wrong size
    await within(alice.sync())  # a round trip: the four packets were handled before the answer
    text = a.http("/metrics")[1].decode()
    assert metric(text, "zentalk_relay_onion_dropped_total", reason="replay") == 1
    assert metric(text, "zentalk_relay_onion_dropped_total", reason="bad_mac") == 1
    assert metric(text, "zentalk_relay_onion_dropped_total", reason="bad_size") == 1
    await within(alice.close())


@pytest_twisted.ensureDeferred
async def test_sigkill_loses_no_acknowledged_message(start_node, tmp_path):
    port = free_port()
    workdir = tmp_path / "relay"
    node = start_node(*node_args(port), workdir=workdir)
    alice_key, bob_key = SigningKey.generate(), SigningKey.generate()
    alice = await join(node, alice_key)
    acknowledged: list[bytes] = []
    sent: list[bytes] = []
    killed = Deferred()

    def send_next() -> None:
        if killed.called or len(sent) >= 20000:
            return
        message_id = len(sent).to_bytes(16, "big")
        sent.append(message_id)
        alice.send(node_id(bob_key), b"burst %d" % len(sent), message_id).addCallbacks(
            on_receipt, lambda failure: None, callbackArgs=(message_id,))

    def on_receipt(receipt, message_id):
        if receipt.status == ReceiptStatus.STORED:
            acknowledged.append(message_id)
        if len(acknowledged) >= 300 and not killed.called:
            os.kill(node.process.pid, signal.SIGKILL)
            killed.callback(None)
        send_next()

    for _ in range(200):  # keep 200 in flight: the kill always lands mid-burst
        send_next()
    await within(killed)
    await within(alice.closed)
    node.finish()
    assert 300 <= len(acknowledged) < len(sent)

    again = start_node(*node_args(port), workdir=workdir)
    bob = await join(again, bob_key)
    seen: list[bytes] = []
    cursor = 0
    while True:
        page = await within(bob.sync(cursor, 500))
        seen += [m.message_id for m in page.messages]
        cursor = page.next_cursor
        if not page.has_more:
            break
    assert len(seen) == len(set(seen)), "a message was stored twice"
    assert set(acknowledged) <= set(seen), "an acknowledged message was lost"
    bob.ack(seen)
    await within(bob.sync())  # the ACK was handled before this answer
    assert (await within(bob.sync())).messages == ()
    await within(bob.close())


@pytest_twisted.ensureDeferred
async def test_resume_replays_what_was_missed_and_a_bad_token_falls_back(start_node, tmp_path):
    node = start_node(*node_args(free_port()))
    alice_key, bob_key = SigningKey.generate(), SigningKey.generate()
    alice = await join(node, alice_key)
    bob = await join(node, bob_key)
    session = bob.peer
    await within(bob.close())
    receipt = await within(alice.send(node_id(bob_key), b"while you were away"))
    assert receipt.status == ReceiptStatus.STORED

    resumed = await join(node, bob_key, resume=session)
    assert resumed.peer.resumed and resumed.peer.session_token != session.session_token
    pushed = await within(resumed.pushed.get())
    assert [m.body for m in pushed.messages] == [b"while you were away"]
    resumed.ack(m.message_id for m in pushed.messages)
    await within(resumed.close())

    # the token was single-use: using it again falls back to a full handshake, then SYNC
    fallback = await join(node, bob_key, resume=session)
    assert not fallback.peer.resumed
    assert (await within(fallback.sync())).messages == ()
    await within(fallback.close())
    await within(alice.close())


@pytest_twisted.ensureDeferred
async def test_hole_punch_coordination_and_fallback(start_node):
    from zentalk_relay.client.punch import punch

    node = start_node(*node_args(free_port()))
    alice_key, bob_key = SigningKey.generate(), SigningKey.generate()
    alice = await join(node, alice_key)
    bob = await join(node, bob_key)
    # both ask; the relay tells each where the other is and when to start
    results = await within(gatherResults([
        Deferred.fromCoroutine(punch(reactor, alice, node_id(bob_key), interface="127.0.0.1")),
        Deferred.fromCoroutine(punch(reactor, bob, node_id(alice_key), interface="127.0.0.1")),
    ]))
    (alice_port, alice_sees), (bob_port, bob_sees) = results
    assert alice_sees[1] == bob_port.getHost().port and bob_sees[1] == alice_port.getHost().port
    await alice_port.stopListening()
    await bob_port.stopListening()

    # a peer that never probes back: the attempt gives up within its bound, and the relay carries the message
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        attempt = Deferred.fromCoroutine(punch(reactor, alice, node_id(bob_key), interface="127.0.0.1", timeout=0.5))
        bob.punch(node_id(alice_key), silent.getsockname())  # Bob names a socket that will not answer
        assert await within(attempt) is None
    finally:
        silent.close()
    receipt = await within(alice.send(node_id(bob_key), b"relayed instead"))
    assert receipt.status == ReceiptStatus.DELIVERED
    assert (await within(bob.receive())).body == b"relayed instead"
    await within(alice.close())
    await within(bob.close())
