"""Onion packets: paths of 1..5 hops, one size everywhere, tampering, replay, key rotation,
hostile bytes, and the worked example of ``docs/onion.md`` byte for byte.

``python -m tests.unit.test_onion`` prints the worked example's section of the
document (``--write`` puts it there); a test fails when the two differ.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import hmac
import itertools
import re
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base

from zentalk_relay.relay import onion
from zentalk_relay.relay.onion import (
    BLOCK_SIZE,
    HEADER_SIZE,
    KEY_SIZE,
    MAC_SIZE,
    MAX_HOPS,
    MAX_PAYLOAD,
    PACKET_SIZE,
    PAYLOAD_SIZE,
    ROUTING_SIZE,
    Delivered,
    Dropped,
    Forwarded,
    Hop,
    Instruction,
    OnionError,
    OnionKeyring,
    ReplayCache,
    build_packet,
    derive_hop_keys,
    process_packet,
)

DOC = Path(__file__).parents[2] / "docs" / "onion.md"
NOW = 1_000.0
ADDRESS = bytes.fromhex("aa" * 32)
ZERO = bytes(32)
PATH_LENGTHS = range(1, MAX_HOPS + 1)

# X25519 points of small order (libsodium's list, and the same with the ignored top bit set):
# their Diffie-Hellman result is all zeros for every clamped scalar.
SMALL_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (2**255 - 19 - 1).to_bytes(32, "little"),
    (2**255 - 19).to_bytes(32, "little"),
    (2**255 - 19 + 1).to_bytes(32, "little"),
]
SMALL_ORDER += [point[:31] + bytes([point[31] | 0x80]) for point in SMALL_ORDER]


# -- helpers ----------------------------------------------------------------------


def seeded_rng(seed: bytes):
    """A deterministic rng: SHA-256(seed ‖ counter) blocks."""
    counter = itertools.count()
    buffer = bytearray()

    def rng(size: int) -> bytes:
        while len(buffer) < size:
            buffer.extend(hashlib.sha256(seed + next(counter).to_bytes(8, "big")).digest())
        out = bytes(buffer[:size])
        del buffer[:size]
        return out

    return rng


def counter_rng():
    """The worked example's rng: bytes 00, 01, 02, ... (mod 256) across calls."""
    counter = itertools.count()

    def rng(size: int) -> bytes:
        return bytes(next(counter) % 256 for _ in range(size))

    return rng


@dataclasses.dataclass
class Relay:
    private: bytes
    node_id: bytes
    keyring: OnionKeyring
    replay: ReplayCache

    def process(self, packet: bytes, now: float = NOW):
        return process_packet(packet, self.keyring, self.replay, now)


def make_relays(count: int, label: str = "relay", epoch: int = 0, overlap: float = 60.0):
    relays = []
    for index in range(count):
        private = hashlib.sha256(f"{label} {index} onion key".encode()).digest()
        node_id = hashlib.sha256(f"{label} {index} node id".encode()).digest()
        keyring = OnionKeyring(private, epoch, 0.0, overlap)
        relays.append(Relay(private, node_id, keyring, ReplayCache(1000)))
    return relays


def path_for(relays, final=Instruction.DELIVER, address=ADDRESS) -> list[Hop]:
    hops = [
        Hop(relay.keyring.public, Instruction.FORWARD, after.node_id)
        for relay, after in zip(relays, relays[1:])
    ]
    target = ZERO if final is Instruction.DROP else address
    return hops + [Hop(relays[-1].keyring.public, final, target)]


def walk(relays: list[Relay], packet: bytes, now: float = NOW):
    """Process ``packet`` along ``relays``; the packet each hop received, and the last result."""
    seen = []
    for index, relay in enumerate(relays):
        assert len(packet) == PACKET_SIZE
        seen.append(packet)
        result = relay.process(packet, now)
        if index < len(relays) - 1:
            assert result == Forwarded(relays[index + 1].node_id, result.packet)
            packet = result.packet
    return seen, result


def fresh(relay: Relay) -> Relay:
    """The same relay keys with an empty replay cache."""
    return Relay(relay.private, relay.node_id, relay.keyring, ReplayCache(1000))


def flip(packet: bytes, position: int, mask: int = 0x01) -> bytes:
    changed = bytearray(packet)
    changed[position] ^= mask
    return bytes(changed)


def reason(call, *args) -> str:
    with pytest.raises(OnionError) as caught:
        call(*args)
    return caught.value.reason


# -- an independent reading of docs/onion.md ----------------------------------------
# Written from the document, not from the module: it takes raw routing blocks and a
# raw payload body, so it can also build authentic packets that a sender must not.


def _chacha(key: bytes, size: int) -> bytes:
    return Cipher(algorithms.ChaCha20(key, bytes(16)), None).encryptor().update(bytes(size))


