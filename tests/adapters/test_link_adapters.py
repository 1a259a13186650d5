"""Link adapters and the hub on a MemoryReactorClock: timers, back-pressure, limits, routing."""

from __future__ import annotations

import hashlib

import pytest
from nacl.signing import SigningKey
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from tests.support.routers import DirectRouter
from zentalk_relay.bootstrap import Bootstrap
from zentalk_relay.client.link import ClientLink, _connection_maker
from zentalk_relay.config import load
from zentalk_relay.identity import load_identity
from zentalk_relay.link.frames import ErrorCode, ReceiptStatus, Role, Send
from zentalk_relay.link.protocol import StreamLinkProtocol
from zentalk_relay.link.service import LinkHub, settings_from
from zentalk_relay.link.session import Authenticated, Carrier, LinkSettings, LinkStats, State
from zentalk_relay.ratelimit import Rate


class Wire:
    """A client adapter and a hub adapter joined by two StringTransports."""

    def __init__(self, reactor, hub: LinkHub, identity, key: SigningKey | None = None, ip: str = "192.0.2.1",
                 settings: LinkSettings | None = None):
        self.reactor = reactor
        self.key = key or SigningKey.generate()
        self.client = ClientLink(reactor)
        boot = Bootstrap(identity.ed25519_public, identity.link_public)
        make = _connection_maker(boot, self.key, Carrier.NOISE_STREAM, Role.CLIENT, settings or LinkSettings())
        self.client_side = StreamLinkProtocol(reactor, self.client, make, tls=False)
        self.client.adapter = self.client_side
        self.server_side = hub.build(Carrier.NOISE_STREAM, IPv4Address("TCP", ip, 40000))
        self.client_transport = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.1", 7400))
        self.server_transport = StringTransport(peerAddress=IPv4Address("TCP", ip, 40000))
        self.server_side.makeConnection(self.server_transport)
        self.client_side.makeConnection(self.client_transport)

    @property
    def node_id(self) -> bytes:
        return hashlib.sha256(bytes(self.key.verify_key)).digest()

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            moved = False
            for transport, receiver in ((self.client_transport, self.server_side),
                                        (self.server_transport, self.client_side)):
                data = transport.value()
                if data:
                    transport.clear()
                    moved = True
                    receiver.dataReceived(data)
            for transport, side in ((self.client_transport, self.client_side),
                                    (self.server_transport, self.server_side)):
                if transport.disconnecting and not transport.value() and side.conn and side.conn.state is not State.CLOSED:
                    side.connectionLost(_clean())
                    moved = True
            if not moved:
                return


def _clean():
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    return Failure(ConnectionDone())


@pytest.fixture
def setup(tmp_path):
    def make(**settings):
        reactor = MemoryReactorClock()
        overrides = [("test", f"link.{key}", value) for key, value in settings.items()]
        config = load(None, [("test", "node.data_dir", str(tmp_path)), *overrides])
        identity, _ = load_identity(tmp_path)
        link_settings = settings_from(config.link)
        hub = LinkHub(reactor, config.link, identity, LinkStats(), link_settings)
        hub.router = DirectRouter(hub)
        return reactor, hub, identity

    return make


def test_link_authenticates_and_arms_one_timer(setup):
    reactor, hub, identity = setup()
    wire = Wire(reactor, hub, identity)
    wire.pump()
    assert wire.client.authenticated.called
    assert list(hub.by_peer) == [wire.node_id]
    # each side holds exactly one timer: its next PING
    assert len(reactor.getDelayedCalls()) == 2
    assert all(30 <= call.getTime() - reactor.seconds() <= 35 for call in reactor.getDelayedCalls())


def test_ping_pong_runs_on_the_clock(setup):
    reactor, hub, identity = setup()
    wire = Wire(reactor, hub, identity)
    wire.pump()
    rtts = []
    hub._rtt_observer = rtts.append  # noqa: SLF001 - observe what the metrics module would
    for _ in range(3):
        reactor.advance(36)
        wire.pump()
    assert rtts and all(rtt == 0 for rtt in rtts)
    assert wire.server_side.conn.state is State.ACTIVE


