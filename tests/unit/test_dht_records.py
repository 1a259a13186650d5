"""Relay records (BEP 44 mutable items, salt ``zentalk-relay``): signing, checking, parsing, limits.

The last tests run the checks of fuzz/fuzz_records.py on its seeds and on
cases from hypothesis, as tests/unit/test_dht_fuzz.py does for the KRPC
harness.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import socket
import sys
from dataclasses import fields, replace
from pathlib import Path

import fastbencode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from zentalk_relay import bootstrap
from zentalk_relay.dht.items import Item
from zentalk_relay.dht.krpc import MAX_VALUE, pack_address
from zentalk_relay.dht.records import (
    RECORD_SALT,
    RELAYS_INFO_HASH,
    RecordError,
    RelayRecord,
    record_target,
)

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fuzz" / "corpus" / "records"

SIGNING_KEY = SigningKey(bytes(range(32)))
KEY = bytes(SIGNING_KEY.verify_key)
OTHER_SIGNING_KEY = SigningKey(bytes(range(1, 33)))
OTHER_KEY = bytes(OTHER_SIGNING_KEY.verify_key)
LINK_KEY = bytes(range(100, 132))
ONION_KEY = bytes(range(200, 232))
V3_ONION = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion:65535"

RECORD = RelayRecord(
    KEY, LINK_KEY, ONION_KEY, (("203.0.113.5", 443), ("2001:db8::7", 8443)),
    capabilities=5, version="zentalk-relay 1.2", load=37, timestamp=1767225600,
    onion_service=V3_ONION,
)
#: RECORD's ``v`` as a dictionary, for building malformed variants.
BODY = {
    b"f": 1,
    b"a": [pack_address("203.0.113.5", 443), pack_address("2001:db8::7", 8443)],
    b"lk": LINK_KEY,
    b"ok": ONION_KEY,
    b"c": 5,
    b"v": b"zentalk-relay 1.2",
    b"l": 37,
    b"t": 1767225600,
    b"o": V3_ONION.encode(),
}


def _value(**changes) -> bytes:
    """BODY bencoded with keys changed (``None`` removes one); keyword ``lk`` is ``b"lk"``."""
    body = dict(BODY)
    for name, value in changes.items():
        if value is None:
            body.pop(name.encode(), None)
        else:
            body[name.encode()] = value
    return fastbencode.bencode(body)


# -- signing and checking --------------------------------------------------------------------


def test_value_is_the_documented_dictionary():
    assert fastbencode.bdecode(RECORD.value()) == BODY
    assert RelayRecord.parse(KEY, _value()) == RECORD


def test_sign_then_from_item_round_trip():
    item = RECORD.sign(SIGNING_KEY, 7)
    assert (item.key, item.seq, item.salt, item.value) == (KEY, 7, RECORD_SALT, RECORD.value())
    assert item.verify()
    assert RelayRecord.from_item(item) == RECORD
    assert RelayRecord.from_item(item, KEY) == RECORD


def test_target_is_sha1_of_key_and_salt():
    expected = hashlib.sha1(KEY + b"zentalk-relay").digest()
    assert RECORD_SALT == b"zentalk-relay"
    assert record_target(KEY) == expected
    assert RECORD.sign(SIGNING_KEY, 1).target == expected
    assert record_target(OTHER_KEY) != expected
    assert RELAYS_INFO_HASH == hashlib.sha1(b"zentalk-relay/relays/1").digest()


def test_node_id_is_sha256_of_the_key():
    assert RECORD.node_id == hashlib.sha256(KEY).digest()


def test_sign_refuses_a_key_that_is_not_the_records():
    with pytest.raises(ValueError, match="another key"):
        RECORD.sign(OTHER_SIGNING_KEY, 1)


def _flip(data: bytes, index: int = -1) -> bytes:
    raw = bytearray(data)
    raw[index] ^= 0x01
    return bytes(raw)


GOOD = RECORD.sign(SIGNING_KEY, 7)
FOREIGN_RECORD = replace(RECORD, key=OTHER_KEY)


@pytest.mark.parametrize(("item", "key", "message"), [
    # Tampered with after signing: the signature no longer covers it.
    (replace(GOOD, value=_value(l=38)), None, "does not verify"),
    (replace(GOOD, seq=8), None, "does not verify"),
    (replace(GOOD, signature=_flip(GOOD.signature)), None, "does not verify"),
    (replace(GOOD, signature=_flip(GOOD.signature, 0)), None, "does not verify"),
    (replace(GOOD, key=OTHER_KEY), None, "does not verify"),
    # Signed, but not as a relay record.
    (Item.signed(SIGNING_KEY, RECORD.value(), 7, b"zentalk-relaz"), None, "another salt"),
    (Item.signed(SIGNING_KEY, RECORD.value(), 7), None, "another salt"),
    (replace(GOOD, salt=b"zentalk-relaz"), None, "another salt"),
    (Item.immutable(RECORD.value()), None, "immutable"),
    # A valid record, but not of the relay the reader asked for.
    (FOREIGN_RECORD.sign(OTHER_SIGNING_KEY, 7), KEY, "another key"),
    (GOOD, OTHER_KEY, "another key"),
], ids=["value", "seq", "signature-last", "signature-first", "key", "salt", "no-salt", "salt-after",
        "immutable", "foreign-record", "expected-other"])
def test_from_item_refuses(item, key, message):
    with pytest.raises(RecordError, match=message):
        RelayRecord.from_item(item, key)


def test_a_signed_item_that_is_not_a_record_is_refused_after_verifying():
    item = Item.signed(SIGNING_KEY, fastbencode.bencode({b"f": 2}), 1, RECORD_SALT)
    assert item.verify()
    with pytest.raises(RecordError, match="unknown format"):
        RelayRecord.from_item(item, KEY)


# -- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "message"), [
    (b"", "not bencoded"),
    (b"d1:fi1e", "not bencoded"),                      # truncated
    (_value() + b"x", "not bencoded"),                  # trailing bytes
    (b"d1:fi1e1:ai0ee", "not bencoded"),                # unsorted keys
    (b"i1e", "not a dictionary"),
    (b"l1:fi1ee", "not a dictionary"),
    (_value(f=None), "unknown format"),
    (_value(f=2), "unknown format"),
    (_value(f=0), "unknown format"),
    (_value(f=b"1"), "unknown format"),
    (_value(a=None), "list of compact addresses"),
    (_value(a=b"\x01\x02\x03\x04\x00\x50"), "list of compact addresses"),
    (_value(a=[1]), "list of compact addresses"),
    (_value(a=[[b"\x01\x02\x03\x04\x00\x50"]]), "list of compact addresses"),
    (_value(a=[b"\x01\x02\x03\x04\x00"]), "list of compact addresses"),       # 5 bytes
    (_value(a=[b"\x01\x02\x03\x04\x00\x50\x00"]), "list of compact addresses"),  # 7 bytes
    (_value(a=[b"\x20\x01" + bytes(14)]), "list of compact addresses"),      # 16: an IPv6 address, no port
    (_value(a=[pack_address("203.0.113.5", 443), b"x" * 17]), "list of compact addresses"),
    (_value(a=[pack_address("203.0.113.5", 0)]), "port 0"),
    (_value(a=[pack_address("203.0.113.5", 443), pack_address("2001:db8::7", 0)]), "port 0"),
    (_value(lk=None), "lk must be 32 bytes"),
    (_value(lk=LINK_KEY[:31]), "lk must be 32 bytes"),
    (_value(lk=LINK_KEY + b"\x00"), "lk must be 32 bytes"),
    (_value(lk=7), "lk must be 32 bytes"),
    (_value(ok=None), "ok must be 32 bytes"),
    (_value(ok=ONION_KEY[:31]), "ok must be 32 bytes"),
    (_value(ok=ONION_KEY + b"\x00"), "ok must be 32 bytes"),
    (_value(ok=[ONION_KEY]), "ok must be 32 bytes"),
    (_value(c=-1), "c must be a non-negative integer"),
    (_value(c=2**63), "c must be a non-negative integer"),
    (_value(c=b"5"), "c must be a non-negative integer"),
    (_value(l=-1), "l must be a non-negative integer"),
    (_value(l=[37]), "l must be a non-negative integer"),
    (_value(t=-1767225600), "t must be a non-negative integer"),
    (_value(t=b"1767225600"), "t must be a non-negative integer"),
    (_value(t=2**64), "t must be a non-negative integer"),
    (_value(v=1), "v and o must be strings"),
    (_value(o=[b"x.onion:80"]), "v and o must be strings"),
    (_value(o="é.onion:80".encode()), "o must be ASCII"),
    (_value(o=b"\xff.onion:80"), "o must be ASCII"),
])
def test_parse_errors(value, message):
    with pytest.raises(RecordError, match=message):
        RelayRecord.parse(KEY, value)


def test_unknown_keys_are_ignored():
    value = _value(zz=[1, {b"x": b"y"}], x=b"later", a2=7)
    assert RelayRecord.parse(KEY, value) == RECORD


def test_optional_fields_default():
    value = _value(c=None, v=None, l=None, t=None, o=None)
    assert RelayRecord.parse(KEY, value) == RelayRecord(KEY, LINK_KEY, ONION_KEY, RECORD.addresses)


def test_load_is_capped_and_only_the_first_addresses_are_kept():
    many = [pack_address(f"198.51.100.{i}", 1000 + i) for i in range(1, 11)]
    record = RelayRecord.parse(KEY, _value(l=250, a=many))
    assert record.load == 100
    assert record.addresses == tuple((f"198.51.100.{i}", 1000 + i) for i in range(1, 9))
    assert RelayRecord.parse(KEY, _value(a=[])).addresses == ()


def test_the_largest_record_fits_bep44s_limit():
    addresses = tuple((f"2001:db8:ffff:ffff:ffff:ffff:ffff:{i:x}", 65535) for i in range(9))
    record = RelayRecord(
        KEY, LINK_KEY, ONION_KEY, addresses, capabilities=2**63 - 1, version="v" * 100, load=100,
        timestamp=2**63 - 1, onion_service=V3_ONION,
    )
    item = record.sign(SIGNING_KEY, 2**63 - 1)
    assert len(item.value) <= MAX_VALUE and item.verify()
    parsed = RelayRecord.from_item(item, KEY)
    assert parsed.addresses == addresses[:8] and parsed.version == "v" * 32
    assert parsed.onion_service == V3_ONION


def test_same_content_ignores_only_the_timestamp():
    assert RECORD.same_content(replace(RECORD, timestamp=RECORD.timestamp + 3600))
    assert RECORD.same_content(RECORD)
    assert not RECORD.same_content(None)
    changed = {
        "key": OTHER_KEY, "link_key": ONION_KEY, "onion_key": LINK_KEY, "addresses": RECORD.addresses[:1],
        "capabilities": 4, "version": "zentalk-relay 1.3", "load": 38, "onion_service": "",
    }
    assert set(changed) | {"timestamp"} == {field.name for field in fields(RelayRecord)}
    for name, value in changed.items():
        assert not RECORD.same_content(replace(RECORD, **{name: value})), name


def test_bootstrap_string():
    keys = base64.urlsafe_b64encode(KEY + LINK_KEY).rstrip(b"=").decode()
    text = str(RECORD.bootstrap())
    assert text == f"ztr1:{keys}@203.0.113.5:443,[2001:db8::7]:8443"
    parsed = bootstrap.parse(text)
    assert (parsed.ed25519_public, parsed.link_public, parsed.addresses) == (KEY, LINK_KEY, RECORD.addresses)
    assert str(replace(RECORD, addresses=()).bootstrap()) == f"ztr1:{keys}"


# -- hypothesis ------------------------------------------------------------------------------


def _checked_parse(value: bytes) -> RelayRecord | None:
    """parse raises RecordError or gives a record within the documented bounds."""
    try:
        record = RelayRecord.parse(KEY, value)
    except RecordError:
        return None
    assert len(record.link_key) == len(record.onion_key) == 32
    assert len(record.addresses) <= 8 and all(0 < port < 65536 for _, port in record.addresses)
    assert 0 <= record.load <= 100 and 0 <= record.capabilities < 2**63 and 0 <= record.timestamp < 2**63
    record.onion_service.encode("ascii")
    return record


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_arbitrary_bytes(value):
    _checked_parse(value)


_leaves = st.one_of(st.integers(min_value=-(2**64), max_value=2**64), st.binary(max_size=40))
_bencodable = st.recursive(
    _leaves,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.binary(max_size=4), children, max_size=4)),
    max_leaves=12,
)
_field_values = {
    b"f": st.one_of(st.just(1), _bencodable),
    b"a": st.one_of(st.lists(st.one_of(st.binary(min_size=6, max_size=6), st.binary(min_size=18, max_size=18),
                                       _bencodable), max_size=10), _bencodable),
    b"lk": st.one_of(st.binary(min_size=32, max_size=32), _bencodable),
    b"ok": st.one_of(st.binary(min_size=32, max_size=32), _bencodable),
    b"c": st.one_of(st.integers(min_value=0, max_value=2**63 - 1), _bencodable),
    b"v": _bencodable,
    b"l": st.one_of(st.integers(min_value=0, max_value=200), _bencodable),
    b"t": st.one_of(st.integers(min_value=0, max_value=2**63 - 1), _bencodable),
    b"o": st.one_of(st.binary(max_size=70), st.text(max_size=20).map(str.encode), _bencodable),
}


@st.composite
def _record_dicts(draw) -> dict:
    body = {}
    for name, strategy in _field_values.items():
        if draw(st.integers(0, 9)):  # each field present nine times in ten
            body[name] = draw(strategy)
    body.update(draw(st.dictionaries(st.binary(max_size=3), _bencodable, max_size=3)))
    return body


@settings(max_examples=400, deadline=None)
@given(_record_dicts())
def test_parse_arbitrary_bencoded_dicts(body):
    value = fastbencode.bencode(body)
    record = _checked_parse(value)
    if record is not None:
        again = RelayRecord.parse(KEY, record.value())
        version = record.version.encode("utf-8")[:32].decode("utf-8", "replace")
        assert again == replace(record, version=version)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_parse_accepts_what_value_makes(data):
    # Addresses spelled as the compact format's reader spells them (inet_ntop, not ipaddress).
    address = st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(lambda ip: socket.inet_ntop(socket.AF_INET6, ip.packed)),
    ).flatmap(lambda ip: st.tuples(st.just(ip), st.integers(1, 65535)))
    record = RelayRecord(
        data.draw(st.binary(min_size=32, max_size=32)), data.draw(st.binary(min_size=32, max_size=32)),
        data.draw(st.binary(min_size=32, max_size=32)), tuple(data.draw(st.lists(address, max_size=8))),
        data.draw(st.integers(0, 2**63 - 1)), data.draw(st.text(max_size=8)), data.draw(st.integers(0, 100)),
        data.draw(st.integers(0, 2**63 - 1)),
        data.draw(st.text(alphabet=st.characters(max_codepoint=127), max_size=70)),
    )
    if len(record.version.encode("utf-8")) > 32:
        return
    assert RelayRecord.parse(record.key, record.value()) == record


# -- the fuzz harness's checks -----------------------------------------------------------------


def _load_harness():
    spec = importlib.util.spec_from_file_location("fuzz_records", ROOT / "fuzz" / "fuzz_records.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


F = _load_harness()


def test_the_committed_corpus_is_the_harness_seeds():
    assert {p.name: p.read_bytes() for p in CORPUS.iterdir()} == F.seeds()


@pytest.mark.parametrize("name", sorted(F.seeds()))
def test_fuzz_seed(name):
    F.check(F.seeds()[name])


def test_fuzz_seeds_reach_a_record_and_each_refusal():
    outcomes = {name: F.check(data) for name, data in F.seeds().items()}
    assert outcomes["parse_record"] == "record" and outcomes["item_record"] == "record"
    assert outcomes["item_tampered"] == outcomes["item_other_salt"] == outcomes["item_immutable"] == "refused"
    assert outcomes["item_other_key"] == "refused" and outcomes["parse_garbage"] == "refused"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(F.seeds().values())), st.data())
def test_fuzz_mutated_seeds(seed, data):
    raw = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    F.check(bytes(raw))
