"""The fuzzing properties of the relay link (fuzz/fuzz_link.py), driven by hypothesis.

The checks live in the harness, which imports without atheris; here hypothesis
generates structured cases for them, so that the same properties run in the
unit tests, fast and bounded. At the end: the findings of the fuzzing, as
regression tests once fixed, and as ``xfail(strict=True)`` while they are in
the harness's ``KNOWN_FINDINGS`` (such a test fails, XPASS, once its bug is
fixed: the cue to drop the entry and the marker).
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from zentalk_relay.link import frames
from zentalk_relay.link.frames import ErrorCode, Role
from zentalk_relay.link.session import (
    Authenticated,
    Carrier,
    Closing,
    LinkConnection,
    LinkSettings,
    Received,
    State,
)

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fuzz" / "corpus" / "link"


def _load_harness():
    spec = importlib.util.spec_from_file_location("fuzz_link", ROOT / "fuzz" / "fuzz_link.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


F = _load_harness()

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SESSIONS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.data_too_large])

# -- strategies: every frame dataclass, every field within its limits ------------------

u8, u16 = st.integers(0, 0xFF), st.integers(0, 0xFFFF)
u32, u64 = st.integers(0, 0xFFFFFFFF), st.integers(0, 2**64 - 1)


def exactly(size: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=size, max_size=size)


def reason() -> st.SearchStrategy[str]:
    """UTF-8 text of at most MAX_REASON bytes (surrogates cannot be encoded)."""
    text = st.text(st.characters(exclude_categories=("Cs",)), max_size=frames.MAX_REASON)
    return text.filter(lambda s: len(s.encode("utf-8")) <= frames.MAX_REASON)


feature = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
                  max_size=frames.MAX_FEATURE_NAME)
features = st.lists(feature, max_size=frames.MAX_FEATURES).map(tuple)
body = st.binary(max_size=300)
host = st.one_of(
    st.just(""),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: str(ipaddress.IPv6Address(ip.packed))),
)


def _address(build):
    """A host and its port: no address has port 0 (the canonical encoding)."""
    return host.flatmap(lambda h: (st.just(0) if not h else u16).map(lambda p: build(h, p)))


FRAME_STRATEGIES: dict[type, st.SearchStrategy] = {
    frames.Hello: st.builds(frames.Hello, st.sampled_from(Role),
                            st.lists(u16, min_size=1, max_size=frames.MAX_VERSIONS).map(tuple), u32, features),
    frames.HelloAck: st.builds(frames.HelloAck, st.sampled_from(Role), u16, u32, features),
    frames.AuthChallenge: st.builds(frames.AuthChallenge, exactly(32)),
    frames.AuthResponse: st.builds(frames.AuthResponse, exactly(32), u64, exactly(64)),
    frames.AuthOk: st.builds(frames.AuthOk, exactly(32)),
    frames.Ping: st.builds(frames.Ping, u64, exactly(8), u32),
    frames.Pong: st.builds(frames.Pong, u64, exactly(8), u32, u64),
    frames.Close: st.builds(frames.Close, u16, reason()),
    frames.Error: st.builds(frames.Error, u16, reason()),
    frames.FlowControl: st.builds(frames.FlowControl, u32, u32, u8, u32),
    frames.WindowUpdate: st.builds(frames.WindowUpdate, u32, u32),
    frames.Pex: st.builds(frames.Pex, u8, body),
    frames.Send: st.builds(frames.Send, exactly(16), exactly(32), body),
    frames.Deliver: st.builds(frames.Deliver, exactly(16), body),
    frames.Receipt: st.builds(frames.Receipt, exactly(16), u8, u16),
}
# Frames added to the protocol later: here when the package has them.
_LATER = {
    "Resume": lambda cls: st.builds(cls, exactly(32), exactly(32)),
    "Resumed": lambda cls: st.builds(cls, st.booleans(), exactly(32)),
    "SyncRequest": lambda cls: st.builds(cls, u64, u16),
    "SyncResponse": lambda cls: st.builds(cls, st.booleans(), u64, st.lists(
        st.builds(frames.MailboxMessage, exactly(16), u64, st.binary(max_size=64)), max_size=8).map(tuple)),
    "Ack": lambda cls: st.builds(cls, st.lists(exactly(16), max_size=40).map(tuple)),
    "Onion": lambda cls: st.builds(cls, body),
    "PunchRequest": lambda cls: _address(lambda h, p: (h, p)).flatmap(
        lambda hp: st.builds(cls, exactly(32), st.just(hp[0]), st.just(hp[1]))),
    "Padding": lambda cls: st.builds(cls, body),
    "Punch": lambda cls: _address(lambda h, p: (h, p)).flatmap(
        lambda hp: st.builds(cls, exactly(32), st.just(hp[0]), st.just(hp[1]), u32, u32)),
}
for _name, _strategy in _LATER.items():
    if hasattr(frames, _name):
        FRAME_STRATEGIES[getattr(frames, _name)] = _strategy(getattr(frames, _name))

any_frame = st.one_of(*FRAME_STRATEGIES.values())
#: Frame bytes as a peer might send them: valid, cut short, or anything.
frame_bytes = st.one_of(
    any_frame.map(frames.encode),
    st.tuples(any_frame.map(frames.encode), st.integers(0, 40)).map(lambda t: t[0][: max(0, len(t[0]) - t[1])]),
    st.binary(max_size=64),
)


def test_every_frame_type_has_a_strategy():
    missing = [cls.__name__ for cls in F.FRAME_TYPES if cls not in FRAME_STRATEGIES]
    assert not missing, f"new frame types without a hypothesis strategy here: {missing}"


# -- property 1: the codec ------------------------------------------------------------


@FAST
@given(any_frame)
def test_valid_frames_round_trip(frame):
    encoded = F.check_roundtrip(frame)
    assert frames.decode(encoded) == frame and frames.encode(frames.decode(encoded)) == encoded


@FAST
@given(st.lists(any_frame, min_size=1, max_size=6))
def test_records_of_valid_frames_round_trip(batch):
    encoded = [frames.encode(f) for f in batch]
    F.check_record_roundtrip(encoded)
    assert [frames.decode(raw) for raw in frames.split_record(frames.pack_record(encoded))] == batch


@FAST
@given(frame_bytes)
def test_decode_raises_only_frame_error_and_reencodes_exactly(data):
    F.check_decode(data)  # known findings tolerated, see the xfail tests


@FAST
@given(st.one_of(st.binary(max_size=200),
                 st.lists(frame_bytes, max_size=5).map(lambda fs: frames.pack_record([f[:200] for f in fs]))))
def test_split_record_raises_only_frame_error_and_lengths_add_up(plaintext):
    F.check_split(plaintext)


@FAST
@given(st.binary(max_size=300))
def test_frames_target(payload):
    F.check_frames_input(payload)


# -- property 2: a Noise responder fed anything, in any chunks --------------------------

MSG1 = F.noise.frame(F.CANONICAL_MSG1)
stream_start = st.one_of(st.just(MSG1), st.just(MSG1[:30]), st.just(b""), st.binary(max_size=80))


@st.composite
def handshake_cases(draw):
    stream = draw(stream_start) + draw(st.binary(max_size=120))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    return F.HandshakeCase(
        carrier=draw(st.sampled_from([F.HS_NOISE_STREAM, F.HS_NOISE_MESSAGES, F.HS_TLS_EARLY])),
        seed=draw(exactly(4)), chunks=chunks, amplify=draw(st.booleans()), one_call=draw(st.booleans()),
        late_timer=draw(st.booleans()), replayed=draw(st.booleans()), refused=draw(st.booleans()))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(handshake_cases())
def test_responder_before_its_channel_never_raises_and_stays_bounded(case):
    link = F.run_handshake(case)
    assert link.closing is not None or link.conn.state is State.HANDSHAKE
    assert F.parse_handshake(F.encode_handshake(case)) == case


@pytest.mark.parametrize("one_call", [False, True])
def test_a_megabyte_of_partial_record_closes_rather_than_buffers(one_call):
    # A genuine first message, then a record that claims 65535 bytes, fed until 1 MiB.
    case = F.HandshakeCase(chunks=[MSG1, b"\xff\xff" + bytes(1022)], amplify=True, one_call=one_call)
    link = F.run_handshake(case)
    assert link.closing is not None and link.closing.code in F.HANDSHAKE_CODES
    if not one_call:  # closed as soon as the record was whole, long before 1 MiB
        assert link.conn.stats.bytes_in <= len(MSG1) + 2 + 65535 + 1024


def test_an_oversized_websocket_message_is_frame_too_large():
    link = F.run_handshake(F.HandshakeCase(carrier=F.HS_NOISE_MESSAGES, chunks=[F.CANONICAL_MSG1, b"x"],
                                           amplify=True))
    assert link.closing.code is ErrorCode.FRAME_TOO_LARGE


# -- properties 3 and 4: frames behind genuine Noise keys, and TLS plaintext records ------

split = st.integers(0, 400)
ops = st.one_of(
    st.builds(F.FramesOp, st.lists(frame_bytes, min_size=1, max_size=8).map(tuple), split),
    st.builds(F.PlaintextOp, st.binary(max_size=120), split),
    st.builds(F.ValidOp, st.lists(any_frame, min_size=1, max_size=4).map(tuple), split),
    st.builds(F.PumpOp, st.booleans()),
    st.builds(F.TimerOp, st.integers(0, 70_000).map(lambda t: t * 10)),
    st.builds(F.WireOp, st.binary(max_size=60)),
    st.builds(F.BurstOp, frame_bytes, st.integers(0, 1100)),
    st.builds(F.StepOp, st.integers(0, 7), u8),
)


@st.composite
def session_cases(draw, tls: bool):
    return F.SessionCase(tls=tls, websocket=not tls and draw(st.booleans()), seed=draw(exactly(4)),
                         active=draw(st.booleans()), ops=draw(st.lists(ops, max_size=10)),
                         resumable=draw(st.booleans()), clients_only=draw(st.booleans()),
                         small_window=draw(st.booleans()))


@SESSIONS
@given(session_cases(tls=False))
def test_noise_responder_after_the_handshake(case):
    F.run_session(case)


@SESSIONS
@given(session_cases(tls=True))
def test_tls_responder_plaintext_records(case):
    F.run_session(case)


@FAST
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=6))
def test_tls_raw_bytes_reach_the_frame_parser(chunks):
    run = F.run_session(F.SessionCase(tls=True, active=True, ops=[F.WireOp(c) for c in chunks] + [F.PumpOp()]))
    closing = run.link.closing
    assert closing is None or isinstance(closing.code, ErrorCode)


HANDSHAKE_FRAMES = [
    frames.Hello(Role.CLIENT, (frames.PROTOCOL_VERSION,), 0),
    frames.HelloAck(Role.RELAY, frames.PROTOCOL_VERSION, 0),
    frames.AuthChallenge(bytes(32)),
    frames.AuthResponse(bytes(32), 0, bytes(64)),
    frames.AuthOk(bytes(32)),
] + [getattr(frames, name)(*args) for name, args in (("Resume", (bytes(32), bytes(32))),
                                                      ("Resumed", (True, bytes(32)))) if hasattr(frames, name)]


def test_the_handshake_frames_are_the_harness_handshake_types():
    assert {type(f) for f in HANDSHAKE_FRAMES} == set(F.HANDSHAKE_TYPES)


@pytest.mark.parametrize("frame", HANDSHAKE_FRAMES, ids=lambda f: type(f).__name__)
def test_handshake_frames_after_the_handshake_are_unexpected(frame):
    run = F.run_session(F.SessionCase(active=True, ops=[F.FramesOp((frames.encode(frame),))]))
    assert run.link.closing.code is ErrorCode.UNEXPECTED_FRAME and not run.link.closing.by_peer


@pytest.mark.parametrize("count, violation", [(1000, False), (1001, True)])
def test_a_peer_beyond_its_window_is_closed_with_flow_violation(count, violation):
    deliver = frames.encode(frames.Deliver(bytes(16), b"x"))
    run = F.run_session(F.SessionCase(active=True, ops=[F.BurstOp(deliver, count)]))
    if violation:
        assert run.link.closing.code is ErrorCode.FLOW_VIOLATION
    else:
        assert run.link.closing is None and run.conn.state is State.ACTIVE


def test_a_window_update_renews_the_window():
    deliver = frames.encode(frames.Deliver(bytes(16), b"x"))
    run = F.run_session(F.SessionCase(active=True, ops=[F.BurstOp(deliver, 1000), F.PumpOp(),
                                                         F.BurstOp(deliver, 1000)]))
    assert run.link.closing is None


def test_every_seed_passes():
    seeds = sorted(CORPUS.iterdir())
    assert len(seeds) >= 12
    for seed in seeds:
        F.TestOneInput(seed.read_bytes())


@FAST
@given(st.binary(max_size=200))
def test_any_input_is_handled_by_the_harness(data):
    F.TestOneInput(data)


# -- findings of the fuzzing --------------------------------------------------------------


def test_no_finding_is_left_open():
    # A new finding that cannot be fixed at once goes into F.KNOWN_FINDINGS with
    # an xfail(strict=True) test here; none is open.
    assert F.KNOWN_FINDINGS == {}


@pytest.mark.parametrize("data", [
    b"\x08\x00\x13\xff",  # CLOSE, a reason that is not UTF-8
    b"\x09\x00\x01" + b"a" * 300,  # ERROR, a reason longer than 256 bytes
    b"\x08\x00\x13" + "é".encode() * 128 + b"\xc3",  # a character cut at byte 257
    b"\x41" + bytes(32) + b"\x00\xfc\x67",  # PUNCH_REQUEST, no address but a port
], ids=["reason-not-utf8", "reason-too-long", "reason-cut", "punch-request-port-without-address"])
def test_fixed_frames_that_did_not_reencode_exactly(data):
    # Found by fuzz_link: these decoded, then encoded to other bytes.
    F.check_decode(data)  # refused with a FrameError, or re-encoded exactly


@pytest.mark.parametrize("ops", [
    # a rate-limited SEND's RECEIPT, then a frame that closes the link
    [F.BurstOp(frames.encode(frames.Send(bytes(16), bytes(32), b"x")), 21),
     F.FramesOp((frames.encode(frames.Hello(Role.CLIENT, (frames.PROTOCOL_VERSION,), 0)),))],
    # DELIVERs waiting out a FLOW_CONTROL pause, then a bad frame, then the pause ends
    [F.StepOp(6, 30), F.StepOp(4, 1), F.FramesOp((b"\x99",)), F.TimerOp(4000)],
], ids=["receipt", "backlog"])
def test_fixed_nothing_is_written_after_close(ops):
    # Found by fuzz_link: a RECEIPT queued before the CLOSE, and the backlog, came after it.
    run = F.run_session(F.SessionCase(active=True, ops=ops + [F.PumpOp()]))
    assert run.link.closing is not None and run.closes_seen[-1].code == run.link.closing.code


class _Pair:
    """A genuine client (initiator) and relay (responder) in memory, public API only."""

    def __init__(self, client_settings=LinkSettings(), relay_settings=LinkSettings()):
        relay_static = hashlib.sha256(b"relay static").digest()
        relay_key, client_key = SigningKey(bytes(32)), SigningKey(bytes([1]) * 32)
        self.now = 1000.0
        self.client = LinkConnection(
            initiator=True, role=Role.CLIENT, signing_key=client_key, carrier=Carrier.NOISE_STREAM,
            settings=client_settings, now=self.now, remote_static=F.noise.public_key(relay_static),
            expected_peer_id=hashlib.sha256(bytes(relay_key.verify_key)).digest())
        self.relay = LinkConnection(
            initiator=False, role=Role.RELAY, signing_key=relay_key, carrier=Carrier.NOISE_STREAM,
            settings=relay_settings, now=self.now, static_private=relay_static)
        self.client.connection_made(self.now)
        self.relay.connection_made(self.now)
        self.events = {"client": [], "relay": []}

    def flush(self, source, name):
        """Everything ``source`` has to write, read by the other side in one go."""
        target = self.relay if name == "relay" else self.client
        for unit in source.pull(self.now):
            self.events[name] += target.receive_data(unit, self.now)

    def pump(self):
        for _ in range(8):
            self.flush(self.client, "relay")
            self.flush(self.relay, "client")

    def closings(self, name):
        return [e for e in self.events[name] if isinstance(e, Closing)]


def test_fixed_a_client_within_its_credit_is_not_closed():
    # Found by fuzz_link: the window check counted only WINDOW_UPDATE's consumed,
    # while the relay's FLOW_CONTROL (rate limit) told the client a larger one.
    pair = _Pair()
    pair.pump()
    assert pair.client.state is State.ACTIVE and pair.relay.state is State.ACTIVE
    for _ in range(21):  # one past the burst of 20: the relay answers FLOW_CONTROL(consumed 21)
        pair.client.send(frames.Send(os.urandom(16), bytes(32), b"x"), pair.now)
    pair.pump()
    pair.now += 2.0  # past retry-after
    for _ in range(pair.client.credit(pair.now)):  # 1000: what the relay's FLOW_CONTROL allows
        assert pair.client.send(frames.Send(os.urandom(16), bytes(32), b"x"), pair.now)
    pair.pump()
    assert pair.closings("relay") == []


def test_fixed_a_small_initial_window_is_not_enforced_before_it_is_announced():
    # Found by fuzz_link: a client with link.window_initial 100 closed a relay that
    # sent its queued messages right after authenticating it, under the protocol's 1000.
    pair = _Pair(client_settings=LinkSettings(window_initial=100))
    for _ in range(3):
        pair.flush(pair.client, "relay")
        if pair.relay.state is State.ACTIVE:
            break
        pair.flush(pair.relay, "client")
    assert any(isinstance(e, Authenticated) for e in pair.events["relay"])
    # The relay hands the new link its queued messages at once: the protocol's 1000 allows them.
    for i in range(200):
        assert pair.relay.send(frames.Deliver(i.to_bytes(16, "big"), b"queued"), pair.now)
    pair.flush(pair.relay, "client")
    assert pair.closings("client") == []
    assert sum(isinstance(e, Received) for e in pair.events["client"]) == 200
