#!/usr/bin/env python3
"""Link handshake cost in instructions: the node's user-space work per handshake, by library, under callgrind.

    python benchmarks/link_instructions.py [--handshakes 1000] [--concurrency 64] [--json]
    LINKBENCH_SOURCE=/tmp/other-tree python benchmarks/link_instructions.py   # another version of the code

The timing benchmark (link_handshakes.py) moves by about 5 % between runs on a
shared host, which hides changes of a few microseconds. This one counts
instead: the node runs under valgrind's callgrind with instrumentation off
until it has done a few handshakes, then counts every instruction it executes
in user space while the same connector as link_handshakes.py's completes
``--handshakes`` more, and divides by the handshakes the node's own metrics
counted. The count is deterministic to about 0.1 %, so two versions of the
code compare in two runs, with no need to alternate them.

The reference, in the same run: the instructions inside libsodium, i.e. the
public-key operations (X25519, Ed25519) that the timing benchmark's raw
bound is made of. What matters is what the node adds to them. Instructions
are not time: the kernel's share (two sends, three reads, accept and close;
about a tenth of the node's time) is not counted, nor are cache misses, and
an instruction of vectorised field arithmetic is cheaper than one of the
interpreter's; on these machines about 13,000 of libsodium's and 7,000 of the
interpreter's make a microsecond.

Needs valgrind (``apt-get install valgrind``), Linux and 2 CPUs; takes about
a minute for 1,000 handshakes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import link_handshakes  # noqa: E402
import linkbench  # noqa: E402

#: ELF objects grouped into what they are (callgrind names the object of every function).
GROUPS = (
    ("public-key calls (libsodium)", re.compile(r"_sodium")),
    ("Python interpreter", re.compile(r"libpython|^python")),
    ("OpenSSL: hashes, AEAD", re.compile(r"libcrypto|libssl|_rust\.abi3|_hashlib")),
    ("C library", re.compile(r"^libc\.|^ld-linux")),
)
OTHER = "other extension modules"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--handshakes", type=int, default=1000, help="handshakes counted (default 1000)")
    p.add_argument("--warm", type=int, default=200, help="handshakes before counting starts (default 200)")
    p.add_argument("--concurrency", type=int, default=64, help="handshakes in flight (default 64)")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the result as JSON too")
    return p.parse_args(argv)


class CountedNode(linkbench.Node):
    """The benchmark node, started under callgrind with instrumentation off."""

    def __init__(self, workdir: Path, cpu: int, out: Path) -> None:
        super().__init__(workdir, cpu, list(linkbench.BENCH_SETTINGS), ready_timeout=300.0)
        self.out = out

    def command(self) -> list[str]:
        cmd = super().command()
        at = cmd.index(linkbench.twistd_path())
        return cmd[:at] + ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                           f"--callgrind-out-file={self.out}.%p"] + cmd[at:]

    def instrument(self, what: str) -> None:
        subprocess.run(["callgrind_control", what, str(self.pid)], check=True, capture_output=True, timeout=60)


def connector_args(args, count: int):
    # the connector stops at --max-handshakes; the duration is only a bound
    return link_handshakes.parse_args(["--duration", "600", "--warmup", "0", "--quiet-wait", "0",
                                       "--pool", str(count + 100), "--max-handshakes", str(count),
                                       "--load-cpu", str(args.load_cpu)])


def by_object(dump: Path) -> dict[str, int]:
    """Instructions per ELF object in one callgrind dump (its self costs, read from the file itself).

    In the format each cost line counts for the current ``ob=``; the line
    after a ``calls=`` line is the callee's inclusive cost and is skipped.
    Names may be compressed: ``ob=(3) /path`` (or ``cob=``) once, ``ob=(3)`` after.
    """
    names: dict[str, str] = {}
    counts: dict[str, int] = {}
    current = "?"
    skip_next = False
    with open(dump, errors="replace") as lines:
        for line in lines:
            head = line[:1]
            if head.isdigit() or head in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    counts[current] = counts.get(current, 0) + int(parts[1])
            elif line.startswith(("ob=", "cob=")):  # the two share one table of compressed names
                match = re.match(r"c?ob=(?:\((\d+)\))?\s*(.*)", line.rstrip("\n"))
                key, name = match.group(1), match.group(2)
                if key is not None and name:
                    names[key] = name
                if head == "o":
                    current = (name or names.get(key, "?")).rsplit("/", 1)[-1]
            elif line.startswith("calls="):
                skip_next = True
    return counts


def grouped(objects: dict[str, int]) -> dict[str, int]:
    groups = {label: 0 for label, _ in GROUPS} | {OTHER: 0}
    for name, count in objects.items():
        label = next((label for label, pattern in GROUPS if pattern.search(name)), OTHER)
        groups[label] += count
    return groups


def measure(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="linkinstr-") as tmp:
        out = Path(tmp) / "callgrind.out"
        node = CountedNode(Path(tmp) / "node", args.server_cpu, out)
        node.start()
        try:
            link_handshakes.run_connector(connector_args(args, args.warm), node, args.concurrency, "polls")
            before = node.metric("zentalk_link_handshakes_total", {"result": "success"}) or 0
            node.instrument("--instr=on")
            started = time.monotonic()
            link_handshakes.run_connector(connector_args(args, args.handshakes), node, args.concurrency, "polls")
            node.instrument("--instr=off")
            seconds = time.monotonic() - started
            after = node.metric("zentalk_link_handshakes_total", {"result": "success"}) or 0
            node.instrument("--dump")
        finally:
            node.stop()
        objects: dict[str, int] = {}
        for dump in sorted(Path(tmp).glob("callgrind.out.*")):
            for name, count in by_object(dump).items():
                objects[name] = objects.get(name, 0) + count
    handshakes = int(after - before)
    if handshakes <= 0:
        raise RuntimeError("the node counted no handshakes while instrumented")
    per = {label: round(count / handshakes) for label, count in grouped(objects).items()}
    return {"handshakes": handshakes, "seconds": round(seconds, 1), "per_handshake": per,
            "total": sum(per.values()), "objects": {k: round(v / handshakes) for k, v in
                                                     sorted(objects.items(), key=lambda kv: -kv[1])[:12]}}


def report(result: dict, info: dict) -> str:
    per = result["per_handshake"]
    reference = per["public-key calls (libsodium)"]
    total = result["total"]
    rows = [[label, f"{count:,}", f"{count / total:.1%}", f"{count / reference:.3f}"]
            for label, count in per.items()]
    rows.append(["total", f"{total:,}", "100.0%", f"{total / reference:.3f}"])
    added = total - reference
    source = info.get("commit") or info["source"]
    return "\n".join([
        f"Link handshakes counted in user-space instructions (callgrind); node on CPU 0, connector on CPU 1; "
        f"source {source}",
        f"{result['handshakes']:,} handshakes counted in {result['seconds']} s under valgrind "
        "(the node's own success count); the public-key calls (libsodium) are the reference",
        "",
        linkbench.table(["where", "instructions / handshake", "share", "x public-key"], rows),
        "",
        f"the node adds {added:,} instructions per handshake to the public-key calls' {reference:,} "
        f"({added / reference:.3f} of them)",
    ])


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    missing = [tool for tool in ("valgrind", "callgrind_control", "taskset")
               if shutil.which(tool) is None]
    if missing:
        print(f"needs {', '.join(missing)} (apt-get install valgrind util-linux)", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("needs 2 CPUs (the node and the connector each on its own)", file=sys.stderr)
        return 2
    info = linkbench.env_info()
    result = measure(args)
    print(report(result, info))
    if args.json:
        print(json.dumps({"result": result, "env": info}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
