#!/usr/bin/env python3
"""Cover traffic benchmark: what relays pay for cover loops, in bandwidth, CPU and messages per second.

    python benchmarks/cover_traffic.py [--rates 0 1 5 20] [--duration 20] [--rtt-time 4]
                                       [--onion-messages 5000] [--onion-window 512] [--json]

For each cover rate (``onion.cover_rate``, loops per relay per second; it is
read at start only, so every rate gets three fresh relays) three relays are
started on loopback (twistd, pinned to the relay CPU, default CPU 0), meeting
as ``zentalk-relay testnet`` nodes do: relay 0 is the DHT bootstrap node, the
others name it in ``dht.bootstrap``, PEX may use private addresses, and no
``mesh.peers`` are given. ``metrics.blur_interval=0`` makes the counters exact;
``onion.mix_delay`` keeps its default. Once every relay knows the other two
(``/status`` dht.relays_known >= 2) and has relay links up
(``zentalk_mesh_links_up`` >= 2), the script waits ``--settle`` seconds,
samples the loops in flight every 0.25 s for ``--rtt-time`` seconds (the
round trip, by Little's law), then measures for ``--duration`` seconds, with
one scrape of each relay at the start and one at the end: each relay's CPU
(utime + stime from /proc/<pid>/stat), link bytes out and in
(``zentalk_link_bytes_total``), loops sent
(``zentalk_relay_cover_loops_total{result="sent"}``) and returned
(``zentalk_relay_onion_packets_total{result="cover"}``).

On the rate-0 relays, after their window, the onion cost is measured once: a
child process on the load CPU (default CPU 1) sends ``--onion-messages``
3-hop onion packets with the reference client (``zentalk_relay.client.link``,
``ClientLink.send_onion``) from a link at relay 0 through relays 0 -> 1 -> 2
to a receiving client link at relay 2, at most ``--onion-window`` outstanding,
and divides the relays' CPU from the first send to the last delivery (less
their idle CPU) by the messages delivered.

Prints, per rate: loops/s, the return ratio, per-relay CPU and bytes/s, the
CPU and bytes per loop above the rate-0 baseline, the fraction of one core,
the 3-hop onion messages per second the same CPU would carry, and the loop
round trip (Little's law over the samples); then what the default
``onion.cover_rate`` (0.2) costs. See benchmarks/README.md.

All traffic goes to 127.0.0.1; every wait is bounded; every process started
is stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import linkbench  # noqa: E402
import nodes  # noqa: E402
from linkbench import HOST, log  # noqa: E402

SCRIPT = Path(__file__).resolve()
DEFAULT_COVER_RATE = 0.2  # zentalk_relay.config.OnionConfig.cover_rate
MAX_COVER_RATE = 50.0
NAMES = ("r0", "r1", "r2")  # r0 is the DHT bootstrap node
RTT_EVERY = 0.25
STALL_S = 10.0


# ==========================================================================================
# the onion load (a child process pinned to the load CPU)


def drive(spec_path: str) -> int:
    """Send ``count`` 3-hop onion packets with the reference client; report the relays' CPU over it."""
    linkbench.use_checkout()
    spec = json.loads(Path(spec_path).read_text())
    from twisted.internet import epollreactor

    epollreactor.install()
    from nacl.signing import SigningKey
    from twisted.internet import defer, reactor
    from twisted.internet.task import deferLater

    from zentalk_relay.bootstrap import parse
    from zentalk_relay.client.link import LinkClosed, connect
    from zentalk_relay.link.frames import ErrorCode
    from zentalk_relay.link.session import LinkSettings

    count, window, interval = spec["count"], spec["window"], spec.get("interval") or 0.0
    pids = {name: int(pid) for name, pid in spec["pids"].items()}
    out: dict = {"errors": []}
    errors = out["errors"]
    perf = time.perf_counter

    async def main():
        settings = LinkSettings(window_initial=min(10000, max(1000, 2 * window)))
        rkey, skey = SigningKey.generate(), SigningKey.generate()
        receiver = await connect(reactor, parse(spec["receiver"]["bootstrap"]), rkey,
                                 address=(HOST, spec["receiver"]["port"]), settings=settings)
        sender = await connect(reactor, parse(spec["sender"]["bootstrap"]), skey,
                               address=(HOST, spec["sender"]["port"]), settings=settings)
        recipient = hashlib.sha256(bytes(rkey.verify_key)).digest()
        path = [(bytes.fromhex(n), bytes.fromhex(o)) for n, o in spec["path"]]
        body = os.urandom(spec["size"])
        state = {"sent": 0, "done": 0, "retry": None, "busy": 0}

        def pump() -> None:
            state["retry"] = None
            while state["sent"] < count and state["sent"] - state["done"] < window:
                try:
                    sender.send_onion(path, recipient, body)
                except LinkClosed as error:
                    if error.code is not ErrorCode.RECIPIENT_BUSY:
                        raise
                    state["busy"] += 1  # the link's window is full: try again shortly
                    if state["retry"] is None:
                        state["retry"] = reactor.callLater(0.005, pump)
                    return
                state["sent"] += 1

        def tick() -> None:
            """Paced: one packet every ``interval`` s, whatever is outstanding."""
            state["retry"] = None
            if state["sent"] >= count:
                return
            try:
                sender.send_onion(path, recipient, body)
            except LinkClosed as error:
                if error.code is not ErrorCode.RECIPIENT_BUSY:
                    raise
                state["busy"] += 1
                state["retry"] = reactor.callLater(0.005, tick)
                return
            state["sent"] += 1
            state["retry"] = reactor.callLater(max(0.0, t0 + state["sent"] * interval - perf()), tick)

        cpu0 = {name: linkbench.cpu_seconds(pid) for name, pid in pids.items()}
        t0 = perf()
        tick() if interval else pump()
        while state["done"] < count:
            d = receiver.receive()
            timer = reactor.callLater(STALL_S, lambda d=d: d.called or d.cancel())
            try:
                await d
            except defer.CancelledError:
                errors.append(f"nothing delivered for {STALL_S:g} s with {state['sent'] - state['done']} "
                              "outstanding (messages lost on the way?)")
                break
            if timer.active():
                timer.cancel()
            state["done"] += 1
            if not interval:
                pump()
        elapsed = perf() - t0
        cpu1 = {name: linkbench.cpu_seconds(pid) for name, pid in pids.items()}
        if state["retry"] is not None and state["retry"].active():
            state["retry"].cancel()
        out.update(delivered=state["done"], sent=state["sent"], elapsed_s=round(elapsed, 4),
                   busy_retries=state["busy"], gen_cpu_s=round(time.process_time(), 3),
                   relay_cpu_s={name: (None if cpu1[name] is None or cpu0[name] is None
                                       else round(cpu1[name] - cpu0[name], 3)) for name in pids})
        await sender.close()
        await receiver.close()
        for _ in range(200):  # bounded: let the CLOSE and the last ACKs reach the relays
            if all(getattr(getattr(link.adapter, "transport", None), "disconnected", True)
                   for link in (sender, receiver)):
                break
            await deferLater(reactor, 0.01, lambda: None)

    def finished(result):
        if reactor.running:
            reactor.stop()
        return result

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addErrback(
        lambda f: errors.append(f.getErrorMessage())).addBoth(finished))
    reactor.callLater(spec["time_limit"], lambda: (errors.append("time limit reached"), reactor.stop()))
    reactor.run()
    print(json.dumps(out), flush=True)
    return 1 if errors else 0


