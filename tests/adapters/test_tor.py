"""The tor service inside the node, against a fake control port on a MemoryReactorClock.

The fake answers txtorcon's commands as tor 0.4.9 does (the replies were read
off a real tor); time moves only by ``clock.advance``. The real tor is in
tests/integration/test_tor.py.
"""

import base64
import json
import os
import stat

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from zentalk_relay.config import load
from zentalk_relay.dht.records import RelayRecord
from zentalk_relay.node import ENDPOINTS_FILE, StartupError, build_node
from zentalk_relay.relay.service import Dialable
from zentalk_relay.tor import onion_address, public_key_from_blob, save_onion_key

# a key and the ServiceID tor 0.4.9.11 gave it (see tests/unit/test_tor.py)
TOR_BLOB = base64.b64decode(
    "QIrRvK/9ajr/KHPwgNFqNhXmP9hNDYrMl8VDKr+/DHHkZuba6DnyEXkFcgp0370hMLSvp0kNNdWv+3TCUR96vw==")
TOR_SERVICE_ID = "r467g2fzogzjxgspzcoosir3zk7dznwwohqcjchbss6cltmrreh3o2ad"
OTHER_ADDRESS = "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenl5sid.onion"
CONTROL = "tcp:127.0.0.1:9051"


class FakeControlPort:
    """The tor end of the node's control connections."""

    def __init__(self, memory, *, auth="NULL", accept_password=True, service_id=None, silent=False):
        self.memory = memory
        self.auth = auth
        self.accept_password = accept_password
        self.service_id = service_id  # answer ADD_ONION with this instead of the key's own
        self.silent = silent
        self.commands: list[str] = []
        self.onions: list[str] = []
        self.protocol = None
        self.transport = None

    def accept(self):
        """The node's newest connection attempt reaches the control port."""
        host, port, factory = self.memory.tcpClients[-1][:3]
        assert (host, port) == ("127.0.0.1", 9051)
        self.protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.pump()

    def pump(self):
        while self.transport.value():
            data = self.transport.value().decode()
            self.transport.clear()
            for line in data.split("\r\n"):
                if line:
                    self.commands.append(line)
                    reply = None if self.silent else self.answer(line)
                    if reply is not None:
                        self.protocol.dataReceived(reply.encode())

    def answer(self, line: str) -> str:
        verb, _, rest = line.partition(" ")
        if line == "PROTOCOLINFO 1":
            return f'250-PROTOCOLINFO 1\r\n250-AUTH METHODS={self.auth}\r\n250-VERSION Tor="0.4.9.11"\r\n250 OK\r\n'
        if verb == "AUTHENTICATE":
            if self.accept_password:
                return "250 OK\r\n"
            return "515 Authentication failed: Password did not match HashedControlPassword value from " \
                   "configuration\r\n"
        if verb == "GETINFO":
            values = {"signal/names": "RELOAD SHUTDOWN", "version": "0.4.9.11", "events/names": "CIRC STREAM HS_DESC",
                      "onions/current": " ".join(self.onions), "net/listeners/socks": '"127.0.0.1:9050"'}
            return f"250-{rest}={values[rest]}\r\n250 OK\r\n"
        if verb == "ADD_ONION":
            key = rest.split()[0]
            if key == "NEW:ED25519-V3":
                private = f"250-PrivateKey=ED25519-V3:{base64.b64encode(TOR_BLOB).decode()}\r\n"
                service_id = TOR_SERVICE_ID
            else:
                blob = base64.b64decode(key.removeprefix("ED25519-V3:"))
                service_id, private = onion_address(public_key_from_blob(blob)).removesuffix(".onion"), ""
            service_id = (self.service_id or service_id + ".onion").removesuffix(".onion")
            self.onions.append(service_id)
            return f"250-ServiceID={service_id}\r\n{private}250 OK\r\n"
        return "250 OK\r\n"

    def drop(self):
        self.protocol.connectionLost(Failure(ConnectionDone()))


