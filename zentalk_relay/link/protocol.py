"""Twisted adapters for a link: bytes and timers in, records out, nothing else.

One adapter per connection feeds a :class:`~.session.LinkConnection` and
hands its events to an owner (the relay's hub, or the reference client).
The adapter is the transport's streaming producer: when the kernel buffer
fills, Twisted pauses it and it stops pulling records, so frames wait in the
connection's bounded queues and the peer's window closes; nothing grows
without bound. Exactly one ``callLater`` is armed, for the connection's
next deadline.
"""

from __future__ import annotations

import socket
from typing import Callable, Protocol as TypingProtocol

from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ..logs import logger
from .frames import ErrorCode, Frame
from .session import (
    Authenticated,
    Closing,
    CreditAvailable,
    Event,
    LinkConnection,
    Received,
    RttSample,
    Sends,
    State,
)

log = logger(__name__)

ALPN = b"zentalk/3"
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"


class LinkOwner(TypingProtocol):
    """What an adapter reports to: the relay's hub or the reference client."""

    def link_authenticated(self, adapter: "LinkAdapter", event: Authenticated) -> None: ...

    def frame_received(self, adapter: "LinkAdapter", frame: Frame) -> None: ...

    def sends_received(self, adapter: "LinkAdapter", items: list[tuple[bytes, bytes, bytes]]) -> None:
        """A run of SEND frames, ``(message_id, recipient, body)`` each; only from connections
        made with ``batch_sends=True``."""

    def credit_available(self, adapter: "LinkAdapter") -> None: ...

    def rtt_measured(self, adapter: "LinkAdapter", seconds: float) -> None: ...

    def link_closed(self, adapter: "LinkAdapter", code: ErrorCode, reason: str, by_peer: bool) -> None: ...

    def link_lost(self, adapter: "LinkAdapter") -> None:
        """The transport is gone (after link_closed)."""


class _Batch:
    """The adapters with frames queued during the input being handled; None outside one.

    A module-level holder, not a class attribute of LinkAdapter: assigning to
    a class attribute makes the interpreter drop its attribute caches for that
    class and every subclass, and this changes twice per input.
    """

    __slots__ = ("adapters",)

    def __init__(self) -> None:
        self.adapters: set | None = None


_batch = _Batch()


