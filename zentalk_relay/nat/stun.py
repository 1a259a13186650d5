"""STUN messages (RFC 8489), sans-IO.

Bytes in, a frozen :class:`Message` out; a method, class, transaction id and
attribute list in, bytes out. Attribute values stay raw bytes with their
offsets so that MESSAGE-INTEGRITY and FINGERPRINT are checked over the bytes
as received (RFC 5769's vectors pad with spaces, so re-encoding would break
them). Value codecs for the attributes that carry structure live here too,
so that the Binding responder and TURN share one implementation.

A peer's garbage raises :class:`StunError` and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import stringprep
import struct
import unicodedata
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Iterable

MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
FINGERPRINT_XOR = 0x5354554E
HEADER_SIZE = 20
#: The largest message the codec accepts: a UDP datagram never exceeds it,
#: and a TCP-framed peer cannot make us hold more.
MAX_MESSAGE_SIZE = 65535 + HEADER_SIZE
#: More attributes than this in one message is hostile, not useful.
MAX_ATTRIBUTES = 64

_HEADER = struct.Struct("!HHI12s")
_ATTR_HEADER = struct.Struct("!HH")


class Method(IntEnum):
    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class MessageClass(IntEnum):
    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Attr(IntEnum):
    # comprehension-required (0x0000-0x7FFF)
    MAPPED_ADDRESS = 0x0001
    CHANGE_REQUEST = 0x0003  # RFC 5780
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    PRIORITY = 0x0024  # RFC 8445
    USE_CANDIDATE = 0x0025  # RFC 8445
    PADDING = 0x0026  # RFC 5780
    RESPONSE_PORT = 0x0027  # RFC 5780
    # comprehension-optional (0x8000-0xFFFF)
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    ICMP = 0x8004
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029  # RFC 8445
    ICE_CONTROLLING = 0x802A  # RFC 8445
    RESPONSE_ORIGIN = 0x802B  # RFC 5780
    OTHER_ADDRESS = 0x802C  # RFC 5780


#: Every attribute type this codec knows by name; a comprehension-required
#: type outside this set earns a 420 from a server.
KNOWN_ATTRIBUTES = frozenset(int(a) for a in Attr)


#: Every ``StunError.reason`` that :func:`decode` raises, for metric labels.
DECODE_ERRORS = ("truncated", "too_large", "not_stun", "bad_length", "bad_fingerprint", "too_many_attributes")


class StunError(Exception):
    """The peer sent something that is not a well-formed STUN message.

    ``reason`` is a short, fixed token fit for a metric label.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Attribute:
    type: int
    value: bytes
    #: Offset of the attribute's 4-byte header within the message.
    offset: int


@dataclass(frozen=True, slots=True)
class Message:
    method: int
    cls: MessageClass
    #: 12 bytes; for an RFC 3489 message, the 16 bytes after the length.
    transaction_id: bytes
    attributes: tuple[Attribute, ...] = ()
    #: True for an RFC 3489 message, which has no magic cookie.
    classic: bool = False
    raw: bytes = field(default=b"", repr=False, compare=False)

    def find(self, attr_type: int) -> Attribute | None:
        """The first attribute of a type; RFC 8489 says later duplicates are ignored."""
        for attribute in self.attributes:
            if attribute.type == attr_type:
                return attribute
        return None

    def get(self, attr_type: int) -> bytes | None:
        attribute = self.find(attr_type)
        return None if attribute is None else attribute.value

    def unknown_required(self) -> list[int]:
        """Comprehension-required attribute types this codec does not know."""
        seen: list[int] = []
        for attribute in self.attributes:
            t = attribute.type
            if t < 0x8000 and t not in KNOWN_ATTRIBUTES and t not in seen:
                seen.append(t)
        return seen