def test_a_silent_peer_is_dropped_after_three_missed_pongs(setup):
    reactor, hub, identity = setup()
    wire = Wire(reactor, hub, identity)
    wire.pump()
    # the client stops answering: nothing it receives is processed any more
    for _ in range(4):
        reactor.advance(46)
        wire.server_transport.clear()
    assert wire.server_side.conn.close_code is ErrorCode.DEAD_PEER
    assert wire.server_transport.disconnecting


def test_handshake_timeout_closes_a_link_that_never_speaks(setup):
    reactor, hub, identity = setup()
    adapter = hub.build(Carrier.NOISE_STREAM, IPv4Address("TCP", "192.0.2.1", 1))
    transport = StringTransport()
    adapter.makeConnection(transport)
    reactor.advance(9.9)
    assert not transport.disconnecting
    reactor.advance(0.1)
    assert transport.disconnecting
    assert hub.stats.handshakes == {"handshake_timeout": 1}


def test_back_pressure_stops_writes_until_resumed(setup):
    reactor, hub, identity = setup(messages_per_minute=10**6, messages_burst=10**6)
    sender, receiver = Wire(reactor, hub, identity), Wire(reactor, hub, identity, ip="192.0.2.2")
    sender.pump()
    receiver.pump()
    receiver.server_side.pauseProducing()  # the receiver's socket buffer is full
    for index in range(50):
        sender.client.send(receiver.node_id, b"x" * 100, index.to_bytes(16, "big"))
    sender.pump()
    assert receiver.server_transport.value() == b""  # nothing written while paused
    assert receiver.server_side.conn.pending()
    receiver.server_side.resumeProducing()
    assert receiver.server_transport.value() != b""
    receiver.pump()
    assert len(receiver.client._inbox.pending) == 50  # noqa: SLF001


def test_a_busy_recipient_is_refused_and_the_sender_told_to_slow_down(setup):
    reactor, hub, identity = setup(messages_per_minute=10**6, messages_burst=10**6, max_backlog=2)
    sender = Wire(reactor, hub, identity)
    receiver = Wire(reactor, hub, identity, ip="192.0.2.2", settings=LinkSettings(window_initial=4))
    sender.pump()
    receiver.pump()
    receiver.server_side.pauseProducing()
    receipts = [sender.client.send(receiver.node_id, b"x", i.to_bytes(16, "big")) for i in range(8)]
    sender.pump()
    statuses = [r.result.status if r.called else None for r in receipts]
    assert statuses.count(ReceiptStatus.DELIVERED) == 6  # 4 in the receiver's window + 2 in the backlog
    refused = [r.result for r in receipts if r.called and r.result.status == ReceiptStatus.REFUSED]
    assert refused and all(r.code == ErrorCode.RECIPIENT_BUSY for r in refused)


def test_unknown_recipient(setup):
    reactor, hub, identity = setup()
    wire = Wire(reactor, hub, identity)
    wire.pump()
    receipt = wire.client.send(b"\x00" * 32, b"x")
    wire.pump()
    assert (receipt.result.status, receipt.result.code) == (ReceiptStatus.REFUSED, ErrorCode.UNKNOWN_RECIPIENT)


@pytest.mark.parametrize(
    "settings,count,code",
    [
        ({"links_per_ip": 2}, 3, ErrorCode.TOO_MANY_CONNECTIONS_FROM_IP),
        ({"max_links": 2}, 3, ErrorCode.SERVER_FULL),
    ],
)
def test_admission_limits(setup, settings, count, code):
    reactor, hub, identity = setup(**settings)
    wires = [Wire(reactor, hub, identity) for _ in range(count)]
    for wire in wires:
        wire.pump()
    assert [w.client.authenticated.called for w in wires] == [True] * (count - 1) + [True]
    last = wires[-1].client
    assert isinstance(last.authenticated.result.value, Exception)
    last.authenticated.addErrback(lambda f: None)
    assert last.authenticated.result is None or True
    assert hub.refusals == {code.label: 1}


def test_pending_handshake_limit(setup):
    reactor, hub, identity = setup(pending_handshakes=2)
    silent = [hub.build(Carrier.NOISE_STREAM, IPv4Address("TCP", f"192.0.2.{i}", 1)) for i in range(2)]
    for adapter in silent:
        adapter.makeConnection(StringTransport())
    wire = Wire(reactor, hub, identity, ip="192.0.2.9")
    wire.pump()
    failure = []
    wire.client.authenticated.addErrback(failure.append)
    assert failure[0].value.code is ErrorCode.TOO_MANY_PENDING_HANDSHAKES


