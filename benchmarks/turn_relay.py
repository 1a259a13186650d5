#!/usr/bin/env python3
"""TURN relay benchmark: ChannelData packets per second, coturn vs our node, and bandwidth limiting.

    python benchmarks/turn_relay.py [--duration 5] [--warmup 1] [--clients 8]
                                    [--window 64 256] [--payload 160] [--servers coturn,zentalk]
                                    [--bandwidth-duration 5] [--json]

Throughput: each server in turn runs pinned to one CPU (``taskset -c 0``),
with long-term credentials and loopback peers allowed and no bandwidth
limit. The script makes ``--clients`` allocations on it (one UDP socket
each, a channel bound to a peer socket of the generator), then hands the
sockets to the C generator ``turn_load.c`` (built on demand into
benchmarks/.build/), pinned to another CPU, which keeps ``--window`` round
trips outstanding: client -> ChannelData -> server -> peer, echoed back ->
server -> ChannelData -> client. Every round trip is two packets relayed;
the table shows relayed packets per second and our node's ratio to coturn
at the same window (the target is >= 0.5).

Bandwidth: our node with its default ``turn.allocation_bandwidth`` (1 Mbit/s)
or ``--bandwidth-bits``; one allocation offered twice that rate of
ChannelData for ``--bandwidth-duration`` seconds after a warm-up; the peer
counts what arrives. The relayed rate must be within 5 % of the setting.

All traffic stays on 127.0.0.1; every wait is bounded; the servers are
stopped (SIGTERM, then SIGKILL after 5 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import stun_binding  # noqa: E402  (shared helpers: readiness, CPU accounting, stopping)
from zentalk_relay.nat import stun  # noqa: E402
from zentalk_relay.nat.stun import Attr, MessageClass, Method  # noqa: E402

SRC = HERE / "turn_load.c"
BUILD_DIR = HERE / ".build"
BIN = BUILD_DIR / "turn_load"
HOST = "127.0.0.1"
USER, PASSWORD = "bench", "relay-benchmark"
SERVERS = ("coturn", "zentalk")
LABELS = {"coturn": "coturn", "zentalk": "zentalk-relay"}
CHANNEL = 0x4000


def child_env() -> dict:
    """The checkout's package for twistd, whatever copy is installed: this measures the tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_generator() -> None:
    if BIN.exists() and BIN.stat().st_mtime >= SRC.stat().st_mtime:
        return
    if shutil.which("gcc") is None:
        sys.exit("turn_relay: gcc not found; it is needed to build turn_load.c")
    BUILD_DIR.mkdir(exist_ok=True)
    log(f"building {BIN.relative_to(REPO)} ...")
    result = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(BIN) + ".tmp", str(SRC)], capture_output=True,
                            text=True, timeout=120)
    if result.returncode != 0:
        sys.exit(f"turn_relay: compiling turn_load.c failed:\n{result.stderr}")
    os.replace(str(BIN) + ".tmp", BIN)


# -- a minimal blocking TURN client for the set-up ----------------------------------


class TurnError(Exception):
    pass


def _transact(sock: socket.socket, data: bytes, tries: int = 4) -> stun.Message:
    tid = data[8:20]
    for attempt in range(tries):
        sock.send(data)
        deadline = time.monotonic() + 0.5 * (attempt + 1)
        while time.monotonic() < deadline:
            ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            try:
                reply = stun.decode(sock.recv(4096))
            except (stun.StunError, ConnectionRefusedError):
                continue
            if reply.transaction_id == tid:
                return reply
    raise TurnError("no answer from the TURN server")


