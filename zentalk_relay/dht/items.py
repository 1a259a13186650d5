"""BEP 44 items: immutable and mutable values, their targets and signatures.

An immutable item's target is ``SHA-1(v)``, ``v`` bencoded. A mutable
item's target is ``SHA-1(k ‖ salt)``; its Ed25519 signature covers the
buffer ``[4:salt <len>:<salt>] 3:seqi<seq>e 1:v <v>`` (the salt part only
when the salt is not empty), which is a fragment of bencoding, not a
bencoded dictionary.

Signatures are verified with PyNaCl against the public key ``k``. The
64-byte private key that BEP 44's test vectors publish is the expanded form
(clamped scalar ‖ SHA-512 prefix), which PyNaCl cannot load; nothing here
needs it: nodes only verify, and a publisher signs with its own
:class:`nacl.signing.SigningKey` (:meth:`Item.signed`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import fastbencode

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .krpc import MAX_SALT, MAX_SEQ, MAX_VALUE

__all__ = ["Item", "immutable_target", "is_bencoded", "mutable_target", "signed_buffer", "verify_signature"]


def signed_buffer(seq: int, value: bytes, salt: bytes = b"") -> bytes:
    """What a mutable item's signature covers; ``value`` is ``v`` bencoded."""
    prefix = b"4:salt%d:%s" % (len(salt), salt) if salt else b""
    return prefix + b"3:seqi%de1:v" % seq + value


def mutable_target(key: bytes, salt: bytes = b"") -> bytes:
    return hashlib.sha1(key + salt).digest()


def immutable_target(value: bytes) -> bytes:
    return hashlib.sha1(value).digest()


def is_bencoded(value: bytes) -> bool:
    """Whether ``value`` is one canonically bencoded value (what a ``v`` must be)."""
    try:
        return fastbencode.bencode(fastbencode.bdecode(value)) == value
    except Exception:  # noqa: BLE001 - whatever the bencode library raises on garbage
        return False


def verify_signature(key: bytes, signature: bytes, seq: int, value: bytes, salt: bytes = b"") -> bool:
    """Whether ``signature`` by public key ``key`` covers this item; never raises."""
    if len(key) != 32 or len(signature) != 64:
        return False
    try:
        VerifyKey(key).verify(signed_buffer(seq, value, salt), signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Item:
    """A BEP 44 item; ``value`` is ``v`` bencoded. Mutable when ``key`` is set."""

    value: bytes
    key: bytes | None = None
    signature: bytes | None = None
    seq: int | None = None
    salt: bytes = b""

    @property
    def mutable(self) -> bool:
        return self.key is not None

    @property
    def target(self) -> bytes:
        if self.key is None:
            return immutable_target(self.value)
        return mutable_target(self.key, self.salt)

    def verify(self) -> bool:
        """``value`` canonical bencoding within BEP 44's limits and, if mutable, a valid signature."""
        if len(self.value) > MAX_VALUE or not is_bencoded(self.value):
            return False
        if self.key is None:
            return True
        if self.signature is None or self.seq is None or not 0 <= self.seq <= MAX_SEQ or len(self.salt) > MAX_SALT:
            return False
        return verify_signature(self.key, self.signature, self.seq, self.value, self.salt)

    @classmethod
    def immutable(cls, value: bytes) -> Item:
        """An immutable item holding ``value`` (already bencoded)."""
        return cls(value)

    @classmethod
    def signed(cls, signing_key: SigningKey, value: bytes, seq: int, salt: bytes = b"") -> Item:
        """A mutable item holding ``value`` (already bencoded), signed by ``signing_key``."""
        signature = signing_key.sign(signed_buffer(seq, value, salt)).signature
        return cls(value, bytes(signing_key.verify_key), signature, seq, salt)
