#!/usr/bin/env python3
"""Write the seed corpus of fuzz_stun.py to fuzz/corpus/stun/ (run from anywhere).

Each seed is laid out as fuzz_stun.split_input reads it: message, key, then
the trailer that chooses the source address and the key length. The files
are committed; rerun this only to change the seeds.

    python3 fuzz/make_stun_corpus.py
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The checkout's package, not an installed copy; then the harness beside us.
sys.path[:0] = [str(HERE.parent), str(HERE)]

import fuzz_stun  # noqa: E402  (the harness, for its layout and the codec)

stun = fuzz_stun.stun
Attr = stun.Attr
Method = stun.Method
MessageClass = stun.MessageClass

TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
CLASSIC_TID = bytes.fromhex("0123456789abcdef0123456789abcdef")


def trailer(family: int, host: str, port: int, key_len: int) -> bytes:
    """The 20 bytes FuzzedDataProvider reads from the end, in file order.

    Integers are read from the last byte backwards, the first byte read
    being the most significant: family (last byte), port, the address's
    high and low 8 bytes, key length.
    """
    if family in (fuzz_stun.FAMILY_IPV4, fuzz_stun.FAMILY_IPV4_MAPPED):
        address = socket.inet_aton(host) + bytes(12)
    else:
        address = socket.inet_pton(socket.AF_INET6, host)
    fields = [
        family.to_bytes(1, "big"),
        port.to_bytes(2, "big"),
        address[:8],
        address[8:],
        key_len.to_bytes(1, "big"),
    ]
    return b"".join(field[::-1] for field in reversed(fields))


def seed(message: bytes, key: bytes = b"", source: tuple = (fuzz_stun.FAMILY_IPV4, "192.0.2.1", 32853)) -> bytes:
    family, host, port = source
    data = message + key + trailer(family, host, port, len(key))
    got_message, got_key, got_source = fuzz_stun.split_input(data)
    assert (got_message, got_key) == (message, key), "layout mismatch"
    assert got_source[1] == port, got_source
    assert got_source[0].split("%")[0].removeprefix("::ffff:") == host, (got_source, host)
    return data


def seeds() -> dict[str, bytes]:
    vectors = json.loads((HERE.parent / "tests/vectors/rfc5769_vectors.json").read_text())["vectors"]
    out: dict[str, bytes] = {}
    for vector in vectors:
        message = bytes.fromhex(vector["hex"])
        if "realm" in vector:
            algorithm = "sha256" if vector["credential"] == "long-term-sha256" else "md5"
            key = stun.long_term_key(vector["username"], vector["realm"], vector["password"], algorithm)
        else:
            key = vector["password"].encode("utf-8")
        out[vector["name"].split(" ")[0]] = seed(message, key)
    v6 = (fuzz_stun.FAMILY_IPV6, "2001:db8::1", 3478)
    out["binding_request_plain"] = seed(stun.encode(Method.BINDING, MessageClass.REQUEST, TID, fingerprint=False))
    out["binding_request_plain_v6"] = seed(
        stun.encode(Method.BINDING, MessageClass.REQUEST, TID, fingerprint=False), source=v6
    )
    out["binding_request_fingerprint_mapped"] = seed(
        stun.encode(Method.BINDING, MessageClass.REQUEST, TID, [(Attr.SOFTWARE, b"seed")]),
        source=(fuzz_stun.FAMILY_IPV4_MAPPED, "198.51.100.7", 50000),
    )
    out["binding_request_plain_mapped"] = seed(
        stun.encode(Method.BINDING, MessageClass.REQUEST, TID, fingerprint=False),
        source=(fuzz_stun.FAMILY_IPV4_MAPPED, "198.51.100.8", 1),
    )
    out["binding_request_too_many_attributes"] = seed(
        stun.encode(Method.BINDING, MessageClass.REQUEST, TID, [(Attr.PADDING, b"")] * (stun.MAX_ATTRIBUTES + 1))
    )
    out["binding_request_rfc3489"] = seed(stun.encode(Method.BINDING, MessageClass.REQUEST, CLASSIC_TID))
    out["binding_indication"] = seed(stun.encode(Method.BINDING, MessageClass.INDICATION, TID))
    out["binding_success_response"] = seed(
        stun.encode(
            Method.BINDING,
            MessageClass.SUCCESS,
            TID,
            [(Attr.XOR_MAPPED_ADDRESS, stun.encode_xor_address("203.0.113.9", 4242, TID))],
        )
    )
    out["binding_request_unknown_required"] = seed(
        stun.encode(
            Method.BINDING,
            MessageClass.REQUEST,
            TID,
            [(0x0007, b"\x00" * 4), (0x7F00, b"abc"), (0x0023, b"")],
            integrity_key=b"secret",
        ),
        key=b"secret",
        source=(fuzz_stun.FAMILY_IPV6_ZONE, "fe80::1", 9),
    )
    out["binding_request_change_request"] = seed(
        stun.encode(Method.BINDING, MessageClass.REQUEST, TID, [(Attr.CHANGE_REQUEST, b"\x00\x00\x00\x06")]), source=v6
    )
    out["allocate_request_error_path"] = seed(
        stun.encode(
            Method.ALLOCATE,
            MessageClass.REQUEST,
            TID,
            [
                (Attr.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00"),
                (Attr.LIFETIME, b"\x00\x00\x02\x58"),
                (Attr.ERROR_CODE, stun.encode_error_code(401, "Unauthorized")),
                (Attr.MAPPED_ADDRESS, stun.encode_address("2001:db8::2", 80)),
            ],
            integrity_key=b"k" * 16,
            integrity_sha256=True,
        ),
        key=b"k" * 16,
    )
    return out


def main() -> None:
    target = HERE / "corpus" / "stun"
    target.mkdir(parents=True, exist_ok=True)
    for old in target.iterdir():
        old.unlink()
    for name, data in seeds().items():
        message, key, source = fuzz_stun.split_input(data)
        if name.startswith("rfc"):
            assert stun.check_integrity(stun.decode(message), key), f"{name}: the key does not verify"
        (target / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes, sha1 {hashlib.sha1(data).hexdigest()[:12]}")


if __name__ == "__main__":
    main()
