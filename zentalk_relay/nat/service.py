"""The NAT service's lifecycle: STUN and TURN listeners, relayed sockets, RFC 5780 sockets.

Built by :func:`build_nat_service` from the ``[stun]`` and ``[turn]``
sections. Every listener is bound in ``privilegedStartService`` (before
twistd sheds privileges, so ports below 1024 need no capability later); a
listener that cannot be opened stops start-up with the endpoint named.
Relayed sockets are opened on demand by :class:`~.protocol.NatHub` and all
closed on stop.
"""

from __future__ import annotations

import ipaddress
import os
import random

from twisted.application.service import Service
from twisted.internet.defer import gatherResults, maybeDeferred

from ..config import StunConfig, TurnConfig, parse_host_port
from ..listen import ListenError, ReloadableTLS, adopt_udp, bind_udp, describe_port, listen_stream, listen_udp
from ..logs import logger
from ..ratelimit import Rate
from .binding import BehaviourResponder, BindingResponder, BindingStats
from .credentials import Credentials, CredentialsError, NonceIssuer, load_secrets, load_users
from .policy import PeerPolicy
from .protocol import (
    BehaviourDatagramProtocol,
    NatDatagramProtocol,
    NatHub,
    NatStreamFactory,
    StunDatagramProtocol,
    UdpListener,
)
from .turn import CHANNEL_MAX, CHANNEL_MAX_RFC5766, RelayAddress, TurnServer, TurnSettings, TurnStats

log = logger(__name__)

_WILDCARDS = ("0.0.0.0", "::")


class NatConfigError(Exception):
    """The NAT configuration cannot work; the message says which setting to change."""


def relay_addresses(turn: TurnConfig, stun: StunConfig) -> dict[int, RelayAddress]:
    """Where relayed sockets bind, per family: ``turn.relay_addresses``, else the specific ``stun.udp`` hosts."""
    relays: dict[int, RelayAddress] = {}
    if turn.relay_addresses:
        for entry in turn.relay_addresses:
            advertised, _, bind = entry.partition("/")
            bind = bind or advertised
            family = ipaddress.ip_address(bind).version
            relays.setdefault(family, RelayAddress(bind, advertised))
        return relays
    for address in stun.udp:
        host, _ = parse_host_port(address)
        if host not in _WILDCARDS:
            relays.setdefault(ipaddress.ip_address(host).version, RelayAddress(host, host))
    return relays


def build_turn(stun: StunConfig, turn: TurnConfig, stats: TurnStats) -> TurnServer:
    """The TURN server the configuration describes; reads the credential files."""
    users = load_users(turn.users_file) if turn.users_file else {}
    secrets = load_secrets(turn.secret_file) if turn.secret_file else ()
    if not users and not secrets:
        raise NatConfigError("turn.enabled needs turn.users_file or turn.secret_file (nobody could log in)")
    relays = relay_addresses(turn, stun)
    if not relays:
        raise NatConfigError("turn.relay_addresses is needed: every stun.udp address is a wildcard, "
                              "so the address to relay from is unknown")
    settings = TurnSettings(
        realm=turn.realm,
        software=stun.software,
        default_lifetime=turn.default_lifetime,
        max_lifetime=turn.max_lifetime,
        allocations_per_user=turn.allocations_per_user,
        max_allocations=turn.max_allocations,
        allocation_bandwidth=turn.allocation_bandwidth // 8,
        total_bandwidth=turn.total_bandwidth // 8,
        port_min=turn.port_min,
        port_max=turn.port_max,
        relays=relays,
        challenge_rate=Rate(turn.challenges_per_second, 1.0, turn.challenge_burst),
        channel_max=CHANNEL_MAX_RFC5766 if turn.rfc5766_channels else CHANNEL_MAX,
    )
    own = {relay.bind for relay in relays.values()} | {relay.advertised for relay in relays.values()}
    own |= {parse_host_port(address)[0] for address in stun.udp} - set(_WILDCARDS)
    policy = PeerPolicy(allowed=turn.allowed_peer_ranges, denied=turn.denied_peer_ranges, own_addresses=own,
                        own_ports=[parse_host_port(address)[1] for address in stun.udp],
                        own_port_range=(turn.port_min, turn.port_max))
    server = TurnServer(settings, Credentials(turn.realm, users, secrets),
                        NonceIssuer(os.urandom(32), turn.nonce_lifetime), policy, random.SystemRandom(), stats)
    server.alternate = parse_host_port(turn.alternate_server) if turn.alternate_server else None
    return server


