#!/usr/bin/env python3
"""Write the seed corpus of fuzz_turn.py to fuzz/corpus/turn/ (run from anywhere).

Each seed is a script in the layout fuzz_turn.parse_script reads. Requests
for op 1 are written without credentials: the harness signs them. The files
are committed; rerun this only to change the seeds.

    python3 fuzz/make_turn_corpus.py
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import fuzz_turn  # noqa: E402

stun = fuzz_turn.stun
Attr = stun.Attr
Method = stun.Method
MessageClass = stun.MessageClass
RAW, SIGNED, CHANNEL, PEER, TIME, STREAM, CLOSE = range(7)
PEER_V4 = ("93.184.216.34", 5000)
PEER_V6 = ("2606:4700::1111", 5000)
UDP_TRANSPORT = (Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0")


def tid(n: int) -> bytes:
    return n.to_bytes(12, "big")


def request(method, attributes=(), n=1, cls=MessageClass.REQUEST) -> bytes:
    resolved = [(t, v(tid(n)) if callable(v) else v) for t, v in attributes]
    return stun.encode(method, cls, tid(n), resolved, fingerprint=False)


def peer(address):
    return (Attr.XOR_PEER_ADDRESS, lambda t: stun.encode_xor_address(address[0], address[1], t))


def allocate(n=1, extra=()):
    return request(Method.ALLOCATE, [UDP_TRANSPORT, *extra], n)


def channel(number: int, data: bytes, pad: bool = False) -> bytes:
    out = struct.pack("!HH", number, len(data)) + data
    return out + b"\0" * (-len(out) % 4) if pad else out


def seconds(n: int) -> bytes:
    return n.to_bytes(2, "big")


SEEDS = {
    "challenge_401": [(RAW, 0, allocate())],
    "allocate_permission_channel_data": [
        (SIGNED, 0, allocate(1)),
        (SIGNED, 0, request(Method.CREATE_PERMISSION, [peer(PEER_V4)], 2)),
        (SIGNED, 0, request(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, b"\x40\x00\0\0"), peer(PEER_V4)], 3)),
        (CHANNEL, 0, channel(0x4000, b"hello peer")),
        (PEER, 0, b"\x00hello client"),
        (PEER, 2, b"\x00from a host without permission"),
        (SIGNED, 0, request(Method.REFRESH, [(Attr.LIFETIME, b"\0\0\0\0")], 4)),
    ],
    "send_and_data_indications": [
        (SIGNED, 1, allocate(1)),
        (SIGNED, 1, request(Method.CREATE_PERMISSION, [peer(PEER_V4)], 2)),
        (RAW, 1, request(Method.SEND, [peer(PEER_V4), (Attr.DATA, b"via send")], 3, MessageClass.INDICATION)),
        (PEER, 1, b"\x00back via data"),
    ],
    "sha256_integrity_and_algorithm": [
        (SIGNED, 0x80, allocate(1, [(Attr.PASSWORD_ALGORITHMS, struct.pack("!HHHH", 2, 0, 1, 0)),
                                    (Attr.PASSWORD_ALGORITHM, struct.pack("!HH", 2, 0))])),
    ],
    "even_port_reservation": [
        (SIGNED, 0, allocate(1, [(Attr.EVEN_PORT, b"\x80")])),
        (SIGNED, 1, allocate(2)),
        (TIME, 0, seconds(31)),
    ],
    "dual_allocation_ipv6_peer": [
        (SIGNED, 0, allocate(1, [(Attr.ADDITIONAL_ADDRESS_FAMILY, b"\x02\0\0\0")])),
        (SIGNED, 0, request(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, b"\x40\x01\0\0"), peer(PEER_V6)], 2)),
        (CHANNEL, 0, channel(0x4001, b"six")),
        (PEER, 3, b"\x00six back"),
    ],
    "tcp_stream": [
        (STREAM, 0, allocate(1)),
        (SIGNED, 2, allocate(2)),
        (SIGNED, 2, request(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, b"\x40\x02\0\0"), peer(PEER_V4)], 3)),
        (STREAM, 0, channel(0x4002, b"abc", pad=True) + channel(0x4002, b"defg", pad=True)),
        (PEER, 0, b"\x00pad me"),
        (CLOSE, 2, b""),
    ],
    "expiry_and_stale_nonce": [
        (SIGNED, 0, allocate(1)),
        (SIGNED, 0, request(Method.CREATE_PERMISSION, [peer(PEER_V4)], 2)),
        (TIME, 0, seconds(301)),
        (PEER, 0, b"\x00too late"),
        (SIGNED, 0x40, request(Method.REFRESH, [], 3)),
        (TIME, 0, seconds(700)),
    ],
    "refusals": [
        (SIGNED, 0, allocate(1, [(0x7F31, b"??")])),
        (SIGNED, 0, allocate(2, [(Attr.DONT_FRAGMENT, b"")])),
        (SIGNED, 0, request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x06\0\0\0")], 3)),
        (SIGNED, 0, allocate(4)),
        (SIGNED, 0, request(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, b"\x50\x00\0\0"), peer(PEER_V4)], 5)),
        (SIGNED, 0, request(Method.CREATE_PERMISSION, [peer(("127.0.0.1", 1))], 6)),
        (SIGNED, 0, request(Method.CREATE_PERMISSION, [peer(("::ffff:10.0.0.1", 1))], 7)),
        (SIGNED, 0, allocate(8)),
        (CHANNEL, 0, channel(0x4FFF, b"unbound")),
    ],
    # alice: clients 0, 2, 4 then 5 (486); bob: 1 and 6 make five in all, then 7 (508)
    "quota": [(SIGNED, who, allocate(n)) for n, who in enumerate((0, 2, 4, 5, 1, 6, 7), 1)],
}


def main() -> None:
    target = HERE / "corpus" / "turn"
    target.mkdir(parents=True, exist_ok=True)
    for name, ops in SEEDS.items():
        data = fuzz_turn.encode_script(ops)
        assert fuzz_turn.parse_script(data) == [(op, who, payload) for op, who, payload in ops], name
        (target / name).write_bytes(data)
    print(f"wrote {len(SEEDS)} seeds to {target}")


if __name__ == "__main__":
    main()
