"""The onion service with a real tor (Debian's package) that never touches the network.

Every tor here runs with ``DisableNetwork 1``: it creates onion services and
answers its control port, but makes no connection, so the tests need no
Internet. That the service exists is checked from outside the node through
tor's own control port: a second ``ADD_ONION`` with the node's key is
refused with "550 Onion address collision" while the node runs.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import socket
import stat
import subprocess
from functools import partial
from pathlib import Path

import pytest

from zentalk_relay.dht.records import record_target
from zentalk_relay.tor import find_tor, stored_onion_address

from .conftest import LOOPBACK_ARGS, NodeProcess, cli, wait_until

pytestmark = pytest.mark.integration

TOR = find_tor("tor")
if TOR is None and not os.environ.get("CI"):
    pytestmark = [pytestmark, pytest.mark.skip(reason="tor is not installed (scripts/test installs it)")]
BOUND = 30.0


def test_tor_is_installed():
    """Under CI (``CI`` set) nothing here is skipped: a missing tor fails, naming the fix."""
    assert TOR is not None, "tor is not installed: scripts/test installs it (apt-get install tor)"


wait_until = partial(wait_until, timeout=BOUND, interval=0.05)


class Control:
    """A controller of our own on a tor's control port: cookie or password authentication."""

    def __init__(self, port: int, *, cookie: bytes | None = None, password: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rwb")
        secret = cookie.hex() if cookie is not None else '"' + (password or "") + '"'
        assert self.command(f"AUTHENTICATE {secret}") == ["250 OK"]

    def command(self, line: str) -> list[str]:
        self.file.write(line.encode() + b"\r\n")
        self.file.flush()
        reply = []
        while True:
            text = self.file.readline().decode().rstrip("\r\n")
            assert text, f"tor closed the control connection after {line!r}"
            reply.append(text)
            if len(text) >= 4 and text[3] == " ":
                return reply

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _key_argument(data_dir: Path) -> str:
    """The node's onion key as ADD_ONION takes it."""
    fields = (data_dir / "keys" / "tor_onion.key").read_text().split()
    base64.b64decode(fields[3], validate=True)
    return "ED25519-V3:" + fields[3]


def _collides(control: Control, data_dir: Path) -> bool:
    """True while some controller holds the node's service; otherwise adds it (and removes it again)."""
    reply = control.command(f"ADD_ONION {_key_argument(data_dir)} Port=7400,127.0.0.1:9")
    if reply[-1].startswith("550") and "collision" in reply[-1]:
        return True
    assert reply[-1] == "250 OK", reply
    service_id = reply[0].partition("=")[2]
    assert control.command(f"DEL_ONION {service_id}") == ["250 OK"]
    return False


def _launched_tor_control(data_dir: Path) -> Control:
    """Our own connection to the tor the node launched (its port file and cookie are in <data_dir>/tor)."""
    port = int((data_dir / "tor" / "control.port").read_text().strip().rpartition(":")[2])
    return Control(port, cookie=(data_dir / "tor" / "control_auth_cookie").read_bytes())


def _dht_record(node) -> dict:
    info = json.loads(cli("info", "--json", "--data-dir", str(node.data_dir)).stdout)
    target = record_target(bytes.fromhex(info["ed25519_public"])).hex()
    _, port = node.address("dht")
    got = cli("dht", "get", target, "--salt", "zentalk-relay", "--bootstrap", f"127.0.0.1:{port}",
              "--bind", "127.0.0.1:0", "--timeout", "10", "--json")
    if got.returncode != 0:
        return {}
    return ast.literal_eval(json.loads(got.stdout)["value"])


def test_a_launched_tor_publishes_the_link_listener_at_a_stable_address(start_node, tmp_path):
    node = start_node(*LOOPBACK_ARGS, "--tor", "--set", "tor.disable_network=true")
    status = node.status()
    onion = status["tor"]["onion_service"]
    assert status["tor"]["published"] is True and status["tor"]["mode"] == "launch"
    assert onion.endswith(".onion:7400")
    assert node.endpoints()["tor"] == [f"onion:{onion}"]
    key = node.data_dir / "keys" / "tor_onion.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((node.data_dir / "tor").stat().st_mode) == 0o700
    # zentalk-relay info derives the address from the key file alone
    info = json.loads(cli("info", "--json", "--data-dir", str(node.data_dir)).stdout)
    assert info["onion_service"] == onion
    # tor itself holds the service: a second controller cannot add the same key
    control = _launched_tor_control(node.data_dir)
    try:
        assert _collides(control, node.data_dir)
    finally:
        control.close()
    # the DHT record carries it as "o"
    record = wait_until(lambda: _dht_record(node).get(b"o"), "the relay record has an onion address")
    assert record == onion.encode()

    assert node.terminate() == -15
    assert "Traceback" not in node.text
    assert not (node.data_dir / "tor" / "control.port").exists()  # the launched tor went with the node

    again = start_node(*LOOPBACK_ARGS, "--tor", "--set", "tor.disable_network=true", workdir=node.workdir)
    assert again.status()["tor"]["onion_service"] == onion
    assert "created a new tor-onion key" not in again.text
    control = _launched_tor_control(again.data_dir)
    try:
        assert _collides(control, again.data_dir)
    finally:
        control.close()


PASSWORD = "correct horse"


@pytest.fixture(params=["cookie", "password"])
def running_tor(request, tmp_path):
    """A tor started by the test, as a system tor would be, with cookie or password authentication only."""
    directory = tmp_path / "system-tor"
    directory.mkdir(mode=0o700)
    if request.param == "cookie":
        auth = ["CookieAuthentication", "1"]
    else:
        hashed = subprocess.run([TOR, "--hash-password", PASSWORD, "--quiet"], capture_output=True, text=True,
                                timeout=30).stdout.strip().splitlines()[-1]
        auth = ["CookieAuthentication", "0", "HashedControlPassword", hashed]
    process = subprocess.Popen(
        [TOR, "-f", "/dev/null/none", "--ignore-missing-torrc", "--defaults-torrc", "/dev/null/none",
         "DataDirectory", str(directory), "ControlPort", "auto", "ControlPortWriteToFile",
         str(directory / "control.port"), *auth, "DisableNetwork", "1", "SocksPort", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (directory / "control.port").exists(), "tor opens its control port")
        port = int((directory / "control.port").read_text().strip().rpartition(":")[2])
        if request.param == "cookie":
            yield request.param, port, lambda: Control(port, cookie=(directory / "control_auth_cookie").read_bytes())
        else:
            yield request.param, port, lambda: Control(port, password=PASSWORD)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_running_tor_is_used_through_its_control_port_and_keeps_nothing(start_node, tmp_path, running_tor):
    auth, port, controller = running_tor
    args = [*LOOPBACK_ARGS, "--tor", "--set", f"tor.control=tcp:127.0.0.1:{port}"]
    if auth == "password":
        secret = tmp_path / "control.password"
        secret.write_text(PASSWORD + "\n")
        os.chmod(secret, 0o600)
        args += ["--set", f"tor.control_password_file={secret}"]
    node = start_node(*args)
    status = node.status()
    assert status["tor"]["published"] is True and status["tor"]["mode"] == "connect"
    assert status["tor"]["onion_service"] == f"{stored_onion_address(node.data_dir)}:7400"
    control = controller()
    try:
        assert _collides(control, node.data_dir)
        assert node.terminate() == -15
        # not detached: the service left with the node's control connection, tor itself runs on
        assert not _collides(control, node.data_dir)
    finally:
        control.close()


def test_a_refused_control_port_stops_start_with_one_line(start_node):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    node = start_node(*LOOPBACK_ARGS, "--tor", "--set", f"tor.control=tcp:127.0.0.1:{port}", wait=False)
    assert node.finish() == 1
    line = f"zentalk-relay: tor: cannot connect to the control port tcp:127.0.0.1:{port}: Connection refused"
    assert node.text.rstrip().endswith(line)
    assert not NodeProcess.READY.search(node.text)
    assert not (node.data_dir / "endpoints.json").exists()
    assert "Traceback" not in node.text


def test_a_missing_tor_program_stops_start_with_one_line(start_node):
    node = start_node(*LOOPBACK_ARGS, "--tor", "--set", "tor.binary=/nonexistent/tor", wait=False)
    assert node.finish() == 1
    assert node.text.rstrip().endswith("zentalk-relay: tor: cannot launch '/nonexistent/tor': no such program; "
                                       "install tor (apt-get install tor), set tor.binary, or set tor.control to "
                                       "use a running tor")
    assert "Traceback" not in node.text