def load_credentials(turn: TurnConfig) -> Credentials:
    """The credential files read again (SIGHUP); raises CredentialsError or NatConfigError."""
    users = load_users(turn.users_file) if turn.users_file else {}
    secrets = load_secrets(turn.secret_file) if turn.secret_file else ()
    if not users and not secrets:
        raise NatConfigError("turn.users_file and turn.secret_file name no credentials")
    return Credentials(turn.realm, users, secrets)


def _tls_context(config: StunConfig) -> ReloadableTLS:
    """TLS 1.2 or 1.3 (WebRTC's TURN clients speak both; RFC 8656 asks for 1.2+); read again on reload."""
    from twisted.internet.ssl import CertificateOptions, TLSVersion

    def options(key, certificates):
        made = CertificateOptions(privateKey=key, certificate=certificates[0], extraCertChain=certificates[1:],
                                  raiseMinimumTo=TLSVersion.TLSv1_2)
        # ALPN: RFC 7443's ids when offered (coturn's client offers "stun.turn"),
        # and no ALPN at all, rather than a failed handshake, for any other offer.
        made.getContext().set_alpn_select_callback(_select_alpn)
        return made

    return ReloadableTLS(config.tls_certificate, config.tls_private_key, options, "STUN/TURN TLS")


def _select_alpn(connection, offered: list[bytes]):
    from OpenSSL.SSL import NO_OVERLAPPING_PROTOCOLS

    for name in (b"stun.turn", b"stun.nat-discovery"):
        if name in offered:
            return name
    return NO_OVERLAPPING_PROTOCOLS


