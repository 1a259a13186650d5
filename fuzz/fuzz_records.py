#!/usr/bin/env python3
"""Coverage-guided fuzzing of relay records: ``RelayRecord.parse`` and ``from_item`` (atheris).

Run through ``fuzz/run``; by hand::

    PYTHONPATH=. python3 fuzz/fuzz_records.py fuzz/corpus/records -max_total_time=60
    PYTHONPATH=. python3 fuzz/fuzz_records.py CRASH_FILE            # replay one input
    PYTHONPATH=. python3 fuzz/fuzz_records.py --make-corpus          # rewrite fuzz/corpus/records/

Input layout: ``mode u8 ‖ seq u8 ‖ value``; shorter inputs are padded with
zeros. ``mode`` bit 0 chooses the target:

- 0: ``RelayRecord.parse(KEY, value)``: what a reader does with a ``v``
  whose signature verified;
- 1: ``RelayRecord.from_item(item, key)`` on an item the harness builds from
  ``value``: signed by the relay's key with the record salt and ``seq``, so
  that the fuzzer gets past the signature to the parser, unless a flag says
  otherwise: bit 1 an immutable item; bit 2 another salt (bit 3 with it: no
  salt); bit 4 signed by another key; bit 5 one signature bit flipped;
  bit 6 no expected key (``key=None``) instead of the relay's.

Properties (a violation raises AssertionError, which atheris reports):

- ``parse`` and ``from_item`` raise nothing but ``RecordError``;
- a parsed record is within the documented bounds: 32-byte keys, at most 8
  addresses with ports 1-65535, load 0-100, numbers in 0 … 2⁶³−1, an ASCII
  onion address; its ``value()`` parses back to it (the version cut to the
  32 bytes ``value()`` keeps);
- ``from_item`` accepts only a mutable item with the record salt whose
  signature verifies (``Item.verify``), by the expected key when one is
  given, and returns exactly what ``parse`` makes of its ``v``; so an item
  the harness tampered with, salted otherwise, left immutable or signed
  with a key other than the expected one is refused;
- for the untouched item, ``from_item`` accepts exactly when ``parse``
  does and the item is within BEP 44's limits.

The module imports atheris only when it runs as the fuzzer, so
``tests/unit/test_dht_records.py`` runs the same checks on the seeds and on
cases from hypothesis.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import replace
from pathlib import Path

import fastbencode
from nacl.signing import SigningKey

if __name__ == "__main__" and "--make-corpus" not in sys.argv:  # fuzzing: instrument the package
    import atheris

    with atheris.instrument_imports(include=["zentalk_relay"]):
        from zentalk_relay.dht.items import Item
        from zentalk_relay.dht.krpc import pack_address
        from zentalk_relay.dht.records import RECORD_SALT, RecordError, RelayRecord
else:  # imported by the unit tests: no atheris needed
    atheris = None
    from zentalk_relay.dht.items import Item
    from zentalk_relay.dht.krpc import pack_address
    from zentalk_relay.dht.records import RECORD_SALT, RecordError, RelayRecord

HEADER = 2
TARGET_ITEM = 0x01
MODE_IMMUTABLE = 0x02
MODE_OTHER_SALT = 0x04
MODE_NO_SALT = 0x08
MODE_OTHER_KEY = 0x10
MODE_TAMPER = 0x20
MODE_ANY_KEY = 0x40

SIGNING_KEY = SigningKey(bytes(range(32)))
KEY = bytes(SIGNING_KEY.verify_key)
OTHER_SIGNING_KEY = SigningKey(bytes(range(1, 33)))
OTHER_SALT = b"zentalk-relaz"
MAX_INTEGER = 2**63


def _fail(what: str, error: BaseException | None = None) -> None:
    if error is None:
        raise AssertionError(what)
    original = "".join(traceback.format_exception(error)).rstrip()
    raise AssertionError(f"{what}: {type(error).__name__}: {error}\n--- original exception ---\n{original}") from error


def split_input(data: bytes) -> tuple[int, int, bytes]:
    """The fuzzer's bytes as (mode, seq, value)."""
    header = data[:HEADER].ljust(HEADER, b"\x00")
    return header[0], header[1], data[HEADER:]


