"""Writes zentalk-relay.json, the Grafana dashboard of zentalk-relay nodes.

    python3 deploy/grafana/dashboard.py > deploy/grafana/zentalk-relay.json

The dashboard is generated so that its panels stay uniform (one selector, one
rate interval, one layout rule); edit this file, not the JSON, and regenerate.
tests/unit/test_deploy_files.py fails if the two differ.

Every query selects ``job=~"$job", instance=~"$instance"``; rates use
``$__rate_interval``. Metric names are those of docs/metrics.md.
"""

from __future__ import annotations

import json
import sys

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SELECTOR = 'job=~"$job", instance=~"$instance"'
WIDTH = 24


def sel(metric: str, extra: str = "") -> str:
    """``metric{job=~"$job", instance=~"$instance"[, extra]}``."""
    return f"{metric}{{{SELECTOR}{', ' + extra if extra else ''}}}"


def rate(metric: str, extra: str = "") -> str:
    return f"rate({sel(metric, extra)}[$__rate_interval])"


def quantiles(metric: str, by: str = "", qs=(0.5, 0.9, 0.99)) -> list[tuple[str, str]]:
    """histogram_quantile targets of ``metric``_bucket over the selected instances."""
    group = f"le, {by}" if by else "le"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [(f"histogram_quantile({q}, sum by ({group}) ({rate(metric + '_bucket')}))", f"{prefix}p{round(q * 100)}")
            for q in qs]


