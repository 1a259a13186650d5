#!/usr/bin/env python3
"""Mailbox write benchmark: durable writes/s with acknowledgement after commit, node vs bare SQLite.

    python benchmarks/mailbox_writes.py [--window 512] [--size 512] [--duration 5] [--warmup 1]
                                        [--recipients 1] [--profile py-spy] [--json]

One relay (twistd, pinned to the relay CPU, default CPU 0) and one lean client
link from a driver process pinned to the load CPU (default CPU 1). The driver
sends SEND frames of ``--size``-byte bodies to ``--recipients`` offline
recipients (never connected), at most ``--window`` outstanding, and counts the
RECEIPTs with status STORED: the node answers only after the message's
group commit (MailboxWriter, one SQLite thread, WAL, synchronous=FULL) returned.

The reference, measured in the same run on the same CPU and the same
filesystem: ``MailboxStore.put_many`` called directly, (a) with the node's
mean group-commit batch in the measured interval (its commits and stored
messages read from its metrics at the interval's edges; the node stores times
only to the minute, so its database no longer tells one commit from the next),
and (b) naively, one message per transaction. Prints writes/s, commits/s, the
mean batch and latency (the node: send to RECEIPT; the references: one
put_many call). See benchmarks/README.md.

All traffic goes to 127.0.0.1; every phase, drain and wait is bounded; every
process started is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import linkbench  # noqa: E402
import nodes  # noqa: E402
from linkbench import HOST, log  # noqa: E402
from nodes import RECEIPT, U16, U64  # noqa: E402

SCRIPT = Path(__file__).resolve()
DRAIN_S = 15.0
STORED, REFUSED = 1, 2
#: The node's per-recipient quota (10,000 messages by default) would refuse a
#: benchmark's worth of messages to one recipient: raised, here and in the reference.
BIG = 1 << 40
MAILBOX_SETTINGS = (f"mailbox.per_recipient_messages={BIG}", f"mailbox.per_recipient_bytes={BIG}",
                    f"mailbox.total_bytes={BIG}")


# ==========================================================================================
# the driver (a child process pinned to the load CPU)


def drive(spec_path: str) -> int:
    linkbench.use_checkout()
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = drive_lean(spec)
    except (nodes.DriverError, OSError, RuntimeError, ValueError) as error:
        result = {"errors": [f"{type(error).__name__}: {error}"]}
    print(json.dumps(result), flush=True)
    return 1 if result.get("errors") else 0


def drive_lean(spec: dict) -> dict:
    window, size = spec["window"], spec["size"]
    perf = time.perf_counter
    result: dict = {"errors": []}
    errors = result["errors"]
    link = nodes.LeanLink(HOST, spec["port"], spec["bootstrap"], spec["window_initial"])
    recipients = [bytes.fromhex(r) for r in spec["recipients"]]
    tail, body = os.urandom(8), os.urandom(size)
    head = U16.pack(1 + 16 + 32 + size) + b"\x30"
    rests = [tail + r + body for r in recipients]
    nrec = len(rests)
    ring = 1
    while ring < 4 * window:
        ring *= 2
    mask = ring - 1
    times = [0.0] * ring
    sent = done = stored = refused = other_status = 0
    latencies: list[float] = []
    m_done = 0
    meter = nodes.Meter({"node": int(spec["pid"])})
    started = False
    max_messages = spec["max_messages"]
    t0 = perf()
    m_start = t0 + spec["warmup"]
    m_end = m_start + spec["duration"]
    deadline = time.monotonic() + spec["time_limit"]
    last_done, last_progress = 0, t0
    measured = None
    wall_start = wall_end = None
    counts_start = counts_end = None
    links = [link]

    def read(t):
        nonlocal done, stored, refused, other_status, m_done
        for f in link.read(t):
            if f[0] != RECEIPT:
                continue
            seq = U64.unpack_from(f, 1)[0]
            status = f[17]
            done += 1
            if status == STORED:
                stored += 1
                if m_start <= t <= m_end:
                    latencies.append(t - times[seq & mask])
                    m_done += 1
            elif status == REFUSED:
                refused += 1
            else:
                other_status += 1

    try:
        while True:
            now = perf()
            if not started and now >= m_start:
                meter.start()
                wall_start = time.time()
                counts_start = mailbox_counts(spec["metrics_url"])
                started = True
                if spec.get("start_file"):
                    Path(spec["start_file"]).touch()
            if now >= m_end:
                break
            if time.monotonic() > deadline:
                errors.append("time limit reached")
                break
            if done != last_done:
                last_done, last_progress = done, now
            elif sent > done and now - last_progress > spec["stall_s"]:
                errors.append(f"no RECEIPT for {spec['stall_s']:g} s with {sent - done} outstanding")
                break
            room = min(window - (sent - done), link.credit(now), max_messages - sent)
            if room > 0 and len(link.out) < nodes.OUTBUF_HIGH:
                add, pack = link.add, U64.pack
                for seq in range(sent, sent + room):
                    times[seq & mask] = now
                    add(head + pack(seq) + rests[seq % nrec], True)
                sent += room
            link.flush()
            for _ in nodes.poll_links(links, 0.0 if link.out else 0.005):
                read(perf())
            if link.errors:
                errors += link.errors
                break
            if sent >= max_messages and done >= sent:
                errors.append("--max-messages reached")
                break
        if started:
            measured = meter.stop()
            wall_end = time.time()
            counts_end = mailbox_counts(spec["metrics_url"])
        sent_at_end = sent
        drain_end = time.monotonic() + DRAIN_S
        while done < sent_at_end and time.monotonic() < drain_end and not errors:
            link.flush()
            for _ in nodes.poll_links(links, 0.01):
                read(perf())
            if link.errors:
                errors += link.errors
        if done < sent_at_end and not errors:
            errors.append(f"{sent_at_end - done} RECEIPTs missing {DRAIN_S:g} s after the run")
        if refused:
            errors.append(f"{refused} messages refused by the node")
    finally:
        link.close()
    result.update(stored=m_done, rate=round(m_done / spec["duration"], 1), sent=sent, completed=done,
                  refused=refused, other_status=other_status, measure=measured,
                  wall_start=wall_start, wall_end=wall_end, **nodes.percentiles_ms(latencies),
                  batches=commits_between(counts_start, counts_end, spec["duration"]),
                  # how the node packs its RECEIPTs: frames per record (a record costs one AEAD call)
                  frames_per_record=round(link.frames_in / max(1, link.records_in), 2), records_in=link.records_in)
    return result


# ==========================================================================================
# the reference (a child process pinned to the relay CPU)


def reference(spec_path: str) -> int:
    linkbench.use_checkout()
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = run_reference(spec)
    except (sqlite3.Error, OSError, ValueError) as error:
        result = {"errors": [f"{type(error).__name__}: {error}"]}
    print(json.dumps(result), flush=True)
    return 1 if result.get("errors") else 0


def run_reference(spec: dict) -> dict:
    """MailboxStore.put_many on a fresh database: the given batch sizes in turn, for ``duration`` s."""
    from zentalk_relay.relay.mailbox import Limits, MailboxStore, PutResult

    limits = Limits(per_recipient_messages=BIG, per_recipient_bytes=BIG, total_bytes=BIG)
    store = MailboxStore(Path(spec["db"]), limits)
    recipients = [bytes.fromhex(r) for r in spec["recipients"]]
    body = os.urandom(spec["size"])
    tail = os.urandom(8)
    sizes = spec["batches"] or [1]
    nrec = len(recipients)
    seq = 0
    commits = 0
    call_times: list[float] = []
    errors: list[str] = []
    perf = time.perf_counter
    # warm-up: one small transaction (creates the WAL)
    store.put_many([(recipients[0], os.urandom(16), body)], time.time())
    all0 = linkbench.all_cpu()
    cpu0, t0 = time.process_time(), perf()
    end = t0 + spec["duration"]
    i = 0
    while True:
        now = perf()
        if now >= end or seq >= spec["max_messages"]:
            break
        n = sizes[i % len(sizes)]
        i += 1
        items = [(recipients[s % nrec], U64.pack(s) + tail, body) for s in range(seq, seq + n)]
        seq += n
        c0 = perf()
        results = store.put_many(items, time.time())
        call_times.append(perf() - c0)
        commits += 1
        if any(r is not PutResult.STORED for r in results):
            errors.append(f"put_many refused: {sorted({r.value for r in results})}")
            break
    wall = perf() - t0
    cpu = time.process_time() - cpu0
    foreign = linkbench.foreign_cpu(all0, linkbench.all_cpu(), {os.getpid()}) / wall
    store.close()
    out = {"writes": seq, "commits": commits, "seconds": round(wall, 3), "rate": round(seq / wall, 1),
           "commit_rate": round(commits / wall, 1), "mean_batch": round(seq / max(1, commits), 1),
           "cpu": round(cpu / wall, 3), "other": round(foreign, 3), "errors": errors}
    out.update(nodes.percentiles_ms(call_times))
    return out


# ==========================================================================================
# the benchmark


def mailbox_counts(url: str) -> tuple[float, float] | None:
    """The node's group commits and stored messages so far (``zentalk_mailbox_commits_total`` and
    ``zentalk_mailbox_events_total{event="stored"}``; exact: the node runs with metrics.blur_interval=0)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    commits = stored = None
    for line in text.splitlines():
        if line.startswith("zentalk_mailbox_commits_total "):
            commits = float(line.rsplit(" ", 1)[1])
        elif line.startswith('zentalk_mailbox_events_total{event="stored"}'):
            stored = float(line.rsplit(" ", 1)[1])
    return None if commits is None or stored is None else (commits, stored)


