"""A client's link to a relay over TCP (Noise), TLS 1.3 or WebSocket.

``await connect(reactor, bootstrap, signing_key)`` returns a
:class:`ClientLink` once both sides are authenticated: the relay has proved
the node id pinned by the bootstrap string, and the client has proved its
own. The same sans-IO connection and adapters serve the relay's side.
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import Callable, Literal

from nacl.signing import SigningKey
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol, wrapClientTLS

from ..bootstrap import Bootstrap
from collections import OrderedDict, deque

from ..link.frames import (
    Ack,
    Capability,
    Deliver,
    Error,
    ErrorCode,
    Onion,
    Punch,
    PunchRequest,
    Receipt,
    Role,
    Send,
    SyncRequest,
    SyncResponse,
    capability_mask,
)
from ..link.protocol import ALPN, LinkAdapter, StreamLinkProtocol, WebSocketLinkProtocol
from ..link.session import Authenticated, Carrier, LinkConnection, LinkSettings

CONNECT_TIMEOUT = 5.0
#: How long :meth:`ClientLink.close` waits for the transport to go before it drops it.
CLOSE_TIMEOUT = 5.0
ACK_DELAY = 0.05
SEEN_MEMORY = 100_000
#: Cover loops per second a client may ask for at most.
MAX_COVER_RATE = 10.0


class LinkClosed(Exception):
    """The link ended; ``code`` says why."""

    def __init__(self, code: ErrorCode, reason: str, by_peer: bool) -> None:
        super().__init__(f"{code.label}{' (by the relay)' if by_peer else ''}: {reason}")
        self.code = code
        self.reason = reason
        self.by_peer = by_peer


class ClientLink:
    """One authenticated link; owner of its adapter."""

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self.adapter: LinkAdapter | None = None
        self.peer: Authenticated | None = None
        self.authenticated: Deferred = Deferred()
        #: Fires with a :class:`LinkClosed` once the transport is gone, so what was
        #: written before (the last ACKs) has left: a client may stop its reactor then.
        self.closed: Deferred = Deferred()
        self._ended: LinkClosed | None = None  # why the link ended, until the transport is gone
        self._close_timer = None
        self.errors: list[Error] = []
        self._receipts: dict[bytes, Deferred] = {}
        self._inbox: DeferredQueue = DeferredQueue()
        self._syncs: deque[Deferred] = deque()
        self._punches: deque[Deferred] = deque()
        #: SYNC_RESPONSEs the relay pushed without a request (after RESUME).
        self.pushed: DeferredQueue = DeferredQueue()
        # Message ids already handed to the application: a message can come
        # twice (a DELIVER whose ACK was lost comes back from the mailbox).
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._to_ack: list[bytes] = []
        # Cover loops in flight (message ids) and their counts; see start_cover.
        self._cover_ids: OrderedDict[bytes, None] = OrderedDict()
        self._cover_call = None
        self.cover_sent = 0
        self.cover_returned = 0
        #: This client's node id (SHA-256 of its Ed25519 key): where its cover loops come back to.
        self.own_id: bytes = b""

    # -- API -----------------------------------------------------------------

    def send(self, recipient: bytes, body: bytes, message_id: bytes | None = None) -> Deferred:
        """Send ``body`` to node ``recipient`` through the relay; fires with the RECEIPT."""
        message_id = message_id or os.urandom(16)
        waiting: Deferred = Deferred()
        if self.adapter is None or not self.adapter.send(Send(message_id, recipient, body)):
            waiting.errback(LinkClosed(ErrorCode.RECIPIENT_BUSY, "the link cannot take more now", False))
            return waiting
        self._receipts[message_id] = waiting
        return waiting

    def receive(self) -> Deferred:
        """The next DELIVER from the relay."""
        return self._inbox.get()

    def send_onion(self, path: list[tuple[bytes, bytes]], recipient: bytes, body: bytes,
                   message_id: bytes | None = None) -> bytes:
        """Send ``body`` to ``recipient`` through ``path``, a list of (node id, onion public key).

        The first relay of the path must be the one this link goes to; the
        last one delivers to ``recipient`` there (or keeps it in its mailbox).
        Returns the message id.
        """
        from ..relay import delivery, onion

        message_id = message_id or os.urandom(16)
        hops = []
        for index, (node_id, onion_public) in enumerate(path):
            last = index == len(path) - 1
            hops.append(onion.Hop(onion_public, onion.Instruction.DELIVER if last else onion.Instruction.FORWARD,
                                  recipient if last else path[index + 1][0]))
        payload = delivery.encode(message_id, body, onion.MAX_PAYLOAD)
        packet = onion.build_packet(hops, payload)
        if self.adapter is None or not self.adapter.send(Onion(packet)):
            raise LinkClosed(ErrorCode.RECIPIENT_BUSY, "the link cannot take more now", False)
        return message_id

    def start_cover(self, rate: float, path: Callable[[], list[tuple[bytes, bytes]]], rng=None) -> None:
        """Send cover loops at ``rate`` per second (Poisson) until :meth:`stop_cover` or the link ends.

        ``path()`` gives the (node id, onion key) hops of each loop, the first
        the relay of this link and the last the relay that delivers back to
        this client (usually the same one). Each loop is an onion packet like
        a message, with a random body of a plausible size; it comes back as a
        DELIVER that is acknowledged and discarded, never handed to
        :meth:`receive`. ``rate`` is bounded at 10 per second.
        """
        from ..relay.cover import PoissonSchedule

        rng = rng or random.SystemRandom()
        self.stop_cover()
        schedule = PoissonSchedule(min(rate, MAX_COVER_RATE), rng)

        def fire() -> None:
            self._cover_call = None
            if self.adapter is None or self.adapter.conn is None or self.node_id is None:
                return
            hops = path()
            if hops:
                self._send_cover(hops, rng.randint(64, 1024))
            gap = schedule.next_gap()
            if gap is not None:
                self._cover_call = self.reactor.callLater(gap, fire)

        gap = schedule.next_gap()
        if gap is not None:
            self._cover_call = self.reactor.callLater(gap, fire)

    def stop_cover(self) -> None:
        if self._cover_call is not None and self._cover_call.active():
            self._cover_call.cancel()
        self._cover_call = None

    def _send_cover(self, hops: list[tuple[bytes, bytes]], body_size: int) -> None:
        from ..relay.cover import client_loop_packet

        message_id, packet = client_loop_packet(hops, self.own_id, body_size)
        if self.adapter.send(Onion(packet)):
            self._cover_ids[message_id] = None
            if len(self._cover_ids) > SEEN_MEMORY:
                self._cover_ids.popitem(last=False)
            self.cover_sent += 1

    def sync(self, cursor: int = 0, limit: int = 100) -> Deferred:
        """The next page of this client's mailbox: a SYNC_RESPONSE."""
        waiting: Deferred = Deferred()
        self._syncs.append(waiting)
        self.adapter.send(SyncRequest(cursor, limit))
        return waiting

    def ack(self, message_ids) -> None:
        """Tell the relay these mailbox messages arrived, so it deletes them."""
        ids = list(message_ids)
        for start in range(0, len(ids), 1024):
            self.adapter.send(Ack(tuple(ids[start:start + 1024])))

    def punch(self, peer: bytes, udp: tuple[str, int] | None = None) -> Deferred:
        """Ask the relay to coordinate a direct connection with ``peer``; fires with PUNCH."""
        waiting: Deferred = Deferred()
        self._punches.append(waiting)
        host, port = udp or ("", 0)
        self.adapter.send(PunchRequest(peer, host, port))
        return waiting

    def close(self) -> Deferred:
        """Acknowledge what arrived, then close; fires once the transport is gone (or dropped after
        ``CLOSE_TIMEOUT`` if the other side does not let it go)."""
        self._flush_acks()
        if self.adapter is None:
            self._fire_closed(LinkClosed(ErrorCode.NORMAL, "client closing", False))
            return self.closed
        self.adapter.close(ErrorCode.NORMAL, "client closing")
        if not self.closed.called and self._close_timer is None:
            self._close_timer = self.reactor.callLater(CLOSE_TIMEOUT, self._drop)
        return self.closed

    def _drop(self) -> None:
        self._close_timer = None
        if self.adapter is not None and not self.closed.called:
            self.adapter.abort()

    @property
    def node_id(self) -> bytes | None:
        return None if self.peer is None else self.peer.peer_id

    # -- LinkOwner -----------------------------------------------------------

    def link_authenticated(self, adapter: LinkAdapter, event: Authenticated) -> None:
        self.peer = event
        self.authenticated.callback(self)

    def frame_received(self, adapter: LinkAdapter, frame) -> None:
        kind = type(frame)
        if kind is Deliver:
            self._ack_soon(frame.message_id)
            if frame.message_id in self._cover_ids:
                del self._cover_ids[frame.message_id]
                self.cover_returned += 1
            elif self._first_time(frame.message_id):
                self._inbox.put(frame)
        elif kind is Receipt:
            waiting = self._receipts.pop(frame.message_id, None)
            if waiting is not None:
                waiting.callback(frame)
        elif kind is SyncResponse:
            fresh = tuple(m for m in frame.messages if self._first_time(m.message_id))
            repeated = [m.message_id for m in frame.messages if m not in fresh]
            if repeated:
                self.ack(repeated)
            page = SyncResponse(frame.has_more, frame.next_cursor, fresh)
            if self._syncs:
                self._syncs.popleft().callback(page)
            else:
                self.pushed.put(page)
        elif kind is Punch:
            if self._punches:
                self._punches.popleft().callback(frame)
        elif kind is Error:
            self.errors.append(frame)

    def _first_time(self, message_id: bytes) -> bool:
        if message_id in self._seen:
            return False
        self._seen[message_id] = None
        if len(self._seen) > SEEN_MEMORY:
            self._seen.popitem(last=False)
        return True

    def _ack_soon(self, message_id: bytes) -> None:
        """DELIVERs are acknowledged in batches, a moment after they arrive."""
        self._to_ack.append(message_id)
        if len(self._to_ack) >= 256:
            self._flush_acks()
        elif len(self._to_ack) == 1:
            self.reactor.callLater(ACK_DELAY, self._flush_acks)

    def _flush_acks(self) -> None:
        ids, self._to_ack = self._to_ack, []
        if ids and self.adapter is not None and self.adapter.conn is not None:
            self.ack(ids)

    def credit_available(self, adapter: LinkAdapter) -> None:
        adapter.flush()

    def rtt_measured(self, adapter: LinkAdapter, seconds: float) -> None:
        pass

    def link_lost(self, adapter: LinkAdapter) -> None:
        self._fire_closed(self._ended or LinkClosed(ErrorCode.NORMAL, "the connection was lost", True))

    def _fire_closed(self, why: LinkClosed) -> None:
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        if not self.closed.called:
            self.closed.callback(why)

    def link_closed(self, adapter: LinkAdapter, code: ErrorCode, reason: str, by_peer: bool) -> None:
        self.stop_cover()
        failure = LinkClosed(code, reason, by_peer)
        receipts, self._receipts = self._receipts, {}
        for waiting in [*receipts.values(), *self._syncs, *self._punches]:
            waiting.errback(failure)
        self._syncs.clear()
        self._punches.clear()
        if not self.authenticated.called:
            self.authenticated.errback(failure)
        if self._ended is None:
            self._ended = failure  # ``closed`` fires with it once the transport is gone (link_lost)


