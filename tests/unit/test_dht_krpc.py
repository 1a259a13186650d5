"""The KRPC codec (BEP 5, 43, 44): round trips, what real nodes send, and hostile bytes."""

import fastbencode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zentalk_relay.dht import krpc
from zentalk_relay.dht.krpc import (
    AnnouncePeer,
    ErrorCode,
    ErrorMessage,
    FindNode,
    GetItem,
    GetPeers,
    KrpcError,
    NodeInfo,
    Ping,
    PutItem,
    Response,
    decode,
    encode,
)

ID = b"abcdefghij0123456789"
TARGET = b"mnopqrstuvwxyz123456"

MESSAGES = [
    Ping(b"aa", ID),
    Ping(b"", ID, read_only=True, client=b"LT\x01\x02"),
    FindNode(b"aa", ID, TARGET),
    FindNode(b"\x00\x01\x02\x03", ID, TARGET, want=(b"n4", b"n6")),
    GetPeers(b"aa", ID, TARGET),
    AnnouncePeer(b"aa", ID, TARGET, 6881, b"aoeusnth"),
    AnnouncePeer(b"aa", ID, TARGET, 0, b"aoeusnth", implied_port=True, seed=True),
    GetItem(b"aa", ID, TARGET),
    GetItem(b"aa", ID, TARGET, seq=4),
    GetItem(b"aa", ID, TARGET, padding=400),
    PutItem(b"aa", ID, b"token", b"12:Hello World!"),
    PutItem(b"aa", ID, b"token", b"d1:ai1ee", b"k" * 32, b"s" * 64, 7, b"salt", 6),
    Response(b"aa", ID),
    Response(b"aa", ID, nodes=(NodeInfo(TARGET, "1.2.3.4", 6881), NodeInfo(ID, "5.6.7.8", 1)), token=b"tk"),
    Response(b"aa", ID, nodes=(), values=(("1.2.3.4", 80), ("2001:db8::1", 443)), your_ip=("9.8.7.6", 4)),
    Response(b"aa", ID, nodes6=(NodeInfo(TARGET, "2001:db8::2", 6881),), your_ip=("2001:db8::3", 5)),
    Response(b"aa", ID, value=b"le", key=b"k" * 32, signature=b"s" * 64, seq=0, token=b"t", client=b"ZT\x00\x01"),
    Response(b"aa", ID, seq=12),
    ErrorMessage(b"aa", 201, "A Generic Error Ocurred"),
    ErrorMessage(b"aa", 302, ""),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message):
    data = encode(message)
    assert decode(data) == message
    assert encode(decode(data)) == data


# BEP 5's own examples, byte for byte.
BEP5 = {
    b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe": Ping(b"aa", ID),
    b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re": Response(b"aa", TARGET),
    b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe": FindNode(
        b"aa", ID, TARGET
    ),
    b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe": GetPeers(
        b"aa", ID, TARGET
    ),
    b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe"
    b"1:q13:announce_peer1:t2:aa1:y1:qe": AnnouncePeer(b"aa", ID, TARGET, 6881, b"aoeusnth"),
    b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee": ErrorMessage(b"aa", 201, "A Generic Error Ocurred"),
}


@pytest.mark.parametrize("data", sorted(BEP5), ids=range(len(BEP5)))
def test_bep5_examples(data):
    assert decode(data) == BEP5[data]
    assert encode(BEP5[data]) == data


def _dict(**entries) -> bytes:
    return fastbencode.bencode({k.encode(): v for k, v in entries.items()})


