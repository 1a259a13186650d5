"""Delivery's Twisted shell: the mailbox thread, routing of application frames, the relay mesh.

- :class:`MailboxWriter` owns the SQLite store in one thread. Writes queue up
  while a commit is in flight and go together in the next one (group
  commit); each sender is acknowledged only when its commit returns.
- :class:`Router` decides what each application frame from a link means:
  SEND and a final onion hop deliver to a connected recipient or its
  mailbox; an onion packet for another relay goes over the mesh; SYNC and
  ACK read and empty the owner's mailbox; PUNCH_REQUEST coordinates a
  direct connection between two clients of this relay.
- :class:`Mesh` opens and keeps authenticated links to the relays it must
  forward to (ClientService, backoff 1, 2, 4 … 30 s), within a pool size,
  and closes the ones that fall idle.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Callable

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ..config import MailboxConfig, MeshConfig
from ..identity import Identity
from ..link.frames import (
    Ack,
    Deliver,
    ErrorCode,
    MailboxMessage,
    Onion,
    Pex,
    Punch,
    PunchRequest,
    Receipt,
    ReceiptStatus,
    Role,
    Send,
    SyncRequest,
    SyncResponse,
)
from ..link.protocol import LinkAdapter, StreamLinkProtocol, batched
from ..link.service import LinkHub
from ..link.session import Authenticated, Carrier, LinkConnection, Priority
from ..logs import logger
from . import delivery, onion
from .mailbox import Limits, MailboxStore, Page, PutResult
from .cover import PoissonSchedule, loop_packet
from .mixing import Mixer

log = logger(__name__)

MAILBOX_FILE = "mailbox.sqlite3"
_MESSAGE_ID, _RECIPIENT = itemgetter(0), itemgetter(1)  # of a SEND run's (message_id, recipient, body)
#: Margin added to the slower side's RTT before both start punching.
PUNCH_MARGIN = 0.2


@dataclass(slots=True)
class RelayStats:
    """Counts for metrics, kept as plain integers."""

    onion: dict[str, int] = field(default_factory=dict)  # forwarded / delivered / stored / cover
    cover: dict[str, int] = field(default_factory=dict)  # loops sent / no_path
    dropped: dict[str, int] = field(default_factory=dict)  # by reason
    punches: int = 0

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


# -- mailbox ---------------------------------------------------------------


class MailboxWriter(Service):
    """The mailbox store behind one thread, with group commit."""

    def __init__(self, reactor, path, config: MailboxConfig) -> None:
        self._reactor = reactor
        self._path = path
        self._limits = Limits(ttl=config.ttl, max_message_bytes=config.max_message_bytes,
                              per_recipient_messages=config.per_recipient_messages,
                              per_recipient_bytes=config.per_recipient_bytes, total_bytes=config.total_bytes)
        self._purge_interval = config.purge_interval
        self._pool = ThreadPool(1, 1, "zentalk-mailbox")
        self.store: MailboxStore | None = None
        self._pending: list[tuple[tuple[bytes, bytes, bytes], Deferred]] = []
        self._in_flight: Deferred | None = None
        self._flush_waiters: list[Deferred] = []
        self._purger: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        # Opening is quick and must succeed before the node says it is ready.
        self.store = MailboxStore(self._path, self._limits)
        self._pool.start()
        self._purger = LoopingCall(self.purge)
        self._purger.clock = self._reactor
        self._purger.start(self._purge_interval, now=False)

    def stopService(self):
        super().stopService()
        if self._purger is not None and self._purger.running:
            self._purger.stop()

        def close(_=None):
            self._pool.stop()
            if self.store is not None:
                self.store.close()
                self.store = None

        return self.flushed().addBoth(close)

    def flushed(self) -> Deferred:
        """Fires when every message handed to :meth:`put` so far is committed."""
        if self._in_flight is None and not self._pending:
            return succeed(None)
        waiting: Deferred = Deferred()
        self._flush_waiters.append(waiting)
        return waiting

    def _run(self, function, *args) -> Deferred:
        return deferToThreadPool(self._reactor, self._pool, function, *args)

    def put(self, recipient: bytes, message_id: bytes, body: bytes) -> Deferred:
        """Fires with a PutResult once the message is on disk (or refused)."""
        waiting: Deferred = Deferred()
        self._pending.append(((recipient, message_id, body), waiting))
        if self._in_flight is None:
            self._commit()
        return waiting

    def _commit(self) -> None:
        batch, self._pending = self._pending, []
        items = [item for item, _ in batch]
        self._in_flight = self._run(self.store.put_many, items, self._reactor.seconds())

        def done(results):
            def acknowledge():
                for (_, waiting), result in zip(batch, results):
                    waiting.callback(result)

            batched(acknowledge)  # one record per sender for the whole commit

        def failed(failure):
            log.failure("mailbox write failed", failure)
            for _, waiting in batch:
                waiting.errback(failure)

        def next_batch(_):
            self._in_flight = None
            if self._pending:
                self._commit()
                return
            waiters, self._flush_waiters = self._flush_waiters, []
            for waiting in waiters:
                waiting.callback(None)

        self._in_flight.addCallbacks(done, failed).addBoth(next_batch)

    def fetch(self, recipient: bytes, cursor: int, limit: int) -> Deferred:
        return self._run(self.store.fetch, recipient, cursor, limit, self._reactor.seconds())

    def acknowledge(self, recipient: bytes, message_ids: list[bytes]) -> Deferred:
        return self._run(self.store.acknowledge, recipient, message_ids, self._reactor.seconds())

    def purge(self) -> Deferred:
        return self._run(self.store.purge, self._reactor.seconds()).addErrback(
            lambda failure: log.failure("mailbox purge failed", failure))


# -- mesh ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dialable:
    """What it takes to open a link to a relay: its Noise key and an address."""

    link_key: bytes
    host: str
    port: int


class Mesh(MultiService):
    """Outbound links to other relays, opened on demand and kept with backoff.

    Other parts learn of relay links through two hooks: ``relay_up(node_id,
    adapter, dialled)`` when a relay link authenticates (``dialled`` is the
    Dialable this node used, None for a link the other relay opened), and
    ``dial_failed(node_id)`` when a dial given a bound of attempts gave up.
    """

    def __init__(self, reactor, hub: LinkHub, identity: Identity, config: MeshConfig, stats: RelayStats) -> None:
        super().__init__()
        self._reactor = reactor
        self._hub = hub
        self._identity = identity
        self._config = config
        self._stats = stats
        self.directory: dict[bytes, Dialable] = {}
        self._clients: dict[bytes, ClientService] = {}
        self._dialled: dict[LinkAdapter, tuple[bytes, Dialable]] = {}
        self._waiting: dict[bytes, deque] = {}
        self._last_used: dict[bytes, float] = {}
        self._sweeper: LoopingCall | None = None
        self.relay_up: Callable[[bytes, LinkAdapter, Dialable | None], None] = lambda node_id, adapter, dialled: None
        self.dial_failed: Callable[[bytes], None] = lambda node_id: None
        #: ``(host, port) -> endpoint`` through Tor for ``.onion`` hosts; set by the node when Tor runs.
        self.onion_endpoint: Callable[[str, int], object] | None = None
        from ..bootstrap import parse

        for text in config.peers:
            known = parse(text)
            host, port = known.addresses[0]
            self.directory[hashlib.sha256(known.ed25519_public).digest()] = Dialable(known.link_public, host, port)

    def startService(self) -> None:
        super().startService()
        self._sweeper = LoopingCall(self._close_idle)
        self._sweeper.clock = self._reactor
        self._sweeper.start(min(60.0, self._config.idle_timeout), now=False)

    def stopService(self):
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        return super().stopService()

    def relay_links(self, node_id: bytes) -> list[LinkAdapter]:
        return [adapter for adapter in self._hub.by_peer.get(node_id, ())
                if adapter.conn is not None and adapter.conn.peer_role is Role.RELAY]

    def links_up(self) -> int:
        return sum(1 for links in self._hub.by_peer.values()
                   for adapter in links if adapter.conn is not None and adapter.conn.peer_role is Role.RELAY)

    @property
    def dialling(self) -> int:
        return len(self._clients)

    def forward(self, node_id: bytes, frame) -> None:
        self._last_used[node_id] = self._reactor.seconds()
        links = self.relay_links(node_id)
        if links:
            if links[-1].send(frame):
                self._stats.count(self._stats.onion, "forwarded")
            else:
                self._stats.count(self._stats.dropped, "next_hop_busy")
            return
        if node_id not in self.directory:
            self._stats.count(self._stats.dropped, "unknown_next_hop")
            return
        queue = self._waiting.setdefault(node_id, deque())
        if len(queue) >= self._config.queue:
            self._stats.count(self._stats.dropped, "mesh_queue_full")
            return
        queue.append(frame)
        if not self.connect(node_id):
            self._stats.count(self._stats.dropped, "mesh_pool_full")
            self._waiting.pop(node_id, None)

    def connect(self, node_id: bytes, give_up_after: int | None = None) -> bool:
        """Open (and keep) a link to a relay in the directory; False if the pool is full.

        A relay known by an onion address is dialled through Tor's SOCKS port,
        and not at all (False) when this node runs no Tor.
        """
        if node_id in self._clients:
            return True
        if len(self._clients) >= self._config.max_links:
            return False
        known = self.directory[node_id]
        if known.host.endswith(".onion"):
            if self.onion_endpoint is None:
                return False
            endpoint = self.onion_endpoint(known.host, known.port)
        else:
            endpoint_class = TCP6ClientEndpoint if ":" in known.host else TCP4ClientEndpoint
            endpoint = endpoint_class(self._reactor, known.host, known.port, timeout=5)
        hub, identity, settings, mesh = self._hub, self._identity, self._hub.settings, self

        def make(now: float) -> LinkConnection:
            return LinkConnection(initiator=True, role=Role.RELAY, signing_key=identity.signing_key,
                                  carrier=Carrier.NOISE_STREAM, settings=settings, now=now, stats=hub.stats,
                                  remote_static=known.link_key, expected_peer_id=node_id)

        class _Factory(Factory):
            noisy = False

            def buildProtocol(self, addr):
                adapter = hub.adopt(StreamLinkProtocol(hub.reactor, hub, make, tls=False))
                mesh._dialled[adapter] = (node_id, known)
                return adapter

        client = ClientService(endpoint, _Factory(), retryPolicy=backoffPolicy(1.0, 30.0, 2.0, jitter=lambda: 0.0),
                               clock=self._reactor)
        self._clients[node_id] = client
        self._last_used.setdefault(node_id, self._reactor.seconds())
        client.setServiceParent(self)
        if give_up_after is not None:
            client.whenConnected(failAfterFailures=give_up_after).addErrback(self._gave_up, node_id, client)
        return True

    def _gave_up(self, failure, node_id: bytes, client: ClientService) -> None:
        if self._clients.get(node_id) is client:
            del self._clients[node_id]
            self._waiting.pop(node_id, None)
            client.disownServiceParent()
            self.dial_failed(node_id)

    def relay_authenticated(self, adapter: LinkAdapter, event: Authenticated) -> None:
        """A relay link is up (either direction): send what waited for it."""
        dialled = self._dialled.pop(adapter, None)
        queue = self._waiting.pop(event.peer_id, None)
        while queue:
            frame = queue.popleft()
            if adapter.send(frame):
                self._stats.count(self._stats.onion, "forwarded")
            else:
                self._stats.count(self._stats.dropped, "next_hop_busy")
        self.relay_up(event.peer_id, adapter, dialled[1] if dialled else None)

    def _close_idle(self) -> None:
        now = self._reactor.seconds()
        for node_id, client in list(self._clients.items()):
            if now - self._last_used.get(node_id, now) >= self._config.idle_timeout and not self._waiting.get(node_id):
                del self._clients[node_id]
                self._last_used.pop(node_id, None)
                client.disownServiceParent()

    def forget(self, adapter: LinkAdapter) -> None:
        self._dialled.pop(adapter, None)

    def reconfigure(self, config: MeshConfig) -> None:
        """A new pool size and idle timeout (SIGHUP); links already open stay."""
        self._config = config

    def keep(self, node_id: bytes) -> None:
        """Mark a relay link as wanted (PEX keeps its target links this way)."""
        self._last_used[node_id] = self._reactor.seconds()


# -- routing ---------------------------------------------------------------


class Router:
    """What the application frames of authenticated links mean at this relay."""

    def __init__(self, reactor, hub: LinkHub, mailbox: MailboxWriter, mesh: Mesh, keyring: onion.OnionKeyring,
                 replay: onion.ReplayCache, stats: RelayStats,
                 hop_latency: Callable[[float], None] = lambda seconds: None,
                 replay_pressure: Callable[[], None] = lambda: None, mixer: Mixer | None = None,
                 mix_held: Callable[[float], None] = lambda seconds: None) -> None:
        self._reactor = reactor
        self._hub = hub
        self._mailbox = mailbox
        self.mesh = mesh
        self.keyring = keyring
        self._replay = replay
        self.stats = stats
        self._hop_latency = hop_latency
        self._clock = reactor.seconds
        self._punch_requests: dict[bytes, tuple[str, int]] = {}
        self._replay_pressure = replay_pressure
        self._processed = 0
        self.pex = None  # the PEX service, when built
        # DELIVERs a client has not acknowledged yet, per link: if the link
        # drops first, they go to the mailbox instead of being lost
        # (message id, recipient, body) by message id
        self._unacked: dict[LinkAdapter, dict[bytes, tuple[bytes, bytes, bytes]]] = {}
        # onion packets held for their mixing delay, and the one timer that releases them
        self.mixer = mixer
        self._mix_held = mix_held
        self._mix_timer = None

    # called by the hub
    def authenticated(self, adapter: LinkAdapter, event: Authenticated) -> None:
        if event.role is Role.RELAY:
            self.mesh.relay_authenticated(adapter, event)
        elif event.resumed:
            # A resumed session gets what it missed without asking: the mailbox, pushed.
            self._sync(adapter, SyncRequest(0, 100))

    def link_lost(self, adapter: LinkAdapter) -> None:
        self.mesh.forget(adapter)
        waiting = self._unacked.pop(adapter, None)
        if waiting:
            for message_id, recipient, body in waiting.values():
                self._mailbox.put(recipient, message_id, body)

    def handle(self, adapter: LinkAdapter, frame) -> None:
        kind = type(frame)
        if kind is Send:
            self._deliver(frame.recipient, frame.message_id, frame.body, adapter)
        elif kind is Onion:
            self._onion(adapter, frame)
        elif kind is SyncRequest:
            self._sync(adapter, frame)
        elif kind is Ack:
            self._ack(adapter, frame)
        elif kind is PunchRequest:
            self._punch(adapter, frame)
        elif kind is Pex and self.pex is not None:
            self.pex.handle(adapter, frame)

    def handle_sends(self, sender: LinkAdapter, items: list[tuple[bytes, bytes, bytes]]) -> None:
        """SENDs from one link, ``(message_id, recipient, body)`` each, in order.

        Each run to one recipient is one batch: as many DELIVERs as its link
        takes, one RECEIPT each to the sender, and the rest as :meth:`_deliver`
        handles them one by one (the mailbox).
        """
        start, count = 0, len(items)
        single = len(set(map(_RECIPIENT, items))) == 1  # the usual case: one conversation
        while start < count:
            recipient = items[start][1]
            stop = count if single else start + 1
            while stop < count and items[stop][1] == recipient:
                stop += 1
            run = items if stop - start == count else items[start:stop]
            target = self._client_link(recipient)
            taken = target.send_delivers(run) if target is not None else 0
            if taken:
                done = run if taken == len(run) else run[:taken]
                message_ids = list(map(_MESSAGE_ID, done))
                self._unacked.setdefault(target, {}).update(zip(message_ids, done))
                sender.send_receipts(message_ids, ReceiptStatus.DELIVERED)
            for message_id, _, body in run[taken:]:
                self._deliver(recipient, message_id, body, sender)
            start = stop

    # -- delivery ------------------------------------------------------------

    def _client_link(self, address: bytes) -> LinkAdapter | None:
        for adapter in reversed(self._hub.by_peer.get(address, ())):
            if adapter.conn is not None and adapter.conn.peer_role is Role.CLIENT:
                return adapter
        return None

    def _deliver(self, recipient: bytes, message_id: bytes, body: bytes, sender: LinkAdapter | None) -> None:
        """To the recipient's link if it is here and has room, else into its mailbox."""
        target = self._client_link(recipient)
        if target is not None and target.send(Deliver(message_id, body)):
            self._unacked.setdefault(target, {})[message_id] = (message_id, recipient, body)
            if sender is not None:
                sender.send(Receipt(message_id, ReceiptStatus.DELIVERED))
            else:
                self.stats.count(self.stats.onion, "delivered")
            return
        stored = self._mailbox.put(recipient, message_id, body)

        def answer(result: PutResult) -> None:
            if sender is None:
                self.stats.count(self.stats.onion if result in (PutResult.STORED, PutResult.DUPLICATE)
                                 else self.stats.dropped, "stored" if result in (
                                     PutResult.STORED, PutResult.DUPLICATE) else result.value)
                return
            if result in (PutResult.STORED, PutResult.DUPLICATE):
                sender.send(Receipt(message_id, ReceiptStatus.STORED))
            elif result is PutResult.TOO_LARGE:
                sender.send(Receipt(message_id, ReceiptStatus.REFUSED, ErrorCode.MESSAGE_TOO_LARGE))
            else:
                sender.send(Receipt(message_id, ReceiptStatus.REFUSED, ErrorCode.MAILBOX_FULL))

        stored.addCallback(answer)
        stored.addErrback(lambda failure: sender.send(
            Receipt(message_id, ReceiptStatus.REFUSED, ErrorCode.MAILBOX_FULL)) if sender else None)

    def _onion(self, adapter: LinkAdapter, frame: Onion) -> None:
        started = self._clock()
        try:
            result = onion.process_packet(frame.packet, self.keyring, self._replay, started)
        except onion.OnionError as error:
            self.stats.count(self.stats.dropped, error.reason)
            return
        self._hop_latency(self._clock() - started)
        self._processed += 1
        if not self._processed & 1023:
            self._replay_pressure()
        if type(result) is onion.Dropped:
            self.stats.count(self.stats.onion, "cover")
        elif self.mixer is None:
            self._onward(result)
        else:
            self._release(self.mixer.push(result, started))
            self._arm_mixer()

    def _arm_mixer(self) -> None:
        deadline = self.mixer.next_deadline()
        if deadline is None or (self._mix_timer is not None and self._mix_timer.active()
                                and self._mix_timer.getTime() <= deadline):
            return
        if self._mix_timer is not None and self._mix_timer.active():
            self._mix_timer.cancel()
        self._mix_timer = self._reactor.callLater(max(0.0, deadline - self._clock()), self._mix_due)

    def _mix_due(self) -> None:
        self._mix_timer = None
        due = self.mixer.due(self._clock())
        # Packets due together leave together: one record per next hop, as a read's would
        batched(lambda: self._release(due))
        self._arm_mixer()

    def _release(self, released: list) -> None:
        for result, held in released:
            self._mix_held(held)
            self._onward(result)

    def release_all(self) -> None:
        """Send on every packet the mixer holds: the relay is stopping, and a held packet is not lost."""
        if self.mixer is None:
            return
        if self._mix_timer is not None and self._mix_timer.active():
            self._mix_timer.cancel()
        self._mix_timer = None
        for result in self.mixer.drain():
            self._onward(result)

    def _onward(self, result) -> None:
        """A processed packet's next step: the next relay, or delivery here."""
        kind = type(result)
        if kind is onion.Forwarded:
            self.mesh.forward(result.next_node_id, Onion(result.packet))
        elif kind is onion.Delivered:
            try:
                message_id, body = delivery.decode(result.payload)
            except delivery.DeliveryError:
                self.stats.count(self.stats.dropped, "bad_payload")
                return
            self._deliver(result.address, message_id, body, None)

    # -- mailbox -------------------------------------------------------------

    def _sync(self, adapter: LinkAdapter, request: SyncRequest) -> None:
        owner = adapter.conn.peer_id

        def answer(page: Page) -> None:
            messages = tuple(MailboxMessage(m.message_id, int(m.stored_at * 1000), m.body) for m in page.messages)
            adapter.send(SyncResponse(page.has_more, page.next_cursor, messages), Priority.MESSAGE)

        self._mailbox.fetch(owner, request.cursor, request.limit).addCallback(answer).addErrback(
            lambda failure: log.failure("mailbox read failed", failure))

    def _ack(self, adapter: LinkAdapter, ack: Ack) -> None:
        waiting = self._unacked.get(adapter, {})
        stored = [message_id for message_id in ack.message_ids if waiting.pop(message_id, None) is None]
        if stored:
            self._mailbox.acknowledge(adapter.conn.peer_id, stored).addErrback(
                lambda failure: log.failure("mailbox acknowledgement failed", failure))

    # -- hole punching -------------------------------------------------------

    def _punch(self, adapter: LinkAdapter, request: PunchRequest) -> None:
        """Tell both clients where the other is and when to start, after the slower RTT."""
        peer = self._client_link(request.peer)
        if peer is None or adapter.conn is None or peer.conn is None:
            adapter.send(Receipt(bytes(16), ReceiptStatus.REFUSED, ErrorCode.PEER_NOT_CONNECTED))
            return
        self.stats.punches += 1
        self._punch_requests[adapter.conn.peer_id] = (request.udp_host, request.udp_port)
        other = self._punch_requests.get(request.peer)
        if other is None:
            return  # wait for the other side's request, which carries its candidate
        rtt_here = adapter.conn.last_rtt or 0.0
        rtt_there = peer.conn.last_rtt or 0.0
        # both start at the same moment: now + the slower side's RTT + a margin,
        # each told as a delay less its own one-way trip
        start = max(rtt_here, rtt_there) + PUNCH_MARGIN
        mine = self._punch_requests.pop(adapter.conn.peer_id)
        theirs = self._punch_requests.pop(request.peer)
        for link, candidate, peer_id, rtt in ((adapter, theirs, request.peer, rtt_here),
                                              (peer, mine, adapter.conn.peer_id, rtt_there)):
            host, port = candidate if candidate[0] else (self._observed(peer if link is adapter else adapter))
            delay = int((start - rtt / 2) * 1000)
            link.send(Punch(peer_id, host, port, delay, int(rtt * 1000)), Priority.CONTROL)

    @staticmethod
    def _observed(adapter: LinkAdapter) -> tuple[str, int]:
        address = adapter.peer_address
        return (getattr(address, "host", ""), getattr(address, "port", 0))




