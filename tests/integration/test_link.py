"""Reference clients exchange messages through a real twistd node, over every carrier."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess

import pytest
import pytest_twisted
from nacl.signing import SigningKey
from twisted.internet import reactor

from zentalk_relay import bootstrap
from zentalk_relay.client import LinkClosed, connect
from zentalk_relay.link.frames import ErrorCode, ReceiptStatus

from .conftest import LOOPBACK_ARGS, metric

pytestmark = pytest.mark.integration
BOUND = 20.0  # seconds any single step may take


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=relay.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture
def relay(start_node, tls_files):
    cert, key = tls_files
    node = start_node(*LOOPBACK_ARGS,
                      "--set", 'link.tls="tcp:0:interface=127.0.0.1"',
                      "--set", f'link.tls_certificate="{cert}"',
                      "--set", f'link.tls_private_key="{key}"',
                      "--set", 'link.websocket="tcp:0:interface=127.0.0.1"',
                      "--set", "link.links_per_ip=50")
    node.boot = bootstrap.parse(node.status()["bootstrap"])
    return node


def within(deferred, seconds: float = BOUND):
    return deferred.addTimeout(seconds, reactor)


async def _connect(node, transport: str, key: SigningKey | None = None, boot=None):
    from twisted.internet.defer import Deferred

    address = node.stream_address("link", transport)
    return await within(Deferred.fromCoroutine(
        connect(reactor, boot or node.boot, key or SigningKey.generate(), transport=transport, address=address)))


@pytest.mark.parametrize("transport", ["tcp", "tls", "ws"])
@pytest_twisted.ensureDeferred
async def test_two_clients_exchange_messages(relay, transport):
    alice_key, bob_key = SigningKey.generate(), SigningKey.generate()
    alice = await _connect(relay, transport, alice_key)
    bob = await _connect(relay, transport, bob_key)
    assert alice.node_id == hashlib.sha256(relay.boot.ed25519_public).digest()
    bob_id = hashlib.sha256(bytes(bob_key.verify_key)).digest()
    alice_id = hashlib.sha256(bytes(alice_key.verify_key)).digest()

    receipt = await within(alice.send(bob_id, b"hello bob"))
    assert receipt.status == ReceiptStatus.DELIVERED
    delivered = await within(bob.receive())
    assert delivered.body == b"hello bob" and delivered.message_id == receipt.message_id

    big = os.urandom(60000)
    await within(bob.send(alice_id, big))
    assert (await within(alice.receive())).body == big

    await within(alice.close())
    await within(bob.close())
    text = relay.http("/metrics")[1].decode()
    assert metric(text, "zentalk_link_handshakes_total", result="success") >= 2
    assert metric(text, "zentalk_link_frames_total", direction="in", type="send") >= 2


def _links_held(node) -> float:
    text = node.http("/metrics")[1].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("zentalk_link_links{"))


async def _until(check, seconds: float = BOUND) -> None:
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + seconds
    while not check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"not true within {seconds} s")
        await deferLater(reactor, 0.05, lambda: None)


@pytest.mark.parametrize("transport", ["tcp", "tls", "ws"])
@pytest_twisted.ensureDeferred
async def test_a_closed_link_is_gone_at_both_ends(relay, transport, monkeypatch):
    from zentalk_relay.client import link as client_link

    # Only the transport going away can fire ``closed`` within the bound: the
    # fallback that drops a transport which does not go is pushed out of reach.
    monkeypatch.setattr(client_link, "CLOSE_TIMEOUT", 3600.0)
    alice = await _connect(relay, transport)
    assert _links_held(relay) == 1
    closed = await within(alice.close())
    assert closed.code is ErrorCode.NORMAL and not closed.by_peer
    await _until(lambda: _links_held(relay) == 0)


@pytest_twisted.ensureDeferred
async def test_message_to_an_offline_recipient_is_stored(relay):
    alice = await _connect(relay, "tcp")
    receipt = await within(alice.send(os.urandom(32), b"nobody is here"))
    assert (receipt.status, receipt.code) == (ReceiptStatus.STORED, 0)
    await within(alice.close())


@pytest_twisted.ensureDeferred
async def test_a_relay_with_another_identity_is_refused(relay):
    impostor = bootstrap.Bootstrap(bytes(SigningKey.generate().verify_key), relay.boot.link_public)
    with pytest.raises(LinkClosed) as caught:
        await _connect(relay, "tcp", boot=impostor)
    assert caught.value.code == ErrorCode.AUTH_WRONG_IDENTITY


@pytest_twisted.ensureDeferred
async def test_wrong_noise_key_fails_the_handshake(relay):
    wrong = bootstrap.Bootstrap(relay.boot.ed25519_public, bytes(32 * [9]))
    with pytest.raises(LinkClosed):
        await _connect(relay, "tcp", boot=wrong)


@pytest_twisted.ensureDeferred
async def test_garbage_closes_that_link_and_the_node_keeps_serving(relay):
    host, port = relay.stream_address("link", "tcp")
    with socket.create_connection((host, port), timeout=BOUND) as raw:
        raw.sendall(b"\x00\x20" + os.urandom(32))
        raw.settimeout(BOUND)
        assert raw.recv(4096) == b""  # the relay closed it
    alice = await _connect(relay, "tcp")
    await within(alice.close())
    text = relay.http("/metrics")[1].decode()
    assert metric(text, "zentalk_link_handshakes_total", result="decrypt_failed") >= 1


@pytest_twisted.ensureDeferred
async def test_per_ip_limit_is_refused_with_its_own_code(start_node):
    node = start_node(*LOOPBACK_ARGS, "--set", "link.links_per_ip=2")
    node.boot = bootstrap.parse(node.status()["bootstrap"])
    first = await _connect(node, "tcp")
    second = await _connect(node, "tcp")
    with pytest.raises(LinkClosed) as caught:
        await _connect(node, "tcp")
    assert caught.value.code == ErrorCode.TOO_MANY_CONNECTIONS_FROM_IP and caught.value.by_peer
    text = node.http("/metrics")[1].decode()
    assert metric(text, "zentalk_link_refusals_total", reason="too_many_connections_from_ip") == 1
    await within(first.close())
    await within(second.close())


@pytest_twisted.ensureDeferred
async def test_sigterm_tells_connected_clients_why(relay):
    alice = await _connect(relay, "tcp")
    relay.process.terminate()
    closed = await within(alice.closed)
    assert closed.code is ErrorCode.SHUTTING_DOWN and closed.by_peer
    assert relay.finish() == -15


def test_tls_listener_speaks_only_tls_1_3_with_alpn(relay):
    import ssl

    host, port = relay.stream_address("link", "tls")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection((host, port), timeout=BOUND) as raw:
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(raw).do_handshake()
    modern = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    modern.check_hostname, modern.verify_mode = False, ssl.CERT_NONE
    modern.set_alpn_protocols(["zentalk/3"])
    with socket.create_connection((host, port), timeout=BOUND) as raw:
        with modern.wrap_socket(raw) as tls:
            assert tls.version() == "TLSv1.3" and tls.selected_alpn_protocol() == "zentalk/3"