def _x(a: bytes, b: bytes) -> bytes:
    return bytes(p ^ q for p, q in zip(a, b, strict=True))


def reference_packet(publics, blocks, body, ephemeral, padding) -> bytes:
    """A packet as docs/onion.md describes it.

    ``blocks``: each hop's 33-byte ``instruction ‖ target``; ``body``: the 1739
    bytes after the payload MAC; ``padding``: the last hop's routing padding.
    """
    r, R = 49, 245
    alpha = crypto_scalarmult_base(ephemeral)
    alphas, secrets, streams, blindings = [], [], [], []
    for index, public in enumerate(publics):
        shared = crypto_scalarmult(ephemeral, public)
        for b in blindings:
            shared = crypto_scalarmult(b, shared)
        stream = _chacha(hmac.new(b"zentalk-onion-v1", alpha + shared, "sha256").digest(), 2177)
        alphas.append(alpha)
        secrets.append(shared)
        streams.append(stream)
        blindings.append(stream[64:96])
        alpha = crypto_scalarmult(stream[64:96], alpha)
    n = len(publics)
    filler = b""
    for i in range(n - 1):
        filler = _x(filler + bytes(r), streams[i][128 + R - i * r : 128 + R + r])
    plain = blocks[-1] + bytes(16) + padding
    beta = _x(plain, streams[-1][128 : 128 + len(plain)]) + filler
    gamma = hmac.new(streams[-1][0:32], alphas[-1] + beta, "sha256").digest()[:16]
    for i in range(n - 2, -1, -1):
        beta = _x(blocks[i] + gamma + beta[: R - r], streams[i][128 : 128 + R])
        gamma = hmac.new(streams[i][0:32], alphas[i] + beta, "sha256").digest()[:16]
    payload = hmac.new(streams[-1][32:64], body, "sha256").digest()[:16] + body
    for stream in streams:
        payload = _x(payload, stream[422:])
    return alphas[0] + beta + gamma + payload


def reference_body(data: bytes) -> bytes:
    return (len(data).to_bytes(2, "big") + data).ljust(1739, b"\x00")


def reference_for(hops: list[Hop], payload: bytes, rng) -> bytes:
    ephemeral = rng(32)
    padding = rng(245 - 49 * len(hops))
    blocks = [bytes([hop.instruction]) + hop.target for hop in hops]
    publics = [hop.onion_public for hop in hops]
    return reference_packet(publics, blocks, reference_body(payload), ephemeral, padding)


# -- sizes and shapes --------------------------------------------------------------


def test_sizes():
    assert (PACKET_SIZE, HEADER_SIZE, PAYLOAD_SIZE, MAX_PAYLOAD) == (2048, 293, 1755, 1737)
    assert HEADER_SIZE == KEY_SIZE + MAX_HOPS * BLOCK_SIZE + MAC_SIZE
    assert ROUTING_SIZE == MAX_HOPS * BLOCK_SIZE == 245
    assert onion.STREAM_SIZE == 128 + 245 + 49 + 1755


def test_api_shapes():
    assert [(i.name, i.value) for i in Instruction] == [("FORWARD", 1), ("DELIVER", 2), ("DROP", 3)]
    assert [f.name for f in dataclasses.fields(Hop)] == ["onion_public", "instruction", "target"]
    assert [f.name for f in dataclasses.fields(Forwarded)] == ["next_node_id", "packet"]
    assert [f.name for f in dataclasses.fields(Delivered)] == ["address", "payload"]
    assert dataclasses.fields(Dropped) == ()
    hop = Hop(ZERO, Instruction.DROP, ZERO)
    with pytest.raises(dataclasses.FrozenInstanceError):
        hop.target = ADDRESS
    assert not hasattr(hop, "__dict__")
    assert OnionError.REASONS == {
        "bad_size", "bad_mac", "replay", "bad_payload", "bad_instruction", "weak_key"
    }


# -- delivery along paths of every length --------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 14, MAX_PAYLOAD])
@pytest.mark.parametrize("hops", PATH_LENGTHS)
def test_path_delivers_payload_intact_and_every_packet_is_packet_size(hops, size):
    relays = make_relays(hops)
    payload = bytes(range(256)) * 7
    payload = payload[:size]
    packet = build_packet(path_for(relays), payload)
    assert len(packet) == PACKET_SIZE
    seen, result = walk(relays, packet)
    assert [len(p) for p in seen] == [PACKET_SIZE] * hops
    assert result == Delivered(ADDRESS, payload)


