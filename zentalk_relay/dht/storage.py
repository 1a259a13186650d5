"""What a DHT node keeps for others: announced peers (BEP 5) and items (BEP 44).

Both stores are bounded and expire entries lazily with the ``now`` passed in:
peers after :data:`PEER_TTL` (30 min) unless announced again, items after
:data:`ITEM_TTL` (2 h) unless put again. When a store is full the entry
announced or put least recently makes room, so an entry that its owners keep
refreshing (a relay's record, the relays' well-known info-hash) survives a
flood of new ones.

What a node acknowledged survives a restart: ``to_dict()`` / ``from_dict()``
give JSON-able data (times as the ``now`` the caller passes; expired entries
are left out; malformed data raises ValueError; format in ``docs/dht.md``).
"""

from __future__ import annotations

import ipaddress
import random
from collections import OrderedDict
from typing import Any

from .items import Item
from .krpc import ID_SIZE, MAX_SEQ, Address, ErrorCode, KrpcError

__all__ = ["ITEM_TTL", "ItemStore", "MAX_ITEMS", "MAX_PEERS_PER_TORRENT", "MAX_TORRENTS", "PEER_TTL", "PeerStore"]

PEER_TTL = 30 * 60.0
ITEM_TTL = 2 * 60 * 60.0
MAX_TORRENTS = 5000
MAX_PEERS_PER_TORRENT = 500
MAX_ITEMS = 5000


class PeerStore:
    """info-hash → peers announced for it, each with its expiry."""

    __slots__ = ("max_torrents", "max_peers", "ttl", "_torrents", "evicted")

    def __init__(self, max_torrents: int = MAX_TORRENTS, max_peers: int = MAX_PEERS_PER_TORRENT,
                 ttl: float = PEER_TTL) -> None:
        self.max_torrents = max_torrents
        self.max_peers = max_peers
        self.ttl = ttl
        # Least recently announced first, in both levels.
        self._torrents: OrderedDict[bytes, OrderedDict[Address, float]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._torrents)

    @property
    def peer_count(self) -> int:
        return sum(len(peers) for peers in self._torrents.values())

    def announce(self, info_hash: bytes, peer: Address, now: float) -> None:
        peers = self._torrents.get(info_hash)
        if peers is None:
            if len(self._torrents) >= self.max_torrents:
                self.expire(now)
                if len(self._torrents) >= self.max_torrents:
                    self._torrents.popitem(last=False)
                    self.evicted += 1
            peers = self._torrents[info_hash] = OrderedDict()
        else:
            self._torrents.move_to_end(info_hash)
            peers.pop(peer, None)
        if len(peers) >= self.max_peers:
            peers.popitem(last=False)
            self.evicted += 1
        peers[peer] = now + self.ttl

    def peers(self, info_hash: bytes, now: float, limit: int, rng: random.Random) -> list[Address]:
        """Up to ``limit`` live peers for ``info_hash``, a random choice if there are more."""
        peers = self._torrents.get(info_hash)
        if not peers or limit <= 0:
            return []
        live = [peer for peer, expires in peers.items() if expires > now]
        if len(live) > limit:
            live = rng.sample(live, limit)
        return live

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "format": PEERS_FORMAT,
            "torrents": [
                [info_hash.hex(), [[ip, port, expires] for (ip, port), expires in peers.items() if expires > now]]
                for info_hash, peers in self._torrents.items()
            ],
        }

    @classmethod
    def from_dict(cls, data: Any, now: float, **options: Any) -> PeerStore:
        store = cls(**options)
        torrents = data.get("torrents") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("format") != PEERS_FORMAT or not isinstance(torrents, list):
            raise ValueError("not a peer store of format " + PEERS_FORMAT)
        for row in data["torrents"]:
            if not isinstance(row, list) or len(row) != 2 or not isinstance(row[1], list):
                raise ValueError("peer store: a torrent is [info_hash, peers]")
            info_hash = _hex(row[0], ID_SIZE)
            for peer in row[1]:
                if not isinstance(peer, list) or len(peer) != 3:
                    raise ValueError("peer store: a peer is [ip, port, expires]")
                ip, port, expires = _address(peer[0], peer[1]), peer[1], _time(peer[2])
                if expires > now:
                    store.announce(info_hash, (ip, port), expires - store.ttl)
        return store

    def expire(self, now: float) -> int:
        removed = 0
        for info_hash in list(self._torrents):
            peers = self._torrents[info_hash]
            for peer in [p for p, expires in peers.items() if expires <= now]:
                del peers[peer]
                removed += 1
            if not peers:
                del self._torrents[info_hash]
        return removed


