"""Opening listening sockets with errors an operator can act on.

UDP sockets are made here and handed to the reactor with
``adoptDatagramPort`` so that IPv6 sockets can be IPv6-only (an IPv4 and an
IPv6 socket on the same port then coexist) and kernel buffers can be sized
before the first burst. Stream listeners are Twisted endpoint strings.
A socket that cannot be opened raises :class:`ListenError` naming the
endpoint, which stops start-up.
"""

from __future__ import annotations

import socket
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.endpoints import serverFromString
from twisted.python.failure import Failure

from .config import parse_host_port

#: Largest datagram the reactor will read: a full UDP payload.
MAX_DATAGRAM = 65535


class ListenError(Exception):
    """A listener could not be opened; the message names the endpoint."""


def describe_port(kind: str, port: IListeningPort) -> str:
    """``udp:127.0.0.1:3478`` / ``tcp:[::1]:9464`` for logs, /status and tests."""
    address = port.getHost()
    if not hasattr(address, "host"):  # a UNIX socket
        name = address.name.decode() if isinstance(address.name, bytes) else address.name
        return f"unix:{name}"
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"{kind}:{host}:{address.port}"


def bind_udp(host: str, port: int, buffer_size: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``host:port`` (IPv6-only for an IPv6 host); raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, buffer_size)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def adopt_udp(reactor, sock: socket.socket, protocol) -> IListeningPort:
    """Hand a bound socket to the reactor for reading; the caller keeps ``sock`` to send with.

    The reactor reads from its own duplicate of the descriptor; writing
    through ``sock.sendto`` skips the address checks of ``transport.write``
    on paths that send a datagram for every one they receive.
    """
    return reactor.adoptDatagramPort(sock.fileno(), sock.family, protocol, maxPacketSize=MAX_DATAGRAM)


def open_udp(reactor, address: str, protocol, buffer_size: int) -> tuple[IListeningPort, socket.socket]:
    """:func:`listen_udp` that also returns the socket, for an adapter that sends through it."""
    host, port = parse_host_port(address)
    try:
        sock = bind_udp(host, port, buffer_size)
    except OSError as error:
        raise ListenError(f"cannot listen on udp {address}: {error.strerror}") from None
    try:
        return adopt_udp(reactor, sock, protocol), sock
    except OSError as error:
        sock.close()
        raise ListenError(f"cannot listen on udp {address}: {error.strerror}") from None


def listen_udp(reactor, address: str, protocol, buffer_size: int) -> IListeningPort:
    port, sock = open_udp(reactor, address, protocol, buffer_size)
    sock.close()  # the reactor holds its own duplicate of the descriptor
    return port


def listen_stream(reactor, description: str, factory) -> IListeningPort:
    """Listen on a Twisted endpoint string; the endpoint must answer at once.

    TCP, UNIX and TLS endpoints succeed or fail synchronously, which lets a
    bad endpoint stop start-up before the reactor runs.
    """
    try:
        endpoint = serverFromString(reactor, description)
    except Exception as error:  # endpoint parsers raise several types
        raise ListenError(f"cannot listen on {description}: {error}") from None
    outcome: list = []
    deferred: Deferred = endpoint.listen(factory)
    deferred.addBoth(outcome.append)
    if not outcome:
        deferred.cancel()
        raise ListenError(f"cannot listen on {description}: the endpoint did not answer at once")
    result = outcome[0]
    if isinstance(result, Failure):
        raise ListenError(f"cannot listen on {description}: {result.getErrorMessage()}")
    return result


class ReloadableTLS:
    """A server TLS context read from PEM files, read again by :meth:`reload` (SIGHUP).

    Twisted asks a context factory for its context at every new connection,
    so a renewed certificate serves new connections at once while existing
    ones keep theirs. ``options(key, certificates)`` makes the
    ``CertificateOptions`` (TLS versions, ALPN) from the loaded objects.
    """

    def __init__(self, certificate_path: str, key_path: str, options: Callable, what: str = "TLS") -> None:
        self._certificate_path = certificate_path
        self._key_path = key_path
        self._options = options
        self._what = what
        self._current = self._load()

    def _load(self):
        from OpenSSL import crypto

        try:
            with open(self._certificate_path, "rb") as handle:
                chain = handle.read()
            with open(self._key_path, "rb") as handle:
                key = crypto.load_privatekey(crypto.FILETYPE_PEM, handle.read())
            marker = b"-----END CERTIFICATE-----"
            certificates = [crypto.load_certificate(crypto.FILETYPE_PEM, part + marker)
                            for part in chain.split(marker) if b"-----BEGIN CERTIFICATE-----" in part]
        except (OSError, crypto.Error) as error:
            raise ListenError(f"cannot load the {self._what} certificate or key: {error}") from None
        if not certificates:
            raise ListenError(f"no certificate in {self._certificate_path}")
        options = self._options(key, certificates)
        options.getContext()  # fails now, not at the first connection, if key and certificate disagree
        return options

    def reload(self, certificate_path: str | None = None, key_path: str | None = None) -> None:
        """Read the files (new paths if given); the old context stays if they do not load (ListenError)."""
        old = (self._certificate_path, self._key_path)
        self._certificate_path = certificate_path or self._certificate_path
        self._key_path = key_path or self._key_path
        try:
            self._current = self._load()
        except Exception:
            self._certificate_path, self._key_path = old
            raise

    def getContext(self):
        return self._current.getContext()