@settings(max_examples=40, deadline=None)
@given(
    hops=st.integers(1, MAX_HOPS),
    payload=st.binary(max_size=MAX_PAYLOAD),
    address=st.binary(min_size=32, max_size=32),
)
def test_any_path_and_payload_round_trip(hops, payload, address):
    relays = make_relays(hops, label="hypothesis")
    _, result = walk(relays, build_packet(path_for(relays, address=address), payload))
    assert result == Delivered(address, payload)


@pytest.mark.parametrize("hops", PATH_LENGTHS)
def test_drop_instruction_yields_dropped(hops):
    relays = make_relays(hops)
    seen, result = walk(relays, build_packet(path_for(relays, Instruction.DROP), b"cover"))
    assert result == Dropped()
    assert [len(p) for p in seen] == [PACKET_SIZE] * hops


@pytest.mark.parametrize("hops", PATH_LENGTHS)
def test_drop_is_encoded_like_deliver(hops):
    """Same keys, rng and payload: the packets differ only inside beta and gamma, at every hop."""
    relays = make_relays(hops)
    deliver = build_packet(path_for(relays, Instruction.DELIVER), b"same", seeded_rng(b"x"))
    drop = build_packet(path_for(relays, Instruction.DROP), b"same", seeded_rng(b"x"))
    seen_deliver, _ = walk([fresh(r) for r in relays], deliver)
    seen_drop, _ = walk([fresh(r) for r in relays], drop)
    for a, b in zip(seen_deliver, seen_drop, strict=True):
        differing = [i for i in range(PACKET_SIZE) if a[i] != b[i]]
        assert differing
        assert KEY_SIZE <= min(differing) and max(differing) < HEADER_SIZE


@pytest.mark.parametrize("hops", PATH_LENGTHS)
def test_intermediate_hops_learn_only_the_next_node_id(hops):
    relays = make_relays(hops)
    payload = b"a secret for the recipient only"
    seen, _ = walk(relays, build_packet(path_for(relays), payload))
    later_ids = [r.node_id for r in relays]
    for index, relay in enumerate(relays[:-1]):
        result = fresh(relay).process(seen[index])
        assert result == Forwarded(relays[index + 1].node_id, seen[index + 1])
        # Nothing else in the clear: not the payload, the address, or any node id.
        for secret in [payload, ADDRESS, *later_ids]:
            assert secret not in result.packet
        # The next alpha is unrelated to this one (blinded).
        assert result.packet[:KEY_SIZE] != seen[index][:KEY_SIZE]


@pytest.mark.parametrize("hops", PATH_LENGTHS)
def test_a_hop_cannot_tell_its_position(hops):
    """What a hop decrypts beyond its own block looks random at every position, last included.

    Zero padding behind the last hop's block would tell it the path length; the
    sender pads with rng bytes, and the filler makes earlier hops' views alike.
    """
    relays = make_relays(hops)
    seen, _ = walk(relays, build_packet(path_for(relays), b"x"))
    for relay, packet in zip(relays, seen, strict=True):
        alpha = packet[:KEY_SIZE]
        keys = derive_hop_keys(crypto_scalarmult(relay.private, alpha), alpha)
        beta = packet[KEY_SIZE : KEY_SIZE + ROUTING_SIZE]
        view = _x(beta + bytes(BLOCK_SIZE), keys.header_stream)
        rest = view[BLOCK_SIZE:]
        assert bytes(6) not in rest, f"hop at position {seen.index(packet)} of {hops} sees zeros"
        assert len(set(rest)) > 100


def test_packets_for_all_paths_are_the_same_size():
    sizes = set()
    for hops in PATH_LENGTHS:
        relays = make_relays(hops)
        for final in (Instruction.DELIVER, Instruction.DROP):
            for payload in (b"", b"x" * 500, b"y" * MAX_PAYLOAD):
                seen, _ = walk(relays, build_packet(path_for(relays, final), payload))
                sizes.update(len(p) for p in seen)
    assert sizes == {PACKET_SIZE}


# -- tampering -------------------------------------------------------------------------


@pytest.mark.parametrize("hops", PATH_LENGTHS)
def test_any_header_byte_flipped_at_any_hop_is_bad_mac_there(hops):
    relays = make_relays(hops)
    seen, _ = walk(relays, build_packet(path_for(relays), b"payload", seeded_rng(b"flip")))
    for relay, packet in zip(relays, seen, strict=True):
        for position in range(HEADER_SIZE):
            for mask in (0x01, 0x80):  # 0x80 in alpha's last byte: X25519 ignores that bit
                tampered = flip(packet, position, mask)
                refused = reason(process_packet, tampered, relay.keyring, ReplayCache(4), NOW)
                assert refused == "bad_mac", (position, mask)