def commits_between(first, last, seconds: float) -> dict:
    """The node's group commits in the measured interval and their mean batch."""
    if not first or not last or last[0] <= first[0]:
        return {}
    commits, rows = last[0] - first[0], last[1] - first[1]
    return {"commits": int(commits), "rows": int(rows), "mean": round(rows / commits, 1),
            "commit_rate": round(commits / seconds, 1)}


def run_node(base: Path, args, profile: bool = False) -> dict:
    """Start the relay, drive it, stop it cleanly, read its batches back. Returns the row."""
    settings = list(nodes.RELAY_SETTINGS) + [f"link.window_initial={args.window_initial}"] + list(MAILBOX_SETTINGS)
    relays = nodes.start_relays(base, ["a"], args.relay_cpu, settings, nodelay=args.tcp_nodelay)
    node = relays["a"]
    spies: dict = {}
    start_file = base / "started"
    thread = None
    result: dict = {"errors": []}
    try:
        log(f"  node pid {node.pid} on cpu {args.relay_cpu}, link port {node.link_port}, "
            f"data dir {node.data_dir}")
        recipients = [os.urandom(32).hex() for _ in range(args.recipients)]
        spec = {"port": node.link_port, "bootstrap": str(node.bootstrap), "recipients": recipients,
                "window": args.window, "size": args.size, "warmup": args.warmup, "duration": args.duration,
                "max_messages": args.max_messages, "stall_s": 10.0, "window_initial": args.window_initial,
                "pid": node.pid, "time_limit": args.warmup + args.duration + DRAIN_S + 60,
                "metrics_url": f"http://{HOST}:{node.metrics_port}/metrics",
                "start_file": str(start_file) if profile else None}
        if profile:
            def watch():
                deadline = time.monotonic() + 120
                while not start_file.exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
                if start_file.exists():
                    spies["node"] = nodes.py_spy(node.pid, args.duration, base / "node.raw", rate=args.spy_rate,
                                                 threads=True)

            thread = threading.Thread(target=watch, daemon=True)
            thread.start()
        before = nodes.relay_counters(node)
        result = nodes.run_child(SCRIPT, "--drive", spec, str(args.load_cpu), timeout=spec["time_limit"] + 60)
        result["counters"] = nodes.counter_delta(before, nodes.relay_counters(node))
        result["recipients"] = recipients
        if not node.alive():
            result["errors"].append(f"the node died:\n{node.log_tail()}")
    finally:
        if thread is not None:
            thread.join(timeout=5)
        if spies:
            result.setdefault("profile_error", nodes.wait_spy(spies["node"], args.duration + 30))
        code = node.stop()
        if code not in (0, -15, None):  # twistd re-raises SIGTERM after a clean stop
            log(f"  note: the node exited with {code}")
    if profile:
        raw = base / "node.raw"
        result["profile"] = (nodes.summarize_threads(raw, keep_line=("relay/mailbox.py", "relay/service.py"))
                             if raw.exists() else {"error": result.get("profile_error") or "py-spy wrote nothing"})
    return result


