#!/usr/bin/env python3
"""STUN Binding benchmark: coturn vs a bare Twisted responder vs our relay node.

    python benchmarks/stun_binding.py [--duration 5] [--warmup 1]
                                      [--window 64 256] [--servers ...] [--json]

For each server in turn (coturn, the bare Twisted responder in
bare_stun_responder.py, and the zentalk-relay twistd plugin if installed) it
starts the server pinned to one CPU, waits until it answers a STUN Binding
request, runs the C load generator (stun_load.c, built on demand into
benchmarks/.build/) pinned to another CPU at each window size, stops the
server and prints one table.  See benchmarks/README.md.

All traffic goes to 127.0.0.1.  Every wait is bounded.
"""

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SRC = HERE / "stun_load.c"
BUILD_DIR = HERE / ".build"
BIN = BUILD_DIR / "stun_load"
CFLAGS = ["-O2", "-Wall"]

HOST = "127.0.0.1"
MAGIC_COOKIE = 0x2112A442
SERVERS = ("coturn", "bare", "zentalk")
LABELS = {"coturn": "coturn", "bare": "bare-twisted", "zentalk": "zentalk-relay"}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# build


def build_generator():
    """Compile stun_load.c with gcc -O2 unless the binary is up to date."""
    cmd = ["gcc", *CFLAGS, "-o", str(BIN) + ".tmp", str(SRC)]
    stamp = BUILD_DIR / "stun_load.cmd"
    stamp_text = " ".join(cmd[:-3]) + "\n"
    fresh = (
        BIN.exists()
        and BIN.stat().st_mtime >= SRC.stat().st_mtime
        and stamp.exists()
        and stamp.read_text() == stamp_text
    )
    if fresh:
        return
    if shutil.which("gcc") is None:
        sys.exit("stun_binding: gcc not found; it is needed to build stun_load.c")
    BUILD_DIR.mkdir(exist_ok=True)
    log(f"building {BIN.relative_to(REPO)} ...")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        sys.exit(f"stun_binding: compiling stun_load.c failed:\n{res.stderr}")
    os.replace(str(BIN) + ".tmp", BIN)
    stamp.write_text(stamp_text)


# --------------------------------------------------------------------------
# helpers


def free_udp_port():
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def stun_ready(port, proc, timeout_s):
    """Send a Binding request every 50 ms until one is answered.

    Returns None when the server answered, else a reason string."""
    deadline = time.monotonic() + timeout_s
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.05)
        for _ in range(int(timeout_s / 0.05) + 2):
            if proc.poll() is not None:
                return f"server exited with status {proc.returncode}"
            if time.monotonic() >= deadline:
                break
            txid = secrets.token_bytes(12)
            try:
                s.sendto(struct.pack("!HHI", 0x0001, 0, MAGIC_COOKIE) + txid, (HOST, port))
            except OSError:
                pass
            end = time.monotonic() + 0.05
            while time.monotonic() < end:
                try:
                    s.settimeout(max(0.001, end - time.monotonic()))
                    data = s.recv(2048)
                except socket.timeout:
                    break
                except OSError:  # ICMP port unreachable: not listening yet
                    time.sleep(max(0.0, end - time.monotonic()))
                    break
                if len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == txid:
                    return None
    return f"no STUN Binding response within {timeout_s:g} s"


def proc_cpu_seconds(pid):
    """utime + stime of a process, all threads, in seconds (None if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def thread_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


def udp_rcvbuf_errors():
    """Host-wide UDP RcvbufErrors counter (datagrams dropped on a full socket)."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return None


def tail(path, n=25):
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:]) or "(empty log)"


def twistd_path():
    cand = Path(sys.executable).parent / "twistd"
    if cand.exists():
        return str(cand)
    return shutil.which("twistd")


def child_env():
    """Environment for twistd: the repository first on PYTHONPATH, so the node
    measured is this checkout's (twistd may then write its gitignored
    twisted/plugins/dropin.cache there)."""
    env = dict(os.environ)
    # Always the checkout's code: an installed copy may be older than what is measured.
    extra = [str(REPO)] + ([str(REPO / "src")] if (REPO / "src").is_dir() else [])
    if env.get("PYTHONPATH"):
        extra.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(extra)
    return env


