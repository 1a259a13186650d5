#!/usr/bin/env python3
"""DHT queries benchmark: KRPC queries answered per second by the node vs a bare Twisted responder.

    python benchmarks/dht_queries.py          # --duration 4 --warmup 1 --window 64 --sockets 8
    python benchmarks/dht_queries.py --window 16 256 --profile
    python benchmarks/dht_queries.py --servers zentalk --mixes get_peers --json > dht.json

Two servers in turn, each pinned to one CPU (``--server-cpu``, 0):

- ``bare-twisted``: ``bare_krpc_responder.py``, a plain Twisted
  ``DatagramProtocol`` that bdecodes with fastbencode and answers ``ping``
  with ``{id}`` and ``get_peers`` with ``{id, token, nodes}`` (8 fake nodes);
- ``zentalk-relay``: ``twistd -n zentalk-relay`` from this checkout with its
  DHT on 127.0.0.1 (port from ``<data-dir>/endpoints.json``), the link
  service off, the per-source-IP query rate lifted (``dht.queries_per_second``
  and ``dht.query_burst`` = 1,000,000: all load comes from 127.0.0.1), and a
  routing table of 400 fake nodes (20 in each of the 20 farthest buckets, at
  127.1.x.y, never contacted) written into its data dir before it starts, so
  that it answers with real nearest nodes as a node of the mainline DHT would.
  Before the rows it is announced ``--peers`` peers on each of ``--stored``
  info-hashes.

The C load generator ``dht_load.c`` (built with ``cc -O2`` into
``benchmarks/.build/``) runs pinned to ``--load-cpu`` (1): a closed loop with
``--window`` queries outstanding over ``--sockets`` source ports, every answer
parsed and checked (valid KRPC response, the query's transaction id). Mixes:
``ping`` (100 % ping), ``get_peers`` (100 % get_peers, ``--stored-share`` of
them on an info-hash with stored peers, the rest random), ``mixed`` (50/50).

Then, in this process, the cost of one answer without sockets or reactor:
``DhtNode.handle``, ``DhtProtocol.datagramReceived`` (fake transport,
``task.Clock``) and the bare responder's ``datagramReceived`` on the same
datagrams; ``--profile`` adds cProfile's top functions of the node's path.

Everything talks to 127.0.0.1 only; every wait and loop is bounded; every
process started is stopped by its pid (SIGTERM, SIGKILL after 10 s).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import linkbench  # noqa: E402  (shared helpers: /proc readings, quiet wait, stop, table)
from linkbench import HOST, REPO, log  # noqa: E402

SRC = HERE / "dht_load.c"
BUILD_DIR = HERE / ".build"
BIN = BUILD_DIR / "dht_load"
CFLAGS = ["-O2", "-Wall"]

SERVERS = ("bare", "zentalk")
LABELS = {"bare": "bare-twisted", "zentalk": "zentalk-relay"}
#: name -> (ping share %, shown as)
MIXES = {"ping": (100, "100% ping"), "get_peers": (0, "100% get_peers"), "mixed": (50, "50/50")}
STORED_PREFIX = b"dhtbench-stored-"  # + u32 index: the info-hashes the generator asks for stored peers
NODE_SETTINGS = ("link.enabled=false", "dht.queries_per_second=1000000", "dht.query_burst=1000000")
TABLE_DEPTH, PER_BUCKET = 20, 20


# --------------------------------------------------------------------------
# build


def build_generator() -> None:
    """Compile dht_load.c with cc -O2 unless the binary is up to date."""
    cmd = ["cc", *CFLAGS, "-o", str(BIN) + ".tmp", str(SRC)]
    stamp = BUILD_DIR / "dht_load.cmd"
    stamp_text = " ".join(cmd[:-3]) + "\n"
    if (BIN.exists() and BIN.stat().st_mtime >= SRC.stat().st_mtime and stamp.exists()
            and stamp.read_text() == stamp_text):
        return
    if shutil.which("cc") is None:
        sys.exit("dht_queries: cc not found; it is needed to build dht_load.c")
    BUILD_DIR.mkdir(exist_ok=True)
    log(f"building {BIN.relative_to(REPO)} ...")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        sys.exit(f"dht_queries: compiling dht_load.c failed:\n{res.stderr}")
    os.replace(str(BIN) + ".tmp", BIN)
    stamp.write_text(stamp_text)


# --------------------------------------------------------------------------
# KRPC from Python (probes, announces)


def bencode(value) -> bytes:
    import fastbencode

    return fastbencode.bencode(value)


def bdecode(data: bytes):
    import fastbencode

    return fastbencode.bdecode(data)


def query(method: bytes, tid: bytes, node_id: bytes, **args) -> bytes:
    body = {b"id": node_id, **{k.encode(): v for k, v in args.items()}}
    return bencode({b"a": body, b"q": method, b"t": tid, b"y": b"q"})


def stored_info_hash(index: int) -> bytes:
    return STORED_PREFIX + index.to_bytes(4, "big")


def ping_ready(port: int, proc: subprocess.Popen, timeout_s: float) -> str | None:
    """A KRPC ping every 50 ms until one is answered: None when it was, else why not."""
    deadline = time.monotonic() + timeout_s
    node_id = os.urandom(20)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for attempt in range(int(timeout_s / 0.05) + 2):
            if proc.poll() is not None:
                return f"server exited with status {proc.returncode}"
            if time.monotonic() >= deadline:
                break
            tid = attempt.to_bytes(4, "big")
            try:
                s.sendto(query(b"ping", tid, node_id), (HOST, port))
                s.settimeout(0.05)
                for _ in range(8):
                    data = s.recv(2048)
                    message = bdecode(data)
                    if message.get(b"t") == tid and message.get(b"y") == b"r":
                        return None
            except (socket.timeout, OSError, ValueError):
                time.sleep(0.01)
    return f"no answer to a KRPC ping within {timeout_s:g} s"


def announce_peers(port: int, stored: int, peers: int, timeout_s: float = 10.0) -> dict:
    """get_peers for a token, then ``peers`` announce_peer (ports 20000...) on each stored info-hash.

    Returns what the node acknowledged and what one get_peers then returns."""
    node_id = os.urandom(20)
    acked = refused = 0
    deadline = time.monotonic() + timeout_s
    tid_n = 0

    def ask(s: socket.socket, datagrams: list[bytes]) -> list[dict]:
        for data in datagrams:
            s.sendto(data, (HOST, port))
        got = []
        for _ in range(10 * len(datagrams) + 10):
            if len(got) >= len(datagrams) or time.monotonic() >= deadline:
                break
            try:
                s.settimeout(max(0.01, min(1.0, deadline - time.monotonic())))
                message = bdecode(s.recv(2048))
            except (socket.timeout, ValueError):
                break
            if message.get(b"y") in (b"r", b"e"):
                got.append(message)
        return got

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for index in range(stored):
            info_hash = stored_info_hash(index)
            tid_n += 1
            answers = ask(s, [query(b"get_peers", tid_n.to_bytes(4, "big"), node_id, info_hash=info_hash)])
            token = answers[0].get(b"r", {}).get(b"token") if answers else None
            if token is None:
                raise RuntimeError(f"no token from get_peers on stored info-hash {index}")
            batch = []
            for p in range(peers):
                tid_n += 1
                batch.append(query(b"announce_peer", tid_n.to_bytes(4, "big"), node_id, info_hash=info_hash,
                                   port=20000 + p, token=token))
            for message in ask(s, batch):
                if message.get(b"y") == b"r":
                    acked += 1
                else:
                    refused += 1
        tid_n += 1
        check = ask(s, [query(b"get_peers", tid_n.to_bytes(4, "big"), node_id, info_hash=stored_info_hash(0))])
    values = check[0].get(b"r", {}).get(b"values", []) if check else []
    return {"announced": stored * peers, "acked": acked, "refused": refused, "values_in_a_get_peers": len(values)}


# --------------------------------------------------------------------------
# the node's routing table


def fake_table(now: float, seed: int = 7) -> dict:
    """A routing table file: our id and PER_BUCKET fake nodes in each of the TABLE_DEPTH farthest buckets.

    Like a node of the mainline DHT (millions of nodes: about 20 full buckets).
    The nodes are at 127.1.x.y:6881 (nothing listens there; the node never
    queries them during the run: no bootstrap names, no publish, refresh only
    after 15 minutes) and answered "now", so they count as good.
    """
    rng = random.Random(seed)
    own = rng.getrandbits(160)
    nodes = []
    for depth in range(TABLE_DEPTH):
        low = 159 - depth
        high = (own >> (low + 1)) << (low + 1)
        flipped = (~own) & (1 << low)
        for j in range(PER_BUCKET):
            num = high | flipped | rng.getrandbits(low)
            nodes.append([num.to_bytes(20, "big").hex(), f"127.1.{depth}.{j + 1}", 6881, now])
    return {"format": "zentalk-dht-routing/1", "id": own.to_bytes(20, "big").hex(), "nodes": nodes,
            "replacements": []}


# --------------------------------------------------------------------------
# servers


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def metric_sums(text: str) -> dict:
    """The DHT counters worth checking, summed over families."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("zentalk_dht_"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, label_text = head.partition("{")
        labels = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if name == "zentalk_dht_queries_received_total":
            key = f"queries_{labels.get('method')}_{labels.get('result')}"
        elif name == "zentalk_dht_dropped_total":
            key = f"dropped_{labels.get('reason')}"
        elif name == "zentalk_dht_queries_sent_total":
            key = f"sent_{labels.get('method')}"
        elif name == "zentalk_dht_answers_trimmed_total":
            key = "trimmed"
        elif name == "zentalk_dht_peers":
            key = "peers_stored"
        elif name == "zentalk_dht_nodes":
            key = f"table_{labels.get('state')}"
        else:
            continue
        out[key] = out.get(key, 0.0) + float(value)
    return out


class Server:
    """One server process pinned to a CPU, in its own temporary directory."""

    def __init__(self, name: str, workdir: Path, args) -> None:
        self.name = name
        self.workdir = workdir
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.logfile = workdir / "server.log"
        self.table_size = None

    def command(self) -> list[str]:
        pin = ["taskset", "-c", str(self.args.server_cpu)]
        if self.name == "bare":
            self.port = free_udp_port()
            return pin + [sys.executable, str(HERE / "bare_krpc_responder.py"), HOST, str(self.port)]
        data_dir = self.workdir / "data"
        (data_dir / "dht").mkdir(parents=True, mode=0o700)
        table = fake_table(time.time())
        self.table_size = len(table["nodes"])
        (data_dir / "dht" / "routing4.json").write_text(json.dumps(table))
        cmd = pin + [linkbench.twistd_path(), "-n", "--pidfile=", "zentalk-relay", "--data-dir", str(data_dir),
                     "--stun-udp", f"{HOST}:0", "--dht-udp", f"{HOST}:0",
                     "--metrics-listen", f"tcp:0:interface={HOST}", "--log-level", "warn"]
        for item in NODE_SETTINGS:
            cmd += ["--set", item]
        return cmd

    def start(self) -> None:
        cmd = self.command()
        with open(self.logfile, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, env=linkbench.checkout_env())
        if self.name == "zentalk":
            endpoints_file = self.workdir / "data" / "endpoints.json"
            deadline = time.monotonic() + self.args.ready_timeout
            while not endpoints_file.exists():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the node exited with {self.proc.returncode}:\n{linkbench.tail(self.logfile)}")
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"no endpoints.json within {self.args.ready_timeout:g} s:\n"
                                       f"{linkbench.tail(self.logfile)}")
                time.sleep(0.05)
            services = json.loads(endpoints_file.read_text())["services"]
            self.port = int(services["dht"][0].rsplit(":", 1)[1])
            self.metrics_port = int(services["metrics"][0].rsplit(":", 1)[1])
        why = ping_ready(self.port, self.proc, self.args.ready_timeout)
        if why:
            raise RuntimeError(f"{LABELS[self.name]} not ready: {why}\n{linkbench.tail(self.logfile)}")

    def metrics(self) -> dict:
        if self.metrics_port is None:
            return {}
        try:
            return metric_sums(metrics_text(self.metrics_port))
        except OSError:
            return {}

    def stop(self) -> None:
        if self.proc is not None:
            linkbench.stop(self.proc)


