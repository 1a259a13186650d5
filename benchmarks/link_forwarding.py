#!/usr/bin/env python3
"""Link forwarding benchmark: messages/s and latency through one relay node vs a bare forwarder.

    python benchmarks/link_forwarding.py [--window 1024] [--size 1024] [--duration 5] [--warmup 1]
                                         [--fractions 0.5,0.9] [--drivers lean] [--padding on,off]
                                         [--profile py-spy] [--json]

Two authenticated links (a sender and a receiver, in one load process pinned to
the load CPU) exchange ``--size``-byte messages through the node pinned to the
server CPU: the sender sends SEND frames addressed to the receiver's node id,
the node delivers each as a DELIVER and answers the sender with a RECEIPT. At
most ``--window`` messages are outstanding. Phases on the same links: the
closed-loop peak, then open-loop sends at each ``--fractions`` of that peak.
The references, in the same run: bare_forwarder.py (Twisted, length prefix,
no crypto) in two styles, ``intn`` (Int32StringReceiver, one sendString per
frame: the conventional forwarder issue #3 describes, its reference) and
``tuned`` (one buffer, frames sliced out of it: the floor), each driven by
the same driver in its no-crypto mode with the same window and size. Prints
a table and the ratio ours / each reference at peak (target >= 0.5 of the
issue's reference). See benchmarks/README.md.

``--padding on,off`` (the default: both, on a fresh node each): with ``on``
the driver's links offer capability PADDING, so the node pads every record it
writes to a bucket size and the driver pads its own, as the reference client
does; with ``off`` they offer nothing. The node is the same (it offers PADDING
by default). Beside the table: bytes on the wire (TCP payload, from the
driver's socket counts) per message in each direction, and a summary of what
padding costs at the peak: msg/s, node CPU per message, bytes per message.

All traffic goes to 127.0.0.1; every phase, drain and wait is bounded; every
process started is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import linkbench  # noqa: E402
from linkbench import HERE, HOST, log  # noqa: E402

TARGET_RATIO = 0.5
LABELS = {"lean": "zentalk-relay", "conn": "zentalk-relay", "client": "zentalk-relay", "bare": "bare-tuned",
          "intn": "bare-intn"}
#: The reference issue #3 states its target against: a conventional Twisted length-prefixed forwarder.
ISSUE_REFERENCE = "intn"
DRIVER_NOTES = {
    "lean": "lean driver (LinkConnection handshake, records of 15 SENDs on the link's cipher states)",
    "conn": "LinkConnection.send/pull/receive_data for every message",
    "client": "the reference client (zentalk_relay.client.link) on Twisted",
    "bare": "bare_forwarder.py --style tuned (one buffer, frames sliced out, one write each); no-crypto driver, "
            "u32 length prefix",
    "intn": "bare_forwarder.py --style intn (Int32StringReceiver, sendString per frame; the issue's reference); "
            "no-crypto driver, u32 length prefix",
}


def settle(args, what: str) -> None:
    """Before a measured run: let the machine go quiet (bounded), and say so if it did not."""
    if args.quiet_wait <= 0:
        return
    quiet, waited = linkbench.wait_quiet(args.quiet_wait)
    if not quiet:
        log(f"  note: other processes kept using CPU for {waited:.0f} s; measuring {what} anyway")
    elif waited > 3:
        log(f"  waited {waited:.0f} s for other processes to go quiet")


def run_driver(mode: str, port: int, server_pid: int, args, phases: list[str], bootstrap: str | None = None,
               extra: list[str] | None = None, quiet_first: bool = True, padding: str | None = None) -> dict:
    if quiet_first:
        settle(args, mode)
    cmd = ["taskset", "-c", str(args.load_cpu), sys.executable, str(HERE / "link_load.py"),
           "--mode", mode, "--port", str(port), "--window", str(args.window), "--size", str(args.size),
           "--window-initial", str(args.window_initial), "--phases", ",".join(phases),
           "--duration", str(args.duration), "--warmup", str(args.warmup),
           "--max-messages", str(args.max_messages), "--server-pid", str(server_pid),
           "--time-limit", str(budget(args, phases))]
    if bootstrap:
        cmd += ["--bootstrap", bootstrap]
    if args.frames_per_record and mode == "lean":
        cmd += ["--frames-per-record", str(args.frames_per_record)]
    if padding is not None and mode != "bare":
        cmd += ["--padding", padding]
    cmd += extra or []
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=budget(args, phases) + 60,
                         env=linkbench.checkout_env())
    lines = res.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"link_load.py {mode} printed nothing (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(lines[-1])


def budget(args, phases) -> float:
    return len(phases) * (args.warmup + args.duration + 15) + 30


def start_bare(tmp: Path, args, style: str = "tuned"):
    logfile = tmp / "bare.log"
    out = open(logfile, "wb")
    proc = subprocess.Popen(["taskset", "-c", str(args.server_cpu), sys.executable, str(HERE / "bare_forwarder.py"),
                             HOST, "0", "--prefix", "4", "--style", style], stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, cwd=tmp)
    out.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bare_forwarder.py exited {proc.returncode}:\n{linkbench.tail(logfile)}")
        m = re.search(r"listening on [\d.]+:(\d+)", logfile.read_text(errors="replace"))
        if m:
            return proc, int(m.group(1))
        time.sleep(0.05)
    linkbench.stop(proc)
    raise RuntimeError("bare_forwarder.py did not listen within 15 s")


def node_settings(args) -> list[str]:
    return list(linkbench.BENCH_SETTINGS) + [f"link.window_initial={args.window_initial}"]


def bench_ours(mode: str, args, phases: list[str], padding: str) -> tuple[dict | None, str | None, dict]:
    extra_info: dict = {}
    with tempfile.TemporaryDirectory(prefix="linkfwd-") as tmp:
        node = linkbench.Node(Path(tmp), args.server_cpu, node_settings(args))
        try:
            node.start()
            log(f"[zentalk-relay/{mode}, padding {padding}] node pid {node.pid} on cpu {args.server_cpu}, "
                f"link port {node.link_port}")
            result = run_driver(mode, node.link_port, node.pid, args, phases, str(node.bootstrap), padding=padding)
            extra_info["node_rss_kib"] = linkbench.rss_kib(node.pid)
            try:
                extra_info["refusals"] = node.metric("zentalk_link_refusals_total")
                extra_info["closes"] = node.metric("zentalk_link_closes_total")
                extra_info["link_bytes"] = {d: node.metric("zentalk_link_bytes_total", {"direction": d})
                                            for d in ("in", "out")}
            except OSError:
                pass
            if not node.alive():
                return result, f"the node died:\n{node.log_tail()}", extra_info
            return result, None, extra_info
        except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as error:
            return None, f"zentalk-relay ({mode}): {error}", extra_info
        finally:
            node.stop()


def bench_bare(args, phases: list[str], style: str = "tuned") -> tuple[dict | None, str | None]:
    with tempfile.TemporaryDirectory(prefix="linkfwd-bare-") as tmp:
        proc = None
        try:
            proc, port = start_bare(Path(tmp), args, style)
            log(f"[bare-forwarder --style {style}] pid {proc.pid} on cpu {args.server_cpu}, port {port}")
            return run_driver("bare", port, proc.pid, args, phases), None
        except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as error:
            return None, f"bare-forwarder --style {style}: {error}"
        finally:
            if proc is not None:
                linkbench.stop(proc)


def profile_ours(args) -> dict:
    """One more closed-loop peak run of the node under a profiler; returns a summary."""
    import shutil

    with tempfile.TemporaryDirectory(prefix="linkfwd-prof-") as tmp:
        tmp = Path(tmp)
        twistd_args = []
        stats_file = tmp / "node.pstats"
        if args.profile == "cprofile":
            twistd_args = [f"--profile={stats_file}", "--profiler=cprofile", "--savestats"]
        node = linkbench.Node(tmp, args.server_cpu, node_settings(args), twistd_args=twistd_args)
        spy = None
        try:
            node.start()
            log(f"[profile/{args.profile}, padding {args.padding[0]}] node pid {node.pid}")
            if args.profile == "py-spy":
                if shutil.which("py-spy") is None:
                    return {"error": "py-spy not found (pip install py-spy)"}
                raw = tmp / "node.raw"
                # the driver's warm-up is 1 s; sample the measured part only
                spy_cmd = ["py-spy", "record", "-p", str(node.pid), "-d", str(max(1, int(args.duration))),
                           "-r", "250", "--format", "raw", "-o", str(raw)]

                def start_spy():
                    time.sleep(args.warmup + 0.5)
                    return subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            cwd=tmp)

                import threading

                settle(args, "the profile")
                holder = {}
                t = threading.Thread(target=lambda: holder.setdefault("p", start_spy()), daemon=True)
                t.start()
                result = run_driver(args.drivers[0], node.link_port, node.pid, args, ["peak"], str(node.bootstrap),
                                    quiet_first=False, padding=args.padding[0])
                t.join(timeout=30)
                spy = holder.get("p")
                if spy is not None:
                    try:
                        spy.wait(timeout=args.duration + 30)
                    except subprocess.TimeoutExpired:
                        linkbench.stop(spy)
                if not raw.exists():
                    return {"error": "py-spy wrote nothing", "driver": result}
                summary = linkbench.summarize_collapsed(raw, top=200)
                return {"tool": "py-spy", "driver": result, "summary": summary}
            result = run_driver(args.drivers[0], node.link_port, node.pid, args, ["peak"], str(node.bootstrap),
                                padding=args.padding[0])
            node.stop()
            return {"tool": "cprofile", "driver": result, "summary": cprofile_summary(stats_file, result)}
        finally:
            node.stop()
            if spy is not None and spy.poll() is None:
                linkbench.stop(spy)


def cprofile_summary(path: Path, result: dict) -> dict:
    import io
    import pstats

    if not path.exists():
        return {"error": "twistd wrote no profile"}
    stats = pstats.Stats(str(path), stream=io.StringIO())
    delivered = max(1, result.get("delivered") or 1)
    rows = []
    for (filename, line, name), (cc, nc, tt, ct, _) in stats.stats.items():
        short = linkbench._frame_name(f"{name} ({filename}:{line})")
        rows.append((short, nc, tt, ct))
    # time blocked in epoll is idle, not work: leave it out of the shares
    idle = sum(r[2] for r in rows if "of 'select.epoll' objects" in r[0])
    rows = [r for r in rows if "of 'select.epoll' objects" not in r[0]]
    total = sum(r[2] for r in rows) or 1.0
    by_tottime = sorted(rows, key=lambda r: -r[2])[:40]
    return {
        "delivered": result.get("delivered"),
        "total_s": round(total, 3),
        "idle_s": round(idle, 3),
        "rows": [{"function": r[0], "calls": r[1], "calls_per_message": round(r[1] / delivered, 3),
                  "tottime_pct": round(100 * r[2] / total, 1), "cumtime_pct": round(100 * r[3] / total, 1)}
                 for r in by_tottime],
    }


def format_profile(prof: dict) -> str:
    if "error" in prof:
        return f"profile: {prof['error']}"
    if prof["tool"] == "py-spy":
        s = prof["summary"]
        zt = [(n, p) for n, p in s["inclusive"] if "zentalk_relay" in n or "doWrite" in n or "doRead" in n]
        lines = [f"py-spy, {s['samples']} samples of the node's reactor thread at the closed-loop peak, "
                 f"padding {prof['driver'].get('padding', 'off')} "
                 f"({prof['driver']['phases'][0]['rate']:,.0f} msg/s under the profiler; "
                 f"{s.get('other_thread_samples', 0)} samples of other threads left out)",
                 "  self %  function"]
        lines += [f"  {p:6.1f}  {n}" for n, p in s["self"][:20]]
        lines.append("  incl %  function")
        lines += [f"  {p:6.1f}  {n}" for n, p in zt[:25]]
        return "\n".join(lines)
    s = prof["summary"]
    if "error" in s:
        return f"profile: {s['error']}"
    lines = [f"cProfile of the node over its life, {s['delivered']:,} messages delivered, {s['total_s']:.1f} s busy "
             f"(idle in epoll left out); cProfile's own overhead inflates small functions",
             "  tottime %  cum %  calls/msg  function"]
    lines += [f"  {r['tottime_pct']:9.1f}  {r['cumtime_pct']:5.1f}  {r['calls_per_message']:9.3f}  {r['function']}"
              for r in s["rows"][:30]]
    return "\n".join(lines)


# -- report -----------------------------------------------------------------------------


def disturbed(result: dict | None, args) -> bool:
    return result is None or any(linkbench.disturbance(p, args.server_cpu) > linkbench.DISTURBED
                                 for p in result.get("phases", []))


def with_retries(run, args, what: str):
    """Run a measurement; if others took CPU during it, run it again (at most --retries times)."""
    def worst(res) -> float:
        phases = (res[0] or {}).get("phases") or []
        return max((linkbench.disturbance(p, args.server_cpu) for p in phases), default=float("inf"))

    best = run()
    for attempt in range(args.retries):
        if best[0] is not None and not disturbed(best[0], args):
            break
        log(f"  {what}: disturbed by other processes, measuring again ({attempt + 1}/{args.retries})")
        again = run()
        if again[0] is not None and worst(again) < worst(best):
            best = again  # keep the least disturbed attempt
    return best


def flags(p: dict, args) -> str:
    out = ""
    if linkbench.disturbance(p, args.server_cpu) > linkbench.DISTURBED:
        out += "!"  # others took CPU during the phase
    if p.get("target_rate") is None and p.get("gen_cpu") is not None and p["gen_cpu"] > 0.9:
        out += "*"  # the load driver was (nearly) saturated at the peak
    if p.get("target_rate") is not None and p.get("behind_s", 0) > 0.05:
        out += "~"  # the open-loop sender fell behind its schedule
    return out


def per_message(p: dict) -> dict | None:
    """Socket bytes per delivered message over a phase's measured interval: ``up`` (driver to server: the
    sender's SENDs, the receiver's ACKs and window updates), ``down`` (server to driver: DELIVERs, RECEIPTs),
    and each link's share; None without byte counts."""
    b = p.get("bytes")
    if not b or not p.get("delivered"):
        return None
    n = p["delivered"]
    out = {key: b[key] / n for key in ("sender_out", "receiver_out", "receiver_in", "sender_in")}
    out["up"] = out["sender_out"] + out["receiver_out"]
    out["down"] = out["receiver_in"] + out["sender_in"]
    return out