def test_links_per_peer_limit(setup):
    reactor, hub, identity = setup(links_per_peer=1)
    key = SigningKey.generate()
    first, second = Wire(reactor, hub, identity, key), Wire(reactor, hub, identity, key, ip="192.0.2.3")
    first.pump()
    second.pump()
    assert second.server_side.conn.close_code is ErrorCode.TOO_MANY_LINKS_FOR_PEER
    assert hub.refusals == {"too_many_links_for_peer": 1}
    assert len(hub.by_peer[first.node_id]) == 1


def test_closing_all_links_says_why(setup):
    reactor, hub, identity = setup()
    wire = Wire(reactor, hub, identity)
    wire.pump()
    drained = hub.close_all(ErrorCode.SHUTTING_DOWN, "bye")
    assert not drained.called
    wire.pump()
    assert drained.called
    closed = []
    wire.client.closed.addCallback(closed.append)
    assert closed[0].code is ErrorCode.SHUTTING_DOWN and closed[0].by_peer
    assert not hub.adapters


def test_rate_limit_setting_reaches_links(setup):
    _, hub, _ = setup(messages_per_minute=7, messages_burst=3)
    assert hub.settings.messages == Rate(7, 60.0, 3)


def test_draining_gives_up_after_the_grace_period(setup):
    reactor, hub, identity = setup()
    wire = Wire(reactor, hub, identity)
    wire.pump()
    drained = hub.close_all(ErrorCode.SHUTTING_DOWN, "bye", grace=2.0)
    reactor.advance(1.9)
    assert not drained.called
    reactor.advance(0.1)
    assert drained.called
    assert wire.server_transport.disconnecting


def test_an_idle_link_is_counted_as_idle_and_kept_while_it_answers(setup):
    reactor, hub, identity = setup()
    wire = Wire(reactor, hub, identity)
    wire.pump()
    for _ in range(12):  # 6 minutes in 30-second steps, answering every PING
        reactor.advance(30)
        wire.pump()
    assert hub.link_counts() == {("idle", "client"): 1}
    assert wire.server_side.conn.state is State.ACTIVE


def test_the_client_gives_a_connection_five_seconds():
    from twisted.internet.defer import Deferred

    from zentalk_relay.client.link import connect

    reactor = MemoryReactorClock()
    boot = Bootstrap(b"\x01" * 32, b"\x02" * 32, (("192.0.2.1", 7400),))
    Deferred.fromCoroutine(connect(reactor, boot, SigningKey.generate())).addErrback(lambda failure: None)
    (host, port, factory, timeout, bind) = reactor.tcpClients[0]
    assert (host, port, timeout) == ("192.0.2.1", 7400, 5.0)


class _Mailbox:
    """What the router needs of MailboxWriter: puts that commit when told to."""

    def __init__(self) -> None:
        self.puts: list[tuple[bytes, bytes, bytes]] = []
        self._waiting: list = []

    def put(self, recipient: bytes, message_id: bytes, body: bytes):
        from twisted.internet.defer import Deferred

        self.puts.append((recipient, message_id, body))
        waiting = Deferred()
        self._waiting.append(waiting)
        return waiting

    def commit(self) -> None:
        from zentalk_relay.relay.mailbox import PutResult

        waiting, self._waiting = self._waiting, []
        for deferred in waiting:
            deferred.callback(PutResult.STORED)

    def acknowledge(self, recipient: bytes, message_ids: list[bytes]):
        from twisted.internet.defer import succeed

        return succeed(None)


class _Mesh:
    """No other relays: nothing to forget."""

    def forget(self, adapter) -> None:
        pass


@pytest.fixture
def routed(setup):
    """The hub with the relay's own Router (SEND runs go through handle_sends) and a fake mailbox."""
    from zentalk_relay.relay.service import RelayStats, Router

    def make(**settings):
        reactor, hub, identity = setup(**settings)
        mailbox = _Mailbox()
        hub.router = Router(reactor, hub, mailbox, _Mesh(), None, None, RelayStats())
        return reactor, hub, identity, mailbox

    return make