# ==========================================================================================
# relays


def relay_settings(rate: float, bootstrap: str | None) -> list[str]:
    """What a testnet node has (DHT on loopback, PEX with private addresses), exact counters, the cover rate."""
    settings = list(nodes.RELAY_SETTINGS) + [
        f'link.tcp=["tcp:0:interface={HOST}"]',
        "pex.allow_private_addresses=true",
        "pex.min_uptime=0.0",
        f"onion.cover_rate={rate:g}",
    ]
    if bootstrap:
        settings.append(f'dht.bootstrap=["{bootstrap}"]')
    return settings


def start_relays(base: Path, rate: float, cpu: str) -> list[linkbench.Node]:
    """Relay 0 (the DHT bootstrap node), then relays 1 and 2 naming it, started side by side."""
    relays: list[linkbench.Node] = []
    try:
        first = linkbench.Node(base / NAMES[0], cpu, relay_settings(rate, None))
        relays.append(first)
        first.start()
        dht = json.loads((first.data_dir / "endpoints.json").read_text())["services"]["dht"][0]
        bootstrap = dht.partition(":")[2]  # "udp:127.0.0.1:PORT" -> "127.0.0.1:PORT"
        others = [linkbench.Node(base / name, cpu, relay_settings(rate, bootstrap)) for name in NAMES[1:]]
        relays += others
        failures: list[BaseException] = []

        def start(node):
            try:
                node.start()
            except BaseException as error:  # noqa: BLE001 - reported below
                failures.append(error)

        threads = [threading.Thread(target=start, args=(node,), daemon=True) for node in others]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        if failures:
            raise failures[0]
        for node in relays:
            status = node.get_json("/status")
            node.node_id = bytes.fromhex(status["node_id"])
    except BaseException:
        stop_relays(relays)
        raise
    return relays