def make_input(mode: int, seq: int, value: bytes) -> bytes:
    return bytes([mode, seq]) + value


def check_record(record: RelayRecord, key: bytes) -> None:
    """A parsed record is within the documented bounds and its ``value()`` parses back to it."""
    if record.key != key or len(record.link_key) != 32 or len(record.onion_key) != 32:
        _fail(f"keys of the wrong length or owner: {record!r}")
    if len(record.addresses) > 8 or not all(0 < port < 65536 for _, port in record.addresses):
        _fail(f"addresses out of bounds: {record.addresses!r}")
    if not 0 <= record.load <= 100:
        _fail(f"load {record.load} out of 0-100")
    if not (0 <= record.capabilities < MAX_INTEGER and 0 <= record.timestamp < MAX_INTEGER):
        _fail(f"capabilities or timestamp out of bounds: {record!r}")
    if not record.onion_service.isascii():
        _fail(f"onion address not ASCII: {record.onion_service!r}")
    try:
        value = record.value()
        again = RelayRecord.parse(key, value)
    except Exception as error:  # noqa: BLE001 - the property under test
        _fail(f"{record!r} does not re-encode to a value that parses", error)
    version = record.version[:32]  # value() keeps at most 32 characters
    if again != replace(record, version=version):
        _fail(f"round trip changed the record: {record!r} -> {again!r}")


def check_parse(key: bytes, value: bytes) -> RelayRecord | None:
    try:
        record = RelayRecord.parse(key, value)
    except RecordError:
        return None
    except Exception as error:  # noqa: BLE001 - the property under test
        _fail("RelayRecord.parse raised something other than RecordError", error)
    check_record(record, key)
    return record


def build_item(mode: int, seq: int, value: bytes) -> Item:
    if mode & MODE_IMMUTABLE:
        return Item.immutable(value)
    salt = (b"" if mode & MODE_NO_SALT else OTHER_SALT) if mode & MODE_OTHER_SALT else RECORD_SALT
    signer = OTHER_SIGNING_KEY if mode & MODE_OTHER_KEY else SIGNING_KEY
    item = Item.signed(signer, value, seq, salt)
    if mode & MODE_TAMPER:
        signature = bytearray(item.signature)
        signature[seq % 64] ^= 1 << (seq % 8)
        item = replace(item, signature=bytes(signature))
    return item


def check_item(mode: int, seq: int, value: bytes) -> RelayRecord | None:
    item = build_item(mode, seq, value)
    expected = None if mode & MODE_ANY_KEY else KEY
    try:
        record = RelayRecord.from_item(item, expected)
    except RecordError:
        record = None
    except Exception as error:  # noqa: BLE001 - the property under test
        _fail("RelayRecord.from_item raised something other than RecordError", error)
    signer = bytes((OTHER_SIGNING_KEY if mode & MODE_OTHER_KEY else SIGNING_KEY).verify_key)
    untouched = not mode & (MODE_IMMUTABLE | MODE_OTHER_SALT | MODE_TAMPER)
    if record is None:
        if untouched and (expected is None or expected == signer) and item.verify():
            if check_parse(signer, value) is not None:
                _fail(f"a genuine item whose value parses was refused: {item!r}")
        return None
    if item.key is None or item.salt != RECORD_SALT or not item.verify():
        _fail(f"accepted an item that is not a valid relay record item: {item!r}")
    if expected is not None and item.key != expected:
        _fail("accepted an item signed by another key than the expected one")
    if not untouched:
        _fail(f"accepted an item the harness spoiled (mode {mode:#04x})")
    parsed = check_parse(item.key, item.value)
    if parsed != record:
        _fail(f"from_item gave {record!r}, parse gives {parsed!r}")
    return record


