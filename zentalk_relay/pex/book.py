"""The peer book, sans-IO: every relay this node knows, and what it may share.

A peer enters as a *candidate* (learned by PEX or configuration) and becomes
*verified* only once this node has dialled it and it authenticated as the
node id it claimed. Only verified peers are shared, and only while fresh
(seen within an hour), established (verified for ten minutes) and not opted
out; peers that asked for privacy are shared by node id alone. Candidates
that keep failing are dropped; the book is bounded and evicts the least
useful first (failing candidates, then the longest unseen).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from .codec import MAX_ENTRIES, Entry

CANDIDATE = "candidate"
VERIFIED = "verified"
FAILING = "failing"
STATES = (CANDIDATE, VERIFIED, FAILING)


@dataclass(frozen=True, slots=True)
class Peer:
    node_id: bytes
    host: str
    port: int
    link_key: bytes
    capabilities: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    verified_since: float | None = None
    latency_ms: int = 0
    failures: int = 0
    opted_out: bool = False
    private: bool = False

    @property
    def state(self) -> str:
        if self.failures:
            return FAILING
        return VERIFIED if self.verified_since is not None else CANDIDATE


@dataclass(frozen=True, slots=True)
class Policy:
    fresh: float = 3600.0  # shared only if seen within this many seconds
    min_uptime: float = 600.0  # and verified at least this long ago
    max_failures: int = 5  # dropped after this many failed dials in a row
    capacity: int = 5000
    allow_private_addresses: bool = False  # loopback and RFC 1918 (tests, private networks)


def address_problem(host: str, port: int, allow_private: bool) -> str | None:
    """Why an address must not be dialled, or None."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "bad_address"
    if port == 0:
        return "bad_port"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved or (ip.version == 4 and host.endswith(".255")):
        return "bogus_address"
    if not allow_private and (ip.is_private or ip.is_loopback or ip.is_link_local):
        return "private_address"
    return None


def _prefix(host: str) -> str:
    ip = ipaddress.ip_address(host)
    bits = 16 if ip.version == 4 else 32
    return str(ipaddress.ip_network(f"{host}/{bits}", strict=False))


class PeerBook:
    def __init__(self, own_id: bytes, policy: Policy = Policy()) -> None:
        self.own_id = own_id
        self.policy = policy
        self.peers: dict[bytes, Peer] = {}
        self.dirty: set[bytes] = set()
        self.removed: set[bytes] = set()

    def _put(self, peer: Peer) -> None:
        self.peers[peer.node_id] = peer
        self.dirty.add(peer.node_id)
        self.removed.discard(peer.node_id)
        if len(self.peers) > self.policy.capacity:
            self._evict()

    def _drop(self, node_id: bytes) -> None:
        if self.peers.pop(node_id, None) is not None:
            self.dirty.discard(node_id)
            self.removed.add(node_id)

    def _evict(self) -> None:
        victim = min(self.peers.values(), key=lambda p: (p.state == VERIFIED, -p.failures, p.last_seen))
        self._drop(victim.node_id)

    def load(self, peers: list[Peer]) -> None:
        self.peers = {peer.node_id: peer for peer in peers}

    # -- what happens to peers ------------------------------------------------------

    def learn(self, entry: Entry, now: float, own_addresses: frozenset = frozenset()) -> str | None:
        """A candidate from a PEX response; the reason it is refused, or None."""
        if entry.node_id == self.own_id:
            return "own_id"
        if not entry.host:
            return "no_address"  # known by node id only: nothing to dial
        if (entry.host, entry.port) in own_addresses:
            return "own_address"  # another node id at our address: a trick to make us dial ourselves
        problem = address_problem(entry.host, entry.port, self.policy.allow_private_addresses)
        if problem:
            return problem
        known = self.peers.get(entry.node_id)
        if known is not None:
            return "known"
        self._put(Peer(entry.node_id, entry.host, entry.port, entry.link_key, entry.capabilities,
                       first_seen=now, last_seen=0.0))
        return None

    def verified(self, node_id: bytes, host: str, port: int, link_key: bytes, capabilities: int,
                 now: float, opted_out: bool = False, private: bool = False) -> None:
        """The peer authenticated as ``node_id`` on a link this node dialled."""
        known = self.peers.get(node_id)
        since = known.verified_since if known is not None and known.verified_since is not None else now
        first = known.first_seen if known is not None else now
        self._put(Peer(node_id, host, port, link_key, capabilities, first, now, since,
                       known.latency_ms if known else 0, 0, opted_out, private))

    def seen(self, node_id: bytes, now: float, latency_ms: int | None = None) -> None:
        known = self.peers.get(node_id)
        if known is None:
            return
        self._put(replace(known, last_seen=now, latency_ms=known.latency_ms if latency_ms is None else latency_ms))

    def failed(self, node_id: bytes) -> None:
        known = self.peers.get(node_id)
        if known is None:
            return
        if known.failures + 1 >= self.policy.max_failures:
            self._drop(node_id)
        else:
            self._put(replace(known, failures=known.failures + 1))

    # -- what is shared -------------------------------------------------------------

    def shareable(self, now: float, requester: bytes, maximum: int = MAX_ENTRIES) -> list[Entry]:
        """Up to ``maximum`` entries, spread over address prefixes."""
        policy = self.policy
        eligible = [
            peer for peer in self.peers.values()
            if peer.state == VERIFIED and not peer.opted_out and peer.node_id != requester
            and now - peer.last_seen <= policy.fresh and now - peer.verified_since >= policy.min_uptime
        ]
        eligible.sort(key=lambda p: (-p.last_seen, p.node_id))
        by_prefix: dict[str, list[Peer]] = {}
        for peer in eligible:
            by_prefix.setdefault(_prefix(peer.host) if peer.host else "", []).append(peer)
        chosen: list[Peer] = []
        while len(chosen) < maximum and any(by_prefix.values()):
            for group in by_prefix.values():  # one from each prefix per round: diversity first
                if group and len(chosen) < maximum:
                    chosen.append(group.pop(0))
        return [
            Entry(p.node_id, "" if p.private else p.host, 0 if p.private else p.port, p.capabilities,
                  int(p.last_seen * 1000), p.latency_ms, p.link_key)
            for p in chosen
        ]

    def candidates(self) -> list[Peer]:
        """Peers to dial, the least failed first."""
        return sorted((p for p in self.peers.values() if p.state != VERIFIED), key=lambda p: (p.failures, p.first_seen))

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for peer in self.peers.values():
            counts[peer.state] += 1
        return counts