def padding_of(run: dict) -> str:
    if run["mode"] in ("bare", "intn"):
        return "-"
    result = run["result"]
    if result.get("padding") == "on" and result.get("padded") is False:
        return "on?"  # offered, but the node did not offer it back: nothing padded
    return result.get("padding", "off")


def format_table(runs: list[dict], args) -> str:
    head = ["server", "driver", "padding", "phase", "msg/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
            f"cpu{args.server_cpu} busy", "srv cpu", "gen cpu", "other", "B/msg up", "B/msg down", "flags"]
    body = []
    for run in runs:
        for p in run["result"].get("phases", []):
            cpus = p.get("cpus") or {}
            busy = cpus.get(str(args.server_cpu), cpus.get(args.server_cpu, {})).get("busy")
            name = p["phase"] if p.get("target_rate") is None else f"{p['phase']} ({p['target_rate']:,.0f}/s)"
            wire = per_message(p)
            body.append([
                LABELS[run["mode"]], run["mode"], padding_of(run), name, f"{p['rate']:,.0f}",
                _ms(p["p50_ms"]), _ms(p["p99_ms"]), _ms(p["p999_ms"]), _ms(p["max_ms"]),
                "n/a" if busy is None else f"{busy:.2f}",
                "n/a" if p.get("srv_cpu") is None else f"{p['srv_cpu']:.2f}",
                "n/a" if p.get("gen_cpu") is None else f"{p['gen_cpu']:.2f}",
                f"{linkbench.disturbance(p, args.server_cpu):.2f}",
                "n/a" if wire is None else f"{wire['up']:,.1f}",
                "n/a" if wire is None else f"{wire['down']:,.1f}",
                flags(p, args),
            ])
    return linkbench.table(head, body, left=(0, 1, 2, 3, 15))


