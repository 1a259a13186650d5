"""BEP 44 items against the BEP's vectors, and put/get through a node: seq, cas, salt, limits.

Vectors: tests/vectors/bep44_vectors.json, section "bep44", copied from
bittorrent.org beps/bep_0044.rst ("Test vectors"). The published 64-byte
private key is the *expanded* Ed25519 secret, which PyNaCl cannot load: the
vectors' signatures are verified with the public key, and items are signed
here with fresh PyNaCl keys.
"""

import json
import random

import pytest
from nacl.signing import SigningKey

from tests.conftest import VECTORS
from zentalk_relay.dht import krpc
from zentalk_relay.dht.items import Item, immutable_target, mutable_target, signed_buffer, verify_signature
from zentalk_relay.dht.krpc import ErrorCode, ErrorMessage, GetItem, GetPeers, PutItem, Response
from zentalk_relay.dht.node import DhtNode, ItemStored

_BEP44 = {v["name"]: v for v in json.loads((VECTORS / "bep44_vectors.json").read_text())["bep44"]["vectors"]}
MUTABLE = [name for name, v in _BEP44.items() if "signature" in v]


def _b(vector, key):
    return bytes.fromhex(vector[key])


@pytest.mark.parametrize("name", MUTABLE)
def test_vector_signed_buffer_and_target(name):
    v = _BEP44[name]
    salt = v["salt"].encode()
    value = v["value_bencoded"].encode()
    assert signed_buffer(v["seq"], value, salt) == v["signed_buffer"].encode()
    assert mutable_target(_b(v, "public_key"), salt).hex() == v["target"]


@pytest.mark.parametrize("name", MUTABLE)
def test_vector_signature_verifies_with_the_public_key(name):
    v = _BEP44[name]
    salt, value = v["salt"].encode(), v["value_bencoded"].encode()
    key, sig = _b(v, "public_key"), _b(v, "signature")
    assert verify_signature(key, sig, v["seq"], value, salt)
    item = Item(value, key, sig, v["seq"], salt)
    assert item.verify() and item.target.hex() == v["target"]
    # Any change breaks it: seq, value, salt, signature, key.
    assert not verify_signature(key, sig, v["seq"] + 1, value, salt)
    assert not verify_signature(key, sig, v["seq"], b"12:Hello World?", salt)
    assert not verify_signature(key, sig, v["seq"], value, salt + b"x")
    assert not verify_signature(key, sig[:-1] + bytes([sig[-1] ^ 1]), v["seq"], value, salt)
    assert not verify_signature(bytes(32), sig, v["seq"], value, salt)


def test_vector_immutable_target():
    v = _BEP44["bep44_test3_immutable"]
    assert immutable_target(v["value_bencoded"].encode()).hex() == v["target"]
    assert Item.immutable(v["value_bencoded"].encode()).target.hex() == v["target"]


def test_fresh_key_signs_what_verifies():
    key = SigningKey(bytes(range(32)))
    item = Item.signed(key, b"12:Hello World!", 1, b"foobar")
    assert item.verify()
    assert item.target == mutable_target(bytes(key.verify_key), b"foobar")
    assert not Item(item.value, item.key, item.signature, 2, item.salt).verify()
    assert not Item(b"x" * 1001).verify()
    assert not Item(b"14:203.0.113.1:1").verify()  # not bencoding: it would never decode at the far end
    assert not Item(b"i01e").verify() and Item(b"i1e").verify()


# -- put and get through a node ----------------------------------------------------

OTHER = b"q" * 20
SOURCE = ("198.51.100.7", 6881)


@pytest.fixture
def node():
    return DhtNode(b"n" * 20, now=0.0, rng=random.Random(3))


def _ask(node, query, now=1.0, source=SOURCE):
    """The answer to ``query`` (an unknown querier also gets a verification ping)."""
    out = node.handle(krpc.encode(query), source, now)
    assert all(d.address == source for d in out)
    (answer,) = [m for m in map(krpc.decode, (d.data for d in out)) if isinstance(m, (Response, ErrorMessage))]
    assert answer.tid == query.tid
    return answer


def _token(node, target, now=1.0, source=SOURCE):
    return _ask(node, GetItem(b"g", OTHER, target), now, source).token


def _put(node, item, cas=None, token=None, now=1.0, source=SOURCE):
    token = token if token is not None else _token(node, item.target, now, source)
    query = PutItem(b"p", OTHER, token, item.value, item.key, item.signature, item.seq, item.salt, cas)
    return _ask(node, query, now, source)


def test_immutable_put_then_get(node):
    item = Item.immutable(b"12:Hello World!")
    assert isinstance(_put(node, item), Response)
    assert ItemStored(item.target, None) in node.take_events()
    got = _ask(node, GetItem(b"g", OTHER, item.target))
    assert got.value == b"12:Hello World!" and got.key is None and got.token


