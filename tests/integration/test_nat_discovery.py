"""RFC 5780 through the real node: our `zentalk-relay probe` and coturn's turnutils_natdiscovery."""

from __future__ import annotations

import json
import socket

import pytest

from .conftest import cli, program, run

pytestmark = pytest.mark.integration

ALTERNATE = ("--stun-udp", "127.0.0.1:0", "--metrics-listen", "tcp:0:interface=127.0.0.1", "--set", "link.enabled=false",
             "--set", 'stun.alternate_addresses=["127.0.0.2"]', "--set", "stun.alternate_port=0")


def test_node_binds_four_rfc5780_sockets_and_probe_reads_open_internet(start_node):
    node = start_node(*ALTERNATE)
    endpoints = node.endpoints()["stun"]
    assert len(endpoints) == 4
    hosts = sorted(endpoint.rsplit(":", 2)[1] for endpoint in endpoints)
    assert hosts == ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"]
    _, port = node.address("stun")
    result = cli("probe", "127.0.0.1", "--port", str(port), "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["rfc5780"] is True and found["other_address"][0] == "127.0.0.2"
    assert found["behind_nat"] is False and found["mapped"] == found["local"]
    assert (found["mapping"], found["filtering"], found["nat_type"]) == \
        ("endpoint-independent", "endpoint-independent", "open internet")
    text = cli("probe", "127.0.0.1", "--port", str(port)).stdout
    assert "RFC 5780        yes, other address 127.0.0.2:" in text and "NAT type        open internet" in text


def test_turnutils_natdiscovery_agrees(start_node):
    node = start_node(*ALTERNATE)
    _, port = node.address("stun")
    result = run(program("turnutils_natdiscovery"), "-m", "-f", "-p", str(port), "127.0.0.1", timeout=60)
    output = result.stdout + result.stderr
    assert "NAT with Endpoint Independent Mapping!" in output, output
    assert "NAT with Endpoint Independent Filtering!" in output, output
    assert "Traceback" not in node.text


def test_probe_without_rfc5780_reports_the_mapped_address_only(start_node):
    node = start_node("--stun-udp", "127.0.0.1:0", "--metrics-listen", "tcp:0:interface=127.0.0.1",
                      "--set", "link.enabled=false")
    _, port = node.address("stun")
    found = json.loads(cli("probe", "127.0.0.1", "--port", str(port), "--json").stdout)
    assert found["reachable"] is True and found["rfc5780"] is False and found["mapping"] == "unknown"


def test_probe_of_a_silent_port_gives_up(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as quiet:
        quiet.bind(("127.0.0.1", 0))  # bound, never read: no ICMP, no answer
        port = quiet.getsockname()[1]
        result = cli("probe", "127.0.0.1", "--port", str(port), "--rto", "0.05")
    assert result.returncode == 2 and "no answer" in result.stdout