def _config(tmp_path, *extra):
    return load(None, [
        ("test", "node.data_dir", str(tmp_path)),
        ("test", "stun.udp", ["127.0.0.1:0"]),
        ("test", "metrics.listen", "tcp:9464:interface=127.0.0.1"),
        ("test", "link.tcp", ["tcp:7400:interface=127.0.0.1"]),
        ("test", "dht.udp", ["127.0.0.1:0"]),
        ("--tor", "tor.enabled", True),
        ("test", "tor.control", CONTROL),
        *extra,
    ])


@pytest.fixture
def start(tmp_path):
    """Start a node on a memory reactor; every node is stopped afterwards (its mailbox thread too)."""
    nodes = []

    def start_node(*extra):
        memory = MemoryReactorClock()
        node = build_node(memory, _config(tmp_path, *extra))
        nodes.append(node)
        node.privilegedStartService()
        node.startService()
        memory.run()  # fires the callWhenRunning hooks and returns
        stops = []
        memory.stop = lambda: stops.append(True)  # what a failed start asks of the real reactor
        return memory, node, stops

    yield start_node
    for node in nodes:
        if node.running:
            node.stopService()


@pytest.fixture
def started(start):
    return start()


def test_ready_waits_for_the_onion_service_and_status_shows_it(started, tmp_path):
    memory, node, stops = started
    assert not (tmp_path / ENDPOINTS_FILE).exists()  # not READY while tor has not answered
    tor = FakeControlPort(memory)
    tor.accept()
    assert "ADD_ONION NEW:ED25519-V3 Port=7400,127.0.0.1:7400" in tor.commands
    address = f"{TOR_SERVICE_ID}.onion:7400"
    written = json.loads((tmp_path / ENDPOINTS_FILE).read_text())
    assert written["services"]["tor"] == [f"onion:{address}"]
    assert node.status()["tor"] == {"onion_service": address, "published": True, "mode": "connect", "socks": True}
    key = tmp_path / "keys" / "tor_onion.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stops == []


def test_the_saved_key_is_handed_back_so_the_address_stays(start, tmp_path):
    save_onion_key(tmp_path, TOR_BLOB)
    memory, node, _ = start()
    tor = FakeControlPort(memory)
    tor.accept()
    blob = base64.b64encode(TOR_BLOB).decode()
    assert f"ADD_ONION ED25519-V3:{blob} Port=7400,127.0.0.1:7400" in tor.commands
    assert not any("NEW:" in command or "Detach" in command for command in tor.commands)
    assert node.status()["tor"]["onion_service"] == f"{TOR_SERVICE_ID}.onion:7400"


def test_a_silent_tor_fails_start_after_the_timeout(started, tmp_path):
    memory, node, stops = started
    tor = FakeControlPort(memory, silent=True)
    tor.accept()
    memory.advance(59.9)
    assert node.startup_failure is None
    memory.advance(0.2)
    assert node.startup_failure == ("tor: no onion service within tor.timeout (60 s) while using the control port "
                                    "tcp:127.0.0.1:9051; raise tor.timeout or check tor")
    assert stops == [True]
    assert not (tmp_path / ENDPOINTS_FILE).exists()


def test_a_refused_control_port_fails_start_with_one_line(started):
    memory, node, stops = started
    _, _, factory = memory.tcpClients[-1][:3]
    factory.clientConnectionFailed(memory.connectors[-1], Failure(ConnectionRefusedError("111: Connection refused")))
    assert node.startup_failure == "tor: cannot connect to the control port tcp:127.0.0.1:9051: Connection refused"
    assert stops == [True]


