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
import time
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
from .dht.routing import Outcome
from .link.frames import FRAME_NAMES, ErrorCode
from .link.session import LinkStats
from .nat.binding import DROP_REASONS, BindingStats
from .nat import turn as _turn

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Label values that exist from the first scrape, so that the first event shows in rate().
_FAILURES = [code.label for code in ErrorCode if code is not ErrorCode.NORMAL]
HANDSHAKE_RESULTS = ["success", "resumed", "resume_rejected", *_FAILURES, *("peer_" + label for label in _FAILURES)]
LINK_REFUSALS = [ErrorCode.SHUTTING_DOWN.label, ErrorCode.SERVER_FULL.label, ErrorCode.TOO_MANY_CONNECTIONS_FROM_IP.label,
                 ErrorCode.TOO_MANY_PENDING_HANDSHAKES.label, ErrorCode.TOO_MANY_LINKS_FOR_PEER.label]
CLOSE_REASONS = [prefix + code.label for code in ErrorCode for prefix in ("", "peer_")]
ONION_DROPS = ["bad_size", "bad_mac", "replay", "bad_payload", "bad_instruction", "weak_key", "unknown_next_hop",
               "next_hop_busy", "mesh_queue_full", "mesh_pool_full"]


def _family(kind, name: str, documentation: str, labels: list[str], values, zeros=()):
    """A labelled family from ``values`` (label or label tuple -> number), ``zeros`` present from the start."""
    family = kind(name, documentation, labels=labels)
    merged = dict.fromkeys(zeros, 0)
    merged.update(values)
    for key, value in sorted(merged.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


def _counter(name, documentation, labels, values, zeros=()):
    return _family(CounterMetricFamily, name, documentation, labels, values, zeros)


def _gauge(name, documentation, labels, values, zeros=()):
    return _family(GaugeMetricFamily, name, documentation, labels, values, zeros)


#: Usage statistics are rounded down to these steps when blurred.
EVENTS_STEP = 16
BYTES_STEP = 64 * 1024


class Blur:
    """Usage statistics as a scrape shows them: rounded down and refreshed at most once per ``interval``.

    A relay with few users would otherwise show, scrape by scrape, when one
    of them sent a message and how big it was. Counters stay monotonic
    (each snapshot rounds a larger value down); an ``interval`` of 0 turns
    blurring off.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._snapshots: dict[str, tuple[float, dict]] = {}

    def __call__(self, name: str, values: dict, step: int) -> dict:
        if self.interval <= 0:
            return dict(values)
        now = self._clock()
        taken = self._snapshots.get(name)
        if taken is None or now - taken[0] >= self.interval:
            taken = self._snapshots[name] = (now, {key: value - value % step for key, value in values.items()})
        return taken[1]


class _StunCollector(Collector):
    def __init__(self, stats: BindingStats) -> None:
        self._stats = stats

    def collect(self) -> Iterable:
        yield _counter("zentalk_stun_requests", "STUN requests and indications answered or accepted, by method and "
                       "result.", ["method", "result"], self._stats.request_counts(),
                       [("binding", "success"), ("binding", "error"), ("binding", "indication")])
        yield _counter("zentalk_stun_dropped", "STUN datagrams dropped without an answer, by reason.", ["reason"],
                       self._stats.dropped, DROP_REASONS)


class _TurnCollector(Collector):
    def __init__(self, stats: "_turn.TurnStats", gauges: Callable[[], dict], blur: Blur) -> None:
        self._stats = stats
        self._gauges = gauges
        self._blur = blur

    def collect(self) -> Iterable:
        live = self._gauges()
        stats = self._stats
        yield _gauge("zentalk_turn_allocations_active", "TURN allocations held now, by client transport and relayed "
                     "address family.", ["transport", "family"], live["allocations"],
                     [(transport, family) for transport in ("udp", "tcp", "tls") for family in ("ipv4", "ipv6")])
        yield GaugeMetricFamily("zentalk_turn_permissions_active", "TURN permissions held now.", value=live["permissions"])
        yield GaugeMetricFamily("zentalk_turn_channels_active", "TURN channels bound now.", value=live["channels"])
        requests = dict(stats.requests)
        yield _counter("zentalk_turn_allocations", "Allocate requests answered, by result.", ["result"],
                       {result: requests.get(("allocate", result), 0) for result in _turn.RESULTS})
        yield _counter("zentalk_turn_requests", "TURN requests answered, by method and result.", ["method", "result"],
                       requests, [(method, "success") for method in _turn.METHODS[:-1]])
        blur = self._blur
        yield _counter("zentalk_turn_relayed_bytes", "Payload bytes relayed, by direction (blurred).", ["direction"],
                       blur("turn_bytes", {"to_peer": stats.to_peer_bytes, "to_client": stats.to_client_bytes},
                            BYTES_STEP))
        yield _counter("zentalk_turn_relayed_packets", "Packets relayed, by direction (blurred).", ["direction"],
                       blur("turn_packets", {"to_peer": stats.to_peer_packets, "to_client": stats.to_client_packets},
                            EVENTS_STEP))
        yield _counter("zentalk_turn_refusals", "Requests and packets refused by policy or a limit, by reason.",
                       ["reason"], stats.refusals, _turn.REFUSAL_REASONS)
        yield _counter("zentalk_turn_dropped", "TURN messages and packets dropped without an answer, by reason.",
                       ["reason"], stats.dropped, _turn.DROP_REASONS)


class _LinkCollector(Collector):
    def __init__(self, stats: LinkStats, counts: Callable[[], dict[tuple[str, str], int]],
                 refusals: Callable[[], dict[str, int]], blur: Blur) -> None:
        self._stats = stats
        self._counts = counts
        self._refusals = refusals
        self._blur = blur

    def collect(self) -> Iterable:
        stats = self._stats
        yield _gauge("zentalk_link_links", "Links held now, by state and peer kind.", ["state", "kind"],
                     self._counts(), [("active", "client"), ("active", "relay"), ("handshake", "unknown")])
        yield _counter("zentalk_link_handshakes", "Link handshakes that ended, by result.", ["result"],
                       stats.handshakes, HANDSHAKE_RESULTS)
        frames = {("in", name): value for name, value in stats.frames_in.items()}
        frames.update({("out", name): value for name, value in stats.frames_out.items()})
        yield _counter("zentalk_link_frames", "Link frames by direction and type (blurred).", ["direction", "type"],
                       self._blur("link_frames", frames, EVENTS_STEP),
                       [(direction, name) for direction in ("in", "out") for name in FRAME_NAMES])
        yield _counter("zentalk_link_bytes", "Bytes on links, by direction (records, before TLS; blurred).",
                       ["direction"], self._blur("link_bytes", {"in": stats.bytes_in, "out": stats.bytes_out},
                                                 BYTES_STEP))
        yield _counter("zentalk_link_refusals", "Links refused by a limit, by reason.", ["reason"], self._refusals(),
                       LINK_REFUSALS)
        yield _counter("zentalk_link_rate_limited", "Frames refused by a per-link token bucket.", ["what"],
                       stats.rate_limited, ["messages", "pex"])
        yield _counter("zentalk_link_closes", "Links closed, by reason (peer_ when the peer closed).", ["reason"],
                       stats.closes, CLOSE_REASONS)


class _RelayCollector(Collector):
    def __init__(self, stats, mailbox, links_up: Callable[[], int], mix_held: Callable[[], int], blur: Blur) -> None:
        self._stats = stats
        self._mailbox = mailbox
        self._links_up = links_up
        self._mix_held = mix_held
        self._blur = blur

    def collect(self) -> Iterable:
        blur = self._blur
        yield _counter("zentalk_relay_onion_packets", "Onion packets handled, by outcome (blurred).", ["result"],
                       blur("onion", self._stats.onion, EVENTS_STEP), ["forwarded", "delivered", "stored", "cover"])
        yield _counter("zentalk_relay_onion_dropped", "Onion packets dropped, by reason.", ["reason"],
                       self._stats.dropped, ONION_DROPS)
        yield _counter("zentalk_relay_cover_loops", "Cover loop packets this relay started (sent) or could not "
                       "(no_path: no linked relay, or fewer than two known); loops that came back count as "
                       "zentalk_relay_onion_packets_total{result=\"cover\"}.", ["result"], self._stats.cover,
                       ["sent", "no_path"])
        yield GaugeMetricFamily("zentalk_relay_mix_held", "Onion packets held for their mixing delay now.",
                                value=self._mix_held())
        yield GaugeMetricFamily("zentalk_mesh_links_up", "Authenticated links to other relays.",
                                value=self._links_up())
        store = self._mailbox.store
        if store is None:
            return
        size = blur("mailbox_size", {"messages": store.depth, "bytes": store.size}, EVENTS_STEP)
        yield GaugeMetricFamily("zentalk_mailbox_messages", "Messages waiting in the mailbox (blurred).",
                                value=size["messages"])
        yield GaugeMetricFamily("zentalk_mailbox_quota_bytes", "The mailbox's quota for everyone: mailbox.total_bytes.",
                                value=store.limits.total_bytes)
        yield GaugeMetricFamily("zentalk_mailbox_bytes", "Bytes of message bodies in the mailbox (blurred).",
                                value=blur("mailbox_bytes", {"bytes": store.size}, BYTES_STEP)["bytes"])
        stats = store.stats
        yield _counter("zentalk_mailbox_events", "Mailbox outcomes: stored, duplicate, delivered (acknowledged by "
                       "the owner), expired (blurred).", ["event"],
                       blur("mailbox_events", {"stored": stats.stored, "duplicate": stats.duplicates,
                                               "delivered": stats.delivered, "expired": stats.expired}, EVENTS_STEP))
        yield CounterMetricFamily("zentalk_mailbox_commits", "Group commits of the mailbox; stored messages / "
                                  "commits is the mean batch (blurred).",
                                  value=blur("mailbox_commits", {"commits": stats.commits}, EVENTS_STEP)["commits"])
        yield _counter("zentalk_mailbox_refused", "Messages the mailbox refused, by reason.", ["reason"],
                       stats.refused or {}, ["recipient_full", "mailbox_full", "too_large"])


class _PexCollector(Collector):
    def __init__(self, stats, counts: Callable[[], dict[str, int]]) -> None:
        self._stats = stats
        self._counts = counts

    def collect(self) -> Iterable:
        yield _gauge("zentalk_pex_peers", "Peers in the peer book, by state.", ["state"], self._counts())
        yield _counter("zentalk_pex_requests", "PEX requests: out (sent, answered, malformed) and in (answered, "
                       "malformed).", ["direction", "result"], self._stats.requests,
                       [("in", "answered"), ("out", "sent"), ("out", "answered")])
        yield CounterMetricFamily("zentalk_pex_learned", "Candidates learned from PEX responses.",
                                  value=self._stats.learned)
        yield CounterMetricFamily("zentalk_pex_verified", "Peers verified by dialling and authentication.",
                                  value=self._stats.verified)
        yield _counter("zentalk_pex_refused_entries", "PEX entries refused, by reason.", ["reason"],
                       self._stats.refused, ["bogus_address", "private_address", "own_id", "own_address", "duplicate",
                                             "no_address", "bad_port"])


DHT_METHODS = ("ping", "find_node", "get_peers", "announce_peer", "get", "put")


class _DhtCollector(Collector):
    """The DHT nodes' plain counters (one :class:`DhtStats` per address family) and live gauges."""

    def __init__(self, service) -> None:
        self._service = service

    def collect(self) -> Iterable:
        service = self._service
        live = service.gauges()
        stats = service.node_stats()
        families = sorted(stats)
        nodes = {(family, state): count for family, numbers in live.items()
                 for state, count in numbers["nodes"].items()}
        yield _gauge("zentalk_dht_nodes", "Nodes in the routing table, by address family and BEP 5 state.",
                     ["family", "state"], nodes,
                     [(f, s) for f in families for s in ("good", "questionable", "bad")])
        for name, key, documentation in (
                ("zentalk_dht_buckets", "buckets", "k-buckets of the routing table."),
                ("zentalk_dht_replacements", "replacements", "Nodes waiting in the buckets' replacement caches."),
                ("zentalk_dht_torrents", "torrents", "Info-hashes with announced peers stored here."),
                ("zentalk_dht_peers", "peers", "Announced peers stored here."),
                ("zentalk_dht_items", "items", "BEP 44 items stored here."),
                ("zentalk_dht_operations", "operations", "Lookups, announces and puts in progress."),
                ("zentalk_dht_transactions", "transactions", "Queries sent and not yet answered or timed out.")):
            yield _gauge(name, documentation, ["family"], {f: numbers[key] for f, numbers in live.items()})

        def merged(attribute: str) -> dict:
            total: dict = {}
            for family, counters in stats.items():
                for key, value in getattr(counters, attribute).items():
                    full = (family, *key) if isinstance(key, tuple) else (family, key)
                    total[full] = total.get(full, 0) + value
            return total

        yield _counter("zentalk_dht_queries_received", "KRPC queries received and answered, by method and result "
                       "(ok or the KRPC error code).", ["family", "method", "result"], merged("queries"),
                       [(f, m, "ok") for f in families for m in DHT_METHODS])
        yield _counter("zentalk_dht_queries_sent", "KRPC queries sent, by method.", ["family", "method"],
                       merged("sent"), [(f, m) for f in families for m in DHT_METHODS])
        yield _counter("zentalk_dht_query_outcomes", "Outcomes of the queries we sent: response, error or timeout.",
                       ["family", "method", "outcome"], merged("outcomes"),
                       [(f, m, o) for f in families for m in ("ping", "find_node", "get_peers", "get")
                        for o in ("response", "timeout")])
        yield _counter("zentalk_dht_dropped", "Datagrams dropped without an answer, by reason (rate_limited: over "
                       "the per-IP query rate).", ["family", "reason"], merged("dropped"),
                       [(f, "rate_limited") for f in families])
        yield _counter("zentalk_dht_lookups", "Lookups finished, by kind and whether they found what they looked "
                       "for.", ["family", "kind", "result"], merged("lookups"),
                       [(f, k, r) for f in families for k in ("find_node", "get_peers", "get") for r in ("found", "empty")])
        yield _counter("zentalk_dht_routing_events", "What became of nodes we heard from (inserted, replaced, "
                       "full, refused...).", ["family", "outcome"], merged("routing"),
                       [(f, outcome.value) for f in families for outcome in Outcome])
        yield _counter("zentalk_dht_answers_trimmed", "Answers cut to the amplification budget.", ["family"],
                       {f: counters.trimmed for f, counters in stats.items()})
        yield _counter("zentalk_dht_received_bytes", "Bytes of DHT datagrams received.", ["family"],
                       {f: counters.bytes_received for f, counters in stats.items()})
        yield _counter("zentalk_dht_sent_bytes", "Bytes of DHT datagrams sent.", ["family"],
                       {f: counters.bytes_sent for f, counters in stats.items()})
        yield _counter("zentalk_dht_record_publishes", "Publications of this relay's record: stored (by at least "
                       "one node), nobody (no node took it), no_address (no public address to publish).",
                       ["result"], service.stats.publishes, ["stored", "nobody", "no_address"])
        yield GaugeMetricFamily("zentalk_dht_relays_known", "Other relays whose verified record this node holds.",
                                value=len(service.relays))


class _ServicesCollector(Collector):
    def __init__(self, states: Callable[[], dict[str, bool]]) -> None:
        self._states = states

    def collect(self) -> Iterable:
        yield _gauge("zentalk_service_up", "1 while a service of the node runs, else 0.", ["service"],
                     {name: 1.0 if running else 0.0 for name, running in self._states().items()})


class NodeMetrics:
    """The node's registry and the collectors that read its services."""

    def __init__(self, blur_interval: float = 0.0) -> None:
        self.blur = Blur(blur_interval)
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
        self.registry.register(_TurnCollector(stats, gauges, self.blur))

    def link_rtt_observer(self) -> Callable[[float], None]:
        rtt = Histogram("zentalk_link_rtt_seconds", "Round-trip times measured by PING/PONG.",
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0),
                        registry=self.registry)
        return rtt.observe

    def watch_links(self, stats: LinkStats, counts: Callable[[], dict[tuple[str, str], int]],
                    refusals: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_LinkCollector(stats, counts, refusals, self.blur))

    def hop_latency_observer(self) -> Callable[[float], None]:
        hop = Histogram("zentalk_relay_hop_seconds", "Time to process one onion packet at this hop.",
                        buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
                        registry=self.registry)
        return hop.observe

    def mix_held_observer(self) -> Callable[[float], None]:
        held = Histogram("zentalk_relay_mix_delay_seconds", "Time onion packets were held for mixing.",
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=self.registry)
        return held.observe

    def watch_relay(self, stats, mailbox, links_up: Callable[[], int], mix_held: Callable[[], int]) -> None:
        self.registry.register(_RelayCollector(stats, mailbox, links_up, mix_held, self.blur))

    def watch_pex(self, stats, counts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_PexCollector(stats, counts))

    def watch_dht(self, service) -> None:
        self.registry.register(_DhtCollector(service))

    def dht_lookup_observer(self) -> Callable:
        duration = Histogram("zentalk_dht_lookup_seconds", "Time a lookup (and its announce or put) took, by kind.",
                             ["kind"], buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0),
                             registry=self.registry)
        rounds = Histogram("zentalk_dht_lookup_rounds", "Rounds of a lookup (seeds are round 1), by kind.",
                           ["kind"], buckets=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20), registry=self.registry)
        for kind in ("bootstrap", "find_node", "get_peers", "announce", "get", "put"):
            duration.labels(kind)
            rounds.labels(kind)

        def observe(done) -> None:
            duration.labels(done.kind).observe(max(0.0, done.result.finished - done.result.started))
            rounds.labels(done.kind).observe(done.result.rounds)

        return observe

    def watch_monitoring(self, refused: Callable[[], int]) -> None:
        class _Monitoring(Collector):
            def collect(self) -> Iterable:
                yield CounterMetricFamily("zentalk_metrics_refused_connections", "Connections to the metrics "
                                          "listener from outside metrics.allow, closed at once.", value=refused())

        self.registry.register(_Monitoring())

    def watch_services(self, states: Callable[[], dict[str, bool]]) -> None:
        self.registry.register(_ServicesCollector(states))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
