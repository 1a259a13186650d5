"""Mixing delay: each onion packet waits an exponentially distributed time before it moves on.

An observer who sees packets enter and leave a relay learns from their order
and timing which output is which input. Holding each packet for an
independent ``Exp(mean)`` delay (the continuous-time mix of Stop-and-Go
mixes and Loopix) makes the output order a random permutation of the input
order for packets closer together than a few means, and, because the
exponential distribution is memoryless, a packet that has waited tells an
observer nothing about how much longer it will wait.

Sans-IO: the caller pushes packets with the current time, asks for those
due at a time, and arms one timer at :meth:`Mixer.next_deadline`.
"""

from __future__ import annotations

import heapq
import random
from typing import Any

__all__ = ["Mixer"]


class Mixer:
    """A bounded pool of held items, each released at its own random deadline.

    ``capacity`` bounds memory: a push into a full pool releases the item
    whose deadline is nearest at once (it leaves a little early rather than
    being dropped).
    """

    def __init__(self, mean: float, rng: random.Random, capacity: int = 10000) -> None:
        if mean <= 0:
            raise ValueError("a mixer needs a positive mean delay; 0 means no mixer")
        self.mean = mean
        self.capacity = capacity
        self._rate = 1.0 / mean
        self._rng = rng
        self._heap: list[tuple[float, int, float, Any]] = []
        self._count = 0
        self.released_early = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, item: Any, now: float) -> list[tuple[Any, float]]:
        """Hold ``item``; returns what must leave at once (a full pool) as (item, held seconds)."""
        deadline = now + self._rng.expovariate(self._rate)
        self._count += 1
        heapq.heappush(self._heap, (deadline, self._count, now, item))
        if len(self._heap) <= self.capacity:
            return []
        _, _, since, early = heapq.heappop(self._heap)
        self.released_early += 1
        return [(early, now - since)]

    def due(self, now: float) -> list[tuple[Any, float]]:
        """Items whose deadline has come, in deadline order, with the time each was held."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, since, item = heapq.heappop(heap)
            out.append((item, now - since))
        return out

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def drain(self) -> list[Any]:
        """Everything held, in deadline order (a stopping relay sends rather than loses)."""
        items = [entry[3] for entry in sorted(self._heap)]
        self._heap = []
        return items