def message_type(method: int, cls: int) -> int:
    """Interleave the 12 method bits with the 2 class bits (RFC 8489 section 5)."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 0b01) << 4)
        | ((cls & 0b10) << 7)
    )


def split_message_type(value: int) -> tuple[int, MessageClass]:
    method = (value & 0x000F) | ((value & 0x00E0) >> 1) | ((value & 0x3E00) >> 2)
    cls = ((value & 0x0010) >> 4) | ((value & 0x0100) >> 7)
    return method, MessageClass(cls)


def _padded(length: int) -> int:
    return (length + 3) & ~3


def decode(data: bytes) -> Message:
    """Parse one STUN message that fills ``data`` exactly.

    FINGERPRINT, when present, must be the last attribute and must match.
    MESSAGE-INTEGRITY is not checked here: that needs a key, see
    :func:`check_integrity`.
    """
    size = len(data)
    if size < HEADER_SIZE:
        raise StunError("truncated", f"{size} bytes is shorter than a header")
    if size > MAX_MESSAGE_SIZE:
        raise StunError("too_large", f"{size} bytes")
    mtype, length, cookie, tid = _HEADER.unpack_from(data)
    if mtype & 0xC000:
        raise StunError("not_stun", "the two leading bits are not zero")
    if length & 3:
        raise StunError("bad_length", "message length is not a multiple of 4")
    if length + HEADER_SIZE != size:
        raise StunError("bad_length", f"header says {length} bytes of attributes, got {size - HEADER_SIZE}")
    classic = cookie != MAGIC_COOKIE
    method, cls = split_message_type(mtype)
    transaction_id = data[4:20] if classic else tid

    attributes: list[Attribute] = []
    offset = HEADER_SIZE
    while offset < size:
        if len(attributes) >= MAX_ATTRIBUTES:
            raise StunError("too_many_attributes", f"more than {MAX_ATTRIBUTES}")
        if offset + 4 > size:
            raise StunError("truncated", "attribute header runs past the end")
        atype, alen = _ATTR_HEADER.unpack_from(data, offset)
        end = offset + 4 + alen
        if end > size:
            raise StunError("truncated", f"attribute 0x{atype:04x} runs past the end")
        if atype == Attr.FINGERPRINT:
            if end != size or alen != 4:
                raise StunError("bad_fingerprint", "FINGERPRINT is not a last 4-byte attribute")
            (received,) = struct.unpack_from("!I", data, offset + 4)
            expected = _crc_with_length(data, offset) ^ FINGERPRINT_XOR
            if received != expected:
                raise StunError("bad_fingerprint", "FINGERPRINT does not match")
        attributes.append(Attribute(atype, data[offset + 4 : end], offset))
        offset += 4 + _padded(alen)
    if offset != size:
        raise StunError("truncated", "padding runs past the end")
    return Message(method, cls, transaction_id, tuple(attributes), classic, data)


def _crc_with_length(data: bytes, end: int) -> int:
    """CRC-32 over ``data[:end]`` as if the message ended after an 8-byte FINGERPRINT."""
    header = data[:2] + struct.pack("!H", end + 8 - HEADER_SIZE)
    return zlib.crc32(data[4:end], zlib.crc32(header)) & 0xFFFFFFFF


def _hmac_input(data: bytes, end: int, mac_size: int) -> bytes:
    """The bytes a MESSAGE-INTEGRITY at offset ``end`` covers (RFC 8489 14.5)."""
    return data[:2] + struct.pack("!H", end + 4 + mac_size - HEADER_SIZE) + data[4:end]


def check_integrity(message: Message, key: bytes) -> bool:
    """Check MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY.

    False when neither is present or the MAC does not match.
    """
    sha256 = message.find(Attr.MESSAGE_INTEGRITY_SHA256)
    if sha256 is not None:
        if not 16 <= len(sha256.value) <= 32 or len(sha256.value) % 4:
            return False
        mac = hmac.new(key, _hmac_input(message.raw, sha256.offset, len(sha256.value)), hashlib.sha256)
        return hmac.compare_digest(mac.digest()[: len(sha256.value)], sha256.value)
    sha1 = message.find(Attr.MESSAGE_INTEGRITY)
    if sha1 is None or len(sha1.value) != 20:
        return False
    mac = hmac.new(key, _hmac_input(message.raw, sha1.offset, 20), hashlib.sha1)
    return hmac.compare_digest(mac.digest(), sha1.value)


def encode(
    method: int,
    cls: int,
    transaction_id: bytes,
    attributes: Iterable[tuple[int, bytes]] = (),
    *,
    integrity_key: bytes | None = None,
    integrity_sha256: bool = False,
    fingerprint: bool = True,
) -> bytes:
    """Build a message; padding is zeros.

    With ``integrity_key``, MESSAGE-INTEGRITY (or -SHA256) follows the given
    attributes, and FINGERPRINT, when asked for, comes last.
    A 16-byte ``transaction_id`` builds an RFC 3489 message (no cookie, no
    FINGERPRINT).
    """
    body = bytearray()
    for atype, value in attributes:
        body += _ATTR_HEADER.pack(atype, len(value))
        body += value
        body += b"\x00" * (_padded(len(value)) - len(value))
    if len(transaction_id) == 16:
        prefix = transaction_id
        fingerprint = False
    elif len(transaction_id) == 12:
        prefix = MAGIC_COOKIE_BYTES + transaction_id
    else:
        raise ValueError("transaction id must be 12 bytes (or 16 for RFC 3489)")
    mtype = struct.pack("!H", message_type(method, cls))
    if integrity_key is not None:
        mac_type, mac_size, digest = (
            (Attr.MESSAGE_INTEGRITY_SHA256, 32, hashlib.sha256)
            if integrity_sha256
            else (Attr.MESSAGE_INTEGRITY, 20, hashlib.sha1)
        )
        covered = mtype + struct.pack("!H", len(body) + 4 + mac_size) + prefix + body
        body += _ATTR_HEADER.pack(mac_type, mac_size)
        body += hmac.new(integrity_key, covered, digest).digest()
    if fingerprint:
        head = mtype + struct.pack("!H", len(body) + 8) + prefix
        crc = zlib.crc32(bytes(body), zlib.crc32(head)) & 0xFFFFFFFF
        body += _ATTR_HEADER.pack(Attr.FINGERPRINT, 4) + struct.pack("!I", crc ^ FINGERPRINT_XOR)
    return mtype + struct.pack("!H", len(body)) + prefix + bytes(body)


# -- attribute value codecs -------------------------------------------------

FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02


def encode_address(host: str, port: int) -> bytes:
    """MAPPED-ADDRESS, OTHER-ADDRESS, RESPONSE-ORIGIN, ALTERNATE-SERVER."""
    if ":" in host:
        return struct.pack("!BBH", 0, FAMILY_IPV6, port) + socket.inet_pton(socket.AF_INET6, host)
    return struct.pack("!BBH", 0, FAMILY_IPV4, port) + socket.inet_aton(host)


def decode_address(value: bytes) -> tuple[str, int]:
    if len(value) < 4:
        raise StunError("bad_attribute", "address attribute too short")
    _, family, port = struct.unpack_from("!BBH", value)
    if family == FAMILY_IPV4 and len(value) == 8:
        return socket.inet_ntop(socket.AF_INET, value[4:8]), port
    if family == FAMILY_IPV6 and len(value) == 20:
        return str(ipaddress.IPv6Address(value[4:20])), port
    raise StunError("bad_attribute", f"address family {family} with {len(value)} bytes")


def _xor_mask(transaction_id: bytes) -> bytes:
    return MAGIC_COOKIE_BYTES + transaction_id


def encode_xor_address(host: str, port: int, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS."""
    xport = port ^ (MAGIC_COOKIE >> 16)
    if ":" in host:
        raw = socket.inet_pton(socket.AF_INET6, host)
        mask = _xor_mask(transaction_id)
        return struct.pack("!BBH", 0, FAMILY_IPV6, xport) + bytes(a ^ b for a, b in zip(raw, mask))
    (ip,) = struct.unpack("!I", socket.inet_aton(host))
    return struct.pack("!BBHI", 0, FAMILY_IPV4, xport, ip ^ MAGIC_COOKIE)


