"""Every metric the node exports, in one registry per node.

Hot paths keep plain integer counts in their own sans-IO stats objects;
the collectors here turn them into Prometheus families at scrape time, so
that a STUN answer costs a dict increment, not a lock. Names follow
``zentalk_<subsystem>_<what>_<unit>``; labels are low-cardinality (method,
result, reason, service) and never an address or a peer id. Series that
can be zero are exported as zero from the start so that ``rate()`` works
from the first scrape.
"""

from __future__ import annotations

import platform
from typing import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

import twisted

from . import __version__
from .link.frames import FRAME_NAMES
from .link.session import LinkStats
from .nat.binding import DROP_REASONS, BindingStats
from .nat import turn as _turn

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _StunCollector(Collector):
    def __init__(self, stats: BindingStats) -> None:
        self._stats = stats

    def collect(self) -> Iterable:
        requests = CounterMetricFamily(
            "zentalk_stun_requests",
            "STUN requests and indications answered or accepted, by method and result.",
            labels=["method", "result"],
        )
        counts = {("binding", "success"): 0, ("binding", "error"): 0, ("binding", "indication"): 0}
        counts.update(self._stats.request_counts())
        for (method, result), value in sorted(counts.items()):
            requests.add_metric([method, result], value)
        yield requests
        dropped = CounterMetricFamily(
            "zentalk_stun_dropped",
            "STUN datagrams dropped without an answer, by reason.",
            labels=["reason"],
        )
        reasons = dict.fromkeys(DROP_REASONS, 0)
        reasons.update(self._stats.dropped)
        for reason, value in sorted(reasons.items()):
            dropped.add_metric([reason], value)
        yield dropped


class _TurnCollector(Collector):
    def __init__(self, stats: "_turn.TurnStats", gauges: Callable[[], dict]) -> None:
        self._stats = stats
        self._gauges = gauges

    def collect(self) -> Iterable:
        live = self._gauges()
        allocations = GaugeMetricFamily("zentalk_turn_allocations_active", "TURN allocations held now, by client "
                                        "transport and relayed address family.", labels=["transport", "family"])
        counts = {(transport, family): 0 for transport in ("udp", "tcp", "tls") for family in ("ipv4", "ipv6")}
        counts.update(live["allocations"])
        for (transport, family), value in sorted(counts.items()):
            allocations.add_metric([transport, family], value)
        yield allocations
        yield GaugeMetricFamily("zentalk_turn_permissions_active", "TURN permissions held now.", value=live["permissions"])
        yield GaugeMetricFamily("zentalk_turn_channels_active", "TURN channels bound now.", value=live["channels"])
        requests = dict(self._stats.requests)
        results = CounterMetricFamily("zentalk_turn_allocations", "Allocate requests answered, by result.",
                                      labels=["result"])
        for result in _turn.RESULTS:
            results.add_metric([result], requests.get(("allocate", result), 0))
        yield results
        by_method = CounterMetricFamily("zentalk_turn_requests", "TURN requests answered, by method and result.",
                                        labels=["method", "result"])
        series = {(method, "success"): 0 for method in _turn.METHODS[:-1]}
        series.update(requests)
        for (method, result), value in sorted(series.items()):
            by_method.add_metric([method, result], value)
        yield by_method
        relayed_bytes = CounterMetricFamily("zentalk_turn_relayed_bytes", "Payload bytes relayed, by direction.",
                                            labels=["direction"])
        relayed_bytes.add_metric(["to_peer"], self._stats.to_peer_bytes)
        relayed_bytes.add_metric(["to_client"], self._stats.to_client_bytes)
        yield relayed_bytes
        packets = CounterMetricFamily("zentalk_turn_relayed_packets", "Packets relayed, by direction.",
                                      labels=["direction"])
        packets.add_metric(["to_peer"], self._stats.to_peer_packets)
        packets.add_metric(["to_client"], self._stats.to_client_packets)
        yield packets
        refusals = CounterMetricFamily("zentalk_turn_refusals", "Requests and packets refused by policy or a "
                                       "limit, by reason.", labels=["reason"])
        reasons = dict.fromkeys(_turn.REFUSAL_REASONS, 0)
        reasons.update(self._stats.refusals)
        for reason, value in sorted(reasons.items()):
            refusals.add_metric([reason], value)
        yield refusals
        dropped = CounterMetricFamily("zentalk_turn_dropped", "TURN messages and packets dropped without an "
                                      "answer, by reason.", labels=["reason"])
        reasons = dict.fromkeys(_turn.DROP_REASONS, 0)
        reasons.update(self._stats.dropped)
        for reason, value in sorted(reasons.items()):
            dropped.add_metric([reason], value)
        yield dropped


