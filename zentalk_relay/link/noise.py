"""The Noise handshake of the link, sans-IO: ``Noise_NK_25519_ChaChaPoly_SHA256``.

An implementation of the Noise Protocol Framework (revision 34) for one
pattern, NK::

    NK:
      <- s
      ...
      -> e, es
      <- e, ee

The client (initiator) knows the relay's static X25519 key before it
connects (it is pinned in the bootstrap string); the relay (responder)
learns nothing about the client. After the two handshake messages each side
calls :meth:`HandshakeState.split` for its (send, receive) cipher states and
keeps :attr:`HandshakeState.handshake_hash` as the channel binding.

The pattern is a table (:data:`PATTERNS`), and the ``psk0``/``psk2``
modifiers are applied to it by rule, so ``NKpsk0`` and ``NKpsk2`` come for
free (:class:`NoiseNKpsk0`, :class:`NoiseNKpsk2`); the published vectors for
all three are checked by the unit tests.

Nothing here reads the clock or global randomness: ephemeral keys are passed
in, or drawn once by the factories from the ``rng`` they are given. X25519 is
libsodium's (PyNaCl), ChaCha20-Poly1305 is OpenSSL's (``cryptography``, about
four times faster than libsodium through PyNaCl for 1 KiB records), SHA-256
and HMAC are ``hashlib``'s.

A peer's garbage raises :class:`NoiseError` and nothing else. A failed
handshake cannot be resumed: every later call on it raises
``NoiseError("out_of_order")``. A failed transport decryption leaves the
cipher state as it was (the nonce does not move), as the spec requires; the
link closes the connection anyway.

Each Noise message travels behind a 2-byte big-endian length (section 13 of
the spec): :func:`frame` writes one, :class:`LengthPrefixedReader` reads them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError

__all__ = [
    "CipherState",
    "DHLEN",
    "FRAME_HEADER",
    "HandshakePattern",
    "HandshakeState",
    "LengthPrefixedReader",
    "MAX_BUFFER",
    "MAX_MESSAGE",
    "MAX_NONCE",
    "MAX_PAYLOAD",
    "NKResponder",
    "NoiseError",
    "NoiseNK",
    "NoiseNKpsk0",
    "NoiseNKpsk2",
    "PATTERNS",
    "PSKLEN",
    "SymmetricState",
    "TAGLEN",
    "frame",
    "handshake_pattern",
    "nk_responder",
    "public_key",
]

#: X25519 key and shared-secret length.
DHLEN = 32
#: SHA-256 output length.
HASHLEN = 32
#: ChaCha20-Poly1305 key and tag lengths.
KEYLEN = 32
TAGLEN = 16
#: A pre-shared key for the psk modifiers.
PSKLEN = 32
#: The largest Noise message, handshake or transport (section 3 of the spec).
MAX_MESSAGE = 65535
#: The largest transport payload: a message less the AEAD tag.
MAX_PAYLOAD = MAX_MESSAGE - TAGLEN
#: The nonce 2**64 - 1 is reserved (section 5.1): a cipher state that has
#: used every nonce below it refuses to go on.
MAX_NONCE = 2**64 - 1
#: The record length prefix on the wire.
FRAME_HEADER = 2
#: Default cap on the bytes a :class:`LengthPrefixedReader` holds unconsumed:
#: four largest records. An adapter that drains the reader after every
#: ``receive_data`` never holds more than one partial record plus one read.
MAX_BUFFER = 4 * (FRAME_HEADER + MAX_MESSAGE)

_NONCE = struct.Struct("<4xQ").pack  # 32 zero bits, then the counter, little-endian
_LENGTH = struct.Struct(">H")
_ZERO_DH = bytes(DHLEN)
_SUITE = b"_25519_ChaChaPoly_SHA256"


class NoiseError(Exception):
    """A handshake or transport message was refused; ``reason`` is one short fixed word.

    ``decrypt_failed``: an AEAD tag did not verify (tampering, a wrong key,
    a replay); ``bad_length``: a message, payload, record or key of a size
    that is not allowed; ``out_of_order``: a call that the state does not
    allow now (reading when it is our turn to write, using a failed or
    finished handshake, splitting twice); ``nonce_exhausted``: a cipher state
    reached the reserved nonce; ``weak_key``: a Diffie-Hellman with a
    low-order public key (an all-zero shared secret).
    """

    REASONS = frozenset(
        {"decrypt_failed", "bad_length", "out_of_order", "nonce_exhausted", "weak_key"}
    )

    def __init__(self, reason: str) -> None:
        assert reason in self.REASONS, reason
        super().__init__(reason)
        self.reason = reason


# -- primitives --------------------------------------------------------------


def _bytes(value: bytes | bytearray | memoryview, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def _key(value: bytes, what: str) -> bytes:
    value = _bytes(value, what)
    if len(value) != DHLEN:
        raise NoiseError("bad_length")
    return value


def public_key(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private scalar (clamped by X25519)."""
    return crypto_scalarmult_base(_key(private, "private key"))


