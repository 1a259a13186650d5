"""The STUN codec against RFC 5769 / RFC 8489 vectors, round trips and hostile bytes."""

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import VECTORS
from zentalk_relay.nat import stun
from zentalk_relay.nat.stun import Attr, MessageClass, Method, StunError

# RFC 5769 section 2 and RFC 8489 Appendix B.1 (with erratum 6268).
_VECTORS = {v["name"]: v for v in json.loads((VECTORS / "rfc5769_vectors.json").read_text())["vectors"]}


def _vector(prefix):
    (vector,) = [v for name, v in _VECTORS.items() if name.startswith(prefix)]
    return vector, bytes.fromhex(vector["hex"])


def _key(vector):
    if vector["credential"] == "short-term":
        return vector["password"].encode()
    if vector["credential"] == "long-term":
        return stun.long_term_key(vector["username"], vector["realm"], vector["password_before_saslprep"])
    return stun.long_term_key(vector["username"], vector["realm"], vector["password"], "sha256")


@pytest.mark.parametrize("name", sorted(_VECTORS))
def test_vector_decodes_with_expected_layout(name):
    vector = _VECTORS[name]
    message = stun.decode(bytes.fromhex(vector["hex"]))
    assert stun.message_type(message.method, message.cls) == int(vector["message_type"], 16)
    assert message.transaction_id.hex() == vector["transaction_id"]
    assert [f"0x{a.type:04x}" for a in message.attributes] == vector["attributes"]
    assert not message.classic


@pytest.mark.parametrize("name", sorted(_VECTORS))
def test_vector_integrity_checks_over_received_bytes(name):
    vector = _VECTORS[name]
    message = stun.decode(bytes.fromhex(vector["hex"]))
    assert stun.check_integrity(message, _key(vector))
    assert not stun.check_integrity(message, b"wrong key")


def test_long_term_keys_match_published_values():
    md5, _ = _vector("rfc5769_2.4")
    assert _key(md5).hex() == md5["long_term_key_md5"]
    sha, _ = _vector("rfc8489_B.1")
    assert _key(sha).hex() == sha["long_term_key_sha256"]


def test_saslprep_maps_the_rfc5769_password():
    vector, _ = _vector("rfc5769_2.4")
    assert stun.saslprep(vector["password_before_saslprep"]) == "TheMatrIX"
    with pytest.raises(ValueError):
        stun.saslprep("bad\u0007control")


def test_userhash_matches_rfc8489():
    vector, data = _vector("rfc8489_B.1")
    assert stun.userhash(vector["username"], vector["realm"]).hex() == vector["expected"]["userhash"]
    assert stun.decode(data).get(Attr.USERHASH).hex() == vector["expected"]["userhash"]


@pytest.mark.parametrize("prefix", ["rfc5769_2.2", "rfc5769_2.3"])
def test_vector_xor_mapped_address(prefix):
    vector, data = _vector(prefix)
    message = stun.decode(data)
    host, port = stun.decode_xor_address(message.get(Attr.XOR_MAPPED_ADDRESS), message.transaction_id)
    assert (host, port) == (vector["expected"]["xor_mapped_address"], vector["expected"]["xor_mapped_port"])
    # and the encoder produces the published bytes
    assert stun.encode_xor_address(host, port, message.transaction_id) == message.get(Attr.XOR_MAPPED_ADDRESS)


def test_software_padding_is_spaces_in_the_vector_and_still_verifies():
    _, data = _vector("rfc5769_2.1")
    message = stun.decode(data)
    software = message.find(Attr.SOFTWARE)
    assert message.get(Attr.SOFTWARE) == b"STUN test client"
    username = message.find(Attr.USERNAME)
    pad_start = username.offset + 4 + len(username.value)
    assert data[pad_start:pad_start + 3] == b"   "
    assert software.offset == 20


@pytest.mark.parametrize("name", sorted(_VECTORS))
def test_every_flipped_byte_breaks_integrity_or_parsing(name):
    vector = _VECTORS[name]
    data = bytes.fromhex(vector["hex"])
    key = _key(vector)
    message = stun.decode(data)
    mac = message.find(Attr.MESSAGE_INTEGRITY_SHA256) or message.find(Attr.MESSAGE_INTEGRITY)
    covered_end = mac.offset + 4 + len(mac.value)
    for index in range(covered_end):
        tampered = bytearray(data)
        tampered[index] ^= 0x01
        try:
            decoded = stun.decode(bytes(tampered))
        except StunError:
            continue
        assert not stun.check_integrity(decoded, key), f"flip at byte {index} went unnoticed"


def test_flipped_fingerprint_is_refused():
    _, data = _vector("rfc5769_2.2")
    tampered = data[:-1] + bytes([data[-1] ^ 0xFF])
    with pytest.raises(StunError) as caught:
        stun.decode(tampered)
    assert caught.value.reason == "bad_fingerprint"


