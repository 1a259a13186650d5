"""Shared helpers of the delivery benchmarks (delivery_path, mailbox_writes).

- :func:`start_relays`: relay nodes under twistd, pinned to CPUs, with keys made
  beforehand by ``python -m zentalk_relay.cli keygen`` and, for more than one,
  every other relay in ``mesh.peers`` (``ztr1:...@127.0.0.1:PORT``), as
  ``tests/integration/test_delivery.py`` does.
- :class:`LeanLink`: one authenticated client link on a plain non-blocking
  socket. The handshake is the package's sans-IO ``LinkConnection`` (Noise NK,
  HELLO, mutual Ed25519 auth, via ``link_load.handshake``); after it the data path
  runs straight on the link's Noise cipher states: frames packed into records of
  up to ``RECORD_TARGET`` bytes, one AEAD call per record, one ``send()`` per
  loop. WINDOW_UPDATE / FLOW_CONTROL are honoured and sent, PINGs answered.
- :func:`run_child`: start a driver or reference process pinned to a CPU and read
  the JSON object it prints last.
- :func:`py_spy` / :func:`summarize_threads`: sample a node with py-spy.

Every wait here is bounded; every process started here is our own child and is
stopped by its pid (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import linkbench  # noqa: E402
from linkbench import HOST, log  # noqa: E402

U16 = struct.Struct(">H")
U64 = struct.Struct(">Q")
RECV_BYTES = 262144
OUTBUF_HIGH = 262144  # stop generating while this much is unsent

#: The per-link message rate and the per-IP / pending-handshake limits out of
#: the way of a benchmark that drives a node from one address.
RELAY_SETTINGS = (
    'dht.udp=["127.0.0.1:0"]',  # not the default 0.0.0.0:7403, which the relays would all want
    "metrics.blur_interval=0",  # exact counters: the benchmarks read them over seconds
    "link.messages_per_minute=100000000",
    "link.messages_burst=1000000",
    "link.links_per_ip=1000",
    "link.max_links=1000",
    "link.pending_handshakes=1000",
)

# frame types (zentalk_relay/link/frames.py)
PING, PONG, CLOSE, ERROR, FLOW_CONTROL, WINDOW_UPDATE = 0x06, 0x07, 0x08, 0x09, 0x10, 0x11
SEND, DELIVER, RECEIPT, ACK, ONION = 0x30, 0x31, 0x32, 0x35, 0x40


class DriverError(Exception):
    pass


# -- relay nodes ---------------------------------------------------------------------


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """``python -m zentalk_relay.cli ...`` from the source tree the nodes run."""
    res = subprocess.run([sys.executable, "-m", "zentalk_relay.cli", *args], capture_output=True, text=True,
                         timeout=timeout, env=linkbench.checkout_env())
    if res.returncode != 0:
        raise RuntimeError(f"zentalk_relay.cli {' '.join(args)} exited {res.returncode}: {res.stderr.strip()}")
    return res


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


#: ``--tcp-nodelay``, a what-if experiment, not the package: the relay's link
#: sockets (StreamLinkProtocol, accepted and mesh-dialled alike) get TCP_NODELAY,
#: patched in at start by this wrapper around twistd; the package is unchanged.
NODELAY_PATCH = """
def _patch_nodelay():
    from zentalk_relay.link import protocol

    made = protocol.StreamLinkProtocol.connectionMade

    def connectionMade(self):
        setter = getattr(self.transport, "setTcpNoDelay", None)
        if setter is not None:
            setter(True)
        made(self)

    protocol.StreamLinkProtocol.connectionMade = connectionMade
"""
NODELAY_TWISTD = NODELAY_PATCH + """
_patch_nodelay()
import sys
sys.argv[0] = "twistd"
from twisted.scripts.twistd import run
run()
"""


def patch_nodelay() -> None:
    """In a driver process: the same experiment for the reference client's sockets."""
    namespace: dict = {}
    exec(NODELAY_PATCH, namespace)  # noqa: S102 - our own constant
    namespace["_patch_nodelay"]()


