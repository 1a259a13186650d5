"""A DHT node, sans-IO: datagrams and the time in, datagrams, events and a deadline out.

:class:`DhtNode` is the whole KRPC node but its socket and its timer: it
answers queries (BEP 5 ``ping``, ``find_node``, ``get_peers``,
``announce_peer``; BEP 44 ``get`` and ``put``), keeps the routing table,
runs lookups, announces and puts for its owner, and keeps its table fresh.
An adapter does three things:

- each datagram received: ``for d in node.handle(data, source, now): send(d)``;
- at ``node.next_deadline()`` (re-read after every call): ``node.tick(now)``,
  and send what it returns;
- the owner's operations (:meth:`DhtNode.bootstrap`, :meth:`DhtNode.find_node`,
  :meth:`DhtNode.get_peers`, :meth:`DhtNode.announce`, :meth:`DhtNode.get`,
  :meth:`DhtNode.put`) return an operation id and datagrams to send; when an
  operation ends, :meth:`DhtNode.take_events` yields an
  :class:`OperationDone` with its id.

Nothing here reads the clock or global randomness: ``now`` is passed in,
and ``rng`` (give it ``random.SystemRandom()``) draws transaction ids, token
secrets and refresh targets. Counters are plain integers in
:class:`DhtStats`, read by the metrics module at scrape time; live numbers
come from :meth:`DhtNode.gauges`.

Hostile input: a datagram that does not decode is dropped (a query whose
transaction id could be read gets KRPC error 203, or the code the codec
chose); nothing raises out of :meth:`DhtNode.handle`. Each source IP has a
token bucket (:attr:`DhtConfig.rate`); datagrams beyond it are dropped and
counted (answers to our own outstanding queries are not limited). Answers
to sources that have not proven their address are at most
:attr:`DhtConfig.amplification` times the size of the query (see
``docs/dht.md``, "Amplification").
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..ratelimit import Rate, TokenBucket
from . import lookup, storage
from .bep42 import Bep42Policy
from .items import Item
from .krpc import (
    Address,
    AnnouncePeer,
    ErrorCode,
    ErrorMessage,
    FindNode,
    GetItem,
    GetPeers,
    KrpcError,
    Ping,
    PutItem,
    Query,
    Response,
    decode,
    encode,
)
from .lookup import Lookup, LookupKind, LookupResult, Request
from .routing import Heard, Outcome, RoutingTable
from .tokens import TokenSecrets

__all__ = [
    "Datagram",
    "DhtConfig",
    "DhtNode",
    "DhtStats",
    "ExternalAddressChanged",
    "ItemStored",
    "OperationDone",
    "PeerAnnounced",
    "Pinged",
    "normalize_address",
]

#: Our KRPC client version: "ZT" and a 16-bit version.
CLIENT_VERSION = b"ZT\x00\x01"


@dataclass(frozen=True, slots=True)
class DhtConfig:
    k: int = 20
    alpha: int = 3
    #: Seconds before a query of ours is retried or given up.
    query_timeout: float = 2.0
    query_retries: int = 1
    #: Nodes in a find_node / get_peers / get answer (BEP 5 uses 8).
    response_nodes: int = 8
    #: Peers in a get_peers answer, at most, before the amplification cap.
    response_values: int = 50
    #: Answers to unverified sources are at most this many times the query's size.
    amplification: int = 3
    #: Any answer, at most (fits a 1500-byte MTU with IPv4 and UDP headers).
    max_response: int = 1472
    #: Datagrams per source IP.
    rate: Rate = Rate(limit=20, period=1.0, burst=50)
    #: Source IPs whose token buckets are remembered (least recently seen forgotten first).
    max_rate_limited_ips: int = 4096
    token_rotation: float = 300.0
    peer_ttl: float = storage.PEER_TTL
    item_ttl: float = storage.ITEM_TTL
    max_torrents: int = storage.MAX_TORRENTS
    max_peers_per_torrent: int = storage.MAX_PEERS_PER_TORRENT
    max_items: int = storage.MAX_ITEMS
    bep42: Bep42Policy = Bep42Policy.FLAG
    ip_limit: int = 1
    subnet_limit: int = 2
    max_replacements: int = 8
    refresh_interval: float = 15 * 60.0
    #: Refresh lookups started per tick, at most.
    max_refresh_lookups: int = 3
    #: Pings in flight to verify new nodes or questionable ones, at most.
    max_maintenance_pings: int = 16
    #: An unknown querier's address is pinged (to verify it) at most once per this many seconds.
    verify_backoff: float = 15 * 60.0
    #: With an empty table, bootstrap again this often.
    bootstrap_retry: float = 60.0
    #: How often expired peers and items are swept.
    expiry_interval: float = 60.0
    #: Zero bytes added (as ``pad``) to our BEP 44 ``get`` queries, so that nodes whose
    #: table we are not in may send a whole item under their amplification rule; 400
    #: lets a 1472-byte answer through a 3x rule. For clients; a relay is in tables.
    get_padding: int = 0
    #: BEP 43: send ``ro=1`` and answer no queries.
    read_only: bool = False
    client_version: bytes | None = CLIENT_VERSION
    #: 4 or 6: the address family of this node's socket (BEP 32: one table per family).
    family: int = 4
    #: Distinct voters kept for our external address (BEP 42 ``ip``).
    address_voters: int = 32
    #: Votes that decide our external address.
    address_quorum: int = 8

    def table_options(self) -> dict[str, Any]:
        """The :class:`~.routing.RoutingTable` keywords this configuration implies
        (for ``RoutingTable.from_dict(data, now, **config.table_options())``)."""
        return {
            "k": self.k, "max_replacements": self.max_replacements, "ip_limit": self.ip_limit,
            "subnet_limit": self.subnet_limit, "bep42": self.bep42, "refresh_interval": self.refresh_interval,
        }


@dataclass(frozen=True, slots=True)
class Datagram:
    data: bytes
    address: Address


@dataclass(frozen=True, slots=True)
class OperationDone:
    """An operation started by the owner ended.

    ``kind``: find_node, get_peers, get, announce, put or bootstrap.
    ``result`` is its lookup's; for announce and put, ``stored`` counts the
    nodes that acknowledged the write and ``errors`` the KRPC error codes
    the others answered.
    """

    op: int
    kind: str
    result: LookupResult
    stored: int = 0
    errors: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Pinged:
    """The end of an owner's :meth:`DhtNode.ping`: the answer, or None after the timeouts or an error."""

    op: int
    address: Address
    response: Response | None


