"""The client's side of hole punching: probe at the agreed moment, or fall back to the relay."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall

from .link import ClientLink

PROBE = b"zentalk-punch-1"
PROBE_INTERVAL = 0.1


class _Prober(DatagramProtocol):
    noisy = False

    def __init__(self) -> None:
        self.reached: Deferred = Deferred()
        self.target: tuple[str, int] | None = None

    def datagramReceived(self, data: bytes, addr) -> None:
        if data.startswith(PROBE) and not self.reached.called:
            if self.target is not None:
                self.transport.write(PROBE, addr)  # make sure the peer hears us too
            self.reached.callback((addr[0], addr[1]))

    def probe(self) -> None:
        if self.target is not None:
            self.transport.write(PROBE, self.target)


async def punch(reactor, link: ClientLink, peer: bytes, interface: str = "0.0.0.0",
                timeout: float = 3.0) -> tuple[object, tuple[str, int]] | None:
    """Try a direct UDP path to ``peer`` through the relay's coordination.

    Returns (the listening UDP port, the peer's address) when a probe came
    back within ``timeout`` after the agreed start, else None: keep relaying.
    """
    prober = _Prober()
    port = reactor.listenUDP(0, prober, interface=interface)
    local = port.getHost()
    order = await link.punch(peer, (local.host, local.port) if local.host != "0.0.0.0" else None)
    prober.target = (order.host, order.port)
    sender = LoopingCall(prober.probe)
    sender.clock = reactor
    starter = reactor.callLater(order.start_in_ms / 1000, sender.start, PROBE_INTERVAL)
    giving_up = reactor.callLater(order.start_in_ms / 1000 + timeout, lambda: prober.reached.called or
                                  prober.reached.callback(None))
    try:
        reached = await prober.reached
    finally:
        for call in (starter, giving_up):
            if call.active():
                call.cancel()
        if sender.running:
            sender.stop()
    if reached is None:
        await port.stopListening()
        return None
    return port, reached
