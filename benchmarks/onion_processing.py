"""Onion packets processed per second at one relay, on one core, next to their primitives.

    python benchmarks/onion_processing.py          # --count 10000 --rounds 20, one CPU
    python benchmarks/onion_processing.py --count 20000 --cpu 1 --json

Builds ``--count`` distinct packets per case first (each packet is processed
once: a second time would be a replay), then times ``process_packet`` over
them in a loop: at a FORWARD hop, at the last (DELIVER) hop, at a FORWARD hop
through the previous onion key during a rotation's overlap, and for garbage
of the right size (refused with ``bad_mac``). In the same run it times the
primitives a hop uses, alone: X25519 (libsodium through PyNaCl),
HMAC-SHA256 over the header and over the payload, the HKDF-Extract that
gives a hop's key K, and one ChaCha20 context producing a hop's keystream.
``ratio`` is a case's time over the time of its X25519 and MAC operations
alone; ``x25519 share`` is the part of the case's time that is X25519.
Finally it times ``build_packet`` for 3 hops (9 X25519 at the sender).

The primitives and the cases run interleaved in ``--rounds`` rounds over
disjoint packets, and each row shows its best round: on a shared machine
noise only adds time. Pure CPU, no sockets, one thread; pinned with ``sched_setaffinity`` to the
first CPU this process may use, or ``--cpu``. Every loop is bounded by the
count.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout, not an installed copy

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms  # noqa: E402
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base  # noqa: E402

from zentalk_relay.relay.onion import (  # noqa: E402
    HEADER_SIZE,
    KEY_SIZE,
    MAX_PAYLOAD,
    PACKET_SIZE,
    PAYLOAD_OVERHEAD,
    PAYLOAD_SIZE,
    ROUTING_SIZE,
    STREAM_SIZE,
    Hop,
    Instruction,
    OnionError,
    OnionKeyring,
    ReplayCache,
    build_packet,
    process_packet,
)


def _key(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _timed(function, items) -> float:
    """Seconds per item of ``function(item)`` over ``items``."""
    started = time.perf_counter()
    for item in items:
        function(item)
    return (time.perf_counter() - started) / len(items)


def _repeat(function, count: int) -> float:
    return _timed(lambda _: function(), range(count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10000, help="packets per case")
    parser.add_argument("--rounds", type=int, default=20, help="rounds; the best one counts")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the first)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rounds = max(1, args.rounds)
    count = max(100 * rounds, args.count)
    per_round = count // rounds

    cpu = None
    if hasattr(os, "sched_setaffinity"):
        cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})

    # The relay under test, rotated once so that its previous key is in its overlap.
    here = OnionKeyring(_key("here, epoch 0"), 0, 0.0, 3600.0)
    old_public = here.public
    here.rotate(_key("here, epoch 1"), 0.0)
    after = OnionKeyring(_key("next relay"), 0, 0.0, 0.0)
    others = [OnionKeyring(_key(f"relay {i}"), 0, 0.0, 0.0) for i in range(3)]
    next_id, address = _key("next node id"), _key("address")
    payload = os.urandom(1000)
    three = [
        Hop(others[0].public, Instruction.FORWARD, next_id),
        Hop(others[1].public, Instruction.FORWARD, next_id),
        Hop(others[2].public, Instruction.DELIVER, address),
    ]

    def forward_via(public: bytes) -> bytes:
        first = Hop(public, Instruction.FORWARD, next_id)
        return build_packet([first, Hop(after.public, Instruction.DELIVER, address)], payload)

    def deliver_here() -> bytes:
        return build_packet([Hop(here.public, Instruction.DELIVER, address)], payload)

    print(f"building {count} packets per case ...", file=sys.stderr, flush=True)
    forward = [forward_via(here.public) for _ in range(count)]
    deliver = [deliver_here() for _ in range(count)]
    previous = [forward_via(old_public) for _ in range(count)]
    garbage = [os.urandom(PACKET_SIZE) for _ in range(count)]

    replay = ReplayCache(4 * count)

    def process(packet: bytes) -> None:
        process_packet(packet, here, replay, 1.0)

    def refused(packet: bytes) -> None:
        try:
            process_packet(packet, here, replay, 1.0)
        except OnionError:
            pass

    # Warm up: the replay table, OpenSSL's first contexts.
    for packet in (forward_via(here.public), forward_via(here.public)):
        process(packet)

    # Primitives alone and the cases, interleaved in rounds over disjoint packets; the
    # best round of each counts (a shared machine's noise only ever adds time).
    scalar, point = _key("scalar"), crypto_scalarmult_base(_key("point"))
    header, body = os.urandom(KEY_SIZE + ROUTING_SIZE), os.urandom(PAYLOAD_SIZE - 16)
    ikm, zeros, nonce = os.urandom(64), bytes(STREAM_SIZE), bytes(16)
    primitives = {
        "x25519": lambda: crypto_scalarmult(scalar, point),
        "x25519_base": lambda: crypto_scalarmult_base(scalar),
        "hmac_header": lambda: hmac.digest(scalar, header, "sha256"),
        "hmac_payload": lambda: hmac.digest(scalar, body, "sha256"),
        "hkdf_extract": lambda: hmac.digest(b"zentalk-onion-v1", ikm, "sha256"),
        "chacha20": lambda: Cipher(algorithms.ChaCha20(scalar, nonce), None).encryptor().update(
            zeros
        ),
    }
    cases = {
        "forward": (process, forward),
        "deliver": (process, deliver),
        "forward_previous_key": (process, previous),
        "garbage": (refused, garbage),
    }
    builds = max(10, count // (5 * rounds))
    primitive = {key: float("inf") for key in primitives}
    measured = {key: float("inf") for key in [*cases, "build_3_hops"]}
    for round_ in range(rounds):
        chunk = slice(round_ * per_round, (round_ + 1) * per_round)
        for key, function in primitives.items():
            primitive[key] = min(primitive[key], _repeat(function, per_round))
        for key, (function, packets) in cases.items():
            measured[key] = min(measured[key], _timed(function, packets[chunk]))
        build = _repeat(lambda: build_packet(three, payload), builds)
        measured["build_3_hops"] = min(measured["build_3_hops"], build)
    done = per_round * rounds
    assert replay.size(1) == 2 * done + 2 and replay.size(0) == done  # every packet was new

    x, base = primitive["x25519"], primitive["x25519_base"]
    mac_h, mac_p = primitive["hmac_header"], primitive["hmac_payload"]
    # Per case: (time of its X25519 operations, time of its MACs, what they are).
    parts = {
        "forward": (2 * x, mac_h, "2 X25519 + header MAC"),
        "deliver": (x, mac_h + mac_p, "1 X25519 + header MAC + payload MAC"),
        "forward_previous_key": (3 * x, 2 * mac_h, "3 X25519 + 2 header MACs"),
        "garbage": (2 * x, 2 * mac_h, "2 X25519 + 2 header MACs (both keys tried)"),
        "build_3_hops": (
            base + 8 * x, 3 * mac_h + mac_p, "1 base + 8 X25519 + 3 header MACs + payload MAC"
        ),
    }
    labels = {
        "x25519": "X25519 (crypto_scalarmult)",
        "x25519_base": "X25519 base point (crypto_scalarmult_base)",
        "hmac_header": f"HMAC-SHA256 over alpha ‖ beta ({KEY_SIZE + ROUTING_SIZE} B)",
        "hmac_payload": f"HMAC-SHA256 over the payload body ({PAYLOAD_SIZE - 16} B)",
        "hkdf_extract": "HKDF-Extract, K = HMAC-SHA256(salt, alpha ‖ s)",
        "chacha20": f"ChaCha20 context + keystream ({STREAM_SIZE} B)",
        "forward": "process_packet, FORWARD hop",
        "deliver": "process_packet, DELIVER (last) hop",
        "forward_previous_key": "process_packet, FORWARD, previous key (overlap)",
        "garbage": "process_packet, random bytes (bad_mac)",
        "build_3_hops": "build_packet, 3 hops",
    }
    environment = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "pinned_cpu": cpu,
        "count": count,
        "rounds": rounds,
        "packet_size": PACKET_SIZE,
        "header_size": HEADER_SIZE,
        "max_payload": MAX_PAYLOAD,
        "payload_overhead": PAYLOAD_OVERHEAD,
    }
    rows = {}
    for key, seconds in measured.items():
        x_time, mac_time, what = parts[key]
        rows[key] = {
            "us": seconds * 1e6,
            "per_second": 1 / seconds,
            "x25519_mac_us": (x_time + mac_time) * 1e6,
            "ratio": seconds / (x_time + mac_time),
            "x25519_share": x_time / seconds,
            "x25519_mac": what,
        }
    if args.json:
        document = {
            "environment": environment,
            "primitives_us": {key: value * 1e6 for key, value in primitive.items()},
            "cases": rows,
        }
        print(json.dumps(document, indent=2))
        return

    print(
        f"onion processing: {environment['processor']}, Python {environment['python']}, "
        f"CPU {cpu}; {count} packets per case in {rounds} rounds, best round shown; "
        f"packet {PACKET_SIZE} B, max payload {MAX_PAYLOAD} B"
    )
    print()
    print(f"{'primitive':52} {'µs/op':>8} {'ops/s':>9}")
    for key, seconds in primitive.items():
        print(f"{labels[key]:52} {seconds * 1e6:8.2f} {1 / seconds:9.0f}")
    print()
    heading = f"{'X25519+MAC µs':>14} {'ratio':>6} {'X25519 share':>13}"
    print(f"{'case':52} {'µs/op':>8} {'ops/s':>9} {heading}")
    for key, row in rows.items():
        print(
            f"{labels[key]:52} {row['us']:8.2f} {row['per_second']:9.0f} "
            f"{row['x25519_mac_us']:14.2f} {row['ratio']:6.2f} {row['x25519_share']:13.0%}"
        )
    print()
    print("X25519+MAC: the case's X25519 and MAC operations timed alone; ratio = case / that.")
    for key, row in rows.items():
        print(f"  {labels[key]}: {row['x25519_mac']}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