def test_tolerates_what_real_nodes_add():
    # libtorrent: client version, ip, read-only; BEP 33 scrape flags; unknown keys.
    data = _dict(
        t=b"aa", y=b"q", q=b"get_peers", v=b"LT\x02\x00", ro=1, ip=b"\x01\x02\x03\x04\x00\x50",
        a={b"id": ID, b"info_hash": TARGET, b"noseed": 1, b"scrape": 1, b"zz_future": [1, 2]},
    )
    assert decode(data) == GetPeers(b"aa", ID, TARGET, read_only=True, client=b"LT\x02\x00")
    response = _dict(
        t=b"aa", y=b"r", ip=b"\x01\x02\x03\x04\x00\x50", v=b"UT\x01\x02",
        r={b"id": ID, b"p": 6881, b"samples": b"x" * 20, b"nodes": b""},
    )
    assert decode(response) == Response(b"aa", ID, nodes=(), your_ip=("1.2.3.4", 80), client=b"UT\x01\x02")


def test_tolerates_malformed_informational_fields():
    data = _dict(t=b"aa", y=b"r", ip=b"\x01\x02", v=123, r={b"id": ID})
    assert decode(data) == Response(b"aa", ID)
    assert decode(_dict(t=b"aa", y=b"q", q=b"ping", ro=b"yes", a={b"id": ID})) == Ping(b"aa", ID)


def _error(data: bytes) -> KrpcError:
    with pytest.raises(KrpcError) as info:
        decode(data)
    return info.value


@pytest.mark.parametrize(
    "args, reason",
    [
        ({b"id": ID[:19]}, "bad_id"),
        ({b"id": 5}, "bad_id"),
        ({}, "bad_id"),
        ({b"id": ID, b"target": TARGET + b"x"}, "bad_target"),
        ({b"id": ID, b"target": [TARGET]}, "bad_target"),
    ],
)
def test_malformed_query_is_203_with_tid(args, reason):
    error = _error(_dict(t=b"xy", y=b"q", q=b"find_node", a=args))
    assert (error.code, error.reason, error.tid, error.method) == (ErrorCode.PROTOCOL, reason, b"xy", "find_node")
    assert krpc.error_for(error) == ErrorMessage(b"xy", 203, "Protocol Error")


def test_unknown_method_is_204():
    error = _error(_dict(t=b"xy", y=b"q", q=b"sample_infohashes_v9", a={b"id": ID}))
    assert (error.code, error.tid, error.method) == (ErrorCode.METHOD_UNKNOWN, b"xy", "unknown")


@pytest.mark.parametrize(
    "args, reason",
    [
        ({b"info_hash": TARGET, b"port": 0, b"token": b"t"}, "bad_port"),
        ({b"info_hash": TARGET, b"port": 65536, b"token": b"t"}, "bad_port"),
        ({b"info_hash": TARGET, b"port": b"6881", b"token": b"t"}, "bad_port"),
        ({b"info_hash": TARGET, b"port": 6881}, "bad_token"),
        ({b"info_hash": TARGET, b"port": 6881, b"token": b"t" * 129}, "bad_token"),
    ],
)
def test_announce_checks(args, reason):
    error = _error(_dict(t=b"a", y=b"q", q=b"announce_peer", a={b"id": ID, **args}))
    assert (error.code, error.reason) == (ErrorCode.PROTOCOL, reason)


def test_implied_port_allows_port_zero_or_none():
    base = {b"id": ID, b"info_hash": TARGET, b"token": b"t", b"implied_port": 1}
    assert decode(_dict(t=b"a", y=b"q", q=b"announce_peer", a=base)).port == 0
    assert decode(_dict(t=b"a", y=b"q", q=b"announce_peer", a={**base, b"port": 0})).implied_port


def _put(**args) -> bytes:
    base = {b"id": ID, b"token": b"t", b"v": b"x"}
    base.update({k.encode(): v for k, v in args.items()})
    return _dict(t=b"p", y=b"q", q=b"put", a=base)


