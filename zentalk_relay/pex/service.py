"""Peer exchange over relay links: asking, answering, and verifying what was learned.

Every ``interval`` the node asks each relay it has a link to for peers (and
asks a relay at once when its link comes up). What it learns becomes a
candidate; candidates are dialled through the mesh, within a budget of dials
per minute, and enter the book as verified only when they authenticate as
the node id they were announced with. The node keeps ``target_links`` relay
links up, and saves the book to SQLite as it changes, so a restart starts
from the network it knew.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from ..config import PexConfig
from ..link.frames import Pex, Role
from ..link.protocol import LinkAdapter
from ..link.session import Priority
from ..logs import logger
from ..ratelimit import Rate, TokenBucket
from ..relay.service import Dialable, Mesh
from . import codec
from .book import PeerBook, Policy
from .store import PeerStore

log = logger(__name__)

PEERS_FILE = "peers.sqlite3"
OPT_OUT = "pex-opt-out"
PRIVATE = "pex-private"


@dataclass(slots=True)
class PexStats:
    requests: dict[tuple[str, str], int] = field(default_factory=dict)  # (direction, result)
    learned: int = 0
    verified: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # entries refused, by reason

    def count(self, table: dict, key) -> None:
        table[key] = table.get(key, 0) + 1


class PexService(Service):
    def __init__(self, reactor, config: PexConfig, own_id: bytes, mesh: Mesh, data_dir,
                 own_addresses: Callable[[], frozenset]) -> None:
        self._reactor = reactor
        self._config = config
        self._mesh = mesh
        self._own_addresses = own_addresses
        self.stats = PexStats()
        self.book = PeerBook(own_id, Policy(fresh=config.fresh, min_uptime=config.min_uptime,
                                            max_failures=config.max_failures, capacity=config.capacity,
                                            allow_private_addresses=config.allow_private_addresses))
        self._path = data_dir / PEERS_FILE
        self._store: PeerStore | None = None
        self._dials = TokenBucket(Rate(config.dials_per_minute, 60.0, config.dials_per_minute), reactor.seconds())
        self._loop: LoopingCall | None = None
        self._asked: dict[bytes, float] = {}
        mesh.relay_up = self._relay_up
        mesh.dial_failed = self._dial_failed

    # -- lifecycle -------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._store = PeerStore(self._path)
        self.book.load(self._store.load())
        now = self._reactor.seconds()
        for node_id, known in self._mesh.directory.items():
            if node_id not in self.book.peers:
                self.book.learn(codec.Entry(node_id, known.host, known.port, 0, 0, 0, known.link_key), now)
        for peer in self.book.peers.values():
            self._mesh.directory.setdefault(peer.node_id, Dialable(peer.link_key, peer.host, peer.port))
        log.info("peer book: {counts}", counts=self.book.counts())
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._reactor
        self._loop.start(self._config.interval, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.save()
        if self._store is not None:
            self._store.close()
            self._store = None

    def save(self) -> None:
        if self._store is None or not (self.book.dirty or self.book.removed):
            return
        changed = [self.book.peers[node_id] for node_id in self.book.dirty if node_id in self.book.peers]
        self._store.save(changed, list(self.book.removed))
        self.book.dirty.clear()
        self.book.removed.clear()

    # -- the periodic round ------------------------------------------------------------

    def _tick(self) -> None:
        now = self._reactor.seconds()
        for node_id in list(self._connected()):
            self._mesh.keep(node_id)
            self.book.seen(node_id, now)
            if now - self._asked.get(node_id, -1e9) >= self._config.interval:
                self._ask(node_id)
        self._maintain(now)
        self.save()

    def _connected(self) -> list[bytes]:
        return [node_id for node_id in self.book.peers if self._mesh.relay_links(node_id)]

    def _ask(self, node_id: bytes) -> None:
        links = self._mesh.relay_links(node_id)
        if not links:
            return
        self._asked[node_id] = self._reactor.seconds()
        links[-1].send(Pex(codec.REQUEST, codec.encode_request()), Priority.BACKGROUND)
        self.stats.count(self.stats.requests, ("out", "sent"))

    def _maintain(self, now: float) -> None:
        """Keep target_links relay links; verify candidates; all within the dial budget."""
        up = len(self._connected())
        wanted = [p for p in self.book.peers.values() if p.state == "verified" and not self._mesh.relay_links(p.node_id)]
        wanted += self.book.candidates()
        for peer in wanted:
            if peer.state == "verified" and up >= self._config.target_links:
                continue
            if self._mesh.dialling >= self._config.target_links * 2:
                return
            if not self._dials.take(now):
                return
            self._mesh.directory[peer.node_id] = Dialable(peer.link_key, peer.host, peer.port)
            if self._mesh.connect(peer.node_id, give_up_after=3):
                up += 1 if peer.state == "verified" else 0

    def candidate(self, node_id: bytes, host: str, port: int, link_key: bytes, capabilities: int) -> None:
        """A relay learned elsewhere (its verified DHT record): dial it like a PEX candidate, within the budget."""
        now = self._reactor.seconds()
        entry = codec.Entry(node_id, host, port, capabilities, 0, 0, link_key)
        if self.book.learn(entry, now, self._own_addresses()) is None:
            self.stats.learned += 1
            if self.running:
                self._maintain(now)

    # -- mesh hooks ----------------------------------------------------------------------

    def _relay_up(self, node_id: bytes, adapter: LinkAdapter, dialled: Dialable | None) -> None:
        now = self._reactor.seconds()
        conn = adapter.conn
        if dialled is not None:
            if self.book.peers.get(node_id) is None or self.book.peers[node_id].state != "verified":
                self.stats.verified += 1
            self.book.verified(node_id, dialled.host, dialled.port, dialled.link_key, conn.capabilities, now,
                               opted_out=OPT_OUT in conn.peer_features, private=PRIVATE in conn.peer_features)
        else:
            self.book.seen(node_id, now)
        self._ask(node_id)

    def _dial_failed(self, node_id: bytes) -> None:
        self.book.failed(node_id)

    # -- frames ------------------------------------------------------------------------------

    def handle(self, adapter: LinkAdapter, frame: Pex) -> None:
        if frame.subtype == codec.REQUEST:
            self._answer(adapter, frame)
        elif frame.subtype == codec.RESPONSE:
            self._learn(adapter, frame)
        else:
            self.stats.count(self.stats.requests, ("in", "unknown_subtype"))

    def _answer(self, adapter: LinkAdapter, frame: Pex) -> None:
        try:
            maximum = codec.decode_request(frame.body)
        except codec.PexError as error:
            self.stats.count(self.stats.requests, ("in", error.reason))
            return
        requester = adapter.conn.peer_id
        entries = self.book.shareable(self._reactor.seconds(), requester, maximum)
        adapter.send(Pex(codec.RESPONSE, codec.encode_response(entries)), Priority.BACKGROUND)
        self.stats.count(self.stats.requests, ("in", "answered"))

    def _learn(self, adapter: LinkAdapter, frame: Pex) -> None:
        if adapter.conn.peer_role is not Role.RELAY:
            self.stats.count(self.stats.requests, ("out", "not_a_relay"))
            return
        try:
            entries = codec.decode_response(frame.body)
        except codec.PexError as error:
            self.stats.count(self.stats.requests, ("out", error.reason))
            return
        self.stats.count(self.stats.requests, ("out", "answered"))
        now = self._reactor.seconds()
        own = self._own_addresses()
        seen: set[bytes] = set()
        for entry in entries:
            if entry.node_id in seen:
                self.stats.count(self.stats.refused, "duplicate")
                continue
            seen.add(entry.node_id)
            problem = self.book.learn(entry, now, own)
            if problem is None:
                self.stats.learned += 1
            elif problem != "known":
                self.stats.count(self.stats.refused, problem)
        self._maintain(now)
