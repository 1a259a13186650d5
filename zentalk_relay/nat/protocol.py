"""The NAT service's Twisted adapters: datagrams and streams to the sans-IO cores and back.

- :class:`StunDatagramProtocol`: a UDP listener that answers Binding only.
- :class:`NatDatagramProtocol`: a UDP listener that also serves TURN:
  ChannelData goes straight to the relayed socket, other STUN methods to
  :class:`~.turn.TurnServer`, Binding to the Binding responder.
- :class:`NatStreamProtocol`: STUN and TURN over TCP or TLS, framed by
  :class:`~.turn.StreamFramer`.
- :class:`RelayProtocol`: one relayed socket; a peer's datagram goes to the
  TURN server and what it returns to the allocation's client.
- :class:`BehaviourDatagramProtocol`: one of the four RFC 5780 sockets.
- :class:`NatHub`: runs the TURN server's actions on real sockets and arms
  the one timer for its next deadline.
- :class:`ProbeProtocol`: drives :class:`~.nat_type.NatTypeProbe` for
  ``zentalk-relay probe``.

Hot paths send through the socket objects the hub keeps (``sock.sendto``)
rather than ``transport.write``, whose per-call address checks cost as much
as the rest of the relaying.
"""

from __future__ import annotations

import socket
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReadDescriptor
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from zope.interface import implementer

from ..listen import MAX_DATAGRAM, bind_udp
from ..logs import logger
from .binding import BehaviourResponder, BindingResponder
from .turn import CloseRelay, FramingError, OpenRelays, StreamFramer, ToClient, ToPeer, TurnServer

log = logger(__name__)

#: Kernel buffers of a relayed socket: one allocation carries one call's media, and
#: thousands of sockets at the listeners' 4 MiB each would pin memory for nothing.
RELAY_SOCKET_BUFFER = 256 * 1024
#: The STUN message types whose method is Binding (request, indication, success, error).
_BINDING_TYPE_MASK = 0x3EEF


def _is_binding(data: bytes) -> bool:
    return len(data) >= 2 and ((data[0] << 8 | data[1]) & _BINDING_TYPE_MASK) == 0x0001


class StunDatagramProtocol(DatagramProtocol):
    noisy = False

    def __init__(self, responder: BindingResponder) -> None:
        self._respond = responder.respond

    def datagramReceived(self, data: bytes, addr) -> None:
        reply = self._respond(data, addr)
        if reply is not None:
            self.transport.write(reply, addr)


@implementer(IReadDescriptor)
class DatagramReader:
    """Reads a UDP socket for the reactor and hands every datagram to ``receive(data, address)``.

    Used for relayed sockets instead of an adopted ``udp.Port``: a relayed
    socket opens and closes with every allocation, and a Port would log both
    at info level through Twisted's own logger; reading here also skips the
    Port's per-datagram bookkeeping on the busiest path. At most ``budget``
    datagrams are read per call so that one busy socket cannot starve the
    others.
    """

    def __init__(self, reactor, sock: socket.socket, receive: Callable[[bytes, tuple], None],
                 budget: int = 256) -> None:
        self._reactor = reactor
        self._fileno = sock.fileno()
        self._recvfrom = sock.recvfrom
        self._receive = receive
        self._budget = budget
        self.errors = 0
        self.reading = False

    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:
        return "nat-relay"

    def start(self) -> None:
        self._reactor.addReader(self)
        self.reading = True

    def stop(self) -> None:
        if self.reading:
            self._reactor.removeReader(self)
            self.reading = False

    def doRead(self) -> None:
        recvfrom = self._recvfrom
        receive = self._receive
        for _ in range(self._budget):
            try:
                data, address = recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:  # an ICMP error queued on the socket: read on
                self.errors += 1
                continue
            try:
                receive(data, address[:2])
            except Exception:  # a bug must not stop the socket being read
                self.errors += 1
                log.failure("relayed datagram handling failed")

    def connectionLost(self, reason) -> None:
        self.reading = False


