"""PEX messages and the peer book: what is shared, what is refused, what is kept."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zentalk_relay.pex import codec
from zentalk_relay.pex.book import FAILING, VERIFIED, PeerBook, Policy, address_problem
from zentalk_relay.pex.codec import Entry, PexError

OWN = b"\x00" * 32
KEY = b"\x07" * 32


def _entry(n: int, host: str = "93.184.216.1", port: int = 7400) -> Entry:
    return Entry(bytes([n]) * 32, host, port, 1, 1000, 20, KEY)


def test_response_layout_is_exact():
    encoded = codec.encode_response([_entry(1)])
    assert encoded == (b"\x01" + b"\x01" * 32 + b"\x04" + ipaddress.ip_address("93.184.216.1").packed
                       + bytes.fromhex("1ce8" "00000001" "00000000000003e8" "0014") + KEY)


def test_round_trip_with_hidden_and_v6_addresses():
    entries = [_entry(1), _entry(2, "", 0), _entry(3, "2001:db8::7", 9)]
    assert codec.decode_response(codec.encode_response(entries)) == entries


@pytest.mark.parametrize("body,reason", [
    (b"", "malformed"), (b"\x33", "too_many"), (b"\x01" + bytes(40), "malformed"),
    (b"\x01" + bytes(32) + b"\x05", "malformed"),
    (b"\x01" + bytes(32) + b"\x00" + b"\x00\x01" + bytes(14) + KEY, "malformed"),  # a port without an address
    (codec.encode_response([_entry(1)]) + b"x", "malformed"),
])
def test_malformed_responses(body, reason):
    with pytest.raises(PexError) as caught:
        codec.decode_response(body)
    assert caught.value.reason == reason


@pytest.mark.parametrize("body", [b"", b"\x00", b"\x33", b"\x01\x01"])
def test_malformed_requests(body):
    with pytest.raises(PexError):
        codec.decode_request(body)


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bodies_raise_only_pex_error_and_reencode_exactly(body):
    try:
        entries = codec.decode_response(body)
    except PexError:
        return
    assert codec.encode_response(entries) == body


@pytest.mark.parametrize("host,port,problem", [
    ("0.0.0.0", 1, "bogus_address"), ("224.0.0.1", 1, "bogus_address"), ("ff02::1", 1, "bogus_address"),
    ("93.184.216.1", 0, "bad_port"), ("127.0.0.1", 1, "private_address"), ("10.1.2.3", 1, "private_address"),
    ("fe80::1", 1, "private_address"), ("not-an-ip", 1, "bad_address"), ("93.184.216.1", 1, None),
])
def test_address_policy(host, port, problem):
    assert address_problem(host, port, allow_private=False) == problem


def _book(**policy) -> PeerBook:
    return PeerBook(OWN, Policy(**policy))


def test_only_verified_established_fresh_peers_are_shared():
    book = _book(min_uptime=600, fresh=3600)
    assert book.learn(_entry(1), 0.0) is None  # a candidate: never shared
    book.verified(b"\x02" * 32, "93.184.216.2", 7400, KEY, 1, now=0.0)
    book.verified(b"\x03" * 32, "93.184.216.3", 7400, KEY, 1, now=0.0, opted_out=True)
    book.verified(b"\x04" * 32, "93.184.216.4", 7400, KEY, 1, now=0.0, private=True)
    assert book.shareable(599.0, requester=b"\x09" * 32) == []  # not up for 10 minutes yet
    shared = {e.node_id[0]: e for e in book.shareable(600.0, requester=b"\x09" * 32)}
    assert set(shared) == {2, 4}
    assert (shared[4].host, shared[4].port) == ("", 0)  # by node id only
    assert book.shareable(600.0, requester=b"\x02" * 32)[0].node_id == b"\x04" * 32  # not itself
    assert book.shareable(3601.0, requester=b"\x09" * 32) == []  # not seen for an hour


def test_answers_prefer_diverse_prefixes_and_hold_at_most_fifty():
    book = _book(min_uptime=0)
    for index in range(60):
        book.verified(bytes([index + 1]) * 32, f"198.51.{index % 3}.{index + 1}", 7400, KEY, 1, now=float(index))
    for index in range(2):
        book.verified(bytes([200 + index]) * 32, f"192.0.2.{index + 1}", 7400, KEY, 1, now=0.0)
    shared = book.shareable(100.0, requester=b"\xff" * 32, maximum=4)
    assert len({".".join(e.host.split(".")[:2]) for e in shared}) == 2  # both /16s before a second from one
    assert len(book.shareable(100.0, requester=b"\xff" * 32)) == 50


def test_refusals_when_learning():
    book = _book()
    assert book.learn(Entry(OWN, "93.184.216.1", 1, 0, 0, 0, KEY), 0.0) == "own_id"
    assert book.learn(_entry(1, "", 0), 0.0) == "no_address"
    assert book.learn(_entry(2, "93.184.216.9", 7400), 0.0, frozenset({("93.184.216.9", 7400)})) == "own_address"
    assert book.learn(_entry(3, "10.0.0.1"), 0.0) == "private_address"
    assert book.learn(_entry(4), 0.0) is None
    assert book.learn(_entry(4), 1.0) == "known"


def test_failing_peers_back_off_and_are_dropped():
    book = _book(max_failures=3)
    book.learn(_entry(1), 0.0)
    book.failed(b"\x01" * 32)
    assert book.peers[b"\x01" * 32].state == FAILING
    book.failed(b"\x01" * 32)
    book.failed(b"\x01" * 32)
    assert b"\x01" * 32 not in book.peers and b"\x01" * 32 in book.removed


def test_the_book_is_bounded_and_evicts_candidates_first():
    book = _book(capacity=3)
    book.verified(b"\x01" * 32, "93.184.216.1", 1, KEY, 1, now=0.0)
    book.verified(b"\x02" * 32, "93.184.216.2", 1, KEY, 1, now=0.0)
    book.learn(_entry(3), 0.0)
    book.learn(_entry(4), 0.0)
    assert set(book.peers) == {b"\x01" * 32, b"\x02" * 32, b"\x04" * 32}
    assert book.counts() == {"candidate": 1, VERIFIED: 2, FAILING: 0}
