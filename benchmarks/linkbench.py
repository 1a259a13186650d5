"""Shared helpers of the link benchmarks (link_forwarding, link_handshakes, link_idle).

Starting and stopping the node under twistd pinned to one CPU, finding its
endpoints and bootstrap string, reading a process's CPU time and RSS from
/proc, raising the open-file limit, and printing a plain table. Not a
benchmark by itself.

Every wait here is bounded; every process started here is our own child and
is stopped by its pid (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"
#: The tree whose ``zentalk_relay`` (and twistd plugin) the node and the drivers run:
#: this checkout, or another tree named by LINKBENCH_SOURCE, e.g. a snapshot made with
#: ``git archive HEAD zentalk_relay twisted | tar -x -C DIR`` while the checkout is mid-edit.
SOURCE = Path(os.environ.get("LINKBENCH_SOURCE") or REPO).resolve()
READY = re.compile(r"node ([0-9a-f]{16}) running")

#: Settings that take the node's per-link and per-IP limits out of the way of
#: a benchmark that drives it from one address at rates no client would use.
#: The DHT listens on a loopback port the OS picks, not on the default 0.0.0.0:7403,
#: which another node on the machine may hold. Counters are exact (not blurred and
#: refreshed once a minute), so that a few seconds' window reads them.
BENCH_SETTINGS = (
    'link.tcp=["tcp:0:interface=127.0.0.1:backlog=1024"]',  # the shipped default's accept queue
    'dht.udp=["127.0.0.1:0"]',
    "metrics.blur_interval=0",
    "link.messages_per_minute=100000000",
    "link.messages_burst=1000000",
    "link.links_per_ip=20000",
    "link.max_links=20000",
    "link.pending_handshakes=20000",
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def checkout_env(extra: dict | None = None) -> dict:
    """The environment for children: the checkout first on PYTHONPATH, so that
    twistd finds this tree's plugin and the drivers import this tree's code."""
    env = dict(os.environ)
    parts = [str(SOURCE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("PYTHONHASHSEED", "0")
    if extra:
        env.update(extra)
    return env


def use_checkout() -> None:
    """In a driver process: import zentalk_relay from :data:`SOURCE` (this checkout by default)."""
    if sys.path[:1] != [str(SOURCE)]:
        sys.path.insert(0, str(SOURCE))


def raise_nofile(want: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE (soft and, as root, hard) to at least ``want``.

    Children inherit it. Returns the limits now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft, hard
    new_hard = hard
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            cap = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            cap = want
        new_hard = min(want, cap)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, new_hard), new_hard))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def twistd_path() -> str:
    cand = Path(sys.executable).parent / "twistd"
    if cand.exists():
        return str(cand)
    found = shutil.which("twistd")
    if found is None:
        sys.exit("twistd not found")
    return found


def check_cpus(server_cpu: int, load_cpu: int) -> None:
    cpus = os.sched_getaffinity(0)
    if server_cpu == load_cpu or server_cpu not in cpus or load_cpu not in cpus:
        sys.exit(f"the server and load CPUs must be two different CPUs among {sorted(cpus)}")
    if shutil.which("taskset") is None:
        sys.exit("taskset not found (util-linux)")


# -- /proc -------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, all threads, in seconds (None if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_stat() -> dict[int, tuple[int, int, int]]:
    """Per CPU (busy, softirq + irq, total) jiffies from /proc/stat.

    Busy counts every non-idle state, including interrupt and softirq time,
    which the kernel does not charge to any process (loopback TCP is mostly
    softirq work), and time taken by other processes on that CPU."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *values = line.split()
                    v = [int(x) for x in values]
                    idle = v[3] + (v[4] if len(v) > 4 else 0)
                    total = sum(v[:8])
                    out[int(name[3:])] = (total - idle, v[5] + v[6], total)
    except (OSError, ValueError, IndexError):
        pass
    return out


