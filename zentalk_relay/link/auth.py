"""Ed25519 challenge-response bound to the channel, sans-IO.

Each side proves its node id by signing the other side's random challenge,
a timestamp and the channel binding (the Noise handshake hash, or the TLS
exporter of RFC 9266). The binding makes a signature worthless on any other
connection, so a man in the middle that terminates the channel cannot relay
it; the side byte keeps a side's own challenge from being reflected back; the
timestamp bounds how long a captured response could matter at all.
"""

from __future__ import annotations

import hashlib
import struct

from nacl.bindings import crypto_sign, crypto_sign_open
from nacl.exceptions import BadSignatureError, ValueError as NaclValueError
from nacl.signing import SigningKey

from .frames import AuthResponse, ErrorCode, FrameError

CONTEXT = b"zentalk-link-auth-v1"
#: How far a response's timestamp may be from the verifier's clock.
FRESHNESS_MS = 60_000
INITIATOR = b"\x01"
RESPONDER = b"\x02"


_TIMESTAMP = struct.Struct("!Q").pack
#: SigningKey -> (its 64-byte libsodium secret key, its public key); a node signs with one or two keys.
_SECRETS: dict[int, tuple[SigningKey, bytes, bytes]] = {}


def signed_bytes(side: bytes, challenge: bytes, timestamp_ms: int, binding: bytes) -> bytes:
    return b"".join((CONTEXT, side, challenge, _TIMESTAMP(timestamp_ms), binding))


def _secret(key: SigningKey) -> tuple[bytes, bytes]:
    """libsodium's secret key (seed ‖ public key) and the public key, kept per key object."""
    found = _SECRETS.get(id(key))
    if found is None or found[0] is not key:
        if len(_SECRETS) >= 16:
            _SECRETS.clear()
        public = bytes(key.verify_key)
        found = _SECRETS[id(key)] = (key, bytes(key) + public, public)
    return found[1], found[2]


def sign(key: SigningKey, side: bytes, challenge: bytes, now_ms: int, binding: bytes) -> tuple[bytes, bytes]:
    """``(public key, signature)`` of an AUTH_RESPONSE to ``challenge``."""
    # libsodium's binding directly: the same signature as key.sign(...).signature, without
    # the SignedMessage and encoder around it.
    secret, public = _secret(key)
    return public, crypto_sign(signed_bytes(side, challenge, now_ms, binding), secret)[:64]


def respond(key: SigningKey, side: bytes, challenge: bytes, now_ms: int, binding: bytes) -> AuthResponse:
    public, signature = sign(key, side, challenge, now_ms, binding)
    return AuthResponse(public, now_ms, signature)


def verify(response: AuthResponse, side: bytes, challenge: bytes, now_ms: int, binding: bytes,
           expected_node_id: bytes | None = None) -> bytes:
    """The peer's node id, or FrameError with the exact reason it is refused."""
    node_id = hashlib.sha256(response.public_key).digest()
    if expected_node_id is not None and node_id != expected_node_id:
        raise FrameError(ErrorCode.AUTH_WRONG_IDENTITY, "the peer is not the node it was expected to be")
    if abs(now_ms - response.timestamp_ms) > FRESHNESS_MS:
        raise FrameError(ErrorCode.AUTH_STALE_TIMESTAMP, "the response's timestamp is not within 60 s")
    signature = response.signature
    try:
        if len(signature) != 64 or len(response.public_key) != 32:
            raise BadSignatureError  # what VerifyKey(...).verify(...) would refuse
        crypto_sign_open(signature + signed_bytes(side, challenge, response.timestamp_ms, binding),
                         response.public_key)
    except (BadSignatureError, NaclValueError):
        raise FrameError(ErrorCode.AUTH_BAD_SIGNATURE, "the signature does not verify") from None
    return node_id
