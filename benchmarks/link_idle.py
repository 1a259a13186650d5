#!/usr/bin/env python3
"""Idle links benchmark: the node's memory per authenticated link and its CPU use while they idle.

    python benchmarks/link_idle.py [--links 10000] [--idle 40] [--procs 0] [--concurrency 256] [--json]

Starts the node pinned to the server CPU (open-file limit raised for it and
for us with setrlimit; it inherits ours), opens and closes ``--warm`` links
so that first-use allocations are not charged to the links, reads the node's
VmRSS, then opens ``--links`` authenticated links from client processes
pinned to the load CPU (several links per process, ``--concurrency``
handshakes in flight each) and keeps them open and idle. Once every link is
up and the node has settled, it reads VmRSS again and samples the node's
CPU time (utime + stime from /proc) every second for ``--idle`` seconds.

Reported: RSS per link = (RSS after - RSS before) / links, against the
target of 25 KiB; the node's CPU while idle, as a fraction of one core, in
total and for the busiest second; the PING / PONG traffic in that time (the
node PINGs each link every 30 s plus 0-5 s of jitter, and the clients, which
run their LinkConnection timers like the reference client, PING the node
just as often), so whether the idle window saw them.

The clients are the package's LinkConnection over plain non-blocking sockets,
full handshakes with every signature checked. All traffic goes to 127.0.0.1;
every wait is bounded; every process started is stopped.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import heapq
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import linkbench  # noqa: E402
from linkbench import HERE, HOST, log  # noqa: E402

TARGET_KIB_PER_LINK = 25.0
READY_PREFIX = "READY "


# -- the client process -----------------------------------------------------------------------


def client_main(args) -> int:
    """Open ``--links`` links, report READY, keep them alive until SIGTERM or ``--lifetime``."""
    linkbench.use_checkout()
    linkbench.raise_nofile(args.links + 1024)
    from nacl.signing import SigningKey

    from zentalk_relay.bootstrap import parse
    from zentalk_relay.link.frames import Role
    from zentalk_relay.link.session import (Authenticated, Carrier, Closing, LinkConnection, LinkSettings,
                                            LinkStats)

    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("now", True))
    bootstrap = parse(args.bootstrap)
    expected = hashlib.sha256(bootstrap.ed25519_public).digest()
    settings = LinkSettings()
    stats = LinkStats()
    started_at = time.monotonic()

    poller = select.epoll()
    links: dict[int, list] = {}  # fd -> [sock, conn, pending first message or None, active]
    timers: list[tuple[float, int]] = []
    closes: dict[str, int] = {}
    established = 0
    opened = 0
    failed = 0

    def write(fd: int, units: list[bytes]) -> None:
        if not units:
            return
        try:
            links[fd][0].send(b"".join(units))  # small control records: the kernel buffer takes them
        except OSError as error:
            drop(fd, f"send:{errno.errorcode.get(error.errno, error.errno)}")

    def drop(fd: int, reason: str) -> None:
        nonlocal failed
        entry = links.pop(fd, None)
        if entry is None:
            return
        if not entry[3]:
            failed += 1
        closes[reason] = closes.get(reason, 0) + 1
        try:
            poller.unregister(fd)
        except OSError:
            pass
        entry[0].close()

    def arm(fd: int) -> None:
        entry = links.get(fd)
        if entry is not None:
            deadline = entry[1].next_deadline()
            if deadline is not None:
                heapq.heappush(timers, (deadline, fd))

    def handle(fd: int, events) -> None:
        nonlocal established
        entry = links.get(fd)
        if entry is None:
            return
        for event in events:
            if isinstance(event, Authenticated):
                entry[3] = True
                established += 1
            elif isinstance(event, Closing):
                write(fd, entry[1].pull(time.time()))
                drop(fd, f"{'node' if event.by_peer else 'client'}:{event.code.label}")
                return
        write(fd, entry[1].pull(time.time()))
        arm(fd)

    def open_one() -> None:
        nonlocal opened, failed
        now = time.time()
        conn = LinkConnection(initiator=True, role=Role.CLIENT, signing_key=SigningKey.generate(),
                              carrier=Carrier.NOISE_STREAM, settings=settings, now=now, stats=stats,
                              remote_static=bootstrap.link_public, expected_peer_id=expected)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex((args.host, args.port))
        opened += 1
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            failed += 1
            closes[f"connect:{errno.errorcode.get(err, err)}"] = closes.get(
                f"connect:{errno.errorcode.get(err, err)}", 0) + 1
            return
        conn.connection_made(now)
        links[sock.fileno()] = [sock, conn, b"".join(conn.pull(now)), False]
        poller.register(sock.fileno(), select.EPOLLOUT)

    def on_ready(fd: int) -> None:
        entry = links.get(fd)
        if entry is None:
            return
        sock, conn = entry[0], entry[1]
        if entry[2] is not None:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                drop(fd, f"connect:{errno.errorcode.get(err, err)}")
                return
            first, entry[2] = entry[2], None
            poller.modify(fd, select.EPOLLIN)
            write(fd, [first])
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as error:
            drop(fd, f"recv:{errno.errorcode.get(error.errno, error.errno)}")
            return
        if not data:
            drop(fd, "closed_by_node")
            return
        handle(fd, conn.receive_data(data, time.time()))

    def run_timers() -> None:
        now = time.time()
        while timers and timers[0][0] <= now:
            _, fd = heapq.heappop(timers)
            entry = links.get(fd)
            if entry is None:
                continue
            deadline = entry[1].next_deadline()
            if deadline is None:
                continue
            if deadline > now:
                heapq.heappush(timers, (deadline, fd))  # stale entry: the deadline moved
                continue
            handle(fd, entry[1].on_timer(now))

    # -- open
    open_deadline = time.monotonic() + args.open_timeout
    while (established + failed < args.links) and not stop["now"]:
        in_flight = sum(1 for e in links.values() if not e[3])
        while opened < args.links and in_flight < args.concurrency:
            open_one()
            in_flight += 1
        for fd, _ in poller.poll(0.05):
            on_ready(fd)
        run_timers()
        if time.monotonic() > open_deadline:
            break
    open_s = time.monotonic() - started_at
    print(READY_PREFIX + json.dumps({"pid": os.getpid(), "established": established, "failed": failed,
                                     "open_s": round(open_s, 3), "closes": closes}), flush=True)

    # -- idle until told to stop
    pings_at_ready = stats.frames_in.get("ping", 0)
    end = time.monotonic() + args.lifetime
    while not stop["now"] and time.monotonic() < end:
        timeout = 1.0
        if timers:
            timeout = max(0.0, min(1.0, timers[0][0] - time.time()))
        for fd, _ in poller.poll(timeout):
            on_ready(fd)
        run_timers()
    result = {
        "pid": os.getpid(), "established": established, "failed": failed, "open_s": round(open_s, 3),
        "still_open": sum(1 for e in links.values() if e[3]), "closes": closes,
        "frames_in": dict(stats.frames_in), "frames_out": dict(stats.frames_out),
        "pings_from_node_after_ready": stats.frames_in.get("ping", 0) - pings_at_ready,
    }
    for entry in list(links.values()):
        entry[0].close()
    print(json.dumps(result), flush=True)
    return 0


# -- orchestration ------------------------------------------------------------------------------


class Clients:
    """The client processes, pinned to the load CPU."""

    def __init__(self, args, node: linkbench.Node, total: int, procs: int, tmp: Path) -> None:
        self.procs: list[subprocess.Popen] = []
        self.ready: list[dict] = []
        self.outputs: list[Path] = []
        share = [total // procs + (1 if i < total % procs else 0) for i in range(procs)]
        for i, n in enumerate(share):
            if n == 0:
                continue
            out = tmp / f"client{i}.out"
            self.outputs.append(out)
            cmd = ["taskset", "-c", str(args.load_cpu), sys.executable, str(HERE / "link_idle.py"),
                   "--role", "client", "--port", str(node.link_port), "--bootstrap", str(node.bootstrap),
                   "--links", str(n), "--concurrency", str(args.concurrency),
                   "--open-timeout", str(args.open_timeout), "--lifetime", str(args.lifetime)]
            with open(out, "wb") as handle, open(tmp / f"client{i}.err", "wb") as err:
                self.procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=handle, stderr=err,
                                                   env=linkbench.checkout_env()))

    def wait_ready(self, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = []
            for out in self.outputs:
                for line in out.read_text(errors="replace").splitlines():
                    if line.startswith(READY_PREFIX):
                        ready.append(json.loads(line[len(READY_PREFIX):]))
            if len(ready) == len(self.outputs):
                self.ready = ready
                return ready
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError("a client process exited early: "
                                   + linkbench.tail(self.outputs[0].with_suffix(".err")))
            time.sleep(0.2)
        raise RuntimeError(f"the clients were not ready within {timeout:g} s")

    def stop(self) -> list[dict]:
        results = []
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p, out in zip(self.procs, self.outputs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
            lines = [ln for ln in out.read_text(errors="replace").splitlines()
                     if ln.startswith("{")]
            if lines:
                results.append(json.loads(lines[-1]))
        return results


def settle(args, what: str) -> None:
    if args.quiet_wait <= 0:
        return
    quiet, waited = linkbench.wait_quiet(args.quiet_wait)
    if not quiet:
        log(f"  note: other processes kept using CPU for {waited:.0f} s; measuring {what} anyway")
    elif waited > 3:
        log(f"  waited {waited:.0f} s for other processes to go quiet")


def frames_metric(node: linkbench.Node) -> dict[str, float]:
    out = {}
    for direction in ("in", "out"):
        for kind in ("ping", "pong"):
            out[f"{kind}_{direction}"] = node.metric("zentalk_link_frames_total",
                                                      {"direction": direction, "type": kind}) or 0.0
    return out


def bench(args) -> int:
    nofile = linkbench.raise_nofile(args.links + args.warm + 4096)
    log(f"open-file limit now {nofile[0]} (hard {nofile[1]})")
    errors: list[str] = []
    result: dict = {}
    limit = max(20000, args.links + args.warm + 1000)
    settings = [s for s in linkbench.BENCH_SETTINGS if not s.startswith(("link.max_links", "link.links_per_ip"))]
    settings += [f"link.max_links={limit}", f"link.links_per_ip={limit}"]
    with tempfile.TemporaryDirectory(prefix="linkidle-") as tmp:
        tmp = Path(tmp)
        node = linkbench.Node(tmp, args.server_cpu, settings)
        clients = warm = None
        try:
            node.start()
            log(f"[zentalk-relay] node pid {node.pid} on cpu {args.server_cpu}, link port {node.link_port}, "
                f"fd limit {_nofile_of(node.pid)}")
            result["rss_start_kib"] = linkbench.rss_kib(node.pid)
            if args.warm:
                (tmp / "warm").mkdir()
                warm = Clients(args, node, args.warm, 1, tmp / "warm")
                warm.wait_ready(args.open_timeout + 30)
                warm_result = warm.stop()
                result["warm"] = {"links": args.warm, "closed": warm_result}
                time.sleep(1.0)
            settle(args, "the baseline")
            time.sleep(args.settle)
            result["rss_before_kib"] = linkbench.rss_kib(node.pid)
            result["fds_before"] = linkbench.open_fds(node.pid)
            procs = args.procs or max(1, math.ceil(args.links / 10000))
            log(f"  opening {args.links:,} links from {procs} client process(es) on cpu {args.load_cpu}, "
                f"{args.concurrency} handshakes in flight each")
            t_open = time.monotonic()
            cpu_open0 = linkbench.cpu_seconds(node.pid)
            clients = Clients(args, node, args.links, procs, tmp)
            ready = clients.wait_ready(args.open_timeout + 60)
            result["open_s"] = round(time.monotonic() - t_open, 3)
            result["node_cpu_open_s"] = round(linkbench.cpu_seconds(node.pid) - cpu_open0, 3)
            established = sum(r["established"] for r in ready)
            result["established"] = established
            result["failed_to_open"] = sum(r["failed"] for r in ready)
            if result["failed_to_open"]:
                errors.append(f"{result['failed_to_open']} links failed to open: "
                              + json.dumps([r["closes"] for r in ready]))
            log(f"  {established:,} links up in {result['open_s']:.1f} s "
                f"(node CPU {result['node_cpu_open_s']:.1f} s)")
            time.sleep(args.settle)
            result["rss_after_kib"] = linkbench.rss_kib(node.pid)
            result["fds_after"] = linkbench.open_fds(node.pid)
            links_gauge = node.metric("zentalk_link_links", {"state": "active"})
            result["node_active_links"] = links_gauge
            frames0 = frames_metric(node)
            settle(args, "the idle CPU")
            # the idle window: nothing of ours talks to the node but the links themselves
            series = []
            stat0 = linkbench.cpu_stat()
            procs0 = linkbench.all_cpu()
            c0 = c_prev = linkbench.cpu_seconds(node.pid)
            t0 = t_prev = time.monotonic()
            end = t0 + args.idle
            while True:
                time.sleep(max(0.0, min(1.0, end - time.monotonic())))
                now, c = time.monotonic(), linkbench.cpu_seconds(node.pid)
                if c is None:
                    errors.append("the node died during the idle window")
                    break
                series.append(round((c - c_prev) / max(1e-9, now - t_prev), 4))
                t_prev, c_prev = now, c
                if now >= end:
                    break
            wall = t_prev - t0
            result["idle_s"] = round(wall, 3)
            result["idle_cpu"] = round((c_prev - c0) / wall, 4) if c_prev is not None else None
            result["idle_cpu_s"] = round(c_prev - c0, 3) if c_prev is not None else None
            result["idle_cpu_max_1s"] = max(series) if series else None
            result["idle_cpu_series"] = series
            procs1 = linkbench.all_cpu()
            result["foreign_cpu"] = round(linkbench.foreign_cpu(procs0, procs1, {os.getpid(), node.pid}
                                                                | {p.pid for p in clients.procs}) / wall, 3)
            result["kernel_cpu"] = round(linkbench.kernel_cpu(procs0, procs1) / wall, 3)
            result["cpus"] = linkbench.cpu_stat_delta(stat0, linkbench.cpu_stat())
            result["other_cpu"] = linkbench.disturbance(
                {"foreign_cpu": result["foreign_cpu"], "kernel_cpu": result["kernel_cpu"], "cpus": result["cpus"],
                 "srv_cpu": result["idle_cpu"]},
                args.server_cpu)
            frames1 = frames_metric(node)
            result["frames_idle"] = {k: frames1[k] - frames0[k] for k in frames0}
            result["rss_end_kib"] = linkbench.rss_kib(node.pid)
            result["rss_hwm_kib"] = _hwm(node.pid)
            closed = clients.stop()
            clients = None
            result["clients"] = closed
            result["still_open"] = sum(r.get("still_open", 0) for r in closed)
            result["closed_during_run"] = {}
            for r in closed:
                for k, v in r.get("closes", {}).items():
                    result["closed_during_run"][k] = result["closed_during_run"].get(k, 0) + v
            if result["still_open"] < established:
                errors.append(f"only {result['still_open']:,} of {established:,} links were still open at the end: "
                              + json.dumps(result["closed_during_run"]))
            if not node.alive():
                errors.append(f"the node died:\n{node.log_tail()}")
        except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as error:
            errors.append(str(error))
        finally:
            for group in (clients, warm):
                if group is not None:
                    group.stop()
            node.stop()

    if result.get("rss_after_kib") and result.get("rss_before_kib") and result.get("established"):
        result["rss_per_link_kib"] = round((result["rss_after_kib"] - result["rss_before_kib"])
                                           / result["established"], 2)
    report(args, result, errors)
    return 1 if errors else 0


def _nofile_of(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return line.split()[3]
    except OSError:
        pass
    return "?"


def _hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def report(args, r: dict, errors: list[str]) -> None:
    if args.json:
        print(json.dumps({
            "benchmark": "link_idle",
            "params": {"links": args.links, "idle_s": args.idle, "warm": args.warm, "concurrency": args.concurrency,
                       "server_cpu": args.server_cpu, "load_cpu": args.load_cpu},
            "env": linkbench.env_info(), "result": r, "target_kib_per_link": TARGET_KIB_PER_LINK,
            "errors": errors,
        }, indent=2))
        return
    print()
    print(f"Idle links: {args.links:,} authenticated links to one node (CPU {args.server_cpu}); clients on "
          f"CPU {args.load_cpu}; idle window {args.idle:g} s")
    per = r.get("rss_per_link_kib")
    rows = [
        ["links up", f"{r.get('established', 0):,}", ""],
        ["time to open them", _s(r.get("open_s")), f"node CPU {_s(r.get('node_cpu_open_s'))}"],
        ["node RSS at start", _kib(r.get("rss_start_kib")), ""],
        ["node RSS before (after warm-up)", _kib(r.get("rss_before_kib")), f"{args.warm} links opened and closed"],
        ["node RSS with the links", _kib(r.get("rss_after_kib")), f"fds {r.get('fds_after')}"],
        ["RSS per link", "n/a" if per is None else f"{per:.2f} KiB",
         f"target <= {TARGET_KIB_PER_LINK:g} KiB: " + ("n/a" if per is None else
                                                       ("meets" if per <= TARGET_KIB_PER_LINK else "ABOVE"))],
        ["node RSS at the end / peak", f"{_kib(r.get('rss_end_kib'))} / {_kib(r.get('rss_hwm_kib'))}", ""],
        ["node CPU while idle", "n/a" if r.get("idle_cpu") is None else f"{r['idle_cpu'] * 100:.2f} % of a core",
         f"{_s(r.get('idle_cpu_s'))} CPU in {_s(r.get('idle_s'))}"],
        ["  busiest second", "n/a" if r.get("idle_cpu_max_1s") is None else f"{r['idle_cpu_max_1s'] * 100:.1f} %",
         ""],
        ["  median second", "n/a" if not r.get("idle_cpu_series") else
         f"{sorted(r['idle_cpu_series'])[len(r['idle_cpu_series']) // 2] * 100:.2f} %", "between PING rounds"],
        ["PINGs node -> clients in window", _n((r.get("frames_idle") or {}).get("ping_out")),
         f"PONGs back {_n((r.get('frames_idle') or {}).get('pong_in'))}"],
        ["PINGs clients -> node in window", _n((r.get("frames_idle") or {}).get("ping_in")),
         f"PONGs sent {_n((r.get('frames_idle') or {}).get('pong_out'))}"],
        ["other processes' CPU", _f(r.get("other_cpu")) + " cores",
         "the node's figures are its own CPU time" if (r.get("other_cpu") or 0) > linkbench.DISTURBED else ""],
    ]
    print(linkbench.table(["", "value", "note"], rows, left=(0, 2)))
    pings = (r.get("frames_idle") or {}).get("ping_out") or 0
    if r.get("established"):
        seen = pings / r["established"]
        print(f"  the idle window saw {seen:.2f} node PINGs per link (each link's first comes 30-35 s after it "
              f"opened); {'the CPU figure includes the PING rounds' if seen >= 0.5 else 'too short to see the PINGs: use --idle 40 or more'}")
        exchanges = pings + ((r.get("frames_idle") or {}).get("ping_in") or 0)
        if exchanges and r.get("idle_cpu_s") is not None:
            print(f"  node CPU per PING/PONG exchange (either direction): {r['idle_cpu_s'] / exchanges * 1e6:.0f} us "
                  f"({exchanges:,.0f} exchanges)")
    for e in errors:
        print(f"error: {e.splitlines()[0]}")


def _kib(v) -> str:
    return "n/a" if v is None else f"{v / 1024:,.1f} MiB"


def _s(v) -> str:
    return "n/a" if v is None else f"{v:.1f} s"


def _n(v) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=("bench", "client"), default="bench", help=argparse.SUPPRESS)
    p.add_argument("--host", default=HOST, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--bootstrap", default="", help=argparse.SUPPRESS)
    p.add_argument("--lifetime", type=float, default=0, help=argparse.SUPPRESS)
    p.add_argument("--links", type=int, default=10000, help="idle links to open (default 10000)")
    p.add_argument("--idle", type=float, default=40.0,
                   help="seconds to sample the node's CPU with the links idle (default 40: long enough for "
                        "every link's first PING)")
    p.add_argument("--warm", type=int, default=100, help="links opened and closed before the baseline (default 100)")
    p.add_argument("--procs", type=int, default=0, help="client processes (default: one per 10,000 links)")
    p.add_argument("--concurrency", type=int, default=256, help="handshakes in flight per client process")
    p.add_argument("--settle", type=float, default=2.0, help="seconds to wait before each RSS reading")
    p.add_argument("--open-timeout", type=float, default=300.0, help="bound on opening the links, seconds")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--quiet-wait", type=float, default=60.0,
                   help="wait up to this many seconds for other processes to stop using CPU before measuring")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.role == "bench":
        if not 1 <= a.links <= 60000:
            p.error("--links must be 1..60000")
        if not 1 <= a.idle <= 3600:
            p.error("--idle must be 1..3600")
        a.lifetime = a.open_timeout + a.idle + 4 * a.settle + 2 * a.quiet_wait + 300
        linkbench.check_cpus(a.server_cpu, a.load_cpu)
    return a


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.role == "client":
        return client_main(args)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