def cpu_stat_delta(before: dict, after: dict) -> dict[int, dict[str, float]]:
    """Fractions of each CPU between two :func:`cpu_stat` snapshots."""
    out = {}
    for cpu, (busy1, irq1, total1) in after.items():
        if cpu not in before:
            continue
        busy0, irq0, total0 = before[cpu]
        span = max(1, total1 - total0)
        out[cpu] = {"busy": round((busy1 - busy0) / span, 3), "irq": round((irq1 - irq0) / span, 3)}
    return out


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB (None if gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def tail(path: Path, n: int = 25) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:]) or "(empty log)"


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after grace_s. Only touches our own child."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log(f"  pid {proc.pid} ignored SIGTERM for {grace_s:g} s, sending SIGKILL")
        proc.kill()
        return proc.wait(timeout=grace_s)


# -- the node ------------------------------------------------------------------


class Node:
    """``twistd -n zentalk-relay`` pinned to one CPU, in a temporary directory."""

    def __init__(self, workdir: Path, cpu: int, settings: list[str], twistd_args: list[str] | None = None,
                 ready_timeout: float = 30.0) -> None:
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logfile = self.workdir / "node.log"
        self.cpu = cpu
        self.settings = list(settings)
        self.twistd_args = list(twistd_args or [])
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.link_port: int | None = None
        self.metrics_port: int | None = None
        self.bootstrap = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        cmd = ["taskset", "-c", str(self.cpu), twistd_path(), "-n", "--pidfile=", *self.twistd_args,
               "zentalk-relay", "--data-dir", str(self.data_dir), "--stun-udp", f"{HOST}:0",
               "--metrics-listen", f"tcp:0:interface={HOST}"]
        for item in self.settings:
            cmd += ["--set", item]
        return cmd

    def start(self) -> "Node":
        cmd = self.command()
        with open(self.logfile, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, env=checkout_env())
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the node exited with {self.proc.returncode}:\n{tail(self.logfile)}")
            if READY.search(self.logfile.read_text(errors="replace")):
                break
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the node did not log 'running' within {self.ready_timeout:g} s:\n"
                                   f"{tail(self.logfile)}")
            time.sleep(0.05)
        endpoints = json.loads((self.data_dir / "endpoints.json").read_text())["services"]
        self.link_port = _port(endpoints["link"][0])
        self.metrics_port = _port(endpoints["metrics"][0])
        from zentalk_relay.bootstrap import parse

        status = self.get_json("/status")
        self.bootstrap = parse(status["bootstrap"])
        return self

    def get(self, path: str, timeout: float = 10.0) -> bytes:
        with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}{path}", timeout=timeout) as resp:
            return resp.read()

    def get_json(self, path: str) -> dict:
        return json.loads(self.get(path))

    def metric(self, name: str, labels: dict | None = None) -> float | None:
        """One sample of the node's /metrics (sum over series matching ``labels``)."""
        text = self.get("/metrics").decode()
        total, found = 0.0, False
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric_name, _, label_text = head.partition("{")
            if metric_name != name:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
            if labels and any(got.get(k) != v for k, v in labels.items()):
                continue
            total += float(value)
            found = True
        return total if found else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return stop(self.proc)

    def log_tail(self, n: int = 25) -> str:
        return tail(self.logfile, n)


def _port(description: str) -> int:
    return int(description.rsplit(":", 1)[1])


# -- output ----------------------------------------------------------------------


def table(head: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def env_info() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "kernel": platform.release()}
    for module in ("twisted", "nacl", "cryptography"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - informational only
            info[module] = None
    info["source"] = str(SOURCE)
    if SOURCE == REPO.resolve():
        try:
            info["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True, timeout=10).stdout.strip() or None
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "zentalk_relay"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            info["package_modified"] = bool(dirty)
        except (OSError, subprocess.TimeoutExpired):
            pass
    return info


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * (len(sorted_values) - 1)))))
    return sorted_values[index]


# -- profiles ----------------------------------------------------------------------


def _frame_name(frame: str) -> str:
    """``function (path/to/file.py:123)`` -> ``file.py:function``."""
    name, _, where = frame.rpartition(" (")
    if not name:
        return frame
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    for marker in ("zentalk_relay", "twisted", "cryptography", "nacl"):
        if marker in parts:
            short = "/".join(parts[parts.index(marker):])
            break
    return f"{short}:{name}"