def run_ref(base: Path, name: str, batches: list[int], recipients: list[str], args, duration: float) -> dict:
    db = base / f"ref-{name}" / "mailbox.sqlite3"
    db.parent.mkdir(parents=True, exist_ok=True)
    spec = {"db": str(db), "batches": batches, "recipients": recipients, "size": args.size,
            "duration": duration, "max_messages": args.max_messages}
    # the relay CPU: where the node's database thread ran
    cpu = args.relay_cpu.split(",")[0]
    return nodes.run_child(SCRIPT, "--reference", spec, cpu, timeout=duration + 120)


def format_table(node_row: dict | None, refs: dict, args) -> str:
    head = ["writer", "writes/s", "commits/s", "mean batch", "p50 ms", "p99 ms", "vs put_many", "cpu", "gen cpu",
            "other", "flags"]
    body = []
    group = refs.get("group") or {}
    if node_row is not None:
        m = node_row.get("measure") or {}
        b = node_row.get("batches") or {}
        srv = (m.get("srv_cpu") or {}).get("node")
        other = node_row.get("other", 0.0)
        fl = ("!" if other > linkbench.DISTURBED else "") + ("*" if (m.get("gen_cpu") or 0) > 0.9 else "") + (
            "E" if node_row.get("errors") else "")
        body.append(["node: SEND -> RECEIPT STORED", f"{node_row.get('rate', 0):,.0f}",
                     "n/a" if b.get("commit_rate") is None else f"{b['commit_rate']:,.1f}",
                     "n/a" if b.get("mean") is None else f"{b['mean']:.1f}",
                     _ms(node_row.get("p50_ms")), _ms(node_row.get("p99_ms")),
                     f"{node_row['rate'] / group['rate']:.2f}x" if group.get("rate") and node_row.get("rate") else "n/a",
                     "n/a" if srv is None else f"{srv:.2f}",
                     "n/a" if m.get("gen_cpu") is None else f"{m['gen_cpu']:.2f}", f"{other:.2f}", fl])
    labels = {"group": "put_many, the node's mean batch", "naive": "put_many, 1 message per commit"}
    for name in ("group", "naive"):
        r = refs.get(name)
        if not r or r.get("rate") is None:
            continue
        body.append([labels[name], f"{r['rate']:,.0f}", f"{r['commit_rate']:,.1f}", f"{r['mean_batch']:.1f}",
                     _ms(r.get("p50_ms")), _ms(r.get("p99_ms")),
                     f"{r['rate'] / group['rate']:.2f}x" if group.get("rate") else "n/a",
                     f"{r['cpu']:.2f}", "", f"{r.get('other', 0):.2f}",
                     ("!" if r.get("other", 0) > linkbench.DISTURBED else "") + ("E" if r.get("errors") else "")])
    return linkbench.table(head, body, left=(0, 10))