@dataclass(frozen=True, slots=True)
class PeerAnnounced:
    info_hash: bytes
    peer: Address


@dataclass(frozen=True, slots=True)
class ItemStored:
    target: bytes
    seq: int | None


@dataclass(frozen=True, slots=True)
class ExternalAddressChanged:
    """Most nodes answering us see us at ``ip`` (BEP 42 ``ip``): a BEP 42 id should match it."""

    ip: str


def _counter() -> defaultdict:
    return defaultdict(int)


@dataclass(slots=True)
class DhtStats:
    """What the node did; plain integers, read at scrape time."""

    #: Queries received, by (method, result): "ok", or the KRPC error code answered.
    queries: defaultdict[tuple[str, str], int] = field(default_factory=_counter)
    #: Datagrams dropped unanswered, by reason (the codec's reasons, "rate_limited", ...).
    dropped: defaultdict[str, int] = field(default_factory=_counter)
    #: Queries we sent, by method.
    sent: defaultdict[str, int] = field(default_factory=_counter)
    #: What became of the queries we sent, by (method, "response" / "error" / "timeout").
    outcomes: defaultdict[tuple[str, str], int] = field(default_factory=_counter)
    #: Routing table updates, by :class:`~.routing.Outcome` value.
    routing: defaultdict[str, int] = field(default_factory=_counter)
    #: Lookups finished, by (kind, "found" / "empty").
    lookups: defaultdict[tuple[str, str], int] = field(default_factory=_counter)
    #: Answers cut down to the amplification cap.
    trimmed: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0


