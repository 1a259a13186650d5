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
        closes = CounterMetricFamily("zentalk_link_closes", "Links closed, by reason (peer_ when the peer closed).",
                                     labels=["reason"])
        for reason, value in sorted(self._stats.closes.items()):
            closes.add_metric([reason], value)
        yield closes


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

    def link_rtt_observer(self) -> Callable[[float], None]:
        rtt = Histogram("zentalk_link_rtt_seconds", "Round-trip times measured by PING/PONG.",
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0),
                        registry=self.registry)
        return rtt.observe

    def watch_links(self, stats: LinkStats, counts: Callable[[], dict[tuple[str, str], int]],
                    refusals: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_LinkCollector(stats, counts, refusals))

    def watch_services(self, states: Callable[[], dict[str, bool]]) -> None:
        self.registry.register(_ServicesCollector(states))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