class RelayNode(linkbench.Node):
    """linkbench.Node, optionally started through the TCP_NODELAY wrapper."""

    nodelay = False

    def command(self) -> list[str]:
        cmd = super().command()
        if self.nodelay:
            wrapper = self.workdir / "twistd_nodelay.py"
            wrapper.write_text(NODELAY_TWISTD)
            at = cmd.index(linkbench.twistd_path())
            cmd[at:at + 1] = [sys.executable, str(wrapper)]
        return cmd


def start_relays(base: Path, names: list[str], cpu: str, settings: list[str],
                 ready_timeout: float = 30.0, nodelay: bool = False) -> dict[str, linkbench.Node]:
    """Start one relay per name, each with the others as mesh peers; returns them by name.

    ``cpu`` is a taskset CPU list ("0", "0,1") shared by all of them. On any
    failure the relays already started are stopped before the error propagates.
    ``nodelay``: the TCP_NODELAY experiment (:data:`NODELAY_TWISTD`)."""
    infos, ports = {}, {}
    for name in names:
        data = base / f"relay-{name}" / "data"
        data.mkdir(parents=True, exist_ok=True)
        cli("keygen", "--data-dir", str(data))
        infos[name] = json.loads(cli("info", "--json", "--data-dir", str(data)).stdout)
        ports[name] = free_port()
    nodes: dict[str, linkbench.Node] = {}
    try:
        for name in names:
            peers = [f'{infos[o]["bootstrap"].partition("@")[0]}@{HOST}:{ports[o]}' for o in names if o != name]
            mine = list(settings) + [f'link.tcp=["tcp:{ports[name]}:interface={HOST}"]']
            if peers:
                mine.append("mesh.peers=" + json.dumps(peers))
            node = RelayNode(base / f"relay-{name}", cpu, mine, ready_timeout=ready_timeout)
            node.nodelay = nodelay
            nodes[name] = node
            node.start()
            status = node.get_json("/status")
            node.node_id = bytes.fromhex(status["node_id"])
            node.onion_public = bytes.fromhex(status["onion_public"])
            node.name = name
    except BaseException:
        for node in nodes.values():
            node.stop()
        raise
    return nodes


def refresh_onion_key(node: linkbench.Node) -> bytes:
    """The relay's current onion public key (it may have rotated since start)."""
    node.onion_public = bytes.fromhex(node.get_json("/status")["onion_public"])
    return node.onion_public


def relay_counters(node: linkbench.Node) -> dict:
    """Onion outcomes and drops, mailbox events, from the node's /metrics."""
    import re

    out: dict = {}
    try:
        text = node.get("/metrics").decode()
    except OSError as error:
        return {"error": str(error)}
    for line in text.splitlines():
        for name in ("zentalk_relay_onion_packets_total", "zentalk_relay_onion_dropped_total",
                     "zentalk_mailbox_events_total", "zentalk_mailbox_refused_total"):
            if line.startswith(name + "{"):
                head, _, value = line.rpartition(" ")
                labels = dict(re.findall(r'(\w+)="([^"]*)"', head))
                key = name.replace("_total", "") + ":" + ",".join(labels.values())
                out[key] = float(value)
    return out


def counter_delta(before: dict, after: dict) -> dict:
    return {k: round(v - before.get(k, 0.0)) for k, v in after.items()
            if not k.startswith("error") and v - before.get(k, 0.0)}


# -- children ------------------------------------------------------------------------------