class _LinkCollector(Collector):
    def __init__(self, stats: LinkStats, counts: Callable[[], dict[tuple[str, str], int]],
                 refusals: Callable[[], dict[str, int]]) -> None:
        self._stats = stats
        self._counts = counts
        self._refusals = refusals

    def collect(self) -> Iterable:
        links = GaugeMetricFamily("zentalk_link_links", "Links held now, by state and peer kind.",
                                  labels=["state", "kind"])
        counts = {("active", "client"): 0, ("active", "relay"): 0, ("handshake", "unknown"): 0}
        counts.update(self._counts())
        for (state, kind), value in sorted(counts.items()):
            links.add_metric([state, kind], value)
        yield links
        handshakes = CounterMetricFamily("zentalk_link_handshakes", "Link handshakes that ended, by result.",
                                         labels=["result"])
        results = {"success": 0}
        results.update(self._stats.handshakes)
        for result, value in sorted(results.items()):
            handshakes.add_metric([result], value)
        yield handshakes
        frames = CounterMetricFamily("zentalk_link_frames", "Link frames by direction and type.",
                                     labels=["direction", "type"])
        for direction, table in (("in", self._stats.frames_in), ("out", self._stats.frames_out)):
            values = dict.fromkeys(FRAME_NAMES, 0)
            values.update(table)
            for name, value in sorted(values.items()):
                frames.add_metric([direction, name], value)
        yield frames
        data = CounterMetricFamily("zentalk_link_bytes", "Bytes on links, by direction (records, before TLS).",
                                   labels=["direction"])
        data.add_metric(["in"], self._stats.bytes_in)
        data.add_metric(["out"], self._stats.bytes_out)
        yield data
        refusals = CounterMetricFamily("zentalk_link_refusals", "Links refused by a limit, by reason.",
                                       labels=["reason"])
        for reason, value in sorted(self._refusals().items()):
            refusals.add_metric([reason], value)
        yield refusals
        limited = CounterMetricFamily("zentalk_link_rate_limited", "Frames refused by a per-link token bucket.",
                                      labels=["what"])
        values = {"messages": 0, "pex": 0}
        values.update(self._stats.rate_limited)
        for what, value in sorted(values.items()):
            limited.add_metric([what], value)
        yield limited
        closes = CounterMetricFamily("zentalk_link_closes", "Links closed, by reason (peer_ when the peer closed).",
                                     labels=["reason"])
        for reason, value in sorted(self._stats.closes.items()):
            closes.add_metric([reason], value)
        yield closes


class _RelayCollector(Collector):
    def __init__(self, stats, mailbox, links_up: Callable[[], int]) -> None:
        self._stats = stats
        self._mailbox = mailbox
        self._links_up = links_up

    def collect(self) -> Iterable:
        packets = CounterMetricFamily("zentalk_relay_onion_packets", "Onion packets handled, by outcome.",
                                      labels=["result"])
        outcomes = dict.fromkeys(("forwarded", "delivered", "stored", "cover"), 0)
        outcomes.update(self._stats.onion)
        for result, value in sorted(outcomes.items()):
            packets.add_metric([result], value)
        yield packets
        dropped = CounterMetricFamily("zentalk_relay_onion_dropped", "Onion packets dropped, by reason.",
                                      labels=["reason"])
        reasons = dict.fromkeys(("bad_size", "bad_mac", "replay", "bad_payload", "unknown_next_hop"), 0)
        reasons.update(self._stats.dropped)
        for reason, value in sorted(reasons.items()):
            dropped.add_metric([reason], value)
        yield dropped
        yield GaugeMetricFamily("zentalk_mesh_links_up", "Authenticated links to other relays.",
                                value=self._links_up())
        store = self._mailbox.store
        if store is None:
            return
        yield GaugeMetricFamily("zentalk_mailbox_messages", "Messages waiting in the mailbox.", value=store.depth)
        yield GaugeMetricFamily("zentalk_mailbox_bytes", "Bytes of message bodies in the mailbox.", value=store.size)
        events = CounterMetricFamily("zentalk_mailbox_events", "Mailbox outcomes: stored, duplicate, delivered "
                                     "(acknowledged by the owner), expired.", labels=["event"])
        for name in ("stored", "duplicate", "delivered", "expired"):
            events.add_metric([name], getattr(store.stats, name if name != "duplicate" else "duplicates"))
        yield events
        refused = CounterMetricFamily("zentalk_mailbox_refused", "Messages the mailbox refused, by reason.",
                                      labels=["reason"])
        reasons = dict.fromkeys(("recipient_full", "mailbox_full", "too_large"), 0)
        reasons.update(store.stats.refused or {})
        for reason, value in sorted(reasons.items()):
            refused.add_metric([reason], value)
        yield refused