def udp_rcvbuf_errors() -> int | None:
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return None


def run_generator(port: int, mix: str, window: int, args) -> dict:
    cmd = ["taskset", "-c", str(args.load_cpu), str(BIN), f"host={HOST}", f"port={port}", f"window={window}",
           f"duration={args.duration}", f"warmup={args.warmup}", f"timeout={args.timeout}",
           f"max_requests={args.max_requests}", f"sockets={args.sockets}", f"ping_pct={MIXES[mix][0]}",
           f"stored_pct={100 * args.stored_share:g}", f"stored={args.stored}"]
    budget = args.warmup + args.duration + args.timeout + 30
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=budget)
    if res.returncode != 0:
        raise RuntimeError(f"dht_load exited {res.returncode}: {res.stderr.strip()}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(server: Server, mix: str, window: int, args) -> dict:
    """One row: a quiet machine, then the generator, with the server's and the machine's CPU around it."""
    quiet, waited = linkbench.wait_quiet(args.quiet_wait)
    pid = server.proc.pid
    m0 = server.metrics()
    procs0, stat0, drops0 = linkbench.all_cpu(), linkbench.cpu_stat(), udp_rcvbuf_errors()
    cpu0 = linkbench.cpu_seconds(pid)
    t0 = time.monotonic()
    r = run_generator(server.port, mix, window, args)
    wall = time.monotonic() - t0
    cpu1 = linkbench.cpu_seconds(pid)
    procs1, stat1, drops1 = linkbench.all_cpu(), linkbench.cpu_stat(), udp_rcvbuf_errors()
    m1 = server.metrics()
    r.update(server=server.name, mix=mix, window=window, quiet=quiet, quiet_waited_s=round(waited, 1))
    # the server's CPU over the whole generator run (warm-up and drain included)
    r["srv_cpu"] = round((cpu1 - cpu0) / wall, 3) if cpu0 is not None and cpu1 is not None else None
    r["srv_us_per_answer"] = (round(1e6 * r["srv_cpu"] / r["rps"], 1) if r["srv_cpu"] is not None and r["rps"]
                              else None)
    r["cpus"] = linkbench.cpu_stat_delta(stat0, stat1)
    r["foreign_cpu"] = round(linkbench.foreign_cpu(procs0, procs1, {os.getpid(), pid}) / wall, 3)
    r["kernel_cpu"] = round(linkbench.kernel_cpu(procs0, procs1) / wall, 3)
    r["other"] = linkbench.disturbance(r, args.server_cpu)
    r["udp_rcvbuf_errors"] = drops1 - drops0 if drops0 is not None and drops1 is not None else None
    if m0 and m1:
        r["node_counters"] = {k: round(m1.get(k, 0.0) - m0.get(k, 0.0)) for k in sorted(set(m0) | set(m1))
                              if not k.startswith(("table_", "peers_"))}
        r["node_counters"]["peers_stored"] = m1.get("peers_stored")
        r["node_counters"]["table_good"] = m1.get("table_good")
    return r


def mismatches(r: dict) -> int:
    return r["invalid"] + r["errors"] + r["bad_tid"] + r["garbage"]


def bench_server(name: str, args) -> tuple[list[dict], dict, str | None]:
    rows: list[dict] = []
    info: dict = {}
    with tempfile.TemporaryDirectory(prefix=f"dhtbench-{name}-") as tmp:
        server = Server(name, Path(tmp), args)
        log(f"[{LABELS[name]}] starting (cpu {args.server_cpu})")
        try:
            server.start()
            log(f"[{LABELS[name]}] answering on udp {HOST}:{server.port}")
            if name == "zentalk":
                info["table_nodes_written"] = server.table_size
                info["announce"] = announce_peers(server.port, args.stored, args.peers)
                info["after_announce"] = server.metrics()
                log(f"[{LABELS[name]}] announced: {info['announce']}")
            for window in args.window:
                for mix in args.mixes:
                    best = None
                    for attempt in range(1 + args.retries):
                        r = measure(server, mix, window, args)
                        r["attempt"] = attempt + 1
                        if best is None or r["other"] < best["other"]:
                            best = r
                        if r["other"] <= linkbench.DISTURBED:
                            break
                        log(f"  disturbed (other {r['other']:.2f} cores), measuring again")
                    rows.append(best)
                    r = best
                    log(f"[{LABELS[name]}] {MIXES[mix][1]:>14} window {window}: {r['rps']:>9,.0f} answers/s  "
                        f"p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  lost {r['lost']}  "
                        f"bad {mismatches(r)}  srv cpu {r['srv_cpu']}  gen cpu {r['gen_cpu']}")
                    if not server.proc or server.proc.poll() is not None:
                        return rows, info, f"{LABELS[name]} died during the run:\n{linkbench.tail(server.logfile)}"
            return rows, info, None
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, OSError) as e:
            return rows, info, f"{LABELS[name]}: {e}"
        finally:
            server.stop()


