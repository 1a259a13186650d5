"""The link frame codec: exact layouts, round trips, and refusals with their codes."""

import pytest

from zentalk_relay.link import frames
from zentalk_relay.link.frames import ErrorCode, FrameError

EXAMPLES = [
    frames.Hello(frames.Role.CLIENT, (0x0300, 0x0201), 0b100001, ("padding", "resume")),
    frames.HelloAck(frames.Role.RELAY, 0x0300, 1, ("resume",)),
    frames.AuthChallenge(bytes(range(32))),
    frames.AuthResponse(b"\x01" * 32, 1_700_000_000_000, b"\x02" * 64),
    frames.AuthOk(b"\x03" * 32),
    frames.Ping(1_700_000_000_000, b"\x04" * 8, 7),
    frames.Pong(1_700_000_000_000, b"\x04" * 8, 7, 1_700_000_000_042),
    frames.Close(ErrorCode.IDLE_TIMEOUT, "idle"),
    frames.Error(ErrorCode.RATE_LIMITED, "slow down"),
    frames.FlowControl(100, 500, frames.FlowReason.BUFFER_FULL, 250),
    frames.WindowUpdate(1000, 500),
    frames.Pex(1, b""),
    frames.Send(b"\x05" * 16, b"\x06" * 32, b"payload"),
    frames.Deliver(b"\x05" * 16, b"payload"),
    frames.Receipt(b"\x05" * 16, frames.ReceiptStatus.REFUSED, ErrorCode.UNKNOWN_RECIPIENT),
]


@pytest.mark.parametrize("frame", EXAMPLES, ids=lambda f: type(f).__name__)
def test_round_trip(frame):
    assert frames.decode(frames.encode(frame)) == frame


def test_fixed_type_numbers_from_the_network_spec():
    assert frames.encode(EXAMPLES[5])[0] == 0x06
    assert frames.encode(EXAMPLES[6])[0] == 0x07
    assert frames.encode(EXAMPLES[9])[0] == 0x10
    assert frames.encode(EXAMPLES[11])[0] == 0x20


def test_ping_and_pong_layouts_are_exact():
    ping = frames.encode(frames.Ping(0x0102030405060708, b"ABCDEFGH", 0x0A0B0C0D))
    assert ping == bytes.fromhex("06" "0102030405060708" "4142434445464748" "0a0b0c0d")
    assert len(ping) - 1 == 20
    pong = frames.encode(frames.Pong(1, b"ABCDEFGH", 2, 3))
    assert len(pong) - 1 == 28 and pong[-8:] == (3).to_bytes(8, "big")


def test_flow_control_layout():
    body = frames.encode(frames.FlowControl(1000, 5, 2, 1500))[1:]
    assert body == bytes.fromhex("000003e8" "00000005" "02" "000005dc")


def test_hello_layout():
    encoded = frames.encode(frames.Hello(frames.Role.CLIENT, (0x0300,), 0x21, ("pad",)))
    assert encoded == bytes.fromhex("01" "01" "01" "0300" "00000021" "01" "03") + b"pad"


@pytest.mark.parametrize(
    "data,code,detail",
    [
        (b"", ErrorCode.PROTOCOL_ERROR, "empty frame"),
        (b"\x7e", ErrorCode.PROTOCOL_ERROR, "unknown frame type 0x7e"),
        (b"\x06" + bytes(19), ErrorCode.PROTOCOL_ERROR, "PING body is 19 bytes, not 20"),
        (b"\x01\x09\x01\x03\x00" + bytes(5), ErrorCode.PROTOCOL_ERROR, "unknown role 9"),
        (b"\x01\x01\x00" + bytes(5), ErrorCode.PROTOCOL_ERROR, "HELLO lists 0 versions"),
        (b"\x01\x01\x01\x03\x00" + bytes(4) + b"\x01\x05ab", ErrorCode.PROTOCOL_ERROR, "bad feature name length"),
        (b"\x01\x01\x01\x03\x00" + bytes(4) + b"\x01\x02\xff\xfe", ErrorCode.PROTOCOL_ERROR, "not ASCII"),
        (b"\x01\x01\x01\x03\x00" + bytes(4) + b"\x00zz", ErrorCode.PROTOCOL_ERROR, "trailing bytes after HELLO"),
        (b"\x30" + bytes(47), ErrorCode.PROTOCOL_ERROR, "SEND body is 47 bytes, fewer than 48"),
        (b"\x08\x00", ErrorCode.PROTOCOL_ERROR, "CLOSE body is 1 bytes, fewer than 2"),
    ],
)
def test_malformed_frames_are_refused_with_a_code(data, code, detail):
    with pytest.raises(FrameError) as caught:
        frames.decode(data)
    assert caught.value.code == code and detail in caught.value.detail