@settings(max_examples=200, deadline=None)
@given(hops=st.integers(1, MAX_HOPS), data=st.data())
def test_header_changes_are_bad_mac(hops, data):
    relays = make_relays(hops)
    seen, _ = walk(relays, build_packet(path_for(relays), b"payload", seeded_rng(b"flip")))
    at = data.draw(st.integers(0, hops - 1))
    position = data.draw(st.integers(0, HEADER_SIZE - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = flip(seen[at], position, mask)
    assert reason(process_packet, tampered, relays[at].keyring, ReplayCache(4), NOW) == "bad_mac"


def _tampered_payload_result(relays, packet, at, position, mask=0x01):
    relays = [fresh(r) for r in relays]
    packet = flip(packet, HEADER_SIZE + position, mask)
    for relay in relays[at:-1]:
        result = relay.process(packet)
        assert isinstance(result, Forwarded) and len(result.packet) == PACKET_SIZE
        packet = result.packet
    return reason(relays[-1].process, packet)


@pytest.mark.parametrize("final", [Instruction.DELIVER, Instruction.DROP])
@pytest.mark.parametrize("hops", PATH_LENGTHS)
def test_payload_byte_flipped_at_any_hop_is_dropped_at_the_last(hops, final):
    relays = make_relays(hops)
    seen, _ = walk(relays, build_packet(path_for(relays, final), b"payload", seeded_rng(b"p")))
    positions = [0, 15, 16, 17, 18, 24, 1000, PAYLOAD_SIZE - 1]
    for at in range(hops):
        for position in positions:
            assert _tampered_payload_result(relays, seen[at], at, position) == "bad_payload"


def test_every_payload_byte_is_protected():
    relays = make_relays(3)
    seen, _ = walk(relays, build_packet(path_for(relays), b"payload", seeded_rng(b"every")))
    for position in range(PAYLOAD_SIZE):
        assert _tampered_payload_result(relays, seen[1], 1, position, 0x80) == "bad_payload"


def test_packet_for_another_relay_is_bad_mac():
    relays = make_relays(2)
    stranger = make_relays(1, label="stranger")[0]
    packet = build_packet(path_for(relays), b"x")
    assert reason(stranger.process, packet) == "bad_mac"


# -- replay -------------------------------------------------------------------------------


@pytest.mark.parametrize("hops", PATH_LENGTHS)
def test_replay_at_the_same_hop_is_refused(hops):
    relays = make_relays(hops)
    seen, _ = walk(relays, build_packet(path_for(relays), b"once"))
    for relay, packet in zip(relays, seen, strict=True):
        assert reason(relay.process, packet) == "replay"
        assert reason(relay.process, packet) == "replay"
        # The same shared secret through alpha's ignored top bit is not a way around it.
        assert reason(relay.process, flip(packet, KEY_SIZE - 1, 0x80)) == "bad_mac"
    assert [r.replay.size(0) for r in relays] == [1] * hops


def test_replay_tags_differ_per_packet_and_per_hop():
    relays = make_relays(3)
    first, _ = walk(relays, build_packet(path_for(relays), b"same payload"))
    second, _ = walk(relays, build_packet(path_for(relays), b"same payload"))
    assert all(r.replay.size(0) == 2 for r in relays)
    tags = set()
    for relay, packets in zip(relays, zip(first, second, strict=True), strict=True):
        for packet in packets:
            alpha = packet[:KEY_SIZE]
            tags.add(derive_hop_keys(crypto_scalarmult(relay.private, alpha), alpha).replay_tag)
    assert len(tags) == 6


# -- key rotation --------------------------------------------------------------------------


def test_previous_key_works_during_the_overlap_only():
    relays = make_relays(2, epoch=7, overlap=60.0)
    old_packets = [build_packet(path_for(relays), b"old %d" % i) for i in range(3)]
    first = relays[0]
    old_public = first.keyring.public
    assert first.keyring.rotate(hashlib.sha256(b"new key").digest(), now=100.0) == ()
    assert first.keyring.public != old_public
    assert first.keyring.epochs == (8, 7)
    new_packet = build_packet(path_for(relays), b"new")  # uses the new public key

    assert isinstance(first.process(old_packets[0], now=100.0), Forwarded)
    assert isinstance(first.process(old_packets[1], now=159.999), Forwarded)
    assert reason(first.process, old_packets[1], 159.999) == "replay"
    # The overlap is over, although the key is not yet retired:
    assert reason(first.process, old_packets[2], 160.0) == "bad_mac"
    assert isinstance(first.process(new_packet, now=160.0), Forwarded)
    assert first.replay.size(7) == 2 and first.replay.size(8) == 1

    assert first.keyring.retire_expired(159.0) == ()
    assert first.keyring.retire_expired(160.0) == (7,)
    assert first.keyring.epochs == (8,)
    assert reason(first.process, old_packets[2], 160.0) == "bad_mac"


def test_packets_for_the_new_key_do_not_use_the_old_one():
    relay = make_relays(1, epoch=0, overlap=60.0)[0]
    relay.keyring.rotate(hashlib.sha256(b"k1").digest(), now=10.0)
    packet = build_packet([Hop(relay.keyring.public, Instruction.DELIVER, ADDRESS)], b"x")
    assert relay.process(packet, now=20.0) == Delivered(ADDRESS, b"x")
    assert relay.replay.epochs == (1,)


def test_rotating_twice_within_the_overlap_forgets_the_oldest():
    relay = make_relays(1, epoch=3, overlap=60.0)[0]
    oldest = build_packet([Hop(relay.keyring.public, Instruction.DELIVER, ADDRESS)], b"x")
    assert relay.keyring.rotate(hashlib.sha256(b"k4").digest(), now=10.0) == ()
    assert relay.keyring.rotate(hashlib.sha256(b"k5").digest(), now=20.0) == (3,)
    assert relay.keyring.epochs == (5, 4)
    assert relay.keyring.previous.valid_until == 80.0
    assert reason(relay.process, oldest, 21.0) == "bad_mac"


def test_replay_cache_forgets_retired_epochs():
    relays = make_relays(1, epoch=1, overlap=30.0)
    relay = relays[0]
    old = build_packet(path_for(relays), b"old")
    relay.keyring.rotate(hashlib.sha256(b"k2").digest(), now=0.0)
    new = build_packet(path_for(relays), b"new")
    relay.process(old, now=10.0)
    relay.process(new, now=10.0)
    assert sorted(relay.replay.epochs) == [1, 2]

    retired = relay.keyring.retire_expired(30.0)
    assert retired == (1,)
    # process_packet drops epochs the keyring no longer holds ...
    newer = build_packet(path_for(relays), b"newer")
    relay.process(newer, now=31.0)
    assert relay.replay.epochs == (2,) and relay.replay.size(1) == 0
    # ... and so does the caller, with what retire_expired returned.
    cache = ReplayCache(10)
    assert cache.check_and_add(1, b"12345678")
    for epoch in retired:
        cache.forget_epoch(epoch)
    assert cache.epochs == () and cache.check_and_add(1, b"12345678")
    # The old packet is not accepted again: its key is gone.
    assert reason(relay.process, old, 31.0) == "bad_mac"


def test_keyring_basics():
    private = hashlib.sha256(b"k").digest()
    ring = OnionKeyring(private, 0, 5.0, 10.0)
    assert ring.public == crypto_scalarmult_base(private)
    assert (ring.epoch, ring.epochs, ring.previous) == (0, (0,), None)
    assert ring.current.valid_from == 5.0 and ring.current.valid_until is None
    assert private.hex() not in repr(ring) + repr(ring.current)
    for bad in (b"short", bytes(33), "x" * 32):
        with pytest.raises(ValueError):
            OnionKeyring(bad, 0, 0.0, 1.0)
    with pytest.raises(ValueError):
        OnionKeyring(private, 0, 0.0, -1.0)
    with pytest.raises(ValueError):
        ring.rotate(private, 6.0)  # the same key again
    with pytest.raises(ValueError):
        ring.rotate(b"short", 6.0)
    assert ring.epochs == (0,)


def test_replay_cache_basics():
    cache = ReplayCache(3)
    assert cache.check_and_add(1, b"aaaaaaaa")
    assert not cache.check_and_add(1, b"aaaaaaaa")
    assert cache.check_and_add(2, b"aaaaaaaa")  # epochs are independent
    assert cache.check_and_add(1, b"bbbbbbbb") and cache.check_and_add(1, b"cccccccc")
    assert cache.size(1) == 3
    assert not cache.check_and_add(1, b"dddddddd")  # full: fails closed
    assert not cache.check_and_add(1, b"aaaaaaaa")
    assert cache.check_and_add(2, b"dddddddd")
    cache.forget_epoch(1)
    assert cache.size(1) == 0 and cache.epochs == (2,)
    assert cache.check_and_add(1, b"aaaaaaaa")
    cache.forget_epoch(99)  # unknown: nothing happens
    with pytest.raises(ValueError):
        cache.check_and_add(1, b"short")
    with pytest.raises(ValueError):
        ReplayCache(0)


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 20),
    operations=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 40), st.booleans()), max_size=120
    ),
)
def test_replay_cache_matches_a_model(capacity, operations):
    """Against a dict of sets; tags share their low bits so that the table probes."""
    cache = ReplayCache(capacity)
    model: dict[int, set[int]] = {}
    for epoch, value, forget in operations:
        if forget:
            cache.forget_epoch(epoch)
            model.pop(epoch, None)
            continue
        tag = ((value << 40) | 1).to_bytes(8, "big")
        seen = model.setdefault(epoch, set())
        expected = value not in seen and len(seen) < capacity
        if expected:
            seen.add(value)
        assert cache.check_and_add(epoch, tag) is expected
        assert cache.size(epoch) == len(seen)