# --------------------------------------------------------------------------
# in-process cost of one answer


#: The kinds of query the generator sends, and each mix as shares of them.
KINDS = ("ping", "get_peers random", "get_peers stored")


def mix_shares(mix: str, stored_share: float) -> dict[str, float]:
    ping = MIXES[mix][0] / 100.0
    return {"ping": ping, "get_peers random": (1 - ping) * (1 - stored_share),
            "get_peers stored": (1 - ping) * stored_share}


def synthetic_datagrams(kind: str, count: int, stored: int, rng: random.Random) -> list:
    """(datagram, source) pairs of one kind as the generator sends them (8 source ports, 4-byte t, v)."""
    ids = [rng.randbytes(20) for _ in range(8)]
    out = []
    for i in range(count):
        src = i % 8
        tid = (i & 0xFFFFFFFF).to_bytes(4, "big")
        if kind == "ping":
            data = bencode({b"a": {b"id": ids[src]}, b"q": b"ping", b"t": tid, b"v": b"ZB\x00\x01", b"y": b"q"})
        else:
            info_hash = stored_info_hash(rng.randrange(stored)) if kind == "get_peers stored" else rng.randbytes(20)
            data = bencode({b"a": {b"id": ids[src], b"info_hash": info_hash}, b"q": b"get_peers", b"t": tid,
                            b"v": b"ZB\x00\x01", b"y": b"q"})
        out.append((data, (HOST, 40000 + src)))
    return out