@pytest.mark.parametrize(
    "args, code, reason",
    [
        ({"v": b"x" * 997}, ErrorCode.VALUE_TOO_BIG, "value_too_big"),  # 1001 bytes bencoded
        ({"k": b"k" * 32, "sig": b"s" * 64, "seq": 1, "salt": b"s" * 65}, ErrorCode.SALT_TOO_BIG, "salt_too_big"),
        ({"k": b"k" * 31, "sig": b"s" * 64, "seq": 1}, ErrorCode.PROTOCOL, "bad_key"),
        ({"k": b"k" * 32, "sig": b"s" * 63, "seq": 1}, ErrorCode.PROTOCOL, "bad_signature"),
        ({"k": b"k" * 32, "sig": b"s" * 64}, ErrorCode.PROTOCOL, "bad_seq"),
        ({"k": b"k" * 32, "sig": b"s" * 64, "seq": -1}, ErrorCode.PROTOCOL, "bad_seq"),
        ({"k": b"k" * 32, "sig": b"s" * 64, "seq": 1 << 63}, ErrorCode.PROTOCOL, "bad_seq"),
        ({"k": b"k" * 32, "sig": b"s" * 64, "seq": 1, "cas": b"1"}, ErrorCode.PROTOCOL, "bad_cas"),
        ({"k": b"k" * 32, "sig": b"s" * 64, "seq": 1, "salt": 5}, ErrorCode.PROTOCOL, "bad_salt"),
    ],
)
def test_put_limits(args, code, reason):
    error = _error(_put(**args))
    assert (error.code, error.reason, error.tid, error.method) == (code, reason, b"p", "put")


def test_put_value_of_exactly_1000_bytes_is_accepted():
    message = decode(_put(v=b"x" * 996))
    assert len(message.value) == 1000
    no_value = _dict(t=b"p", y=b"q", q=b"put", a={b"id": ID, b"token": b"t"})
    assert _error(no_value).reason == "no_value"


def test_salt_of_64_bytes_is_accepted():
    assert decode(_put(k=b"k" * 32, sig=b"s" * 64, seq=1, salt=b"s" * 64)).salt == b"s" * 64


@pytest.mark.parametrize(
    "body, reason",
    [
        ({b"id": ID, b"nodes": b"x" * 27}, "bad_nodes"),
        ({b"id": ID, b"nodes6": b"x" * 26}, "bad_nodes"),
        ({b"id": ID, b"nodes": [b"x" * 26]}, "bad_nodes"),
        ({b"id": ID, b"values": [b"x" * 7]}, "bad_values"),
        ({b"id": ID, b"values": b"x" * 6}, "bad_values"),
        ({b"id": ID, b"token": 5}, "bad_token"),
        ({b"id": ID, b"v": b"x" * 1000}, "value_too_big"),
        ({b"id": ID[:-1]}, "bad_id"),
        ({b"id": ID, b"k": b"k"}, "bad_key"),
        ({b"id": ID, b"seq": b"1"}, "bad_seq"),
    ],
)
def test_malformed_responses_are_refused_without_tid(body, reason):
    error = _error(_dict(t=b"aa", y=b"r", r=body))
    assert (error.reason, error.tid) == (reason, None)
    assert krpc.error_for(error) is None


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "not_bencoded"),
        (b"d1:t2:aa1:y1:q", "not_bencoded"),
        (b"d1:y1:q1:t2:aae", "not_bencoded"),  # keys out of order
        (b"d1:t2:aa1:t2:bb1:y1:qe", "not_bencoded"),  # duplicate key
        (b"d1:ti01e1:y1:qe", "not_bencoded"),  # leading zero
        (b"d1:t2:aa1:y1:qetrailing", "not_bencoded"),
        (b"l" * 2000 + b"e" * 2000, "too_large"),
        (b"l" * 1000 + b"e" * 1000, "not_a_dict"),
        (b"le", "not_a_dict"),
        (b"d1:y1:qe", "bad_tid"),
        (b"d1:ti5e1:y1:qe", "bad_tid"),
        (_dict(t=b"x" * 33, y=b"q"), "bad_tid"),
        (b"d1:t2:aa1:y1:xe", "bad_kind"),
        (b"d1:t2:aae", "bad_kind"),
        (b"d1:t2:aa1:y1:ee", "bad_error"),
        (_dict(t=b"aa", y=b"e", e=[b"201"]), "bad_error"),
        (_dict(t=b"aa", y=b"r", r=[1]), "bad_body"),
        (_dict(t=b"aa", y=b"q", a={b"id": ID}), "bad_method"),
        (_dict(t=b"aa", y=b"q", q=b"ping"), "bad_args"),
        (_dict(t=b"aa", y=b"q", q=b"ping", a=[ID]), "bad_args"),
    ],
)
def test_garbage_raises_only_krpc_error(data, reason):
    error = _error(data)
    assert error.code == ErrorCode.PROTOCOL
    assert error.reason == reason
    assert error.reason in krpc.REASONS