def stop_relays(relays: list[linkbench.Node]) -> None:
    for node in relays:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.terminate()  # all at once (our own children), then wait for each
    for node in relays:
        node.stop()


def parse_metrics(text: str) -> dict[str, list[tuple[dict, float]]]:
    out: dict[str, list[tuple[dict, float]]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        try:
            out.setdefault(name, []).append((dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(value)))
        except ValueError:
            continue
    return out


def metric(metrics: dict, name: str, **labels) -> float:
    return sum(v for got, v in metrics.get(name, ()) if all(got.get(k) == want for k, want in labels.items()))


def sample(node: linkbench.Node) -> dict:
    """One relay's CPU seconds and counters, from /proc and one scrape of /metrics."""
    cpu = linkbench.cpu_seconds(node.pid)
    m = parse_metrics(node.get("/metrics").decode())
    return {
        "t": time.monotonic(), "cpu_s": cpu,
        "bytes_out": metric(m, "zentalk_link_bytes_total", direction="out"),
        "bytes_in": metric(m, "zentalk_link_bytes_total", direction="in"),
        "sent": metric(m, "zentalk_relay_cover_loops_total", result="sent"),
        "no_path": metric(m, "zentalk_relay_cover_loops_total", result="no_path"),
        "returned": metric(m, "zentalk_relay_onion_packets_total", result="cover"),
        "forwarded": metric(m, "zentalk_relay_onion_packets_total", result="forwarded"),
        "mix_sum": metric(m, "zentalk_relay_mix_delay_seconds_sum"),
        "mix_count": metric(m, "zentalk_relay_mix_delay_seconds_count"),
        "links_up": metric(m, "zentalk_mesh_links_up"),
    }


def wait_met(relays: list[linkbench.Node], timeout: float) -> float:
    """Until every relay knows the other two from the DHT and has relay links up; seconds waited."""
    start = time.monotonic()
    while True:
        state = []
        for node in relays:
            if not node.alive():
                raise RuntimeError(f"relay {node.workdir.name} exited:\n{node.log_tail()}")
            known = node.get_json("/status").get("dht", {}).get("relays_known", 0)
            links = metric(parse_metrics(node.get("/metrics").decode()), "zentalk_mesh_links_up")
            state.append((known, links))
        if all(known >= 2 and links >= 2 for known, links in state):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"the relays did not meet within {timeout:g} s: (relays known, links up) = {state}")
        time.sleep(0.25)


def loop_rtt(relays: list[linkbench.Node], seconds: float, every: float) -> dict:
    """Loops in flight (sent - returned, all relays) sampled every ``every`` s, and the send rate over the phase.

    Run before the measured window, so that its scrapes do not count there."""
    first = [sample(node) for node in relays]
    in_flight = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(every)
        in_flight.append(sum(x["sent"] - x["returned"] for x in (sample(node) for node in relays)))
    last = [sample(node) for node in relays]
    wall = last[0]["t"] - first[0]["t"]
    return {"samples": in_flight, "wall_s": round(wall, 3),
            "sent": sum(b["sent"] - a["sent"] for a, b in zip(first, last))}


