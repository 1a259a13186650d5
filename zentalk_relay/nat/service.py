"""The NAT service's lifecycle: bind the STUN sockets, close them on stop."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import gatherResults, maybeDeferred

from ..config import StunConfig
from ..listen import describe_port, listen_udp
from ..logs import logger
from .binding import BindingResponder, BindingStats
from .protocol import StunDatagramProtocol

log = logger(__name__)


class NatService(Service):
    """STUN Binding over UDP on every configured address."""

    def __init__(self, reactor, config: StunConfig, stats: BindingStats) -> None:
        self._reactor = reactor
        self._config = config
        self.responder = BindingResponder(config.software, stats)
        self._ports: list = []

    @property
    def endpoints(self) -> list[str]:
        return [describe_port("udp", port) for port in self._ports]

    def privilegedStartService(self) -> None:
        # Bind here, before twistd sheds privileges, so port 3478 needs no
        # capability afterwards; a failure stops start-up.
        try:
            for address in self._config.udp:
                port = listen_udp(
                    self._reactor, address, StunDatagramProtocol(self.responder), self._config.socket_buffer
                )
                self._ports.append(port)
                log.info("STUN listening on {endpoint}", endpoint=describe_port("udp", port))
        except Exception:
            self._close()
            raise
        super().privilegedStartService()

    def stopService(self):
        super().stopService()
        return self._close()

    def _close(self):
        ports, self._ports = self._ports, []
        return gatherResults([maybeDeferred(port.stopListening) for port in ports])