def test_deep_nesting_in_a_value():
    deep = b"d1:ad2:id20:" + ID + b"5:token1:t1:v" + b"l" * 400 + b"e" * 400 + b"e1:q3:put1:t2:aa1:y1:qe"
    assert decode(deep).value == b"l" * 400 + b"e" * 400


def test_compact_formats():
    assert krpc.pack_address("1.2.3.4", 0x1AE1) == b"\x01\x02\x03\x04\x1a\xe1"
    assert krpc.unpack_address(b"\x01\x02\x03\x04\x1a\xe1") == ("1.2.3.4", 6881)
    assert krpc.unpack_address(bytes(15) + b"\x01\x00\x50") == ("::1", 80)
    nodes = (NodeInfo(ID, "1.2.3.4", 1), NodeInfo(TARGET, "255.255.255.255", 65535))
    assert krpc.unpack_nodes(krpc.pack_nodes(nodes)) == nodes
    with pytest.raises(ValueError):
        krpc.unpack_address(b"12345")


# -- hypothesis: whatever comes in, decode returns a message or raises KrpcError --------

_leaf = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.binary(max_size=40),
    st.sampled_from([ID, TARGET, b"ping", b"find_node", b"get_peers", b"announce_peer", b"get", b"put",
                     b"q", b"r", b"e", b"x" * 26, b"x" * 38, b"x" * 6, b"k" * 32, b"s" * 64]),
)
_keys = st.sampled_from([b"t", b"y", b"q", b"a", b"r", b"e", b"v", b"ip", b"ro", b"id", b"target", b"info_hash",
                         b"port", b"token", b"implied_port", b"nodes", b"nodes6", b"values", b"k", b"sig", b"seq",
                         b"salt", b"cas", b"want", b"x"])
_bencodable = st.recursive(
    _leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=6), max_leaves=25
)


def _check(data: bytes) -> None:
    try:
        message = decode(data)
    except KrpcError as error:
        assert error.reason in krpc.REASONS
        assert isinstance(error.code, ErrorCode)
        assert error.tid is None or isinstance(error.tid, bytes)
        return
    # What decodes re-encodes, and that decodes to the same message.
    assert decode(encode(message)) == message


@settings(max_examples=200, deadline=None)
@given(_bencodable)
def test_random_bencode_decodes_or_raises_krpc_error(value):
    _check(fastbencode.bencode(value))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MESSAGES), st.data())
def test_valid_messages_with_one_field_changed(message, data):
    top = fastbencode.bdecode(encode(message))
    inner = top.get(b"a") or top.get(b"r")
    where = data.draw(st.sampled_from([top, inner] if inner is not None else [top]))
    key = data.draw(st.sampled_from(sorted(where)) | _keys)
    if data.draw(st.booleans()):
        where.pop(key, None)
    else:
        where[key] = data.draw(_bencodable)
    _check(fastbencode.bencode(top))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MESSAGES), st.data())
def test_byte_flips_of_valid_messages(message, data):
    raw = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _check(bytes(raw))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data):
    _check(data)
