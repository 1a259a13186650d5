"""Onion packets, sans-IO: a Sphinx-style format of one fixed size at every hop.

A packet is ``alpha (32) ‖ beta (245) ‖ gamma (16) ‖ payload (1755)``,
:data:`PACKET_SIZE` = 2048 bytes whatever the path (1 to :data:`MAX_HOPS`
hops) and wherever in the path it is:

- ``alpha`` is an X25519 public value: the sender's ephemeral key, blinded
  once per hop (``alpha' = X25519(blinding, alpha)``), so a relay computes
  its shared secret ``s`` with one X25519 and the next ``alpha`` with
  another, and two hops of one packet see unrelated ``alpha`` values;
- everything else a hop needs comes from one ChaCha20 keystream under
  ``K = HMAC-SHA256("zentalk-onion-v1", alpha ‖ s)`` (HKDF-Extract): its
  MAC keys, blinding scalar and replay tag, then the header layer, then the
  payload layer;
- ``beta`` is the routing information, one 49-byte block per hop
  (``instruction ‖ target ‖ next gamma``) in a ChaCha20 layer per hop; each
  hop removes its block, shifts the rest left and appends 49 bytes of its
  own keystream, which the sender predicted (the Sphinx filler), so the
  header is the same size and looks the same at every hop;
- ``gamma`` is HMAC-SHA256/128 over ``alpha ‖ beta`` under the hop's MAC key:
  a header changed anywhere is refused at the next hop (``bad_mac``);
- the payload is encrypted once per hop with ChaCha20, and carries an
  end-to-end HMAC keyed from the last hop's keystream: a payload changed
  at any hop is refused at the last hop (``bad_payload``).

The construction, its key derivation labels and a worked example are in
``docs/onion.md``; the unit tests check the example byte for byte.

Relays call :func:`process_packet` with their :class:`OnionKeyring` (the
current onion key and, for an overlap period after a rotation, the previous
one) and a :class:`ReplayCache`; clients call :func:`build_packet`. Nothing
here reads the clock or global randomness: ``now`` and ``rng`` are passed in.
Any bytes given to :func:`process_packet` either yield a result or raise
:class:`OnionError` with one fixed short reason, nothing else.

X25519 is libsodium's (PyNaCl; it clamps scalars, and refuses results that
are all zero); ChaCha20 is OpenSSL's (``cryptography``); HMAC-SHA256 is
``hashlib``'s. PyNaCl passes buffers to libsodium without checking their
lengths, so every length is checked here first. A forwarding hop costs two
X25519, one HMAC over 277 bytes and one ChaCha20 context; the X25519 are
about 85 % of it (``benchmarks/onion_processing.py``).
"""

from __future__ import annotations

import hmac
import os
import struct
from array import array
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError

__all__ = [
    "BLOCK_SIZE",
    "Delivered",
    "Dropped",
    "Forwarded",
    "HEADER_SIZE",
    "Hop",
    "HopKeys",
    "Instruction",
    "KDF_SALT",
    "KEYS_SIZE",
    "KEY_SIZE",
    "MAC_SIZE",
    "MAX_HOPS",
    "MAX_PAYLOAD",
    "OnionError",
    "OnionKey",
    "OnionKeyring",
    "PACKET_SIZE",
    "PAYLOAD_OVERHEAD",
    "PAYLOAD_SIZE",
    "REPLAY_TAG_SIZE",
    "ROUTING_SIZE",
    "ReplayCache",
    "STREAM_SIZE",
    "build_packet",
    "derive_hop_keys",
    "process_packet",
]

# -- sizes ---------------------------------------------------------------------

#: X25519 keys and shared secrets, node ids, delivery addresses.
KEY_SIZE = 32
#: Header and payload MACs: HMAC-SHA256 truncated to 128 bits.
MAC_SIZE = 16
#: The most hops a packet can name; a path has 1 to MAX_HOPS hops.
MAX_HOPS = 5
#: One hop's routing block: instruction (1) ‖ target (32) ‖ next hop's gamma (16).
BLOCK_SIZE = 1 + KEY_SIZE + MAC_SIZE
#: ``beta``: room for MAX_HOPS blocks, whatever the path's length.
ROUTING_SIZE = MAX_HOPS * BLOCK_SIZE
#: ``alpha ‖ beta ‖ gamma``.
HEADER_SIZE = KEY_SIZE + ROUTING_SIZE + MAC_SIZE
#: Every packet, at every hop.
PACKET_SIZE = 2048
#: The encrypted payload area: ``payload MAC (16) ‖ length u16 ‖ data ‖ zeros``.
PAYLOAD_SIZE = PACKET_SIZE - HEADER_SIZE
#: The payload MAC and the length field.
PAYLOAD_OVERHEAD = MAC_SIZE + 2
#: The most bytes a packet delivers.
MAX_PAYLOAD = PAYLOAD_SIZE - PAYLOAD_OVERHEAD
#: Replay tags remembered per onion-key epoch.
REPLAY_TAG_SIZE = 8