class _NullTransport:
    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = 0

    def write(self, data, addr) -> None:
        self.sent += 1


def _best(rounds: int, setup, run) -> float:
    """Seconds of the fastest of ``rounds`` runs, each on a fresh ``setup()``."""
    best = float("inf")
    for _ in range(rounds):
        state = setup()
        t0 = time.perf_counter()
        run(state)
        best = min(best, time.perf_counter() - t0)
    return best


def in_process(args) -> dict:
    """µs per datagram of the node's and the bare responder's handlers, per kind of query, without
    sockets or reactor (best of 5 rounds); with ``--profile`` also the node's steps, through their
    public functions, and cProfile's view of the get_peers mix."""
    linkbench.use_checkout()
    from twisted.internet.task import Clock

    import bare_krpc_responder
    from zentalk_relay.dht import krpc
    from zentalk_relay.dht.node import DhtConfig, DhtNode
    from zentalk_relay.dht.protocol import DhtProtocol
    from zentalk_relay.dht.routing import RoutingTable
    from zentalk_relay.ratelimit import Rate

    now = 1000.0
    config = DhtConfig(rate=Rate(1_000_000, 1.0, 1_000_000))

    def make_node() -> DhtNode:
        table = RoutingTable.from_dict(fake_table(now), now, **config.table_options())
        node = DhtNode(table.own_id, now=now, rng=random.Random(3), config=config, table=table)
        for index in range(args.stored):
            for p in range(args.peers):
                node.peers.announce(stored_info_hash(index), (HOST, 20000 + p), now)
        return node

    def make_protocol() -> DhtProtocol:
        clock = Clock()
        clock.advance(now)
        protocol = DhtProtocol(clock, make_node())
        protocol.transport = _NullTransport()
        protocol.startProtocol()
        return protocol

    def make_bare():
        bare = bare_krpc_responder.BareKrpcResponder()
        bare.transport = _NullTransport()
        return bare

    count, rounds = args.inproc_count, 5
    results: dict = {"datagrams_per_round": count, "rounds": rounds, "kinds": {}, "steps": {}}
    for kind in KINDS:
        if kind == "get_peers stored" and not args.stored:
            continue
        datagrams = synthetic_datagrams(kind, count, args.stored, random.Random(11))

        def feed_node(node, datagrams=datagrams):
            for data, source in datagrams:
                node.handle(data, source, now)

        def feed_protocol(protocol, datagrams=datagrams):
            for data, source in datagrams:
                protocol.datagramReceived(data, source)

        results["kinds"][kind] = {
            "node_handle_us": round(1e6 * _best(rounds, make_node, feed_node) / count, 2),
            "node_protocol_us": round(1e6 * _best(rounds, make_protocol, feed_protocol) / count, 2),
            "bare_handler_us": round(1e6 * _best(rounds, make_bare, feed_protocol) / count, 2),
        }
        if not args.profile:
            continue
        # The node's steps for this kind, each timed alone through the module's public functions.
        node = make_node()
        messages = [(krpc.decode(data), source) for data, source in datagrams]
        steps = {}

        def timed(name, run):
            steps[name] = round(1e6 * _best(3, lambda: None, lambda _: run()) / count, 2)

        timed("krpc.decode", lambda: [krpc.decode(data) for data, _ in datagrams])
        timed("RoutingTable.heard_from", lambda: [node.table.heard_from(m.sender, source, now, responded=False)
                                                  for m, source in messages])
        if kind != "ping":
            timed("RoutingTable.closest (8)", lambda: [node.table.closest(m.info_hash, 8, now) for m, _ in messages])
            timed("TokenSecrets.issue", lambda: [node.tokens.issue(source[0], now) for _, source in messages])
            timed("PeerStore.peers (50)", lambda: [node.peers.peers(m.info_hash, now, 50, node._rng)
                                                   for m, _ in messages])
        responses = []
        for m, source in messages:
            fields = {}
            if kind != "ping":
                fields["nodes"] = tuple(node.table.closest(m.info_hash, 8, now))
                fields["token"] = node.tokens.issue(source[0], now)
                fields["values"] = tuple(node.peers.peers(m.info_hash, now, 50, node._rng)) or None
            responses.append(krpc.Response(m.tid, node.node_id, your_ip=source, client=node.config.client_version,
                                           **fields))
        timed("krpc.encode, whole answer", lambda: [krpc.encode(r) for r in responses])
        results["steps"][kind] = steps
    if args.profile:
        mix = "get_peers" if "get_peers" in args.mixes else args.mixes[0]
        datagrams = [d for kind, share in mix_shares(mix, args.stored_share).items() if share
                     for d in synthetic_datagrams(kind, int(count * share), args.stored, random.Random(11))]
        random.Random(5).shuffle(datagrams)
        protocol = make_protocol()
        profiler = cProfile.Profile()
        profiler.enable()
        for data, source in datagrams:
            protocol.datagramReceived(data, source)
        profiler.disable()
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(args.profile_top)
        results["profile_mix"] = mix
        results["profile"] = _short_profile(stream.getvalue())
    return results


