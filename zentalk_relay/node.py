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
import signal
from pathlib import Path
from typing import Callable

from twisted.application.service import MultiService, Service
from twisted.internet.defer import DeferredList, maybeDeferred, succeed

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
    def __init__(self, reactor, config: Config, identity: Identity, metrics: NodeMetrics,
                 reload_config: Callable[[], Config] | None = None) -> None:
        super().__init__()
        self.setName("zentalk-relay")
        self.reactor = reactor
        self.config = config
        self.identity = identity
        self.metrics = metrics
        self._started_at: float | None = None
        self._watchdog = None
        #: Why start-up failed after the reactor ran (tor); twistd's exit status follows it (tap.py).
        self.startup_failure: str | None = None
        #: The onion key to publish: the relay's current one once delivery is built.
        self.onion_public: Callable[[], bytes] = lambda: identity.onion_public
        #: Reads the configuration again (the same file and options) for SIGHUP; None: no reload.
        self._reload_config = reload_config

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
            **({"tor": self.getServiceNamed("tor").status()} if "tor" in self.namedServices else {}),
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
        tor = self.namedServices.get("tor")
        if tor is not None and not tor.published:
            # READY only with the onion service up; tor bounds the wait by tor.timeout
            tor.when_published().addCallbacks(lambda _: self._ready(), self._failed_after_start)
            return
        if self._reload_config is not None:
            signal.signal(signal.SIGHUP, lambda signum, frame: self.reactor.callFromThread(self.reload))
        self._write_endpoints()
        systemd.notify(f"READY=1\nSTATUS=serving {', '.join(s.name for s in self)}\nMAINPID={os.getpid()}")
        self._watchdog = systemd.start_watchdog(self.reactor)
        log.info("node {node_id} running, version {version}", node_id=self.identity.node_id.hex()[:16],
                 version=__version__)

    def _failed_after_start(self, failure) -> None:
        """Start-up failed once the reactor ran: one line, then stop; twistd then exits with status 1."""
        from twisted.internet.error import ReactorNotRunning

        self.startup_failure = str(failure.value)
        log.critical("cannot start: {error}", error=self.startup_failure)
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass

    def stopService(self):
        """Drain, then stop: links first (while TURN still answers), then everything else.

        New links are refused and every link is told why (CLOSE); TURN sends
        new allocations to ``turn.alternate_server`` (300) or refuses them;
        then the services stop in reverse order, which commits the mailbox
        and saves the DHT table and the peer book. The whole is bounded by
        ``node.drain_timeout``: after it the node exits with what it has.
        """
        systemd.notify("STOPPING=1\nSTATUS=draining")
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        try:
            self.endpoints_file.unlink()
        except FileNotFoundError:
            pass
        Service.stopService(self)
        started = self.reactor.seconds()
        log.info("node stopping: draining for at most {timeout:g} s", timeout=self.config.node.drain_timeout)
        stun = self.namedServices.get("stun")
        if stun is not None and getattr(stun, "turn", None) is not None:
            stun.turn.draining = True
        link = self.namedServices.get("link")
        first = maybeDeferred(link.stopService) if link is not None and link.running else succeed(None)

        def the_rest(_):
            rest = [service for service in reversed(list(self)) if service is not link and service.running]
            return DeferredList([maybeDeferred(service.stopService) for service in rest], consumeErrors=True)

        def timed_out(result, timeout):
            log.warn("drain did not finish within {timeout:g} s; stopping anyway", timeout=timeout)

        done = first.addBoth(the_rest)
        done.addTimeout(self.config.node.drain_timeout, self.reactor, onTimeoutCancel=timed_out)
        done.addBoth(lambda _: log.info("node stopped after {seconds:.2f} s",
                                        seconds=self.reactor.seconds() - started))
        return done

    # -- SIGHUP --------------------------------------------------------------

    def reload(self) -> list[str]:
        """Read the configuration again and apply what can change while running; the keys applied."""
        from .config import ConfigError
        from .reload import RELOADABLE, changed_keys, merge

        try:
            new = self._reload_config()
        except (ConfigError, SystemExit, OSError) as error:
            log.error("reload refused, nothing changed: {error}", error=str(error))
            return []
        changed = changed_keys(self.config, new)
        applied = [key for key in changed if key in RELOADABLE]
        restart = [key for key in changed if key not in RELOADABLE]
        old, self.config = self.config, merge(self.config, new)
        for key in applied:
            section, _, name = key.partition(".")
            log.info("reload: {key} {old!r} -> {new!r}", key=key, old=getattr(getattr(old, section), name),
                     new=getattr(getattr(self.config, section), name))
        self._apply(self.config)
        if restart:
            log.warn("reload: changed but needs a restart: {keys}", keys=", ".join(restart))
        if not changed:
            log.info("reload: no setting changed; TLS certificates and TURN credentials read again")
        return applied

    def _apply(self, config: Config) -> None:
        from .logs import set_level

        set_level(config.node.log_level)
        self.metrics.blur.interval = config.metrics.blur_interval
        link = self.namedServices.get("link")
        if link is not None:
            self._reloaded("link TLS certificate", lambda: link.reconfigure(config.link))
            link.hub.router.mesh.reconfigure(config.mesh)
        stun = self.namedServices.get("stun")
        if stun is not None:
            if stun.tls is not None:
                self._reloaded("STUN/TURN TLS certificate",
                               lambda: stun.tls.reload(config.stun.tls_certificate, config.stun.tls_private_key))
            if stun.turn is not None:
                from .config import parse_host_port
                from .nat.service import load_credentials

                def credentials() -> None:
                    stun.turn.credentials = load_credentials(config.turn)

                self._reloaded("TURN credentials", credentials)
                alternate = config.turn.alternate_server
                stun.turn.alternate = parse_host_port(alternate) if alternate else None
        dht = self.namedServices.get("dht")
        if dht is not None:
            dht.reconfigure(config.dht)

    @staticmethod
    def _reloaded(what: str, load: Callable[[], None]) -> None:
        try:
            load()
        except Exception as error:  # a bad file: keep serving with the old one
            log.error("reload: {what} not reloaded, the old one stays: {error}", what=what, error=str(error))

    def _write_endpoints(self) -> None:
        tmp = self.endpoints_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "services": self.endpoints()}, indent=2) + "\n")
        tmp.replace(self.endpoints_file)


