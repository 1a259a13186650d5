"""SIGTERM drains without losing an acknowledged message; SIGHUP applies what can change while running."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import ssl
import subprocess

import pytest
import pytest_twisted
from nacl.signing import SigningKey
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from zentalk_relay import bootstrap
from zentalk_relay.client import LinkClosed, connect
from zentalk_relay.link.frames import ErrorCode, ReceiptStatus

pytestmark = pytest.mark.integration
BOUND = 30.0


def within(deferred, seconds: float = BOUND):
    return deferred.addTimeout(seconds, reactor)


def node_id(key: SigningKey) -> bytes:
    return hashlib.sha256(bytes(key.verify_key)).digest()


def write_config(path, links_per_ip: int, software: str = "zentalk-relay") -> None:
    path.write_text(f"""
[stun]
udp = ["127.0.0.1:0"]
software = "{software}"

[link]
tcp = ["tcp:0:interface=127.0.0.1"]
links_per_ip = {links_per_ip}
messages_per_minute = 1000000
messages_burst = 100000

[metrics]
listen = "tcp:0:interface=127.0.0.1"
""")


async def join(node, key: SigningKey):
    boot = bootstrap.parse(node.status()["bootstrap"])
    return await within(Deferred.fromCoroutine(connect(reactor, boot, key)))


async def sync_all(client) -> list[bytes]:
    seen, cursor = [], 0
    while True:
        page = await within(client.sync(cursor, 500))
        seen += [message.message_id for message in page.messages]
        cursor = page.next_cursor
        if not page.has_more:
            return seen


@pytest_twisted.ensureDeferred
async def test_sighup_applies_a_changed_limit_without_dropping_links(start_node, tmp_path):
    config = tmp_path / "relay.toml"
    write_config(config, links_per_ip=5)
    node = start_node("--config", str(config), workdir=tmp_path / "relay")
    keys = [SigningKey.generate() for _ in range(3)]
    clients = [await join(node, key) for key in keys]

    write_config(config, links_per_ip=2, software="renamed")
    node.process.send_signal(signal.SIGHUP)
    node.wait_for(re.compile(r"reload: link.links_per_ip 5 -> 2"))
    node.wait_for(re.compile(r"needs a restart: stun.software"))

    # the three links stay up and carry messages
    receipt = await within(clients[0].send(node_id(keys[1]), b"still here"))
    assert receipt.status == ReceiptStatus.DELIVERED
    assert (await within(clients[1].receive())).body == b"still here"
    # a fourth link from the same address is refused under the new limit
    with pytest.raises(LinkClosed) as refused:
        await join(node, SigningKey.generate())
    assert refused.value.code == ErrorCode.TOO_MANY_CONNECTIONS_FROM_IP
    for client in clients:
        await within(client.close())


@pytest_twisted.ensureDeferred
async def test_a_bad_configuration_on_sighup_changes_nothing(start_node, tmp_path):
    config = tmp_path / "relay.toml"
    write_config(config, links_per_ip=5)
    node = start_node("--config", str(config), workdir=tmp_path / "relay")
    config.write_text("[link]\nlinks_per_ip = -1\n")
    node.process.send_signal(signal.SIGHUP)
    node.wait_for(re.compile(r"reload refused, nothing changed: .*link.links_per_ip"))
    client = await join(node, SigningKey.generate())
    await within(client.close())


@pytest_twisted.ensureDeferred
async def test_sigterm_during_load_loses_no_acknowledged_message(start_node, tmp_path):
    config = tmp_path / "relay.toml"
    write_config(config, links_per_ip=10)
    workdir = tmp_path / "relay"
    node = start_node("--config", str(config), workdir=workdir)
    alice_key, bob_key, carol_key = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    alice = await join(node, alice_key)
    carol = await join(node, carol_key)  # online: her messages are DELIVERED, not stored
    received: list[bytes] = []

    def collect(deliver) -> None:
        received.append(deliver.message_id)
        carol.receive().addCallbacks(collect, lambda failure: None)

    carol.receive().addCallbacks(collect, lambda failure: None)
    acknowledged: list[bytes] = []
    sent: list[bytes] = []
    stopped = Deferred()

    def send_next() -> None:
        if stopped.called or len(sent) >= 20000:
            return
        message_id = os.urandom(16)
        sent.append(message_id)
        recipient = node_id(bob_key) if len(sent) % 2 else node_id(carol_key)
        alice.send(recipient, b"load %d" % len(sent), message_id).addCallbacks(
            on_receipt, lambda failure: None, callbackArgs=(message_id,))

    def on_receipt(receipt, message_id) -> None:
        if receipt.status in (ReceiptStatus.STORED, ReceiptStatus.DELIVERED):
            acknowledged.append(message_id)
        if len(acknowledged) >= 400 and not stopped.called:
            node.process.send_signal(signal.SIGTERM)
            stopped.callback(None)
        send_next()

    for _ in range(200):  # 200 in flight: the signal lands mid-burst
        send_next()
    await within(stopped)
    closed = await within(alice.closed)
    assert closed.code == ErrorCode.SHUTTING_DOWN and closed.by_peer  # told why, not cut off
    assert node.finish() == -signal.SIGTERM
    assert "drain did not finish" not in node.text and re.search(r"node stopped after \d", node.text)
    assert 400 <= len(acknowledged) < len(sent)

    again = start_node("--config", str(config), workdir=workdir)
    stored = []
    for key in (bob_key, carol_key):
        client = await join(again, key)
        stored += await sync_all(client)
        await within(client.close())
    assert len(stored) == len(set(stored)), "a message was stored twice"
    missing = set(acknowledged) - set(stored) - set(received)
    assert not missing, f"{len(missing)} acknowledged messages were lost"


def _certificate(key, cert, name: str) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)


def _served_name(address) -> str:
    """The CN of the certificate the TLS listener serves now (a fresh handshake)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["zentalk/3"])
    with socket.create_connection(address, timeout=10) as raw, context.wrap_socket(raw) as wrapped:
        der = wrapped.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def test_sighup_serves_a_renewed_tls_certificate_to_new_connections(start_node, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    _certificate(key, cert, "before.test")
    node = start_node("--stun-udp", "127.0.0.1:0", "--metrics-listen", "tcp:0:interface=127.0.0.1",
                      "--set", 'link.tcp=["tcp:0:interface=127.0.0.1"]', "--set", 'link.tls="tcp:0:interface=127.0.0.1"',
                      "--set", f'link.tls_certificate="{cert}"', "--set", f'link.tls_private_key="{key}"')
    address = node.stream_address("link", "tls")
    assert _served_name(address) == "CN=before.test"
    _certificate(key, cert, "after.test")  # renewed in place, as an ACME client does
    node.process.send_signal(signal.SIGHUP)
    node.wait_for(re.compile(r"reload: no setting changed"))
    assert _served_name(address) == "CN=after.test"