def _load_onion_state(path, wall: float) -> dict:
    import json

    try:
        state = json.loads(path.read_text())
        if {"epoch", "since", "previous_until"} <= set(state):
            return state
    except (OSError, ValueError):
        pass
    return {"epoch": 0, "since": wall, "previous_until": 0.0}


def onion_keyring(data_dir, identity: Identity, overlap: float, now: float, wall: float) -> onion.OnionKeyring:
    """The keyring as the last run left it: the current key, and the previous one during its overlap."""
    from ..identity import KEYS_DIR, ONION_STATE, load_previous_onion_key

    state = _load_onion_state(data_dir / KEYS_DIR / ONION_STATE, wall)
    previous = load_previous_onion_key(data_dir)
    if previous is not None and state["previous_until"] > wall:
        keyring = onion.OnionKeyring(bytes(previous), max(0, state["epoch"] - 1), now,
                                     overlap=state["previous_until"] - wall)
        keyring.rotate(bytes(identity.onion_key), now)
        keyring.overlap = overlap
        return keyring
    return onion.OnionKeyring(bytes(identity.onion_key), state["epoch"], now, overlap=overlap)


class OnionRotation(Service):
    """Rotates the onion key on schedule, keeping the previous one for the overlap.

    The schedule lives in ``keys/onion.json`` (epoch, when the current key
    became current, until when the previous one opens packets) so that a
    restart neither rotates early nor cuts an overlap short. A replay memory
    that is nearly full rotates at once, so packets are never refused for
    want of room. ``wall`` is the wall clock (the schedule spans restarts).
    """

    #: The longest the timer sleeps; it re-checks the schedule when it wakes.
    MAX_SLEEP = 3600.0

    def __init__(self, reactor, data_dir, keyring: onion.OnionKeyring, replay: onion.ReplayCache,
                 interval: float, wall: Callable[[], float]) -> None:
        from ..identity import KEYS_DIR, ONION_STATE

        self._reactor = reactor
        self._data_dir = data_dir
        self._keyring = keyring
        self._replay = replay
        self._interval = interval
        self._wall = wall
        self._state_path = data_dir / KEYS_DIR / ONION_STATE
        self._state = _load_onion_state(self._state_path, wall())
        self._timer = None

    def startService(self) -> None:
        super().startService()
        first_start = not self._state_path.exists()
        if first_start:
            self._save()
        if not self._restore_replay() and not first_start:
            # The last run did not stop cleanly: its replay memory is gone, so a
            # packet it saw could be replayed. A new key, with no overlap, closes that.
            self.rotate()
            for epoch in self._keyring.retire_expired(float("inf")):
                self._replay.forget_epoch(epoch)
            from ..identity import forget_previous_onion_key

            forget_previous_onion_key(self._data_dir)
            log.warn("the last run did not stop cleanly; onion key rotated without overlap")
        self._tick()

    def stopService(self):
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._save_replay()

    @property
    def _replay_dir(self):
        return self._data_dir / "onion-replay"

    def _save_replay(self) -> None:
        """Keep the replay memory across a clean stop; the marker says it is complete."""
        directory = self._replay_dir
        directory.mkdir(mode=0o700, exist_ok=True)
        for stale in directory.glob("*"):
            stale.unlink()
        for epoch in self._keyring.epochs:
            (directory / f"{epoch}.tags").write_bytes(self._replay.export(epoch))
        (directory / "clean").write_text("the node stopped cleanly\n")

    def _restore_replay(self) -> bool:
        """Load the replay memory a clean stop left; False when there is none to trust."""
        directory = self._replay_dir
        marker = directory / "clean"
        if not marker.exists():
            return False
        marker.unlink()
        for epoch in self._keyring.epochs:
            path = directory / f"{epoch}.tags"
            if path.exists():
                self._replay.restore(epoch, path.read_bytes())
        return True

    def _save(self) -> None:
        import json

        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state))
        tmp.replace(self._state_path)

    def _tick(self) -> None:
        from ..identity import forget_previous_onion_key

        self._timer = None
        for epoch in self._keyring.retire_expired(self._reactor.seconds()):
            self._replay.forget_epoch(epoch)
            forget_previous_onion_key(self._data_dir)
        if self._wall() >= self._state["since"] + self._interval or self.replay_nearly_full():
            self.rotate()
        due = self._state["since"] + self._interval - self._wall()
        self._timer = self._reactor.callLater(max(0.0, min(due, self.MAX_SLEEP)), self._tick)

    def replay_nearly_full(self) -> bool:
        return self._replay.size(self._keyring.epoch) >= 0.9 * self._replay.max_entries_per_epoch

    def relieve(self) -> None:
        """Rotate now if the replay memory is nearly full (the router asks as packets pass)."""
        if self.running and self.replay_nearly_full():
            self.rotate()

    def rotate(self) -> None:
        from ..identity import rotate_onion_key

        fresh = rotate_onion_key(self._data_dir)
        for epoch in self._keyring.rotate(bytes(fresh), self._reactor.seconds()):
            self._replay.forget_epoch(epoch)
        wall = self._wall()
        self._state = {"epoch": self._keyring.epoch, "since": wall, "previous_until": wall + self._keyring.overlap}
        self._save()
        log.info("onion key rotated to epoch {epoch}", epoch=self._keyring.epoch)