class UdpListener:
    """A listening UDP socket read by a :class:`DatagramReader`, listed by the service like a port."""

    def __init__(self, reactor, sock: socket.socket, receive: Callable[[bytes, tuple], None]) -> None:
        from twisted.internet.address import IPv4Address, IPv6Address

        self.sock = sock
        self.reader = DatagramReader(reactor, sock, receive)
        host, port = sock.getsockname()[:2]
        self._address = (IPv6Address if ":" in host else IPv4Address)("UDP", host, port)

    def startListening(self) -> None:
        self.reader.start()

    def getHost(self):
        return self._address

    def stopListening(self) -> None:
        self.reader.stop()
        self.sock.close()


class _Relay:
    __slots__ = ("sock", "reader", "protocol")

    def __init__(self, sock: socket.socket, reader: DatagramReader, protocol: "RelayProtocol") -> None:
        self.sock = sock
        self.reader = reader
        self.protocol = protocol


class NatHub:
    """The TURN server's hands: listener sockets, client streams, relayed sockets, one timer."""

    def __init__(self, reactor, turn: TurnServer, socket_buffer: int, bind: Callable = bind_udp) -> None:
        self.reactor = reactor
        self.turn = turn
        self._buffer = socket_buffer
        #: ``bind(host, port, buffer) -> socket``; tests pass a fake.
        self._bind = bind
        self._udp: dict[tuple, Callable] = {}  # listener address -> its socket's sendto
        self._streams: dict[tuple, "NatStreamProtocol"] = {}
        self.relays: dict[tuple, _Relay] = {}
        self._timer = None
        self._stopped = False

    # -- registration -----------------------------------------------------------

    def add_udp_listener(self, local: tuple, sendto: Callable) -> None:
        self._udp[local] = sendto

    def add_stream(self, key: tuple, protocol: "NatStreamProtocol") -> None:
        self._streams[key] = protocol

    def remove_stream(self, key: tuple) -> None:
        if self._streams.pop(key, None) is not None and not self._stopped:
            self.run(self.turn.client_closed(key, self.reactor.seconds()))

    @property
    def relay_count(self) -> int:
        return len(self.relays)

    # -- the fast paths -------------------------------------------------------------

    def relay_sendto(self, relay: tuple) -> Callable | None:
        entry = self.relays.get(relay)
        return None if entry is None else entry.sock.sendto

    def sender_for(self, client: tuple) -> Callable[[bytes], None] | None:
        """A function that sends bytes to ``client``, or None if it is gone."""
        if client[0] == "udp":
            sendto = self._udp.get(client[1])
            if sendto is None:
                return None
            address = client[2]
            return lambda data: sendto(data, address)
        stream = self._streams.get(client)
        return None if stream is None else stream.send

    def send_failed(self) -> None:
        self.turn.stats.dropped["send_failed"] += 1

    # -- actions ----------------------------------------------------------------------

    def run(self, actions: list) -> None:
        for action in actions:
            kind = type(action)
            if kind is ToClient:
                send = self.sender_for(action.client)
                if send is not None:
                    try:
                        send(action.data)
                    except OSError:
                        self.send_failed()
            elif kind is ToPeer:
                entry = self.relays.get(action.relay)
                if entry is not None:
                    try:
                        entry.sock.sendto(action.data, action.peer)
                    except OSError:
                        self.send_failed()
            elif kind is OpenRelays:
                ports = [self._open(bind) for bind in action.binds]
                self.run(self.turn.relays_opened(action.token, ports, self.reactor.seconds()))
            elif kind is CloseRelay:
                self._close(action.relay)
        self._arm()

    def _open(self, bind) -> int | None:
        """Bind the first free candidate (and the port after it for a pair); None if none was free."""
        for port in bind.ports:
            opened = []
            try:
                for number in (port, port + 1) if bind.pair else (port,):
                    opened.append((number, self._bind(bind.host, number, min(self._buffer, RELAY_SOCKET_BUFFER))))
            except OSError:
                for _, sock in opened:
                    sock.close()
                continue
            for number, sock in opened:
                key = (bind.host, number)
                protocol = RelayProtocol(self, key)
                reader = DatagramReader(self.reactor, sock, protocol.datagramReceived)
                reader.start()
                self.relays[key] = _Relay(sock, reader, protocol)
            return port
        return None

    def _close(self, relay: tuple) -> None:
        entry = self.relays.pop(relay, None)
        if entry is not None:
            entry.reader.stop()
            entry.sock.close()

    # -- time ---------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._stopped:
            return
        deadline = self.turn.next_deadline()
        timer = self._timer
        if deadline is None:
            if timer is not None and timer.active():
                timer.cancel()
            self._timer = None
            return
        if timer is not None and timer.active():
            if timer.getTime() == deadline:
                return
            timer.cancel()
        self._timer = self.reactor.callLater(max(0.0, deadline - self.reactor.seconds()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        self.run(self.turn.expire(self.reactor.seconds()))

    def stop(self) -> None:
        """Close every relayed socket and the timer; the service is stopping."""
        self.run(self.turn.close_all())
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for relay in list(self.relays):
            self._close(relay)


class NatDatagramProtocol(DatagramProtocol):
    """A UDP listener serving Binding and TURN."""

    noisy = False

    def __init__(self, responder: BindingResponder, hub: NatHub) -> None:
        self._respond = responder.respond
        self._hub = hub
        self._turn = hub.turn
        self._channel = hub.turn.channel_from_client
        self._seconds = hub.reactor.seconds
        self._relays = hub.relays
        self.local: tuple = ("", 0)
        self._sendto: Callable | None = None

    def bind(self, local: tuple, sendto: Callable) -> None:
        """The listener's own address (part of every client's 5-tuple) and its socket's sendto."""
        self.local = local
        self._sendto = sendto
        self._hub.add_udp_listener(local, sendto)

    def datagramReceived(self, data: bytes, addr) -> None:
        if data and 0x40 <= data[0] < 0x80:
            hit = self._channel(("udp", self.local, addr), data, self._seconds())
            if hit is not None:
                entry = self._relays.get(hit[0])
                if entry is not None:
                    try:
                        entry.sock.sendto(hit[1], hit[2])
                    except OSError:
                        self._hub.send_failed()
            return
        if not _is_binding(data) and len(data) >= 20:
            self._hub.run(self._turn.handle(("udp", self.local, addr), data, self._seconds()))
            return
        reply = self._respond(data, addr)
        if reply is not None:
            try:
                self._sendto(reply, addr)
            except OSError:
                pass


class RelayProtocol:
    """One relayed socket: datagrams from peers to the allocation's client."""

    def __init__(self, hub: NatHub, key: tuple) -> None:
        self._hub = hub
        self._key = key
        self._from_peer = hub.turn.from_peer
        self._seconds = hub.reactor.seconds
        self._send: Callable[[bytes], None] | None = None

    def datagramReceived(self, data: bytes, addr) -> None:
        out = self._from_peer(self._key, data, addr, self._seconds())
        if out is None:
            return
        send = self._send
        if send is None:
            # The socket's client is known once its allocation exists (a
            # reserved socket gets one later than it opens).
            client = self._hub.turn.relay_client(self._key)
            if client is None:
                return
            send = self._send = self._hub.sender_for(client)
            if send is None:
                return
        try:
            send(out)
        except OSError:
            self._hub.send_failed()


@implementer(IPushProducer)
class NatStreamProtocol(Protocol):
    """STUN and TURN over one TCP or TLS connection."""

    def __init__(self, responder: BindingResponder, hub: NatHub | None, kind: str) -> None:
        self._responder = responder
        self._hub = hub
        self._kind = kind
        self._framer = StreamFramer()
        self._paused = False
        self.key: tuple = ()

    def connectionMade(self) -> None:
        local, remote = self.transport.getHost(), self.transport.getPeer()
        self.key = (self._kind, (local.host, local.port), (remote.host, remote.port))
        if self._hub is not None:
            self._hub.add_stream(self.key, self)
        # The transport pauses us when its buffer fills: data for a client
        # that does not read is then dropped, never buffered without bound.
        self.transport.registerProducer(self, True)

    def send(self, data: bytes) -> None:
        if not self._paused:
            self.transport.write(data)
        elif self._hub is not None:
            self._hub.turn.stats.dropped["client_backpressure"] += 1

    def dataReceived(self, data: bytes) -> None:
        try:
            messages = self._framer.receive(data)
        except FramingError:
            if self._hub is not None:
                self._hub.turn.stats.dropped["bad_framing"] += 1
            self.transport.loseConnection()
            return
        hub = self._hub
        for message in messages:
            if message[0] >= 0x40:
                if hub is None:
                    continue
                hit = hub.turn.channel_from_client(self.key, message, hub.reactor.seconds())
                if hit is not None:
                    sendto = hub.relay_sendto(hit[0])
                    if sendto is not None:
                        try:
                            sendto(hit[1], hit[2])
                        except OSError:
                            hub.send_failed()
            elif hub is not None and not _is_binding(message):
                hub.run(hub.turn.handle(self.key, message, hub.reactor.seconds()))
            else:
                reply = self._responder.respond(message, self.key[2])
                if reply is not None:
                    self.transport.write(reply)

    def connectionLost(self, reason=None) -> None:
        if self._hub is not None and self.key:
            self._hub.remove_stream(self.key)

    # IPushProducer
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False

    def stopProducing(self) -> None:
        self._paused = True


class NatStreamFactory(Factory):
    noisy = False

    def __init__(self, responder: BindingResponder, hub: NatHub | None, kind: str) -> None:
        self._responder = responder
        self._hub = hub
        self._kind = kind

    def buildProtocol(self, addr):
        protocol = NatStreamProtocol(self._responder, self._hub, self._kind)
        protocol.factory = self
        return protocol


class BehaviourDatagramProtocol(DatagramProtocol):
    """One of the four RFC 5780 sockets; a reply may leave from another of them."""

    noisy = False

    def __init__(self, responder: BehaviourResponder, role: int, senders: list, turn: NatDatagramProtocol | None) -> None:
        self._respond = responder.respond
        self._role = role
        #: sendto of the four sockets, by role, filled in as they are bound.
        self._senders = senders
        #: The primary socket also serves TURN: everything that is not Binding goes there.
        self._turn = turn

    def datagramReceived(self, data: bytes, addr) -> None:
        if self._turn is not None and not _is_binding(data):
            self._turn.datagramReceived(data, addr)
            return
        answer = self._respond(data, addr, self._role)
        if answer is not None:
            reply, role = answer
            try:
                self._senders[role](reply, addr)
            except OSError:
                pass


class ProbeProtocol(DatagramProtocol):
    """Runs a :class:`~.nat_type.NatTypeProbe` over one UDP socket; ``done`` fires with its result."""

    noisy = False

    def __init__(self, reactor, probe) -> None:
        self._reactor = reactor
        self._probe = probe
        self._timer = None
        self.done: Deferred = Deferred()

    def startProtocol(self) -> None:
        self._run(self._probe.start(self._reactor.seconds()))

    def datagramReceived(self, data: bytes, addr) -> None:
        self._run(self._probe.receive(data, addr, self._reactor.seconds()))

    def _fire(self) -> None:
        self._timer = None
        self._run(self._probe.timeout(self._reactor.seconds()))

    def _run(self, sends) -> None:
        for destination, data in sends:
            try:
                self.transport.write(data, destination)
            except Exception:  # an unreachable or odd address: the probe times the test out
                pass
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._probe.result is not None:
            if not self.done.called:
                self.done.callback(self._probe.result)
            return
        deadline = self._probe.next_deadline()
        if deadline is not None:
            self._timer = self._reactor.callLater(max(0.0, deadline - self._reactor.seconds()), self._fire)

    def stopProtocol(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
