"""Cover traffic: dummy onion packets on loops that come back to their sender.

A relay (or a client that asks for it) sends, at the times of a Poisson
process, an onion packet built exactly like a real one: same size, same
frame type, a payload padded the same way, through real relays chosen from
their DHT records. Its path is a loop: the relay's own last hop is a DROP,
so the packet ends, silently, where it started; a client's loop ends with a
DELIVER to the client itself, which discards it. No relay on the way can
tell a loop from a message: every hop sees one onion layer.

Loops also measure: a relay whose loops stop coming back has lost part of
its path (an active attack or a broken neighbour), which the metrics show.

Sans-IO: :class:`PoissonSchedule` draws the waiting times, :func:`loop_packet`
builds a packet from (node id, onion key) pairs.
"""

from __future__ import annotations

import os
import random
from typing import Callable, Sequence

from . import delivery, onion

__all__ = ["PoissonSchedule", "loop_packet", "client_loop_packet"]

#: A relay's loop: itself -> two other relays -> itself.
LOOP_RELAYS = 2


class PoissonSchedule:
    """Independent exponential gaps at ``rate`` per second; ``rate`` 0 never fires."""

    def __init__(self, rate: float, rng: random.Random) -> None:
        if rate < 0:
            raise ValueError("a rate is not negative")
        self.rate = rate
        self._rng = rng

    def next_gap(self) -> float | None:
        return self._rng.expovariate(self.rate) if self.rate > 0 else None


def _payload(rng: Callable[[int], bytes]) -> bytes:
    # A real message's payload: a 16-byte id, a body, zeros to the fixed size;
    # every hop sees it encrypted, so its content only matters at the end.
    return delivery.encode(rng(delivery.MESSAGE_ID_SIZE), b"", onion.MAX_PAYLOAD)


def loop_packet(own: tuple[bytes, bytes], relays: Sequence[tuple[bytes, bytes]], rng: random.Random,
                randbytes: Callable[[int], bytes] = os.urandom) -> tuple[bytes, bytes]:
    """A relay's loop through ``LOOP_RELAYS`` of ``relays`` back to ``own``: (first hop id, packet).

    ``own`` and each relay are (node id, onion public key); ``relays[0]``
    should be one this relay has a link to (the packet is sent there first).
    Raises ValueError when fewer than ``LOOP_RELAYS`` other relays are given.
    """
    others = [relay for relay in relays if relay[0] != own[0]]
    if len(others) < LOOP_RELAYS:
        raise ValueError("a loop needs two other relays")
    first = others[0]
    second = rng.choice(others[1:])
    hops = [
        onion.Hop(first[1], onion.Instruction.FORWARD, second[0]),
        onion.Hop(second[1], onion.Instruction.FORWARD, own[0]),
        onion.Hop(own[1], onion.Instruction.DROP, bytes(onion.KEY_SIZE)),
    ]
    return first[0], onion.build_packet(hops, _payload(randbytes), randbytes)


def client_loop_packet(path: Sequence[tuple[bytes, bytes]], own_address: bytes, body_size: int,
                       randbytes: Callable[[int], bytes] = os.urandom) -> tuple[bytes, bytes]:
    """A client's loop along ``path`` (its own relay last), delivered back to ``own_address``.

    The body is ``body_size`` random bytes: the last relay sees the payload
    in the clear, and a real body is end-to-end ciphertext, which random
    bytes of a plausible length look like. Returns (message id, packet):
    the client recognises the DELIVER by the id and discards it.
    """
    message_id = randbytes(delivery.MESSAGE_ID_SIZE)
    hops = [onion.Hop(onion_public, onion.Instruction.FORWARD, path[index + 1][0])
            for index, (_, onion_public) in enumerate(path[:-1])]
    hops.append(onion.Hop(path[-1][1], onion.Instruction.DELIVER, own_address))
    payload = delivery.encode(message_id, randbytes(body_size), onion.MAX_PAYLOAD)
    return message_id, onion.build_packet(hops, payload, randbytes)