def test_fingerprint_must_be_last():
    tid = os.urandom(12)
    data = stun.encode(Method.BINDING, MessageClass.REQUEST, tid)
    moved = data[:2] + (len(data) - 20 + 8).to_bytes(2, "big") + data[4:] + stun.encode(
        Method.BINDING, MessageClass.REQUEST, tid, [(Attr.SOFTWARE, b"abcd")], fingerprint=False)[20:]
    with pytest.raises(StunError) as caught:
        stun.decode(moved)
    assert caught.value.reason == "bad_fingerprint"


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "truncated"),
        (b"\x00\x01\x00\x00" + stun.MAGIC_COOKIE_BYTES + b"\x00" * 11, "truncated"),
        (b"\xc0\x01\x00\x00" + stun.MAGIC_COOKIE_BYTES + b"\x00" * 12, "not_stun"),
        (b"\x00\x01\x00\x03" + stun.MAGIC_COOKIE_BYTES + b"\x00" * 12 + b"abc", "bad_length"),
        (b"\x00\x01\x00\x08" + stun.MAGIC_COOKIE_BYTES + b"\x00" * 12, "bad_length"),
        (b"\x00\x01\x00\x04" + stun.MAGIC_COOKIE_BYTES + b"\x00" * 12 + b"\x80\x22\x00\x09", "truncated"),
        (b"\x00\x01\x00\x04" + stun.MAGIC_COOKIE_BYTES + b"\x00" * 12 + b"\x80\x22\x00\x01", "truncated"),
        (b"\x00\x01" + bytes(2) + stun.MAGIC_COOKIE_BYTES + bytes(12) + bytes(70000), "too_large"),
    ],
)
def test_malformed_messages_give_a_reason(data, reason):
    with pytest.raises(StunError) as caught:
        stun.decode(data)
    assert caught.value.reason == reason


def test_too_many_attributes():
    attrs = [(0x8050, b"")] * (stun.MAX_ATTRIBUTES + 1)
    data = stun.encode(Method.BINDING, MessageClass.REQUEST, os.urandom(12), attrs, fingerprint=False)
    with pytest.raises(StunError) as caught:
        stun.decode(data)
    assert caught.value.reason == "too_many_attributes"


def test_classic_rfc3489_message_is_recognised():
    tid16 = b"\x01" * 16
    message = stun.decode(stun.encode(Method.BINDING, MessageClass.REQUEST, tid16))
    assert message.classic
    assert message.transaction_id == tid16
    assert message.find(Attr.FINGERPRINT) is None


def test_first_of_duplicate_attributes_wins():
    data = stun.encode(Method.BINDING, MessageClass.REQUEST, os.urandom(12),
                       [(Attr.SOFTWARE, b"first"), (Attr.SOFTWARE, b"second")])
    assert stun.decode(data).get(Attr.SOFTWARE) == b"first"


def test_unknown_required_attributes_listed_once():
    data = stun.encode(Method.BINDING, MessageClass.REQUEST, os.urandom(12),
                       [(0x7F01, b""), (0x7F01, b""), (0xC001, b""), (Attr.PRIORITY, b"\0\0\0\1")])
    assert stun.decode(data).unknown_required() == [0x7F01]


@given(method=st.integers(0, 0xFFF), cls=st.sampled_from(list(MessageClass)))
def test_message_type_round_trip(method, cls):
    assert stun.split_message_type(stun.message_type(method, cls)) == (method, cls)


@given(
    method=st.integers(0, 0xFFF),
    cls=st.sampled_from(list(MessageClass)),
    attrs=st.lists(st.tuples(st.integers(0, 0xFFFF).filter(lambda t: t not in (0x0008, 0x001C, 0x8028)),
                             st.binary(max_size=64)), max_size=8),
    key=st.none() | st.binary(min_size=1, max_size=32),
    sha256=st.booleans(),
    fingerprint=st.booleans(),
)
def test_encode_decode_round_trip(method, cls, attrs, key, sha256, fingerprint):
    tid = os.urandom(12)
    data = stun.encode(method, cls, tid, attrs, integrity_key=key, integrity_sha256=sha256,
                       fingerprint=fingerprint)
    message = stun.decode(data)
    assert (message.method, message.cls, message.transaction_id) == (method, cls, tid)
    assert [(a.type, a.value) for a in message.attributes[: len(attrs)]] == [tuple(a) for a in attrs]
    if key is not None:
        assert stun.check_integrity(message, key)


@given(host=st.ip_addresses(), port=st.integers(0, 65535), tid=st.binary(min_size=12, max_size=12))
def test_address_codecs_round_trip(host, port, tid):
    text = str(host)
    assert stun.decode_xor_address(stun.encode_xor_address(text, port, tid), tid) == (text, port)
    assert stun.decode_address(stun.encode_address(text, port)) == (text, port)


@given(code=st.integers(300, 699), reason=st.text(max_size=40))
def test_error_code_round_trip(code, reason):
    assert stun.decode_error_code(stun.encode_error_code(code, reason)) == (code, reason)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_stun_error(data):
    try:
        stun.decode(data)
    except StunError as error:
        assert error.reason in stun.DECODE_ERRORS


@settings(max_examples=500)
@given(st.sampled_from(sorted(_VECTORS)), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       st.integers(0, 200))
def test_mutated_vectors_raise_only_stun_error(name, flips, cut):
    data = bytearray.fromhex(_VECTORS[name]["hex"])
    for index, value in flips:
        if index < len(data):
            data[index] = value
    data = bytes(data[: len(data) - cut % 8])
    try:
        message = stun.decode(data)
    except StunError as error:
        assert error.reason in stun.DECODE_ERRORS
        return
    for attribute in message.attributes:
        for decoder in (stun.decode_address, stun.decode_error_code, stun.decode_u32):
            try:
                decoder(attribute.value)
            except StunError:
                pass
    stun.check_integrity(message, b"key")