# -- cover traffic -------------------------------------------------------------


class CoverTraffic(Service):
    """Loop packets at the times of a Poisson process (see :mod:`.cover`).

    ``own()`` gives this relay's (node id, current onion key); ``relays()``
    the other relays whose verified records give an onion key, by node id.
    A loop starts at a relay this node has a link to, so cover traffic never
    makes the mesh dial; with no such relay (or fewer than two known) the
    loop is not sent and counted as ``no_path``.
    """

    def __init__(self, reactor, router: Router, schedule: PoissonSchedule, own: Callable[[], tuple[bytes, bytes]],
                 relays: Callable[[], dict[bytes, bytes]], rng) -> None:
        self._reactor = reactor
        self._router = router
        self._schedule = schedule
        self._own = own
        self._relays = relays
        self._rng = rng
        self._call = None

    def startService(self) -> None:
        super().startService()
        self._next()

    def stopService(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return super().stopService()

    def _next(self) -> None:
        gap = self._schedule.next_gap()
        if gap is not None and self.running:
            self._call = self._reactor.callLater(gap, self._send)

    def _send(self) -> None:
        self._call = None
        stats = self._router.stats
        own = self._own()
        known = {node_id: key for node_id, key in self._relays().items() if node_id != own[0]}
        linked = [node_id for node_id in known if self._router.mesh.relay_links(node_id)]
        if not linked or len(known) < 2:
            stats.count(stats.cover, "no_path")
        else:
            first = self._rng.choice(linked)
            relays = [(first, known[first])] + [(node_id, key) for node_id, key in known.items() if node_id != first]
            try:
                next_hop, packet = loop_packet(own, relays, self._rng)
            except (ValueError, onion.OnionError):
                stats.count(stats.cover, "no_path")  # a record with a weak onion key
            else:
                self._router.mesh.forward(next_hop, Onion(packet))
                stats.count(stats.cover, "sent")
        self._next()
