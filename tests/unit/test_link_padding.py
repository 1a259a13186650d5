"""Record padding: buckets, the PADDING frame, and what a padded link puts on the wire."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.linkpair import Pair
from zentalk_relay.link import frames
from zentalk_relay.link.frames import Capability, Deliver, Onion, Send, capability_mask
from zentalk_relay.link.padding import BUCKETS, MIN_PADDING, PACK_LIMIT, RECORD_OVERHEAD, bucket_for, pad, split
from zentalk_relay.link.session import Carrier, LinkSettings, Received, Sends

PADDED = LinkSettings(capabilities=capability_mask(Capability.PADDING))
TAG = 16


@given(st.integers(1, frames.MAX_RECORD))
def test_every_size_has_a_bucket_that_holds_it_and_a_padding_frame(size):
    bucket = bucket_for(size)
    if size > frames.MAX_RECORD - MIN_PADDING and size != frames.MAX_RECORD:
        assert bucket == size  # no room for filler below the largest record
        return
    assert bucket in BUCKETS and (bucket == size or bucket - size >= MIN_PADDING)
    assert all(not (b >= size and (b == size or b - size >= MIN_PADDING)) for b in BUCKETS if b < bucket)


@given(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=8))
def test_a_padded_record_has_its_bucket_size_and_the_same_frames_then_filler(bodies):
    encoded = [frames.encode(Deliver(b"\x01" * 16, body)) for body in bodies]
    plaintext = frames.pack_record(encoded)
    padded = pad(plaintext)
    assert len(padded) == bucket_for(len(plaintext))
    split = list(frames.split_record(padded))
    assert split[: len(encoded)] == encoded
    assert all(isinstance(frames.decode(raw), frames.Padding) for raw in split[len(encoded):])
    assert len(split) - len(encoded) <= 1


def test_a_full_record_fits_16_kib():
    assert bucket_for(PACK_LIMIT) == 16384 and bucket_for(16384) == 16384 and bucket_for(16383) == 32768


def _record_sizes(data: bytes) -> list[int]:
    """The Noise messages in a TCP byte stream, by size (each is u16 length, then the message)."""
    sizes, offset = [], 0
    while offset < len(data):
        (size,) = struct.unpack_from("!H", data, offset)
        sizes.append(size)
        offset += 2 + size
    assert offset == len(data)
    return sizes


class _Tap:
    """Everything one side writes, kept as it goes through the pair."""

    def __init__(self, connection):
        self.written = b""
        pull = connection.pull

        def tapped(now):
            units = pull(now)
            self.written += b"".join(units)
            return units

        connection.pull = tapped


@pytest.mark.parametrize("padded", [True, False])
def test_after_the_handshake_a_padded_link_writes_only_bucket_sizes(padded):
    settings = PADDED if padded else LinkSettings()
    pair = Pair(initiator_settings=settings, responder_settings=PADDED, batch_sends=True)
    relay, client = _Tap(pair.responder), _Tap(pair.initiator)
    pair.pump()
    handshake = len(_record_sizes(relay.written)), len(_record_sizes(client.written))
    for size in (0, 1, 100, 1000, 5000, 20000):
        pair.initiator.send(Send(bytes(16), b"\x02" * 32, b"x" * size), pair.now)
        pair.responder.send(Deliver(bytes(16), b"y" * size), pair.now)
        pair.pump()
    pair.initiator.send(Onion(bytes(2048)), pair.now)
    pair.pump()
    after = _record_sizes(relay.written)[handshake[0]:] + _record_sizes(client.written)[handshake[1] + 1:]
    wire = {size - TAG for size in after}
    if padded:
        assert wire <= set(BUCKETS), sorted(wire)
    else:
        assert not wire <= set(BUCKETS)
    received = [e for e in pair.events["responder"] if isinstance(e, (Received, Sends))]
    assert len(received) == 7  # the frames arrive, and nothing of the filler does


def test_real_and_cover_onion_packets_are_the_same_on_a_padded_link():
    from zentalk_relay.relay import delivery, onion
    from zentalk_relay.relay.cover import client_loop_packet
    from nacl.public import PrivateKey

    key = bytes(PrivateKey.generate().public_key)
    real = onion.build_packet([onion.Hop(key, onion.Instruction.DELIVER, b"\x03" * 32)],
                              delivery.encode(bytes(16), b"hello", onion.MAX_PAYLOAD))
    _, cover = client_loop_packet([(b"\x04" * 32, key)], b"\x05" * 32, 300)
    pair = Pair(initiator_settings=PADDED, responder_settings=PADDED)
    client = _Tap(pair.initiator)
    pair.pump()
    before = len(_record_sizes(client.written))
    pair.initiator.send(Onion(real), pair.now)
    pair.pump()
    pair.initiator.send(Onion(cover), pair.now)
    pair.pump()
    sizes = _record_sizes(client.written)[before:]
    assert len(sizes) == 2 and sizes[0] == sizes[1] == 2560 + TAG


def test_padding_before_active_is_dropped_not_refused():
    pair = Pair(initiator_settings=PADDED, responder_settings=PADDED)
    pair.pump()
    assert pair.initiator.capabilities & capability_mask(Capability.PADDING)
    assert not [e for e in pair.events["initiator"] if type(e).__name__ == "Closing"]


def test_tls_carrier_records_are_padded_too():
    pair = Pair(carrier=Carrier.TLS_STREAM, initiator_settings=PADDED, responder_settings=PADDED)
    relay = _Tap(pair.responder)
    pair.pump()
    done = len(_record_sizes(relay.written))
    pair.responder.send(Deliver(bytes(16), b"z" * 777), pair.now)
    pair.pump()
    assert _record_sizes(relay.written)[done:] == [1024]


def _frame(size: int) -> bytes:
    """A length-prefixed frame of ``size`` bytes (type and body)."""
    return struct.pack("!H", size) + bytes([frames.FrameType.PADDING]) + bytes(size - 1)


def _wire(pieces: list[bytes]) -> int:
    return sum(bucket_for(len(p)) + RECORD_OVERHEAD for p in pieces)


@pytest.mark.parametrize("sizes, expected", [
    ([2049, 2049], [2051, 2051]),  # two onion packets: two 2,560 records, not one of 16 KiB
    ([1041] * 4, [2086, 2086]),  # four 1 KiB DELIVERs: 2 x 2,560 (5,156 B) instead of 16,402
    ([1041] * 3, [3129]),  # 3,129 fits 4,096: nothing to gain
    ([1041] * 15, [15645]),  # a full record: left alone
    ([20] * 300, [4092, 2508]),  # small frames: a 4,096 and a 2,560 record instead of 16 KiB
])
def test_a_record_is_split_where_smaller_buckets_cost_fewer_bytes(sizes, expected):
    plaintext = b"".join(_frame(size) for size in sizes)
    pieces = split(plaintext)
    assert [len(p) for p in pieces] == expected
    assert b"".join(pieces) == plaintext


@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=40))
def test_splitting_keeps_every_frame_whole_in_order_and_never_costs_more(sizes):
    plaintext = b"".join(_frame(size) for size in sizes)[:65517]
    plaintext = plaintext[:max(i for i in _ends(plaintext) if i <= 65517)]
    pieces = split(plaintext)
    assert b"".join(pieces) == plaintext
    for piece in pieces:
        assert piece and list(frames.split_record(piece))  # whole frames only
    if len(plaintext) <= 65519 - MIN_PADDING:
        assert _wire(pieces) <= bucket_for(len(plaintext)) + RECORD_OVERHEAD


def _ends(plaintext: bytes) -> list[int]:
    ends, offset = [0], 0
    while offset < len(plaintext):
        offset += 2 + struct.unpack_from("!H", plaintext, offset)[0]
        if offset <= len(plaintext):
            ends.append(offset)
    return ends


def test_two_onion_packets_sent_together_leave_as_two_2560_byte_records():
    pair = Pair(initiator_settings=PADDED, responder_settings=PADDED)
    client = _Tap(pair.initiator)
    pair.pump()
    before = len(_record_sizes(client.written))
    pair.initiator.send(Onion(bytes(2048)), pair.now)
    pair.initiator.send(Onion(bytes(2048)), pair.now)
    pair.pump()
    assert _record_sizes(client.written)[before:] == [2560 + TAG, 2560 + TAG]
    assert len([e for e in pair.events["responder"] if isinstance(e, Received)]) == 2


def test_the_worked_example_of_docs_protocol():
    record = frames.pack_record([frames.encode(frames.Receipt(bytes(range(16)), 0, 0))])
    padded = pad(record)
    assert record.hex() == "0014" + "32" + bytes(range(16)).hex() + "00" + "0000"
    assert padded[len(record):] == bytes.fromhex("00e87f") + bytes(231) and len(padded) == 256
