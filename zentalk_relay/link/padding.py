"""Record padding (capability PADDING): every record's plaintext is one of a few sizes.

Without it an observer of a link reads each record's length off the wire
(the TCP length prefix, the TLS record, the WebSocket message) and with it
the size of each message. With PADDING negotiated by both sides, a sender
pads each record after the handshake to the smallest bucket that holds it,
by appending one PADDING frame (type 0x7F, zero bytes); a receiver drops
PADDING frames. The observer learns a bucket, not a size.

Buckets are powers of four from 256 bytes to 16 KiB, where the sender's
packing of queued frames stops, then 32 KiB and the largest record for the
rare frame larger than that; and 2560, which holds one onion packet (an
ONION frame of 2051 bytes) with room for a few control frames, so that the
commonest record on a relay link is padded by a quarter, not doubled. A PADDING frame costs at least three bytes
(its length and type), so a record one or two bytes short of a bucket goes
to the next one; senders pack records at most ``PACK_LIMIT`` bytes so that
a full record still fits 16 KiB. A record one or two bytes short of the
largest possible one stays as it is (there is no larger bucket).
"""

from __future__ import annotations

import struct

from .frames import MAX_RECORD, FrameType

__all__ = ["BUCKETS", "MIN_PADDING", "PACK_LIMIT", "bucket_for", "pad"]

BUCKETS = (256, 1024, 2560, 4096, 16384, 32768, MAX_RECORD)
#: A PADDING frame's smallest size: length u16 and type.
MIN_PADDING = 3
#: What a padding sender packs into one record at most.
PACK_LIMIT = 16384 - MIN_PADDING
_HEAD = struct.Struct("!HB")
_ZEROS = bytes(MAX_RECORD)


def bucket_for(size: int) -> int:
    """The record size a plaintext of ``size`` bytes is padded to."""
    for bucket in BUCKETS:
        if size == bucket or bucket - size >= MIN_PADDING:
            return bucket
    if size <= MAX_RECORD:
        return size  # 1 or 2 bytes short of the largest record: no room for filler, and nothing to hide
    raise ValueError(f"a record of {size} bytes is larger than a record may be")


def pad(plaintext: bytes) -> bytes:
    """``plaintext`` with one PADDING frame appended, to exactly its bucket's size."""
    size = len(plaintext)
    bucket = bucket_for(size)
    if bucket == size:
        return plaintext
    filler = bucket - size - MIN_PADDING
    return b"".join((plaintext, _HEAD.pack(filler + 1, FrameType.PADDING), _ZEROS[:filler]))