assert (HEADER_SIZE, PAYLOAD_SIZE, MAX_PAYLOAD) == (293, 1755, 1737)

# Offsets in a packet.
_ALPHA_END = KEY_SIZE
_BETA_END = KEY_SIZE + ROUTING_SIZE  # alpha ‖ beta: what gamma covers
_TARGET_END = 1 + KEY_SIZE  # in a decrypted block
_LENGTH = struct.Struct(">H")
_ZERO_KEY = bytes(KEY_SIZE)
_ZERO_BLOCK = bytes(BLOCK_SIZE)
_ZERO_NONCE = bytes(16)  # ChaCha20: 32-bit block counter 0 ‖ 96-bit nonce 0 (each key is used once)

#: HKDF-Extract salt: the format's name and version. A packet of another
#: version derives other keys and fails the header MAC.
KDF_SALT = b"zentalk-onion-v1"

# A hop's keystream S = ChaCha20(K, nonce 0, counter 0), K = HMAC-SHA256(KDF_SALT, alpha ‖ s):
_HEADER_MAC_KEY = slice(0, 32)  # S[0:32]    header MAC key
_PAYLOAD_MAC_KEY = slice(32, 64)  # S[32:64]   payload MAC key (used by the last hop)
_BLINDING = slice(64, 96)  # S[64:96]   blinding scalar (clamped by X25519)
_REPLAY_TAG = slice(96, 96 + REPLAY_TAG_SIZE)  # S[96:104]  replay tag; S[104:128] unused
#: The keys at the head of a hop's keystream.
KEYS_SIZE = 128
#: A hop's whole keystream: the keys, then S[128:422], which encrypts
#: ``beta ‖ 0^BLOCK_SIZE``, then S[422:2177], which encrypts the payload.
STREAM_SIZE = KEYS_SIZE + ROUTING_SIZE + BLOCK_SIZE + PAYLOAD_SIZE
_ZERO_KEYS = bytes(KEYS_SIZE)


class OnionError(Exception):
    """A packet was refused; ``reason`` is one short fixed word.

    ``bad_size``: not :data:`PACKET_SIZE` bytes; ``bad_mac``: the header MAC
    does not verify under any onion key in its validity period (tampering, a
    packet for another relay, or for a key that has retired); ``replay``: this
    hop has processed the packet before in this key epoch (or the epoch's
    replay cache is full); ``bad_payload``: at the last hop, the payload was
    changed on the way or does not decode; ``bad_instruction``: an
    authenticated header with an unknown instruction or a malformed block;
    ``weak_key``: an ``alpha`` (or a relay's onion key, for the sender) of
    small order, whose Diffie-Hellman result is all zeros.
    """

    REASONS = frozenset(
        {"bad_size", "bad_mac", "replay", "bad_payload", "bad_instruction", "weak_key"}
    )

    def __init__(self, reason: str) -> None:
        assert reason in self.REASONS, reason
        super().__init__(reason)
        self.reason = reason


class Instruction(IntEnum):
    """What a hop does with a packet; the first byte of its routing block."""

    FORWARD = 1  # target: the next relay's node id
    DELIVER = 2  # target: the recipient's address, at this relay
    DROP = 3  # target: 32 zero bytes; cover traffic ends here, silently


@dataclass(frozen=True, slots=True)
class Hop:
    """One hop of a path, as the sender names it."""

    onion_public: bytes  # the relay's current X25519 onion key, from its DHT record
    instruction: Instruction
    target: bytes  # next relay's node id (FORWARD), address (DELIVER), zeros (DROP)


@dataclass(frozen=True, slots=True)
class Forwarded:
    """Send ``packet`` to the relay ``next_node_id``."""

    next_node_id: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class Delivered:
    """Deliver ``payload`` to the address ``address`` (a client of this relay)."""

    address: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class Dropped:
    """A cover packet's last hop: nothing to do."""


