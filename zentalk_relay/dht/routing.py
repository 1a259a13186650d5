"""The Kademlia routing table (BEP 5), sans-IO: who we know, by XOR distance from our id.

Ids are 160-bit integers. The table is a list of k-buckets (k = 20): bucket
``i`` holds the nodes whose id shares exactly ``i`` leading bits with ours,
and the last bucket every node closer than that. Only the last bucket (the
one holding our own id) splits, when a node would enter it full; so the
table keeps many nodes near us and a few far away.

A node is **good** if it answered one of our queries in the last 15 minutes,
or has answered one ever and sent us a query in the last 15 minutes;
**bad** after failing to answer twice in a row, or once when it was not good
by then; **questionable** otherwise. Only nodes that answered one of our
queries enter the table: a node that merely queried us could be a spoofed
source, so :meth:`RoutingTable.heard_from` asks the caller to ping it first
(:attr:`Outcome.PING_FIRST`) when there would be room for it. A new node
that finds its bucket full replaces a bad node, or waits in the bucket's
replacement cache (at most :data:`MAX_REPLACEMENTS`) while the caller pings
the least recently seen questionable node; when that one fails, the most
recently seen replacement takes its place.

Against eclipse attacks the table holds at most :data:`IP_LIMIT` node per
IP address (IPv6: per /64) and :data:`SUBNET_LIMIT` per /24 (IPv6: per
/48), counting replacements; loopback addresses are exempt, so that tests
and local networks of many nodes on one host work. With a
:class:`~.bep42.Bep42Policy` of ``ENFORCE``, nodes whose id does not match
their IP (BEP 42; local and private addresses exempt) are refused; with
``FLAG`` they are inserted with ``secure`` False and counted.

Every bucket has a refresh deadline: 15 minutes after it last changed (a node
added or replaced, or a node in it answered), the caller looks up a random id
in its range (:meth:`RoutingTable.refresh_due`).

:meth:`RoutingTable.to_dict` and :meth:`RoutingTable.from_dict` persist the
table as a JSON-able structure (format in ``docs/dht.md``).
"""

from __future__ import annotations

import heapq
import ipaddress
import random
import socket
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterator

from .bep42 import Bep42Policy, is_exempt, node_id_matches
from .krpc import ID_SIZE, Address, NodeInfo

__all__ = [
    "BAD_AFTER_FAILURES",
    "BUCKET_REFRESH",
    "Entry",
    "FORMAT",
    "GOOD_FOR",
    "Heard",
    "ID_BITS",
    "IP_LIMIT",
    "K",
    "MAX_REPLACEMENTS",
    "NodeState",
    "Outcome",
    "PING_INTERVAL",
    "RoutingTable",
    "SUBNET_LIMIT",
    "distance",
]

K = 20
ID_BITS = 8 * ID_SIZE
#: A node that answered within this many seconds is good.
GOOD_FOR = 15 * 60.0
#: A bucket that has not changed for this long is refreshed.
BUCKET_REFRESH = 15 * 60.0
#: A good node that fails this many queries in a row is bad.
BAD_AFTER_FAILURES = 2
MAX_REPLACEMENTS = 8
#: Nodes per IP address (IPv6: per /64).
IP_LIMIT = 1
#: Nodes per /24 (IPv6: per /48).
SUBNET_LIMIT = 2
#: A questionable node is not pinged again sooner than this.
PING_INTERVAL = 60.0

FORMAT = "zentalk-dht-routing/1"


def distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


class NodeState(Enum):
    GOOD = "good"
    QUESTIONABLE = "questionable"
    BAD = "bad"


class Outcome(Enum):
    """What :meth:`RoutingTable.heard_from` did; the values are metric labels."""

    ADDED = "added"  # into a bucket (maybe in place of a bad node)
    UPDATED = "updated"  # already known: times refreshed
    REPLACEMENT = "replacement"  # bucket full: kept in its replacement cache
    PING_FIRST = "ping_first"  # unverified querier, there is room: ping it, insert when it answers
    FULL = "full"  # unverified querier, bucket full of good nodes: ignored
    REFUSED_SELF = "refused_self"  # our own id
    REFUSED_IP = "refused_ip"  # per-IP or per-subnet limit
    REFUSED_BEP42 = "refused_bep42"  # id does not match IP, policy ENFORCE
    ADDRESS_MISMATCH = "address_mismatch"  # a known id from another address, or a known address with another id