def _dh(private: bytes, public: bytes) -> bytes:
    # PyNaCl passes its arguments to libsodium without checking their
    # lengths (a short key would be read past its end), so check them here.
    # libsodium refuses low-order points and all-zero results with a
    # CryptoError ("Unexpected library error"); check the result as well so
    # that the rule does not rest on one library's choice.
    if len(private) != DHLEN or len(public) != DHLEN:
        raise NoiseError("bad_length")
    try:
        shared = crypto_scalarmult(private, public)
    except CryptoError:
        raise NoiseError("weak_key") from None
    if hmac.compare_digest(shared, _ZERO_DH):
        raise NoiseError("weak_key")
    return shared


_IPAD = bytes(byte ^ 0x36 for byte in range(256))  # HMAC's pads, as translation tables
_OPAD = bytes(byte ^ 0x5C for byte in range(256))
_BLOCK = 64  # SHA-256's block size
_KEY_FILL = bytes(_BLOCK - HASHLEN)  # a 32-byte key's zeros to the block


def _hkdf(chaining_key: bytes, input_key_material: bytes, outputs: int) -> tuple[bytes, ...]:
    """HKDF of section 4.3, with HMAC-SHA256.

    HMAC is written out over ``hashlib.sha256``: about twice as fast as
    ``hmac.digest`` for these short inputs (OpenSSL 3 looks the MAC up on
    every call), and the handshake makes three of these calls. The keys are
    the chaining key and HMAC outputs, 32 bytes each.
    """
    sha256 = hashlib.sha256
    block = chaining_key + _KEY_FILL
    temp_key = sha256(block.translate(_OPAD) + sha256(block.translate(_IPAD) + input_key_material).digest()).digest()
    block = temp_key + _KEY_FILL
    inner, outer = block.translate(_IPAD), block.translate(_OPAD)
    output1 = sha256(outer + sha256(inner + b"\x01").digest()).digest()
    output2 = sha256(outer + sha256(inner + output1 + b"\x02").digest()).digest()
    if outputs == 2:
        return output1, output2
    return output1, output2, sha256(outer + sha256(inner + output2 + b"\x03").digest()).digest()


# -- CipherState ---------------------------------------------------------------


def _no_key(nonce: bytes, data: bytes, ad: bytes | None) -> bytes:
    raise NoiseError("out_of_order")  # a transport cipher state used before it has a key


