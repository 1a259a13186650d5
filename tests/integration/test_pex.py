"""Peer exchange: eight relays that each know one other come to know them all."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time

import pytest

from zentalk_relay.bootstrap import Bootstrap

from .conftest import cli, metric

pytestmark = pytest.mark.integration
NODES = 8
OPTED_OUT = 3
BOUND = 90.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def book(node) -> dict[str, str]:
    """node id (hex) -> state, read from the node's peer book on disk."""
    path = node.data_dir / "peers.sqlite3"
    if not path.exists():
        return {}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT node_id, verified_since, failures FROM peers").fetchall()
    return {bytes(r[0]).hex(): "verified" if r[1] is not None and not r[2] else "other" for r in rows}


def test_eight_relays_learn_each_other_through_pex(start_node, tmp_path):
    infos, ports = [], []
    for index in range(NODES):
        data = tmp_path / f"relay-{index}" / "data"
        assert cli("keygen", "--data-dir", str(data)).returncode == 0
        infos.append(json.loads(cli("info", "--json", "--data-dir", str(data)).stdout))
        ports.append(free_port())
    # a peer nobody can verify: made-up keys at an address where nothing listens
    bogus = Bootstrap(os.urandom(32), os.urandom(32), (("127.0.0.1", free_port()),))
    bogus_id = hashlib.sha256(bogus.ed25519_public).digest().hex()
    nodes = []
    for index in range(NODES):
        following = (index + 1) % NODES  # a ring: each knows only the next
        peers = [f'{infos[following]["bootstrap"]}@127.0.0.1:{ports[following]}']
        if index == 0:
            peers.append(str(bogus))
        args = ["--stun-udp", "127.0.0.1:0", "--metrics-listen", "tcp:0:interface=127.0.0.1",
                "--set", f'link.tcp=["tcp:{ports[index]}:interface=127.0.0.1"]',
                "--set", "mesh.peers=" + json.dumps(peers),
                "--set", "pex.min_uptime=0", "--set", "pex.interval=0.5", "--set", "pex.dials_per_minute=600",
                "--set", "pex.allow_private_addresses=true", "--set", "link.pex_per_minute=600",
                "--set", "link.pex_burst=10", "--set", "link.links_per_ip=100"]
        if index == OPTED_OUT:
            args += ["--set", "pex.opt_out=true"]
        nodes.append(start_node(*args, workdir=tmp_path / f"relay-{index}"))

    ids = [info["node_id"] for info in infos]
    shared_ids = {ids[i] for i in range(NODES) if i != OPTED_OUT}

    def converged() -> bool:
        for index, node in enumerate(nodes):
            known = {node_id for node_id, state in book(node).items() if state == "verified"}
            if not (shared_ids - {ids[index]}) <= known:
                return False
        return True

    deadline = time.monotonic() + BOUND
    while not converged():
        assert time.monotonic() < deadline, {i: len(book(n)) for i, n in enumerate(nodes)}
        _pause()

    for index, node in enumerate(nodes):
        known = book(node)
        # only the node that was configured with it knows the opted-out relay
        assert (ids[OPTED_OUT] in known) == (index == (OPTED_OUT - 1) % NODES)
        # nobody learned the peer that was never verified, except the node configured with it
        assert (bogus_id in known) == (index == 0)
    text = nodes[1].http("/metrics")[1].decode()
    assert metric(text, "zentalk_pex_verified_total") >= len(shared_ids) - 2
    assert metric(text, "zentalk_pex_peers", state="verified") >= len(shared_ids) - 1

    # the peer book survives a restart
    before = book(nodes[5])
    nodes[5].terminate()
    again = start_node(*nodes[5].args, workdir=nodes[5].workdir)
    assert book(again) == before
    assert f"'verified': {sum(1 for s in before.values() if s == 'verified')}" in again.text


def _pause() -> None:
    """Wait a little for the nodes to talk; bounded by the caller's deadline."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sleeper:
        sleeper.settimeout(0.25)
        try:
            sleeper.recv(1)
        except socket.timeout:
            pass