# -- primitives ------------------------------------------------------------------


def _dh(private: bytes, public: bytes) -> bytes:
    # Lengths first: PyNaCl hands its arguments to libsodium unchecked (callers
    # slice alpha and check keys on entry, so this is a guard, not a path).
    # libsodium refuses an all-zero result (a small-order point) with a
    # CryptoError; check the result too, so the rule does not rest on that.
    if len(private) != KEY_SIZE or len(public) != KEY_SIZE:
        raise ValueError("X25519 takes 32-byte keys")
    try:
        shared = crypto_scalarmult(private, public)
    except CryptoError:
        raise OnionError("weak_key") from None
    if hmac.compare_digest(shared, _ZERO_KEY):
        raise OnionError("weak_key")
    return shared


def _hop_key(alpha: bytes, shared: bytes) -> bytes:
    """K = HKDF-Extract(salt=KDF_SALT, ikm=alpha ‖ s) = HMAC-SHA256(KDF_SALT, alpha ‖ s)."""
    return hmac.digest(KDF_SALT, alpha + shared, "sha256")


def _keystream(key: bytes):
    """A ChaCha20 context (nonce 0, counter 0): ``update(data)`` XORs the next keystream bytes."""
    return Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), None).encryptor()


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")[:MAC_SIZE]


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


@dataclass(frozen=True, slots=True)
class HopKeys:
    """Everything one hop derives from ``alpha`` and its shared secret (docs/onion.md, "Keys").

    All of it is one ChaCha20 keystream ``S`` under ``K = HMAC-SHA256(KDF_SALT,
    alpha ‖ s)``: 128 bytes of keys, then the header stream, then the payload
    stream.
    """

    key: bytes = field(repr=False)  # K
    header_mac: bytes = field(repr=False)  # S[0:32]
    payload_mac: bytes = field(repr=False)  # S[32:64]
    blinding: bytes = field(repr=False)  # S[64:96]
    replay_tag: bytes = field(repr=False)  # S[96:104]
    header_stream: bytes = field(repr=False)  # S[128:422], over beta ‖ 0^49
    payload_stream: bytes = field(repr=False)  # S[422:2177], over the payload


def derive_hop_keys(shared_secret: bytes, alpha: bytes) -> HopKeys:
    """A hop's keys and keystreams, all at once (the sender's view).

    A relay derives the same, but stops after the first 128 bytes on a bad MAC.
    """
    if len(shared_secret) != KEY_SIZE or len(alpha) != KEY_SIZE:
        raise ValueError("a shared secret and an alpha are 32 bytes each")
    key = _hop_key(alpha, shared_secret)
    stream = _keystream(key).update(bytes(STREAM_SIZE))
    header_end = KEYS_SIZE + ROUTING_SIZE + BLOCK_SIZE
    return HopKeys(
        key=key,
        header_mac=stream[_HEADER_MAC_KEY],
        payload_mac=stream[_PAYLOAD_MAC_KEY],
        blinding=stream[_BLINDING],
        replay_tag=stream[_REPLAY_TAG],
        header_stream=stream[KEYS_SIZE:header_end],
        payload_stream=stream[header_end:],
    )


# -- keys and replay -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OnionKey:
    """One onion key of a relay: its epoch and when it is accepted.

    ``valid_from`` is when it became current (for the record; it is not
    checked). ``valid_until`` is None for the current key; for the previous
    key it is the end of the overlap period, from which packets for it are
    refused.
    """

    epoch: int
    public: bytes
    valid_from: float
    valid_until: float | None
    private: bytes = field(repr=False)  # never shown


def _private_key(private: bytes) -> bytes:
    if not isinstance(private, (bytes, bytearray, memoryview)) or len(private) != KEY_SIZE:
        raise ValueError("an onion private key is 32 bytes")
    return bytes(private)


