"""The Binding responder: what it answers, what it drops, and how it counts."""

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import VECTORS
from zentalk_relay.nat import stun
from zentalk_relay.nat.binding import DROP_REASONS, BindingResponder
from zentalk_relay.nat.stun import Attr, MessageClass, Method


def _request(attrs=(), fingerprint=True, tid=None):
    return stun.encode(Method.BINDING, MessageClass.REQUEST, tid or os.urandom(12), attrs, fingerprint=fingerprint)


@pytest.fixture
def responder():
    return BindingResponder("zentalk-relay test")


@pytest.mark.parametrize("fingerprint", [False, True], ids=["fast-path", "full-path"])
@pytest.mark.parametrize(
    "source,expected",
    [
        (("192.0.2.7", 40000), ("192.0.2.7", 40000)),
        (("2001:db8::7", 40001, 0, 0), ("2001:db8::7", 40001)),
        (("::ffff:192.0.2.9", 40002, 0, 0), ("192.0.2.9", 40002)),
        (("fe80::1%lo", 40003, 0, 1), ("fe80::1", 40003)),
    ],
)
def test_success_carries_xor_mapped_address_software_and_fingerprint(responder, source, expected, fingerprint):
    tid = os.urandom(12)
    reply = stun.decode(responder.respond(_request(fingerprint=fingerprint, tid=tid), source))
    assert (reply.method, reply.cls, reply.transaction_id) == (Method.BINDING, MessageClass.SUCCESS, tid)
    assert stun.decode_xor_address(reply.get(Attr.XOR_MAPPED_ADDRESS), tid) == expected
    assert reply.get(Attr.SOFTWARE) == b"zentalk-relay test"
    assert reply.get(Attr.MAPPED_ADDRESS) is None
    assert reply.attributes[-1].type == Attr.FINGERPRINT  # decode verified it
    assert responder.stats.request_counts()["binding", "success"] == 1


def test_no_software_attribute_when_empty():
    reply = stun.decode(BindingResponder("").respond(_request(fingerprint=False), ("192.0.2.1", 1)))
    assert reply.get(Attr.SOFTWARE) is None
    assert [a.type for a in reply.attributes] == [Attr.XOR_MAPPED_ADDRESS, Attr.FINGERPRINT]


def test_classic_rfc3489_request_gets_mapped_address_only(responder):
    tid16 = os.urandom(16)
    reply = stun.decode(responder.respond(_request(tid=tid16), ("192.0.2.1", 3000)))
    assert reply.classic and reply.transaction_id == tid16
    assert stun.decode_address(reply.get(Attr.MAPPED_ADDRESS)) == ("192.0.2.1", 3000)
    assert reply.get(Attr.XOR_MAPPED_ADDRESS) is None


def test_rfc5769_sample_request_is_answered(responder):
    vector = json.loads((VECTORS / "rfc5769_vectors.json").read_text())["vectors"][0]
    reply = stun.decode(responder.respond(bytes.fromhex(vector["hex"]), ("192.0.2.1", 3000)))
    assert reply.cls is MessageClass.SUCCESS
    assert reply.transaction_id.hex() == vector["transaction_id"]


def test_unknown_comprehension_required_attribute_gets_420(responder):
    reply = stun.decode(responder.respond(_request([(0x7F01, b"x"), (0xC001, b"y")]), ("192.0.2.1", 1)))
    assert reply.cls is MessageClass.ERROR
    assert stun.decode_error_code(reply.get(Attr.ERROR_CODE))[0] == 420
    assert reply.get(Attr.UNKNOWN_ATTRIBUTES) == b"\x7f\x01"
    assert responder.stats.requests["binding", "error"] == 1


def test_change_request_without_alternate_address_gets_420(responder):
    reply = stun.decode(responder.respond(_request([(Attr.CHANGE_REQUEST, b"\0\0\0\6")]), ("192.0.2.1", 1)))
    assert stun.decode_error_code(reply.get(Attr.ERROR_CODE))[0] == 420
    assert reply.get(Attr.UNKNOWN_ATTRIBUTES) == b"\x00\x03"


def test_unknown_attributes_echo_is_bounded(responder):
    attrs = [(0x7000 + i, b"") for i in range(40)]
    reply = stun.decode(responder.respond(_request(attrs), ("192.0.2.1", 1)))
    assert len(reply.get(Attr.UNKNOWN_ATTRIBUTES)) == 2 * 8


def test_other_method_request_gets_400(responder):
    data = stun.encode(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12))
    reply = stun.decode(responder.respond(data, ("192.0.2.1", 1)))
    assert (reply.method, reply.cls) == (Method.ALLOCATE, MessageClass.ERROR)
    assert stun.decode_error_code(reply.get(Attr.ERROR_CODE))[0] == 400
    assert responder.stats.requests["allocate", "error"] == 1


def test_indication_is_a_silent_keepalive(responder):
    data = stun.encode(Method.BINDING, MessageClass.INDICATION, os.urandom(12))
    assert responder.respond(data, ("192.0.2.1", 1)) is None
    assert responder.stats.requests["binding", "indication"] == 1


def test_responses_sent_to_us_are_dropped(responder):
    data = stun.encode(Method.BINDING, MessageClass.SUCCESS, os.urandom(12))
    assert responder.respond(data, ("192.0.2.1", 1)) is None
    assert responder.stats.dropped == {"unexpected_response": 1}


def test_garbage_is_dropped_and_counted_by_reason(responder):
    assert responder.respond(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", ("192.0.2.1", 1)) is None
    assert responder.respond(b"\x00", ("192.0.2.1", 1)) is None
    assert responder.respond(_request()[:-4], ("192.0.2.1", 1)) is None
    assert dict(responder.stats.dropped) == {"not_stun": 1, "truncated": 1, "bad_length": 1}
    assert not responder.stats.requests


def test_answer_to_a_plain_request_is_byte_identical_on_both_paths(responder):
    """The fast path must build exactly what the full codec would."""
    tid = os.urandom(12)
    fast = responder.respond(_request(fingerprint=False, tid=tid), ("198.51.100.4", 5000))
    full = stun.encode(Method.BINDING, MessageClass.SUCCESS, tid, [
        (Attr.XOR_MAPPED_ADDRESS, stun.encode_xor_address("198.51.100.4", 5000, tid)),
        (Attr.SOFTWARE, b"zentalk-relay test"),
    ])
    assert fast == full


@settings(max_examples=1000)
@given(data=st.binary(max_size=300), v6=st.booleans())
def test_random_datagrams_never_raise_and_are_all_accounted_for(data, v6):
    responder = BindingResponder("x")
    source = ("2001:db8::1", 9, 0, 0) if v6 else ("192.0.2.1", 9)
    reply = responder.respond(data, source)
    if reply is not None:
        stun.decode(reply)
    handled = sum(responder.stats.request_counts().values()) + sum(responder.stats.dropped.values())
    assert handled == 1
    assert set(responder.stats.dropped) <= set(DROP_REASONS)


@settings(max_examples=500)
@given(flips=st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_requests_never_raise(flips):
    responder = BindingResponder("x")
    data = bytearray(_request([(Attr.SOFTWARE, b"client"), (Attr.PRIORITY, b"\0\0\0\1")]))
    for index, value in flips:
        if index < len(data):
            data[index] = value
    reply = responder.respond(bytes(data), ("192.0.2.1", 9))
    if reply is not None:
        stun.decode(reply)