def build_node(reactor, config: Config, identity: Identity | None = None,
               reload_config: Callable[[], Config] | None = None) -> Node:
    """Assemble the node. Loads (or creates) the identity unless one is given.

    ``reload_config`` reads the configuration again for SIGHUP (twistd passes it).
    """
    if identity is None:
        identity, created = load_identity(config.node.data_dir)
        for kind in created:
            log.info("created a new {kind} key in {directory}", kind=kind, directory=str(config.node.data_dir))
    metrics = NodeMetrics(config.metrics.blur_interval)
    node = Node(reactor, config, identity, metrics, reload_config)
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
        if config.tor.enabled:
            _tor(reactor, config, link).setServiceParent(node)
    if config.dht.enabled:
        _dht(reactor, config, identity, metrics, node).setServiceParent(node)
        if config.link.enabled and config.onion.cover_rate > 0:
            _cover(reactor, config, identity, node).setServiceParent(node.getServiceNamed("relay"))
    if config.metrics.enabled:
        monitor = MonitorService(reactor, config.metrics.listen, metrics, node.status, node.healthy,
                                 config.metrics.allow)
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
    offered = [Capability.RELAY]
    offered += [Capability.PEX] if config.pex.enabled else []
    offered += [Capability.DHT] if config.dht.enabled else []
    offered += [Capability.PADDING] if config.link.padding else []
    settings = settings_from(config.link, capabilities=capability_mask(*offered), features=wishes)
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


def _tor(reactor, config: Config, link: LinkService) -> Service:
    """The TCP link listener as a Tor onion service; the mesh dials onion-only relays through it."""
    from .tor import TorError, build_tor_service, link_target

    try:
        service = build_tor_service(reactor, config.tor, config.node.data_dir, lambda: link_target(link.endpoints))
    except TorError as error:
        raise StartupError(f"zentalk-relay: tor: {error}") from None
    service.setName("tor")
    link.hub.router.mesh.onion_endpoint = service.client_endpoint
    return service


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
        tor = node.namedServices.get("tor")
        onion_service = tor.onion_service if tor is not None and tor.published else ""
        if not addresses and not onion_service:
            return None
        load = min(100, round(100 * len(hub.adapters) / max(1, config.link.max_links)))
        return RelayRecord(identity.ed25519_public, identity.link_public, node.onion_public(), addresses,
                           capabilities, __version__, load - load % 10, onion_service=onion_service)

    mesh = hub.router.mesh
    pex = node.namedServices.get("pex")

    def on_relay(found: RelayRecord) -> None:
        if found.node_id == identity.node_id:
            return
        if not found.addresses:
            # an onion-only relay: reachable through our tor, if we run one
            host, _, port = found.onion_service.rpartition(":")
            if "tor" in node.namedServices and host.endswith(".onion") and port.isdigit():
                mesh.directory[found.node_id] = Dialable(found.link_key, host, int(port))
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