def _send_together(wire: Wire, recipient: bytes, count: int, start: int = 0) -> list:
    """SENDs queued in one go, so that they leave in one record and reach the relay as one run."""
    from zentalk_relay.link.protocol import batched

    receipts = []
    batched(lambda: receipts.extend(wire.client.send(recipient, b"m%d" % i, i.to_bytes(16, "big"))
                                    for i in range(start, start + count)))
    return receipts


def test_a_run_of_sends_is_delivered_and_each_gets_its_receipt(routed):
    reactor, hub, identity, mailbox = routed(messages_per_minute=10**6, messages_burst=10**6)
    sender, receiver = Wire(reactor, hub, identity), Wire(reactor, hub, identity, ip="192.0.2.2")
    sender.pump()
    receiver.pump()
    receipts = _send_together(sender, receiver.node_id, 30)
    sender.pump()
    receiver.pump()
    assert [r.result.status for r in receipts] == [ReceiptStatus.DELIVERED] * 30
    inbox = receiver.client._inbox.pending  # noqa: SLF001
    assert [(d.message_id, d.body) for d in inbox] == [(i.to_bytes(16, "big"), b"m%d" % i) for i in range(30)]
    assert hub.stats.frames_in["send"] == 30
    assert hub.stats.frames_out["deliver"] == 30 and hub.stats.frames_out["receipt"] == 30
    assert mailbox.puts == []


def test_what_a_busy_recipient_cannot_take_goes_to_its_mailbox(routed):
    reactor, hub, identity, mailbox = routed(messages_per_minute=10**6, messages_burst=10**6, max_backlog=2)
    sender = Wire(reactor, hub, identity)
    receiver = Wire(reactor, hub, identity, ip="192.0.2.2", settings=LinkSettings(window_initial=4))
    sender.pump()
    receiver.pump()
    receiver.server_side.pauseProducing()
    receipts = _send_together(sender, receiver.node_id, 8)
    sender.pump()
    assert [r.result.status for r in receipts[:6]] == [ReceiptStatus.DELIVERED] * 6  # window 4 + backlog 2
    assert not any(r.called for r in receipts[6:])
    assert [put[1] for put in mailbox.puts] == [i.to_bytes(16, "big") for i in (6, 7)]
    mailbox.commit()
    sender.pump()
    assert [r.result.status for r in receipts[6:]] == [ReceiptStatus.STORED] * 2


def test_delivers_not_acknowledged_when_the_link_drops_go_to_the_mailbox(routed):
    reactor, hub, identity, mailbox = routed(messages_per_minute=10**6, messages_burst=10**6)
    sender, receiver = Wire(reactor, hub, identity), Wire(reactor, hub, identity, ip="192.0.2.2")
    sender.pump()
    receiver.pump()
    _send_together(sender, receiver.node_id, 5)
    sender.pump()
    receiver.pump()
    receiver.client.ack([i.to_bytes(16, "big") for i in (0, 1)])  # the client acknowledges two
    receiver.pump()
    receiver.server_side.connectionLost(_clean())
    assert sorted(put[1] for put in mailbox.puts) == [i.to_bytes(16, "big") for i in (2, 3, 4)]
    assert all(put[0] == receiver.node_id for put in mailbox.puts)


def test_sends_to_an_unknown_recipient_are_stored(routed):
    reactor, hub, identity, mailbox = routed(messages_per_minute=10**6, messages_burst=10**6)
    sender = Wire(reactor, hub, identity)
    sender.pump()
    receipts = _send_together(sender, b"\x07" * 32, 3)
    sender.pump()
    mailbox.commit()
    sender.pump()
    assert [r.result.status for r in receipts] == [ReceiptStatus.STORED] * 3
    assert [put[0] for put in mailbox.puts] == [b"\x07" * 32] * 3


class _SocketTransport(StringTransport):
    """A StringTransport whose handle is one end of a socket pair: the adapter may send() on it directly."""

    def __init__(self, sock, **kwargs):
        super().__init__(**kwargs)
        self._sock = sock

    def getHandle(self):
        return self._sock