class NatService(Service):
    """STUN Binding, and TURN when configured, over UDP, TCP and TLS."""

    def __init__(self, reactor, config: StunConfig, stats: BindingStats, turn: TurnServer | None = None) -> None:
        self._reactor = reactor
        self._config = config
        self.responder = BindingResponder(config.software, stats)
        self._binding_stats = stats
        self.turn = turn
        self.hub = NatHub(reactor, turn, config.socket_buffer) if turn is not None else None
        self._ports: list[tuple[str, object]] = []
        self._sockets: list = []
        self.tls: ReloadableTLS | None = None

    @property
    def endpoints(self) -> list[str]:
        return [describe_port(kind, port) for kind, port in self._ports]

    def privilegedStartService(self) -> None:
        # Bind here, before twistd sheds privileges, so port 3478 needs no
        # capability afterwards; a failure stops start-up.
        try:
            primaries = self._listen_udp()
            if self._config.alternate_addresses:
                self._listen_behaviour(primaries)
            for description in self._config.tcp:
                self._listen_stream("tcp", description, NatStreamFactory(self.responder, self.hub, "tcp"))
            if self._config.tls:
                if not (self._config.tls_certificate and self._config.tls_private_key):
                    raise ListenError("stun.tls needs stun.tls_certificate and stun.tls_private_key")
                from twisted.protocols.tls import TLSMemoryBIOFactory

                self.tls = _tls_context(self._config)
                factory = TLSMemoryBIOFactory(self.tls, False, NatStreamFactory(self.responder, self.hub, "tls"))
                self._listen_stream("tls", self._config.tls, factory)
        except Exception:
            self._close()
            raise
        if self.turn is not None:
            for _, port in self._ports:
                address = port.getHost()
                if getattr(address, "host", "") not in ("", *_WILDCARDS):
                    self.turn.policy.add_own(address.host, address.port)
            settings = self.turn.settings
            log.info("TURN on for realm {realm}: relayed ports {low}-{high} on {relays}", realm=settings.realm,
                     low=settings.port_min, high=settings.port_max,
                     relays=", ".join(relay.advertised if relay.advertised == relay.bind
                                      else f"{relay.advertised} (bound to {relay.bind})"
                                      for relay in settings.relays.values()))
        super().privilegedStartService()

    def _log(self, kind: str, port) -> None:
        what = "STUN/TURN" if self.turn is not None else "STUN"
        log.info("{what} listening on {endpoint}", what=what, endpoint=describe_port(kind, port))

    def _listen_udp(self) -> dict[int, tuple]:
        """The ``stun.udp`` listeners; returns, per family, the first specific one (RFC 5780's primary)."""
        primaries: dict[int, tuple] = {}
        alternates = {ipaddress.ip_address(a).version for a in self._config.alternate_addresses}
        for address in self._config.udp:
            host, _ = parse_host_port(address)
            family = ipaddress.ip_address(host).version
            if family in alternates and family not in primaries and host not in _WILDCARDS:
                primaries[family] = (address, None)  # bound by _listen_behaviour with its three partners
                continue
            if self.hub is not None:
                protocol = NatDatagramProtocol(self.responder, self.hub)
                try:
                    sock = bind_udp(host, parse_host_port(address)[1], self._config.socket_buffer)
                except OSError as error:
                    raise ListenError(f"cannot listen on udp {address}: {error.strerror}") from None
                port = UdpListener(self._reactor, sock, protocol.datagramReceived)
                port.startListening()
                local = port.getHost()
                protocol.bind((local.host, local.port), sock.sendto)
            else:
                port = listen_udp(self._reactor, address, StunDatagramProtocol(self.responder),
                                  self._config.socket_buffer)
            self._ports.append(("udp", port))
            self._log("udp", port)
        for family in alternates - set(primaries):
            raise ListenError(f"stun.alternate_addresses has an IPv{family} address but no specific IPv{family} "
                              "stun.udp address to pair it with")
        return primaries

    def _listen_behaviour(self, primaries: dict[int, tuple]) -> None:
        """RFC 5780: A:P1 (the primary), A:P2, B:P1, B:P2 per family with an alternate address."""
        for alternate in self._config.alternate_addresses:
            family = ipaddress.ip_address(alternate).version
            primary_address, _ = primaries[family]
            host_a, port_1 = parse_host_port(primary_address)
            buffer = self._config.socket_buffer
            sockets = []
            try:
                primary = bind_udp(host_a, port_1, buffer)
                sockets.append(primary)
                port_1 = primary.getsockname()[1]
                second = bind_udp(host_a, self._config.alternate_port, buffer)
                sockets.append(second)
                port_2 = second.getsockname()[1]
                sockets.append(bind_udp(alternate, port_1, buffer))
                sockets.append(bind_udp(alternate, port_2, buffer))
            except OSError as error:
                for sock in sockets:
                    sock.close()
                raise ListenError(f"cannot listen on the RFC 5780 addresses {host_a} and {alternate}: "
                                  f"{error.strerror}") from None
            self._sockets.extend(sockets)
            addresses = [(host_a, port_1), (host_a, port_2), (alternate, port_1), (alternate, port_2)]
            responder = BehaviourResponder(self._config.software, self._binding_stats, addresses)
            senders = [sock.sendto for sock in sockets]
            turn_protocol = None
            if self.hub is not None:
                turn_protocol = NatDatagramProtocol(self.responder, self.hub)
                turn_protocol.bind(addresses[0], senders[0])
            for role, sock in enumerate(sockets):
                protocol = BehaviourDatagramProtocol(responder, role, senders, turn_protocol if role == 0 else None)
                port = adopt_udp(self._reactor, sock, protocol)
                self._ports.append(("udp", port))
                self._log("udp", port)

    def _listen_stream(self, kind: str, description: str, factory) -> None:
        port = listen_stream(self._reactor, description, factory)
        self._ports.append((kind, port))
        self._log(kind, port)

    def stopService(self):
        super().stopService()
        return self._close()

    def _close(self):
        if self.hub is not None:
            self.hub.stop()
        ports, self._ports = self._ports, []
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()
        return gatherResults([maybeDeferred(port.stopListening) for _, port in ports])


def build_nat_service(reactor, stun: StunConfig, turn: TurnConfig, binding_stats: BindingStats,
                      turn_stats: TurnStats) -> NatService:
    """The NAT service; raises :class:`NatConfigError` or CredentialsError when TURN cannot work."""
    server = build_turn(stun, turn, turn_stats) if turn.enabled else None
    return NatService(reactor, stun, binding_stats, server)


__all__ = ["CredentialsError", "NatConfigError", "NatService", "build_nat_service", "build_turn", "relay_addresses"]