class OnionKeyring:
    """A relay's onion keys, sans-IO: the current one and, during an overlap, the previous.

    :meth:`rotate` makes a new key current (epoch + 1) and keeps the old one,
    valid for ``overlap`` seconds more, for packets built before the
    senders saw the new key; :meth:`retire_expired` forgets it afterwards.
    Packets name no key: :func:`process_packet` tries the current key, then the
    previous one while it is valid. Both methods return the epochs they
    forgot, for the caller's :meth:`ReplayCache.forget_epoch`
    (:func:`process_packet` also forgets them in the cache it is given).
    """

    __slots__ = ("_current", "_previous", "overlap")

    def __init__(self, current_private: bytes, epoch: int, now: float, overlap: float) -> None:
        if overlap < 0:
            raise ValueError("overlap is a duration in seconds, not negative")
        if epoch < 0:
            raise ValueError("epochs count up from 0")
        self.overlap = overlap
        self._current = self._key(current_private, epoch, now)
        self._previous: OnionKey | None = None

    @staticmethod
    def _key(private: bytes, epoch: int, now: float) -> OnionKey:
        private = _private_key(private)
        return OnionKey(epoch, crypto_scalarmult_base(private), now, None, private)

    @property
    def public(self) -> bytes:
        """The current onion public key: the one to publish."""
        return self._current.public

    @property
    def epoch(self) -> int:
        return self._current.epoch

    @property
    def current(self) -> OnionKey:
        return self._current

    @property
    def previous(self) -> OnionKey | None:
        return self._previous

    @property
    def epochs(self) -> tuple[int, ...]:
        """The epochs of the keys held, current first."""
        if self._previous is None:
            return (self._current.epoch,)
        return (self._current.epoch, self._previous.epoch)

    def rotate(self, new_private: bytes, now: float) -> tuple[int, ...]:
        """Make ``new_private`` current; the old key stays valid until ``now + overlap``.

        A previous key still held from an earlier rotation is forgotten; its
        epoch is returned.
        """
        new = self._key(new_private, self._current.epoch + 1, now)
        if new.public == self._current.public:
            raise ValueError("the new onion key is the current one")
        forgotten = () if self._previous is None else (self._previous.epoch,)
        old = self._current
        self._previous = OnionKey(
            old.epoch, old.public, old.valid_from, now + self.overlap, old.private
        )
        self._current = new
        return forgotten

    def retire_expired(self, now: float) -> tuple[int, ...]:
        """Forget the previous key once its overlap has ended; the epochs forgotten."""
        previous = self._previous
        if previous is not None and now >= previous.valid_until:
            self._previous = None
            return (previous.epoch,)
        return ()

    def _candidates(self, now: float) -> tuple[OnionKey, ...]:
        previous = self._previous
        if previous is not None and now < previous.valid_until:
            return (self._current, previous)
        return (self._current,)

    def __repr__(self) -> str:
        return f"<OnionKeyring epochs={self.epochs}>"


class ReplayCache:
    """Replay tags seen, per onion-key epoch, sans-IO, in bounded memory.

    Each epoch gets, on its first tag, a fixed open-addressing table of
    64-bit tags (linear probing), never more than half full: 8 bytes times
    the smallest power of two >= 2 * ``max_entries_per_epoch``, 16 MiB for
    the default million, whatever the load.
    :meth:`forget_epoch` frees it when the epoch's key retires.

    A full epoch fails closed: :meth:`check_and_add` answers False (as for a
    replay) rather than forget a tag, because a relay that forwards a packet
    twice tells an observer where it went. Rotate the onion key before
    :meth:`size` reaches :attr:`max_entries_per_epoch`.
    """

    __slots__ = ("max_entries_per_epoch", "_mask", "_tables", "_sizes")

    def __init__(self, max_entries_per_epoch: int = 1_000_000) -> None:
        if max_entries_per_epoch < 1:
            raise ValueError("max_entries_per_epoch must be positive")
        self.max_entries_per_epoch = max_entries_per_epoch
        slots = 1 << (2 * max_entries_per_epoch - 1).bit_length()  # a power of two >= 2 * max
        self._mask = slots - 1
        self._tables: dict[int, array] = {}
        self._sizes: dict[int, int] = {}

    def check_and_add(self, epoch: int, tag: bytes) -> bool:
        """True the first time ``tag`` is seen in ``epoch`` (and remember it); False after."""
        if len(tag) != REPLAY_TAG_SIZE:
            raise ValueError(f"a replay tag is {REPLAY_TAG_SIZE} bytes")
        value = int.from_bytes(tag, "big") or 1  # 0 marks an empty slot
        table = self._tables.get(epoch)
        if table is None:
            table = self._tables[epoch] = array("Q", [0]) * (self._mask + 1)
            self._sizes[epoch] = 0
        mask = self._mask
        slot = value & mask
        while True:
            held = table[slot]
            if held == 0:
                break
            if held == value:
                return False
            slot = (slot + 1) & mask
        if self._sizes[epoch] >= self.max_entries_per_epoch:
            return False  # full: fail closed
        table[slot] = value
        self._sizes[epoch] += 1
        return True

    def forget_epoch(self, epoch: int) -> None:
        self._tables.pop(epoch, None)
        self._sizes.pop(epoch, None)

    @property
    def epochs(self) -> tuple[int, ...]:
        """The epochs with remembered tags."""
        return tuple(self._tables)

    def size(self, epoch: int) -> int:
        """Tags remembered for ``epoch``."""
        return self._sizes.get(epoch, 0)

    def export(self, epoch: int) -> bytes:
        """The tags of ``epoch``, 8 bytes each, to be restored after a restart."""
        table = self._tables.get(epoch)
        if table is None:
            return b""
        return b"".join(value.to_bytes(REPLAY_TAG_SIZE, "big") for value in table if value)

    def restore(self, epoch: int, exported: bytes) -> None:
        """Remember again the tags :meth:`export` gave."""
        if len(exported) % REPLAY_TAG_SIZE:
            raise ValueError("exported tags are 8 bytes each")
        for offset in range(0, len(exported), REPLAY_TAG_SIZE):
            self.check_and_add(epoch, exported[offset : offset + REPLAY_TAG_SIZE])

    def __repr__(self) -> str:
        return f"<ReplayCache sizes={self._sizes}>"