class CipherState:
    """A key and a nonce counter (section 5.1), ChaCha20-Poly1305.

    :meth:`encrypt` and :meth:`decrypt` are the transport hot path (empty
    associated data); :meth:`encrypt_with_ad` and :meth:`decrypt_with_ad`
    are the spec's functions. Without a key (only possible early in a
    handshake) both return their input unchanged, as the spec says.
    """

    __slots__ = ("_encrypt", "_decrypt", "_has_key", "n")

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            self.n = 0
            self._has_key = False
            self._encrypt = self._decrypt = _no_key
        else:
            self.initialize_key(key)

    def initialize_key(self, key: bytes) -> None:
        """Set a new key and reset the nonce to zero."""
        key = _bytes(key, "key")
        if len(key) != KEYLEN:
            raise NoiseError("bad_length")
        aead = ChaCha20Poly1305(key)
        self._encrypt = aead.encrypt
        self._decrypt = aead.decrypt
        self._has_key = True
        self.n = 0

    def has_key(self) -> bool:
        return self._has_key

    def set_nonce(self, nonce: int) -> None:
        if not 0 <= nonce <= MAX_NONCE:
            raise ValueError("a nonce is a 64-bit unsigned integer")
        self.n = nonce

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt one transport payload (empty associated data)."""
        n = self.n
        if n >= MAX_NONCE:
            raise NoiseError("nonce_exhausted")
        if len(plaintext) > MAX_PAYLOAD:
            raise NoiseError("bad_length")
        ciphertext = self._encrypt(_NONCE(n), plaintext, None)
        self.n = n + 1
        return ciphertext

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Decrypt one transport message (empty associated data).

        The nonce moves only on success.
        """
        n = self.n
        if n >= MAX_NONCE:
            raise NoiseError("nonce_exhausted")
        if not TAGLEN <= len(ciphertext) <= MAX_MESSAGE:
            raise NoiseError("bad_length")
        try:
            plaintext = self._decrypt(_NONCE(n), ciphertext, None)
        except InvalidTag:
            raise NoiseError("decrypt_failed") from None
        self.n = n + 1
        return plaintext

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if not self._has_key:
            return plaintext
        n = self.n
        if n >= MAX_NONCE:
            raise NoiseError("nonce_exhausted")
        if len(plaintext) > MAX_PAYLOAD:
            raise NoiseError("bad_length")
        ciphertext = self._encrypt(_NONCE(n), plaintext, ad)
        self.n = n + 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if not self._has_key:
            return ciphertext
        n = self.n
        if n >= MAX_NONCE:
            raise NoiseError("nonce_exhausted")
        if not TAGLEN <= len(ciphertext) <= MAX_MESSAGE:
            raise NoiseError("bad_length")
        try:
            plaintext = self._decrypt(_NONCE(n), ciphertext, ad)
        except InvalidTag:
            raise NoiseError("decrypt_failed") from None
        self.n = n + 1
        return plaintext

    def __repr__(self) -> str:  # never show key material
        return f"<CipherState has_key={self._has_key} n={self.n}>"


# -- SymmetricState ------------------------------------------------------------


class SymmetricState:
    """The chaining key, the handshake hash and a cipher state (section 5.2)."""

    __slots__ = ("ck", "h", "cipher")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            h = hashlib.sha256(protocol_name).digest()
        self.h = h
        self.ck = h
        self.cipher = CipherState()

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, temp_k = _hkdf(self.ck, input_key_material, 2)
        self.cipher.initialize_key(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        self.ck, temp_h, temp_k = _hkdf(self.ck, input_key_material, 3)
        self.mix_hash(temp_h)
        self.cipher.initialize_key(temp_k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        temp_k1, temp_k2 = _hkdf(self.ck, b"", 2)
        return CipherState(temp_k1), CipherState(temp_k2)


# -- patterns ------------------------------------------------------------------

_DH_TOKENS = {
    # token: (initiator's local key, initiator's remote key,
    #         responder's local key, responder's remote key)
    "ee": ("e", "re", "e", "re"),
    "es": ("e", "rs", "s", "re"),
    "se": ("s", "re", "e", "rs"),
    "ss": ("s", "rs", "s", "rs"),
}


@dataclass(frozen=True, slots=True)
class HandshakePattern:
    """A handshake pattern with its modifiers applied.

    ``initiator_pre`` and ``responder_pre`` are the pre-message tokens;
    ``messages`` alternate from the initiator; ``overheads`` is how many
    bytes each message adds to its payload (keys and tags), so that a
    payload too long for :data:`MAX_MESSAGE` is refused before any state
    changes.
    """

    name: str
    initiator_pre: tuple[str, ...]
    responder_pre: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]
    psk_count: int
    overheads: tuple[int, ...]

    @property
    def protocol_name(self) -> bytes:
        return b"Noise_" + self.name.encode("ascii") + _SUITE


#: Base patterns: (initiator pre-message, responder pre-message, messages).
#: Only NK is used by the link; another one-way or interactive pattern is one
#: line here.
PATTERNS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, ...], ...]]] = {
    "NK": ((), ("s",), (("e", "es"), ("e", "ee"))),
}


