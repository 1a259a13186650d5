"""The relay link service: listeners, connection limits, and the hub that routes.

The hub owns every link adapter of the node. It enforces the limits that
need a view across links (per IP, pending handshakes, per node id, total),
keeps authenticated links by node id, and hands a SEND to the recipient's
link as a DELIVER. A limit is refused on the secure channel with a CLOSE
frame that names it, then counted.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections import OrderedDict
from typing import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.protocol import Factory

from ..config import LinkConfig
from ..identity import Identity
from ..listen import ListenError, ReloadableTLS, describe_port, listen_stream
from ..logs import logger
from ..ratelimit import Rate
from .frames import ErrorCode, Role, Send
from .protocol import LinkAdapter, StreamLinkProtocol, WebSocketLinkProtocol
from .session import Authenticated, Carrier, LinkConnection, LinkSettings, LinkStats, Priority, State

log = logger(__name__)

#: Resumable sessions remembered at most: the oldest go first.
MAX_SESSIONS = 100_000
#: Noise ephemeral keys remembered to refuse a replayed first handshake message.
REPLAY_MEMORY = 65536
REPLAY_SECONDS = 600.0
#: Both tables above are pruned every this many insertions, in one pass over their oldest entries
#: (inserted together, so adjacent in memory), not one scattered removal per handshake; between
#: passes a table may hold this many more than its bound, and an entry may outlive its time.
PRUNE_EVERY = 256


def settings_from(config: LinkConfig, capabilities: int = 0, features: tuple[str, ...] = ()) -> LinkSettings:
    return LinkSettings(
        window_initial=config.window_initial,
        window_min=config.window_min,
        window_max=config.window_max,
        max_backlog=config.max_backlog,
        messages=Rate(config.messages_per_minute, 60.0, config.messages_burst),
        pex=Rate(config.pex_per_minute, 60.0, config.pex_burst),
        capabilities=capabilities,
        features=features,
    )


class LinkHub:
    """Every link of the node, the limits across them, and message routing."""

    def __init__(self, reactor, config: LinkConfig, identity: Identity, stats: LinkStats,
                 settings: LinkSettings, rtt_observer: Callable[[float], None] = lambda seconds: None) -> None:
        self.reactor = reactor
        self.config = config
        self.identity = identity
        self.stats = stats
        self.settings = settings
        self.adapters: set[LinkAdapter] = set()
        self.by_peer: dict[bytes, list[LinkAdapter]] = {}
        self.refusals: dict[str, int] = {}
        self._per_ip: dict[str, int] = {}
        self._ip_of: dict[LinkAdapter, str] = {}
        self._pending: set[LinkAdapter] = set()
        self._replays: OrderedDict[bytes, float] = OrderedDict()
        self._rtt_observer = rtt_observer
        self._link_private = bytes(identity.link_key)
        self._link_public = identity.link_public
        self._drained: list[Deferred] = []
        #: token -> the session packed in one bytes object (see _pack_session), oldest first
        self._sessions: OrderedDict[bytes, bytes] = OrderedDict()
        self._sessions_added = self._replays_added = 0  # since each table's last pruning
        self.router = None  # set by the node when delivery is built
        self.accepting = True

    # -- admission -----------------------------------------------------------

    def _refusal(self, ip: str) -> tuple[ErrorCode, str] | None:
        if not self.accepting:
            return ErrorCode.SHUTTING_DOWN, "the relay is shutting down"
        if len(self.adapters) >= self.config.max_links:
            return ErrorCode.SERVER_FULL, "the relay holds as many links as it may"
        if self._per_ip.get(ip, 0) >= self.config.links_per_ip:
            return ErrorCode.TOO_MANY_CONNECTIONS_FROM_IP, "too many links from this address"
        if len(self._pending) >= self.config.pending_handshakes:
            return ErrorCode.TOO_MANY_PENDING_HANDSHAKES, "too many handshakes in progress"
        return None

    def adopt(self, adapter: LinkAdapter) -> LinkAdapter:
        """Take an outbound link (the mesh's) under the hub's accounting."""
        self.adapters.add(adapter)
        self._pending.add(adapter)
        return adapter

    def _prune_sessions(self, now: float) -> None:
        """Drop the oldest sessions while they have expired or there are more than MAX_SESSIONS."""
        sessions = self._sessions
        while sessions and (_EXPIRES(next(iter(sessions.values())))[0] <= now or len(sessions) > MAX_SESSIONS):
            sessions.popitem(last=False)

    def _resume(self, token: bytes) -> Authenticated | None:
        """The session a token resumes, once; None if unknown or expired."""
        found = self._sessions.pop(token, None)
        if found is None or _EXPIRES(found)[0] <= self.reactor.seconds():
            return None
        _, peer_id, role, version, capabilities = _SESSION.unpack_from(found)
        names = found[_SESSION.size:]
        features = tuple(names.decode("ascii").split("\0")) if names else ()
        return Authenticated(peer_id, Role(role), version, capabilities, features, token)

    def _fresh_handshake(self, ephemeral: bytes) -> bool:
        """False if this Noise ephemeral key was seen in the last REPLAY_SECONDS (or a little longer)."""
        replays = self._replays
        if ephemeral in replays:
            return False
        now = replays[ephemeral] = self.reactor.seconds()
        self._replays_added += 1
        if self._replays_added >= PRUNE_EVERY:
            self._replays_added = 0
            while replays and (now - next(iter(replays.values())) >= REPLAY_SECONDS or len(replays) > REPLAY_MEMORY):
                replays.popitem(last=False)
        return True

    def build(self, carrier: Carrier, address) -> LinkAdapter:
        ip = getattr(address, "host", "unix")
        refusal = self._refusal(ip)
        if refusal is not None:
            self.refusals[refusal[0].label] = self.refusals.get(refusal[0].label, 0) + 1
            log.debug("refusing a link: {reason}", reason=refusal[0].label)

        make = _Responder(self, carrier, refusal)
        if carrier is Carrier.NOISE_MESSAGES:
            adapter: LinkAdapter = WebSocketLinkProtocol(self.reactor, self, make)
        else:
            adapter = StreamLinkProtocol(self.reactor, self, make, tls=carrier is Carrier.TLS_STREAM)
            adapter.peer_address = address  # what transport.getPeer() would say, already made
        self.adapters.add(adapter)
        self._ip_of[adapter] = ip
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        if refusal is None:
            self._pending.add(adapter)
        return adapter

    # -- LinkOwner -----------------------------------------------------------

    def link_authenticated(self, adapter: LinkAdapter, event: Authenticated) -> None:
        self._pending.discard(adapter)
        links = self.by_peer.get(event.peer_id)
        if links is None:
            links = self.by_peer[event.peer_id] = []
        elif len(links) >= self.config.links_per_peer:
            self.refusals[ErrorCode.TOO_MANY_LINKS_FOR_PEER.label] = self.refusals.get(
                ErrorCode.TOO_MANY_LINKS_FOR_PEER.label, 0) + 1
            adapter.close(ErrorCode.TOO_MANY_LINKS_FOR_PEER, "this node id has as many links as it may")
            return
        links.append(adapter)
        if event.role is Role.CLIENT and not adapter.conn.initiator:
            now = self.reactor.seconds()
            self._sessions[event.session_token] = _pack_session(now + self.config.session_ttl, event)
            self._sessions_added += 1
            if self._sessions_added >= PRUNE_EVERY:
                self._sessions_added = 0
                self._prune_sessions(now)
        if self.router is not None:
            self.router.authenticated(adapter, event)

    def frame_received(self, adapter: LinkAdapter, frame) -> None:
        if self.router is not None:
            self.router.handle(adapter, frame)

    def sends_received(self, adapter: LinkAdapter, items: list[tuple[bytes, bytes, bytes]]) -> None:
        router = self.router
        if router is None:
            return
        handle_sends = getattr(router, "handle_sends", None)
        if handle_sends is not None:
            handle_sends(adapter, items)
            return
        for item in items:  # a router that takes frames one by one
            router.handle(adapter, Send(*item))

    def credit_available(self, adapter: LinkAdapter) -> None:
        adapter.flush()

    def rtt_measured(self, adapter: LinkAdapter, seconds: float) -> None:
        self._rtt_observer(seconds)

    def link_closed(self, adapter: LinkAdapter, code: ErrorCode, reason: str, by_peer: bool) -> None:
        """The link is ending; it stops being a route at once."""
        self._pending.discard(adapter)
        conn = adapter.conn
        if conn is not None and conn.peer_id is not None:
            links = self.by_peer.get(conn.peer_id)
            if links and adapter in links:
                links.remove(adapter)
                if not links:
                    del self.by_peer[conn.peer_id]

    def link_lost(self, adapter: LinkAdapter) -> None:
        """The transport is gone: release what the link held (its adapter reported link_closed first)."""
        if self.router is not None:
            self.router.link_lost(adapter)
        if adapter not in self.adapters:
            return
        self.adapters.discard(adapter)
        ip = self._ip_of.pop(adapter, None)
        if ip is not None:
            left = self._per_ip.get(ip, 1) - 1
            if left:
                self._per_ip[ip] = left
            else:
                self._per_ip.pop(ip, None)
        if not self.adapters and self._drained:
            self._fire_drained()

    # -- views for metrics and status ---------------------------------------

    def link_counts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for adapter in self.adapters:
            conn = adapter.conn
            state = adapter.state.value
            if conn is not None and conn.state is State.ACTIVE and conn.idle:
                state = "idle"
            kind = "unknown" if conn is None or conn.peer_role is None else conn.peer_role.name.lower()
            counts[state, kind] = counts.get((state, kind), 0) + 1
        return counts

    def close_all(self, code: ErrorCode, reason: str, grace: float = 2.0) -> Deferred:
        """Tell every peer why, and fire once all links are gone or ``grace`` seconds passed."""
        self.accepting = False
        done: Deferred = Deferred()
        if not self.adapters:
            done.callback(None)
            return done
        self._drained.append(done)
        for adapter in list(self.adapters):
            adapter.close(code, reason)
        timer = self.reactor.callLater(grace, self._give_up_draining)
        done.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])
        return done

    def _give_up_draining(self) -> None:
        for adapter in list(self.adapters):
            adapter.abort()
        self._fire_drained()

    def _fire_drained(self) -> None:
        waiting, self._drained = self._drained, []
        for done in waiting:
            if not done.called:
                done.callback(None)


#: A resumable session: expiry, peer id, role, version, capabilities, then the feature names (printable
#: ASCII) joined by NUL. One object per session, not a tuple of six: the hub may hold 100,000, and it
#: touches the oldest and the newest on every handshake, so their size is memory and cache misses.
_SESSION = struct.Struct("!d32sBHI")
_EXPIRES = struct.Struct("!d").unpack_from


def _pack_session(expires: float, event: Authenticated) -> bytes:
    packed = _SESSION.pack(expires, event.peer_id, int(event.role), event.version, event.capabilities)
    return packed + "\0".join(event.features).encode("ascii") if event.features else packed


class _Responder:
    """Makes the relay's side of one link when its transport is up (no closure per connection)."""

    __slots__ = ("_hub", "_carrier", "_refusal")

    def __init__(self, hub: LinkHub, carrier: Carrier, refusal: tuple[ErrorCode, str] | None) -> None:
        self._hub = hub
        self._carrier = carrier
        self._refusal = refusal

    def __call__(self, now: float) -> LinkConnection:
        hub = self._hub
        return LinkConnection(
            initiator=False, role=Role.RELAY, signing_key=hub.identity.signing_key, carrier=self._carrier,
            settings=hub.settings, now=now, stats=hub.stats,
            static_private=hub._link_private, static_public=hub._link_public,
            accept_roles=_ACCEPT_ALL if hub.config.accept_relays else _ACCEPT_CLIENTS,
            replay_check=hub._fresh_handshake, refuse=self._refusal, resume_check=hub._resume,
            batch_sends=True,
        )


_ACCEPT_ALL = (Role.CLIENT, Role.RELAY)
_ACCEPT_CLIENTS = (Role.CLIENT,)


class _LinkFactory(Factory):
    noisy = False

    def __init__(self, hub: LinkHub, carrier: Carrier) -> None:
        self._hub = hub
        self._carrier = carrier
        #: The listening socket has TCP_NODELAY, which Linux copies to every accepted socket.
        self.no_delay = False

    def buildProtocol(self, addr):
        protocol = self._hub.build(self._carrier, addr)
        protocol.factory = self
        protocol.no_delay_inherited = self.no_delay
        return protocol


def _no_delay_on_listener(port) -> bool:
    """TCP_NODELAY on a listening TCP socket, so that accepted ones start with it (Linux copies the
    option to them): one system call per listener instead of one per link. False where it cannot."""
    handle = getattr(port, "socket", None)
    if not sys.platform.startswith("linux") or not isinstance(handle, socket.socket) \
            or handle.type != socket.SOCK_STREAM or handle.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return False
    return True


def _tls_context(config: LinkConfig) -> ReloadableTLS:
    """TLS 1.3 only, ALPN zentalk/3; certificate and key read again on reload."""
    from twisted.internet.ssl import CertificateOptions, TLSVersion

    def options(key, certificates):
        return CertificateOptions(privateKey=key, certificate=certificates[0], extraCertChain=certificates[1:],
                                  raiseMinimumTo=TLSVersion.TLSv1_3, acceptableProtocols=[b"zentalk/3"])

    return ReloadableTLS(config.tls_certificate, config.tls_private_key, options)


class _WebSocketFactory:
    """``twisted.web.websocket`` asks this for a protocol per upgraded request."""

    def __init__(self, hub: LinkHub) -> None:
        self._hub = hub

    def buildProtocol(self, request):
        return self._hub.build(Carrier.NOISE_MESSAGES, request.getClientAddress())


class LinkService(Service):
    def __init__(self, reactor, config: LinkConfig, hub: LinkHub) -> None:
        self._reactor = reactor
        self._config = config
        self.hub = hub
        self._ports: list[tuple[str, object]] = []
        self.tls: ReloadableTLS | None = None

    @property
    def endpoints(self) -> list[str]:
        return [describe_port(kind, port) for kind, port in self._ports]

    def reconfigure(self, config: LinkConfig) -> None:
        """New limits for what comes next (SIGHUP); the TLS files read again. Raises if they do not load."""
        self._config = config
        self.hub.config = config
        settings = self.hub.settings
        self.hub.settings = settings_from(config, settings.capabilities, settings.features)
        if self.tls is not None:
            self.tls.reload(config.tls_certificate, config.tls_private_key)

    def bootstrap_addresses(self) -> tuple[tuple[str, int], ...]:
        from ..config import parse_host_port

        if self._config.public_addresses:
            return tuple(parse_host_port(a) for a in self._config.public_addresses)
        found = []
        for kind, port in self._ports:
            address = port.getHost()
            if kind == "tcp" and getattr(address, "host", "") not in ("", "0.0.0.0", "::"):
                found.append((address.host, address.port))
        return tuple(found)

    def privilegedStartService(self) -> None:
        try:
            for description in self._config.tcp:
                links = _LinkFactory(self.hub, Carrier.NOISE_STREAM)
                links.no_delay = _no_delay_on_listener(self._listen("tcp", description, links))
            if self._config.tls:
                if not (self._config.tls_certificate and self._config.tls_private_key):
                    raise ListenError("link.tls needs link.tls_certificate and link.tls_private_key")
                from twisted.protocols.tls import TLSMemoryBIOFactory

                self.tls = _tls_context(self._config)
                links = _LinkFactory(self.hub, Carrier.TLS_STREAM)
                links.no_delay = _no_delay_on_listener(
                    self._listen("tls", self._config.tls, TLSMemoryBIOFactory(self.tls, False, links)))
            if self._config.websocket:
                from twisted.web.resource import Resource
                from twisted.web.server import Site
                from twisted.web.websocket import WebSocketResource

                root = Resource()
                parts = [p.encode() for p in self._config.websocket_path.strip("/").split("/") if p]
                node = root
                for part in parts[:-1]:
                    child = Resource()
                    node.putChild(part, child)
                    node = child
                node.putChild(parts[-1] if parts else b"", WebSocketResource(_WebSocketFactory(self.hub)))
                site = Site(root)
                site.noisy = False
                site.log = lambda request: None
                self._listen("ws", self._config.websocket, site)
        except Exception:
            self._close_ports()
            raise
        super().privilegedStartService()

    def _listen(self, kind: str, description: str, factory):
        port = listen_stream(self._reactor, description, factory)
        self._ports.append((kind, port))
        log.info("links ({kind}) listening on {endpoint}", kind=kind, endpoint=describe_port(kind, port))
        return port

    def stopService(self):
        super().stopService()
        closed = self._close_ports()
        release = getattr(self.hub.router, "release_all", None)
        if release is not None:
            release()  # onion packets held for mixing leave before the links close
        drained = self.hub.close_all(ErrorCode.SHUTTING_DOWN, "the relay is shutting down")
        return gatherResults([closed, drained])

    def _close_ports(self):
        ports, self._ports = self._ports, []
        return gatherResults([maybeDeferred(port.stopListening) for _, port in ports])