def _connection_maker(bootstrap: Bootstrap, signing_key: SigningKey, carrier: Carrier, role: Role,
                      settings: LinkSettings, resume: Authenticated | None = None):
    def make(now: float) -> LinkConnection:
        return LinkConnection(
            initiator=True, role=role, signing_key=signing_key, carrier=carrier, settings=settings, now=now,
            remote_static=bootstrap.link_public,
            expected_peer_id=hashlib.sha256(bootstrap.ed25519_public).digest(),
            resume=resume,
        )

    return make


async def connect(
    reactor,
    bootstrap: Bootstrap,
    signing_key: SigningKey,
    *,
    transport: Literal["tcp", "tls", "ws"] = "tcp",
    address: tuple[str, int] | None = None,
    websocket_path: str = "/zentalk",
    role: Role = Role.CLIENT,
    settings: LinkSettings | None = None,
    resume: Authenticated | None = None,
    bind: tuple[str, int] | None = None,
) -> ClientLink:
    """Open and authenticate a link; raises :class:`LinkClosed` if the relay refuses.

    ``bind`` is the local (address, port) for TCP and TLS; None lets the system choose.
    """
    settings = settings or LinkSettings(capabilities=capability_mask(Capability.PADDING))
    host, port = address or (bootstrap.addresses[0] if bootstrap.addresses else (None, None))
    if host is None:
        raise ValueError("the bootstrap string names no address; pass address=")
    client = ClientLink(reactor)
    client.own_id = hashlib.sha256(bytes(signing_key.verify_key)).digest()
    carrier = {"tcp": Carrier.NOISE_STREAM, "tls": Carrier.TLS_STREAM, "ws": Carrier.NOISE_MESSAGES}[transport]
    make = _connection_maker(bootstrap, signing_key, carrier, role, settings, resume)
    if transport == "ws":
        from twisted.web.websocket import WebSocketClientEndpoint

        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        endpoint = WebSocketClientEndpoint.new(reactor, f"ws://{authority}{websocket_path}")

        class _Factory:
            def buildProtocol(self, url: str):
                adapter = WebSocketLinkProtocol(reactor, client, make)
                client.adapter = adapter
                return adapter

        await endpoint.connect(_Factory())
    else:
        tcp_class = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        endpoint = tcp_class(reactor, host, port, timeout=CONNECT_TIMEOUT, bindAddress=bind)
        if transport == "tls":
            from twisted.internet.ssl import CertificateOptions, TLSVersion

            # The relay proves its node id with a signature bound to this TLS
            # session's exporter, so the certificate need not chain to a CA.
            options = CertificateOptions(verify=False, raiseMinimumTo=TLSVersion.TLSv1_3,
                                         acceptableProtocols=[ALPN])
            endpoint = wrapClientTLS(options, endpoint)
        adapter = StreamLinkProtocol(reactor, client, make, tls=transport == "tls")
        client.adapter = adapter
        await connectProtocol(endpoint, adapter)
    return await client.authenticated