@dataclass(frozen=True, slots=True)
class Heard:
    """The outcome, and a node the caller should ping, if any."""

    outcome: Outcome
    ping: Address | None = None


class Entry:
    """One node in the table or in a replacement cache."""

    __slots__ = ("id", "num", "ip", "port", "info", "last_response", "last_query", "failures", "pinged",
                 "secure", "in_table")

    def __init__(self, node_id: bytes, address: Address, secure: bool) -> None:
        self.id = node_id
        self.num = int.from_bytes(node_id, "big")
        self.ip, self.port = address
        self.info = NodeInfo(node_id, address[0], address[1])
        self.last_response: float | None = None
        self.last_query: float | None = None
        self.failures = 0
        self.pinged: float | None = None
        self.secure = secure
        self.in_table = False

    @property
    def address(self) -> Address:
        return (self.ip, self.port)

    def _good(self, now: float) -> bool:
        if self.last_response is None:
            return False
        if now - self.last_response < GOOD_FOR:
            return True
        return self.last_query is not None and now - self.last_query < GOOD_FOR

    def state(self, now: float) -> NodeState:
        if self.failures >= BAD_AFTER_FAILURES:
            return NodeState.BAD
        if self._good(now):
            return NodeState.GOOD
        # BEP 5: a questionable node that fails to answer is bad.
        return NodeState.BAD if self.failures else NodeState.QUESTIONABLE


class _Bucket:
    __slots__ = ("nodes", "replacements", "last_changed")

    def __init__(self, last_changed: float) -> None:
        self.nodes: list[Entry] = []  # least recently seen first
        self.replacements: list[Entry] = []  # least recently seen first
        self.last_changed = last_changed


def _limit_keys(ip: str) -> tuple[bytes, bytes] | None:
    """(IP key, subnet key) for the eclipse limits; None for an exempt address."""
    if ":" in ip:
        packed = socket.inet_pton(socket.AF_INET6, ip)
        if packed == bytes(15) + b"\x01":
            return None
        return packed[:8], packed[:6]
    packed = socket.inet_pton(socket.AF_INET, ip)
    if packed[0] == 127:
        return None
    return packed, packed[:3]


