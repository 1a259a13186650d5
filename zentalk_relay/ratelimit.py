"""Token buckets, sans-IO: the caller passes the time in.

Shared by the link (per-operation limits), the NAT service and the DHT.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` events per ``period`` seconds, up to ``burst`` at once."""

    limit: int
    period: float
    burst: int


class TokenBucket:
    __slots__ = ("_rate", "_capacity", "_tokens", "_stamp")

    def __init__(self, rate: Rate, now: float) -> None:
        self._rate = rate.limit / rate.period
        self._capacity = float(rate.burst)
        self._tokens = float(rate.burst)
        self._stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are enough; False means refuse."""
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
            self._stamp = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def retry_after(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens will be there."""
        self.take(now, 0.0)
        missing = cost - self._tokens
        return 0.0 if missing <= 0 else missing / self._rate
