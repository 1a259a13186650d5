"""What a node keeps about its users: nothing identifying in its logs at info level or in /metrics."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct

import pytest
import pytest_twisted
from nacl.signing import SigningKey
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from zentalk_relay import bootstrap
from zentalk_relay.client import connect
from zentalk_relay.link.frames import ReceiptStatus
from zentalk_relay.nat import stun

from .conftest import cli

pytestmark = pytest.mark.integration
BOUND = 30.0

# every user comes from an address of its own, so that any trace of it can be found
ALICE_IP, BOB_IP, CAROL_IP, STUN_IP, DHT_IP, ROGUE_IP = (f"127.0.0.{n}" for n in range(2, 8))


def within(deferred, seconds: float = BOUND):
    return deferred.addTimeout(seconds, reactor)


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def relay_args(link_port: int, dht_port: int, *extra: str) -> tuple[str, ...]:
    return ("--stun-udp", "127.0.0.1:0", "--metrics-listen", "tcp:0:interface=127.0.0.1",
            "--dht-udp", f"127.0.0.1:{dht_port}", "--set", "metrics.blur_interval=60",
            "--set", f'link.tcp=["tcp:{link_port}:interface=127.0.0.1"]', "--set", "pex.allow_private_addresses=true",
            "--set", "metrics.allow=[\"127.0.0.0/8\"]", "--set", "link.messages_burst=1000", *extra)


async def until(check, what: str) -> None:
    """Poll ``check`` every 100 ms without blocking the reactor; fail after BOUND seconds."""
    for _ in range(int(BOUND * 10)):
        if check():
            return
        await deferLater(reactor, 0.1)
    raise AssertionError(f"not within {BOUND:g} s: {what}")


def node_id(key: SigningKey) -> bytes:
    return hashlib.sha256(bytes(key.verify_key)).digest()


@pytest_twisted.ensureDeferred
async def test_no_client_address_or_id_in_logs_or_metrics(start_node):
    dht_a = free_port(socket.SOCK_DGRAM)
    a = start_node(*relay_args(free_port(), dht_a))
    b = start_node(*relay_args(free_port(), free_port(socket.SOCK_DGRAM), "--set", f'dht.bootstrap=["127.0.0.1:{dht_a}"]'))
    keys = {name: SigningKey.generate() for name in ("alice", "bob", "carol")}
    secrets = [ALICE_IP, BOB_IP, CAROL_IP, STUN_IP, DHT_IP, ROGUE_IP]
    for key in keys.values():
        secrets += [node_id(key).hex(), node_id(key).hex()[:16], bytes(key.verify_key).hex()]

    boot_a, boot_b = bootstrap.parse(a.status()["bootstrap"]), bootstrap.parse(b.status()["bootstrap"])
    alice = await within(Deferred.fromCoroutine(connect(reactor, boot_a, keys["alice"], bind=(ALICE_IP, 0))))
    bob = await within(Deferred.fromCoroutine(connect(reactor, boot_b, keys["bob"], bind=(BOB_IP, 0))))
    carol = await within(Deferred.fromCoroutine(connect(reactor, boot_a, keys["carol"], bind=(CAROL_IP, 0))))

    # mixed traffic: messages to an offline and an online user, an onion path, the mailbox
    message_ids = []
    for index in range(20):
        message_id = os.urandom(16)
        message_ids.append(message_id)
        receipt = await within(alice.send(node_id(keys["carol"]), b"hello %d" % index, message_id))
        assert receipt.status == ReceiptStatus.DELIVERED
    offline = os.urandom(32)
    assert (await within(alice.send(offline, b"for later"))).status == ReceiptStatus.STORED
    await until(lambda: a.status()["dht"]["relays_known"] >= 1, "A found B through the DHT")
    path = [(bytes.fromhex(n.status()["node_id"]), bytes.fromhex(n.status()["onion_public"])) for n in (a, b)]
    message_ids.append(carol.send_onion(path, node_id(keys["bob"]), b"through two relays"))
    deliver = await within(bob.receive())
    assert deliver.body == b"through two relays"
    await within(bob.sync())
    secrets += [m.hex() for m in message_ids] + [offline.hex()]

    # a STUN request, a DHT client, and garbage on a link, each from its own address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((STUN_IP, 0))
        probe.settimeout(5)
        stun_port = int(a.endpoints()["stun"][0].rsplit(":", 1)[1])
        probe.sendto(stun.encode(stun.Method.BINDING, stun.MessageClass.REQUEST, os.urandom(12)),
                     ("127.0.0.1", stun_port))
        probe.recvfrom(2048)
    relays = cli("dht", "relays", "--bootstrap", f"127.0.0.1:{dht_a}", "--bind", f"{DHT_IP}:0", "--json")
    assert relays.returncode in (0, 2), relays.stderr
    with socket.create_connection(boot_a.addresses[0], timeout=5, source_address=(ROGUE_IP, 0)) as rogue:
        rogue.sendall(struct.pack("!H", 48) + os.urandom(48))
        rogue.settimeout(5)
        try:
            rogue.recv(100)
        except OSError:
            pass

    metrics = a.http("/metrics")[1].decode() + b.http("/metrics")[1].decode()
    status = json.dumps(a.status()) + json.dumps(b.status())
    for client in (alice, bob, carol):
        await within(client.close())
    a.terminate()
    b.terminate()
    logs = a.text + b.text
    for secret in secrets:
        assert secret not in logs, f"{secret} appears in a log"
        assert secret not in metrics, f"{secret} appears in /metrics"
        assert secret not in status, f"{secret} appears in /status"
    assert "zentalk_link_handshakes_total" in metrics  # the scan read real output
    assert "node " in logs and "listening on" in logs


@pytest_twisted.ensureDeferred
async def test_a_node_writes_only_bucket_sizes_and_cover_looks_like_messages(start_node):
    from zentalk_relay.link.padding import BUCKETS

    a = start_node(*relay_args(free_port(), free_port(socket.SOCK_DGRAM)))
    boot = bootstrap.parse(a.status()["bootstrap"])
    alice_key, bob_key = SigningKey.generate(), SigningKey.generate()
    alice = await within(Deferred.fromCoroutine(connect(reactor, boot, alice_key)))
    bob = await within(Deferred.fromCoroutine(connect(reactor, boot, bob_key)))
    reader = bob.adapter.conn._reader  # noqa: SLF001 - the capture starts at a record boundary
    assert not reader._buffer[reader._offset:]  # noqa: SLF001
    captured = bytearray()
    received = bob.adapter.dataReceived

    def tap(data: bytes) -> None:
        captured.extend(data)
        received(data)

    bob.adapter.dataReceived = tap
    hop = [(bytes.fromhex(a.status()["node_id"]), bytes.fromhex(a.status()["onion_public"]))]
    bob.start_cover(20.0, lambda: hop)  # loops through A back to bob: DELIVERs like any other
    for size in (1, 60, 300, 900, 3000, 12000, 40000):  # direct SENDs of many sizes
        await within(alice.send(node_id(bob_key), os.urandom(size)))
        await within(bob.receive())
    for _ in range(10):  # onion messages with bodies of a cover loop's sizes
        alice.send_onion(hop, node_id(bob_key), os.urandom(500))
        await within(bob.receive())
    await until(lambda: bob.cover_returned >= 10, "cover loops came back")
    bob.stop_cover()

    sizes, offset = [], 0
    while offset + 2 <= len(captured):
        (size,) = struct.unpack_from("!H", captured, offset)
        if offset + 2 + size > len(captured):
            break  # the last record is still arriving
        sizes.append(size - 16)  # less the AEAD tag
        offset += 2 + size
    assert len(sizes) > 20
    assert set(sizes) <= set(BUCKETS), sorted(set(sizes) - set(BUCKETS))
    # a loop's DELIVER and a message's DELIVER with a body of the same size class share a bucket
    assert sizes.count(1024) >= 10
    for client in (alice, bob):
        await within(client.close())
