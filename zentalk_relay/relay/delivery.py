"""What an onion packet's payload carries to its last hop, sans-IO.

``length u16 ‖ message id (16) ‖ body ‖ zero padding`` up to the packet's
fixed payload size; ``length`` counts the message id and the body.
"""

from __future__ import annotations

import struct

_LENGTH = struct.Struct("!H")
MESSAGE_ID_SIZE = 16


class DeliveryError(ValueError):
    """A payload that does not hold a message."""


def encode(message_id: bytes, body: bytes, size: int) -> bytes:
    if len(message_id) != MESSAGE_ID_SIZE:
        raise ValueError("a message id is 16 bytes")
    content = message_id + body
    if len(content) + 2 > size:
        raise ValueError(f"a body of {len(body)} bytes does not fit a {size}-byte payload")
    return (_LENGTH.pack(len(content)) + content).ljust(size, b"\x00")


def decode(payload: bytes) -> tuple[bytes, bytes]:
    if len(payload) < 2 + MESSAGE_ID_SIZE:
        raise DeliveryError("payload too short")
    (length,) = _LENGTH.unpack_from(payload)
    if length < MESSAGE_ID_SIZE or 2 + length > len(payload):
        raise DeliveryError("bad content length")
    content = payload[2 : 2 + length]
    return content[:MESSAGE_ID_SIZE], content[MESSAGE_ID_SIZE:]


def max_body(size: int) -> int:
    return size - 2 - MESSAGE_ID_SIZE
