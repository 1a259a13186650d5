"""The Twisted adapter of one :class:`~.node.DhtNode`: a UDP socket, one timer, Deferreds.

Everything the DHT decides happens in the sans-IO node; this module only
moves datagrams, keeps the single ``callLater`` at the node's next deadline,
and turns the owner's operations into Deferreds that fire with their
:class:`~.node.OperationDone` (or :class:`~.node.Pinged`). Every operation
ends, because every query times out, so no Deferred waits forever.

:func:`find_relays` is the discovery walk relays and clients share:
``get_peers`` on the relays' info-hash, a ``zr`` ping to each address for
the relay's key, then the record at that key's target, verified.
"""

from __future__ import annotations

import random
from typing import Callable

from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.error import InvalidAddressError
from twisted.internet.protocol import DatagramProtocol

from ..logs import logger
from .items import Item
from .krpc import Address
from .node import Datagram, DhtNode, OperationDone, Pinged
from .records import RECORD_SALT, RELAYS_INFO_HASH, RecordError, RelayRecord, record_target

log = logger(__name__)

__all__ = ["DhtProtocol", "find_relays"]


class DhtProtocol(DatagramProtocol):
    """One node on one socket. ``on_event`` gets the node's other events (stores, address changes)."""

    noisy = False

    def __init__(self, reactor, node: DhtNode, on_event: Callable[[object], None] = lambda event: None,
                 on_operation: Callable[[OperationDone], None] = lambda done: None) -> None:
        self.reactor = reactor
        self.node = node
        self.on_event = on_event
        self.on_operation = on_operation
        self.send_errors = 0
        self._timer = None
        self._waiting: dict[int, Deferred] = {}

    # -- the socket and the timer -------------------------------------------------------

    def startProtocol(self) -> None:
        self._rearm()

    def stopProtocol(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiting, self._waiting = self._waiting, {}
        for deferred in waiting.values():  # no Deferred waits forever: the socket is gone
            deferred.errback(ConnectionDone("the DHT socket was closed"))

    def datagramReceived(self, data: bytes, source) -> None:
        self._send(self.node.handle(data, source, self.reactor.seconds()))
        self._after()

    def _tick(self) -> None:
        self._timer = None
        self._send(self.node.tick(self.reactor.seconds()))
        self._after()

    def _send(self, datagrams: list[Datagram]) -> None:
        if self.transport is None:
            return
        for datagram in datagrams:
            try:
                self.transport.write(datagram.data, datagram.address)
            except (OSError, InvalidAddressError):
                # an unreachable network, a refused destination or (InvalidAddressError, raised by the
                # port itself) an address of the other family: the query times out like a lost one
                self.send_errors += 1

    def _after(self) -> None:
        for event in self.node.take_events():
            if isinstance(event, (OperationDone, Pinged)):
                if isinstance(event, OperationDone):
                    self.on_operation(event)
                waiting = self._waiting.pop(event.op, None)
                if waiting is not None:
                    waiting.callback(event)
            else:
                self.on_event(event)
        self._rearm()

    def _rearm(self) -> None:
        if self.transport is None:
            return
        delay = max(0.0, self.node.next_deadline() - self.reactor.seconds())
        if self._timer is not None and self._timer.active():
            if abs(self._timer.getTime() - (self.reactor.seconds() + delay)) < 0.001:
                return
            self._timer.cancel()
        self._timer = self.reactor.callLater(delay, self._tick)

    def replace_node(self, node: DhtNode) -> None:
        """Serve a new node (a new BEP 42 id) on this socket; pending operations of the old one are failed."""
        waiting, self._waiting = self._waiting, {}
        self.node = node
        for deferred in waiting.values():
            deferred.errback(RuntimeError("the DHT node was replaced"))
        self._rearm()

    # -- the owner's operations ------------------------------------------------------------

    def _run(self, started: tuple[int, list[Datagram]]) -> Deferred:
        op, datagrams = started
        if self.transport is None:
            return fail(ConnectionDone("the DHT socket is closed"))
        waiting = self._waiting[op] = Deferred()
        self._send(datagrams)
        self._after()
        return waiting

    def bootstrap(self, addresses: list[Address]) -> Deferred:
        return self._run(self.node.bootstrap(addresses, self.reactor.seconds()))

    def find_node(self, target: bytes) -> Deferred:
        return self._run(self.node.find_node(target, self.reactor.seconds()))

    def get_peers(self, info_hash: bytes) -> Deferred:
        return self._run(self.node.get_peers(info_hash, self.reactor.seconds()))

    def announce(self, info_hash: bytes, port: int | None = None, seed: bool = False) -> Deferred:
        return self._run(self.node.announce(info_hash, self.reactor.seconds(), port, seed))

    def get(self, target: bytes, salt: bytes = b"", seq: int | None = None) -> Deferred:
        return self._run(self.node.get(target, self.reactor.seconds(), salt, seq))

    def put(self, item: Item, cas: int | None = None) -> Deferred:
        return self._run(self.node.put(item, self.reactor.seconds(), cas))

    def ping(self, address: Address, want_relay: bool = False) -> Deferred:
        return self._run(self.node.ping(address, self.reactor.seconds(), want_relay))


async def fetch_record(dht: DhtProtocol, key: bytes) -> RelayRecord | None:
    """The relay record of ``key`` found in the DHT and verified; None if none verifies."""
    done = await dht.get(record_target(key), RECORD_SALT)
    item = done.result.item
    if item is None:
        return None
    try:
        return RelayRecord.from_item(item, key)
    except RecordError as error:
        log.debug("record of {key} refused: {error}", key=key.hex()[:16], error=str(error))
        return None


async def find_relays(dht: DhtProtocol, *, limit: int = 32, known: dict[Address, bytes] | None = None,
                      skip: Callable[[bytes], bool] = lambda key: False,
                      rng: random.Random | None = None) -> list[RelayRecord]:
    """Relays announced on :data:`RELAYS_INFO_HASH`, each record verified.

    ``known`` maps addresses to keys already learned (and is updated), so a
    repeated walk pings only new addresses; ``skip(key)`` leaves out relays
    whose record the caller does not need again. At most ``limit`` records
    are fetched per call, chosen at random among the addresses found, so a
    flood of announced addresses cannot make one walk long.
    """
    known = {} if known is None else known
    done = await dht.get_peers(RELAYS_INFO_HASH)
    # Announced addresses come from other nodes: only those this node's socket can reach are pinged.
    family = dht.node.config.family
    peers = [address for address in dict.fromkeys(done.result.peers)
             if address[1] and (":" in address[0]) == (family == 6)]
    (rng or random.SystemRandom()).shuffle(peers)
    unknown = [address for address in peers if address not in known][: limit * 2]
    pings = await DeferredList([dht.ping(address, want_relay=True) for address in unknown], consumeErrors=True)
    for success, pinged in pings:
        if success and pinged.response is not None and pinged.response.relay_key is not None:
            known[pinged.address] = pinged.response.relay_key
    keys = list(dict.fromkeys(known[address] for address in peers if address in known))
    keys = [key for key in keys if not skip(key)][:limit]
    fetched = await DeferredList([Deferred.fromCoroutine(fetch_record(dht, key)) for key in keys],
                                 consumeErrors=True)
    return [record for success, record in fetched if success and record is not None]