def measure(relays: list[linkbench.Node], duration: float) -> dict:
    """One window: a sample of every relay at its start and end, nothing in between; others' CPU."""
    mine = {os.getpid(), *(node.pid for node in relays)}
    all0 = linkbench.all_cpu()
    # each sample reads the CPU, then scrapes: the first scrape is inside the window, the last is not
    first = [sample(node) for node in relays]
    t0 = time.monotonic()
    time.sleep(duration)
    last = [sample(node) for node in relays]
    wall = time.monotonic() - t0
    foreign = linkbench.foreign_cpu(all0, linkbench.all_cpu(), mine) / wall
    for node in relays:
        if not node.alive():
            raise RuntimeError(f"relay {node.workdir.name} died during the window:\n{node.log_tail()}")
    per = []
    for a, b in zip(first, last):
        per.append({k: (None if a[k] is None or b[k] is None else b[k] - a[k])
                    for k in ("cpu_s", "bytes_out", "bytes_in", "sent", "no_path", "returned", "forwarded",
                              "mix_sum", "mix_count")} | {"links_up": (a["links_up"], b["links_up"])})
    return {"wall_s": round(wall, 3), "relays": per, "other": round(foreign, 3)}


def onion_cost(relays: list[linkbench.Node], idle_cpu: list[float], args, count: int, window: int,
               interval: float = 0.0) -> dict:
    """The relays' CPU per delivered 3-hop onion message, sent by the reference client (see :func:`drive`):
    closed loop with ``window`` outstanding, or paced, one every ``interval`` s."""
    statuses = [node.get_json("/status") for node in relays]
    spec = {
        "sender": {"port": relays[0].link_port, "bootstrap": statuses[0]["bootstrap"]},
        "receiver": {"port": relays[2].link_port, "bootstrap": statuses[2]["bootstrap"]},
        "path": [(s["node_id"], s["onion_public"]) for s in statuses],
        "pids": {node.workdir.name: node.pid for node in relays},
        "count": count, "window": window, "interval": interval, "size": args.onion_size,
        "time_limit": 60 + count * max(0.005, interval),
    }
    before = [sample(node) for node in relays]
    result = nodes.run_child(SCRIPT, "--drive", spec, str(args.load_cpu), timeout=spec["time_limit"] + 60)
    after = [sample(node) for node in relays]
    for node in relays:
        if not node.alive():
            result.setdefault("errors", []).append(f"relay {node.workdir.name} died:\n{node.log_tail()}")
    delivered = result.get("delivered") or 0
    cpu = result.get("relay_cpu_s") or {}
    if delivered and all(cpu.get(node.workdir.name) is not None for node in relays):
        elapsed = result["elapsed_s"]
        idle = sum(idle_cpu) * elapsed
        total = sum(cpu[node.workdir.name] for node in relays)
        result["relay_cpu_total_s"] = round(total, 3)
        result["idle_cpu_s"] = round(idle, 4)
        result["us_per_msg"] = round(1e6 * (total - idle) / delivered, 1)
        result["us_per_hop"] = round(result["us_per_msg"] / 3, 1)
        result["msgs_per_s"] = round(delivered / elapsed, 1)
        result["relay_us_per_msg_each"] = {node.workdir.name: round(1e6 * (cpu[node.workdir.name] - idle_cpu[i]
                                                                            * elapsed) / delivered, 1)
                                           for i, node in enumerate(relays)}
        result["link_bytes_out_per_msg"] = round(sum(b["bytes_out"] - a["bytes_out"]
                                                     for a, b in zip(before, after)) / delivered, 1)
    return result


# ==========================================================================================
# figures


