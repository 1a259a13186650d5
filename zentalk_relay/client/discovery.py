"""Finding relays through the DHT and choosing an onion path from their records.

A client runs a read-only DHT node (BEP 43: it asks, it is never asked, it
enters nobody's routing table) for as long as it needs one, finds relays
announced on the relays' info-hash, and keeps only records whose
signature verifies (:func:`~zentalk_relay.dht.protocol.find_relays`). A
record gives everything a path needs: the node id and link key to connect
and authenticate the first hop, and each hop's onion key.
"""

from __future__ import annotations

import random
from typing import Iterable

from ..config import DhtConfig
from ..dht.protocol import find_relays
from ..dht.records import RelayRecord
from ..dht.service import DhtService

__all__ = ["choose_path", "discover_relays", "hops", "start_dht"]


async def start_dht(reactor, bootstrap: Iterable[str], *, bind: str = "0.0.0.0:0", read_only: bool = True,
                    network: str = "zentalk") -> DhtService:
    """A running DHT node with no state on disk, bootstrapped through ``bootstrap`` (``host:port``).

    The caller stops it with ``stopService()``.
    """
    config = DhtConfig(udp=(bind,), bootstrap=tuple(bootstrap), network=network, publish=False)
    service = DhtService(reactor, config, None, read_only=read_only)
    service.startService()
    await service.bootstrapped()
    return service


async def discover_relays(reactor, bootstrap: Iterable[str], *, bind: str = "0.0.0.0:0",
                          limit: int = 32) -> list[RelayRecord]:
    """Verified records of up to ``limit`` relays, through a DHT node that lives for this call."""
    service = await start_dht(reactor, bootstrap, bind=bind)
    try:
        return await find_relays(service.primary, limit=limit)
    finally:
        await service.stopService()


def choose_path(records: list[RelayRecord], length: int = 3, *, rng: random.Random | None = None,
                exit_relay: RelayRecord | None = None, max_load: int = 90) -> list[RelayRecord]:
    """``length`` distinct relays at random, the last one ``exit_relay`` if given (the recipient's relay).

    Relays that say they are loaded above ``max_load`` percent are left out
    while enough others remain. Raises ValueError when there are too few.
    """
    rng = rng or random.SystemRandom()
    pool = {record.key: record for record in records if record.addresses}
    if exit_relay is not None:
        pool.pop(exit_relay.key, None)
    wanted = length - (exit_relay is not None)
    if len(pool) < wanted:
        raise ValueError(f"{len(pool)} usable relays for a path of {length}")
    light = [record for record in pool.values() if record.load <= max_load]
    heavy = [record for record in pool.values() if record.load > max_load]
    path = rng.sample(light, min(wanted, len(light)))
    path += rng.sample(heavy, wanted - len(path))  # only as many loaded relays as it takes
    rng.shuffle(path)
    return path + [exit_relay] if exit_relay is not None else path


def hops(path: list[RelayRecord]) -> list[tuple[bytes, bytes]]:
    """The (node id, onion key) pairs :meth:`ClientLink.send_onion` takes."""
    return [(record.node_id, record.onion_key) for record in path]