def run_child(script: Path, flag: str, spec: dict, cpu: str, timeout: float, extra_env: dict | None = None) -> dict:
    """``taskset -c CPU python SCRIPT FLAG SPECFILE``; the child prints one JSON object last."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="spec-", delete=False) as f:
        json.dump(spec, f)
        spec_path = f.name
    try:
        cmd = ["taskset", "-c", str(cpu), sys.executable, str(script), flag, spec_path]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             env=linkbench.checkout_env(extra_env))
    finally:
        os.unlink(spec_path)
    lines = res.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{script.name} {flag} printed nothing (exit {res.returncode}):\n{res.stderr[-3000:]}")
    try:
        return json.loads(lines[-1])
    except ValueError:
        raise RuntimeError(f"{script.name} {flag}: no JSON on the last line (exit {res.returncode}):\n"
                           f"{res.stdout[-1500:]}\n{res.stderr[-1500:]}") from None


def settle(max_wait: float) -> None:
    """Before a measured run: let the machine go quiet (bounded), and say so if it did not."""
    if max_wait <= 0:
        return
    quiet, waited = linkbench.wait_quiet(max_wait)
    if not quiet:
        log(f"  note: other processes kept using CPU for {waited:.0f} s; measuring anyway")
    elif waited > 3:
        log(f"  waited {waited:.0f} s for other processes to go quiet")


# -- the lean link ---------------------------------------------------------------------------


class LeanLink:
    """An authenticated client link; data path straight on the Noise cipher states."""

    def __init__(self, host: str, port: int, bootstrap_text: str, window_initial: int) -> None:
        import link_load
        from zentalk_relay.bootstrap import parse
        from zentalk_relay.link import session
        from zentalk_relay.link.session import LinkSettings
        from zentalk_relay.ratelimit import Rate

        settings = LinkSettings(window_initial=window_initial, messages=Rate(100000000, 60.0, 1000000))
        sock, conn, node_id = link_load.handshake(host, port, parse(bootstrap_text), settings)
        self.sock = sock
        self.node_id = node_id  # this client's node id (its address)
        self.encrypt = conn._send_cipher.encrypt
        self.decrypt = conn._recv_cipher.decrypt
        reader = conn._reader
        self.inbuf = bytearray(reader._buffer[reader._offset:])
        self.out = bytearray(b"".join(conn.pull(time.time())))
        self.record_target = session.RECORD_TARGET
        self.window_max = settings.window_max
        # the node's window for our flow-controlled frames (SEND, ONION), as the handshake left it
        self.peer_window = conn._peer_window
        self.peer_consumed = conn._peer_consumed
        self.sent_flow = conn._sent_flow
        self.paused_until = 0.0
        # our window for the node's DELIVERs: announced by LinkConnection at activation
        self.window = window_initial
        self.received_flow = conn._received_flow
        self.reported = conn._reported_consumed
        self.pending: list[bytes] = []  # u16 length ‖ frame, not sealed yet
        self.pending_size = 0
        self.errors: list[str] = []
        self.pings = 0
        self.flow_control_frames = 0
        self.records_in = 0  # records from the node
        self.frames_in = 0  # frames in them

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- output ---------------------------------------------------------------

    def credit(self, now: float) -> int:
        if now < self.paused_until:
            return 0
        return self.peer_window - (self.sent_flow - self.peer_consumed)

    def add(self, unit: bytes, flow: bool) -> None:
        """Queue one ``u16 length ‖ frame`` unit; ``flow``: a SEND/ONION counted by the node's window."""
        if self.pending and self.pending_size + len(unit) > self.record_target:
            self.seal()
        self.pending.append(unit)
        self.pending_size += len(unit)
        if flow:
            self.sent_flow += 1

    def add_frame(self, frame: bytes, flow: bool = False) -> None:
        self.add(U16.pack(len(frame)) + frame, flow)

    def seal(self) -> None:
        if self.pending:
            ct = self.encrypt(b"".join(self.pending))
            self.out += U16.pack(len(ct))
            self.out += ct
            self.pending = []
            self.pending_size = 0

    def flush(self) -> None:
        self.seal()
        if self.out:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self.errors.append(f"send: {error}")
                return
            del self.out[:n]

    # -- input ----------------------------------------------------------------

    def read(self, now: float) -> list[bytes]:
        """Application frames that arrived (DELIVER, RECEIPT, ...); control frames are handled here."""
        buf = self.inbuf
        for _ in range(8):
            try:
                data = self.sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                self.errors.append(f"recv: {error}")
                return []
            if not data:
                self.errors.append("the node closed the link")
                return []
            buf += data
            if len(data) < RECV_BYTES:
                break
        decrypt = self.decrypt
        n, off = len(buf), 0
        got: list[bytes] = []
        flow = 0
        while n - off >= 2:
            size = (buf[off] << 8) | buf[off + 1]
            if n - off - 2 < size:
                break
            pt = decrypt(bytes(buf[off + 2: off + 2 + size]))
            off += 2 + size
            self.records_in += 1
            p, length = 0, len(pt)
            while p < length:
                self.frames_in += 1
                flen = (pt[p] << 8) | pt[p + 1]
                kind = pt[p + 2]
                if kind >= SEND:
                    got.append(pt[p + 2: p + 2 + flen])
                    if kind == DELIVER or kind == ONION or kind == SEND:
                        flow += 1
                else:
                    self._control(pt[p + 2: p + 2 + flen], now)
                p += 2 + flen
        if off:
            del buf[:off]
        if flow:
            self.received_flow += flow
            if self.received_flow - self.reported >= self.window // 2:
                self.reported = self.received_flow
                self.add_frame(bytes([WINDOW_UPDATE]) + struct.pack(">II", self.window,
                                                                     self.received_flow & 0xFFFFFFFF))
        return got

    def _control(self, raw: bytes, now: float) -> None:
        kind = raw[0]
        if kind in (WINDOW_UPDATE, FLOW_CONTROL):
            window, consumed = struct.unpack_from(">II", raw, 1)
            self.peer_window = max(0, min(window, self.window_max))
            delta = (consumed - self.peer_consumed) & 0xFFFFFFFF
            if delta <= self.sent_flow - self.peer_consumed:
                self.peer_consumed += delta
            if kind == FLOW_CONTROL:
                self.flow_control_frames += 1
                retry_ms = struct.unpack_from(">I", raw, 10)[0]
                self.paused_until = now + min(retry_ms, 60_000) / 1000.0
        elif kind == PING:
            self.pings += 1
            ts, nonce, seq = struct.unpack_from(">Q8sI", raw, 1)
            self.add_frame(bytes([PONG]) + struct.pack(">Q8sIQ", ts, nonce, seq, int(time.time() * 1000)))
        elif kind in (CLOSE, ERROR):
            code = U16.unpack_from(raw, 1)[0]
            self.errors.append(f"{'CLOSE' if kind == CLOSE else 'ERROR'} from the node: code {code}: "
                               f"{raw[4:].decode('utf-8', 'replace')}")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def ack_frame(message_ids: list[bytes]) -> bytes:
    return bytes([ACK]) + U16.pack(len(message_ids)) + b"".join(message_ids)