# -- hostile bytes -------------------------------------------------------------------------

_HOSTILE_RELAY = make_relays(1, label="hostile", overlap=1e9)[0]
_HOSTILE_RELAY.keyring.rotate(hashlib.sha256(b"hostile new").digest(), now=0.0)  # two keys to try


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3 * PACKET_SIZE))
def test_random_bytes_of_any_length_raise_only_onion_error(data):
    with pytest.raises(OnionError) as caught:
        _HOSTILE_RELAY.process(data)
    expected = {"bad_mac", "weak_key"} if len(data) == PACKET_SIZE else {"bad_size"}
    assert caught.value.reason in expected


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=PACKET_SIZE, max_size=PACKET_SIZE))
def test_random_packets_raise_only_onion_error(data):
    assert reason(_HOSTILE_RELAY.process, data) in {"bad_mac", "weak_key"}


@pytest.mark.parametrize("point", SMALL_ORDER, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_small_order_alpha_is_weak_key(point):
    packet = point + bytes(PACKET_SIZE - KEY_SIZE)
    assert reason(_HOSTILE_RELAY.process, packet) == "weak_key"


@settings(max_examples=200, deadline=None)
@given(
    changes=st.lists(
        st.tuples(st.integers(0, PACKET_SIZE - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    cut=st.integers(0, PACKET_SIZE + 10),
)
def test_mangled_packets_raise_only_onion_error(changes, cut):
    relays = make_relays(2, label="mangle")
    packet = bytearray(build_packet(path_for(relays), b"m", seeded_rng(b"mangle")))
    for position, value in changes:
        packet[position] = value
    data = bytes(packet[:cut]) + bytes(max(0, cut - PACKET_SIZE))
    for relay in relays:
        try:
            result = fresh(relay).process(data)
        except OnionError:
            return
        assert isinstance(result, (Forwarded, Delivered))
        data = result.packet if isinstance(result, Forwarded) else b""


def test_bytearray_and_memoryview_are_accepted_and_other_types_are_not():
    relays = make_relays(1)
    packet = build_packet(path_for(relays), b"x")
    assert fresh(relays[0]).process(bytearray(packet)) == Delivered(ADDRESS, b"x")
    assert fresh(relays[0]).process(memoryview(packet)) == Delivered(ADDRESS, b"x")
    with pytest.raises(TypeError):
        fresh(relays[0]).process(packet.hex())


def _authentic(relays, blocks, body):
    publics = [r.keyring.public for r in relays]
    return reference_packet(publics, blocks, body, bytes(range(32)), bytes(245 - 49 * len(blocks)))


@pytest.mark.parametrize("instruction", [0, 4, 255])
def test_unknown_instruction_in_an_authentic_header(instruction):
    relays = make_relays(2)
    blocks = [bytes([1]) + relays[1].node_id, bytes([instruction]) + ADDRESS]
    packet = _authentic(relays, blocks, reference_body(b"x"))
    forwarded = relays[0].process(packet)
    assert reason(relays[1].process, forwarded.packet) == "bad_instruction"


def test_drop_with_a_target_is_bad_instruction():
    relays = make_relays(1)
    packet = _authentic(relays, [bytes([Instruction.DROP]) + ADDRESS], reference_body(b"x"))
    assert reason(relays[0].process, packet) == "bad_instruction"


@pytest.mark.parametrize(
    "body",
    [
        (1738).to_bytes(2, "big").ljust(1739, b"\x00"),  # longer than MAX_PAYLOAD
        (65535).to_bytes(2, "big").ljust(1739, b"\x00"),
        reference_body(b"x")[:-1] + b"\x01",  # padding not zero
    ],
    ids=["length-1738", "length-65535", "padding"],
)
def test_authentic_payload_that_does_not_decode_is_bad_payload(body):
    relays = make_relays(1)
    packet = _authentic(relays, [bytes([Instruction.DELIVER]) + ADDRESS], body)
    assert reason(relays[0].process, packet) == "bad_payload"


def test_largest_length_decodes():
    relays = make_relays(1)
    data = b"\xff" * MAX_PAYLOAD
    packet = _authentic(relays, [bytes([Instruction.DELIVER]) + ADDRESS], reference_body(data))
    assert relays[0].process(packet) == Delivered(ADDRESS, data)


# -- the sender's mistakes ---------------------------------------------------------------


def test_build_packet_refuses_malformed_paths():
    relays = make_relays(MAX_HOPS + 1)
    pub = relays[0].keyring.public
    bad_paths = [
        [],
        path_for(relays),  # six hops
        [Hop(pub, Instruction.FORWARD, relays[1].node_id)],  # last hop forwards
        [Hop(pub, Instruction.DELIVER, ADDRESS), Hop(pub, Instruction.DELIVER, ADDRESS)],
        [Hop(pub, Instruction.DROP, ADDRESS)],  # a DROP target must be zero
        [Hop(pub[:31], Instruction.DELIVER, ADDRESS)],
        [Hop(pub, Instruction.DELIVER, ADDRESS[:31])],
        [Hop(pub, 9, ADDRESS)],
    ]
    for hops in bad_paths:
        with pytest.raises(ValueError):
            build_packet(hops, b"x")
    with pytest.raises(ValueError):
        build_packet([Hop(pub, Instruction.DELIVER, ADDRESS)], b"x" * (MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):
        build_packet([Hop(pub, Instruction.DELIVER, ADDRESS)], b"x", rng=lambda n: bytes(n - 1))


@pytest.mark.parametrize("point", SMALL_ORDER[:3], ids=lambda p: p.hex()[:8])
def test_build_packet_refuses_a_small_order_onion_key(point):
    relays = make_relays(1)
    hops = [
        Hop(relays[0].keyring.public, Instruction.FORWARD, ZERO),
        Hop(point, Instruction.DELIVER, ADDRESS),
    ]
    assert reason(build_packet, hops, b"x") == "weak_key"


def test_build_packet_accepts_plain_ints_as_instructions():
    relays = make_relays(2)
    hops = [
        Hop(relays[0].keyring.public, 1, relays[1].node_id),
        Hop(relays[1].keyring.public, 2, ADDRESS),
    ]
    _, result = walk(relays, build_packet(hops, b"ints"))
    assert result == Delivered(ADDRESS, b"ints")


# -- the construction as documented ---------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(hops=st.integers(1, MAX_HOPS), payload=st.binary(max_size=64), seed=st.binary(max_size=8),
       final=st.sampled_from([Instruction.DELIVER, Instruction.DROP]))
def test_build_packet_matches_the_documented_construction(hops, payload, seed, final):
    relays = make_relays(hops)
    path = path_for(relays, final)
    expected = reference_for(path, payload, seeded_rng(seed))
    assert build_packet(path, payload, seeded_rng(seed)) == expected


def test_hop_keys_are_slices_of_one_keystream():
    alpha, shared = crypto_scalarmult_base(b"\x01" * 32), b"\x02" * 32
    keys = derive_hop_keys(shared, alpha)
    key = hmac.new(b"zentalk-onion-v1", alpha + shared, "sha256").digest()
    stream = _chacha(key, 2177)
    assert keys.key == key
    assert keys.header_mac == stream[0:32]
    assert keys.payload_mac == stream[32:64]
    assert keys.blinding == stream[64:96]
    assert keys.replay_tag == stream[96:104]
    assert keys.header_stream == stream[128:422] and keys.payload_stream == stream[422:]
    assert key.hex() not in repr(keys)


EXAMPLE_PRIVATE = [bytes([0x10 * (i + 1)]) * 32 for i in range(3)]
EXAMPLE_NODE_IDS = [None, bytes([0x11]) * 32, bytes([0x22]) * 32]
EXAMPLE_PAYLOAD = b"hello, zentalk"
BEGIN, END = "<!-- worked-example:begin -->", "<!-- worked-example:end -->"


def worked_example() -> str:
    """The worked example's section of docs/onion.md, computed."""
    rings = [OnionKeyring(private, 0, 0.0, 0.0) for private in EXAMPLE_PRIVATE]
    hops = [
        Hop(rings[0].public, Instruction.FORWARD, EXAMPLE_NODE_IDS[1]),
        Hop(rings[1].public, Instruction.FORWARD, EXAMPLE_NODE_IDS[2]),
        Hop(rings[2].public, Instruction.DELIVER, ADDRESS),
    ]
    packet = build_packet(hops, EXAMPLE_PAYLOAD, counter_rng())
    assert packet == reference_for(hops, EXAMPLE_PAYLOAD, counter_rng())
    out = [BEGIN, "", "Inputs:", "", "```"]
    size = len(EXAMPLE_PAYLOAD)
    rows = []
    for i, (private, ring) in enumerate(zip(EXAMPLE_PRIVATE, rings)):
        rows.append((f"relay {i} onion private", private.hex()))
        rows.append((f"relay {i} onion public", ring.public.hex()))
    rows += [
        ("relay 1 node id", EXAMPLE_NODE_IDS[1].hex()),
        ("relay 2 node id", EXAMPLE_NODE_IDS[2].hex()),
        ("address", ADDRESS.hex()),
        ("payload", f"{EXAMPLE_PAYLOAD.hex()} ({EXAMPLE_PAYLOAD.decode()!r}, {size} bytes)"),
        ("rng", "00 01 02 03 ... (a one-byte counter, mod 256, across calls)"),
        ("x = rng(32)", bytes(range(32)).hex()),
        (f"padding = rng({245 - 3 * 49})", "20 21 22 ... 81"),
    ]
    out += [f"{label:24} {value}" for label, value in rows]
    out += [
        "```",
        "",
        "Per hop, as the relay computes it:",
        "",
    ]
    for i, ring in enumerate(rings):
        last = i == len(rings) - 1
        alpha = packet[:KEY_SIZE]
        shared = crypto_scalarmult(EXAMPLE_PRIVATE[i], alpha)
        keys = derive_hop_keys(shared, alpha)
        beta = packet[KEY_SIZE : KEY_SIZE + ROUTING_SIZE]
        routing = _x(beta + bytes(BLOCK_SIZE), keys.header_stream)
        gamma = packet[KEY_SIZE + ROUTING_SIZE : HEADER_SIZE]
        authenticated = packet[: KEY_SIZE + ROUTING_SIZE]
        assert gamma == hmac.new(keys.header_mac, authenticated, "sha256").digest()[:16]
        out += [f"Hop {i}:", "", "```"]
        out += [
            f"alpha             {alpha.hex()}",
            f"s                 {shared.hex()}",
            f"K                 {keys.key.hex()}",
            f"header MAC key    {keys.header_mac.hex()}",
            f"payload MAC key   {keys.payload_mac.hex()}" + ("" if last else "  (unused here)"),
            f"blinding          {keys.blinding.hex()}" + ("  (unused here)" if last else ""),
            f"replay tag        {keys.replay_tag.hex()}",
            f"gamma             {gamma.hex()}",
            f"block             {routing[:1].hex()} {routing[1:33].hex()} {routing[33:49].hex()}",
        ]
        result = process_packet(packet, ring, ReplayCache(4), 0.0)
        if isinstance(result, Forwarded):
            out.append(f"next alpha        {result.packet[:KEY_SIZE].hex()}")
            out.append(f"next packet       SHA-256 {hashlib.sha256(result.packet).hexdigest()}")
            packet = result.packet
        else:
            plain = _x(packet[HEADER_SIZE:], keys.payload_stream)
            out.append(f"payload MAC       {plain[:16].hex()}")
            data = plain[18 : 18 + len(EXAMPLE_PAYLOAD)]
            out.append(f"payload           {plain[16:18].hex()} {data.hex()} 00...")
            shown = f"address={result.address.hex()[:8]}..., payload={result.payload!r}"
            out.append(f"result            Delivered({shown})")
        out += ["```", ""]
    first = build_packet(hops, EXAMPLE_PAYLOAD, counter_rng())
    out += [
        f"The packet relay 0 receives ({PACKET_SIZE} bytes, "
        f"SHA-256 {hashlib.sha256(first).hexdigest()}):",
        "",
        "```",
    ]
    out += [first[offset : offset + 32].hex() for offset in range(0, PACKET_SIZE, 32)]
    out += ["```", "", END]
    return "\n".join(out)


def _documented_example() -> str:
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def test_worked_example_in_the_document_is_exact():
    assert _documented_example() == worked_example()


def test_worked_example_packet_in_the_document_processes():
    """The hex in the document, read back, is a packet the example relays deliver."""
    section = _documented_example()
    rows = re.findall(r"^([0-9a-f]{64})$", section, re.M)
    packet = bytes.fromhex("".join(rows))
    assert len(packet) == PACKET_SIZE
    rings = [OnionKeyring(private, 0, 0.0, 0.0) for private in EXAMPLE_PRIVATE]
    for ring in rings[:-1]:
        packet = process_packet(packet, ring, ReplayCache(4), 0.0).packet
    result = process_packet(packet, rings[-1], ReplayCache(4), 0.0)
    assert result == Delivered(ADDRESS, EXAMPLE_PAYLOAD)


# -- sans-IO ---------------------------------------------------------------------------


def test_onion_module_is_sans_io():
    tree = ast.parse(Path(onion.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"twisted", "prometheus_client", "time", "random", "socket", "secrets"}
    allowed = {"__future__", "hmac", "os", "struct", "array", "dataclasses", "enum", "typing"}
    assert imported <= allowed | {"cryptography", "nacl"}


if __name__ == "__main__":
    section = worked_example()
    if sys.argv[1:] == ["--write"]:
        text = DOC.read_text()
        start, end = text.index(BEGIN), text.index(END) + len(END)
        DOC.write_text(text[:start] + section + text[end:])
    else:
        print(section)
