"""The unit file passes systemd-analyze, and a real node notifies a fake NOTIFY_SOCKET."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from .conftest import LOOPBACK_ARGS, program

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("unit", ["zentalk-relay.service", "zentalk-relay@.service"])
def test_unit_files_verify(tmp_path, unit):
    text = (ROOT / "systemd" / unit).read_text().replace("/opt/zentalk-relay/bin/twistd", program("twistd"))
    target = tmp_path / unit.replace("@.", "@1.")
    target.write_text(text)
    if "@" in unit:
        shutil.copy(target, tmp_path / unit)
    result = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Type=notify" in text and "ProtectSystem=strict" in text and "NoNewPrivileges=yes" in text


def test_node_notifies_ready_and_feeds_the_watchdog(start_node, tmp_path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(20)
        node = start_node(*LOOPBACK_ARGS, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
        messages = [sock.recv(1000).decode() for _ in range(3)]
        assert messages[0].startswith("READY=1\nSTATUS=serving ")
        assert messages[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
        endpoints = node.endpoints()  # READY came once every listener was up
        assert endpoints["link"] and endpoints["metrics"] and endpoints["stun"]
        node.process.terminate()
        while (message := sock.recv(1000).decode()) == "WATCHDOG=1":
            pass
        assert message == "STOPPING=1\nSTATUS=draining"
        node.finish()
