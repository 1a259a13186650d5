"""The iterative Kademlia lookup, sans-IO: which nodes to query next, and when a lookup is done.

One :class:`Lookup` finds the k nodes nearest a target (``find_node``), and
on the way collects peers (``get_peers``) or a BEP 44 item (``get``) and the
write tokens of the nodes that answered, for a later ``announce_peer`` or
``put``. It never sends anything itself: :meth:`Lookup.poll` returns the
queries to send now (at most α in flight) and the nodes that have failed;
the caller sends them, feeds back each answer with :meth:`Lookup.on_response`
(or :meth:`Lookup.on_error`), and calls :meth:`Lookup.poll` again after an
answer or at :meth:`Lookup.next_deadline`, when a query times out. A query
that times out is sent again ``retries`` times, then its node has failed.

The lookup is done when the k nearest nodes it knows of that have not
failed have all answered (or, for an immutable item, as soon as a value
whose hash is the target arrives). Rounds: the seeds are round 1, a node
learned from an answer in round r is round r + 1; :attr:`LookupResult.rounds`
is the deepest round that answered, :attr:`LookupResult.hops` the round of
the nearest node that answered.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum
from typing import Iterable, Union

from .items import Item, verify_signature
from .krpc import ID_SIZE, Address, NodeInfo, Response

__all__ = ["ALPHA", "Lookup", "LookupKind", "LookupResult", "LookupStep", "QUERY_TIMEOUT", "RETRIES", "Request"]

ALPHA = 3
K = 20
#: Seconds before an unanswered query is sent again or its node has failed.
QUERY_TIMEOUT = 2.0
#: Times an unanswered query is sent again.
RETRIES = 1
#: Candidates remembered beyond the k nearest (the farthest are forgotten).
CANDIDATE_FACTOR = 8
#: Peers collected by one get_peers lookup, at most.
MAX_PEERS = 1000


class LookupKind(Enum):
    FIND_NODE = "find_node"
    GET_PEERS = "get_peers"
    GET = "get"


@dataclass(frozen=True, slots=True)
class Request:
    """Send this lookup's query to ``address`` (``node_id`` None: a bootstrap address)."""

    address: Address
    node_id: bytes | None
    attempt: int


@dataclass(frozen=True, slots=True)
class LookupStep:
    requests: tuple[Request, ...] = ()
    #: Nodes that did not answer any attempt: tell the routing table.
    failed: tuple[Address, ...] = ()


@dataclass(frozen=True, slots=True)
class LookupResult:
    kind: LookupKind
    target: bytes
    #: The (up to) k nearest nodes that answered, nearest first.
    nodes: tuple[NodeInfo, ...]
    #: Their write tokens, for announce_peer / put, nearest first.
    tokens: tuple[tuple[NodeInfo, bytes], ...]
    peers: tuple[Address, ...]
    item: Item | None
    rounds: int
    hops: int
    queried: int
    responded: int
    failed: int
    started: float
    finished: float


_NEW, _IN_FLIGHT, _ANSWERED, _FAILED = range(4)
_UNKNOWN = -1  # the distance of a bootstrap address: queried first


class _Candidate:
    __slots__ = ("id", "distance", "address", "state", "attempts", "deadline", "round", "token")

    def __init__(self, node_id: bytes | None, distance: int, address: Address, round_: int) -> None:
        self.id = node_id
        self.distance = distance
        self.address = address
        self.state = _NEW
        self.attempts = 0
        self.deadline = 0.0
        self.round = round_
        self.token: bytes | None = None


