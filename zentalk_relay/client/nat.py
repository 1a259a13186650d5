"""NAT type detection for clients (RFC 5780), against any STUN server that supports it."""

from __future__ import annotations

import random
import socket

from ..nat.nat_type import NatBehaviour, NatTypeProbe
from ..nat.protocol import ProbeProtocol


def local_address_towards(server: tuple[str, int]) -> str:
    """The local address the kernel would use towards ``server``; nothing is sent."""
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as route:
        route.connect(server)
        return route.getsockname()[0]


async def discover(reactor, server: tuple[str, int], rto: float = 0.5,
                   interface: str | None = None) -> tuple[NatBehaviour, tuple[str, int]]:
    """Run the RFC 5780 tests from one UDP socket; (the behaviour found, the local address used)."""
    host = interface or local_address_towards(server)
    probe = NatTypeProbe(server, random.SystemRandom(), rto=rto)
    protocol = ProbeProtocol(reactor, probe)
    port = reactor.listenUDP(0, protocol, interface=host)
    local = (host, port.getHost().port)
    probe.local = local
    try:
        result = await protocol.done
    finally:
        await port.stopListening()
    return result, local