def summary(node_row: dict | None, refs: dict, args) -> list[str]:
    """Where the node's time goes, from the numbers of this run."""
    lines: list[str] = []
    if not node_row or not node_row.get("rate"):
        return lines
    m = node_row.get("measure") or {}
    srv = (m.get("srv_cpu") or {}).get("node")
    group = refs.get("group") or {}
    b = node_row.get("batches") or {}
    if srv:
        node_us = 1e6 * srv / node_row["rate"]
        line = f"node CPU per stored message: {node_us:.1f} us"
        if group.get("rate") and group.get("cpu") is not None:
            db_us = 1e6 * group["cpu"] / group["rate"]
            line += (f"; of which put_many (the reference's CPU per message): {db_us:.1f} us; the rest, "
                     f"{node_us - db_us:.1f} us, is the reactor thread (link, routing, Deferreds, RECEIPTs) and the "
                     "thread hand-off")
        lines.append(line)
        if node_row.get("frames_per_record") is not None:
            lines.append(f"RECEIPTs per record from the node: {node_row['frames_per_record']:.2f} "
                         "(each record is one AEAD seal and one transport.write in the node)")
        lines.append(f"node process busy {srv:.2f} of a core (its reactor thread and its database thread share "
                     f"the GIL and CPU {args.relay_cpu})")
    return lines