def handshake_pattern(name: str) -> HandshakePattern:
    """The pattern called ``name``, e.g. ``"NK"`` or ``"NKpsk0"`` (section 9 modifiers)."""
    base, _, rest = name.partition("psk")
    if base not in PATTERNS:
        raise ValueError(f"unknown handshake pattern {name!r}")
    initiator_pre, responder_pre, messages = PATTERNS[base]
    tokens = [list(message) for message in messages]
    psk_count = 0
    if rest or name.endswith("psk"):
        for modifier in ("psk" + rest).split("+"):
            position = modifier.removeprefix("psk")
            if not modifier.startswith("psk") or not position.isdigit():
                raise ValueError(f"unknown modifier {modifier!r} in {name!r}")
            position = int(position)
            if position == 0:
                tokens[0].insert(0, "psk")
            elif position <= len(tokens):
                tokens[position - 1].append("psk")
            else:
                raise ValueError(f"{name!r}: no message {position}")
            psk_count += 1
    # With a psk, "e" also does MixKey, so a key is in place from the first "e" on.
    has_key = False
    overheads = []
    for message in tokens:
        overhead = 0
        for token in message:
            if token == "e":
                overhead += DHLEN
                has_key = has_key or psk_count > 0
            elif token == "s":
                overhead += DHLEN + (TAGLEN if has_key else 0)
            else:  # a DH or psk
                has_key = True
        overheads.append(overhead + (TAGLEN if has_key else 0))
    return HandshakePattern(
        name=name,
        initiator_pre=initiator_pre,
        responder_pre=responder_pre,
        messages=tuple(tuple(message) for message in tokens),
        psk_count=psk_count,
        overheads=tuple(overheads),
    )


# -- HandshakeState ------------------------------------------------------------