def test_a_wrong_password_fails_start(start, tmp_path):
    secret = tmp_path / "control.password"
    secret.write_text("secret\n")
    os.chmod(secret, 0o600)
    memory, node, stops = start(("test", "tor.control_password_file", str(secret)))
    tor = FakeControlPort(memory, auth="HASHEDPASSWORD", accept_password=False)
    tor.accept()
    assert "AUTHENTICATE " + b"secret".hex() in tor.commands
    assert node.startup_failure.startswith("tor: the control port tcp:127.0.0.1:9051 refused authentication: "
                                           "515 Authentication failed")
    assert stops == [True]


def test_a_password_file_others_can_read_stops_start(tmp_path):
    secret = tmp_path / "control.password"
    secret.write_text("secret\n")
    os.chmod(secret, 0o644)
    with pytest.raises(StartupError, match=r"zentalk-relay: tor: tor.control_password_file .* is readable by others"):
        build_node(MemoryReactorClock(), _config(tmp_path, ("test", "tor.control_password_file", str(secret))))


def test_an_address_that_does_not_match_the_key_fails_start(start, tmp_path):
    save_onion_key(tmp_path, TOR_BLOB)
    memory, node, stops = start()
    FakeControlPort(memory, service_id=OTHER_ADDRESS).accept()
    assert node.startup_failure == (f"tor: published {OTHER_ADDRESS}, but {tmp_path}/keys/tor_onion.key gives "
                                    f"{TOR_SERVICE_ID}.onion")


def test_a_lost_control_connection_is_reopened_with_the_same_key(started):
    memory, node, stops = started
    first = FakeControlPort(memory)
    first.accept()
    tor = node.getServiceNamed("tor")
    connections = len(memory.tcpClients)
    first.drop()
    assert tor.published is False and tor.endpoints == []
    assert node.status()["tor"]["published"] is False
    assert len(memory.tcpClients) == connections + 1  # at once
    _, _, factory = memory.tcpClients[-1][:3]
    factory.clientConnectionFailed(memory.connectors[-1], Failure(ConnectionRefusedError("111: Connection refused")))
    memory.advance(0.9)
    assert len(memory.tcpClients) == connections + 1
    memory.advance(0.1)  # then with backoff: 1 s, 2 s, ... 30 s
    assert len(memory.tcpClients) == connections + 2
    second = FakeControlPort(memory)
    second.accept()
    assert any(command.startswith("ADD_ONION ED25519-V3:") for command in second.commands)
    assert tor.published and tor.onion_service == f"{TOR_SERVICE_ID}.onion:7400"
    assert node.startup_failure is None and stops == []


def test_the_mesh_dials_onion_relays_through_tors_socks_port(started):
    memory, node, _ = started
    FakeControlPort(memory).accept()
    mesh = node.getServiceNamed("link").hub.router.mesh
    node_id = b"\x01" * 32
    mesh.directory[node_id] = Dialable(b"\x02" * 32, OTHER_ADDRESS, 7400)
    assert mesh.connect(node_id)
    assert memory.tcpClients[-1][:2] == ("127.0.0.1", 9050)  # tor's SOCKS port, not the onion address


def test_onion_only_relays_from_the_dht_join_the_mesh_directory(started):
    memory, node, _ = started
    FakeControlPort(memory).accept()
    found = RelayRecord(b"\x03" * 32, b"\x04" * 32, b"\x05" * 32, (), onion_service=f"{OTHER_ADDRESS}:7400")
    node.getServiceNamed("dht").on_relay(found)
    mesh = node.getServiceNamed("link").hub.router.mesh
    assert mesh.directory[found.node_id] == Dialable(b"\x04" * 32, OTHER_ADDRESS, 7400)


def test_without_tor_an_onion_relay_is_not_dialled(tmp_path):
    memory = MemoryReactorClock()
    node = build_node(memory, _config(tmp_path, ("test", "tor.enabled", False)))
    mesh = node.getServiceNamed("link").hub.router.mesh
    node_id = b"\x01" * 32
    mesh.directory[node_id] = Dialable(b"\x02" * 32, OTHER_ADDRESS, 7400)
    assert mesh.connect(node_id) is False
    assert memory.tcpClients == []