def derive(windows: dict[float, dict], onion: dict) -> list[dict]:
    base = windows.get(0.0)
    rows = []
    for rate, w in windows.items():
        wall = w["wall_s"]
        per = w["relays"]
        cpu = [r["cpu_s"] / wall if r["cpu_s"] is not None else None for r in per]
        out_bps = [r["bytes_out"] / wall for r in per]
        in_bps = [r["bytes_in"] / wall for r in per]
        sent = sum(r["sent"] for r in per)
        returned = sum(r["returned"] for r in per)
        row = {
            "rate": rate, "wall_s": wall, "loops_sent": int(sent), "loops_returned": int(returned),
            "no_path": int(sum(r["no_path"] for r in per)), "loops_per_s": round(sent / wall, 2),
            "return_ratio": round(returned / sent, 4) if sent else None,
            "cpu": [None if c is None else round(c, 4) for c in cpu],
            "bytes_out_per_s": [round(b) for b in out_bps], "bytes_in_per_s": [round(b) for b in in_bps],
            "links_up": [r["links_up"] for r in per], "other": w["other"],
            "forwarded": int(sum(r["forwarded"] for r in per)),
        }
        mix_n = sum(r["mix_count"] for r in per)
        row["mix_hold_ms"] = round(1000 * sum(r["mix_sum"] for r in per) / mix_n, 1) if mix_n else None
        rtt = w.get("rtt") or {}
        if rtt.get("samples") and rtt.get("sent") and (row["return_ratio"] or 0) >= 0.98:
            # Little's law: loops in flight = send rate x round trip. Loops lost earlier would stay in
            # sent - returned for good, hence the guard on the return ratio.
            mean_in_flight = sum(rtt["samples"]) / len(rtt["samples"])
            row["rtt_ms"] = round(1000 * mean_in_flight / (rtt["sent"] / rtt["wall_s"]), 1)
            row["rtt_loops"] = rtt["sent"]
        else:
            row["rtt_ms"] = None
        if base is not None and rate > 0:
            bwall = base["wall_s"]
            bcpu = [r["cpu_s"] / bwall for r in base["relays"]]
            bout = [r["bytes_out"] / bwall for r in base["relays"]]
            bin_ = [r["bytes_in"] / bwall for r in base["relays"]]
            dcpu = [c - b for c, b in zip(cpu, bcpu)]
            row["cpu_above_base"] = [round(d, 4) for d in dcpu]
            row["cores_above_base"] = round(sum(dcpu), 4)
            row["out_above_base_per_s"] = [round(o - b) for o, b in zip(out_bps, bout)]
            row["in_above_base_per_s"] = [round(i - b) for i, b in zip(in_bps, bin_)]
            if sent:
                row["us_per_loop"] = round(1e6 * sum(dcpu) * wall / sent, 1)
                row["bytes_out_per_loop"] = round(sum(o - b for o, b in zip(out_bps, bout)) * wall / sent)
                row["bytes_in_per_loop"] = round(sum(i - b for i, b in zip(in_bps, bin_)) * wall / sent)
            if onion.get("us_per_msg"):
                row["msgs_per_s_instead"] = round(sum(dcpu) * 1e6 / onion["us_per_msg"], 1)
                row["hops_per_s_instead_per_relay"] = round(sum(dcpu) / 3 * 1e6 / onion["us_per_hop"], 1)
        rows.append(row)
    return rows