def test_handshake_writes_go_straight_to_the_socket_then_through_the_transport(setup):
    import socket

    reactor, hub, identity = setup()
    wire = Wire(reactor, hub, identity)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    try:
        # the server side again, on a transport with a socket behind it
        wire.server_side = hub.build(Carrier.NOISE_STREAM, IPv4Address("TCP", "192.0.2.9", 40000))
        wire.server_transport = _SocketTransport(ours, peerAddress=IPv4Address("TCP", "192.0.2.9", 40000))
        wire.server_side.makeConnection(wire.server_transport)
        for _ in range(10):
            data = wire.client_transport.value()
            if data:
                wire.client_transport.clear()
                wire.server_side.dataReceived(data)
            try:
                sent = theirs.recv(65536)
            except BlockingIOError:
                sent = b""
            if sent:
                wire.client_side.dataReceived(sent)
            if wire.client_side.state is State.ACTIVE and not data and not sent:
                break
        assert wire.client_side.state is State.ACTIVE and wire.server_side.state is State.ACTIVE
        assert wire.server_transport.value() == b""  # every handshake write went to the socket
        # once ACTIVE, writes go through the transport (and its back-pressure)
        wire.server_side.conn.send(frames_ping(reactor), reactor.seconds())
        wire.server_side.flush()
        assert wire.server_transport.value() != b""
    finally:
        ours.close()
        theirs.close()


def frames_ping(reactor):
    from zentalk_relay.link.frames import Ping

    return Ping(int(reactor.seconds() * 1000), bytes(8), 1)


def test_a_write_the_socket_does_not_take_whole_goes_to_the_transport(setup):
    reactor, hub, identity = setup()

    import socket as socket_module

    class FullSocket(socket_module.socket):
        def send(self, data, flags=0):
            raise BlockingIOError

    sock = FullSocket()
    sock.setblocking(False)
    try:
        wire = Wire(reactor, hub, identity)
        wire.server_side = hub.build(Carrier.NOISE_STREAM, IPv4Address("TCP", "192.0.2.10", 40000))
        wire.server_transport = _SocketTransport(sock, peerAddress=IPv4Address("TCP", "192.0.2.10", 40000))
        wire.server_side.makeConnection(wire.server_transport)
        wire.pump()
        assert wire.client_side.state is State.ACTIVE  # everything went through the transport instead
    finally:
        sock.close()


def test_a_tcp_listener_gives_accepted_sockets_tcp_nodelay():
    import socket

    from zentalk_relay.link.service import _no_delay_on_listener

    class Port:  # what matters of twisted.internet.tcp.Port
        def __init__(self, sock):
            self.socket = sock

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    assert _no_delay_on_listener(Port(listener)) is True
    client = socket.create_connection(listener.getsockname(), timeout=5)  # the kernel makes its socket now
    try:
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert _no_delay_on_listener(Port(None)) is False  # not a socket (a UNIX endpoint's port, a test's)
    finally:
        client.close()
        listener.close()


class _NoDelayCounting(StringTransport):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.no_delay_calls = 0

    def setTcpNoDelay(self, enabled):
        self.no_delay_calls += 1


@pytest.mark.parametrize("inherited, calls", [(False, 1), (True, 0)])
def test_a_link_sets_tcp_nodelay_unless_its_socket_inherited_it(setup, inherited, calls):
    reactor, hub, identity = setup()
    wire = Wire(reactor, hub, identity)
    wire.server_side = hub.build(Carrier.NOISE_STREAM, IPv4Address("TCP", "192.0.2.11", 40000))
    wire.server_side.no_delay_inherited = inherited
    wire.server_transport = _NoDelayCounting(peerAddress=IPv4Address("TCP", "192.0.2.11", 40000))
    wire.server_side.makeConnection(wire.server_transport)
    wire.pump()
    assert wire.server_side.state is State.ACTIVE
    assert wire.server_transport.no_delay_calls == calls


def test_resumable_sessions_are_kept_as_plain_values_the_collector_does_not_track(setup):
    import gc

    reactor, hub, identity = setup()
    wires = [Wire(reactor, hub, identity, ip=f"192.0.2.{20 + i}") for i in range(3)]
    for wire in wires:
        wire.pump()
    assert len(hub._sessions) == 3
    assert not any(gc.is_tracked(session) for session in hub._sessions.values())
    token = next(iter(hub._sessions))
    resumed = hub._resume(token)
    assert resumed.peer_id == wires[0].node_id and resumed.role is Role.CLIENT and resumed.session_token == token
    assert hub._resume(token) is None  # once


