"""The one place that wires the node's services together.

``build_node(reactor, config)`` returns a :class:`Node`, a MultiService with
one named child per service that is built; services that are not built are
absent. Once every listener is up, the node writes the endpoints it really
bound to ``<data_dir>/endpoints.json`` (ports chosen by the OS included),
so that scripts, tests and operators can find a node started on port 0.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Callable

from twisted.application.service import MultiService, Service

from . import __version__, systemd
from .bootstrap import Bootstrap
from .config import Config
from .identity import Identity, load_identity
from .listen import ListenError
from .logs import logger
from .metrics import NodeMetrics
from .monitoring import MonitorService
from .nat.binding import BindingStats
from .nat.service import CredentialsError, NatConfigError, NatService, build_nat_service
from .nat.turn import TurnStats
from .link.service import LinkHub, LinkService, settings_from
from .link.session import LinkStats
from .link.frames import Capability, capability_mask

log = logger(__name__)

ENDPOINTS_FILE = "endpoints.json"


class StartupError(SystemExit):
    """Start-up cannot go on; twistd exits with this one-line message."""


class Node(MultiService):
    def __init__(self, reactor, config: Config, identity: Identity, metrics: NodeMetrics) -> None:
        super().__init__()
        self.setName("zentalk-relay")
        self.reactor = reactor
        self.config = config
        self.identity = identity
        self.metrics = metrics
        self._started_at: float | None = None
        self._watchdog = None
        #: The onion key to publish: the relay's current one once delivery is built.
        self.onion_public: Callable[[], bytes] = lambda: identity.onion_public

    @property
    def endpoints_file(self) -> Path:
        return self.config.node.data_dir / ENDPOINTS_FILE

    def service_states(self) -> dict[str, bool]:
        return {service.name: bool(service.running) for service in self}

    def healthy(self) -> tuple[bool, list[str]]:
        failing = [name for name, running in self.service_states().items() if not running]
        return bool(self.running) and not failing, failing

    def endpoints(self) -> dict[str, list[str]]:
        return {service.name: list(getattr(service, "endpoints", [])) for service in self}

    def bootstrap(self) -> Bootstrap:
        addresses: tuple = ()
        if "link" in self.namedServices:
            addresses = self.getServiceNamed("link").bootstrap_addresses()
        return Bootstrap(self.identity.ed25519_public, self.identity.link_public, addresses)

    def status(self) -> dict:
        uptime = 0.0 if self._started_at is None else self.reactor.seconds() - self._started_at
        return {
            "node_id": self.identity.node_id.hex(),
            "version": __version__,
            "uptime_seconds": round(uptime, 3),
            "bootstrap": str(self.bootstrap()),
            "onion_public": self.onion_public().hex(),
            "services": {
                service.name: {"running": bool(service.running), "endpoints": list(getattr(service, "endpoints", []))}
                for service in self
            },
            **({"dht": self.getServiceNamed("dht").status()} if "dht" in self.namedServices else {}),
        }

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenError as error:
            log.critical("cannot start: {error}", error=str(error))
            for service in self:
                service.stopService()
            raise StartupError(f"zentalk-relay: {error}") from None

    def startService(self) -> None:
        super().startService()
        self._started_at = self.reactor.seconds()
        # twistd starts services before the reactor runs; announce readiness
        # only once it does, when signals are handled and sockets served.
        self.reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        if not self.running:
            return
        self._write_endpoints()
        systemd.notify(f"READY=1\nSTATUS=serving {', '.join(s.name for s in self)}\nMAINPID={os.getpid()}")
        self._watchdog = systemd.start_watchdog(self.reactor)
        log.info("node {node_id} running, version {version}", node_id=self.identity.node_id.hex()[:16],
                 version=__version__)

    def stopService(self):
        systemd.notify("STOPPING=1")
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        try:
            self.endpoints_file.unlink()
        except FileNotFoundError:
            pass
        log.info("node stopping")
        return super().stopService()

    def _write_endpoints(self) -> None:
        tmp = self.endpoints_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "services": self.endpoints()}, indent=2) + "\n")
        tmp.replace(self.endpoints_file)


def build_node(reactor, config: Config, identity: Identity | None = None) -> Node:
    """Assemble the node. Loads (or creates) the identity unless one is given."""
    if identity is None:
        identity, created = load_identity(config.node.data_dir)
        for kind in created:
            log.info("created a new {kind} key in {directory}", kind=kind, directory=str(config.node.data_dir))
    metrics = NodeMetrics(config.metrics.blur_interval)
    node = Node(reactor, config, identity, metrics)
    if config.stun.enabled:
        _stun(reactor, config, metrics).setServiceParent(node)
    if config.link.enabled:
        link = _link(reactor, config, identity, metrics)
        # delivery before the link in the tree: MultiService stops children in
        # reverse, so links are drained before the mailbox is closed
        relay = _relay(reactor, config, identity, metrics, link.hub)
        relay.setServiceParent(node)
        node.onion_public = lambda: link.hub.router.keyring.public
        if config.pex.enabled:
            _pex(reactor, config, identity, metrics, link).setServiceParent(node)
        link.setServiceParent(node)
    if config.dht.enabled:
        _dht(reactor, config, identity, metrics, node).setServiceParent(node)
        if config.link.enabled and config.onion.cover_rate > 0:
            _cover(reactor, config, identity, node).setServiceParent(node.getServiceNamed("relay"))
    if config.metrics.enabled:
        monitor = MonitorService(reactor, config.metrics.listen, metrics, node.status, node.healthy)
        monitor.setName("metrics")
        monitor.setServiceParent(node)
    metrics.watch_services(node.service_states)
    return node


def _stun(reactor, config: Config, metrics: NodeMetrics) -> NatService:
    stats = BindingStats()
    metrics.watch_stun(stats)
    turn_stats = TurnStats()
    try:
        service = build_nat_service(reactor, config.stun, config.turn, stats, turn_stats)
    except (CredentialsError, NatConfigError) as error:
        raise StartupError(f"zentalk-relay: {error}") from None
    if service.turn is not None:
        server = service.turn
        metrics.watch_turn(turn_stats, lambda: server.gauges(reactor.seconds()))
    service.setName("stun")
    return service


def _link(reactor, config: Config, identity: Identity, metrics: NodeMetrics) -> LinkService:
    stats = LinkStats()
    wishes = tuple(name for name, wanted in (("pex-opt-out", config.pex.opt_out), ("pex-private", config.pex.private))
                   if wanted)
    capabilities = capability_mask(Capability.RELAY, Capability.PEX) if config.pex.enabled else capability_mask(
        Capability.RELAY)
    settings = settings_from(config.link, capabilities=capabilities, features=wishes)
    hub = LinkHub(reactor, config.link, identity, stats, settings, metrics.link_rtt_observer())
    metrics.watch_links(stats, hub.link_counts, lambda: dict(hub.refusals))
    service = LinkService(reactor, config.link, hub)
    service.setName("link")
    return service


def _relay(reactor, config: Config, identity: Identity, metrics: NodeMetrics, hub) -> MultiService:
    import time

    from .relay import onion
    from .relay.mixing import Mixer
    from .relay.service import MAILBOX_FILE, MailboxWriter, Mesh, OnionRotation, RelayStats, Router, onion_keyring

    stats = RelayStats()
    relay = MultiService()
    relay.setName("relay")
    mailbox = MailboxWriter(reactor, config.node.data_dir / MAILBOX_FILE, config.mailbox)
    mailbox.setServiceParent(relay)
    mesh = Mesh(reactor, hub, identity, config.mesh, stats)
    mesh.setServiceParent(relay)
    keyring = onion_keyring(config.node.data_dir, identity, config.onion.overlap, reactor.seconds(), time.time())
    replay = onion.ReplayCache(config.onion.replay_entries)
    rotation = OnionRotation(reactor, config.node.data_dir, keyring, replay, config.onion.rotation_interval, time.time)
    rotation.setServiceParent(relay)
    rng = random.SystemRandom()
    mixer = Mixer(config.onion.mix_delay, rng, config.onion.mix_capacity) if config.onion.mix_delay > 0 else None
    hub.router = Router(reactor, hub, mailbox, mesh, keyring, replay, stats, metrics.hop_latency_observer(),
                        rotation.relieve, mixer, metrics.mix_held_observer())
    metrics.watch_relay(stats, mailbox, mesh.links_up, lambda: len(mixer) if mixer is not None else 0)
    return relay


def _cover(reactor, config: Config, identity: Identity, node: Node) -> Service:
    """Cover loops through relays known from their DHT records."""
    from .relay.cover import PoissonSchedule
    from .relay.service import CoverTraffic

    router = node.getServiceNamed("link").hub.router

    def relays() -> dict[bytes, bytes]:
        dht = node.namedServices.get("dht")
        return {record.node_id: record.onion_key for record in dht.relays.values()} if dht is not None else {}

    rng = random.SystemRandom()
    cover = CoverTraffic(reactor, router, PoissonSchedule(config.onion.cover_rate, rng),
                         lambda: (identity.node_id, router.keyring.public), relays, rng)
    cover.setName("cover")
    return cover


def _dht(reactor, config: Config, identity: Identity, metrics: NodeMetrics, node: Node):
    """The DHT node; on a relay it also publishes the relay's record and feeds found relays to the mesh."""
    from .dht.records import RelayRecord
    from .dht.service import DhtService
    from .relay.service import Dialable

    link = node.namedServices.get("link")
    if link is None:
        service = DhtService(reactor, config.dht, config.node.data_dir, observe_lookup=metrics.dht_lookup_observer())
        metrics.watch_dht(service)
        return service
    hub = link.hub
    capabilities = hub.settings.capabilities

    def record(external_ip: str | None) -> RelayRecord | None:
        addresses = link.bootstrap_addresses()
        if not addresses and external_ip:
            ports = [int(e.rpartition(":")[2]) for e in link.endpoints if e.startswith("tcp:")]
            addresses = tuple((external_ip, port) for port in ports[:1])
        if not addresses:
            return None
        load = min(100, round(100 * len(hub.adapters) / max(1, config.link.max_links)))
        return RelayRecord(identity.ed25519_public, identity.link_public, node.onion_public(), addresses,
                           capabilities, __version__, load - load % 10)

    mesh = hub.router.mesh
    pex = node.namedServices.get("pex")

    def on_relay(found: RelayRecord) -> None:
        if not found.addresses or found.node_id == identity.node_id:
            return
        host, port = found.addresses[0]
        mesh.directory[found.node_id] = Dialable(found.link_key, host, port)
        if pex is not None:
            pex.candidate(found.node_id, host, port, found.link_key, found.capabilities)
        log.debug("DHT: found relay {node_id}", node_id=found.node_id.hex()[:16])

    service = DhtService(reactor, config.dht, config.node.data_dir, record=record, signing_key=identity.signing_key,
                         on_relay=on_relay, observe_lookup=metrics.dht_lookup_observer())
    metrics.watch_dht(service)
    return service


def _pex(reactor, config: Config, identity: Identity, metrics: NodeMetrics, link: LinkService):
    from .pex.service import PexService

    router = link.hub.router
    pex = PexService(reactor, config.pex, identity.node_id, router.mesh, config.node.data_dir,
                     lambda: frozenset(link.bootstrap_addresses()))
    pex.setName("pex")
    router.pex = pex
    metrics.watch_pex(pex.stats, pex.book.counts)
    return pex
