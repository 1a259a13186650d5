"""Noise NK against another implementation: noiseprotocol (PyPI ``noiseprotocol``).

Its test extra pins it; a missing install fails here on import rather than
skipping.
"""

import json
import os

import pytest
from noise.connection import Keypair, NoiseConnection

from tests.conftest import VECTORS
from zentalk_relay.link.noise import MAX_PAYLOAD, NoiseError, NoiseNK, NoiseNKpsk0, public_key

_JOHN_GALT = json.loads((VECTORS / "noise_nk_vectors.json").read_text())["vectors"][0]
assert _JOHN_GALT["protocol_name"] == "Noise_NK_25519_ChaChaPoly_SHA256"

_PAYLOADS = [b"", b"x", os.urandom(1024), os.urandom(MAX_PAYLOAD)]


def _theirs(
    factory, initiator, prologue, *, static=None, remote_static=None, ephemeral=None, psk=None
):
    connection = NoiseConnection.from_name(factory.protocol_name)
    if initiator:
        connection.set_as_initiator()
        connection.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_static)
    else:
        connection.set_as_responder()
        connection.set_keypair_from_private_bytes(Keypair.STATIC, static)
    if ephemeral is not None:
        connection.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    if psk is not None:
        connection.set_psks(psk=psk)
    connection.set_prologue(prologue)
    connection.start_handshake()
    return connection


def _exchange(ours, theirs):
    """Transport messages both ways, interleaved, through (send, receive) and their connection."""
    send, receive = ours
    for payload in _PAYLOADS:
        assert theirs.decrypt(send.encrypt(payload)) == payload
        assert receive.decrypt(theirs.encrypt(payload[::-1])) == payload[::-1]
    for payload in _PAYLOADS:  # several in a row one way, then the other
        assert theirs.decrypt(send.encrypt(payload)) == payload
    for payload in _PAYLOADS:
        assert receive.decrypt(theirs.encrypt(payload)) == payload


@pytest.mark.parametrize("factory", [NoiseNK, NoiseNKpsk0], ids=["NK", "NKpsk0"])
def test_ours_as_initiator(factory):
    static, prologue = os.urandom(32), os.urandom(20)
    psk = os.urandom(32) if factory is NoiseNKpsk0 else None
    theirs = _theirs(factory, False, prologue, static=static, psk=psk)
    ours = factory.initiator(public_key(static), prologue, **({"psk": psk} if psk else {}))
    assert theirs.read_message(ours.write_message(b"client hello")) == b"client hello"
    assert ours.read_message(theirs.write_message(b"relay hello")) == b"relay hello"
    assert ours.complete and theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()
    _exchange(ours.split(), theirs)


@pytest.mark.parametrize("factory", [NoiseNK, NoiseNKpsk0], ids=["NK", "NKpsk0"])
def test_ours_as_responder(factory):
    static, prologue = os.urandom(32), os.urandom(20)
    psk = os.urandom(32) if factory is NoiseNKpsk0 else None
    theirs = _theirs(factory, True, prologue, remote_static=public_key(static), psk=psk)
    ours = factory.responder(static, prologue, **({"psk": psk} if psk else {}))
    assert ours.read_message(theirs.write_message(b"client hello")) == b"client hello"
    assert theirs.read_message(ours.write_message(b"relay hello")) == b"relay hello"
    assert ours.complete and theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()
    _exchange(ours.split(), theirs)


@pytest.mark.filterwarnings("ignore:One of ephemeral keypairs is already set")
def test_both_agree_with_the_vector_byte_for_byte():
    vector = _JOHN_GALT
    h = bytes.fromhex
    messages = [(h(m["payload"]), h(m["ciphertext"])) for m in vector["messages"]]
    prologue = h(vector["init_prologue"])
    theirs_i = _theirs(
        NoiseNK,
        True,
        prologue,
        remote_static=h(vector["init_remote_static"]),
        ephemeral=h(vector["init_ephemeral"]),
    )
    ours_r = NoiseNK.responder(
        h(vector["resp_static"]), prologue, ephemeral_private=h(vector["resp_ephemeral"])
    )
    first = theirs_i.write_message(messages[0][0])
    assert first == messages[0][1]
    assert ours_r.read_message(first) == messages[0][0]
    second = ours_r.write_message(messages[1][0])
    assert theirs_i.read_message(second) == messages[1][0]
    assert theirs_i.get_handshake_hash() == ours_r.handshake_hash == h(vector["handshake_hash"])
    send, receive = ours_r.split()
    assert receive.decrypt(theirs_i.encrypt(messages[2][0])) == messages[2][0]
    assert send.encrypt(messages[3][0]) == messages[3][1]


def test_their_message_under_a_wrong_key_is_refused():
    static = os.urandom(32)
    theirs = _theirs(NoiseNK, True, b"", remote_static=public_key(os.urandom(32)))
    with pytest.raises(NoiseError, match="^decrypt_failed$"):
        NoiseNK.responder(static, b"").read_message(theirs.write_message(b"hi"))


def test_straight_line_responder_with_theirs():
    from zentalk_relay.link.noise import NKResponder

    static, prologue = os.urandom(32), os.urandom(20)
    theirs = _theirs(NoiseNK, True, prologue, remote_static=public_key(static))
    reply, payload, send, receive, handshake_hash = NKResponder(static, prologue).respond(
        theirs.write_message(b"client hello"), os.urandom(32), b"relay hello")
    assert payload == b"client hello"
    assert theirs.read_message(reply) == b"relay hello"
    assert theirs.handshake_finished and handshake_hash == theirs.get_handshake_hash()
    _exchange((send, receive), theirs)