# -- measurement in a driver ------------------------------------------------------------------


class Meter:
    """CPU of this process, of the watched pids and of each CPU, and of everyone else, over an interval."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def start(self) -> None:
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()
        self.pid0 = {name: linkbench.cpu_seconds(pid) for name, pid in self.pids.items()}
        self.stat0 = linkbench.cpu_stat()
        self.all0 = linkbench.all_cpu()

    def stop(self) -> dict:
        wall = max(1e-9, time.perf_counter() - self.wall0)
        gen = (time.process_time() - self.cpu0) / wall
        per = {}
        for name, pid in self.pids.items():
            after = linkbench.cpu_seconds(pid)
            before = self.pid0.get(name)
            per[name] = None if after is None or before is None else round((after - before) / wall, 3)
        mine = {os.getpid(), *self.pids.values()}
        foreign = linkbench.foreign_cpu(self.all0, linkbench.all_cpu(), mine) / wall
        return {"wall_s": round(wall, 3), "gen_cpu": round(gen, 3), "srv_cpu": per,
                "cpus": linkbench.cpu_stat_delta(self.stat0, linkbench.cpu_stat()),
                "foreign_cpu": round(foreign, 3)}


def percentiles_ms(latencies: list[float]) -> dict:
    lat = sorted(latencies)
    if not lat:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": round(linkbench.percentile(lat, 50) * 1000, 3),
            "p90_ms": round(linkbench.percentile(lat, 90) * 1000, 3),
            "p99_ms": round(linkbench.percentile(lat, 99) * 1000, 3),
            "max_ms": round(lat[-1] * 1000, 3)}


def poll_links(links: list[LeanLink], timeout: float) -> list[LeanLink]:
    """The links with input, after at most ``timeout`` s."""
    r, _, _ = select.select(links, [], [], timeout)
    return r


# -- profiles ------------------------------------------------------------------------------------


def py_spy(pid: int, seconds: float, out: Path, rate: int = 200, threads: bool = False,
           idle: bool = False) -> subprocess.Popen | None:
    """Start ``py-spy record`` on a pid in raw (collapsed) format; None if py-spy is missing."""
    if shutil.which("py-spy") is None:
        return None
    cmd = ["py-spy", "record", "-p", str(pid), "-d", str(max(1, int(round(seconds)))), "-r", str(rate),
           "--format", "raw", "-o", str(out), "--nonblocking"]
    if threads:
        cmd.append("--threads")
    if idle:
        cmd.append("--idle")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_spy(proc: subprocess.Popen | None, timeout: float) -> str | None:
    if proc is None:
        return "py-spy not found (pip install py-spy)"
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        linkbench.stop(proc)
        return "py-spy did not finish in time"
    if proc.returncode != 0:
        return f"py-spy exited {proc.returncode}: {err.decode(errors='replace').strip()[-300:]}"
    return None


def _frame(frame: str, keep_line: tuple[str, ...] = ()) -> str:
    """``function (path/file.py:123)`` -> ``pkg/file.py:function`` (``:123`` kept for files in keep_line)."""
    name, _, where = frame.rpartition(" (")
    if not name:
        return frame
    path, _, line = where.rstrip(")").rpartition(":")
    short = linkbench._frame_name(frame)
    if any(path.endswith(k) for k in keep_line):
        short += f":{line}"
    return short


def summarize_threads(path: Path, keep_line: tuple[str, ...] = (), top: int = 12) -> dict:
    """Per thread: samples, and self / inclusive shares of its functions (py-spy raw output,
    recorded with ``--threads``; with ``--idle`` the shares include time blocked)."""
    threads: dict[str, dict] = {}
    total = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        parts = [f for f in stack.split(";") if f]
        thread = "main"
        frames = []
        for f in parts:
            if f.startswith("process "):
                continue
            if f.startswith("thread "):
                thread = f
                continue
            frames.append(_frame(f, keep_line))
        t = threads.setdefault(thread, {"samples": 0, "self": {}, "incl": {}})
        t["samples"] += n
        if frames:
            t["self"][frames[-1]] = t["self"].get(frames[-1], 0) + n
            for name in set(frames):
                t["incl"][name] = t["incl"].get(name, 0) + n
    out = {"samples": total, "threads": []}
    for name, t in sorted(threads.items(), key=lambda kv: -kv[1]["samples"]):
        s = max(1, t["samples"])
        out["threads"].append({
            "thread": name, "samples": t["samples"],
            "self": [(f, round(100.0 * c / s, 1)) for f, c in sorted(t["self"].items(), key=lambda kv: -kv[1])[:top]],
            "inclusive": [(f, round(100.0 * c / s, 1))
                          for f, c in sorted(t["incl"].items(), key=lambda kv: -kv[1])[:top * 2]],
        })
    return out


def stat_device(path: Path) -> str:
    """``major:minor`` and mount of the filesystem holding ``path``, for the report."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    try:
        res = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE,TARGET", "-T", str(path)],
                             capture_output=True, text=True, timeout=10)
        return f"{dev} {res.stdout.strip()}"
    except (OSError, subprocess.TimeoutExpired):
        return dev
