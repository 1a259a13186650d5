"""The node's DHT service: sockets, saved state, the relay record, and relay discovery.

One :class:`~.node.DhtNode` per configured address family, each on its own
UDP socket through :class:`~.protocol.DhtProtocol`. What the service adds
around them:

- **state** in ``<data_dir>/dht/``: the routing table (with our node id),
  the peers and BEP 44 items stored for others; loaded at start, saved
  every ``save_interval`` and at stop, each file replaced atomically;
- **bootstrap**: names in ``dht.bootstrap`` resolved once the reactor runs,
  then a lookup of our own id through them; no names on the ``zentalk``
  network means this node is a bootstrap node and waits to be found;
- **BEP 42**: when the nodes that answer us agree on our public address and
  our id does not match it, the node takes a matching id and keeps its table;
- **the relay record** (:mod:`.records`): kept in our own store, put to the
  nearest nodes and announced on the relays' info-hash, again every
  ``republish_interval`` and at once when its content changes;
- **discovery**: other relays' records, verified, handed to ``on_relay``
  (the mesh and PEX use them) every ``discover_interval``.

A publish that reached nobody (a bootstrap node alone, a network still
forming) is tried again after 2 s, doubling up to a minute; discovery looks
again 2 s after a round that found a new relay, doubling up to
``discover_interval`` while rounds find nothing new.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.task import LoopingCall

from .. import config as node_config
from ..listen import ListenError, describe_port, open_udp
from ..logs import logger
from ..ratelimit import Rate
from . import bep42
from .bep42 import Bep42Policy
from .items import Item
from .krpc import Address
from .node import DhtConfig, DhtNode, DhtStats, ExternalAddressChanged, OperationDone
from .protocol import DhtProtocol, find_relays
from .records import RELAYS_INFO_HASH, RelayRecord
from .routing import RoutingTable
from .storage import ItemStore, PeerStore

log = logger(__name__)

STATE_DIR = "dht"
RETRY_FIRST, RETRY_MAX = 2.0, 60.0
SOCKET_BUFFER = 1024 * 1024


def node_settings(config: node_config.DhtConfig, family: int, read_only: bool = False) -> DhtConfig:
    """The sans-IO node's settings from the operator's ``[dht]`` section."""
    return DhtConfig(
        rate=Rate(config.queries_per_second, 1.0, config.query_burst),
        bep42=Bep42Policy[config.bep42.upper()],
        family=family,
        read_only=read_only,
        get_padding=400 if read_only else 0,
    )


def bootstrap_targets(config: node_config.DhtConfig) -> tuple[str, ...]:
    if config.bootstrap or config.network == "zentalk":
        return config.bootstrap
    return node_config.MAINLINE_ROUTERS


def resolve(reactor, targets: tuple[str, ...], family: int) -> Deferred:
    """``host:port`` strings to addresses of ``family``; names that do not resolve are left out and logged."""
    from twisted.internet.threads import deferToThreadPool

    def lookup() -> list[Address]:
        found: list[Address] = []
        for target in targets:
            host, port = node_config.parse_udp_target(target)
            try:
                infos = socket.getaddrinfo(host, port, socket.AF_INET6 if family == 6 else socket.AF_INET,
                                           socket.SOCK_DGRAM)
            except OSError as error:
                log.warn("DHT bootstrap {target} does not resolve: {error}", target=target, error=str(error))
                continue
            for info in infos[:2]:
                address = (info[4][0], info[4][1])
                if address not in found:
                    found.append(address)
        return found

    return deferToThreadPool(reactor, reactor.getThreadPool(), lookup)


@dataclass(slots=True)
class DhtServiceStats:
    """Counters of the service itself; the nodes count KRPC in their :class:`DhtStats`."""

    publishes: dict[str, int] = field(default_factory=dict)  # result: stored, nobody, no_address
    relays_found: int = 0
    send_errors: int = 0

    def count(self, result: str) -> None:
        self.publishes[result] = self.publishes.get(result, 0) + 1


class _Family:
    """One address family's node, socket and files."""

    def __init__(self, family: int, address: str, directory: Path) -> None:
        self.family = family
        self.address = address
        self.routing_file = directory / f"routing{family}.json"
        self.peers_file = directory / f"peers{family}.json"
        self.items_file = directory / f"items{family}.json"
        self.stats = DhtStats()
        self.protocol: DhtProtocol | None = None
        self.port = None
        self.sock = None


