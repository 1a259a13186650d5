"""Relay records: what a relay publishes about itself in the DHT, and how a reader checks it.

A relay's record is a BEP 44 mutable item under its own Ed25519 key with
the salt ``zentalk-relay``, so its target, ``SHA-1(key ‖ salt)``, follows
from the key and only the relay can write it. Its ``v`` is a bencoded
dictionary (short keys: the whole item is bounded at 1000 bytes):

====== ========== ===================================================
key    type       meaning
====== ========== ===================================================
``f``  int        format, 1
``a``  list       link addresses: compact 6- or 18-byte IP and port
``lk`` 32 bytes   X25519 link key (the Noise NK static key)
``ok`` 32 bytes   X25519 onion key (the current one)
``c``  int        capability bits (as in HELLO)
``v``  string     software version
``l``  int        load, 0-100 (percent of the link limit in use)
``t``  int        Unix time of the change that made this ``seq``
``o``  string     a Tor onion service address (``x.onion:port``), optional
====== ========== ===================================================

Unknown keys are ignored, so later versions can add fields. Relays also
``announce_peer`` their DHT address on :data:`RELAYS_INFO_HASH`; a reader
finds addresses with ``get_peers``, asks each for its key with the ``zr``
ping extension, then reads and verifies the record at the key's target.
Nothing in a record is believed before its signature verifies; the
address a record came from is not trusted at all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import fastbencode
from nacl.signing import SigningKey

from ..bootstrap import Bootstrap
from .items import Item, mutable_target
from .krpc import Address, pack_address, unpack_address

__all__ = ["RECORD_SALT", "RELAYS_INFO_HASH", "RecordError", "RelayRecord", "record_target"]

RECORD_SALT = b"zentalk-relay"
#: The info-hash every relay announces itself on (its DHT address).
RELAYS_INFO_HASH = hashlib.sha1(b"zentalk-relay/relays/1").digest()
FORMAT = 1
MAX_ADDRESSES = 8
#: A v3 onion address (56 characters), ".onion" and ":port".
MAX_ONION = 72


class RecordError(ValueError):
    """A record that does not verify or does not parse."""


def record_target(key: bytes) -> bytes:
    """Where the record of the relay with Ed25519 key ``key`` is stored."""
    return mutable_target(key, RECORD_SALT)


@dataclass(frozen=True, slots=True)
class RelayRecord:
    key: bytes
    link_key: bytes
    onion_key: bytes
    addresses: tuple[Address, ...]
    capabilities: int = 0
    version: str = ""
    load: int = 0
    timestamp: int = 0
    onion_service: str = ""

    @property
    def node_id(self) -> bytes:
        return hashlib.sha256(self.key).digest()

    def bootstrap(self) -> Bootstrap:
        """The bootstrap string a client or relay dials this relay with."""
        return Bootstrap(self.key, self.link_key, self.addresses)

    def same_content(self, other: RelayRecord | None) -> bool:
        """Equal but for the time: a republish needs no new ``seq``."""
        return other is not None and replace(self, timestamp=0) == replace(other, timestamp=0)

    def value(self) -> bytes:
        """``v`` bencoded."""
        body: dict = {
            b"f": FORMAT,
            b"a": [pack_address(ip, port) for ip, port in self.addresses[:MAX_ADDRESSES]],
            b"lk": self.link_key,
            b"ok": self.onion_key,
            b"c": self.capabilities,
            b"v": self.version[:32].encode("utf-8"),
            b"l": max(0, min(100, self.load)),
            b"t": self.timestamp,
        }
        if self.onion_service:
            body[b"o"] = self.onion_service.encode("ascii")[:MAX_ONION]
        return fastbencode.bencode(body)

    def sign(self, signing_key: SigningKey, seq: int) -> Item:
        if bytes(signing_key.verify_key) != self.key:
            raise ValueError("the record is for another key")
        return Item.signed(signing_key, self.value(), seq, RECORD_SALT)

    @classmethod
    def from_item(cls, item: Item, key: bytes | None = None) -> RelayRecord:
        """The record an item holds, after checking salt, signature and, if given, the key."""
        if item.key is None or item.salt != RECORD_SALT:
            raise RecordError("not a relay record (immutable, or another salt)")
        if key is not None and item.key != key:
            raise RecordError("signed by another key")
        if not item.verify():
            raise RecordError("the signature does not verify")
        return cls.parse(item.key, item.value)

    @classmethod
    def parse(cls, key: bytes, value: bytes) -> RelayRecord:
        try:
            body = fastbencode.bdecode(value)
        except Exception:  # noqa: BLE001 - whatever the bencode library raises on garbage
            raise RecordError("v is not bencoded") from None
        if type(body) is not dict:
            raise RecordError("v is not a dictionary")
        if body.get(b"f") != FORMAT:
            raise RecordError(f"unknown format {body.get(b'f')!r}")
        addresses = body.get(b"a")
        if type(addresses) is not list or not all(type(a) is bytes and len(a) in (6, 18) for a in addresses):
            raise RecordError("a must be a list of compact addresses")
        link_key, onion_key = body.get(b"lk"), body.get(b"ok")
        for name, field_value in (("lk", link_key), ("ok", onion_key)):
            if type(field_value) is not bytes or len(field_value) != 32:
                raise RecordError(f"{name} must be 32 bytes")
        numbers = {}
        for name in (b"c", b"l", b"t"):
            number = body.get(name, 0)
            if type(number) is not int or not 0 <= number < 2**63:
                raise RecordError(f"{name.decode()} must be a non-negative integer")
            numbers[name] = number
        version, onion_service = body.get(b"v", b""), body.get(b"o", b"")
        if type(version) is not bytes or type(onion_service) is not bytes:
            raise RecordError("v and o must be strings")
        if len(onion_service) > MAX_ONION:
            raise RecordError(f"o is longer than {MAX_ONION} bytes")
        try:
            onion_text = onion_service.decode("ascii")
        except UnicodeDecodeError:
            raise RecordError("o must be ASCII") from None
        parsed = tuple(unpack_address(a) for a in addresses[:MAX_ADDRESSES])
        if any(port == 0 for _, port in parsed):
            raise RecordError("an address has port 0")
        return cls(key, link_key, onion_key, parsed, numbers[b"c"], version.decode("utf-8", "replace")[:32],
                   min(100, numbers[b"l"]), numbers[b"t"], onion_text)