class _PexCollector(Collector):
    def __init__(self, stats, counts: Callable[[], dict[str, int]]) -> None:
        self._stats = stats
        self._counts = counts

    def collect(self) -> Iterable:
        peers = GaugeMetricFamily("zentalk_pex_peers", "Peers in the peer book, by state.", labels=["state"])
        for state, value in sorted(self._counts().items()):
            peers.add_metric([state], value)
        yield peers
        requests = CounterMetricFamily("zentalk_pex_requests", "PEX requests: out (sent, answered, malformed) and "
                                       "in (answered, malformed).", labels=["direction", "result"])
        values = {("in", "answered"): 0, ("out", "sent"): 0, ("out", "answered"): 0}
        values.update(self._stats.requests)
        for (direction, result), value in sorted(values.items()):
            requests.add_metric([direction, result], value)
        yield requests
        yield CounterMetricFamily("zentalk_pex_learned", "Candidates learned from PEX responses.",
                                  value=self._stats.learned)
        yield CounterMetricFamily("zentalk_pex_verified", "Peers verified by dialling and authentication.",
                                  value=self._stats.verified)
        refused = CounterMetricFamily("zentalk_pex_refused_entries", "PEX entries refused, by reason.",
                                      labels=["reason"])
        reasons = dict.fromkeys(("bogus_address", "private_address", "own_id", "own_address", "duplicate"), 0)
        reasons.update(self._stats.refused)
        for reason, value in sorted(reasons.items()):
            refused.add_metric([reason], value)
        yield refused


class _ServicesCollector(Collector):
    def __init__(self, states: Callable[[], dict[str, bool]]) -> None:
        self._states = states

    def collect(self) -> Iterable:
        up = GaugeMetricFamily(
            "zentalk_service_up", "1 while a service of the node runs, else 0.", labels=["service"]
        )
        for name, running in sorted(self._states().items()):
            up.add_metric([name], 1.0 if running else 0.0)
        yield up


class NodeMetrics:
    """The node's registry and the collectors that read its services."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        build = Gauge(
            "zentalk_build_info",
            "Version of the running node; always 1.",
            ["version", "python", "twisted"],
            registry=self.registry,
        )
        build.labels(__version__, platform.python_version(), twisted.__version__).set(1)

    def watch_stun(self, stats: BindingStats) -> None:
        self.registry.register(_StunCollector(stats))

    def watch_turn(self, stats: "_turn.TurnStats", gauges: Callable[[], dict]) -> None:
        self.registry.register(_TurnCollector(stats, gauges))

    def link_rtt_observer(self) -> Callable[[float], None]:
        rtt = Histogram("zentalk_link_rtt_seconds", "Round-trip times measured by PING/PONG.",
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0),
                        registry=self.registry)
        return rtt.observe

    def watch_links(self, stats: LinkStats, counts: Callable[[], dict[tuple[str, str], int]],
                    refusals: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_LinkCollector(stats, counts, refusals))

    def hop_latency_observer(self) -> Callable[[float], None]:
        hop = Histogram("zentalk_relay_hop_seconds", "Time to process one onion packet at this hop.",
                        buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
                        registry=self.registry)
        return hop.observe

    def watch_relay(self, stats, mailbox, links_up: Callable[[], int]) -> None:
        self.registry.register(_RelayCollector(stats, mailbox, links_up))

    def watch_pex(self, stats, counts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_PexCollector(stats, counts))

    def watch_services(self, states: Callable[[], dict[str, bool]]) -> None:
        self.registry.register(_ServicesCollector(states))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