def summarize_collapsed(path: Path, top: int = 25) -> dict:
    """Self and inclusive shares per function from py-spy's ``--format raw`` output."""
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    other_threads = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        root = stack.split(";", 1)[0]
        if "_bootstrap (" in root and "threading.py" in root:
            other_threads += n  # a worker thread (e.g. a database writer), not the reactor
            continue
        total += n
        frames = [_frame_name(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + n
        for name in set(frames):
            incl_counts[name] = incl_counts.get(name, 0) + n
    total = max(1, total)
    by_self = sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]
    by_incl = sorted(incl_counts.items(), key=lambda kv: -kv[1])[:top]
    return {
        "samples": total,
        "other_thread_samples": other_threads,
        "self": [(name, round(100.0 * n / total, 1)) for name, n in by_self],
        "inclusive": [(name, round(100.0 * n / total, 1)) for name, n in by_incl],
    }


def format_profile(summary: dict, top: int = 25) -> str:
    lines = [f"{summary['samples']} samples"]
    lines.append("  self %  function")
    lines += [f"  {pct:6.1f}  {name}" for name, pct in summary["self"][:top]]
    lines.append("  incl %  function")
    lines += [f"  {pct:6.1f}  {name}" for name, pct in summary["inclusive"][:top]]
    return "\n".join(lines)


def all_cpu() -> dict[int, float]:
    """utime + stime of every process now, by pid; kernel threads (children of kthreadd,
    e.g. ksoftirqd doing our loopback traffic's softirq work) under negative keys."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        try:
            seconds = (int(fields[11]) + int(fields[12])) / tick
            kernel = fields[1] == "2" or entry == "2"  # ppid kthreadd
        except (IndexError, ValueError):
            continue
        out[-int(entry) if kernel else int(entry)] = seconds
    return out


def foreign_cpu(before: dict[int, float], after: dict[int, float], exclude: set[int]) -> float:
    """CPU seconds used between two :func:`all_cpu` snapshots by user processes not in
    ``exclude`` (processes that started and ended in between are missed)."""
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items() if pid > 0 and pid not in exclude)


def kernel_cpu(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two snapshots by kernel threads (softirq and workqueues)."""
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items() if pid < 0)


def wait_quiet(max_wait: float, threshold: float = 0.05, quiet_for: float = 2.0) -> tuple[bool, float]:
    """Wait (at most ``max_wait`` s) until the other processes of the machine have used
    less than ``threshold`` of a core for ``quiet_for`` s in a row; the benchmark's own
    children are not running at this point. Returns (quiet, seconds waited)."""
    start = time.monotonic()
    quiet_since = None
    before = all_cpu()
    mine = {os.getpid()}
    if max_wait <= 0:
        return True, 0.0
    while True:
        time.sleep(0.5)
        after = all_cpu()
        used = foreign_cpu(before, after, mine) / 0.5
        before = after
        now = time.monotonic()
        if used < threshold:
            quiet_since = quiet_since or now
            if now - quiet_since >= quiet_for:
                return True, now - start
        else:
            quiet_since = None
        if now - start >= max_wait:
            return False, now - start


def disturbance(phase: dict, server_cpu: int) -> float:
    """How much CPU others took during a phase, in cores: the larger of the CPU used by
    processes not ours (short-lived ones that ended within the phase are missed) and the
    server CPU's busy time charged neither to the server process nor to kernel threads."""
    foreign = phase.get("foreign_cpu") or 0.0
    cpus = phase.get("cpus") or {}
    busy = (cpus.get(str(server_cpu)) or cpus.get(server_cpu) or {}).get("busy")
    srv = phase.get("srv_cpu")
    kernel = phase.get("kernel_cpu") or 0.0  # softirq work for our own traffic, on either CPU
    unexplained = busy - srv - kernel if busy is not None and srv is not None else 0.0
    return round(max(foreign, unexplained, 0.0), 3)


DISTURBED = 0.08  # cores taken by others above which a measurement is flagged


def listen_drops() -> int | None:
    """Host-wide TcpExt ListenDrops: connection requests dropped because an accept queue
    (a listener's backlog) was full, among other reasons."""
    try:
        with open("/proc/net/netstat") as f:
            rows = [line.split() for line in f if line.startswith("TcpExt:")]
        return int(rows[1][rows[0].index("ListenDrops")])
    except (OSError, IndexError, ValueError):
        return None