class RoutingTable:
    def __init__(
        self,
        own_id: bytes,
        now: float,
        *,
        k: int = K,
        max_replacements: int = MAX_REPLACEMENTS,
        ip_limit: int = IP_LIMIT,
        subnet_limit: int = SUBNET_LIMIT,
        bep42: Bep42Policy = Bep42Policy.FLAG,
        refresh_interval: float = BUCKET_REFRESH,
    ) -> None:
        if len(own_id) != ID_SIZE:
            raise ValueError("a node id is 20 bytes")
        self.own_id = own_id
        self._own = int.from_bytes(own_id, "big")
        self.k = k
        self.max_replacements = max_replacements
        self.ip_limit = ip_limit
        self.subnet_limit = subnet_limit
        self.bep42 = bep42
        self.refresh_interval = refresh_interval
        self._buckets: list[_Bucket] = [_Bucket(now)]
        self._by_id: dict[bytes, Entry] = {}
        self._by_address: dict[Address, Entry] = {}
        self._ips: dict[bytes, int] = {}
        self._subnets: dict[bytes, int] = {}
        self._size = 0

    # -- introspection ------------------------------------------------------

    def __len__(self) -> int:
        """Nodes in the buckets (not counting replacement caches)."""
        return self._size

    @property
    def bucket_count(self) -> int:
        return len(self._buckets)

    @property
    def replacement_count(self) -> int:
        return len(self._by_id) - self._size

    def entries(self) -> Iterator[Entry]:
        for bucket in self._buckets:
            yield from bucket.nodes

    def get(self, node_id: bytes) -> Entry | None:
        entry = self._by_id.get(node_id)
        return entry if entry is not None and entry.in_table else None

    def by_address(self, address: Address) -> Entry | None:
        entry = self._by_address.get(address)
        return entry if entry is not None and entry.in_table else None

    def is_verified(self, address: Address, now: float) -> bool:
        """Whether ``address`` is a good node's: it answered our queries lately."""
        entry = self._by_address.get(address)
        return entry is not None and entry.in_table and entry.state(now) is NodeState.GOOD

    def state_counts(self, now: float) -> dict[str, int]:
        counts = {state.value: 0 for state in NodeState}
        for entry in self.entries():
            counts[entry.state(now).value] += 1
        return counts

    def bucket_index(self, node_id: bytes) -> int:
        return self._index(int.from_bytes(node_id, "big"))

    def _index(self, num: int) -> int:
        common = ID_BITS - (num ^ self._own).bit_length()
        last = len(self._buckets) - 1
        return common if common < last else last

    # -- updates ------------------------------------------------------------

    def heard_from(self, node_id: bytes, address: Address, now: float, *, responded: bool) -> Heard:
        """``node_id`` at ``address`` answered one of our queries (``responded``) or sent us one."""
        if node_id == self.own_id:
            return Heard(Outcome.REFUSED_SELF)
        entry = self._by_id.get(node_id)
        if entry is not None:
            return self._update(entry, address, now, responded)
        other = self._by_address.get(address)
        if other is not None:
            # Another id at a known address: a restarted node, or a liar. Only
            # once the old entry has gone bad may the new id take over.
            if other.state(now) is not NodeState.BAD:
                return Heard(Outcome.ADDRESS_MISMATCH)
            self._remove(other)
        secure = True
        if self.bep42 is not Bep42Policy.OFF and not is_exempt(address[0]) and not node_id_matches(node_id, address[0]):
            if self.bep42 is Bep42Policy.ENFORCE:
                return Heard(Outcome.REFUSED_BEP42)
            secure = False
        num = int.from_bytes(node_id, "big")
        if not responded:
            bucket = self._buckets[self._index(num)]
            if self._has_room(bucket, now):
                return Heard(Outcome.PING_FIRST, address)
            return Heard(Outcome.FULL)
        keys = _limit_keys(address[0])
        if not self._within_limits(keys) and not self._free_limits(keys, now):
            return Heard(Outcome.REFUSED_IP)
        entry = Entry(node_id, address, secure)
        entry.last_response = now
        return self._insert(entry, keys, now)

    def _has_room(self, bucket: _Bucket, now: float) -> bool:
        if len(bucket.nodes) < self.k:
            return True
        if bucket is self._buckets[-1] and len(self._buckets) < ID_BITS:
            return True
        return any(e.state(now) is NodeState.BAD for e in bucket.nodes)

    def _within_limits(self, keys: tuple[bytes, bytes] | None) -> bool:
        if keys is None:
            return True
        if self.ip_limit and self._ips.get(keys[0], 0) >= self.ip_limit:
            return False
        if self.subnet_limit and self._subnets.get(keys[1], 0) >= self.subnet_limit:
            return False
        return True

    def _free_limits(self, keys: tuple[bytes, bytes] | None, now: float) -> bool:
        """Remove bad nodes that hold the limits ``keys`` are over; True if that made room."""
        assert keys is not None
        for entry in list(self._by_id.values()):
            if entry.state(now) is NodeState.BAD:
                held = _limit_keys(entry.ip)
                if held is not None and (held[0] == keys[0] or held[1] == keys[1]):
                    self._remove(entry)
                    if self._within_limits(keys):
                        return True
        return False

    def _count(self, entry: Entry, delta: int) -> None:
        keys = _limit_keys(entry.ip)
        if keys is None:
            return
        for table, key in ((self._ips, keys[0]), (self._subnets, keys[1])):
            value = table.get(key, 0) + delta
            if value:
                table[key] = value
            else:
                table.pop(key, None)

    def _update(self, entry: Entry, address: Address, now: float, responded: bool) -> Heard:
        if entry.address != address:
            # Keep the address we verified: an id is not proof of anything.
            return Heard(Outcome.ADDRESS_MISMATCH)
        bucket = self._buckets[self._index(entry.num)]
        if responded:
            entry.last_response = now
            entry.failures = 0
            entry.pinged = None
        else:
            entry.last_query = now
        if entry.in_table:
            bucket.nodes.remove(entry)
            bucket.nodes.append(entry)
            if responded:
                bucket.last_changed = now
            return Heard(Outcome.UPDATED)
        bucket.replacements.remove(entry)
        bucket.replacements.append(entry)
        if responded and len(bucket.nodes) < self.k:
            # Room appeared (a node was removed): promote it.
            bucket.replacements.remove(entry)
            self._attach(bucket, entry, now)
            return Heard(Outcome.ADDED)
        return Heard(Outcome.UPDATED)

    def _insert(self, entry: Entry, keys: tuple[bytes, bytes] | None, now: float) -> Heard:
        while True:
            index = self._index(entry.num)
            bucket = self._buckets[index]
            if len(bucket.nodes) < self.k:
                self._register(entry)
                self._attach(bucket, entry, now)
                return Heard(Outcome.ADDED)
            if index == len(self._buckets) - 1 and len(self._buckets) < ID_BITS:
                self._split()
                continue
            break
        for old in bucket.nodes:
            if old.state(now) is NodeState.BAD:
                self._remove(old)
                self._register(entry)
                self._attach(bucket, entry, now)
                return Heard(Outcome.ADDED)
        self._register(entry)
        bucket.replacements.append(entry)
        if len(bucket.replacements) > self.max_replacements:
            self._remove(bucket.replacements[0])
        for old in bucket.nodes:
            if old.state(now) is NodeState.QUESTIONABLE and (old.pinged is None or now - old.pinged >= PING_INTERVAL):
                old.pinged = now
                return Heard(Outcome.REPLACEMENT, old.address)
        return Heard(Outcome.REPLACEMENT)

    def _register(self, entry: Entry) -> None:
        self._by_id[entry.id] = entry
        self._by_address[entry.address] = entry
        self._count(entry, +1)

    def _attach(self, bucket: _Bucket, entry: Entry, now: float) -> None:
        bucket.nodes.append(entry)
        bucket.last_changed = now
        entry.in_table = True
        self._size += 1

    def _remove(self, entry: Entry) -> None:
        bucket = self._buckets[self._index(entry.num)]
        if entry.in_table:
            bucket.nodes.remove(entry)
            entry.in_table = False
            self._size -= 1
        else:
            bucket.replacements.remove(entry)
        del self._by_id[entry.id]
        del self._by_address[entry.address]
        self._count(entry, -1)

    def _split(self) -> None:
        last = self._buckets[-1]
        depth = len(self._buckets) - 1
        bit = 1 << (ID_BITS - 1 - depth)
        near = _Bucket(last.last_changed)
        own = self._own
        near.nodes = [e for e in last.nodes if not (e.num ^ own) & bit]
        last.nodes = [e for e in last.nodes if (e.num ^ own) & bit]
        near.replacements = [e for e in last.replacements if not (e.num ^ own) & bit]
        last.replacements = [e for e in last.replacements if (e.num ^ own) & bit]
        self._buckets.append(near)

    def failed(self, address: Address, now: float) -> None:
        """A query to ``address`` went unanswered (after its retries)."""
        entry = self._by_address.get(address)
        if entry is None:
            return
        entry.failures += 1
        if entry.state(now) is not NodeState.BAD:
            return
        if not entry.in_table:
            self._remove(entry)
            return
        bucket = self._buckets[self._index(entry.num)]
        best = None
        for candidate in bucket.replacements:
            if candidate.failures:
                continue
            if best is None or (candidate.last_response or 0) >= (best.last_response or 0):
                best = candidate
        if best is not None:
            self._remove(entry)
            bucket.replacements.remove(best)
            self._attach(bucket, best, now)

    # -- queries ------------------------------------------------------------

    def closest(self, target: bytes, count: int, now: float) -> list[NodeInfo]:
        """Up to ``count`` nodes (not bad) nearest ``target``, nearest first."""
        t = int.from_bytes(target, "big")
        buckets = self._buckets
        last = len(buckets) - 1
        start = self._index(t)

        def key(entry: Entry) -> int:
            return entry.num ^ t

        out: list[Entry] = []
        # Bucket ``start`` is nearest; then the buckets past it, which all lie
        # in one distance band; then the buckets before it, nearer first.
        groups: list[list[Entry]] = [buckets[start].nodes]
        if start < last:
            groups.append([e for b in buckets[start + 1 :] for e in b.nodes])
        groups.extend(buckets[i].nodes for i in range(start - 1, -1, -1))
        bad = NodeState.BAD
        for group in groups:
            live = [e for e in group if not e.failures or e.state(now) is not bad]
            need = count - len(out)
            if len(live) > need:
                out.extend(heapq.nsmallest(need, live, key=key))
            else:
                out.extend(sorted(live, key=key))
            if len(out) >= count:
                break
        return [e.info for e in out]

    def random_id_in_bucket(self, index: int, rng: random.Random) -> bytes:
        last = len(self._buckets) - 1
        own = self._own
        if index < last:
            high = (own >> (ID_BITS - index)) << (ID_BITS - index) if index else 0
            flipped = (own ^ (1 << (ID_BITS - 1 - index))) & (1 << (ID_BITS - 1 - index))
            num = high | flipped | rng.getrandbits(ID_BITS - 1 - index)
        else:
            high = (own >> (ID_BITS - index)) << (ID_BITS - index) if index else 0
            num = high | rng.getrandbits(ID_BITS - index)
        return num.to_bytes(ID_SIZE, "big")

    def refresh_due(self, now: float, rng: random.Random) -> list[bytes]:
        """A random target in each bucket due for refresh; their deadlines move on."""
        targets = []
        for index, bucket in enumerate(self._buckets):
            if bucket.last_changed + self.refresh_interval <= now:
                targets.append(self.random_id_in_bucket(index, rng))
                bucket.last_changed = now
        return targets

    def next_refresh(self) -> float:
        return min(b.last_changed for b in self._buckets) + self.refresh_interval

    # -- persistence ----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The table as JSON-able data: ids hex, times as given to ``now``."""

        def row(e: Entry) -> list:
            return [e.id.hex(), e.ip, e.port, e.last_response]

        return {
            "format": FORMAT,
            "id": self.own_id.hex(),
            "nodes": [row(e) for b in self._buckets for e in b.nodes],
            "replacements": [row(e) for b in self._buckets for e in b.replacements],
        }

    @classmethod
    def from_dict(cls, data: Any, now: float, *, own_id: bytes | None = None, **options: Any) -> RoutingTable:
        """A table from :meth:`to_dict`'s data; ValueError if it is malformed.

        ``own_id`` replaces the stored id (say, a new BEP 42 id after the
        node's address changed); the nodes are sorted into buckets again.
        Every node restored starts unpinged: questionable unless its last
        answer is less than 15 minutes old.
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a routing table of format " + FORMAT)
        rows = data.get("nodes"), data.get("replacements")
        if not all(isinstance(r, list) for r in rows):
            raise ValueError("routing table: nodes and replacements must be lists")
        stored_id = _hex_id(data.get("id"))
        table = cls(own_id if own_id is not None else stored_id, now, **options)
        for row in rows[0] + rows[1]:
            node_id, address, last_response = _row(row)
            table._restore(node_id, address, None if last_response is None else min(last_response, now), now)
        return table

    def _restore(self, node_id: bytes, address: Address, last_response: float | None, now: float) -> None:
        if node_id == self.own_id or node_id in self._by_id or address in self._by_address:
            return
        secure = self.bep42 is Bep42Policy.OFF or is_exempt(address[0]) or node_id_matches(node_id, address[0])
        if not secure and self.bep42 is Bep42Policy.ENFORCE:
            return
        keys = _limit_keys(address[0])
        if not self._within_limits(keys):
            return
        entry = Entry(node_id, address, secure)
        entry.last_response = last_response
        index = self._index(entry.num)
        while len(self._buckets[index].nodes) >= self.k and index == len(self._buckets) - 1 and index < ID_BITS - 1:
            self._split()
            index = self._index(entry.num)
        bucket = self._buckets[index]
        if len(bucket.nodes) < self.k:
            self._register(entry)
            bucket.nodes.append(entry)
            entry.in_table = True
            self._size += 1
        elif len(bucket.replacements) < self.max_replacements:
            self._register(entry)
            bucket.replacements.append(entry)


def _hex_id(value: Any) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * ID_SIZE:
        raise ValueError("routing table: an id is 40 hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ValueError("routing table: an id is 40 hex digits") from None


def _row(row: Any) -> tuple[bytes, Address, float | None]:
    if not isinstance(row, list) or len(row) != 4:
        raise ValueError("routing table: a node is [id, ip, port, last_response]")
    node_id = _hex_id(row[0])
    ip, port, last_response = row[1], row[2], row[3]
    if not isinstance(ip, str) or type(port) is not int or not 0 < port <= 0xFFFF:
        raise ValueError("routing table: bad address")
    try:
        ip = str(ipaddress.ip_address(ip))
    except ValueError:
        raise ValueError("routing table: bad address") from None
    if last_response is not None and (isinstance(last_response, bool) or not isinstance(last_response, (int, float))):
        raise ValueError("routing table: bad time")
    return node_id, (ip, port), None if last_response is None else float(last_response)