def test_mutable_put_get_seq_and_cas(node):
    key = SigningKey(bytes(32))
    first = Item.signed(key, b"3:one", 1, b"zentalk-relay")
    assert isinstance(_put(node, first), Response)
    got = _ask(node, GetItem(b"g", OTHER, first.target))
    assert (got.value, got.key, got.signature, got.seq) == (first.value, first.key, first.signature, 1)
    # A get with seq >= what is stored: no value, just the seq.
    got = _ask(node, GetItem(b"g", OTHER, first.target, seq=1))
    assert got.value is None and got.seq == 1
    # Newer seq replaces; cas must name the stored seq.
    second = Item.signed(key, b"3:two", 2, b"zentalk-relay")
    error = _put(node, second, cas=0)
    assert (error.code, error.tid) == (ErrorCode.CAS_MISMATCH, b"p")
    assert isinstance(_put(node, second, cas=1), Response)
    assert _ask(node, GetItem(b"g", OTHER, first.target)).value == b"3:two"
    # An older seq is refused with 302.
    assert _put(node, first).code == ErrorCode.SEQ_TOO_LOW
    # The same seq again refreshes and keeps the first value signed with it.
    other_two = Item.signed(key, b"5:other", 2, b"zentalk-relay")
    assert isinstance(_put(node, other_two), Response)
    assert _ask(node, GetItem(b"g", OTHER, first.target)).value == b"3:two"
    assert node.stats.queries["put", "301"] == 1 and node.stats.queries["put", "302"] == 1


def test_bad_signature_is_206(node):
    key = SigningKey(bytes(32))
    item = Item.signed(key, b"3:one", 1)
    forged = Item(b"3:two", item.key, item.signature, 1)
    error = _put(node, forged)
    assert isinstance(error, ErrorMessage) and error.code == ErrorCode.INVALID_SIGNATURE
    # Signed without salt, put with one: the signature does not cover it.
    error = _put(node, Item(item.value, item.key, item.signature, 1, b"salt"))
    assert error.code == ErrorCode.INVALID_SIGNATURE


def test_salt_too_big_is_207_and_value_too_big_205(node):
    token = _token(node, b"t" * 20)
    query = PutItem(b"p", OTHER, token, b"1:x", b"k" * 32, b"s" * 64, 1, b"s" * 65)
    assert _ask(node, query).code == ErrorCode.SALT_TOO_BIG
    query = PutItem(b"p", OTHER, token, b"997:" + b"x" * 997)
    assert _ask(node, query).code == ErrorCode.VALUE_TOO_BIG


def test_put_needs_a_token_for_this_ip(node):
    item = Item.immutable(b"1:x")
    token = _token(node, item.target, source=("203.0.113.9", 1))
    error = _put(node, item, token=token)
    assert (error.code, error.tid) == (ErrorCode.PROTOCOL, b"p")
    assert node.stats.queries["put", "203"] == 1
    assert node.items.get(item.target, 1.0) is None


def test_items_expire_after_two_hours(node):
    item = Item.immutable(b"1:x")
    _put(node, item, now=10.0)
    assert node.items.get(item.target, 10.0 + 7199) == item
    assert node.items.get(item.target, 10.0 + 7200) is None


def test_item_count_is_bounded():
    node = DhtNode(b"n" * 20, now=0.0, rng=random.Random(3), config=_small_config())
    items = [Item.immutable(b"i%de" % i) for i in range(5)]
    for item in items:
        _put(node, item)
    assert len(node.items) == 3
    assert node.items.get(items[0].target, 1.0) is None  # the least recently put made room
    assert node.items.get(items[4].target, 1.0) == items[4]


def _small_config():
    from zentalk_relay.dht.node import DhtConfig

    return DhtConfig(max_items=3)


def test_get_peers_is_not_an_item_get(node):
    assert _ask(node, GetPeers(b"g", OTHER, b"t" * 20)).value is None


def test_a_padded_get_from_an_unverified_source_gets_the_whole_item(node):
    big = Item.immutable(b"900:" + b"x" * 900)
    _put(node, big)
    plain = krpc.encode(GetItem(b"g", OTHER, big.target))
    padded = krpc.encode(GetItem(b"g", OTHER, big.target, padding=400))
    assert _ask(node, GetItem(b"g", OTHER, big.target)).value is None  # over 3 x the query: cut
    assert len(plain) * 3 < len(big.value)
    answer = _ask(node, GetItem(b"g", OTHER, big.target, padding=400))
    assert answer.value == big.value and len(krpc.encode(answer)) <= 3 * len(padded)


def test_our_gets_carry_the_configured_padding():
    from zentalk_relay.dht.node import DhtConfig

    node = DhtNode(b"n" * 20, now=0.0, rng=random.Random(3), config=DhtConfig(get_padding=400))
    node.table.heard_from(b"p" * 20, ("203.0.113.1", 6881), 0.0, responded=True)
    _, out = node.get(b"t" * 20, 0.0)
    assert krpc.decode(out[0].data).padding == 400 and len(out[0].data) > 490