# -- processing --------------------------------------------------------------------


def process_packet(
    packet: bytes, keyring: OnionKeyring, replay: ReplayCache, now: float
) -> Forwarded | Delivered | Dropped:
    """One hop's work on one packet.

    Order: size; for each onion key in its validity period (current first),
    shared secret, then the header MAC; the replay tag; the routing block;
    at a FORWARD hop the next ``alpha`` and the re-encrypted payload; at the
    last hop the payload MAC. Raises :class:`OnionError` and nothing else
    for any bytes.
    """
    if not isinstance(packet, bytes):
        if not isinstance(packet, (bytearray, memoryview)):
            raise TypeError(f"packet must be bytes, not {type(packet).__name__}")
        packet = bytes(packet)
    if len(packet) != PACKET_SIZE:
        raise OnionError("bad_size")

    alpha = packet[:_ALPHA_END]
    authenticated = packet[:_BETA_END]
    gamma = packet[_BETA_END:HEADER_SIZE]
    for key in keyring._candidates(now):
        stream = _keystream(_hop_key(alpha, _dh(key.private, alpha)))
        keys = stream.update(_ZERO_KEYS)
        if hmac.compare_digest(_mac(keys[_HEADER_MAC_KEY], authenticated), gamma):
            break
    else:
        raise OnionError("bad_mac")

    held = keyring.epochs
    for epoch in replay.epochs:
        if epoch not in held:
            replay.forget_epoch(epoch)
    if not replay.check_and_add(key.epoch, keys[_REPLAY_TAG]):
        raise OnionError("replay")

    routing = stream.update(packet[_ALPHA_END:_BETA_END] + _ZERO_BLOCK)
    instruction = routing[0]
    target = routing[1:_TARGET_END]
    if instruction == Instruction.FORWARD:
        next_alpha = _dh(keys[_BLINDING], alpha)
        payload = stream.update(packet[HEADER_SIZE:])
        next_gamma = routing[_TARGET_END:BLOCK_SIZE]
        return Forwarded(target, b"".join((next_alpha, routing[BLOCK_SIZE:], next_gamma, payload)))
    if instruction == Instruction.DELIVER:
        return Delivered(target, _open_payload(keys, stream.update(packet[HEADER_SIZE:])))
    if instruction == Instruction.DROP:
        if target != _ZERO_KEY:
            raise OnionError("bad_instruction")
        _open_payload(keys, stream.update(packet[HEADER_SIZE:]))
        return Dropped()
    raise OnionError("bad_instruction")


def _open_payload(keys: bytes, plain: bytes) -> bytes:
    if not hmac.compare_digest(_mac(keys[_PAYLOAD_MAC_KEY], plain[MAC_SIZE:]), plain[:MAC_SIZE]):
        raise OnionError("bad_payload")
    (length,) = _LENGTH.unpack_from(plain, MAC_SIZE)
    end = PAYLOAD_OVERHEAD + length
    if length > MAX_PAYLOAD or plain.count(0, end) != PAYLOAD_SIZE - end:
        raise OnionError("bad_payload")  # authentic, so the sender's own fault
    return plain[PAYLOAD_OVERHEAD:end]


