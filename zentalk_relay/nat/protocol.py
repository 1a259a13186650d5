"""The UDP adapter: datagrams to the Binding responder and its answers back."""

from __future__ import annotations

from twisted.internet.protocol import DatagramProtocol

from .binding import BindingResponder


class StunDatagramProtocol(DatagramProtocol):
    noisy = False

    def __init__(self, responder: BindingResponder) -> None:
        self._respond = responder.respond

    def datagramReceived(self, data: bytes, addr) -> None:
        reply = self._respond(data, addr)
        if reply is not None:
            self.transport.write(reply, addr)