class Lookup:
    """One iterative lookup. ``seeds``: nodes from the routing table, or bare addresses.

    ``own_id`` is left out of the results. For ``GET``, ``salt`` is the
    mutable item's salt (the target alone does not tell it, and the
    signature covers it); ``seq``: accept only items newer than this;
    ``stop_on_value`` ends an immutable get at the first good value (a
    ``put`` that needs every token sets it False). ``family`` 6 reads
    ``nodes6``.
    """

    def __init__(
        self,
        kind: LookupKind,
        target: bytes,
        seeds: Iterable[Union[NodeInfo, Address]],
        now: float,
        *,
        own_id: bytes | None = None,
        k: int = K,
        alpha: int = ALPHA,
        timeout: float = QUERY_TIMEOUT,
        retries: int = RETRIES,
        salt: bytes = b"",
        seq: int | None = None,
        stop_on_value: bool = True,
        family: int = 4,
    ) -> None:
        if len(target) != ID_SIZE:
            raise ValueError("a lookup target is 20 bytes")
        self.kind = kind
        self.target = target
        self._target = int.from_bytes(target, "big")
        self.own_id = own_id
        self.k = k
        self.alpha = alpha
        self.timeout = timeout
        self.retries = retries
        self.salt = salt
        self.min_seq = seq
        self.stop_on_value = stop_on_value
        self.family = family
        self.started = now
        self.finished: float | None = None
        self._candidates: list[_Candidate] = []
        self._by_address: dict[Address, _Candidate] = {}
        self._ids: set[bytes] = set()
        self._dirty = False
        self._in_flight = 0
        self._peers: dict[Address, None] = {}
        self._item: Item | None = None
        self.queried = self.responded = self.failed = 0
        self.rounds = 0
        for seed in seeds:
            if isinstance(seed, NodeInfo):
                self._add(seed.id, seed.address, 1)
            else:
                self._add(None, (seed[0], seed[1]), 1)

    # -- state ----------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.finished is not None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def expects(self, address: Address) -> bool:
        candidate = self._by_address.get(address)
        return candidate is not None and candidate.state == _IN_FLIGHT

    def next_deadline(self) -> float | None:
        """When the earliest query in flight times out; None when nothing is in flight."""
        if self.done or not self._in_flight:
            return None
        return min(c.deadline for c in self._candidates if c.state == _IN_FLIGHT)

    def _add(self, node_id: bytes | None, address: Address, round_: int) -> None:
        if address in self._by_address or (node_id is not None and (node_id in self._ids or node_id == self.own_id)):
            return
        distance = _UNKNOWN if node_id is None else int.from_bytes(node_id, "big") ^ self._target
        candidate = _Candidate(node_id, distance, address, round_)
        self._candidates.append(candidate)
        self._by_address[address] = candidate
        if node_id is not None:
            self._ids.add(node_id)
        self._dirty = True

    def _sorted(self) -> list[_Candidate]:
        if self._dirty:
            self._candidates.sort(key=lambda c: c.distance)
            limit = CANDIDATE_FACTOR * self.k
            if len(self._candidates) > limit:
                keep = self._candidates[:limit]
                for dropped in self._candidates[limit:]:
                    if dropped.state == _IN_FLIGHT:
                        keep.append(dropped)  # its answer is still expected
                    else:
                        del self._by_address[dropped.address]
                        if dropped.id is not None:
                            self._ids.discard(dropped.id)
                self._candidates = keep
            self._dirty = False
        return self._candidates

    # -- driving --------------------------------------------------------------

    def poll(self, now: float) -> LookupStep:
        """Time out what is due, and return the queries to send now."""
        if self.done:
            return LookupStep()
        requests: list[Request] = []
        failed: list[Address] = []
        if self._in_flight:
            for c in self._candidates:
                if c.state == _IN_FLIGHT and c.deadline <= now:
                    if c.attempts <= self.retries:
                        c.attempts += 1
                        c.deadline = now + self.timeout
                        requests.append(Request(c.address, c.id, c.attempts))
                    else:
                        c.state = _FAILED
                        self._in_flight -= 1
                        self.failed += 1
                        failed.append(c.address)
        considered = 0
        waiting = False
        for c in self._sorted():
            if c.state == _FAILED:
                continue
            if considered >= self.k:
                break
            considered += 1
            if c.state == _NEW:
                if self._in_flight >= self.alpha:
                    waiting = True
                    break
                c.state = _IN_FLIGHT
                c.attempts = 1
                c.deadline = now + self.timeout
                self._in_flight += 1
                self.queried += 1
                requests.append(Request(c.address, c.id, 1))
        if not self._in_flight and not waiting:
            self.finished = now
        return LookupStep(tuple(requests), tuple(failed))

    def on_error(self, address: Address, now: float) -> None:
        """The node answered with a KRPC error: it has failed for this lookup (no retry)."""
        candidate = self._by_address.get(address)
        if candidate is None or candidate.state != _IN_FLIGHT:
            return
        candidate.state = _FAILED
        self._in_flight -= 1
        self.failed += 1

    def on_response(self, address: Address, response: Response, now: float) -> bool:
        """Feed an answer from ``address``; False if it was not expected (and is ignored)."""
        candidate = self._by_address.get(address)
        if self.done or candidate is None or candidate.state != _IN_FLIGHT:
            return False
        if candidate.id is None:
            if response.sender in self._ids or response.sender == self.own_id:
                self.on_error(address, now)
                return False
            candidate.id = response.sender
            candidate.distance = int.from_bytes(response.sender, "big") ^ self._target
            self._ids.add(response.sender)
            self._dirty = True
        elif response.sender != candidate.id:
            # Not the node we asked for: it cannot vouch for what it sends.
            self.on_error(address, now)
            return False
        candidate.state = _ANSWERED
        candidate.token = response.token
        self._in_flight -= 1
        self.responded += 1
        if candidate.round > self.rounds:
            self.rounds = candidate.round
        nodes = response.nodes if self.family == 4 else response.nodes6
        if nodes:
            next_round = candidate.round + 1
            for node in nodes:
                if node.port:
                    self._add(node.id, node.address, next_round)
        if self.kind is LookupKind.GET_PEERS and response.values:
            for peer in response.values:
                if len(self._peers) >= MAX_PEERS:
                    break
                self._peers[peer] = None
        elif self.kind is LookupKind.GET and response.value is not None:
            self._take_item(response, now)
        return True

    def _take_item(self, response: Response, now: float) -> None:
        value = response.value
        assert value is not None
        if response.key is None:
            if hashlib.sha1(value).digest() == self.target:
                self._item = Item(value)
                if self.stop_on_value:
                    self.finished = now
            return
        if response.signature is None or response.seq is None:
            return
        if hashlib.sha1(response.key + self.salt).digest() != self.target:
            return
        if self.min_seq is not None and response.seq <= self.min_seq:
            return
        if self._item is not None and self._item.seq is not None and response.seq <= self._item.seq:
            return
        if verify_signature(response.key, response.signature, response.seq, value, self.salt):
            self._item = Item(value, response.key, response.signature, response.seq, self.salt)

    def result(self) -> LookupResult:
        answered = [c for c in self._sorted() if c.state == _ANSWERED and c.id is not None][: self.k]
        nodes = tuple(NodeInfo(c.id, c.address[0], c.address[1]) for c in answered)  # type: ignore[arg-type]
        tokens = tuple((node, c.token) for node, c in zip(nodes, answered) if c.token is not None)
        return LookupResult(
            kind=self.kind,
            target=self.target,
            nodes=nodes,
            tokens=tokens,
            peers=tuple(self._peers),
            item=self._item,
            rounds=self.rounds,
            hops=answered[0].round if answered else 0,
            queried=self.queried,
            responded=self.responded,
            failed=self.failed,
            started=self.started,
            finished=self.finished if self.finished is not None else self.started,
        )