def zentalk_available():
    """(True, None) if `twistd --help` lists zentalk-relay, else (False, why)."""
    twistd = twistd_path()
    if twistd is None:
        return False, "twistd not found"
    try:
        res = subprocess.run(
            [twistd, "--help"], capture_output=True, text=True, timeout=60,
            env=child_env(), cwd=tempfile.gettempdir(),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"`twistd --help` failed: {e}"
    if re.search(r"^\s+zentalk-relay\b", res.stdout + res.stderr, re.M):
        return True, None
    return False, "`twistd --help` does not list zentalk-relay (plugin not installed yet)"


def server_command(name, port, tmp):
    if name == "coturn":
        return [
            "turnserver",
            "-n",  # no config file: ignore /etc/turnserver.conf
            "--listening-ip", HOST,
            "--relay-ip", HOST,
            "--listening-port", str(port),
            "--no-auth",  # anonymous
            "--no-tls", "--no-dtls", "--no-tcp", "--no-cli",
            "--no-rfc5780",
            "--no-software-attribute",
            "-m", "1",
            "--userdb", str(Path(tmp) / "turndb"),
            "--pidfile", str(Path(tmp) / "turnserver.pid"),
            "--log-file", str(Path(tmp) / "turnserver.log"),
            "--simple-log",
            "--no-stdout-log",
        ]
    if name == "bare":
        return [sys.executable, str(HERE / "bare_stun_responder.py"), HOST, str(port)]
    if name == "zentalk":
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        return [
            twistd_path(), "-n", "--pidfile=", "zentalk-relay",
            "--data-dir", str(data_dir),
            "--stun-udp", f"{HOST}:{port}",
            "--metrics-listen", f"tcp:0:interface={HOST}",
        ]
    raise ValueError(name)


def stop(proc, grace_s=5.0):
    """SIGTERM, then SIGKILL after grace_s.  Only touches our own child."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log(f"  pid {proc.pid} ignored SIGTERM for {grace_s:g} s, sending SIGKILL")
        proc.kill()
        return proc.wait(timeout=grace_s)


def run_generator(port, window, args):
    cmd = [
        "taskset", "-c", str(args.load_cpu), str(BIN), HOST, str(port), str(window),
        str(args.duration), str(args.warmup), str(args.timeout), str(args.max_requests),
    ]
    budget = args.warmup + args.duration + args.timeout + 30
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=budget)
    if res.returncode != 0:
        raise RuntimeError(f"stun_load exited {res.returncode}: {res.stderr.strip()}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------
# one server


def bench_server(name, args):
    """Start one server, run every window, stop it.  Returns (rows, error)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"stunbench-{name}-") as tmp:
        port = free_udp_port()
        cmd = ["taskset", "-c", str(args.server_cpu)] + server_command(name, port, tmp)
        logfile = Path(tmp) / "stdout.log"
        log(f"[{LABELS[name]}] starting on udp {HOST}:{port} (cpu {args.server_cpu})")
        env = child_env() if name == "zentalk" else None
        with open(logfile, "wb") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=tmp, env=env,
            )
        try:
            why = stun_ready(port, proc, args.ready_timeout)
            if why:
                extra = ""
                if name == "coturn":
                    extra = "\n" + tail(Path(tmp) / "turnserver.log")
                return rows, f"{LABELS[name]} not ready: {why}\n{tail(logfile)}{extra}"
            for window in args.window:
                cpu0 = proc_cpu_seconds(proc.pid)
                drops0 = udp_rcvbuf_errors()
                t0 = time.monotonic()
                r = run_generator(port, window, args)
                wall = time.monotonic() - t0
                cpu1 = proc_cpu_seconds(proc.pid)
                drops1 = udp_rcvbuf_errors()
                r["server"] = name
                r["window"] = window
                r["threads"] = thread_count(proc.pid)
                # server CPU over the whole generator run (warm-up included)
                r["server_cpu"] = (
                    round((cpu1 - cpu0) / wall, 3) if cpu0 is not None and cpu1 is not None else None
                )
                r["udp_rcvbuf_errors"] = (
                    drops1 - drops0 if drops0 is not None and drops1 is not None else None
                )
                rows.append(r)
                log(
                    f"[{LABELS[name]}] window {window:>5}: {r['rps']:>10.0f} resp/s  "
                    f"p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  lost {r['lost']}"
                )
                if proc.poll() is not None:
                    return rows, f"{LABELS[name]} died during the run:\n{tail(logfile)}"
            return rows, None
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
            return rows, f"{LABELS[name]}: load generator failed: {e}"
        finally:
            stop(proc)


# --------------------------------------------------------------------------
# report


def add_ratios(rows):
    base = {r["window"]: r["rps"] for r in rows if r["server"] == "coturn"}
    for r in rows:
        b = base.get(r["window"])
        r["cpu_contention_suspected"] = suspect(r)
        r["vs_coturn"] = round(r["rps"] / b, 3) if b else None


def suspect(r):
    """Neither lost requests nor a busy generator explain a server that did
    not use its whole core: something else probably ran on its CPU."""
    return (
        r.get("server_cpu") is not None and r["server_cpu"] < 0.9
        and r["lost"] == 0 and r["gen_cpu"] < 0.95
    )