def _short_profile(text: str) -> str:
    """pstats output from the header row on, paths shortened to the package."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    out = []
    for line in lines[start:]:
        if not line.strip():
            continue
        line = re.sub(r"\S*/(zentalk_relay/|twisted/|benchmarks/)", r"\1", line)
        line = re.sub(r"\S*/lib/python3[.\d]*/", "", line)
        out.append(line)
    return "\n".join(out)


# --------------------------------------------------------------------------
# report


def ratios(rows: list[dict]) -> list[dict]:
    base = {(r["mix"], r["window"]): r for r in rows if r["server"] == "bare"}
    out = []
    for r in rows:
        b = base.get((r["mix"], r["window"]))
        if r["server"] == "zentalk" and b and b["rps"]:
            out.append({"mix": r["mix"], "window": r["window"], "node": r["rps"], "bare": b["rps"],
                        "ratio": round(r["rps"] / b["rps"], 3),
                        "node_us": r["srv_us_per_answer"], "bare_us": b["srv_us_per_answer"]})
    return out


def format_rows(rows: list[dict], server_cpu: int) -> str:
    head = ["server", "mix", "window", "answers/s", "p50 ms", "p99 ms", "lost", "bad", "late",
            "srv cpu", "us/answer", "gen cpu", "cpu0 busy", "other"]
    body = []
    for r in rows:
        busy = (r["cpus"].get(server_cpu) or r["cpus"].get(str(server_cpu)) or {}).get("busy")
        body.append([
            LABELS[r["server"]], MIXES[r["mix"]][1], str(r["window"]), f"{r['rps']:,.0f}",
            f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", str(r["lost"]), str(mismatches(r)), str(r["late"]),
            f"{r['srv_cpu']:.2f}" if r["srv_cpu"] is not None else "n/a",
            f"{r['srv_us_per_answer']:.1f}" if r["srv_us_per_answer"] else "n/a",
            f"{r['gen_cpu']:.2f}", f"{busy:.2f}" if busy is not None else "n/a",
            f"{r['other']:.2f}" + ("!" if r["other"] > linkbench.DISTURBED else " "),
        ])
    return linkbench.table(head, body, left=(0, 1))


def format_shapes(rows: list[dict]) -> str:
    head = ["server", "mix", "method", "answered", "bytes mean", "min-max", "nodes", "values", "with peers",
            "< 8 nodes", "ip", "v"]
    body = []
    for r in rows:
        for method, m in r["methods"].items():
            if not m["received"]:
                continue
            n = m["received"]
            body.append([
                LABELS[r["server"]], MIXES[r["mix"]][1], method, f"{n:,}", f"{m['bytes_mean']:.0f}",
                f"{m['bytes_min']}-{m['bytes_max']}", f"{m['nodes_mean']:.2f}", f"{m['values_mean']:.1f}",
                f"{100 * m['with_values'] / n:.0f}%", f"{100 * m['fewer_than_8_nodes'] / n:.0f}%",
                f"{100 * m['with_ip'] / n:.0f}%", f"{100 * m['with_v'] / n:.0f}%",
            ])
    return linkbench.table(head, body, left=(0, 1, 2))


def format_in_process(result: dict, rows: list[dict], stored_share: float) -> str:
    kinds = result["kinds"]
    head = ["query", "DhtNode.handle", "+ DhtProtocol", "bare handler"]
    body = [[k, f"{v['node_handle_us']:.1f}", f"{v['node_protocol_us']:.1f}", f"{v['bare_handler_us']:.1f}"]
            for k, v in kinds.items()]
    lines = [linkbench.table(head, body), ""]
    head = ["mix", "node in-process", "node live", "rest: reactor, syscalls", "bare in-process", "bare live",
            "rest"]
    body = []
    live = {(r["server"], r["mix"]): r["srv_us_per_answer"] for r in rows if r["window"] == rows[0]["window"]}
    for mix in MIXES:
        shares = mix_shares(mix, stored_share)
        if any(share and kind not in kinds for kind, share in shares.items()):
            continue
        node = sum(share * kinds[k]["node_protocol_us"] for k, share in shares.items() if share)
        bare = sum(share * kinds[k]["bare_handler_us"] for k, share in shares.items() if share)
        node_live, bare_live = live.get(("zentalk", mix)), live.get(("bare", mix))
        if node_live is None and bare_live is None:
            continue
        body.append([
            MIXES[mix][1], f"{node:.1f}", f"{node_live:.1f}" if node_live else "n/a",
            f"{node_live - node:.1f}" if node_live else "n/a", f"{bare:.1f}",
            f"{bare_live:.1f}" if bare_live else "n/a", f"{bare_live - bare:.1f}" if bare_live else "n/a",
        ])
    lines.append(linkbench.table(head, body))
    if result.get("steps"):
        order = ["krpc.decode", "RoutingTable.heard_from", "RoutingTable.closest (8)", "TokenSecrets.issue",
                 "PeerStore.peers (50)", "krpc.encode, whole answer"]
        names = [n for n in order if any(n in steps for steps in result["steps"].values())]
        head = ["step (timed alone)"] + list(result["steps"])
        body = [[n] + [f"{steps[n]:.1f}" if n in steps else "" for steps in result["steps"].values()] for n in names]
        lines += ["", linkbench.table(head, body)]
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per row (default 4)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each row (default 1)")
    p.add_argument("--window", type=int, nargs="+", action="extend", help="queries outstanding (default 64)")
    p.add_argument("--sockets", type=int, default=8, help="source ports of the generator (default 8)")
    p.add_argument("--mixes", default=",".join(MIXES), help="comma-separated subset of ping,get_peers,mixed")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of bare,zentalk")
    p.add_argument("--stored", type=int, default=32, help="info-hashes with announced peers (default 32)")
    p.add_argument("--peers", type=int, default=50, help="peers announced on each (default 50)")
    p.add_argument("--stored-share", type=float, default=0.2,
                   help="share of get_peers asking a stored info-hash (default 0.2)")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds before a query counts lost (default 1)")
    p.add_argument("--max-requests", type=int, default=20_000_000, help="hard cap per generator run")
    p.add_argument("--ready-timeout", type=float, default=30.0, help="seconds to wait for a server (default 30)")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="wait at most this long for a quiet machine before each row (default 30)")
    p.add_argument("--retries", type=int, default=2, help="measure a disturbed row again, this often (default 2)")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--inproc-count", type=int, default=5_000, help="datagrams per in-process round (default 5,000)")
    p.add_argument("--no-inproc", action="store_true", help="skip the in-process cost of one answer")
    p.add_argument("--profile", action="store_true", help="cProfile the node's path on the synthetic datagrams")
    p.add_argument("--profile-top", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print machine-readable results on stdout")
    a = p.parse_args(argv)
    a.window = a.window or [64]
    a.mixes = [m.strip() for m in a.mixes.split(",") if m.strip()]
    a.servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    if any(m not in MIXES for m in a.mixes) or any(s not in SERVERS for s in a.servers):
        p.error(f"mixes are among {', '.join(MIXES)}; servers among {', '.join(SERVERS)}")
    if not 0.1 <= a.duration <= 600 or not 0 <= a.warmup <= 60:
        p.error("--duration must be 0.1..600 and --warmup 0..60")
    if any(not 1 <= w <= 65535 for w in a.window) or not 1 <= a.sockets <= 64:
        p.error("--window must be 1..65535 and --sockets 1..64")
    if not 0 <= a.stored <= 100_000 or not 0 <= a.peers <= 500 or not 0 <= a.stored_share <= 1:
        p.error("--stored 0..100000, --peers 0..500, --stored-share 0..1")
    if not 0 <= a.retries <= 5 or not 1000 <= a.inproc_count <= 1_000_000:
        p.error("--retries 0..5, --inproc-count 1000..1000000")
    linkbench.check_cpus(a.server_cpu, a.load_cpu)
    return a


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    build_generator()
    started = time.monotonic()
    notes, errors, rows, infos = [], [], [], {}
    for name in args.servers:
        got, info, err = bench_server(name, args)
        rows.extend(got)
        infos[name] = info
        if err:
            log(f"ERROR: {err}")
            errors.append(err)
    inproc = None
    if not args.no_inproc:
        log("in-process cost of one answer ...")
        mask = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {args.server_cpu})
        try:
            inproc = in_process(args)
        finally:
            os.sched_setaffinity(0, mask)
    ratio_rows = ratios(rows)
    env = linkbench.env_info()
    try:
        import fastbencode

        env["fastbencode"] = ".".join(map(str, fastbencode.__version__))
    except Exception:  # noqa: BLE001 - informational only
        pass
    elapsed = time.monotonic() - started

    if args.json:
        print(json.dumps({
            "benchmark": "dht_queries",
            "params": {k: getattr(args, k) for k in ("duration", "warmup", "window", "sockets", "mixes", "stored",
                                                     "peers", "stored_share", "timeout", "server_cpu", "load_cpu")},
            "node_settings": NODE_SETTINGS, "env": env, "servers": infos, "results": rows, "ratios": ratio_rows,
            "in_process": inproc, "notes": notes, "errors": errors, "elapsed_s": round(elapsed, 1),
        }, indent=2))
        return 1 if errors else 0

    print()
    print(f"DHT queries, {args.duration:g} s measured after {args.warmup:g} s warm-up per row; server pinned to "
          f"CPU {args.server_cpu}, load generator (dht_load.c, {args.sockets} source ports) on CPU {args.load_cpu}")
    print(f"node: --set {' --set '.join(NODE_SETTINGS)}: the per-source-IP query rate (default 20/s, burst 50) "
          f"is lifted because all load comes from 127.0.0.1; routing table of "
          f"{TABLE_DEPTH * PER_BUCKET} fake nodes; the amplification rule (3 x the query to an unverified source) "
          f"stays on")
    z = infos.get("zentalk", {}).get("announce")
    if z:
        print(f"stored peers: {z['acked']:,} of {z['announced']:,} announces acknowledged "
              f"({args.stored} info-hashes x {args.peers} peers); get_peers asks a stored info-hash "
              f"{100 * args.stored_share:.0f}% of the time, a random one otherwise")
    print(format_rows(rows, args.server_cpu))
    for q in ratio_rows:
        print(f"node / bare, {MIXES[q['mix']][1]}, window {q['window']}: {q['node']:,.0f} / {q['bare']:,.0f} "
              f"answers/s = {q['ratio']:.2f}  (server CPU per answer {q['node_us']} vs {q['bare_us']} us)")
    bad = sum(mismatches(r) for r in rows)
    print(f"answers checked: every datagram parsed as KRPC, transaction id matched; mismatches "
          f"(invalid, error, foreign id, garbage): {bad}")
    if any(r["other"] > linkbench.DISTURBED for r in rows):
        print(f"! other processes took more than {linkbench.DISTURBED} of a core during a row: "
              f"read it as a lower bound")
    if any(r["gen_cpu"] > 0.9 for r in rows):
        print("! the generator was busy > 90 % in a row: it, not the server, may be the limit")
    print()
    print("answer sizes (the node answers an unverified source with at most 3 x the query: "
          "ping 67 B -> 201 B, get_peers 106 B -> 318 B)")
    print(format_shapes(rows))
    for r in rows:
        c = r.get("node_counters")
        if c:
            print(f"node counters, {MIXES[r['mix']][1]}: trimmed {c.get('trimmed', 0):,}, "
                  f"dropped rate_limited {c.get('dropped_rate_limited', 0):,}, "
                  f"verification pings sent {c.get('sent_ping', 0):,}, "
                  f"server queries seen by the generator {r['server_queries']}")
    if inproc:
        print()
        print(f"in-process, CPU {args.server_cpu}, best of {inproc['rounds']} x {inproc['datagrams_per_round']:,} "
              f"datagrams, us per datagram (no sockets, no reactor; the node's DhtProtocol on a fake transport "
              f"and task.Clock); by mix, weighted by its kinds of query, against the server's CPU per answer "
              f"measured above")
        print(format_in_process(inproc, rows, args.stored_share))
        if inproc.get("profile"):
            print()
            print(f"cProfile of DhtProtocol.datagramReceived, {MIXES[inproc['profile_mix']][1]} "
                  f"(top {args.profile_top} by own time; cProfile inflates call-heavy code):")
            print(inproc["profile"])
    for n in notes:
        print(f"note: {n}")
    for e in errors:
        print(f"error: {e.splitlines()[0]}")
    where = (f"commit {env.get('commit')}{' + local changes' if env.get('package_modified') else ''}"
             if env.get("commit") else f"package from {env['source']}")
    print(f"({elapsed:.0f} s; {where}, Python {env['python']}, Twisted {env.get('twisted')}, "
          f"fastbencode {env.get('fastbencode')})")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