def normalize_address(source: tuple) -> Address | None:
    """``(host, port)`` from a socket's source tuple: zone dropped, IPv4-mapped unwrapped."""
    try:
        host, port = source[0], source[1]
    except (TypeError, IndexError):
        return None
    if type(host) is not str or type(port) is not int or not 0 < port <= 0xFFFF:
        return None
    if "%" in host:
        host = host.split("%", 1)[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


# Transaction purposes.
_LOOKUP, _PING, _STORE, _ASK = range(4)


class _Transaction:
    __slots__ = ("address", "op", "purpose", "deadline", "method")

    def __init__(self, address: Address, op: _Operation | None, purpose: int, deadline: float, method: str) -> None:
        self.address = address
        self.op = op
        self.purpose = purpose
        self.deadline = deadline
        self.method = method


class _Operation:
    __slots__ = ("id", "kind", "lookup", "payload", "pending", "stored", "errors", "result")

    def __init__(self, op_id: int, kind: str, lookup: Lookup | None, payload: Any = None) -> None:
        self.id = op_id
        self.kind = kind  # find_node, get_peers, get, announce, put, bootstrap, refresh
        self.lookup = lookup
        self.payload = payload
        self.pending = 0
        self.stored = 0
        self.errors: list[int] = []
        self.result: LookupResult | None = None


_LOOKUP_KINDS = {
    "find_node": LookupKind.FIND_NODE,
    "bootstrap": LookupKind.FIND_NODE,
    "refresh": LookupKind.FIND_NODE,
    "get_peers": LookupKind.GET_PEERS,
    "announce": LookupKind.GET_PEERS,
    "get": LookupKind.GET,
    "put": LookupKind.GET,
}


class DhtNode:
    def __init__(
        self,
        node_id: bytes,
        *,
        now: float,
        rng: random.Random,
        config: DhtConfig = DhtConfig(),
        stats: DhtStats | None = None,
        table: RoutingTable | None = None,
    ) -> None:
        self.config = config
        self.stats = stats if stats is not None else DhtStats()
        self._rng = rng
        if table is None:
            table = RoutingTable(node_id, now, **config.table_options())
        elif table.own_id != node_id:
            raise ValueError("the routing table belongs to another node id")
        self.node_id = node_id
        self.table = table
        self.peers = storage.PeerStore(config.max_torrents, config.max_peers_per_torrent, config.peer_ttl)
        self.items = storage.ItemStore(config.max_items, config.item_ttl)
        self.tokens = TokenSecrets(rng, now, config.token_rotation)
        self.external_ip: str | None = None
        #: A relay's Ed25519 public key, given to a ``ping`` that asks (``zr``).
        self.relay_key: bytes | None = None
        self._limits: OrderedDict[str, TokenBucket] = OrderedDict()
        self._transactions: dict[bytes, _Transaction] = {}
        self._deadlines: list[tuple[float, bytes]] = []
        self._operations: dict[int, _Operation] = {}
        self._next_op = 1
        self._events: list = []
        self._pinging: set[Address] = set()
        self._bootstrap: tuple[Address, ...] = ()
        self._next_bootstrap: float | None = None
        self._next_expiry = now + config.expiry_interval
        self._votes: OrderedDict[str, str] = OrderedDict()
        self._tally: dict[str, int] = {}
        self._verify_backoff: OrderedDict[Address, float] = OrderedDict()
        self._handlers: dict[type, Callable[[Any, Address, float], Response]] = {
            Ping: self._on_ping,
            FindNode: self._on_find_node,
            GetPeers: self._on_get_peers,
            AnnouncePeer: self._on_announce_peer,
            GetItem: self._on_get,
            PutItem: self._on_put,
        }

    # -- the adapter's interface ------------------------------------------------

    def handle(self, data: bytes, source: tuple, now: float) -> list[Datagram]:
        """One datagram from ``source`` (a socket address tuple); what to send in return."""
        self.stats.bytes_received += len(data)
        address = normalize_address(source)
        if address is None:
            self.stats.dropped["bad_source"] += 1
            return []
        if (":" in address[0]) != (self.config.family == 6):
            self.stats.dropped["wrong_family"] += 1
            return []
        try:
            message = decode(data)
        except KrpcError as error:
            if not self._allowed(address[0], now):
                self.stats.dropped["rate_limited"] += 1
                return []
            return self._refuse(error, address, len(data), now)
        if not self._solicited(message, address) and not self._allowed(address[0], now):
            # Answers to our own queries are not limited: we chose to ask.
            self.stats.dropped["rate_limited"] += 1
            return []
        out: list[Datagram] = []
        if isinstance(message, Response):
            self._on_response(message, address, now, out)
        elif isinstance(message, ErrorMessage):
            self._on_error(message, address, now, out)
        else:
            self._on_query(message, address, len(data), now, out)
        self._count_sent(out)
        return out

    def tick(self, now: float) -> list[Datagram]:
        """Run what is due at ``now``: timeouts, retries, refreshes, expiry."""
        out: list[Datagram] = []
        due: dict[int, _Operation] = {}
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, tid = heapq.heappop(self._deadlines)
            txn = self._transactions.get(tid)
            if txn is None or txn.deadline != deadline:
                continue
            del self._transactions[tid]
            if txn.purpose == _LOOKUP:
                assert txn.op is not None
                due[txn.op.id] = txn.op
                continue
            if txn.purpose == _ASK:
                assert txn.op is not None
                self._ask_timed_out(txn.op, now, out)
                continue
            self.stats.outcomes[txn.method, "timeout"] += 1
            self.table.failed(txn.address, now)
            if txn.purpose == _PING:
                self._pinging.discard(txn.address)
            else:
                assert txn.op is not None
                self._store_answered(txn.op, now)
        for op in due.values():
            if op.id in self._operations:
                self._drive(op, now, out)
        if now >= self._next_expiry:
            self.peers.expire(now)
            self.items.expire(now)
            self._next_expiry = now + self.config.expiry_interval
        if len(self.table) and now >= self.table.next_refresh():
            for target in self.table.refresh_due(now, self._rng)[: self.config.max_refresh_lookups]:
                self._start("refresh", target, now, out)
        if not len(self.table) and self._next_bootstrap is not None and now >= self._next_bootstrap:
            if not any(op.kind == "bootstrap" for op in self._operations.values()):
                self._start("bootstrap", self.node_id, now, out, seeds=self._bootstrap)
            self._next_bootstrap = now + self.config.bootstrap_retry
        self._count_sent(out)
        return out

    def next_deadline(self) -> float:
        """When :meth:`tick` must run next."""
        while self._deadlines:
            deadline, tid = self._deadlines[0]
            txn = self._transactions.get(tid)
            if txn is not None and txn.deadline == deadline:
                break
            heapq.heappop(self._deadlines)
        deadline = self._next_expiry
        if self._deadlines:
            deadline = min(deadline, self._deadlines[0][0])
        if len(self.table):
            deadline = min(deadline, self.table.next_refresh())
        elif self._next_bootstrap is not None:
            deadline = min(deadline, self._next_bootstrap)
        return deadline

    def take_events(self) -> list:
        """Events since the last call: OperationDone, PeerAnnounced, ItemStored, ExternalAddressChanged."""
        events, self._events = self._events, []
        return events

    def gauges(self, now: float) -> dict[str, Any]:
        """Live numbers for the metrics module."""
        return {
            "nodes": self.table.state_counts(now),
            "replacements": self.table.replacement_count,
            "buckets": self.table.bucket_count,
            "torrents": len(self.peers),
            "peers": self.peers.peer_count,
            "items": len(self.items),
            "operations": len(self._operations),
            "transactions": len(self._transactions),
        }

    # -- the owner's operations ------------------------------------------------

    def bootstrap(self, addresses: list[Address], now: float) -> tuple[int, list[Datagram]]:
        """Look up our own id through ``addresses`` (resolved by the caller) and the table.

        While the table stays empty the node bootstraps again every
        :attr:`DhtConfig.bootstrap_retry` seconds through the same addresses.
        """
        self._bootstrap = tuple(addresses)
        self._next_bootstrap = now + self.config.bootstrap_retry
        out: list[Datagram] = []
        op = self._start("bootstrap", self.node_id, now, out, seeds=self._bootstrap)
        self._count_sent(out)
        return op, out

    def find_node(self, target: bytes, now: float) -> tuple[int, list[Datagram]]:
        return self._operation("find_node", target, now)

    def get_peers(self, info_hash: bytes, now: float) -> tuple[int, list[Datagram]]:
        return self._operation("get_peers", info_hash, now)

    def announce(self, info_hash: bytes, now: float, port: int | None = None,
                 seed: bool = False) -> tuple[int, list[Datagram]]:
        """get_peers, then announce_peer to the k nearest that answered; ``port`` None: implied."""
        return self._operation("announce", info_hash, now, payload=(info_hash, port, seed))

    def ping(self, address: Address, now: float, want_relay: bool = False) -> tuple[int, list[Datagram]]:
        """One ``ping`` to ``address``, retried like a lookup's query; ends with :class:`Pinged`.

        ``want_relay`` asks a Zentalk relay for its Ed25519 key (the ``zr``
        extension), which names its BEP 44 record; other nodes ignore it.
        """
        op_id = self._next_op
        self._next_op += 1
        self._operations[op_id] = _Operation(op_id, "ping", None, (address, want_relay, self.config.query_retries))
        out = [self._ask(self._operations[op_id], now)]
        self._count_sent(out)
        return op_id, out

    def get(self, target: bytes, now: float, salt: bytes = b"", seq: int | None = None) -> tuple[int, list[Datagram]]:
        """BEP 44 get: an immutable item, or the newest mutable one (``salt`` needed to verify it)."""
        return self._operation("get", target, now, salt=salt, seq=seq)

    def put(self, item: Item, now: float, cas: int | None = None) -> tuple[int, list[Datagram]]:
        """BEP 44 put: get (for tokens), then put to the k nearest that answered."""
        if not item.verify():
            raise ValueError("the item is over BEP 44's limits or its signature does not verify")
        return self._operation("put", item.target, now, payload=(item, cas), salt=item.salt, stop_on_value=False)

    def _operation(self, kind: str, target: bytes, now: float, payload: Any = None,
                   **options: Any) -> tuple[int, list[Datagram]]:
        out: list[Datagram] = []
        op = self._start(kind, target, now, out, payload=payload, **options)
        self._count_sent(out)
        return op, out

    # -- lookups ------------------------------------------------------------------

    def _start(self, kind: str, target: bytes, now: float, out: list[Datagram], *, payload: Any = None,
               seeds: tuple[Address, ...] = (), **options: Any) -> int:
        config = self.config
        start: list = list(self.table.closest(target, config.k, now))
        if not start:
            start = list(seeds or self._bootstrap)
        elif seeds:
            start.extend(seeds)
        lookup = Lookup(
            _LOOKUP_KINDS[kind], target, start, now, own_id=self.node_id, k=config.k, alpha=config.alpha,
            timeout=config.query_timeout, retries=config.query_retries, family=config.family, **options,
        )
        op = _Operation(self._next_op, kind, lookup, payload)
        self._next_op += 1
        self._operations[op.id] = op
        self._drive(op, now, out)
        return op.id

    def _drive(self, op: _Operation, now: float, out: list[Datagram]) -> None:
        lookup = op.lookup
        step = lookup.poll(now)
        for address in step.failed:
            self.stats.outcomes[lookup.kind.value, "timeout"] += 1
            self.table.failed(address, now)
        for request in step.requests:
            out.append(self._lookup_query(op, request, now))
        if lookup.done and op.result is None:
            self._lookup_done(op, now, out)

    def _lookup_query(self, op: _Operation, request: Request, now: float) -> Datagram:
        lookup = op.lookup
        tid = self._new_tid()
        sender = self.node_id
        ro, client = self.config.read_only, self.config.client_version
        if lookup.kind is LookupKind.FIND_NODE:
            query: Query = FindNode(tid, sender, lookup.target, read_only=ro, client=client)
        elif lookup.kind is LookupKind.GET_PEERS:
            query = GetPeers(tid, sender, lookup.target, read_only=ro, client=client)
        else:
            query = GetItem(tid, sender, lookup.target, lookup.min_seq, ro, client, self.config.get_padding)
        return self._send(query, request.address, op, _LOOKUP, now)

    def _lookup_done(self, op: _Operation, now: float, out: list[Datagram]) -> None:
        result = op.result = self._with_local(op.lookup.result(), now)
        found = result.nodes if result.kind is LookupKind.FIND_NODE else (result.peers or result.item)
        self.stats.lookups[result.kind.value, "found" if found else "empty"] += 1
        if op.kind == "announce":
            info_hash, port, seed = op.payload
            for node, token in result.tokens:
                query: Query = AnnouncePeer(
                    self._new_tid(), self.node_id, info_hash, port or 0, token, port is None, seed,
                    self.config.read_only, self.config.client_version,
                )
                out.append(self._send(query, node.address, op, _STORE, now))
                op.pending += 1
        elif op.kind == "put":
            item, cas = op.payload
            for node, token in result.tokens:
                query = PutItem(
                    self._new_tid(), self.node_id, token, item.value, item.key, item.signature, item.seq, item.salt,
                    cas, self.config.read_only, self.config.client_version,
                )
                out.append(self._send(query, node.address, op, _STORE, now))
                op.pending += 1
        if not op.pending:
            self._finish(op)

    def _with_local(self, result: LookupResult, now: float) -> LookupResult:
        """What we store ourselves counts too: we may be one of the nodes nearest the target.

        A lookup asks others only; without this, a peer announced to us, or an
        item put to us, would be found by everyone but us.
        """
        if result.kind is LookupKind.GET_PEERS:
            local = self.peers.peers(result.target, now, lookup.MAX_PEERS, self._rng)
            if local:
                merged = tuple(dict.fromkeys((*result.peers, *local)))[: lookup.MAX_PEERS]
                return replace(result, peers=merged)
        elif result.kind is LookupKind.GET:
            local = self.items.get(result.target, now)
            found = result.item
            if local is not None and (found is None or (local.seq or 0) > (found.seq or 0)):
                return replace(result, item=local)
        return result

    def _store_answered(self, op: _Operation, now: float) -> None:
        op.pending -= 1
        if not op.pending:
            self._finish(op)

    def _finish(self, op: _Operation) -> None:
        del self._operations[op.id]
        if op.kind == "refresh":
            return
        assert op.result is not None
        self._events.append(OperationDone(op.id, op.kind, op.result, op.stored, tuple(op.errors)))

    # -- sending --------------------------------------------------------------------

    def _new_tid(self) -> bytes:
        while True:
            tid = self._rng.randbytes(4)
            if tid not in self._transactions:
                return tid

    def _send(self, query: Query, address: Address, op: _Operation | None, purpose: int, now: float) -> Datagram:
        deadline = now + self.config.query_timeout
        self._transactions[query.tid] = _Transaction(address, op, purpose, deadline, query.method)
        heapq.heappush(self._deadlines, (deadline, query.tid))
        self.stats.sent[query.method] += 1
        return Datagram(encode(query), address)

    def _ping(self, address: Address, now: float, out: list[Datagram]) -> None:
        if address in self._pinging or len(self._pinging) >= self.config.max_maintenance_pings:
            return
        self._pinging.add(address)
        query = Ping(self._new_tid(), self.node_id, self.config.read_only, self.config.client_version)
        out.append(self._send(query, address, None, _PING, now))

    def _verify(self, address: Address, now: float, out: list[Datagram]) -> None:
        """Ping an unknown querier, which enters the table if it answers.

        At most once per address per :attr:`DhtConfig.verify_backoff`: a
        spoofed source gets one ping, however many queries carry its address.
        """
        backoff = self._verify_backoff
        until = backoff.get(address)
        if until is not None and until > now:
            return
        if address in self._pinging or len(self._pinging) >= self.config.max_maintenance_pings:
            return
        backoff.pop(address, None)
        backoff[address] = now + self.config.verify_backoff
        if len(backoff) > self.config.max_rate_limited_ips:
            backoff.popitem(last=False)
        self._ping(address, now, out)

    def _ask(self, op: _Operation, now: float) -> Datagram:
        address, want_relay, _ = op.payload
        query = Ping(self._new_tid(), self.node_id, self.config.read_only, self.config.client_version, want_relay)
        return self._send(query, address, op, _ASK, now)

    def _ask_timed_out(self, op: _Operation, now: float, out: list[Datagram]) -> None:
        address, want_relay, retries = op.payload
        if retries > 0:
            op.payload = (address, want_relay, retries - 1)
            out.append(self._ask(op, now))
            return
        self.stats.outcomes["ping", "timeout"] += 1
        self.table.failed(address, now)
        self._asked(op, None)

    def _asked(self, op: _Operation, response: Response | None) -> None:
        del self._operations[op.id]
        self._events.append(Pinged(op.id, op.payload[0], response))

    def _count_sent(self, out: list[Datagram]) -> None:
        for datagram in out:
            self.stats.bytes_sent += len(datagram.data)

    def _solicited(self, message: Any, address: Address) -> bool:
        if not isinstance(message, (Response, ErrorMessage)):
            return False
        txn = self._transactions.get(message.tid)
        return txn is not None and txn.address == address

    def _allowed(self, ip: str, now: float) -> bool:
        bucket = self._limits.get(ip)
        if bucket is None:
            if len(self._limits) >= self.config.max_rate_limited_ips:
                self._limits.popitem(last=False)
            bucket = self._limits[ip] = TokenBucket(self.config.rate, now)
        else:
            self._limits.move_to_end(ip)
        return bucket.take(now)

    # -- answers to our queries -------------------------------------------------------

    def _heard(self, heard: Heard, now: float, out: list[Datagram]) -> None:
        self.stats.routing[heard.outcome.value] += 1
        if heard.ping is not None:
            self._ping(heard.ping, now, out)

    def _on_response(self, response: Response, address: Address, now: float, out: list[Datagram]) -> None:
        txn = self._transactions.get(response.tid)
        if txn is None:
            self.stats.dropped["unknown_transaction"] += 1
            return
        if txn.address != address:
            self.stats.dropped["unexpected_source"] += 1
            return
        del self._transactions[response.tid]
        self.stats.outcomes[txn.method, "response"] += 1
        if response.your_ip is not None:
            self._vote(address[0], response.your_ip[0])
        op = txn.op
        if txn.purpose == _LOOKUP:
            assert op is not None
            # Whatever the lookup makes of it, the node answered our transaction id.
            op.lookup.on_response(address, response, now)
            self._heard(self.table.heard_from(response.sender, address, now, responded=True), now, out)
            if op.id in self._operations:
                self._drive(op, now, out)
            return
        self._heard(self.table.heard_from(response.sender, address, now, responded=True), now, out)
        if txn.purpose == _PING:
            self._pinging.discard(address)
        elif txn.purpose == _ASK:
            assert op is not None
            self._asked(op, response)
        else:
            assert op is not None
            op.stored += 1
            self._store_answered(op, now)

    def _on_error(self, error: ErrorMessage, address: Address, now: float, out: list[Datagram]) -> None:
        txn = self._transactions.get(error.tid)
        if txn is None or txn.address != address:
            self.stats.dropped["unknown_transaction" if txn is None else "unexpected_source"] += 1
            return
        del self._transactions[error.tid]
        self.stats.outcomes[txn.method, "error"] += 1
        op = txn.op
        if txn.purpose == _LOOKUP:
            assert op is not None
            op.lookup.on_error(address, now)
            if op.id in self._operations:
                self._drive(op, now, out)
        elif txn.purpose == _PING:
            self._pinging.discard(address)
        elif txn.purpose == _ASK:
            assert op is not None
            self._asked(op, None)
        else:
            assert op is not None
            op.errors.append(error.code)
            self._store_answered(op, now)

    def _vote(self, voter: str, ip: str) -> None:
        """One responder's view of our address (BEP 42 ``ip``); the last few voters count."""
        votes, tally = self._votes, self._tally
        previous = votes.pop(voter, None)
        if previous is not None:
            tally[previous] -= 1
        votes[voter] = ip
        tally[ip] = tally.get(ip, 0) + 1
        if len(votes) > self.config.address_voters:
            _, dropped = votes.popitem(last=False)
            tally[dropped] -= 1
        count = tally[ip]
        if ip != self.external_ip and count >= self.config.address_quorum and 2 * count > len(votes):
            self.external_ip = ip
            self._events.append(ExternalAddressChanged(ip))
        for stale in [key for key, value in tally.items() if not value]:
            del tally[stale]

    # -- queries ----------------------------------------------------------------------------

    def _budget(self, address: Address, query_size: int, now: float) -> int:
        if self.table.is_verified(address, now):
            return self.config.max_response
        return min(self.config.max_response, self.config.amplification * query_size)

    def _refuse(self, error: KrpcError, address: Address, size: int, now: float) -> list[Datagram]:
        if error.tid is None or self.config.read_only:
            self.stats.dropped[error.reason] += 1
            return []
        self.stats.queries[error.method or "unknown", str(int(error.code))] += 1
        data = self._error_reply(error.tid, error.code, self._budget(address, size, now))
        if data is None:
            return []
        self.stats.bytes_sent += len(data)
        return [Datagram(data, address)]

    def _error_reply(self, tid: bytes, code: ErrorCode, budget: int) -> bytes | None:
        data = encode(ErrorMessage(tid, int(code), code.text))
        if len(data) > budget:
            data = encode(ErrorMessage(tid, int(code), ""))
            if len(data) > budget:
                self.stats.dropped["over_budget"] += 1
                return None
        return data

    def _on_query(self, query: Query, address: Address, size: int, now: float, out: list[Datagram]) -> None:
        if self.config.read_only:
            self.stats.dropped["read_only"] += 1
            return
        verify = False
        if not query.read_only:
            heard = self.table.heard_from(query.sender, address, now, responded=False)
            self.stats.routing[heard.outcome.value] += 1
            if heard.outcome is Outcome.PING_FIRST:
                verify = True  # below, if the budget allows
            elif heard.ping is not None:
                self._ping(heard.ping, now, out)  # a node of our table: verified
        budget = self._budget(address, size, now)
        try:
            response = self._handlers[type(query)](query, address, now)
        except KrpcError as error:
            self.stats.queries[query.method, str(int(error.code))] += 1
            data = self._error_reply(query.tid, error.code, budget)
            if data is not None:
                out.append(Datagram(data, address))
            return
        self.stats.queries[query.method, "ok"] += 1
        data = self._fit(response, budget)
        if data is None:
            return
        out.append(Datagram(data, address))
        if verify:
            self._verify(address, now, out)

    def _answer(self, query: Query, address: Address, now: float, target: bytes | None = None,
                **fields: Any) -> Response:
        """Our response to ``query``: the querier's address (BEP 42), our version, and the nodes nearest ``target``."""
        if target is not None:
            nodes = tuple(self.table.closest(target, self.config.response_nodes, now))
            fields["nodes6" if self.config.family == 6 else "nodes"] = nodes
        return Response(query.tid, self.node_id, your_ip=address, client=self.config.client_version, **fields)

    def _on_ping(self, query: Ping, address: Address, now: float) -> Response:
        if query.want_relay and self.relay_key is not None:
            return self._answer(query, address, now, relay_key=self.relay_key)
        return self._answer(query, address, now)

    def _on_find_node(self, query: FindNode, address: Address, now: float) -> Response:
        return self._answer(query, address, now, query.target)

    def _on_get_peers(self, query: GetPeers, address: Address, now: float) -> Response:
        token = self.tokens.issue(address[0], now)
        peers = self.peers.peers(query.info_hash, now, self.config.response_values, self._rng)
        values = tuple(peers) if peers else None
        return self._answer(query, address, now, query.info_hash, values=values, token=token)

    def _on_announce_peer(self, query: AnnouncePeer, address: Address, now: float) -> Response:
        if not self.tokens.valid(query.token, address[0], now):
            raise KrpcError(ErrorCode.PROTOCOL, "invalid_token", query.tid, query.method)
        peer = (address[0], address[1] if query.implied_port else query.port)
        self.peers.announce(query.info_hash, peer, now)
        self._events.append(PeerAnnounced(query.info_hash, peer))
        return self._answer(query, address, now)

    def _on_get(self, query: GetItem, address: Address, now: float) -> Response:
        token = self.tokens.issue(address[0], now)
        response = self._answer(query, address, now, query.target, token=token)
        item = self.items.get(query.target, now)
        if item is None:
            return response
        if item.key is None:
            return replace(response, value=item.value)
        if query.seq is not None and item.seq is not None and item.seq <= query.seq:
            return replace(response, seq=item.seq)  # BEP 44: nothing newer; say what we have
        return replace(response, value=item.value, key=item.key, signature=item.signature, seq=item.seq)

    def _on_put(self, query: PutItem, address: Address, now: float) -> Response:
        if not self.tokens.valid(query.token, address[0], now):
            raise KrpcError(ErrorCode.PROTOCOL, "invalid_token", query.tid, query.method)
        item = Item(query.value, query.key, query.signature, query.seq, query.salt)
        if item.key is not None and not item.verify():
            raise KrpcError(ErrorCode.INVALID_SIGNATURE, "invalid_signature", query.tid, query.method)
        try:
            self.items.put(item, now, query.cas)
        except KrpcError as error:
            raise KrpcError(error.code, error.reason, query.tid, query.method) from None
        self._events.append(ItemStored(item.target, item.seq))
        return self._answer(query, address, now)

    # -- amplification ------------------------------------------------------------------------

    def _fit(self, response: Response, budget: int) -> bytes | None:
        """``response`` encoded in at most ``budget`` bytes, cut down if it must be.

        In order: our client version; nodes, farthest first; peers, last
        first; the BEP 44 item; the ``ip`` field; the token.
        """
        data = encode(response)
        if len(data) <= budget:
            return data
        self.stats.trimmed += 1
        response = replace(response, client=None)
        data = encode(response)
        while len(data) > budget:
            over = len(data) - budget
            if response.nodes:
                response = replace(response, nodes=_cut(response.nodes, over, 26))
            elif response.nodes6:
                response = replace(response, nodes6=_cut(response.nodes6, over, 38))
            elif response.values:
                per = 8 if ":" not in response.values[0][0] else 21  # "6:" + 6 bytes, "18:" + 18 bytes
                response = replace(response, values=_cut(response.values, over, per) or None)
            elif response.value is not None or response.seq is not None:
                response = replace(response, value=None, key=None, signature=None, seq=None)
            elif response.relay_key is not None:
                response = replace(response, relay_key=None)
            elif response.your_ip is not None:
                response = replace(response, your_ip=None)
            elif response.token is not None:
                response = replace(response, token=None)
            else:
                self.stats.dropped["over_budget"] += 1
                return None
            data = encode(response)
        return data


def _cut(items: tuple, over: int, size: int) -> tuple:
    """``items`` less enough from the end to save ``over`` bytes at ``size`` bytes each."""
    keep = len(items) - -(-over // size)
    return items[:keep] if keep > 0 else ()