def test_a_resumable_session_keeps_every_field(setup):
    from zentalk_relay.link.service import _pack_session

    reactor, hub, _ = setup()
    for features in ((), ("pex-opt-out",), ("a", "b c", "pex-opt-out")):
        event = Authenticated(bytes(range(32)), Role.RELAY, 0x0301, 0xDEADBEEF, features, b"t" * 32)
        hub._sessions[event.session_token] = _pack_session(reactor.seconds() + 60, event)
        assert hub._resume(event.session_token) == event
    event = Authenticated(bytes(32), Role.CLIENT, 0x0300, 0, (), b"u" * 32)
    hub._sessions[event.session_token] = _pack_session(reactor.seconds() + 60, event)
    reactor.advance(60)
    assert hub._resume(event.session_token) is None  # expired


def test_a_client_close_fires_once_the_transport_is_gone(setup):
    reactor, hub, identity = setup()
    wire = Wire(reactor, hub, identity)
    wire.pump()
    fired = []
    wire.client.close().addCallback(fired.append)
    assert not fired  # the CLOSE (and the last ACKs) are queued, not yet written
    wire.pump()  # written, the relay closes too, the transport goes
    assert fired[0].code is ErrorCode.NORMAL and not fired[0].by_peer
    assert reactor.getDelayedCalls() == []  # the fallback timer went with the transport


def test_a_client_close_drops_a_transport_that_does_not_go(setup):
    from zentalk_relay.client.link import CLOSE_TIMEOUT

    reactor, hub, identity = setup()
    wire = Wire(reactor, hub, identity)
    wire.pump()
    aborted = []

    def abort():
        aborted.append(True)
        wire.client_side.connectionLost(_clean())

    wire.client_transport.abortConnection = abort
    fired = []
    wire.client.close().addCallback(fired.append)
    reactor.advance(CLOSE_TIMEOUT - 0.1)  # the relay never answers: nothing is pumped
    assert not fired and not aborted
    reactor.advance(0.1)
    assert aborted and fired[0].code is ErrorCode.NORMAL


def test_the_replay_memory_refuses_a_seen_key_and_stays_bounded(setup, monkeypatch):
    from zentalk_relay.link import service

    monkeypatch.setattr(service, "REPLAY_MEMORY", 1000)
    reactor, hub, _ = setup()
    assert hub._fresh_handshake(b"k" * 32)
    assert not hub._fresh_handshake(b"k" * 32)  # a replay
    for i in range(5000):
        assert hub._fresh_handshake(i.to_bytes(32, "big"))
        assert len(hub._replays) <= 1000 + service.PRUNE_EVERY
    reactor.advance(service.REPLAY_SECONDS)
    for i in range(service.PRUNE_EVERY):  # a pruning pass within these drops what has had its time
        hub._fresh_handshake((10_000 + i).to_bytes(32, "big"))
    assert len(hub._replays) <= service.PRUNE_EVERY  # only keys added since the clock moved
    assert hub._fresh_handshake(b"k" * 32)  # long forgotten


def test_resumable_sessions_expire_and_stay_bounded(setup, monkeypatch):
    from zentalk_relay.link import service

    monkeypatch.setattr(service, "MAX_SESSIONS", 500)
    reactor, hub, _ = setup()
    ttl = hub.config.session_ttl

    class Adapter:  # what link_authenticated reads of an adapter
        class conn:
            initiator = False

    for i in range(2000):
        event = Authenticated(i.to_bytes(32, "big"), Role.CLIENT, 0x0300, 0, (), i.to_bytes(32, "little"))
        hub.link_authenticated(Adapter(), event)
        hub.by_peer.clear()
        assert len(hub._sessions) <= 500 + service.PRUNE_EVERY
    newest = (1999).to_bytes(32, "little")
    assert hub._resume(newest) is not None
    reactor.advance(ttl)
    assert hub._resume((1998).to_bytes(32, "little")) is None  # expired, though not yet pruned