@implementer(IPushProducer)
class LinkAdapter:
    """The carrier-independent half: events, timer, flushing, back-pressure.

    While one link's input is being handled, frames queued on any link (a
    DELIVER to the recipient, a RECEIPT to the sender) are written once the
    input is done, so that a read carrying many SENDs leaves as a few records
    per link instead of one record, one AEAD call and one write per frame.
    """

    def __init__(self, reactor, owner: LinkOwner, make: Callable[[float], LinkConnection]) -> None:
        self.reactor = reactor
        self.owner = owner
        self._make = make
        self.conn: LinkConnection | None = None
        self._timer = None
        self._armed_for: float | None = None  # the deadline the timer was armed for
        self._paused = False
        self._closing = False
        self._gone = False
        self.peer_address = None

    # -- hooks for the carriers ---------------------------------------------

    def _write_units(self, units: list[bytes]) -> None:
        """Write wire units to the carrier."""

    def _drop(self) -> None:
        """Close the transport once written."""

    def abort(self) -> None:
        """Drop the transport now, written or not."""

    # -- shared --------------------------------------------------------------

    def _started(self) -> None:
        now = self.reactor.seconds()
        conn = self.conn = self._make(now)
        events = conn.connection_made(now)
        if events or conn.pending():
            self._handle(events)
        else:  # a responder waits for the peer to speak: only its handshake deadline to arm
            self._arm()

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            kind = type(event)
            if kind is Sends:
                self.owner.sends_received(self, event.items)
            elif kind is Received:
                self.owner.frame_received(self, event.frame)
            elif kind is Authenticated:
                self.owner.link_authenticated(self, event)
            elif kind is CreditAvailable:
                self.owner.credit_available(self)
            elif kind is RttSample:
                self.owner.rtt_measured(self, event.seconds)
            elif kind is Closing:
                self._closing = True
                self.owner.link_closed(self, event.code, event.reason, event.by_peer)
        self.flush()

    def flush(self) -> None:
        """Write what the connection has queued, unless the transport asked us to wait."""
        conn = self.conn
        if conn is None or self._gone:
            return
        if not self._paused:
            units = conn.pull(self.reactor.seconds())
            if units:
                self._write_units(units)
        if self._closing and not conn.pending():
            self._gone = True
            self._cancel_timer()
            self._drop()
            return
        self._arm()

    def send(self, frame: Frame, priority=None) -> bool:
        """Queue an application frame and write it when possible; False if refused."""
        if self.conn is None:
            return False
        accepted = self.conn.send(frame, self.reactor.seconds()) if priority is None else self.conn.send(
            frame, self.reactor.seconds(), priority)
        if accepted:
            self._flush_soon()
        return accepted

    def send_delivers(self, items: list[tuple[bytes, bytes, bytes]]) -> int:
        """DELIVER ``(message_id, _, body)`` each, in order; how many were taken (see LinkConnection)."""
        if self.conn is None:
            return 0
        taken = self.conn.send_delivers(items, self.reactor.seconds())
        if taken:
            self._flush_soon()
        return taken

    def send_receipts(self, message_ids: list[bytes], status: int, code: int = 0) -> bool:
        """RECEIPT(message_id, status, code) for each id, in order."""
        if self.conn is None or not self.conn.send_receipts(message_ids, status, code):
            return False
        self._flush_soon()
        return True

    def _flush_soon(self) -> None:
        batch = _batch.adapters
        if batch is None:
            self.flush()
        else:
            batch.add(self)

    def _input(self, receive: Callable[[bytes, float], list[Event]], data: bytes) -> None:
        """Handle input with the writes it causes on every link batched to its end (see :func:`batched`)."""
        if _batch.adapters is not None:
            self._handle(receive(data, self.reactor.seconds()))
            return
        _batch.adapters = batch = set()
        try:
            self._handle(receive(data, self.reactor.seconds()))
        finally:
            _batch.adapters = None
            for adapter in batch:
                adapter.flush()

    def throttle(self, window: int, reason, retry_after_ms: int) -> None:
        """Tell the peer to use a smaller window and pause (FLOW_CONTROL)."""
        if self.conn is not None:
            self.conn.throttle(window, reason, retry_after_ms)
            self._flush_soon()

    def close(self, code: ErrorCode, reason: str) -> None:
        """Write what is queued, then CLOSE."""
        if self.conn is None:
            self._drop()
            return
        self.flush()
        self._handle(self.conn.close(code, reason, self.reactor.seconds()))

    def _arm(self) -> None:
        deadline = self.conn.next_deadline() if self.conn is not None else None
        if deadline is None:
            self._cancel_timer()
            return
        timer = self._timer
        if timer is not None:  # pending: _fire and _cancel_timer drop it
            if deadline != self._armed_for:  # most inputs leave the deadline as it was
                timer.reset(max(0.0, deadline - self.reactor.seconds()))  # cheaper than cancel and callLater
                self._armed_for = deadline
            return
        self._armed_for = deadline
        self._timer = self.reactor.callLater(max(0.0, deadline - self.reactor.seconds()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self.conn is not None and not self._gone:
            self._handle(self.conn.on_timer(self.reactor.seconds()))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _lost(self, reason: Failure) -> None:
        self._cancel_timer()
        already = self._closing
        self._gone = True
        if self.conn is not None:
            self.conn.connection_lost()
        if not already:
            self._closing = True
            self.owner.link_closed(self, ErrorCode.NORMAL, reason.getErrorMessage(), True)
        self.owner.link_lost(self)

    # -- IPushProducer -------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self.flush()

    def stopProducing(self) -> None:
        self._paused = True

    @property
    def state(self) -> State:
        return State.IDLE if self.conn is None else self.conn.state


def batched(work: Callable[[], object]) -> None:
    """Run ``work`` with the frames it queues on any link written once, at its end.

    Link input uses it; so does anything else that answers many links at once
    (a mailbox commit acknowledging a whole batch of messages).
    """
    outer = _batch.adapters is None
    if outer:
        _batch.adapters = set()
    try:
        work()
    finally:
        if outer:
            batch, _batch.adapters = _batch.adapters, None
            for adapter in batch:
                adapter.flush()


@implementer(IHandshakeListener)
class StreamLinkProtocol(LinkAdapter, Protocol):
    """TCP (Noise inside) or TLS 1.3 (plain records inside)."""

    #: Set by a listener whose socket has TCP_NODELAY, which accepted sockets inherit.
    no_delay_inherited = False

    def __init__(self, reactor, owner: LinkOwner, make: Callable[[float], LinkConnection], tls: bool) -> None:
        LinkAdapter.__init__(self, reactor, owner, make)
        self._tls = tls
        self._socket: socket.socket | None = None

    def connectionMade(self) -> None:
        if self.peer_address is None:  # the hub passes the address it was given
            self.peer_address = self.transport.getPeer()
        if not self._tls:
            # The handshake's few small writes go straight to the socket while
            # every earlier one went whole (see _write_units).
            handle = getattr(self.transport, "getHandle", None)
            sock = handle() if handle is not None else None
            if isinstance(sock, socket.socket) and sock.gettimeout() == 0.0:
                self._socket = sock
                # Twisted calls shutdown() before close() in case another process shares the
                # descriptor; none does here (the node never forks), and on a link its peer
                # reset, the commonest end, that call only fails: a system call and an
                # exception per link for nothing. close() sends the same FIN (or RST).
                self.transport._shouldShutdown = False
        if self._socket is None:
            self._no_delay()
        # else at the end of the direct writes: each of them answers the peer's
        # message, which acknowledged everything sent before, so Nagle holds none
        # of them back, and a link closed in its handshake saves the system call.
        self.transport.registerProducer(self, True)
        self._started()

    def _no_delay(self) -> None:
        # Records are already batched per flush; Nagle would only add delay.
        if self.no_delay_inherited:
            return
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            try:
                no_delay(True)
            except OSError:
                pass

    def handshakeCompleted(self) -> None:
        """TLS is up: check ALPN and bind authentication to this session."""
        if not self._tls or self.conn is None:
            return
        if getattr(self.transport, "negotiatedProtocol", None) != ALPN:
            log.warn("TLS peer did not negotiate ALPN zentalk/3")
            self.transport.abortConnection()
            return
        binding = self.transport.getHandle().export_keying_material(EXPORTER_LABEL, 32, None)
        self._handle(self.conn.secure_established(binding, self.reactor.seconds()))

    def dataReceived(self, data: bytes) -> None:
        if self.conn is not None and not self._gone:
            self._input(self.conn.receive_data, data)

    def connectionLost(self, reason: Failure) -> None:
        self._lost(reason)

    def _write_units(self, units: list[bytes]) -> None:
        data = units[0] if len(units) == 1 else b"".join(units)
        sock = self._socket
        if sock is not None:
            # Until the link is ACTIVE (its last write included), a write is one
            # send() when the kernel takes it whole, as it does the handshake's
            # few hundred bytes: the transport's buffer is empty then, because
            # nothing was ever given to it, so the order holds. Twisted's own
            # write would register for writability and send on the next turn of
            # the loop. Whatever the kernel does not take (or an error) goes to
            # the transport, and from then on everything does.
            conn = self.conn
            last = conn is None or conn.state is not State.HANDSHAKE
            sent = 0
            if not self.transport.disconnecting:
                try:
                    sent = sock.send(data)
                except OSError:  # would block, or the peer is gone: the transport finds out itself
                    sent = 0
            if last or sent != len(data):
                self._socket = None
                self._no_delay()
            if sent == len(data):
                return
            data = data[sent:]
        self.transport.write(data)

    def _drop(self) -> None:
        self._socket = None
        # A TLS transport shuts TLS down (close_notify, then TCP) only once no producer
        # is registered; TCP does not mind. Without this a TLS link never closed.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def abort(self) -> None:
        self.transport.abortConnection()


class WebSocketLinkProtocol(LinkAdapter):
    """One Noise message per binary WebSocket message (``twisted.web.websocket``)."""

    def __init__(self, reactor, owner: LinkOwner, make: Callable[[float], LinkConnection]) -> None:
        super().__init__(reactor, owner, make)
        self._transport = None

    def negotiationStarted(self, transport) -> None:
        self._transport = transport

    def negotiationFinished(self) -> None:
        try:
            self._transport.attachProducer(self)
        except RuntimeError:
            # On the server side twisted.web's HTTP channel stays the TCP
            # transport's producer; the peer's flow-control window then bounds
            # what can be buffered for a slow reader.
            pass
        self._started()

    def bytesMessageReceived(self, data: bytes) -> None:
        if self.conn is not None and not self._gone:
            self._input(self.conn.receive_record, bytes(data))

    def textMessageReceived(self, message: str) -> None:
        if self.conn is not None:
            self.close(ErrorCode.PROTOCOL_ERROR, "text messages are not part of the protocol")

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        self._lost(reason)

    def _write_units(self, units: list[bytes]) -> None:
        for unit in units:
            self._transport.sendBytesMessage(unit)

    def _drop(self) -> None:
        if self._transport is not None:
            self._transport.loseConnection()

    def abort(self) -> None:
        self._drop()
