"""A whole DHT in memory: lookup success and rounds for N nodes, without and with churn.

    python benchmarks/dht_simulation.py                 # --nodes 10000 --lookups 1000 --churn 0.2
    python benchmarks/dht_simulation.py --nodes 2000 --lookups 500 --json

Builds a network of ``--nodes`` :class:`~zentalk_relay.dht.node.DhtNode` on
one fake clock (``zentalk_relay.dht.simulation``: a heap of timed callbacks,
latency 10-100 ms per datagram, no sockets, no reactor), with the node's
default configuration (k = 20, α = 3, 2 s query timeout, one retry, BEP 42
ids flagged, 1 node per IP and 2 per /24). Nodes join one after another,
every 20 ms of simulated time, each bootstrapping (a lookup of its own id)
through 3 random nodes already in; nothing else fills the tables: nodes learn
of each other only from the traffic, as on the real network. Then:

1. ``--items`` immutable BEP 44 items are put from random nodes;
2. ``--lookups`` find_node lookups, each from a random node for the id of
   another random node, one started every 20 ms (so they overlap): a lookup
   succeeds when the first node of its result is the target itself;
3. ``--churn`` of the nodes (20 %) stop answering at once, without warning;
   nobody has had time to notice (no refresh, no pings);
4. ``--lookups`` lookups again between live nodes, and a get of every item.

Reported per phase: success rate, median and 95th percentile of rounds (the
deepest round of the lookup that answered; the seeds from the routing table
are round 1) and of hops (the round in which the nearest answering node was
found), queries per lookup, and log2(N) for comparison; wall-clock time and
datagrams delivered. Pure CPU, one thread, deterministic for a given
``--seed``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout, not an installed copy

from zentalk_relay.dht.items import Item  # noqa: E402
from zentalk_relay.dht.simulation import Network  # noqa: E402


def _percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def overlapping(net: Network, calls: list[tuple], spacing: float = 0.02) -> list:
    """Start ``(node, operation, *args)`` one every ``spacing`` simulated seconds; their OperationDone, in order."""
    pending: list[tuple] = []

    def start(node, operation, *args) -> None:
        pending.append((node, net.start(node, operation, *args)))

    for i, (node, operation, *args) in enumerate(calls):
        net.loop.call_at(net.now + i * spacing, start, node, operation, *args)
    net.loop.run_until(net.now + len(calls) * spacing)
    net.loop.run_while(lambda: any(op not in node.done for node, op in pending), net.now + 600.0)
    return [node.done.get(op) for node, op in pending]


def lookups(net: Network, count: int) -> dict:
    """``count`` find_node lookups, each from a random live node for another one's id."""
    live = net.live_nodes()
    pairs = [net.rng.sample(live, 2) for _ in range(count)]
    started = time.perf_counter()
    results = [done.result for done in overlapping(net, [(q, q.dht.find_node, t.dht.node_id) for q, t in pairs])]
    found = sum(1 for r, (_, t) in zip(results, pairs) if r.nodes and r.nodes[0].id == t.dht.node_id)
    rounds = [r.rounds for r in results]
    hops = [r.hops for r in results]
    return {
        "lookups": count,
        "success": found / count,
        "rounds_median": statistics.median(rounds),
        "rounds_p95": _percentile(rounds, 0.95),
        "hops_median": statistics.median(hops),
        "hops_p95": _percentile(hops, 0.95),
        "queries_median": statistics.median(r.queried for r in results),
        "timeouts_median": statistics.median(r.failed for r in results),
        "seconds": round(time.perf_counter() - started, 2),
    }


def gets(net: Network, items: list[Item]) -> dict:
    live = net.live_nodes()
    done = overlapping(net, [(reader, reader.dht.get, item.target) for reader, item in
                             ((net.rng.choice(live), item) for item in items)])
    found = sum(1 for d, item in zip(done, items) if d.result.item == item)
    return {"items": len(items), "success": found / len(items) if items else 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--churn", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    net = Network(seed=args.seed)
    started = time.perf_counter()
    net.grow(args.nodes, spacing=0.02, settle=30.0)
    grow_seconds = time.perf_counter() - started
    sizes = [len(n.dht.table) for n in net.nodes.values()]
    report: dict = {
        "python": platform.python_version(),
        "nodes": args.nodes,
        "log2_nodes": round(math.log2(args.nodes), 2),
        "seed": args.seed,
        "grow": {
            "seconds": round(grow_seconds, 1),
            "simulated_seconds": round(net.now, 1),
            "datagrams": net.delivered,
            "table_median": statistics.median(sizes),
            "table_min": min(sizes),
        },
    }
    writers = net.live_nodes()
    items = [Item.immutable(b"%d:item %d" % (len(b"item %d" % i), i)) for i in range(args.items)]
    stored = overlapping(net, [(w, w.dht.put, item) for w, item in ((net.rng.choice(writers), i) for i in items)])
    report["grow"]["items_stored_on_median"] = statistics.median(d.stored for d in stored)
    report["stable"] = lookups(net, args.lookups)
    report["stable"]["get"] = gets(net, items)
    victims = net.rng.sample(list(net.nodes.values()), int(args.churn * args.nodes))
    for node in victims:
        net.kill(node)
    report["churn"] = {"fraction": args.churn, **lookups(net, args.lookups)}
    report["churn"]["get"] = gets(net, items)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["simulated_seconds"] = round(net.now, 1)
    report["datagrams"] = net.delivered

    if args.json:
        print(json.dumps(report, indent=2))
        return
    g = report["grow"]
    print(f"{args.nodes} nodes (log2 N = {report['log2_nodes']}), seed {args.seed}, Python {report['python']}")
    print(f"grow: {g['seconds']} s wall, {g['simulated_seconds']} s simulated, {g['datagrams']} datagrams;"
          f" routing table median {g['table_median']} nodes (min {g['table_min']})")
    print(f"{'phase':<12}{'success':>9}{'rounds':>8}{'p95':>5}{'hops':>6}{'p95':>5}{'queries':>9}{'timeouts':>10}"
          f"{'get':>8}{'wall s':>8}")
    for name in ("stable", "churn"):
        row = report[name]
        label = name if name == "stable" else f"churn {int(100 * args.churn)}%"
        print(f"{label:<12}{100 * row['success']:>8.1f}%{row['rounds_median']:>8}{row['rounds_p95']:>5}"
              f"{row['hops_median']:>6}{row['hops_p95']:>5}{row['queries_median']:>9}{row['timeouts_median']:>10}"
              f"{100 * row['get']['success']:>7.0f}%{row['seconds']:>8}")
    print(f"items stored on a median {g['items_stored_on_median']} nodes each")
    print(f"total {report['seconds']} s wall, {report['simulated_seconds']} s simulated,"
          f" {report['datagrams']} datagrams delivered")


if __name__ == "__main__":
    main()
