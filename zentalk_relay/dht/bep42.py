"""BEP 42 node ids: the id's first 21 bits are bound to the node's IP address.

``crc = CRC32C((ip & mask) | (r << 29))`` over the masked address (IPv4:
4 bytes, mask ``03 0f 3f ff``; IPv6: the first 8 bytes, mask
``01 03 07 0f 1f 3f 7f ff``, ``r << 61``), where ``r`` is the low 3 bits of
the id's last byte. The id's first 21 bits are the CRC's first 21 bits; the
other bits are random, and by convention the last byte is the random byte
``r`` was taken from.

Addresses in 10/8, 172.16/12, 192.168/16, 169.254/16 and 127/8 are exempt
(BEP 42); so are, here, IPv6 loopback, link-local (fe80::/10) and unique
local (fc00::/7) addresses, and unspecified ones.

CRC32C (Castagnoli) is computed here from a table: it only ever covers 4 or
8 bytes, so a dependency would buy nothing.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from enum import Enum

__all__ = ["Bep42Policy", "crc32c", "is_exempt", "node_id_for", "node_id_from", "node_id_matches"]

_V4_MASK = 0x030F3FFF
_V6_MASK = 0x0103070F1F3F7FFF


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class Bep42Policy(Enum):
    """What the routing table does with a node whose id does not match its IP."""

    OFF = "off"  # not checked
    FLAG = "flag"  # inserted, counted and marked (``secure`` False)
    ENFORCE = "enforce"  # refused


def _packed(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)


def _prefix_crc(packed: bytes, r: int) -> int:
    if len(packed) == 4:
        masked = (int.from_bytes(packed, "big") & _V4_MASK) | ((r & 7) << 29)
        return crc32c(masked.to_bytes(4, "big"))
    masked = (int.from_bytes(packed[:8], "big") & _V6_MASK) | ((r & 7) << 61)
    return crc32c(masked.to_bytes(8, "big"))


def node_id_from(ip: str, rand: int, middle: bytes) -> bytes:
    """The BEP 42 id for ``ip`` with random byte ``rand`` and 17 bytes ``middle``.

    ``middle[0]``'s low 3 bits fill byte 2 after the CRC's 5 bits; bytes 3-18
    are ``middle[1:]``; byte 19 is ``rand``.
    """
    if len(middle) != 17 or not 0 <= rand <= 255:
        raise ValueError("node_id_from needs 17 middle bytes and a byte")
    crc = _prefix_crc(_packed(ip), rand)
    return bytes(((crc >> 24) & 0xFF, (crc >> 16) & 0xFF, ((crc >> 8) & 0xF8) | (middle[0] & 7))) + middle[1:] + bytes(
        (rand,)
    )


def node_id_for(ip: str, rng: random.Random) -> bytes:
    """A fresh BEP 42 node id for our public address ``ip``."""
    return node_id_from(ip, rng.getrandbits(8), rng.randbytes(17))


def node_id_matches(node_id: bytes, ip: str) -> bool:
    """Whether ``node_id``'s first 21 bits are those BEP 42 derives from ``ip``."""
    if len(node_id) != 20:
        return False
    crc = _prefix_crc(_packed(ip), node_id[19])
    return (
        node_id[0] == (crc >> 24) & 0xFF
        and node_id[1] == (crc >> 16) & 0xFF
        and node_id[2] & 0xF8 == (crc >> 8) & 0xF8
    )


def _exempt_v4(packed: bytes) -> bool:
    first, second = packed[0], packed[1]
    return (
        first in (10, 127)
        or (first == 172 and 16 <= second <= 31)
        or (first == 192 and second == 168)
        or (first == 169 and second == 254)
    )


def is_exempt(ip: str) -> bool:
    """Local and private addresses, whose nodes may use any id."""
    if ":" not in ip:
        return _exempt_v4(socket.inet_pton(socket.AF_INET, ip))
    address = ipaddress.IPv6Address(ip)
    if address.ipv4_mapped is not None:
        return _exempt_v4(address.ipv4_mapped.packed)
    return address.is_loopback or address.is_link_local or address.is_private or address.is_unspecified
