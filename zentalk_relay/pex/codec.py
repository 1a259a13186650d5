"""PEX messages, sans-IO: the body of a PEX frame (type 0x20).

Request (subtype 0x01): ``max u8 (1-50)``.
Response (subtype 0x02): ``count u8 (0-50) ‖ count × entry``, where an entry is

    node_id (32) ‖ family u8 (0 hidden, 4, 6) ‖ IP (0, 4 or 16) ‖ port u16 ‖
    capabilities u32 ‖ last seen ms u64 ‖ latency ms u16 ‖ link key (32)

The network spec's entry (node id, IP, port, capabilities, last seen,
latency) is extended by two things every receiver needs: the family byte,
because the IP is 4 or 16 bytes, or absent for a peer that asked to be
shared by node id only; and the peer's X25519 link key, because a Noise NK
initiator must know it before its first message, and a peer is only
trusted once it has been dialled and has authenticated.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

REQUEST = 0x01
RESPONSE = 0x02
MAX_ENTRIES = 50

_TAIL = struct.Struct("!HIQH")  # port, capabilities, last seen, latency


class PexError(ValueError):
    """A PEX body that does not parse; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Entry:
    node_id: bytes
    host: str  # "" when the peer is shared by node id only
    port: int
    capabilities: int
    last_seen_ms: int
    latency_ms: int
    link_key: bytes


def encode_request(maximum: int = MAX_ENTRIES) -> bytes:
    return bytes([min(max(maximum, 1), MAX_ENTRIES)])


def decode_request(body: bytes) -> int:
    if len(body) != 1 or not 1 <= body[0] <= MAX_ENTRIES:
        raise PexError("malformed", "a request is one byte, 1-50")
    return body[0]


def encode_response(entries: list[Entry]) -> bytes:
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"at most {MAX_ENTRIES} entries")
    out = bytearray([len(entries)])
    for entry in entries:
        out += entry.node_id
        if entry.host:
            ip = ipaddress.ip_address(entry.host)
            out.append(ip.version)
            out += ip.packed
        else:
            out.append(0)
        out += _TAIL.pack(entry.port if entry.host else 0, entry.capabilities, entry.last_seen_ms,
                          min(entry.latency_ms, 0xFFFF))
        out += entry.link_key
    return bytes(out)


def decode_response(body: bytes) -> list[Entry]:
    if not body:
        raise PexError("malformed", "empty response")
    count = body[0]
    if count > MAX_ENTRIES:
        raise PexError("too_many", f"{count} entries is more than {MAX_ENTRIES}")
    offset = 1
    entries = []
    for _ in range(count):
        if offset + 33 > len(body):
            raise PexError("malformed", "entry truncated")
        node_id = body[offset : offset + 32]
        family = body[offset + 32]
        size = {0: 0, 4: 4, 6: 16}.get(family)
        if size is None:
            raise PexError("malformed", f"unknown address family {family}")
        offset += 33
        end = offset + size + _TAIL.size + 32
        if end > len(body):
            raise PexError("malformed", "entry truncated")
        host = str(ipaddress.ip_address(body[offset : offset + size])) if size else ""
        port, capabilities, last_seen, latency = _TAIL.unpack_from(body, offset + size)
        if not host and port:
            raise PexError("malformed", "a port without an address")
        link_key = body[end - 32 : end]
        entries.append(Entry(node_id, host, port, capabilities, last_seen, latency, link_key))
        offset = end
    if offset != len(body):
        raise PexError("malformed", "trailing bytes")
    return entries