class DhtService(Service):
    """The DHT nodes of a relay (or of any process that runs one: the CLI, a client)."""

    def __init__(self, reactor, config: node_config.DhtConfig, data_dir: Path | None, *,
                 record: Callable[[str | None], RelayRecord | None] | None = None, signing_key=None,
                 on_relay: Callable[[RelayRecord], None] = lambda record: None,
                 observe_lookup: Callable[[OperationDone], None] = lambda done: None,
                 read_only: bool = False, wall: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.setName("dht")
        self._reactor = reactor
        self.config = config
        self._directory = data_dir / STATE_DIR if data_dir is not None else None
        self._record = record
        self._signing_key = signing_key
        self.on_relay = on_relay
        self._observe_lookup = observe_lookup
        self._read_only = read_only
        self._wall = wall
        self._rng = rng or random.SystemRandom()
        self.stats = DhtServiceStats()
        self.families: dict[int, _Family] = {}
        self.endpoints: list[str] = []
        self.relays: dict[bytes, RelayRecord] = {}
        self._relay_seen: dict[bytes, float] = {}
        self._keys: dict[Address, bytes] = {}
        self._loops: list[LoopingCall] = []
        self._published: RelayRecord | None = None
        self._item: Item | None = None
        self._seq = 0
        self._next_publish = 0.0
        self._publish_retry = RETRY_FIRST
        self._publishing = False
        self._discovering = False
        self._next_discovery = 0.0
        self._discover_retry = RETRY_FIRST
        self._bootstrapped: Deferred = Deferred()
        for address in config.udp:
            host, _ = node_config.parse_host_port(address)
            family = 6 if ":" in host else 4
            self.families[family] = _Family(family, address, self._directory or Path("."))

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def protocols(self) -> list[DhtProtocol]:
        return [f.protocol for f in self.families.values() if f.protocol is not None]

    @property
    def primary(self) -> DhtProtocol:
        """The IPv4 node if there is one: where the relay walks the network from."""
        return (self.families.get(4) or next(iter(self.families.values()))).protocol

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self._directory is not None:
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        now = self._reactor.seconds()
        for family in self.families.values():
            protocol = DhtProtocol(self._reactor, self._load(family, now),
                                   on_event=lambda event, f=family: self._on_event(f, event),
                                   on_operation=self._observe_lookup)
            family.protocol = protocol
            try:
                family.port, family.sock = open_udp(self._reactor, family.address, protocol, SOCKET_BUFFER)
            except ListenError:
                for opened in self.families.values():
                    if opened.port is not None:
                        opened.port.stopListening()
                        opened.sock.close()
                raise
            self.endpoints.append(describe_port("udp", family.port))
            log.info("DHT listening on {endpoint}, node id {node_id}", endpoint=self.endpoints[-1],
                     node_id=protocol.node.node_id.hex())

    def startService(self) -> None:
        super().startService()
        if not self.endpoints:  # started without privilegedStartService (tests, the CLI)
            self.privilegedStartService()
        self._every(self.config.save_interval, self.save)
        if self._record is not None and self.config.publish:
            self._every(1.0, self._publish_due)
        if self._record is not None:
            self._every(1.0, self._discover_due)
        self._reactor.callWhenRunning(self._bootstrap)

    def stopService(self):
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        self.save()
        waiting = []
        for family in self.families.values():
            if family.port is not None:
                waiting.append(family.port.stopListening())
                family.sock.close()
                family.port = family.sock = None
        return DeferredList([d for d in waiting if d is not None])

    def _every(self, interval: float, call: Callable[[], None]) -> None:
        loop = LoopingCall(call)
        loop.clock = self._reactor
        loop.start(interval, now=False).addErrback(lambda failure: log.failure("DHT timer failed", failure))
        self._loops.append(loop)

    def reconfigure(self, config: node_config.DhtConfig) -> None:
        """New per-IP query limits (SIGHUP) for sources seen from now on."""
        from dataclasses import replace

        self.config = config
        for protocol in self.protocols:
            protocol.node.config = replace(protocol.node.config,
                                           rate=Rate(config.queries_per_second, 1.0, config.query_burst))

    def bootstrapped(self) -> Deferred:
        """Fires once the first bootstrap lookup ended (at once for a bootstrap node)."""
        waiting: Deferred = Deferred()
        if self._bootstrapped.called:
            waiting.callback(None)
        else:
            self._bootstrapped.addBoth(lambda result: (waiting.callback(None), result)[1])
        return waiting

    @inlineCallbacks
    def _bootstrap(self):
        targets = bootstrap_targets(self.config)
        if not targets:
            log.info("DHT: no bootstrap nodes configured; serving as a bootstrap node on {endpoints}",
                     endpoints=", ".join(self.endpoints))
            self._bootstrapped.callback(None)
            return
        results = []
        for family in self.families.values():
            addresses = yield resolve(self._reactor, targets, family.family)
            own = family.port.getHost() if family.port is not None else None
            addresses = [a for a in addresses if own is None or (a[0], a[1]) != (own.host, own.port)]
            if family.protocol is not None and self.running:
                results.append(family.protocol.bootstrap(addresses))
        done = yield DeferredList(results, consumeErrors=True)
        for success, result in done:
            if success:
                log.info("DHT bootstrap: {nodes} nodes answered, routing table {size}",
                         nodes=len(result.result.nodes), size=len(self.primary.node.table))
        if not self._bootstrapped.called:
            self._bootstrapped.callback(None)

    # -- state ------------------------------------------------------------------------------

    def _load(self, family: _Family, now: float) -> DhtNode:
        settings = node_settings(self.config, family.family, self._read_only)
        table = None
        if self._directory is not None and family.routing_file.exists():
            try:
                data = json.loads(family.routing_file.read_text())
                table = RoutingTable.from_dict(data, now, **settings.table_options())
            except (ValueError, OSError) as error:
                log.warn("DHT routing table {path} not loaded ({error}); starting empty",
                         path=str(family.routing_file), error=str(error))
        if table is not None:
            node_id = table.own_id
            log.info("DHT routing table loaded: {size} nodes", size=len(table))
        else:
            host, _ = node_config.parse_host_port(family.address)
            public = host not in ("0.0.0.0", "::") and not bep42.is_exempt(host)
            node_id = bep42.node_id_for(host, self._rng) if public else self._rng.randbytes(20)
        node = DhtNode(node_id, now=now, rng=self._rng, config=settings, stats=family.stats, table=table)
        if self._directory is not None:
            self._load_stores(family, node, settings, now)
        if self._signing_key is not None:
            node.relay_key = bytes(self._signing_key.verify_key)
        return node

    def _load_stores(self, family: _Family, node: DhtNode, settings: DhtConfig, now: float) -> None:
        for path, loader in ((family.peers_file, lambda data: PeerStore.from_dict(
                data, now, max_torrents=settings.max_torrents, max_peers=settings.max_peers_per_torrent,
                ttl=settings.peer_ttl)),
                             (family.items_file, lambda data: ItemStore.from_dict(
                                 data, now, max_items=settings.max_items, ttl=settings.item_ttl))):
            if not path.exists():
                continue
            try:
                store = loader(json.loads(path.read_text()))
            except (ValueError, OSError) as error:
                log.warn("DHT store {path} not loaded ({error})", path=str(path), error=str(error))
                continue
            if isinstance(store, PeerStore):
                node.peers = store
            else:
                node.items = store

    def save(self) -> None:
        if self._directory is None or self._read_only:
            return
        now = self._reactor.seconds()
        for family in self.families.values():
            if family.protocol is None:
                continue
            node = family.protocol.node
            for path, data in ((family.routing_file, node.table.to_dict()),
                               (family.peers_file, node.peers.to_dict(now)),
                               (family.items_file, node.items.to_dict(now))):
                _write_atomically(path, data)

    # -- events -----------------------------------------------------------------------------

    def _on_event(self, family: _Family, event) -> None:
        if isinstance(event, ExternalAddressChanged):
            self._address_changed(family, event.ip)

    def _address_changed(self, family: _Family, ip: str) -> None:
        protocol = family.protocol
        old = protocol.node
        if bep42.is_exempt(ip) or bep42.node_id_matches(old.node_id, ip):
            log.info("DHT: our address is {ip}", ip=ip)
            return
        now = self._reactor.seconds()
        settings = old.config
        new_id = bep42.node_id_for(ip, self._rng)
        table = RoutingTable.from_dict(old.table.to_dict(), now, own_id=new_id, **settings.table_options())
        node = DhtNode(new_id, now=now, rng=self._rng, config=settings, stats=family.stats, table=table)
        node.peers, node.items, node.relay_key, node.external_ip = old.peers, old.items, old.relay_key, ip
        protocol.replace_node(node)
        log.info("DHT: our address is {ip}; new BEP 42 node id {node_id}", ip=ip, node_id=new_id.hex()[:16])
        self._next_publish = 0.0

    # -- the relay record -----------------------------------------------------------------------

    def external_ip(self) -> str | None:
        for family in self.families.values():
            if family.protocol is not None and family.protocol.node.external_ip:
                return family.protocol.node.external_ip
        return None

    def republish_now(self) -> None:
        """Something in the record changed (a key rotated, an address): publish at the next second."""
        self._next_publish = 0.0

    def _publish_due(self) -> None:
        if self._publishing:
            return
        if self._reactor.seconds() < self._next_publish:
            current = self._record(self.external_ip())
            if current is None or current.same_content(self._published):
                return
        self._publishing = True
        Deferred.fromCoroutine(self.publish()).addErrback(
            lambda failure: log.failure("DHT publish failed", failure)).addBoth(
            lambda _: setattr(self, "_publishing", False))

    async def publish(self) -> int:
        """Put the record and announce; the number of nodes that stored the record."""
        now = self._reactor.seconds()
        record = self._record(self.external_ip())
        if record is None:
            self.stats.count("no_address")
            self._retry_publish(now)
            return 0
        if not record.same_content(self._published) or self._item is None:
            self._seq = max(self._seq + 1, int(self._wall()))
            self._item = record.sign(self._signing_key, self._seq)
            self._published = record
            log.info("DHT: relay record seq {seq}: {addresses}", seq=self._seq,
                     addresses=", ".join(f"{h}:{p}" for h, p in record.addresses))
        item = self._item
        stored = 0
        for protocol in self.protocols:
            protocol.node.items.put(item, now)  # our own copy: a direct get always finds it
            puts = await DeferredList([protocol.put(item), protocol.announce(RELAYS_INFO_HASH)], consumeErrors=True)
            if puts[0][0]:
                stored += puts[0][1].stored
        if stored:
            self.stats.count("stored")
            self._next_publish = self._reactor.seconds() + self.config.republish_interval
            self._publish_retry = RETRY_FIRST
        else:
            self.stats.count("nobody")
            self._retry_publish(self._reactor.seconds())
        return stored

    def _retry_publish(self, now: float) -> None:
        self._next_publish = now + self._publish_retry
        self._publish_retry = min(RETRY_MAX, self._publish_retry * 2)

    # -- discovery ------------------------------------------------------------------------------

    def _discover_due(self) -> None:
        if self._discovering or self._reactor.seconds() < self._next_discovery or not self._bootstrapped.called:
            return
        self._discovering = True
        Deferred.fromCoroutine(self.discover()).addErrback(
            lambda failure: log.failure("DHT discovery failed", failure)).addBoth(
            lambda _: setattr(self, "_discovering", False))

    async def discover(self) -> list[RelayRecord]:
        """Read other relays' records; each new or changed one goes to ``on_relay``."""
        now = self._reactor.seconds()
        own = bytes(self._signing_key.verify_key) if self._signing_key is not None else None

        def fresh(key: bytes) -> bool:
            return key == own or now - self._relay_seen.get(key, -1e18) < self.config.republish_interval

        records = await find_relays(self.primary, known=self._keys, skip=fresh, rng=self._rng)
        found = []
        for record in records:
            self._relay_seen[record.key] = now
            previous = self.relays.get(record.key)
            self.relays[record.key] = record
            if previous is None or not previous.same_content(record):
                self.stats.relays_found += 1
                found.append(record)
                self.on_relay(record)
        # While rounds keep finding relays the network is forming: look again soon, then less and
        # less often, up to the configured interval.
        if found:
            self._discover_retry = RETRY_FIRST
        self._next_discovery = self._reactor.seconds() + min(self.config.discover_interval, self._discover_retry)
        self._discover_retry = min(self.config.discover_interval, self._discover_retry * 2)
        return found

    def status(self) -> dict:
        """What /status shows: per family our node id, table size and address; relays known."""
        now = self._reactor.seconds()
        families = {}
        for name, family in (("ipv4" if f.family == 4 else "ipv6", f) for f in self.families.values()):
            if family.protocol is None:
                continue
            node = family.protocol.node
            families[name] = {"node_id": node.node_id.hex(), "nodes": len(node.table),
                              "good": node.table.state_counts(now).get("good", 0),
                              "external_ip": node.external_ip}
        return {"families": families, "relays_known": len(self.relays),
                "record_seq": self._seq if self._item is not None else None}

    # -- numbers for the metrics module ------------------------------------------------------------

    def gauges(self) -> dict[str, dict]:
        now = self._reactor.seconds()
        return {("ipv4" if f.family == 4 else "ipv6"): f.protocol.node.gauges(now)
                for f in self.families.values() if f.protocol is not None}

    def node_stats(self) -> dict[str, DhtStats]:
        return {("ipv4" if f.family == 4 else "ipv6"): f.stats for f in self.families.values()}


def _write_atomically(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
