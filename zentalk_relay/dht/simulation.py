"""An in-memory network of DHT nodes on one fake clock, for tests and benchmarks.

No sockets and no reactor: :class:`EventLoop` is a heap of timed callbacks
whose clock moves only from one event to the next, and :class:`Network`
delivers every :class:`~.node.Datagram` to the node at its address after a
random latency (from the network's own seeded ``rng``), or drops it if that
node is down or the datagram is lost. Each node's timer is armed at its
``next_deadline()``, exactly as the Twisted adapter arms one ``callLater``.
The same seed replays the same run.

Nodes get distinct public IPv4 addresses and BEP 42 ids for them.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Callable

from .bep42 import node_id_for
from .krpc import Address
from .node import Datagram, DhtConfig, DhtNode, OperationDone

__all__ = ["EventLoop", "Network", "SimNode"]

# First octets of globally routable unicast IPv4 space (no 0, 10, 100, 127, 169, 172, 192, 198, 203, >= 224).
_FIRST_OCTETS = [o for o in range(1, 224) if o not in (10, 100, 127, 169, 172, 192, 198, 203)]


class EventLoop:
    """Timed callbacks in time order (ties in scheduling order)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, Callable, tuple]] = []
        self._seq = 0
        self.events_run = 0

    def call_at(self, when: float, function: Callable, *args) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (max(when, self.now), self._seq, function, args))

    def run_until(self, end: float) -> None:
        """Run every callback due before or at ``end``; the clock ends at ``end``."""
        heap = self._heap
        while heap and heap[0][0] <= end:
            when, _, function, args = heapq.heappop(heap)
            self.now = when
            self.events_run += 1
            function(*args)
        self.now = max(self.now, end)

    def run_while(self, condition: Callable[[], bool], limit: float) -> bool:
        """Run until ``condition()`` is false or the clock would pass ``limit``; False on the limit."""
        heap = self._heap
        while condition():
            if not heap or heap[0][0] > limit:
                self.now = max(self.now, limit)
                return False
            when, _, function, args = heapq.heappop(heap)
            self.now = when
            self.events_run += 1
            function(*args)
        return True


@dataclass(eq=False)
class SimNode:
    address: Address
    dht: DhtNode
    alive: bool = True
    #: The deadline the node's timer is armed for, or None.
    armed: float | None = None
    #: Finished operations by id.
    done: dict[int, OperationDone] = field(default_factory=dict)
    events: list = field(default_factory=list)


class Network:
    """Hundreds to thousands of :class:`~.node.DhtNode` sharing one :class:`EventLoop`."""

    def __init__(self, seed: int = 1, *, config: DhtConfig = DhtConfig(), latency: tuple[float, float] = (0.01, 0.1),
                 loss: float = 0.0, keep_events: bool = False) -> None:
        self.rng = random.Random(seed)
        self.loop = EventLoop()
        self.config = config
        self.latency = latency
        self.loss = loss
        self.keep_events = keep_events
        self.nodes: dict[Address, SimNode] = {}
        self._ips: set[str] = set()
        self.delivered = 0
        self.dropped = 0

    @property
    def now(self) -> float:
        return self.loop.now

    def _public_ip(self) -> str:
        while True:
            value = self.rng.getrandbits(24)
            ip = f"{self.rng.choice(_FIRST_OCTETS)}.{value >> 16}.{(value >> 8) & 0xFF}.{value & 0xFF}"
            if ip not in self._ips:
                self._ips.add(ip)
                return ip

    def add_node(self, config: DhtConfig | None = None, ip: str | None = None, port: int = 6881) -> SimNode:
        ip = ip or self._public_ip()
        node_rng = random.Random(self.rng.getrandbits(64))
        dht = DhtNode(node_id_for(ip, node_rng), now=self.now, rng=node_rng, config=config or self.config)
        node = SimNode((ip, port), dht)
        self.nodes[node.address] = node
        self._arm(node)
        return node

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive]

    def kill(self, node: SimNode) -> None:
        """The node stops answering (its state stays, as a crashed process's would on disk)."""
        node.alive = False

    # -- driving one node ---------------------------------------------------------

    def start(self, node: SimNode, operation: Callable[..., tuple[int, list[Datagram]]], *args, **kwargs) -> int:
        """Call one of ``node.dht``'s operations now (``operation`` is the bound method) and send its datagrams."""
        op, out = operation(*args, now=self.now, **kwargs)
        self._after(node, out)
        return op

    def _after(self, node: SimNode, out: list[Datagram]) -> None:
        for datagram in out:
            self._send(node.address, datagram)
        events = node.dht.take_events()
        for event in events:
            if isinstance(event, OperationDone):
                node.done[event.op] = event
        if self.keep_events:
            node.events.extend(events)
        self._arm(node)

    def _arm(self, node: SimNode) -> None:
        deadline = node.dht.next_deadline()
        if node.armed is None or deadline < node.armed:
            node.armed = deadline
            self.loop.call_at(deadline, self._fire, node, deadline)

    def _fire(self, node: SimNode, deadline: float) -> None:
        if node.armed != deadline:
            return  # superseded by an earlier deadline that already ran
        node.armed = None
        if not node.alive:
            return
        self._after(node, node.dht.tick(self.loop.now))

    def _send(self, source: Address, datagram: Datagram) -> None:
        if self.loss and self.rng.random() < self.loss:
            self.dropped += 1
            return
        low, high = self.latency
        self.loop.call_at(self.loop.now + low + (high - low) * self.rng.random(), self._deliver, source, datagram)

    def _deliver(self, source: Address, datagram: Datagram) -> None:
        node = self.nodes.get(datagram.address)
        if node is None or not node.alive:
            self.dropped += 1
            return
        self.delivered += 1
        self._after(node, node.dht.handle(datagram.data, source, self.loop.now))

    # -- whole-network helpers --------------------------------------------------------

    def wait(self, node: SimNode, op: int, limit: float = 600.0) -> OperationDone | None:
        """Run the network until ``node``'s operation ``op`` is done (or ``limit`` seconds pass)."""
        self.loop.run_while(lambda: op not in node.done, self.now + limit)
        return node.done.get(op)

    def grow(self, count: int, *, seeds: int = 3, spacing: float = 0.05, settle: float = 30.0) -> None:
        """Add ``count`` nodes, one every ``spacing`` seconds, each bootstrapping through
        ``seeds`` random nodes already there; then run ``settle`` more seconds."""
        for _ in range(count):
            joined = [n for n in self.nodes.values() if n.alive] if len(self.nodes) <= 64 else None
            node = self.add_node()
            if joined is None:
                pool = list(self.nodes.values())
                picks = [pool[self.rng.randrange(len(pool) - 1)] for _ in range(seeds)]
            else:
                picks = self.rng.sample(joined, min(seeds, len(joined)))
            addresses = [n.address for n in picks if n is not node and n.alive]
            if addresses:
                self.start(node, node.dht.bootstrap, addresses)
            self.loop.run_until(self.now + spacing)
        self.loop.run_until(self.now + settle)
