"""fuzz/run end to end: every fuzz/fuzz_*.py harness runs for a few seconds and finds nothing.

Runs ``fuzz/run 5`` as the operator would (it sets up what it needs itself:
the package's dependencies and atheris, when missing); nothing is installed
here. Its temporary directory and any crash input stay under pytest's
``tmp_path``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 5
#: Harnesses this test is about; any other fuzz/fuzz_*.py runs and is checked too.
REQUIRED = {"stun", "link"}


def test_fuzz_run_runs_every_harness_without_a_finding(tmp_path):
    harnesses = sorted(path.stem.removeprefix("fuzz_") for path in (ROOT / "fuzz").glob("fuzz_*.py"))
    assert REQUIRED <= set(harnesses), harnesses
    env = {key: value for key, value in os.environ.items()
           if key not in ("FUZZ_KEEP", "FUZZ_VERBOSE", "FUZZ_LINK_STRICT", "FUZZ_TIMEOUT")}
    env.update(PYTHON=sys.executable, FUZZ_ARTIFACTS=str(tmp_path / "artifacts"), TMPDIR=str(tmp_path))
    # Seeds, start-up and, on a first run, fuzz/run's own setup, on top of SECONDS per harness.
    timeout = 300 + len(harnesses) * (SECONDS + 60)
    process = subprocess.Popen([str(ROOT / "fuzz" / "run"), str(SECONDS)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the script and the fuzzer it started
        output, _ = process.communicate()
        pytest.fail(f"fuzz/run {SECONDS} did not finish within {timeout} s:\n{output}")

    assert process.returncode == 0, f"fuzz/run {SECONDS} exited with {process.returncode}:\n{output}"
    for name in harnesses:
        section = re.search(rf"^== {re.escape(name)}: fuzzing .*?(?=^== |\Z)", output, re.M | re.S)
        assert section, f"harness {name} did not run:\n{output}"
        text = section.group(0)
        assert re.search(r"seeds:\s+INITED cov: \d+", text), f"{name}: no coverage after the seeds:\n{text}"
        assert re.search(r"end:\s+cov: \d+ .*exec/s: \d+", text), f"{name}: no final stats:\n{text}"
        runs = re.search(r"runs:\s+(\d+) executions, (\d+) exec/s on average", text)
        assert runs and int(runs.group(1)) > 0, f"{name}: no executions reported:\n{text}"
        assert "no crash" in text, f"{name}:\n{text}"
    assert f"{len(harnesses)} harness(es), {SECONDS}s each, no crash" in output, output