class ItemStore:
    """target → BEP 44 item, with its expiry. Signatures are checked by the caller."""

    __slots__ = ("max_items", "ttl", "_items", "evicted")

    def __init__(self, max_items: int = MAX_ITEMS, ttl: float = ITEM_TTL) -> None:
        self.max_items = max_items
        self.ttl = ttl
        self._items: OrderedDict[bytes, tuple[Item, float]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, target: bytes, now: float) -> Item | None:
        entry = self._items.get(target)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._items[target]
            return None
        return entry[0]

    def put(self, item: Item, now: float, cas: int | None = None) -> None:
        """Store ``item`` (verified by the caller) or raise :class:`KrpcError` 301 / 302.

        A mutable item replaces the stored one only with a higher ``seq``;
        the same ``seq`` again refreshes the stored item and keeps its value
        (the first one signed with that number wins).
        """
        target = item.target
        current = self.get(target, now)
        if current is not None and item.key is not None:
            assert current.seq is not None and item.seq is not None
            if cas is not None and cas != current.seq:
                raise KrpcError(ErrorCode.CAS_MISMATCH, "cas_mismatch")
            if item.seq < current.seq:
                raise KrpcError(ErrorCode.SEQ_TOO_LOW, "seq_too_low")
            if item.seq == current.seq:
                item = current
        if current is None and len(self._items) >= self.max_items:
            self.expire(now)
            if len(self._items) >= self.max_items:
                self._items.popitem(last=False)
                self.evicted += 1
        self._items.pop(target, None)
        self._items[target] = (item, now + self.ttl)

    def to_dict(self, now: float) -> dict[str, Any]:
        def row(item: Item, expires: float) -> list:
            return [item.value.hex(), None if item.key is None else item.key.hex(),
                    None if item.signature is None else item.signature.hex(), item.seq, item.salt.hex(), expires]

        return {"format": ITEMS_FORMAT,
                "items": [row(item, expires) for item, expires in self._items.values() if expires > now]}

    @classmethod
    def from_dict(cls, data: Any, now: float, **options: Any) -> ItemStore:
        """Items are verified again (and refused with ValueError if they do not verify)."""
        store = cls(**options)
        if not isinstance(data, dict) or data.get("format") != ITEMS_FORMAT or not isinstance(data.get("items"), list):
            raise ValueError("not an item store of format " + ITEMS_FORMAT)
        for row in data["items"]:
            if not isinstance(row, list) or len(row) != 6:
                raise ValueError("item store: an item is [v, k, sig, seq, salt, expires]")
            value, salt, expires = _hex(row[0]), _hex(row[4]), _time(row[5])
            key = None if row[1] is None else _hex(row[1], 32)
            signature = None if row[2] is None else _hex(row[2], 64)
            seq = row[3]
            if seq is not None and (type(seq) is not int or not 0 <= seq <= MAX_SEQ):
                raise ValueError("item store: bad seq")
            item = Item(value, key, signature, seq, salt)
            if not item.verify():
                raise ValueError("item store: an item does not verify")
            if expires > now:
                store._items[item.target] = (item, expires)
        return store

    def expire(self, now: float) -> int:
        dead = [target for target, (_, expires) in self._items.items() if expires <= now]
        for target in dead:
            del self._items[target]
        return len(dead)


PEERS_FORMAT = "zentalk-dht-peers/1"
ITEMS_FORMAT = "zentalk-dht-items/1"


def _hex(value: Any, size: int | None = None) -> bytes:
    try:
        data = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise ValueError("expected hex digits") from None
    if size is not None and len(data) != size:
        raise ValueError(f"expected {size} bytes")
    return data


def _address(ip: Any, port: Any) -> str:
    if not isinstance(ip, str) or type(port) is not int or not 0 < port <= 0xFFFF:
        raise ValueError("bad address")
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise ValueError("bad address") from None


def _time(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("bad time")
    return float(value)