def format_table(rows):
    head = ["server", "window", "responses/s", "p50 ms", "p99 ms", "p99.9 ms",
            "lost", "vs coturn", "srv cpu", "gen cpu"]
    body = []
    for r in rows:
        body.append([
            LABELS[r["server"]], str(r["window"]), f"{r['rps']:,.0f}",
            f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['p999_ms']:.3f}",
            str(r["lost"]),
            f"{r['vs_coturn']:.2f}x" if r.get("vs_coturn") is not None else "n/a",
            (f"{r['server_cpu']:.2f}" if r.get("server_cpu") is not None else "n/a")
            + ("!" if suspect(r) else " "),
            f"{r['gen_cpu']:.2f}",
        ])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    left = {0}
    def fmt(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [fmt(head), "  ".join("-" * w for w in widths)]
    lines += [fmt(b) for b in body]
    return "\n".join(lines)


def tool_version(cmd):
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (res.stdout or res.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run (default 1)")
    p.add_argument("--window", type=int, nargs="+", action="extend",
                   help="outstanding requests; several allowed (default 64 256)")
    p.add_argument("--servers", default=",".join(SERVERS),
                   help="comma-separated subset of coturn,bare,zentalk (default all)")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds before a request counts lost (default 1)")
    p.add_argument("--max-requests", type=int, default=50_000_000,
                   help="hard cap on requests per generator run (default 50,000,000)")
    p.add_argument("--ready-timeout", type=float, default=15.0,
                   help="seconds to wait for a server to answer STUN (default 15)")
    p.add_argument("--server-cpu", type=int, default=0, help="CPU for the server (default 0)")
    p.add_argument("--load-cpu", type=int, default=1, help="CPU for the load generator (default 1)")
    p.add_argument("--json", action="store_true", help="print machine-readable results on stdout")
    a = p.parse_args(argv)
    a.window = a.window or [64, 256]
    a.servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    bad = [s for s in a.servers if s not in SERVERS]
    if bad:
        p.error(f"unknown server(s) {bad}; choose from {', '.join(SERVERS)}")
    if not 0.1 <= a.duration <= 3600 or not 0 <= a.warmup <= 600:
        p.error("--duration must be 0.1..3600 and --warmup 0..600")
    if any(not 1 <= w <= 65536 for w in a.window):
        p.error("--window must be 1..65536")
    if not 0.001 <= a.timeout <= 60 or not 1 <= a.ready_timeout <= 300:
        p.error("--timeout must be 0.001..60 and --ready-timeout 1..300")
    if a.max_requests < 1:
        p.error("--max-requests must be >= 1")
    cpus = os.sched_getaffinity(0)
    if a.server_cpu == a.load_cpu or a.server_cpu not in cpus or a.load_cpu not in cpus:
        p.error(f"--server-cpu and --load-cpu must be two different CPUs among {sorted(cpus)}")
    return a


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for tool in ("taskset",) + (("turnserver",) if "coturn" in args.servers else ()):
        if shutil.which(tool) is None:
            sys.exit(f"stun_binding: `{tool}` not found on PATH")
    build_generator()

    notes, errors, rows = [], [], []
    for name in args.servers:
        if name == "zentalk":
            ok, why = zentalk_available()
            if not ok:
                note = f"zentalk-relay skipped: {why}"
                log(f"NOTE: {note}")
                notes.append(note)
                continue
        got, err = bench_server(name, args)
        rows.extend(got)
        if err:
            log(f"ERROR: {err}")
            errors.append(err)
    add_ratios(rows)

    if args.json:
        doc = {
            "benchmark": "stun_binding",
            "params": {
                "duration_s": args.duration, "warmup_s": args.warmup, "windows": args.window,
                "timeout_s": args.timeout, "server_cpu": args.server_cpu, "load_cpu": args.load_cpu,
            },
            "env": {
                "python": platform.python_version(),
                "twisted": tool_version([sys.executable, "-c", "import twisted; print(twisted.__version__)"]),
                "coturn": tool_version(["turnserver", "--version"]) if shutil.which("turnserver") else None,
                "cpus": os.cpu_count(),
                "kernel": platform.release(),
            },
            "results": rows,
            "notes": notes,
            "errors": errors,
        }
        print(json.dumps(doc, indent=2))
    else:
        print()
        print(f"STUN Binding, {args.duration:g} s measured after {args.warmup:g} s warm-up per run; "
              f"server on CPU {args.server_cpu}, load generator on CPU {args.load_cpu}")
        print(format_table(rows))
        if any(suspect(r) for r in rows):
            print("! server used < 90% of its CPU with nothing lost: another process probably "
                  "competed for the CPU; rerun on a quiet machine")
        for n in notes:
            print(f"note: {n}")
        for e in errors:
            print(f"error: {e.splitlines()[0]}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