# -- building ----------------------------------------------------------------------


def _check_hops(hops: list[Hop]) -> list[Hop]:
    if not 1 <= len(hops) <= MAX_HOPS:
        raise ValueError(f"a path has 1 to {MAX_HOPS} hops, not {len(hops)}")
    checked = []
    for index, hop in enumerate(hops):
        instruction = Instruction(hop.instruction)
        last = index == len(hops) - 1
        if last and instruction is Instruction.FORWARD:
            raise ValueError("the last hop delivers or drops")
        if not last and instruction is not Instruction.FORWARD:
            raise ValueError("every hop but the last forwards")
        for value, what in ((hop.onion_public, "onion_public"), (hop.target, "target")):
            if not isinstance(value, bytes) or len(value) != KEY_SIZE:
                raise ValueError(f"hop {index}: {what} must be {KEY_SIZE} bytes")
        if instruction is Instruction.DROP and hop.target != _ZERO_KEY:
            raise ValueError("a DROP hop's target is 32 zero bytes")
        checked.append(Hop(hop.onion_public, instruction, hop.target))
    return checked


def _draw(rng: Callable[[int], bytes], size: int) -> bytes:
    value = rng(size)
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"rng({size}) must return {size} bytes")
    return value


def build_packet(
    hops: list[Hop], payload: bytes, rng: Callable[[int], bytes] = os.urandom
) -> bytes:
    """A packet of :data:`PACKET_SIZE` bytes for ``hops[0]``, carrying ``payload``.

    Every hop but the last is FORWARD; the last is DELIVER or DROP. ``rng``
    is called twice: for the ephemeral key (32 bytes), then for the last
    hop's routing padding. Raises ValueError for a malformed path or a
    payload over :data:`MAX_PAYLOAD`, and ``OnionError("weak_key")`` for an
    onion key of small order.
    """
    hops = _check_hops(list(hops))
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError("payload must be bytes")
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a payload is at most {MAX_PAYLOAD} bytes, not {len(payload)}")
    count = len(hops)

    # Shared secrets: s_i = X25519(b_{i-1}, ... X25519(b_0, X25519(x, pk_i))),
    # which the hop computes as X25519(sk_i, alpha_i) with
    # alpha_{i+1} = X25519(b_i, alpha_i): clamped scalar multiplications commute.
    ephemeral = _draw(rng, KEY_SIZE)
    alphas = [crypto_scalarmult_base(ephemeral)]
    keys: list[HopKeys] = []
    for index, hop in enumerate(hops):
        shared = _dh(ephemeral, hop.onion_public)
        for earlier in keys:
            shared = _dh(earlier.blinding, shared)
        keys.append(derive_hop_keys(shared, alphas[index]))
        if index < count - 1:
            alphas.append(_dh(keys[index].blinding, alphas[index]))

    streams = [k.header_stream for k in keys]

    # Filler: the bytes that hops 0 .. count-2 will have appended by the time
    # the packet reaches the last hop, as that hop's beta ends with them.
    filler = b""
    for index in range(count - 1):
        start = ROUTING_SIZE - index * BLOCK_SIZE
        filler = _xor(filler + _ZERO_BLOCK, streams[index][start:])

    last = hops[-1]
    padding = _draw(rng, ROUTING_SIZE - count * BLOCK_SIZE)
    plain = bytes([last.instruction]) + last.target + bytes(MAC_SIZE) + padding
    beta = _xor(plain, streams[-1][: len(plain)]) + filler
    gamma = _mac(keys[-1].header_mac, alphas[-1] + beta)
    for index in range(count - 2, -1, -1):
        block = bytes([Instruction.FORWARD]) + hops[index].target + gamma
        beta = _xor(block + beta[: ROUTING_SIZE - BLOCK_SIZE], streams[index][:ROUTING_SIZE])
        gamma = _mac(keys[index].header_mac, alphas[index] + beta)

    body = (_LENGTH.pack(len(payload)) + payload).ljust(PAYLOAD_SIZE - MAC_SIZE, b"\x00")
    sealed = _mac(keys[-1].payload_mac, body) + body
    for k in keys:
        sealed = _xor(sealed, k.payload_stream)

    packet = alphas[0] + beta + gamma + sealed
    assert len(packet) == PACKET_SIZE
    return packet