def _ms(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def padding_summary(runs: list[dict], args) -> list[dict]:
    """Per driver measured with padding on and off: the peak of each and the ratios on / off."""
    out = []
    for mode in args.drivers:
        rows = {}
        for run in runs:
            phases = run["result"].get("phases") or []
            if run["mode"] == mode and phases and padding_of(run) in ("on", "off"):
                p = phases[0]
                srv_us = None if not p.get("srv_cpu") or not p["rate"] else 1e6 * p["srv_cpu"] / p["rate"]
                row = {"padding": padding_of(run), "rate": p["rate"], "srv_us_per_msg": srv_us,
                       "wire": per_message(p), "other": linkbench.disturbance(p, args.server_cpu),
                       "flags": flags(p, args)}
                node_bytes = (run.get("node") or {}).get("link_bytes") or {}
                delivered = run["result"].get("delivered")
                if delivered and node_bytes.get("in") is not None and node_bytes.get("out") is not None:
                    row["node_bytes_per_msg"] = {d: node_bytes[d] / delivered for d in ("in", "out")}
                    driver = run["result"].get("bytes")
                    shake = run["result"].get("handshake_bytes")
                    if driver and shake:
                        sent = driver["sender_out"] + driver["receiver_out"] + shake["sender"][0] + shake["receiver"][0]
                        got = driver["sender_in"] + driver["receiver_in"] + shake["sender"][1] + shake["receiver"][1]
                        row["node_vs_driver"] = {"in": (node_bytes["in"], sent), "out": (node_bytes["out"], got)}
                rows[row["padding"]] = row
        if "on" in rows and "off" in rows:
            on, off = rows["on"], rows["off"]
            ratio = {"rate": on["rate"] / off["rate"] if off["rate"] else None}
            if on["srv_us_per_msg"] and off["srv_us_per_msg"]:
                ratio["srv_us_per_msg"] = on["srv_us_per_msg"] / off["srv_us_per_msg"]
            if on["wire"] and off["wire"]:
                ratio["wire"] = {k: (on["wire"][k] / off["wire"][k] if off["wire"][k] else None) for k in on["wire"]}
            out.append({"driver": mode, "on": on, "off": off, "on_over_off": ratio})
        elif rows:
            out.append({"driver": mode, **rows})
    return out


def format_padding(summary: list[dict], args) -> str:
    head = ["driver", "padding", "msg/s", "node us/msg", "B/msg up", "B/msg down", "SEND rec", "ACK rec",
            "DELIVER rec", "RECEIPT rec", "flags"]
    body = []

    def cells(w, fmt):
        if w is None:
            return ["n/a"] * 6
        return [fmt(w[k]) for k in ("up", "down", "sender_out", "receiver_out", "receiver_in", "sender_in")]

    for item in summary:
        for setting in ("on", "off"):
            row = item.get(setting)
            if row is None:
                continue
            body.append([item["driver"], setting, f"{row['rate']:,.0f}",
                         "n/a" if row["srv_us_per_msg"] is None else f"{row['srv_us_per_msg']:.2f}",
                         *cells(row["wire"], lambda v: f"{v:,.1f}"), row["flags"]])
        ratio = item.get("on_over_off")
        if ratio:
            us = ratio.get("srv_us_per_msg")
            body.append([item["driver"], "on / off", "n/a" if ratio["rate"] is None else f"{ratio['rate']:.3f}",
                         "n/a" if us is None else f"{us:.3f}",
                         *cells(ratio.get("wire"), lambda v: "n/a" if v is None else f"{v:.3f}"), ""])
    lines = [f"Padding at the closed-loop peak, {args.size}-byte messages: socket bytes (TCP payload: records "
             "with their length) per message delivered; up = driver to node (the sender's SEND records, the "
             "receiver's ACK records and window updates), down = node to driver (DELIVER records to the receiver, "
             "RECEIPT records to the sender); node us/msg = srv cpu / msg/s",
             linkbench.table(head, body, left=(0, 1, 10))]
    for item in summary:
        for setting in ("on", "off"):
            row = item.get(setting) or {}
            check = row.get("node_vs_driver")
            if check:
                (n_in, d_out), (n_out, d_in) = check["in"], check["out"]
                lines.append(f"  {item['driver']}, padding {setting}: the node's zentalk_link_bytes_total over the "
                             f"run (exact, metrics.blur_interval=0): in {n_in:,.0f}, out {n_out:,.0f}; the driver's "
                             f"sockets: sent {d_out:,.0f}, received {d_in:,.0f}")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--window", type=int, default=1024, help="messages outstanding at most (default 1024)")
    p.add_argument("--size", type=int, default=1024, help="message body bytes (default 1024)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per phase (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase (default 1)")
    p.add_argument("--fractions", default="0.5,0.9",
                   help="open-loop phases as fractions of the measured peak (default 0.5,0.9)")
    p.add_argument("--drivers", default="lean",
                   help="drivers for the node, comma-separated, first is the headline: lean, conn, client "
                        "(default lean; the others run the peak phase only)")
    p.add_argument("--padding", default="on,off",
                   help="padding settings of the driver's links, comma-separated, each on a fresh node: on (offer "
                        "capability PADDING: the node pads every record it writes, the driver pads its own), off "
                        "(offer nothing); default both")
    p.add_argument("--window-initial", type=int, default=0,
                   help="link.window_initial for the node and the driver (default max(1000, 4 x window), "
                        "at most 10000)")
    p.add_argument("--frames-per-record", type=int, default=0,
                   help="lean driver: SEND frames per record (default: fill 16 KiB, 15; 1 is what the reference "
                        "client writes)")
    p.add_argument("--max-messages", type=int, default=50_000_000, help="hard cap per driver run")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--quiet-wait", type=float, default=60.0,
                   help="before each run, wait up to this many seconds for other processes to stop using CPU "
                        "(default 60; 0: do not wait)")
    p.add_argument("--retries", type=int, default=2,
                   help="measure a server again when other processes took CPU during its run (default 2)")
    p.add_argument("--references", default="intn,tuned",
                   help="bare forwarders to measure, comma-separated: intn (Int32StringReceiver, the issue's "
                        "reference), tuned (hand-tuned floor); default both")
    p.add_argument("--skip-bare", action="store_true", help="do not run any reference")
    p.add_argument("--profile", choices=("none", "py-spy", "cprofile"), default="none",
                   help="after the measured runs, profile the node in one more peak run and print where the "
                        "time goes")
    p.add_argument("--json", action="store_true", help="print machine-readable results on stdout")
    a = p.parse_args(argv)
    a.fractions = [float(x) for x in a.fractions.split(",") if x.strip()]
    a.drivers = [x.strip() for x in a.drivers.split(",") if x.strip()]
    a.references = [] if a.skip_bare else [x.strip() for x in a.references.split(",") if x.strip()]
    a.padding = [x.strip() for x in a.padding.split(",") if x.strip()]
    if not a.padding or any(x not in ("on", "off") for x in a.padding) or len(set(a.padding)) != len(a.padding):
        p.error("--padding takes on, off or both")
    if any(r not in ("intn", "tuned") for r in a.references):
        p.error("--references takes intn, tuned")
    if any(d not in ("lean", "conn", "client") for d in a.drivers) or not a.drivers:
        p.error("--drivers takes lean, conn, client")
    if not 1 <= a.window <= 50_000 or not 8 <= a.size <= 60_000:
        p.error("--window must be 1..50000 and --size 8..60000")
    if not 0.5 <= a.duration <= 600 or not 0 <= a.warmup <= 60:
        p.error("--duration must be 0.5..600 and --warmup 0..60")
    if any(not 0 < f < 1.5 for f in a.fractions):
        p.error("--fractions must be in (0, 1.5)")
    if not a.window_initial:
        a.window_initial = min(10000, max(1000, 4 * a.window))
    linkbench.check_cpus(a.server_cpu, a.load_cpu)
    return a


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    phases = ["peak"] + [f"{f:g}" for f in args.fractions]
    runs, errors, info = [], [], {}
    for i, mode in enumerate(args.drivers):
        for padding in args.padding:
            result, error, extra = with_retries(
                lambda: bench_ours(mode, args, phases if i == 0 and mode != "client" else ["peak"], padding), args,
                f"{mode}, padding {padding}")
            if result is not None:
                result.setdefault("padding", padding)
                runs.append({"mode": mode, "padding": padding, "result": result, "node": extra})
                errors += [f"{mode}, padding {padding}: {e}" for e in result.get("errors", [])]
            if error:
                errors.append(error)
    for style in args.references:
        mode = "bare" if style == "tuned" else "intn"
        result, error = with_retries(lambda: bench_bare(args, phases, style), args, f"bare ({style})")
        if result is not None:
            result["mode"] = mode
            runs.append({"mode": mode, "result": result})
            errors += [f"{mode}: {e}" for e in result.get("errors", [])]
        if error:
            errors.append(error)

    def peak(mode, padding=None):
        for run in runs:
            if run["mode"] == mode and run.get("padding") == padding and run["result"].get("phases"):
                return run["result"]["phases"][0]["rate"]
        return None

    # ratios at peak per padding setting of the headline driver: {padding: {reference: (ours, ref, ratio)}}
    ratios: dict = {}
    for padding in args.padding:
        ours = peak(args.drivers[0], padding)
        for mode in ("intn", "bare"):
            ref = peak(mode)
            if ours and ref:
                ratios.setdefault(padding, {})[mode] = (ours, ref, round(ours / ref, 3))
    ratio = ratios.get(args.padding[0], {}).get(ISSUE_REFERENCE, (None, None, None))[2]
    pad_summary = padding_summary(runs, args)
    profile = profile_ours(args) if args.profile != "none" else None

    if args.json:
        doc = {
            "benchmark": "link_forwarding",
            "params": {"window": args.window, "size": args.size, "duration_s": args.duration,
                       "warmup_s": args.warmup, "fractions": args.fractions, "window_initial": args.window_initial,
                       "server_cpu": args.server_cpu, "load_cpu": args.load_cpu, "drivers": args.drivers,
                       "padding": args.padding},
            "env": linkbench.env_info(),
            "runs": runs,
            "ratio_peak": ratio,
            "ratio_padding": args.padding[0],
            "ratio_reference": LABELS[ISSUE_REFERENCE],
            "ratios_peak": {LABELS[mode]: value[2] for mode, value in ratios.get(args.padding[0], {}).items()},
            "ratios_peak_by_padding": {padding: {LABELS[mode]: value[2] for mode, value in by_ref.items()}
                                       for padding, by_ref in ratios.items()},
            "padding": pad_summary,
            "target_ratio": TARGET_RATIO,
            "profile": profile,
            "errors": errors,
        }
        print(json.dumps(doc, indent=2))
    else:
        print()
        print(f"Link forwarding: {args.size}-byte messages, at most {args.window} outstanding, "
              f"link.window_initial {args.window_initial}; {args.duration:g} s measured after {args.warmup:g} s "
              f"warm-up per phase; server on CPU {args.server_cpu}, load driver on CPU {args.load_cpu}")
        print(format_table(runs, args))
        for mode in args.drivers + [("bare" if r == "tuned" else "intn") for r in args.references]:
            note = DRIVER_NOTES[mode]
            per = next((r["result"].get("frames_per_record") for r in runs if r["mode"] == mode), None)
            if mode == "lean" and isinstance(per, int) and per != 15:
                note = note.replace("records of 15 SENDs", f"records of {per} SEND{'s' if per > 1 else ''}")
            print(f"  {mode}: {note}")
        if any(run["mode"] not in ("bare", "intn") for run in runs):
            print("  padding on: the driver's links offer capability PADDING (as the reference client does): the node "
                  "pads every record it writes, and the driver pads its own (lean: padding.pad on each record it "
                  "seals; conn, client: LinkConnection); off: no capabilities offered; on?: offered, not "
                  "negotiated (nothing padded)")
            print("  B/msg up / down: socket bytes per message delivered (TCP payload), driver to server / server to "
                  "driver")
        print("  latency: send (closed loop) or scheduled send (open loop) to the receiver's read, one clock; "
              f"cpu{args.server_cpu} busy includes softirq; other: CPU taken by other processes, in cores (the "
              "larger of their /proc times and the server CPU's busy time charged neither to the server nor to "
              "kernel threads)")
        if any(flags(p, args) for r in runs for p in r["result"].get("phases", [])):
            print(f"  flags: ! other processes took > {linkbench.DISTURBED:g} of a core (numbers disturbed; rerun on a "
                  "quiet machine); "
                  "* load driver > 90 % busy at the peak; ~ open-loop sender fell behind its schedule")
        if ratios:
            print()
        for padding in args.padding:
            for mode in ("intn", "bare"):
                if mode not in ratios.get(padding, {}):
                    continue
                ours, ref, value = ratios[padding][mode]
                verdict = "meets" if value >= TARGET_RATIO else "BELOW"
                which = ("issue #3's reference: a conventional Twisted forwarder" if mode == ISSUE_REFERENCE
                         else "the hand-tuned floor, for comparison")
                name = "zentalk-relay" if len(args.padding) == 1 else f"zentalk-relay (padding {padding})"
                print(f"ratio at peak, {name} / {LABELS[mode]}: {ours:,.0f} / {ref:,.0f} = {value:.3f} "
                      f"({verdict} the target {TARGET_RATIO}; {which})")
        if pad_summary:
            print()
            print(format_padding(pad_summary, args))
        if profile is not None:
            print()
            print(format_profile(profile))
        for e in errors:
            print(f"error: {e.splitlines()[0]}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
