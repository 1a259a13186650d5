"""The node as operators run it: twistd, real sockets on loopback, coturn's STUN client."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import zipfile
from pathlib import Path

import pytest

from .conftest import LOOPBACK_ARGS, cli, metric, program, run

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]


def _stunclient(host: str, port: int) -> str:
    result = run("turnutils_stunclient", "-p", str(port), host, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("family", ["127.0.0.1", "::1"])
def test_turnutils_stunclient_gets_its_mapped_address_and_metrics_move(start_node, family):
    node = start_node(*LOOPBACK_ARGS)
    before = metric(node.http("/metrics")[1].decode(), "zentalk_stun_requests_total", method="binding",
                    result="success")
    host, port = node.address("stun", family)
    output = _stunclient(host, port)
    mapped = re.search(r"UDP reflexive addr: (.+):(\d+)", output)
    assert mapped is not None, output
    assert mapped.group(1) == family
    after = metric(node.http("/metrics")[1].decode(), "zentalk_stun_requests_total", method="binding",
                   result="success")
    assert after > before


def test_listening_endpoints_are_logged_once_each(start_node):
    node = start_node(*LOOPBACK_ARGS)
    lines = [line for line in node.output if " listening on " in line]
    endpoints = [endpoint for group in node.endpoints().values() for endpoint in group]
    assert len(lines) == len(endpoints) == 5  # STUN v4 and v6, links, DHT, metrics
    for endpoint in endpoints:
        assert sum(endpoint in line for line in lines) == 1


def test_status_and_healthz_and_info_agree(start_node):
    node = start_node(*LOOPBACK_ARGS)
    assert node.http("/healthz") == (200, b"ok\n")
    status = json.loads(node.http("/status")[1])
    info = json.loads(cli("info", "--json", "--data-dir", str(node.data_dir)).stdout)
    assert status["node_id"] == info["node_id"]
    # the running node adds the address it really bound; the keys are the same
    assert status["bootstrap"].split("@")[0] == info["bootstrap"]
    assert status["bootstrap"].endswith("@%s:%d" % node.address("link"))
    assert status["services"]["stun"]["running"] is True
    assert set(info) >= {"node_id", "ed25519_public", "link_public", "onion_public", "bootstrap", "endpoints"}


def test_sigterm_stops_cleanly(start_node):
    node = start_node(*LOOPBACK_ARGS)
    # twistd re-raises the signal after a clean shutdown, so the exit status
    # says "terminated by SIGTERM", which systemd counts as a clean stop.
    assert node.terminate() == -15
    assert "Received SIGTERM, shutting down." in node.text
    assert "node stopping" in node.text
    assert "Server Shut Down." in node.text
    assert "Traceback" not in node.text
    assert not (node.data_dir / "endpoints.json").exists()


def test_hostile_datagrams_are_counted_and_the_node_keeps_answering(start_node):
    node = start_node(*LOOPBACK_ARGS)
    host, port = node.address("stun")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for payload in (b"", b"\x00", b"\xff" * 40, b"\x00\x01\x00\x04!\x12\xa4B" + bytes(12) + b"\x80\x28\x00\x09"):
            sock.sendto(payload, (host, port))
    assert "UDP reflexive addr" in _stunclient(host, port)
    text = node.http("/metrics")[1].decode()
    dropped = sum(metric(text, "zentalk_stun_dropped_total", reason=reason)
                  for reason in ("truncated", "not_stun"))
    assert dropped >= 3  # the empty datagram may not be delivered by every kernel path
    assert "Traceback" not in node.text


def test_default_configuration_serves_the_standard_ports(start_node):
    """No configuration at all: STUN on 3478 (IPv4 and IPv6), metrics on 127.0.0.1:9464."""
    node = start_node()
    assert sorted(node.endpoints()["stun"]) == ["udp:0.0.0.0:3478", "udp:[::]:3478"]
    assert node.endpoints()["metrics"] == ["tcp:127.0.0.1:9464"]
    assert node.endpoints()["link"] == ["tcp:0.0.0.0:7400"]
    assert "UDP reflexive addr: 127.0.0.1" in _stunclient("127.0.0.1", 3478)
    assert node.http("/healthz")[0] == 200


def test_port_in_use_stops_start_naming_the_endpoint(start_node):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        node = start_node("--stun-udp", f"127.0.0.1:{port}", "--metrics-listen", "tcp:0:interface=127.0.0.1",
                          "--set", "link.enabled=false", wait=False)
        code = node.finish()
    assert code != 0
    assert f"cannot listen on udp 127.0.0.1:{port}: Address already in use" in node.text
    assert "Traceback" not in node.text


def test_bad_configuration_stops_before_listening(start_node, tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text("[stun]\nudpp = []\n")
    node = start_node("--config", str(config), wait=False)
    assert node.finish() != 0
    assert node.text.strip().splitlines()[-1] == (
        f"zentalk-relay: {config}: stun.udpp: unknown key; did you mean 'stun.udp'?")
    assert not node.data_dir.exists()  # nothing was created, nothing listened


def test_bad_option_value_stops_start(start_node):
    node = start_node("--stun-udp", "localhost:3478", wait=False)
    assert node.finish() != 0
    assert "--stun-udp: stun.udp: 'localhost' in 'localhost:3478' is not an IP address" in node.text


def test_exposed_key_stops_start(start_node):
    node = start_node(*LOOPBACK_ARGS)
    node.terminate()
    os.chmod(node.data_dir / "keys" / "link.key", 0o640)
    again = start_node(*LOOPBACK_ARGS, wait=False, workdir=node.workdir)
    assert again.finish() != 0
    assert "link.key is readable by others (mode 0640)" in again.text
    assert "Traceback" not in again.text


def test_cli_keygen_info_and_check_config(tmp_path):
    data = tmp_path / "data"
    keygen = cli("keygen", "--data-dir", str(data))
    assert keygen.returncode == 0 and "created ed25519, x25519-link, x25519-onion keys" in keygen.stdout
    again = cli("keygen", "--data-dir", str(data))
    assert "nothing changed" in again.stdout and keygen.stdout.splitlines()[-1] == again.stdout.splitlines()[-1]
    info = cli("info", "--data-dir", str(data))
    assert info.returncode == 0 and "bootstrap" in info.stdout and "ztr1:" in info.stdout
    good = tmp_path / "good.toml"
    good.write_text('[stun]\nudp = ["127.0.0.1:3478"]\n')
    assert cli("check-config", str(good)).stdout == f"{good}: ok\n"
    bad = tmp_path / "bad.toml"
    bad.write_text("[metrics]\nlisten = 5\n")
    checked = cli("check-config", str(bad))
    assert checked.returncode == 1
    assert checked.stderr == f"zentalk-relay: {bad}: metrics.listen: expected a string, got 5\n"
    missing = cli("info", "--data-dir", str(tmp_path / "none"))
    assert missing.returncode == 1 and "run 'zentalk-relay keygen' first" in missing.stderr


def test_twistd_help_lists_the_plugin(tmp_path):
    result = run(program("twistd"), "--help", cwd=tmp_path, env={k: v for k, v in os.environ.items()
                                                                if k != "PYTHONPATH"})
    assert re.search(r"^\s+zentalk-relay\s+Zentalk network node", result.stdout, re.M), result.stdout


def test_wheel_ships_the_plugin_and_no_plugin_cache(tmp_path):
    shutil.copytree(ROOT, tmp_path / "src", ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "dropin.cache", "__pycache__", ".hypothesis", ".build"))
    built = run(program("pip"), "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(tmp_path / "src"),
                timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("zentalk_relay-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/zentalk_relay_plugin.py" in names
    assert not [name for name in names if name.endswith("dropin.cache")]
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert "zentalk_relay/nat/stun.py" in names