def decode_xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    host, xport = decode_address(value)
    port = xport ^ (MAGIC_COOKIE >> 16)
    if value[1] == FAMILY_IPV4:
        (ip,) = struct.unpack_from("!I", value, 4)
        return socket.inet_ntoa(struct.pack("!I", ip ^ MAGIC_COOKIE)), port
    mask = _xor_mask(transaction_id)
    raw = bytes(a ^ b for a, b in zip(value[4:20], mask))
    return str(ipaddress.IPv6Address(raw)), port


def encode_error_code(code: int, reason: str) -> bytes:
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")


def decode_error_code(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise StunError("bad_attribute", "ERROR-CODE too short")
    _, klass, number = struct.unpack_from("!HBB", value)
    if not 3 <= klass & 0x07 <= 6 or number > 99:
        raise StunError("bad_attribute", "ERROR-CODE out of range")
    return (klass & 0x07) * 100 + number, value[4:].decode("utf-8", "replace")


def encode_unknown_attributes(types: Iterable[int]) -> bytes:
    return b"".join(struct.pack("!H", t) for t in types)


def decode_u32(value: bytes) -> int:
    if len(value) != 4:
        raise StunError("bad_attribute", f"expected 4 bytes, got {len(value)}")
    return struct.unpack("!I", value)[0]


# -- long-term credentials --------------------------------------------------


def saslprep(text: str) -> str:
    """SASLprep (RFC 4013), the profile RFC 5389 and RFC 5769 use for passwords.

    RFC 8489 moved to OpaqueString (RFC 8265), which agrees on every string
    an operator is likely to choose; SASLprep is kept because the published
    test vector depends on its mapping of soft hyphens and compatibility
    characters.
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in text
        if not stringprep.in_table_b1(ch)
    )
    normal = unicodedata.normalize("NFKC", mapped)
    for ch in normal:
        if (
            stringprep.in_table_c12(ch)
            or stringprep.in_table_c21(ch)
            or stringprep.in_table_c22(ch)
            or stringprep.in_table_c3(ch)
            or stringprep.in_table_c4(ch)
            or stringprep.in_table_c5(ch)
            or stringprep.in_table_c6(ch)
            or stringprep.in_table_c7(ch)
            or stringprep.in_table_c8(ch)
            or stringprep.in_table_c9(ch)
            or stringprep.in_table_a1(ch)
        ):
            raise ValueError(f"character U+{ord(ch):04X} is prohibited by SASLprep")
    if any(stringprep.in_table_d1(ch) for ch in normal):
        if any(stringprep.in_table_d2(ch) for ch in normal):
            raise ValueError("mixed bidirectional text is prohibited by SASLprep")
        if not (stringprep.in_table_d1(normal[0]) and stringprep.in_table_d1(normal[-1])):
            raise ValueError("right-to-left text must start and end with a right-to-left character")
    return normal


def long_term_key(username: str, realm: str, password: str, algorithm: str = "md5") -> bytes:
    """The long-term credential key (RFC 8489 section 9.2.2)."""
    material = f"{username}:{saslprep(realm)}:{saslprep(password)}".encode("utf-8")
    if algorithm == "md5":
        return hashlib.md5(material).digest()
    if algorithm == "sha256":
        return hashlib.sha256(material).digest()
    raise ValueError(f"unknown password algorithm {algorithm!r}")


def userhash(username: str, realm: str) -> bytes:
    """USERHASH (RFC 8489 section 14.4)."""
    return hashlib.sha256(f"{username}:{realm}".encode("utf-8")).digest()
