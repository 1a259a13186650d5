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

__all__ = ["BUCKETS", "MIN_PADDING", "PACK_LIMIT", "bucket_for", "pad", "split"]

BUCKETS = (256, 1024, 2560, 4096, 16384, 32768, MAX_RECORD)
#: A PADDING frame's smallest size: length u16 and type.
MIN_PADDING = 3
#: What a padding sender packs into one record at most.
PACK_LIMIT = 16384 - MIN_PADDING
_HEAD = struct.Struct("!HB")
_FRAME_LENGTH = struct.Struct("!H").unpack_from
#: A record's bytes on the wire besides its padded plaintext: its length and its AEAD tag.
RECORD_OVERHEAD = 2 + 16
#: The content limits of the 4,096 and 2,560 buckets, the smaller records a record may be split into.
_SPLIT_LIMITS = (4096 - MIN_PADDING, 2560 - MIN_PADDING)
#: Content that fits 4,096 is not split; above six 2,560 records' worth no split beats one 16 KiB record.
_SPLIT_ABOVE, _SPLIT_UP_TO = _SPLIT_LIMITS[0], 6 * _SPLIT_LIMITS[1]
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


def split(plaintext: bytes) -> list[bytes]:
    """A record's plaintext (whole frames) as one record or several, whichever is fewer bytes padded.

    Content a little over 4 KiB pads to 16 KiB: two onion packets sent
    together would take 16,402 bytes on the wire where two records of one take
    5,156. Between 4 and about 15 KiB this tries records of at most 4,093 and
    of at most 2,557 bytes (packed in order, cut only between frames) and
    keeps the cheapest way, the single record when nothing is cheaper. A full
    record, the common case under load, is left alone without a look.
    """
    size = len(plaintext)
    if size <= _SPLIT_ABOVE or size > _SPLIT_UP_TO:
        return [plaintext]
    ends = []
    offset = 0
    while offset < size:
        offset += 2 + _FRAME_LENGTH(plaintext, offset)[0]
        ends.append(offset)
    best_cost, best = bucket_for(size) + RECORD_OVERHEAD, None
    for limit in _SPLIT_LIMITS:
        bounds = [0]
        previous = 0
        for end in ends:
            if end - bounds[-1] > limit and previous > bounds[-1]:
                bounds.append(previous)
            previous = end
        bounds.append(size)
        cost = sum(bucket_for(b - a) + RECORD_OVERHEAD for a, b in zip(bounds, bounds[1:]))
        if cost < best_cost:
            best_cost, best = cost, bounds
    if best is None:
        return [plaintext]
    return [plaintext[a:b] for a, b in zip(best, best[1:])]