class HandshakeState:
    """One side of a handshake (section 5.3).

    Build it with :class:`NoiseNK`. Call :meth:`write_message` and
    :meth:`read_message` in turn; once :attr:`complete`, read
    :attr:`handshake_hash` and call :meth:`split` once.
    """

    def __init__(
        self,
        pattern: HandshakePattern,
        initiator: bool,
        prologue: bytes,
        *,
        s: bytes | None = None,
        e: bytes | None = None,
        rs: bytes | None = None,
        psks: tuple[bytes, ...] = (),
        s_public: bytes | None = None,
    ) -> None:
        self.pattern = pattern
        self.initiator = initiator
        prologue = _bytes(prologue, "prologue")
        if len(psks) != pattern.psk_count:
            raise ValueError(
                f"{pattern.name} takes {pattern.psk_count} pre-shared key(s), not {len(psks)}"
            )
        self._psks = [_bytes(psk, "psk") for psk in psks]
        if any(len(psk) != PSKLEN for psk in self._psks):
            raise NoiseError("bad_length")
        # Local private keys are "s" and "e", the peer's public keys "rs" and "re".
        self._keys: dict[str, bytes] = {}
        self._publics: dict[str, bytes] = {}
        for name, private in (("s", s), ("e", e)):
            if private is not None:
                self._keys[name] = _key(private, name)
                # A long-lived static key's public half may be given: it saves a
                # base-point multiplication on every handshake a relay answers.
                known = s_public if name == "s" else None
                self._publics[name] = _key(known, "s_public") if known is not None else public_key(private)
        if rs is not None:
            self._keys["rs"] = _key(rs, "rs")

        self._symmetric = SymmetricState(pattern.protocol_name)
        self._symmetric.mix_hash(prologue)
        pre_messages = ((pattern.initiator_pre, initiator), (pattern.responder_pre, not initiator))
        for pre, ours in pre_messages:
            for token in pre:
                if ours:
                    if token not in self._publics:
                        raise ValueError(f"{pattern.name} needs this side's {token!r} key")
                    self._symmetric.mix_hash(self._publics[token])
                else:
                    if "r" + token not in self._keys:
                        raise ValueError(f"{pattern.name} needs the peer's {token!r} public key")
                    self._symmetric.mix_hash(self._keys["r" + token])
        for message in pattern.messages[0 if initiator else 1 :: 2]:
            if "e" in message and "e" not in self._keys:
                raise ValueError("an ephemeral private key is needed")
            if "s" in message and "s" not in self._keys:
                raise ValueError(f"{pattern.name} needs this side's static key")

        self._index = 0  # the next message of the pattern
        self._failed = False
        self._split_done = False
        self._handshake_hash: bytes | None = None

    # -- state ----------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """True once every handshake message has been written or read."""
        return self._handshake_hash is not None

    @property
    def handshake_hash(self) -> bytes:
        """The channel binding, ``h`` after the last message; only once :attr:`complete`."""
        if self._handshake_hash is None:
            raise NoiseError("out_of_order")
        return self._handshake_hash

    @property
    def writing(self) -> bool:
        """True when the next handshake message is this side's to write."""
        return not self.complete and (self._index % 2 == 0) == self.initiator

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, if the pattern has one."""
        return self._keys.get("rs")

    def _check_turn(self, writing: bool) -> None:
        if self._failed or self.complete or self.writing != writing:
            raise NoiseError("out_of_order")

    def _dh(self, token: str) -> bytes:
        local, remote = _DH_TOKENS[token][0:2] if self.initiator else _DH_TOKENS[token][2:4]
        return _dh(self._keys[local], self._keys[remote])

    def _finish_message(self) -> None:
        self._index += 1
        if self._index == len(self.pattern.messages):
            self._handshake_hash = self._symmetric.h
            self._keys.pop("e", None)  # delete the ephemeral private key as soon as it is done with

    # -- messages ---------------------------------------------------------------

    def write_message(self, payload: bytes = b"") -> bytes:
        """The next handshake message, carrying ``payload`` (encrypted once a key is set)."""
        self._check_turn(writing=True)
        payload = _bytes(payload, "payload")
        if len(payload) > MAX_MESSAGE - self.pattern.overheads[self._index]:
            raise NoiseError("bad_length")  # refused before anything changed
        try:
            return self._write(payload)
        except BaseException:
            self._failed = True
            raise

    def _write(self, payload: bytes) -> bytes:
        symmetric = self._symmetric
        psk_mode = self.pattern.psk_count > 0
        parts = []
        for token in self.pattern.messages[self._index]:
            if token == "e":
                e_public = self._publics["e"]
                parts.append(e_public)
                symmetric.mix_hash(e_public)
                if psk_mode:
                    symmetric.mix_key(e_public)
            elif token == "s":
                parts.append(symmetric.encrypt_and_hash(self._publics["s"]))
            elif token == "psk":
                symmetric.mix_key_and_hash(self._psks.pop(0))
            else:
                symmetric.mix_key(self._dh(token))
        parts.append(symmetric.encrypt_and_hash(payload))
        self._finish_message()
        return b"".join(parts)

    def read_message(self, message: bytes) -> bytes:
        """Process the peer's next handshake message; return its payload."""
        self._check_turn(writing=False)
        message = _bytes(message, "message")
        try:
            return self._read(message)
        except BaseException:
            self._failed = True
            raise

    def _read(self, message: bytes) -> bytes:
        if len(message) > MAX_MESSAGE:
            raise NoiseError("bad_length")
        if len(message) < self.pattern.overheads[self._index]:
            raise NoiseError("bad_length")
        symmetric = self._symmetric
        psk_mode = self.pattern.psk_count > 0
        offset = 0
        for token in self.pattern.messages[self._index]:
            if token == "e":
                re = message[offset : offset + DHLEN]
                offset += DHLEN
                self._keys["re"] = re
                symmetric.mix_hash(re)
                if psk_mode:
                    symmetric.mix_key(re)
            elif token == "s":
                size = DHLEN + (TAGLEN if symmetric.cipher.has_key() else 0)
                self._keys["rs"] = symmetric.decrypt_and_hash(message[offset : offset + size])
                offset += size
            elif token == "psk":
                symmetric.mix_key_and_hash(self._psks.pop(0))
            else:
                symmetric.mix_key(self._dh(token))
        payload = symmetric.decrypt_and_hash(message[offset:])
        self._finish_message()
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) for this side, once, after the last message.

        The initiator sends with the first key of Split() and the responder
        with the second. The handshake's own secrets are dropped.
        """
        if self._failed or not self.complete or self._split_done:
            raise NoiseError("out_of_order")
        self._split_done = True
        c1, c2 = self._symmetric.split()
        self._symmetric.ck = b""
        self._symmetric.cipher = CipherState()
        self._keys.pop("s", None)
        self._psks.clear()
        return (c1, c2) if self.initiator else (c2, c1)


# -- the relay's responder, straight-line -------------------------------------


class NKResponder:
    """``Noise_NK_25519_ChaChaPoly_SHA256``'s responder as one function, for a relay's many handshakes.

    What :meth:`NoiseNK.responder` followed by ``read_message``,
    ``write_message`` and ``split`` does, written out for NK with no
    pattern interpreter: the handshake hash after the prologue and the
    static key is computed once per static key (:func:`nk_responder`
    keeps the object), and each handshake is :meth:`respond`. The same
    errors, in the same order, for the same inputs; the unit tests check it
    against :class:`HandshakeState` and the published vectors.
    """

    __slots__ = ("_s", "_h", "_ck")

    def __init__(self, static_private: bytes, prologue: bytes, static_public: bytes | None = None) -> None:
        static_private = _key(static_private, "static key")
        symmetric = SymmetricState(NoiseNK.protocol_name)
        symmetric.mix_hash(_bytes(prologue, "prologue"))
        symmetric.mix_hash(public_key(static_private) if static_public is None else _key(static_public, "s_public"))
        self._s = static_private
        self._h = symmetric.h
        self._ck = symmetric.ck

    def respond(self, message: bytes, ephemeral_private: bytes,
                payload: bytes = b"") -> tuple[bytes, bytes, CipherState, CipherState, bytes]:
        """Message 1 in; ``(message 2, message 1's payload, send, receive, handshake hash)`` out.

        ``ephemeral_private`` is this handshake's key (drawn by the caller).
        Raises :class:`NoiseError` as :class:`HandshakeState` would.
        """
        message = _bytes(message, "message")
        ephemeral_private = _key(ephemeral_private, "ephemeral key")
        payload = _bytes(payload, "payload")
        size = len(message)
        if size > MAX_MESSAGE or size < DHLEN + TAGLEN:
            raise NoiseError("bad_length")
        if len(payload) > MAX_MESSAGE - DHLEN - TAGLEN:
            raise NoiseError("bad_length")
        sha256 = hashlib.sha256
        # -> e, es
        re = message[:DHLEN]
        h = sha256(self._h + re).digest()
        ck, key = _hkdf(self._ck, _dh(self._s, re), 2)
        ciphertext = message[DHLEN:]
        try:
            their_payload = ChaCha20Poly1305(key).decrypt(_NONCE_ZERO, ciphertext, h)
        except InvalidTag:
            raise NoiseError("decrypt_failed") from None
        h = sha256(h + ciphertext).digest()
        # <- e, ee
        e_public = crypto_scalarmult_base(ephemeral_private)
        h = sha256(h + e_public).digest()
        ck, key = _hkdf(ck, _dh(ephemeral_private, re), 2)
        ciphertext = ChaCha20Poly1305(key).encrypt(_NONCE_ZERO, payload, h)
        h = sha256(h + ciphertext).digest()
        # Split(): the responder sends with the second key
        receive_key, send_key = _hkdf(ck, b"", 2)
        return e_public + ciphertext, their_payload, CipherState(send_key), CipherState(receive_key), h


_NONCE_ZERO = _NONCE(0)
_RESPONDERS: dict[tuple[bytes, bytes, bytes | None], NKResponder] = {}


def nk_responder(static_private: bytes, prologue: bytes, static_public: bytes | None = None) -> NKResponder:
    """The :class:`NKResponder` for a static key and prologue, made once (a node has one or two)."""
    index = (static_private, prologue, static_public)
    responder = _RESPONDERS.get(index)
    if responder is None:
        if len(_RESPONDERS) >= 16:
            _RESPONDERS.clear()
        responder = _RESPONDERS[index] = NKResponder(static_private, prologue, static_public)
    return responder


# -- factories -----------------------------------------------------------------


def _ephemeral(ephemeral_private: bytes | None, rng: Callable[[int], bytes]) -> bytes:
    if ephemeral_private is None:
        ephemeral_private = rng(DHLEN)
    return _key(ephemeral_private, "ephemeral key")


class NoiseNK:
    """``Noise_NK_25519_ChaChaPoly_SHA256``: the link's handshake.

    The ephemeral key is drawn here, once, from ``rng`` unless one is given
    (the test vectors give one); the handshake state itself never draws.
    """

    pattern = handshake_pattern("NK")
    protocol_name = pattern.protocol_name

    @classmethod
    def initiator(
        cls,
        responder_static_public: bytes,
        prologue: bytes,
        ephemeral_private: bytes | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        *,
        psk: bytes | None = None,
    ) -> HandshakeState:
        return HandshakeState(
            cls.pattern,
            True,
            prologue,
            e=_ephemeral(ephemeral_private, rng),
            rs=responder_static_public,
            psks=cls._psks(psk),
        )

    @classmethod
    def responder(
        cls,
        static_private: bytes,
        prologue: bytes,
        ephemeral_private: bytes | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        *,
        psk: bytes | None = None,
        static_public: bytes | None = None,
    ) -> HandshakeState:
        return HandshakeState(
            cls.pattern,
            False,
            prologue,
            s=static_private,
            e=_ephemeral(ephemeral_private, rng),
            psks=cls._psks(psk),
            s_public=static_public,
        )

    @classmethod
    def _psks(cls, psk: bytes | None) -> tuple[bytes, ...]:
        if (psk is None) != (cls.pattern.psk_count == 0):
            raise ValueError(f"{cls.pattern.name} takes {cls.pattern.psk_count} pre-shared key(s)")
        return () if psk is None else (psk,) * cls.pattern.psk_count


class NoiseNKpsk0(NoiseNK):
    """``Noise_NKpsk0_25519_ChaChaPoly_SHA256``: NK, a pre-shared key mixed in first.

    The factories require ``psk=``.
    """

    pattern = handshake_pattern("NKpsk0")
    protocol_name = pattern.protocol_name


class NoiseNKpsk2(NoiseNK):
    """``Noise_NKpsk2_25519_ChaChaPoly_SHA256``: NK, a pre-shared key mixed in last.

    The factories require ``psk=``.
    """

    pattern = handshake_pattern("NKpsk2")
    protocol_name = pattern.protocol_name


# -- framing -------------------------------------------------------------------


def frame(message: bytes) -> bytes:
    """One Noise message behind its 2-byte big-endian length."""
    size = len(message)
    if not 0 < size <= MAX_MESSAGE:
        raise NoiseError("bad_length")
    return _LENGTH.pack(size) + message


class LengthPrefixedReader:
    """Length-prefixed records in, Noise messages out, sans-IO.

    ``receive_data`` takes whatever the transport read; ``next_message``
    returns the next whole record's body, or None until one has arrived. A
    record of length zero or above ``max_message``, or more than
    ``max_buffer`` bytes held unconsumed, raises ``NoiseError("bad_length")``.
    Consumed bytes are skipped by an offset and dropped in bulk, so many small
    records cost linear time.
    """

    __slots__ = ("_buffer", "_offset", "max_message", "max_buffer")

    #: Drop consumed bytes once this many have piled up and they are at
    #: least half the buffer.
    COMPACT_AFTER = 65536

    def __init__(self, max_message: int = MAX_MESSAGE, max_buffer: int = MAX_BUFFER) -> None:
        if not 0 < max_message <= MAX_MESSAGE:
            raise ValueError("max_message must be within 1..MAX_MESSAGE")
        if max_buffer < FRAME_HEADER + max_message:
            raise ValueError("max_buffer must hold at least one largest record")
        self._buffer = bytearray()
        self._offset = 0
        self.max_message = max_message
        self.max_buffer = max_buffer

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned (for back-pressure)."""
        return len(self._buffer) - self._offset

    def receive_data(self, data: bytes) -> None:
        if self.buffered + len(data) > self.max_buffer:
            raise NoiseError("bad_length")
        self._buffer += data

    def whole(self, data: bytes) -> bytes | None:
        """``data``'s record if this reader holds nothing and ``data`` is exactly one valid record, else None.

        The same as ``receive_data(data)`` then ``next_message()``, without
        the copy into the buffer; on None, call those.
        """
        if self._buffer or len(data) < FRAME_HEADER:
            return None
        size = len(data) - FRAME_HEADER
        if size == 0 or size > self.max_message or (data[0] << 8 | data[1]) != size:
            return None
        return data[FRAME_HEADER:]

    def next_message(self) -> bytes | None:
        buffer = self._buffer
        start = self._offset + FRAME_HEADER
        if len(buffer) < start:
            return None
        (size,) = _LENGTH.unpack_from(buffer, self._offset)
        if size == 0 or size > self.max_message:
            raise NoiseError("bad_length")
        end = start + size
        if len(buffer) < end:
            return None
        with memoryview(buffer) as view:
            message = view[start:end].tobytes()
        if end == len(buffer):
            buffer.clear()
            self._offset = 0
        elif end >= self.COMPACT_AFTER and end * 2 >= len(buffer):
            del buffer[:end]
            self._offset = 0
        else:
            self._offset = end
        return message