def make_allocation(server: tuple[str, int], peer: tuple[str, int], channel: int = CHANNEL) -> socket.socket:
    """A UDP socket connected to ``server`` with an allocation and ``channel`` bound to ``peer``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((HOST, 0))
    sock.connect(server)
    transport = (Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0")
    challenge = _transact(sock, stun.encode(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12), [transport]))
    realm, nonce = challenge.get(Attr.REALM), challenge.get(Attr.NONCE)
    if realm is None or nonce is None:
        raise TurnError("the server did not challenge with REALM and NONCE")
    key = stun.long_term_key(USER, realm.decode(), PASSWORD)
    credentials = [(Attr.USERNAME, USER.encode()), (Attr.REALM, realm), (Attr.NONCE, nonce)]

    def signed(method, attributes):
        tid = os.urandom(12)
        resolved = [(t, v(tid) if callable(v) else v) for t, v in attributes]
        reply = _transact(sock, stun.encode(method, MessageClass.REQUEST, tid, resolved + credentials,
                                            integrity_key=key))
        if reply.cls is not MessageClass.SUCCESS:
            code = stun.decode_error_code(reply.get(Attr.ERROR_CODE))
            raise TurnError(f"{Method(method).name} refused: {code}")
        return reply

    signed(Method.ALLOCATE, [transport, (Attr.LIFETIME, struct.pack("!I", 3600))])
    signed(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, struct.pack("!HH", channel, 0)),
                                 (Attr.XOR_PEER_ADDRESS, lambda tid: stun.encode_xor_address(*peer, tid))])
    return sock


# -- servers ------------------------------------------------------------------------------


def server_command(name: str, port: int, tmp: Path, bandwidth_bits: int = 0) -> list[str]:
    if name == "coturn":
        return ["turnserver", "-n", "--listening-ip", HOST, "--relay-ip", HOST, "--listening-port", str(port),
                "--lt-cred-mech", "--user", f"{USER}:{PASSWORD}", "--realm", "bench.test",
                "--no-tls", "--no-dtls", "--no-tcp", "--no-cli", "--no-rfc5780", "--no-software-attribute",
                "--allow-loopback-peers", "-m", "1", "--min-port", "49152", "--max-port", "65535",
                "--userdb", str(tmp / "turndb"), "--pidfile", str(tmp / "turnserver.pid"),
                "--log-file", str(tmp / "turnserver.log"), "--simple-log", "--no-stdout-log"]
    users = tmp / "users"
    users.write_text(f"{USER}:{PASSWORD}\n")
    users.chmod(0o600)
    data_dir = tmp / "data"
    data_dir.mkdir()
    return [stun_binding.twistd_path(), "-n", "--pidfile=", "zentalk-relay", "--data-dir", str(data_dir),
            "--stun-udp", f"{HOST}:{port}", "--metrics-listen", f"tcp:0:interface={HOST}", "--log-level", "warn",
            "--set", "link.enabled=false", "--set", "turn.enabled=true", "--set", 'turn.realm="bench.test"',
            "--set", f'turn.users_file="{users}"', "--set", 'turn.allowed_peer_ranges=["127.0.0.0/8"]',
            "--set", f"turn.allocation_bandwidth={bandwidth_bits}", "--set", 'stun.software=""',
            "--set", "turn.allocations_per_user=1000"]


class Server:
    def __init__(self, name: str, args, bandwidth_bits: int = 0) -> None:
        self.name = name
        self._tmp = tempfile.TemporaryDirectory(prefix=f"turnbench-{name}-")
        tmp = Path(self._tmp.name)
        self.port = stun_binding.free_udp_port()
        command = ["taskset", "-c", str(args.server_cpu)] + server_command(name, self.port, tmp, bandwidth_bits)
        self.logfile = tmp / "stdout.log"
        with open(self.logfile, "wb") as out:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            cwd=tmp, env=child_env() if name == "zentalk" else None)
        why = stun_binding.stun_ready(self.port, self.process, args.ready_timeout)
        if why:
            output = stun_binding.tail(self.logfile)
            self.stop()
            raise RuntimeError(f"{LABELS[name]} not ready: {why}\n{output}")

    def cpu(self):
        return stun_binding.proc_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        stun_binding.stop(self.process)
        self._tmp.cleanup()


# -- throughput ---------------------------------------------------------------------------


def throughput(name: str, args) -> tuple[list[dict], str | None]:
    rows: list[dict] = []
    log(f"[{LABELS[name]}] starting on udp {HOST}:... (cpu {args.server_cpu})")
    try:
        server = Server(name, args)
    except RuntimeError as error:
        return rows, str(error)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    clients: list[socket.socket] = []
    try:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        peer.bind((HOST, 0))
        try:
            clients = [make_allocation((HOST, server.port), peer.getsockname()) for _ in range(args.clients)]
        except (TurnError, OSError) as error:
            return rows, f"{LABELS[name]}: setting up allocations failed: {error}\n{stun_binding.tail(server.logfile)}"
        for window in args.window:
            fds = [f"{sock.fileno()}:{CHANNEL:#x}" for sock in clients]
            command = ["taskset", "-c", str(args.load_cpu), str(BIN), str(args.duration), str(args.warmup),
                       str(window), str(args.timeout), str(args.payload), str(peer.fileno()), *fds]
            cpu0, t0 = server.cpu(), time.monotonic()
            result = subprocess.run(command, capture_output=True, text=True, pass_fds=[peer.fileno()] +
                                    [sock.fileno() for sock in clients],
                                    timeout=args.warmup + args.duration + args.timeout + 30)
            cpu1, wall = server.cpu(), time.monotonic() - t0
            if result.returncode != 0:
                return rows, f"turn_load exited {result.returncode}: {result.stderr.strip()}"
            row = json.loads(result.stdout.strip().splitlines()[-1])
            row["server"] = name
            row["server_cpu"] = round((cpu1 - cpu0) / wall, 3) if cpu0 is not None and cpu1 is not None else None
            rows.append(row)
            log(f"[{LABELS[name]}] window {window:>5}: {row['relayed_pps']:>10.0f} relayed pkt/s  "
                f"p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms  lost {row['lost']}")
            if server.process.poll() is not None:
                return rows, f"{LABELS[name]} died during the run:\n{stun_binding.tail(server.logfile)}"
        return rows, None
    except subprocess.TimeoutExpired as error:
        return rows, f"{LABELS[name]}: the generator did not finish: {error}"
    finally:
        for sock in clients:
            sock.close()
        peer.close()
        server.stop()


# -- bandwidth ---------------------------------------------------------------------------------


def bandwidth(args) -> dict:
    """Offer twice the configured rate on one allocation; measure what the peer receives."""
    configured = args.bandwidth_bits / 8  # payload bytes per second
    log(f"[zentalk-relay] bandwidth limit {args.bandwidth_bits} bit/s, offering twice that "
        f"for {args.warmup:g}+{args.bandwidth_duration:g} s")
    server = Server("zentalk", args, bandwidth_bits=args.bandwidth_bits)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = None
    try:
        peer.bind((HOST, 0))
        peer.setblocking(False)
        client = make_allocation((HOST, server.port), peer.getsockname())
        size = args.bandwidth_payload
        packet = struct.pack("!HH", CHANNEL, size) + bytes(size)
        interval = size / (2 * configured)
        start = time.monotonic()
        measure_from = start + args.warmup
        measure_to = measure_from + args.bandwidth_duration
        next_send = start
        received = offered = 0
        while True:
            now = time.monotonic()
            if now >= measure_to:
                break
            if now >= next_send:
                client.send(packet)
                if now >= measure_from:
                    offered += size
                next_send += interval
                continue
            ready, _, _ = select.select([peer], [], [], max(0.0, min(next_send, measure_to) - now))
            if ready:
                for _ in range(64):
                    try:
                        data = peer.recv(4096)
                    except BlockingIOError:
                        break
                    if measure_from <= time.monotonic() < measure_to:
                        received += len(data)
        rate = received / args.bandwidth_duration
        return {"configured_bytes_per_s": configured, "offered_bytes_per_s": round(offered / args.bandwidth_duration),
                "relayed_bytes_per_s": round(rate), "ratio": round(rate / configured, 4),
                "within_5_percent": abs(rate / configured - 1) <= 0.05, "payload": size}
    finally:
        if client is not None:
            client.close()
        peer.close()
        server.stop()


# -- report --------------------------------------------------------------------------------------


def _contended(row: dict) -> bool:
    """The server did not use its core although nothing was lost: another process took the CPU."""
    return row.get("server_cpu") is not None and row["server_cpu"] < 0.9 and row["lost"] == 0 \
        and row["gen_cpu"] < 0.95


def format_table(rows: list[dict]) -> str:
    base = {r["window"]: r["relayed_pps"] for r in rows if r["server"] == "coturn"}
    head = ["server", "window", "relayed pkt/s", "p50 ms", "p99 ms", "lost", "vs coturn", "srv cpu", "gen cpu"]
    body = []
    for r in rows:
        ratio = r["relayed_pps"] / base[r["window"]] if base.get(r["window"]) else None
        r["vs_coturn"] = round(ratio, 3) if ratio is not None else None
        body.append([LABELS[r["server"]], str(r["window"]), f"{r['relayed_pps']:,.0f}", f"{r['p50_ms']:.3f}",
                     f"{r['p99_ms']:.3f}", str(r["lost"]), f"{ratio:.2f}x" if ratio is not None else "n/a",
                     (f"{r['server_cpu']:.2f}" if r.get("server_cpu") is not None else "n/a")
                     + ("!" if _contended(r) else " "), f"{r['gen_cpu']:.2f}"])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(head), "  ".join("-" * w for w in widths)] + [line(b) for b in body])


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run (default 1)")
    p.add_argument("--clients", type=int, default=8, help="allocations, one socket each (default 8)")
    p.add_argument("--window", type=int, nargs="+", action="extend", help="round trips outstanding (default 64 256)")
    p.add_argument("--payload", type=int, default=160, help="ChannelData payload bytes (default 160, a voice frame)")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds before a round trip counts lost (default 1)")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of coturn,zentalk")
    p.add_argument("--bandwidth-bits", type=int, default=1_000_000,
                   help="turn.allocation_bandwidth for the bandwidth test (default 1000000)")
    p.add_argument("--bandwidth-duration", type=float, default=5.0, help="measured seconds (default 5; 0 skips)")
    p.add_argument("--bandwidth-payload", type=int, default=1000, help="payload bytes (default 1000)")
    p.add_argument("--ready-timeout", type=float, default=15.0, help="seconds to wait for a server (default 15)")
    p.add_argument("--server-cpu", type=int, default=0, help="CPU for the server (default 0)")
    p.add_argument("--load-cpu", type=int, default=1, help="CPU for the generator (default 1)")
    p.add_argument("--json", action="store_true", help="print machine-readable results on stdout")
    a = p.parse_args(argv)
    a.window = a.window or [64, 256]
    a.servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    if [s for s in a.servers if s not in SERVERS]:
        p.error(f"choose servers from {', '.join(SERVERS)}")
    if not 0.1 <= a.duration <= 600 or not 0 <= a.warmup <= 60 or not 0 <= a.bandwidth_duration <= 600:
        p.error("--duration must be 0.1..600, --warmup 0..60, --bandwidth-duration 0..600")
    if not 1 <= a.clients <= 256 or any(not 1 <= w <= 65536 for w in a.window) or not 16 <= a.payload <= 1400:
        p.error("--clients 1..256, --window 1..65536, --payload 16..1400")
    cpus = os.sched_getaffinity(0)
    if a.server_cpu == a.load_cpu or a.server_cpu not in cpus or a.load_cpu not in cpus:
        p.error(f"--server-cpu and --load-cpu must be two different CPUs among {sorted(cpus)}")
    return a


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for tool in ("taskset", "gcc") + (("turnserver",) if "coturn" in args.servers else ()):
        if shutil.which(tool) is None:
            sys.exit(f"turn_relay: `{tool}` not found on PATH")
    if ("zentalk" in args.servers or args.bandwidth_duration) and stun_binding.twistd_path() is None:
        sys.exit("turn_relay: twistd not found")
    build_generator()
    rows, errors = [], []
    for name in args.servers:
        got, error = throughput(name, args)
        rows.extend(got)
        if error:
            log(f"ERROR: {error}")
            errors.append(error)
    table = format_table(rows)
    limit = None
    if args.bandwidth_duration:
        try:
            limit = bandwidth(args)
        except (RuntimeError, TurnError, OSError) as error:
            errors.append(f"bandwidth test: {error}")
    ours = [r for r in rows if r["server"] == "zentalk" and r.get("vs_coturn") is not None]
    target_met = bool(ours) and all(r["vs_coturn"] >= 0.5 for r in ours)
    if args.json:
        print(json.dumps({
            "benchmark": "turn_relay",
            "params": {"duration_s": args.duration, "warmup_s": args.warmup, "clients": args.clients,
                       "windows": args.window, "payload": args.payload, "server_cpu": args.server_cpu,
                       "load_cpu": args.load_cpu},
            "env": {"python": platform.python_version(),
                    "coturn": stun_binding.tool_version(["turnserver", "--version"]) if shutil.which("turnserver")
                    else None, "cpus": os.cpu_count(), "kernel": platform.release()},
            "results": rows, "bandwidth": limit, "target_half_of_coturn": target_met, "errors": errors,
        }, indent=2))
    else:
        print()
        print(f"TURN ChannelData relaying, {args.clients} allocations, {args.payload}-byte payloads, "
              f"{args.duration:g} s measured after {args.warmup:g} s; server on CPU {args.server_cpu}, "
              f"generator on CPU {args.load_cpu}")
        print(table)
        if ours:
            print(f"target (>= 0.5x coturn at every window): {'met' if target_met else 'NOT met'}")
        if any(_contended(r) for r in rows):
            print("! server used < 90% of its CPU with nothing lost: another process probably competed "
                  "for the CPU; rerun on a quiet machine")
        if limit is not None:
            print(f"bandwidth limit {args.bandwidth_bits:,} bit/s = {limit['configured_bytes_per_s']:,.0f} B/s; "
                  f"offered {limit['offered_bytes_per_s']:,} B/s; relayed {limit['relayed_bytes_per_s']:,} B/s "
                  f"= {limit['ratio']:.3f}x ({'within' if limit['within_5_percent'] else 'NOT within'} 5 %)")
        for error in errors:
            print(f"error: {error.splitlines()[0]}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
