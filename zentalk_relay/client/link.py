"""A client's link to a relay over TCP (Noise), TLS 1.3 or WebSocket.

``await connect(reactor, bootstrap, signing_key)`` returns a
:class:`ClientLink` once both sides are authenticated: the relay has proved
the node id pinned by the bootstrap string, and the client has proved its
own. The same sans-IO connection and adapters serve the relay's side.
"""

from __future__ import annotations

import hashlib
import os
from typing import Literal

from nacl.signing import SigningKey
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol, wrapClientTLS

from ..bootstrap import Bootstrap
from ..link.frames import Deliver, Error, ErrorCode, Receipt, Role, Send
from ..link.protocol import ALPN, LinkAdapter, StreamLinkProtocol, WebSocketLinkProtocol
from ..link.session import Authenticated, Carrier, LinkConnection, LinkSettings

CONNECT_TIMEOUT = 5.0


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
        self.closed: Deferred = Deferred()
        self.errors: list[Error] = []
        self._receipts: dict[bytes, Deferred] = {}
        self._inbox: DeferredQueue = DeferredQueue()

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

    def close(self) -> Deferred:
        if self.adapter is not None:
            self.adapter.close(ErrorCode.NORMAL, "client closing")
        return self.closed

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
            self._inbox.put(frame)
        elif kind is Receipt:
            waiting = self._receipts.pop(frame.message_id, None)
            if waiting is not None:
                waiting.callback(frame)
        elif kind is Error:
            self.errors.append(frame)

    def credit_available(self, adapter: LinkAdapter) -> None:
        adapter.flush()

    def rtt_measured(self, adapter: LinkAdapter, seconds: float) -> None:
        pass

    def link_lost(self, adapter: LinkAdapter) -> None:
        pass

    def link_closed(self, adapter: LinkAdapter, code: ErrorCode, reason: str, by_peer: bool) -> None:
        failure = LinkClosed(code, reason, by_peer)
        receipts, self._receipts = self._receipts, {}
        for waiting in receipts.values():
            waiting.errback(failure)
        if not self.authenticated.called:
            self.authenticated.errback(failure)
        if not self.closed.called:
            self.closed.callback(failure)


def _connection_maker(bootstrap: Bootstrap, signing_key: SigningKey, carrier: Carrier, role: Role,
                      settings: LinkSettings):
    def make(now: float) -> LinkConnection:
        return LinkConnection(
            initiator=True, role=role, signing_key=signing_key, carrier=carrier, settings=settings, now=now,
            remote_static=bootstrap.link_public,
            expected_peer_id=hashlib.sha256(bootstrap.ed25519_public).digest(),
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
) -> ClientLink:
    """Open and authenticate a link; raises :class:`LinkClosed` if the relay refuses."""
    settings = settings or LinkSettings()
    host, port = address or (bootstrap.addresses[0] if bootstrap.addresses else (None, None))
    if host is None:
        raise ValueError("the bootstrap string names no address; pass address=")
    client = ClientLink(reactor)
    carrier = {"tcp": Carrier.NOISE_STREAM, "tls": Carrier.TLS_STREAM, "ws": Carrier.NOISE_MESSAGES}[transport]
    make = _connection_maker(bootstrap, signing_key, carrier, role, settings)
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
        endpoint = tcp_class(reactor, host, port, timeout=CONNECT_TIMEOUT)
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