class Layout:
    """Places panels left to right in rows of 24 columns."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.x = 0
        self.y = 0
        self.row_height = 0
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "id": self._id(), "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": self.y}})
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def add(self, panel: dict, w: int, h: int) -> None:
        if self.x + w > WIDTH:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)


def targets(queries: list[tuple[str, str]], **extra) -> list[dict]:
    return [{"datasource": DATASOURCE, "refId": chr(ord("A") + index), "expr": expr, "legendFormat": legend,
             "range": not extra.get("instant", False), **extra}
            for index, (expr, legend) in enumerate(queries)]


#: Usage statistics the node blurs (docs/metrics.md): counted in steps of 16 events or 64 KiB and
#: refreshed once per metrics.blur_interval (60 s), so their rates need windows of a few minutes.
BLURRED = " Blurred by the node: counted in steps and refreshed once a minute, so rates use 2-minute windows at least."


def timeseries(title: str, description: str, queries: list[tuple[str, str]], unit: str = "short",
               stack: bool = False, minimum: float | None = 0, blurred: bool = False) -> dict:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0, "showPoints": "never",
              "spanNulls": False, "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults = {"unit": unit, "custom": custom}
    if minimum is not None:
        defaults["min"] = minimum
    panel = {"type": "timeseries", "title": title, "description": description + (BLURRED if blurred else ""),
             "datasource": DATASOURCE, "targets": targets(queries),
             "fieldConfig": {"defaults": defaults, "overrides": []},
             "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                         "tooltip": {"mode": "multi", "sort": "desc"}}}
    if blurred:
        panel["interval"] = "2m"  # the smallest $__interval; $__rate_interval adds a scrape interval
    return panel


def stat(title: str, description: str, queries: list[tuple[str, str]], unit: str = "short",
         mappings: list | None = None, thresholds: list | None = None) -> dict:
    steps = thresholds or [{"color": "green", "value": None}]
    return {"type": "stat", "title": title, "description": description, "datasource": DATASOURCE,
            "targets": targets(queries),
            "fieldConfig": {"defaults": {"unit": unit, "mappings": mappings or [],
                                         "thresholds": {"mode": "absolute", "steps": steps}},
                            "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "none", "textMode": "value_and_name",
                        "justifyMode": "auto", "orientation": "auto"}}


UP_DOWN = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red", "index": 0},
                                         "1": {"text": "UP", "color": "green", "index": 1}}}]
RED_BELOW_ONE = [{"color": "red", "value": None}, {"color": "green", "value": 1}]


def build_info_table() -> dict:
    return {"type": "table", "title": "Versions",
            "description": "zentalk_build_info: the version of each node and of its Python and Twisted.",
            "datasource": DATASOURCE,
            "targets": targets([(f"max by (instance, version, python, twisted) ({sel('zentalk_build_info')})", "")],
                               instant=True, format="table"),
            "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True},
                                                                "indexByName": {}, "renameByName": {}}}],
            "fieldConfig": {"defaults": {}, "overrides": []}, "options": {"showHeader": True}}


def dashboard() -> dict:
    L = Layout()
    by = "sum by"

    L.row("Node")
    L.add(stat("Up", "Whether Prometheus could scrape the node (up).",
               [(sel("up"), "{{instance}}")], mappings=UP_DOWN, thresholds=RED_BELOW_ONE), 4, 5)
    L.add(stat("Uptime", "Time since the process started (process_start_time_seconds).",
               [(f"time() - {sel('process_start_time_seconds')}", "{{instance}}")], unit="s"), 4, 5)
    L.add(stat("Services up", "zentalk_service_up: 1 while each service of the node runs; /healthz is 503 "
               "when one is down.", [(sel("zentalk_service_up"), "{{instance}} {{service}}")],
               mappings=UP_DOWN, thresholds=RED_BELOW_ONE), 8, 5)
    L.add(build_info_table(), 8, 5)
    L.add(timeseries("File descriptors used", "Open file descriptors over the process limit; ZentalkFileDescriptors* "
                     "alerts fire at 80% and 95%.",
                     [(f"{sel('process_open_fds')} / {sel('process_max_fds')}", "{{instance}}")],
                     unit="percentunit"), 6, 7)
    L.add(timeseries("Resident memory", "process_resident_memory_bytes.",
                     [(sel("process_resident_memory_bytes"), "{{instance}}")], unit="bytes"), 6, 7)
    L.add(timeseries("CPU", "CPU time per second (1 = one core), user and system together.",
                     [(rate("process_cpu_seconds_total"), "{{instance}}")], unit="percentunit"), 6, 7)
    L.add(timeseries("Metrics connections refused", "Connections to the metrics listener from outside "
                     "metrics.allow, closed at once: someone else is trying to read /metrics.",
                     [(f"sum by (instance) ({rate('zentalk_metrics_refused_connections_total')})", "{{instance}}")],
                     unit="ops"), 6, 7)

    L.row("STUN")
    L.add(timeseries("STUN requests", "Binding requests answered (success, error) and indications accepted.",
                     [(f"{by} (method, result) ({rate('zentalk_stun_requests_total')})", "{{method}} {{result}}")],
                     unit="reqps"), 12, 7)
    L.add(timeseries("STUN datagrams dropped", "Datagrams dropped without an answer, by reason.",
                     [(f"{by} (reason) ({rate('zentalk_stun_dropped_total')})", "{{reason}}")], unit="pps"), 12, 7)

    L.row("TURN")
    L.add(timeseries("TURN allocations", "Allocations held now, by client transport and relayed family "
                     "(a dual allocation counts in both families).",
                     [(f"{by} (transport, family) ({sel('zentalk_turn_allocations_active')})",
                       "{{transport}} {{family}}")]), 8, 7)
    L.add(timeseries("Permissions and channels", "Permissions and channels held now.",
                     [(f"sum({sel('zentalk_turn_permissions_active')})", "permissions"),
                      (f"sum({sel('zentalk_turn_channels_active')})", "channels")]), 8, 7)
    L.add(timeseries("Allocate results", "Allocate requests answered, by result (success or the error).",
                     [(f"{by} (result) ({rate('zentalk_turn_allocations_total')})", "{{result}}")],
                     unit="reqps"), 8, 7)
    L.add(timeseries("TURN requests", "Every TURN request answered, by method and result.",
                     [(f"{by} (method, result) ({rate('zentalk_turn_requests_total')})", "{{method}} {{result}}")],
                     unit="reqps"), 12, 7)
    L.add(timeseries("Relayed traffic", "Payload relayed to peers and back to clients.",
                     [(f"{by} (direction) ({rate('zentalk_turn_relayed_bytes_total')})", "{{direction}}")],
                     blurred=True, unit="Bps"), 6, 7)
    L.add(timeseries("Relayed packets", "Packets relayed to peers and back to clients.",
                     [(f"{by} (direction) ({rate('zentalk_turn_relayed_packets_total')})", "{{direction}}")],
                     blurred=True, unit="pps"), 6, 7)
    L.add(timeseries("TURN refusals", "Requests and packets refused by policy or a limit. total_quota, relay_ports "
                     "and total_bandwidth are node-wide limits (ZentalkTurnCapacityRefusals); peer_* are "
                     "forbidden peer addresses.",
                     [(f"{by} (reason) ({rate('zentalk_turn_refusals_total')})", "{{reason}}")], unit="ops"), 12, 7)
    L.add(timeseries("TURN drops", "TURN messages and packets dropped without an answer, by reason.",
                     [(f"{by} (reason) ({rate('zentalk_turn_dropped_total')})", "{{reason}}")], unit="pps"), 12, 7)

    L.row("Links")
    L.add(timeseries("Links", "Links held now, by state and peer kind (unknown until HELLO).",
                     [(f"{by} (state, kind) ({sel('zentalk_link_links')})", "{{state}} {{kind}}")],
                     stack=True), 8, 7)
    L.add(timeseries("Handshakes", "Handshakes that ended, by result: success, resumed, or the error that ended "
                     "them (peer_* when the peer closed).",
                     [(f"{by} (result) ({rate('zentalk_link_handshakes_total')})", "{{result}}")],
                     unit="ops"), 8, 7)
    failed = 'result!~"success|resumed"'
    L.add(timeseries("Handshake failures", "Share of the handshakes that failed; ZentalkHandshakeFailures fires "
                     "above 50% (over 10 minutes).",
                     [(f"sum by (instance) ({rate('zentalk_link_handshakes_total', failed)}) / "
                       f"sum by (instance) ({rate('zentalk_link_handshakes_total')})", "{{instance}}")],
                     unit="percentunit"), 8, 7)
    L.add(timeseries("Frames", "Frames in and out by type.",
                     [(f"{by} (direction, type) ({rate('zentalk_link_frames_total')})", "{{direction}} {{type}}")],
                     blurred=True, unit="ops"), 12, 8)
    L.add(timeseries("Link bytes", "Bytes of records on links, before TLS.",
                     [(f"{by} (direction) ({rate('zentalk_link_bytes_total')})", "{{direction}}")],
                     blurred=True, unit="Bps"), 12, 8)
    L.add(timeseries("Link refusals", "Links refused by a limit, by reason (ZentalkLinkRefusals).",
                     [(f"{by} (reason) ({rate('zentalk_link_refusals_total')})", "{{reason}}")], unit="ops"), 8, 7)
    L.add(timeseries("Link closes", "Links closed, by error code; peer_ when the peer closed.",
                     [(f"{by} (reason) ({rate('zentalk_link_closes_total')})", "{{reason}}")], unit="ops"), 8, 7)
    L.add(timeseries("Rate-limited frames", "Frames refused by a per-link token bucket: messages (SEND and ONION "
                     "from clients), pex.",
                     [(f"{by} (what) ({rate('zentalk_link_rate_limited_total')})", "{{what}}")], unit="ops"), 8, 7)
    L.add(timeseries("Link round-trip time", "Quantiles of PING/PONG round trips (each link pings every 30-35 s).",
                     quantiles("zentalk_link_rtt_seconds"), unit="s"), 24, 7)

    L.row("Onion relay")
    L.add(timeseries("Onion packets", "Onion packets handled: forwarded to the next relay, delivered to a connected "
                     "recipient, stored in a mailbox, cover (dropped silently at their end).",
                     [(f"{by} (result) ({rate('zentalk_relay_onion_packets_total')})", "{{result}}")],
                     blurred=True, unit="pps"), 8, 7)
    L.add(timeseries("Onion drops", "Onion packets dropped, by reason (ZentalkOnionDrops).",
                     [(f"{by} (reason) ({rate('zentalk_relay_onion_dropped_total')})", "{{reason}}")],
                     unit="pps"), 8, 7)
    L.add(timeseries("Hop processing time", "Quantiles of the time to process one onion packet at this hop.",
                     quantiles("zentalk_relay_hop_seconds"), unit="s"), 8, 7)
    L.add(timeseries("Cover loops", "Cover loop packets this relay started (sent) or could not (no_path: no "
                     "linked relay, or fewer than two known); those that came back are onion packets 'cover'.",
                     [(f"{by} (result) ({rate('zentalk_relay_cover_loops_total')})", "{{result}}")],
                     unit="pps"), 8, 7)
    L.add(timeseries("Held for mixing", "Onion packets held for their mixing delay now.",
                     [(sel("zentalk_relay_mix_held"), "{{instance}}")]), 8, 7)
    L.add(timeseries("Mixing delay", "Quantiles of the time onion packets were held for mixing (onion.mix_delay "
                     "is the mean).", quantiles("zentalk_relay_mix_delay_seconds"), unit="s"), 8, 7)

    L.row("Mailbox")
    L.add(timeseries("Mailbox messages", "Messages waiting for offline recipients.",
                     [(sel("zentalk_mailbox_messages"), "{{instance}}")]), 8, 7)
    L.add(timeseries("Mailbox bytes", "Bytes of message bodies in the mailbox.",
                     [(sel("zentalk_mailbox_bytes"), "{{instance}}")], unit="bytes"), 8, 7)
    L.add(timeseries("Mailbox quota used", "Mailbox bytes over mailbox.total_bytes (zentalk_mailbox_quota_bytes). "
                     "ZentalkMailboxNearQuota fires above 80%.",
                     [(f"{sel('zentalk_mailbox_bytes')} / on (job, instance) {sel('zentalk_mailbox_quota_bytes')}",
                       "{{instance}}")], unit="percentunit"), 8, 7)
    L.add(timeseries("Mailbox events", "stored, duplicate, delivered (acknowledged by the owner), expired.",
                     [(f"{by} (event) ({rate('zentalk_mailbox_events_total')})", "{{event}}")],
                     blurred=True, unit="ops"), 12, 7)
    L.add(timeseries("Mailbox refusals", "Messages refused: recipient_full, mailbox_full (ZentalkMailboxFull), "
                     "too_large.",
                     [(f"{by} (reason) ({rate('zentalk_mailbox_refused_total')})", "{{reason}}")], unit="ops"), 12, 7)

    L.row("Mesh and PEX")
    L.add(timeseries("Mesh links", "Authenticated links to other relays.",
                     [(sel("zentalk_mesh_links_up"), "{{instance}}")]), 8, 7)
    L.add(timeseries("Peer book", "Peers in the PEX peer book, by state.",
                     [(f"{by} (state) ({sel('zentalk_pex_peers')})", "{{state}}")], stack=True), 8, 7)
    L.add(timeseries("PEX requests", "PEX requests out (sent, answered, malformed, too_many) and in.",
                     [(f"{by} (direction, result) ({rate('zentalk_pex_requests_total')})",
                       "{{direction}} {{result}}")], unit="reqps"), 8, 7)
    L.add(timeseries("PEX learned and verified", "Candidates learned from PEX responses, and peers verified by "
                     "dialling and authentication.",
                     [(f"sum({rate('zentalk_pex_learned_total')})", "learned"),
                      (f"sum({rate('zentalk_pex_verified_total')})", "verified")], unit="ops"), 12, 7)
    L.add(timeseries("PEX entries refused", "Entries of PEX responses refused, by reason.",
                     [(f"{by} (reason) ({rate('zentalk_pex_refused_entries_total')})", "{{reason}}")],
                     unit="ops"), 12, 7)

    L.row("DHT")
    L.add(timeseries("Routing table", "Nodes in the routing table by BEP 5 state and family "
                     "(ZentalkDhtNoGoodNodes, ZentalkDhtTableCollapsing).",
                     [(f"{by} (family, state) ({sel('zentalk_dht_nodes')})", "{{family}} {{state}}")],
                     stack=True), 8, 7)
    L.add(timeseries("Buckets and replacements", "k-buckets, and nodes waiting in replacement caches.",
                     [(f"{by} (family) ({sel('zentalk_dht_buckets')})", "buckets {{family}}"),
                      (f"{by} (family) ({sel('zentalk_dht_replacements')})", "replacements {{family}}")]), 8, 7)
    L.add(timeseries("Relays known", "Other relays whose verified record this node holds.",
                     [(sel("zentalk_dht_relays_known"), "{{instance}}")]), 8, 7)
    L.add(timeseries("Queries received", "Queries answered, by method and result (ok or the KRPC error code).",
                     [(f"{by} (method, result) ({rate('zentalk_dht_queries_received_total')})",
                       "{{method}} {{result}}")], unit="reqps"), 8, 7)
    L.add(timeseries("Queries sent", "Queries this node sent, by method.",
                     [(f"{by} (method) ({rate('zentalk_dht_queries_sent_total')})", "{{method}}")],
                     unit="reqps"), 8, 7)
    L.add(timeseries("Query outcomes", "What became of the queries sent: response, error, timeout.",
                     [(f"{by} (outcome) ({rate('zentalk_dht_query_outcomes_total')})", "{{outcome}}")],
                     unit="reqps"), 8, 7)
    L.add(timeseries("Lookups", "Lookups finished, by kind and result (found or empty).",
                     [(f"{by} (kind, result) ({rate('zentalk_dht_lookups_total')})", "{{kind}} {{result}}")],
                     unit="ops"), 8, 7)
    L.add(timeseries("Lookup time", "Time a lookup (with its announce or put) took, by kind.",
                     quantiles("zentalk_dht_lookup_seconds", by="kind", qs=(0.5, 0.9)), unit="s"), 8, 7)
    L.add(timeseries("Lookup rounds", "Rounds of a lookup (seeds are round 1), by kind.",
                     quantiles("zentalk_dht_lookup_rounds", by="kind", qs=(0.5, 0.9))), 8, 7)
    L.add(timeseries("Stored for others", "Info-hashes with peers, announced peers, and BEP 44 items stored here.",
                     [(f"{by} (family) ({sel('zentalk_dht_torrents')})", "torrents {{family}}"),
                      (f"{by} (family) ({sel('zentalk_dht_peers')})", "peers {{family}}"),
                      (f"{by} (family) ({sel('zentalk_dht_items')})", "items {{family}}")]), 8, 7)
    L.add(timeseries("Work in progress", "Lookups, announces and puts in progress; queries awaiting an answer.",
                     [(f"{by} (family) ({sel('zentalk_dht_operations')})", "operations {{family}}"),
                      (f"{by} (family) ({sel('zentalk_dht_transactions')})", "transactions {{family}}")]), 8, 7)
    L.add(timeseries("Record publishes (last hour)", "This relay's record published: stored (by at least one "
                     "node), nobody, no_address (ZentalkDhtRecordNotPublished).",
                     [(f"{by} (result) (increase({sel('zentalk_dht_record_publishes_total')}[1h]))", "{{result}}")]),
          8, 7)
    L.add(timeseries("DHT traffic", "Bytes of DHT datagrams.",
                     [(f"sum({rate('zentalk_dht_received_bytes_total')})", "received"),
                      (f"sum({rate('zentalk_dht_sent_bytes_total')})", "sent")], unit="Bps"), 8, 7)
    L.add(timeseries("Routing events", "What became of nodes heard from: added, updated, replacement, refused...",
                     [(f"{by} (outcome) ({rate('zentalk_dht_routing_events_total')})", "{{outcome}}")],
                     unit="ops"), 8, 7)
    L.add(timeseries("DHT drops", "Datagrams dropped (rate_limited: over dht.queries_per_second for one source "
                     "IP), and answers cut to the amplification budget.",
                     [(f"{by} (reason) ({rate('zentalk_dht_dropped_total')})", "{{reason}}"),
                      (f"sum({rate('zentalk_dht_answers_trimmed_total')})", "answers trimmed")], unit="pps"), 8, 7)

    variable_query = {"type": "query", "datasource": DATASOURCE, "refresh": 2, "sort": 1, "hide": 0,
                      "regex": "", "skipUrlSync": False, "options": []}
    job_query = "label_values(zentalk_build_info, job)"
    instance_query = 'label_values(zentalk_build_info{job=~"$job"}, instance)'
    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
            {"type": "panel", "id": "table", "name": "Table", "version": ""},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
        ],
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": "zentalk-relay nodes: STUN, TURN, links, onion relay, mailbox, mesh, PEX and DHT. "
                       "Generated by deploy/grafana/dashboard.py.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "liveNow": False,
        "panels": L.panels,
        "refresh": "30s",
        "schemaVersion": 38,
        "tags": ["zentalk", "zentalk-relay"],
        "templating": {"list": [
            {"name": "DS_PROMETHEUS", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
             "regex": "", "skipUrlSync": False},
            {**variable_query, "name": "job", "label": "Job", "definition": job_query,
             "query": {"query": job_query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
             "current": {"selected": False, "text": "zentalk-relay", "value": "zentalk-relay"},
             "includeAll": False, "multi": False},
            {**variable_query, "name": "instance", "label": "Instance", "definition": instance_query,
             "query": {"query": instance_query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
             "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
             "includeAll": True, "allValue": ".*", "multi": True},
        ]},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "zentalk-relay",
        "uid": "zentalk-relay",
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