def check(data: bytes) -> str:
    """Run the checks on one input: ``"record"`` when a record came out, ``"refused"`` otherwise."""
    mode, seq, value = split_input(data)
    if mode & TARGET_ITEM:
        record = check_item(mode, seq, value)
    else:
        record = check_parse(KEY, value)
    return "refused" if record is None else "record"


def TestOneInput(data: bytes) -> None:
    check(data)


# -- seeds --------------------------------------------------------------------------

CORPUS = Path(__file__).resolve().parent / "corpus" / "records"
V3_ONION = b"pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion:443"


def _body(**changes) -> bytes:
    body = {
        b"f": 1,
        b"a": [pack_address("203.0.113.5", 443), pack_address("2001:db8::7", 8443)],
        b"lk": bytes(range(100, 132)),
        b"ok": bytes(range(200, 232)),
        b"c": 5,
        b"v": b"zentalk-relay 1.2",
        b"l": 37,
        b"t": 1767225600,
        b"o": V3_ONION,
    }
    for name, value in changes.items():
        if value is None:
            body.pop(name.encode(), None)
        else:
            body[name.encode()] = value
    return fastbencode.bencode(body)


def seeds() -> dict[str, bytes]:
    """Records, every malformed field, and items of every kind the reader must refuse."""
    record = _body()
    parse = {
        "record": record,
        "minimal": _body(c=None, v=None, l=None, t=None, o=None, a=[]),
        "unknown_keys": _body(x=[1, {b"y": b"z"}], zz=b"later"),
        "many_addresses": _body(a=[pack_address(f"2001:db8::{i:x}", 1000 + i) for i in range(10)], l=250),
        "port_0": _body(a=[pack_address("203.0.113.5", 0)]),
        "address_16_bytes": _body(a=[bytes(16)]),
        "short_link_key": _body(lk=b"k" * 31),
        "onion_key_int": _body(ok=7),
        "negative_load": _body(l=-1),
        "huge_timestamp": _body(t=2**64),
        "string_capabilities": _body(c=b"5"),
        "non_ascii_onion": _body(o="é.onion:80".encode()),
        "non_utf8_version": _body(v=b"\xff" * 40),
        "format_2": _body(f=2),
        "not_a_dict": b"l1:fi1ee",
        "garbage": b"\xffnot bencoding at all",
    }
    out = {"parse_" + name: make_input(0, 0, value) for name, value in parse.items()}
    items = {
        "record": TARGET_ITEM,
        "tampered": TARGET_ITEM | MODE_TAMPER,
        "other_salt": TARGET_ITEM | MODE_OTHER_SALT,
        "no_salt": TARGET_ITEM | MODE_OTHER_SALT | MODE_NO_SALT,
        "immutable": TARGET_ITEM | MODE_IMMUTABLE,
        "other_key": TARGET_ITEM | MODE_OTHER_KEY,
        "other_key_unchecked": TARGET_ITEM | MODE_OTHER_KEY | MODE_ANY_KEY,
    }
    for name, mode in items.items():
        out["item_" + name] = make_input(mode, 7, record)
    out["item_not_canonical"] = make_input(TARGET_ITEM, 1, b"d1:fi1e1:ale2:lk32:" + b"k" * 32 + b"e")
    out["item_too_big"] = make_input(TARGET_ITEM, 2, _body(o=b"x" * 900))
    return out


def make_corpus() -> None:
    CORPUS.mkdir(parents=True, exist_ok=True)
    for path in CORPUS.iterdir():
        path.unlink()
    for name, data in sorted(seeds().items()):
        check(data)  # every seed passes the harness
        (CORPUS / name).write_bytes(data)
    print(f"wrote {len(seeds())} seeds to {CORPUS}")


def main() -> None:
    if "--make-corpus" in sys.argv:
        make_corpus()
        return
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
