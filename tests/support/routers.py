"""A router for hub tests: delivery to connected links only, no mailbox."""

from __future__ import annotations

from zentalk_relay.link.frames import Deliver, ErrorCode, FlowReason, Receipt, ReceiptStatus, Send


class DirectRouter:
    """SEND goes to the recipient's link or is refused; enough to exercise the hub and the adapters."""

    def __init__(self, hub) -> None:
        self.hub = hub

    def authenticated(self, adapter, event) -> None:
        pass

    def link_lost(self, adapter) -> None:
        pass

    def handle(self, sender, frame) -> None:
        if type(frame) is not Send:
            return
        links = self.hub.by_peer.get(frame.recipient)
        if not links:
            sender.send(Receipt(frame.message_id, ReceiptStatus.REFUSED, ErrorCode.UNKNOWN_RECIPIENT))
            return
        if links[-1].send(Deliver(frame.message_id, frame.body)):
            sender.send(Receipt(frame.message_id, ReceiptStatus.DELIVERED))
            return
        sender.send(Receipt(frame.message_id, ReceiptStatus.REFUSED, ErrorCode.RECIPIENT_BUSY))
        sender.throttle(self.hub.settings.window_min, FlowReason.BUFFER_FULL, 250)