def test_record_holds_several_frames():
    encoded = [frames.encode(f) for f in EXAMPLES]
    assert list(frames.split_record(frames.pack_record(encoded))) == encoded


@pytest.mark.parametrize(
    "record,code",
    [
        (b"", ErrorCode.PROTOCOL_ERROR),
        (b"\x00", ErrorCode.PROTOCOL_ERROR),
        (b"\x00\x00", ErrorCode.PROTOCOL_ERROR),
        (b"\x00\x05\x06", ErrorCode.PROTOCOL_ERROR),
        (b"\xff\xff" + bytes(10), ErrorCode.FRAME_TOO_LARGE),
    ],
)
def test_bad_records(record, code):
    with pytest.raises(FrameError) as caught:
        list(frames.split_record(record))
    assert caught.value.code == code


@pytest.mark.parametrize("reason", [b"\xff\xfe", b"x" * (frames.MAX_REASON + 1)], ids=["not-utf8", "too-long"])
def test_reasons_must_be_short_utf8_so_frames_reencode_exactly(reason):
    with pytest.raises(FrameError, match="reason"):
        frames.decode(b"\x08\x00\x01" + reason)


def test_long_reasons_are_cut_at_a_character_boundary():
    encoded = frames.encode(frames.Close(1, "é" * 200))
    assert len(encoded) - 3 <= frames.MAX_REASON
    assert frames.decode(encoded).reason == "é" * 128


def test_capability_mask_uses_spec_bit_numbers():
    assert frames.capability_mask(frames.Capability.RELAY, frames.Capability.PEX) == 0b100001
    assert frames.Capability.GROUPS == 10


# -- an initiator's usual second flight, read in one piece ------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

_FLIGHT = [frames.Hello(frames.Role.CLIENT, (0x0300,), 0b100001, ("padding",)),
           frames.AuthChallenge(bytes(range(32))),
           frames.AuthResponse(b"\x01" * 32, 1_700_000_000_000, b"\x02" * 64)]
_FLIGHT_RECORD = frames.pack_record([frames.encode(f) for f in _FLIGHT])


def _frame_by_frame(plaintext: bytes):
    """What a reader that goes frame by frame makes of a record: its frames, or the error."""
    try:
        return [frames.decode(raw) for raw in frames.split_record(plaintext)]
    except FrameError as error:
        return error.code


def test_the_usual_second_flight_is_read_in_one_piece():
    assert list(frames.initiator_flight(_FLIGHT_RECORD)) == _FLIGHT


@pytest.mark.parametrize("record", [
    frames.pack_record([frames.encode(f) for f in _FLIGHT[:2]]),  # no AUTH_RESPONSE (a client that waits)
    frames.pack_record([frames.encode(f) for f in (_FLIGHT[1], _FLIGHT[0], _FLIGHT[2])]),  # another order
    _FLIGHT_RECORD + frames.pack_record([frames.encode(frames.Padding(b""))]),  # more after it
    _FLIGHT_RECORD[:-1],
    b"",
])
def test_other_records_are_left_to_the_frame_by_frame_reader(record):
    assert frames.initiator_flight(record) is None


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_one_piece_and_frame_by_frame_agree_on_any_record(data):
    """initiator_flight reads exactly the records the general reader reads as HELLO, AUTH_CHALLENGE,
    AUTH_RESPONSE, and the same frames from them."""
    record = bytearray(_FLIGHT_RECORD)
    for _ in range(data.draw(st.integers(0, 4))):
        where = data.draw(st.integers(0, len(record) - 1))
        record[where] = data.draw(st.integers(0, 255))
    hello_body = data.draw(st.binary(max_size=80))
    choice = data.draw(st.sampled_from(["mutated", "hello body", "any"]))
    if choice == "hello body":
        record = bytearray(frames.pack_record([b"\x01" + hello_body, *[frames.encode(f) for f in _FLIGHT[1:]]]))
    elif choice == "any":
        record = bytearray(data.draw(st.binary(max_size=300)))
    one_piece = frames.initiator_flight(bytes(record))
    general = _frame_by_frame(bytes(record))
    usual = isinstance(general, list) and [type(f) for f in general] == [type(f) for f in _FLIGHT]
    assert (one_piece is not None) == usual
    if usual:
        assert list(one_piece) == general