def _ms(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def format_profile(prof: dict, top: int = 12) -> str:
    if "error" in prof:
        return f"profile: {prof['error']}"
    lines = [f"py-spy --threads on the node during one more run ({prof.get('rate') or 0:,.0f} writes/s under the "
             f"profiler, {prof['samples']} samples of running threads; shares are of each thread's samples)"]
    for t in prof["threads"][:3]:
        lines.append(f"{t['thread']}: {t['samples']} samples")
        lines.append("    self %  function")
        lines += [f"    {p:6.1f}  {n}" for n, p in t["self"][:top]]
        zt = [(n, p) for n, p in t["inclusive"] if "zentalk_relay" in n or "sqlite" in n.lower()]
        if zt:
            lines.append("    incl %  function (zentalk_relay)")
            lines += [f"    {p:6.1f}  {n}" for n, p in zt[:top]]
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--window", type=int, default=512, help="messages outstanding at most (default 512)")
    p.add_argument("--size", type=int, default=512, help="message body bytes (default 512)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first (default 1)")
    p.add_argument("--naive-duration", type=float, default=3.0,
                   help="seconds of the one-commit-per-message reference (default 3)")
    p.add_argument("--recipients", type=int, default=1, help="offline recipients, messages spread round robin "
                   "(default 1)")
    p.add_argument("--relay-cpu", default="0", help="CPU for the node and the references (default 0)")
    p.add_argument("--load-cpu", type=int, default=1, help="CPU for the load driver (default 1)")
    p.add_argument("--window-initial", type=int, default=0,
                   help="link.window_initial of the node and the driver (default max(1000, 4 x window), at most "
                        "10000)")
    p.add_argument("--data-root", default=None, help="directory for the node's and the references' databases "
                   "(default: the system temp dir); all on one filesystem")
    p.add_argument("--max-messages", type=int, default=5_000_000, help="hard cap per run")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="before each run, wait up to this many seconds for other processes to stop using CPU "
                        "(default 30; 0: do not wait)")
    p.add_argument("--retries", type=int, default=2,
                   help="measure a row again when other processes took CPU during it (default 2)")
    p.add_argument("--profile", choices=("none", "py-spy"), default="none",
                   help="one more node run with py-spy (--threads) on the node")
    p.add_argument("--spy-rate", type=int, default=200, help="py-spy samples per second (default 200)")
    p.add_argument("--tcp-nodelay", action="store_true",
                   help="what-if experiment: start the node with TCP_NODELAY on its link sockets, patched in by a "
                        "wrapper around twistd; the package is not changed (it sets TCP_NODELAY itself since 5a9a523: the "
                        "flag is for older trees)")
    p.add_argument("--json", action="store_true", help="print machine-readable results on stdout")
    p.add_argument("--drive", metavar="SPEC", help=argparse.SUPPRESS)
    p.add_argument("--reference", metavar="SPEC", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.drive or a.reference:
        return a
    if not 1 <= a.window <= 5000 or not 0 <= a.size <= 65536 or not 1 <= a.recipients <= 100000:
        p.error("--window must be 1..5000, --size 0..65536, --recipients 1..100000")
    if not 0.5 <= a.duration <= 120 or not 0 <= a.warmup <= 30 or not 0.2 <= a.naive_duration <= 60:
        p.error("--duration must be 0.5..120, --warmup 0..30, --naive-duration 0.2..60")
    if not a.window_initial:
        a.window_initial = min(10000, max(1000, 4 * a.window))
    allowed = os.sched_getaffinity(0)
    if not {int(x) for x in a.relay_cpu.split(",")} <= allowed or a.load_cpu not in allowed:
        p.error(f"CPUs must be among {sorted(allowed)}")
    return a


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.drive:
        return drive(args.drive)
    if args.reference:
        return reference(args.reference)
    errors: list[str] = []
    node_row = None
    refs: dict = {}
    prof = None
    with tempfile.TemporaryDirectory(prefix="mailbox-", dir=args.data_root) as tmp:
        base = Path(tmp)
        device = nodes.stat_device(base)
        best = None
        for attempt in range(args.retries + 1):
            nodes.settle(args.quiet_wait)
            log(f"[node] starting the relay (data under {base}, {device}) ..." + (
                f" (again, {attempt}/{args.retries}: others took {node_row['other']:.2f} of a core)" if attempt else ""))
            try:
                node_row = run_node(base / f"node-{attempt}", args)
            except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError, sqlite3.Error) as error:
                errors.append(f"node: {error}")
                log(f"  ERROR: {error}")
                node_row = None
                break
            m = node_row.get("measure") or {}
            cpus = m.get("cpus") or {}
            busy = (cpus.get(args.relay_cpu) or {}).get("busy")
            srv = (m.get("srv_cpu") or {}).get("node")
            unexplained = busy - srv if busy is not None and srv is not None else 0.0
            node_row["cpu_busy"] = busy
            node_row["other"] = round(max(m.get("foreign_cpu") or 0.0, unexplained, 0.0), 3)
            node_row["attempts"] = attempt + 1
            if best is None or node_row.get("errors") or node_row["other"] < best["other"]:
                best = node_row  # keep the least disturbed attempt
            if node_row.get("errors") or node_row["other"] <= linkbench.DISTURBED:
                break
        node_row = best if node_row is not None else None
        if node_row is not None:
            errors += [f"node: {e}" for e in node_row.get("errors", [])]
            b = node_row.get("batches") or {}
            log(f"  {node_row.get('rate', 0):,.0f} writes/s, p50 {_ms(node_row.get('p50_ms'))} ms, "
                f"p99 {_ms(node_row.get('p99_ms'))} ms; {b.get('commits')} commits, mean batch {b.get('mean')}")
            recipients = node_row["recipients"]
            # the reference repeats the node's mean batch (the node's own sizes vary around it)
            sequence = [max(1, round(b["mean"]))] if b.get("mean") else []
            if not sequence:
                errors.append("no group commits seen in the measured interval")
            for name, batches, duration in (("group", sequence, args.duration), ("naive", [1], args.naive_duration)):
                if name == "group" and not sequence:
                    continue
                best = None
                for attempt in range(args.retries + 1):
                    nodes.settle(args.quiet_wait)
                    log(f"[reference/{name}] put_many, "
                        f"{'the node batch sizes' if name == 'group' else '1 per commit'} ..."
                        + (f" (again, {attempt}/{args.retries})" if attempt else ""))
                    try:
                        refs[name] = run_ref(base, f"{name}-{attempt}", batches, recipients, args, duration)
                    except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as error:
                        errors.append(f"reference {name}: {error}")
                        break
                    log(f"  {refs[name].get('rate', 0):,.0f} writes/s, {refs[name].get('commit_rate')} commits/s, "
                        f"others took {refs[name].get('other', 0):.2f} of a core")
                    refs[name]["attempts"] = attempt + 1
                    if best is None or refs[name].get("errors") or refs[name].get("other", 0) < best.get("other", 0):
                        best = refs[name]  # keep the least disturbed attempt
                    if refs[name].get("errors") or refs[name].get("other", 0) <= linkbench.DISTURBED:
                        break
                if best is not None:
                    refs[name] = best
                if name in refs:
                    errors += [f"reference {name}: {e}" for e in refs[name].get("errors", [])]
        if args.profile == "py-spy":
            nodes.settle(args.quiet_wait)
            log("[profile] node under py-spy ...")
            try:
                prof_row = run_node(base / "profile", args, profile=True)
                prof = prof_row.get("profile")
                if prof is not None:
                    prof["rate"] = prof_row.get("rate")
            except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError, sqlite3.Error) as error:
                errors.append(f"profile: {error}")

    if args.json:
        print(json.dumps({
            "benchmark": "mailbox_writes",
            "params": {"window": args.window, "size": args.size, "duration_s": args.duration, "warmup_s": args.warmup,
                       "recipients": args.recipients, "relay_cpu": args.relay_cpu, "load_cpu": args.load_cpu,
                       "window_initial": args.window_initial, "filesystem": device,
                       "tcp_nodelay_experiment": args.tcp_nodelay},
            "env": linkbench.env_info(), "node": node_row, "references": refs, "profile": prof, "errors": errors,
        }, indent=2))
    else:
        print()
        print(f"Mailbox writes: {args.size}-byte bodies to {args.recipients} offline recipient(s), at most {args.window} "
              f"outstanding, {args.duration:g} s measured after {args.warmup:g} s warm-up; node and references on "
              f"CPU {args.relay_cpu}, load driver on CPU {args.load_cpu}; databases on {device}"
              + ("; EXPERIMENT: node patched with TCP_NODELAY" if args.tcp_nodelay else ""))
        print(format_table(node_row, refs, args))
        print("  node: writes/s = RECEIPTs STORED per second (each sent after its commit); commits/s and batches: "
              "the node's group commits in the measured interval, from its metrics; p50/p99: send to "
              "RECEIPT")
        print("  put_many: MailboxStore.put_many on a fresh database (WAL, synchronous=FULL), the same item shapes; "
              "p50/p99: one put_many call (= one commit); cpu: share of a core (the rest is waiting on fsync)")
        print(f"  other: CPU taken by other processes during the row, in cores; flags: ! other > "
              f"{linkbench.DISTURBED:g} (numbers disturbed), * load driver > 90 % busy, E error")
        if node_row is not None and (node_row.get("batches") or {}).get("mean"):
            b = node_row["batches"]
            print(f"  node group commits in the measured interval: {b['commits']:,}, {b['rows']:,} messages, mean "
                  f"batch {b['mean']} (zentalk_mailbox_commits_total and zentalk_mailbox_events_total{{event=\"stored\"}})")
        for line in summary(node_row, refs, args):
            print(line)
        if prof is not None:
            print()
            print(format_profile(prof))
        for e in errors:
            print(f"error: {e.splitlines()[0]}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