def fit_through_origin(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y = k x (points with larger x weigh more: their counts are larger)."""
    sxx = sum(x * x for x, _ in points)
    return sum(x * y for x, y in points) / sxx if sxx else None


def summary(rows: list[dict], runs: dict) -> dict:
    """Per-loop costs fitted over the rates (loops/s vs the cost above the baseline), and the default rate's."""
    onion, paced = runs.get("onion") or {}, runs.get("paced") or {}
    loaded = [r for r in rows if r["rate"] > 0 and r.get("loops_sent")]
    out: dict = {}
    if not loaded:
        return out
    cpu_k = fit_through_origin([(r["loops_per_s"], r["cores_above_base"]) for r in loaded])
    out_k = fit_through_origin([(r["loops_per_s"], sum(r["out_above_base_per_s"])) for r in loaded])
    in_k = fit_through_origin([(r["loops_per_s"], sum(r["in_above_base_per_s"])) for r in loaded])
    out["us_per_loop_fit"] = round(cpu_k * 1e6, 1) if cpu_k is not None else None
    out["bytes_out_per_loop_fit"] = round(out_k) if out_k is not None else None
    out["bytes_in_per_loop_fit"] = round(in_k) if in_k is not None else None
    if cpu_k is None:
        return out
    # each relay sends `rate` loops/s; all relays together send 3 x rate and pay 3 x rate x (cost per loop)
    rate = DEFAULT_COVER_RATE
    out["default_rate"] = rate
    out["default_cpu_core_per_relay"] = round(cpu_k * rate, 6)
    out["default_bytes_out_per_s_per_relay"] = round(out_k * rate) if out_k is not None else None
    out["default_bytes_in_per_s_per_relay"] = round(in_k * rate) if in_k is not None else None
    if onion.get("us_per_msg"):
        out["loop_vs_message"] = round(cpu_k * 1e6 / onion["us_per_msg"], 2)
        out["default_msgs_per_s_instead_per_relay"] = round(rate * cpu_k * 1e6 / onion["us_per_msg"], 2)
    if paced.get("us_per_msg"):
        # the loop cost at the highest rate against a message at about the same packet rate
        top = max(loaded, key=lambda r: r["loops_per_s"])
        if top.get("us_per_loop"):
            out["top_rate"] = top["rate"]
            out["top_loops_per_s"] = top["loops_per_s"]
            out["loop_vs_paced_message"] = round(top["us_per_loop"] / paced["us_per_msg"], 2)
    return out


def _f(v, fmt: str = "{:,.0f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def report(rows: list[dict], runs: dict, summ: dict, args, met: dict) -> str:
    lines = [f"Cover traffic: 3 relays on {HOST} (all on CPU {args.relay_cpu}), meeting through the DHT; "
             f"onion.mix_delay default; fresh relays per rate; {args.duration:g} s measured per rate, "
             f"{args.settle + args.rtt_time:g} s after the relays met"]
    head = ["rate/relay", "loops/s", "returned", "no_path", "cpu r0", "cpu r1", "cpu r2", "out B/s/relay",
            "in B/s/relay", "us/loop", "B out/loop", "core/relay", "msgs/s instead", "rtt ms", "other"]
    body = []
    for r in rows:
        n = len(r["cpu"])
        body.append([
            f"{r['rate']:g}", f"{r['loops_per_s']:.2f}",
            "n/a" if r["return_ratio"] is None else f"{r['return_ratio']:.3f}", str(r["no_path"]),
            *[_f(c, "{:.4f}") for c in r["cpu"]],
            _f(sum(r["bytes_out_per_s"]) / n), _f(sum(r["bytes_in_per_s"]) / n),
            _f(r.get("us_per_loop")), _f(r.get("bytes_out_per_loop")),
            _f(None if r.get("cores_above_base") is None else r["cores_above_base"] / n, "{:.4f}"),
            _f(r.get("msgs_per_s_instead"), "{:,.1f}"), _f(r.get("rtt_ms"), "{:.0f}"),
            f"{r['other']:.2f}" + ("!" if r["other"] > linkbench.DISTURBED else ""),
        ])
    lines.append(linkbench.table(head, body))
    lines.append("  rate/relay: onion.cover_rate; loops/s: all three relays; returned: loops back at their sender / "
                 "loops sent in the window; cpu rN: share of a core (utime+stime)")
    lines.append("  out/in B/s/relay: zentalk_link_bytes_total per relay (mean of three); us/loop, B out/loop: all "
                 "relays above the rate-0 row, per loop sent; core/relay: above rate 0")
    lines.append("  msgs/s instead: 3-hop onion messages the same relay CPU carries (closed-loop onion run below)")
    lines.append("  rtt: Little's law (loops in flight, sampled every 0.25 s before the window, / send rate); other: "
                 "cores used by other processes (! above 0.08)")
    lines.append("")
    lines.append("relays met (dht.relays_known >= 2, mesh links up >= 2) after "
                 + ", ".join(f"{m:.1f} s" for m in met.values()) + " at rates " + ", ".join(f"{r:g}" for r in met))
    holds = [r["mix_hold_ms"] for r in rows if r.get("mix_hold_ms") is not None and r["rate"] > 0]
    if holds:
        lines.append("mean mix hold per onion hop (zentalk_relay_mix_delay_seconds): "
                     + ", ".join(f"{r['mix_hold_ms']:.0f} ms at {r['rate']:g}" for r in rows
                                 if r.get("mix_hold_ms") is not None and r["rate"] > 0))
    for key, what in (("onion", f"closed loop, at most {args.onion_window} outstanding"),
                      ("paced", f"paced at {args.paced_rate:g}/s")):
        run = runs.get(key)
        if not run:
            continue
        if not run.get("us_per_msg"):
            lines.append(f"onion cost, {what}: not measured ({'; '.join(run.get('errors') or ['no result'])})")
            continue
        each = run["relay_us_per_msg_each"]
        lines.append(f"onion cost, {what} (rate-0 relays, reference client ClientLink.send_onion, "
                     f"{args.onion_size}-byte bodies, r0 -> r1 -> r2): {run['delivered']:,} delivered in "
                     f"{run['elapsed_s']:.2f} s ({run['msgs_per_s']:,.0f} msgs/s); relays' CPU "
                     f"{run['relay_cpu_total_s']:.2f} s less {run['idle_cpu_s']:.3f} s idle = "
                     f"{run['us_per_msg']:.0f} us per message (r0 {each['r0']:.0f}, r1 {each['r1']:.0f}, "
                     f"r2 {each['r2']:.0f}), "
                     f"{run['us_per_hop']:.0f} us per hop; {run['link_bytes_out_per_msg']:,.0f} link bytes out "
                     "per message")
    if summ.get("us_per_loop_fit") is not None:
        lines.append(f"fit over the rates (above rate 0): {summ['us_per_loop_fit']:.0f} us of relay CPU, "
                     f"{summ['bytes_out_per_loop_fit']:,} bytes out and {summ['bytes_in_per_loop_fit']:,} in on "
                     "relay links per loop"
                     + (f"; one loop costs the relays {summ['loop_vs_message']:.2f}x a 3-hop message of the "
                        "closed-loop run" if summ.get("loop_vs_message") else ""))
        if summ.get("loop_vs_paced_message"):
            lines.append(f"at cover rate {summ['top_rate']:g} ({summ['top_loops_per_s']:.0f} loops/s in all) a loop "
                         f"costs {summ['loop_vs_paced_message']:.2f}x a 3-hop message paced at "
                         f"{args.paced_rate:g}/s")
        lines.append(f"default onion.cover_rate = {DEFAULT_COVER_RATE:g}: per relay "
                     f"{100 * summ['default_cpu_core_per_relay']:.3f} % of a core, "
                     f"{summ['default_bytes_out_per_s_per_relay']:,} B/s out and "
                     f"{summ['default_bytes_in_per_s_per_relay']:,} B/s in"
                     + (f", the relay CPU of {summ['default_msgs_per_s_instead_per_relay']:.2f} 3-hop messages/s "
                        "per relay"
                        if summ.get("default_msgs_per_s_instead_per_relay") is not None else ""))
    return "\n".join(lines)


# ==========================================================================================


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", type=float, nargs="+", default=[0, 1, 5, 20],
                   help="onion.cover_rate values, loops per relay per second (0 is always measured: the baseline)")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per rate (default 20)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds between the relays meeting and the round-trip sampling (default 1)")
    p.add_argument("--rtt-time", type=float, default=4.0,
                   help="seconds before each window that sample loops in flight every 0.25 s, for the round "
                        "trip (default 4)")
    p.add_argument("--meet-timeout", type=float, default=30.0,
                   help="seconds the relays may take to find each other through the DHT (default 30)")
    p.add_argument("--onion-messages", type=int, default=5000, help="3-hop onion packets sent once (default 5000)")
    p.add_argument("--onion-window", type=int, default=512,
                   help="onion packets outstanding at most (default 512: each hop holds a packet ~50 ms)")
    p.add_argument("--onion-size", type=int, default=512, help="onion message body bytes (default 512)")
    p.add_argument("--paced-rate", type=float, default=60.0,
                   help="then 3-hop packets at this steady rate (default 60/s: the loops/s of all three relays at "
                        "cover rate 20), to compare a loop with a message at the same packet rate; 0: skip")
    p.add_argument("--paced-time", type=float, default=10.0, help="seconds of the paced run (default 10)")
    p.add_argument("--relay-cpu", default="0", help="CPU list for the three relays (default 0)")
    p.add_argument("--load-cpu", type=int, default=1, help="CPU of this script and the onion client (default 1)")
    p.add_argument("--quiet-wait", type=float, default=10.0,
                   help="wait up to this many seconds for other processes to go quiet before starting (default 10)")
    p.add_argument("--json", action="store_true", help="print machine-readable results on stdout")
    p.add_argument("--drive", metavar="SPEC", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.drive:
        return a
    if any(not 0 <= r <= MAX_COVER_RATE for r in a.rates):
        p.error(f"--rates take 0..{MAX_COVER_RATE:g} (onion.cover_rate's range)")
    a.rates = sorted(set([0.0] + [float(r) for r in a.rates]))
    if not 2 <= a.duration <= 300 or not 0 <= a.settle <= 60 or not 0.5 <= a.rtt_time <= 60:
        p.error("--duration must be 2..300, --settle 0..60 and --rtt-time 0.5..60")
    if not 1 <= a.onion_messages <= 200_000 or not 1 <= a.onion_window <= 5000 or not 0 <= a.onion_size <= 1500:
        p.error("--onion-messages 1..200000, --onion-window 1..5000, --onion-size 0..1500")
    if not 0 <= a.paced_rate <= 1000 or not 1 <= a.paced_time <= 120:
        p.error("--paced-rate 0..1000 and --paced-time 1..120")
    allowed = os.sched_getaffinity(0)
    if not {int(x) for x in a.relay_cpu.split(",")} <= allowed or a.load_cpu not in allowed:
        p.error(f"CPUs must be among {sorted(allowed)}")
    if shutil.which("taskset") is None:
        p.error("taskset not found (util-linux)")
    return a


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.drive:
        return drive(args.drive)
    try:
        os.sched_setaffinity(0, {args.load_cpu})  # our scrapes stay off the relays' CPU
    except OSError:
        pass
    started = time.monotonic()
    windows: dict[float, dict] = {}
    met: dict[float, float] = {}
    onion: dict = {}
    errors: list[str] = []
    nodes.settle(args.quiet_wait)
    with tempfile.TemporaryDirectory(prefix="cover-") as tmp:
        for rate in args.rates:
            log(f"[cover_rate {rate:g}] starting 3 relays ...")
            try:
                relays = start_relays(Path(tmp) / f"rate-{rate:g}", rate, args.relay_cpu)
            except (RuntimeError, OSError, ValueError) as error:
                errors.append(f"rate {rate:g}: {error}")
                log(f"  ERROR: {error}")
                continue
            try:
                met[rate] = wait_met(relays, args.meet_timeout)
                log(f"  met after {met[rate]:.1f} s; loops in flight for {args.rtt_time:g} s, then "
                    f"{args.duration:g} s measured")
                time.sleep(args.settle)
                rtt = loop_rtt(relays, args.rtt_time, RTT_EVERY)
                windows[rate] = measure(relays, args.duration)
                windows[rate]["rtt"] = rtt
                w = windows[rate]
                log(f"  loops sent {sum(r['sent'] for r in w['relays']):.0f}, returned "
                    f"{sum(r['returned'] for r in w['relays']):.0f}, relay cpu "
                    + ", ".join(f"{r['cpu_s']:.2f}" for r in w["relays"]) + " s")
                if rate == 0.0:
                    idle = [r["cpu_s"] / w["wall_s"] for r in w["relays"]]
                    runs = [("onion", f"{args.onion_messages} 3-hop packets, at most {args.onion_window} "
                                      "outstanding", args.onion_messages, args.onion_window, 0.0)]
                    if args.paced_rate > 0:
                        n = max(1, round(args.paced_rate * args.paced_time))
                        runs.append(("paced", f"{n} 3-hop packets paced at {args.paced_rate:g}/s", n, n,
                                     1.0 / args.paced_rate))
                    for key, what, count, window, interval in runs:
                        log(f"  onion cost: {what}, reference client ...")
                        try:
                            result = onion_cost(relays, idle, args, count, window, interval)
                        except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as error:
                            result = {"errors": [str(error)]}
                        errors += [f"{key} run: {e.splitlines()[0]}" for e in result.get("errors") or []]
                        if result.get("us_per_msg"):
                            log(f"  {result['us_per_msg']:.0f} us of relay CPU per delivered message, "
                                f"{result['msgs_per_s']:,.0f} msgs/s")
                        onion[key] = result
            except (RuntimeError, OSError, ValueError) as error:
                errors.append(f"rate {rate:g}: {error.__class__.__name__}: {error}")
                log(f"  ERROR: {error}")
            finally:
                stop_relays(relays)
    rows = derive(windows, onion.get("onion") or {})
    summ = summary(rows, onion)
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({
            "benchmark": "cover_traffic",
            "params": {"rates": args.rates, "duration_s": args.duration, "settle_s": args.settle,
                       "onion_messages": args.onion_messages, "onion_window": args.onion_window,
                       "onion_size": args.onion_size, "paced_rate": args.paced_rate, "paced_time_s": args.paced_time,
                       "relay_cpu": args.relay_cpu, "load_cpu": args.load_cpu, "rtt_time_s": args.rtt_time},
            "env": linkbench.env_info(), "rows": rows, "onion": onion, "summary": summ, "met_s": met,
            "elapsed_s": round(elapsed, 1), "errors": errors,
        }, indent=2))
    else:
        print()
        print(report(rows, onion, summ, args, met))
        print(f"(the whole run took {elapsed:.0f} s)")
        for e in errors:
            print(f"error: {e.splitlines()[0]}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
