"""Write tokens (BEP 5): proof that a querier can receive at the IP it claims.

``get_peers`` and BEP 44 ``get`` answers carry a token; ``announce_peer`` and
``put`` must bring one back. A token is ``HMAC-SHA256(secret, IP)[:8]``
(the IP in its 4- or 16-byte packed form; not the port, which a NAT may
change). The secret is drawn from the ``rng`` the caller passes (give it
``random.SystemRandom()``) and rotates every :data:`ROTATION` seconds; a
token made with the previous secret is still accepted, so a token is good
for 5 to 10 minutes. Time is passed in; rotation happens lazily.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import socket

__all__ = ["ROTATION", "TOKEN_SIZE", "TokenSecrets"]

#: Seconds between secret rotations.
ROTATION = 300.0
TOKEN_SIZE = 8
SECRET_SIZE = 32


def _packed(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)


class TokenSecrets:
    __slots__ = ("_rng", "_rotation", "_current", "_previous", "_rotated_at")

    def __init__(self, rng: random.Random, now: float, rotation: float = ROTATION) -> None:
        self._rng = rng
        self._rotation = rotation
        self._current = rng.randbytes(SECRET_SIZE)
        self._previous = rng.randbytes(SECRET_SIZE)
        self._rotated_at = now

    @property
    def next_rotation(self) -> float:
        return self._rotated_at + self._rotation

    def _rotate(self, now: float) -> None:
        periods = int((now - self._rotated_at) // self._rotation)
        if periods <= 0:
            return
        if periods >= 2:
            # Both secrets are older than a token may live.
            self._previous = self._rng.randbytes(SECRET_SIZE)
        else:
            self._previous = self._current
        self._current = self._rng.randbytes(SECRET_SIZE)
        # Anchored to the schedule, so a token lives at most two periods.
        self._rotated_at += periods * self._rotation

    @staticmethod
    def _token(secret: bytes, ip: str) -> bytes:
        return hmac.new(secret, _packed(ip), hashlib.sha256).digest()[:TOKEN_SIZE]

    def issue(self, ip: str, now: float) -> bytes:
        """The token to give a querier at ``ip``."""
        self._rotate(now)
        return self._token(self._current, ip)

    def valid(self, token: bytes, ip: str, now: float) -> bool:
        """Whether ``token`` was issued to ``ip`` under the current or the previous secret."""
        self._rotate(now)
        if len(token) != TOKEN_SIZE:
            return False
        return hmac.compare_digest(token, self._token(self._current, ip)) or hmac.compare_digest(
            token, self._token(self._previous, ip)
        )
