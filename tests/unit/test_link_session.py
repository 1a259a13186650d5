"""The link state machine: handshake, refusals, timers, flow control, limits, priorities.

Time is an argument here, so every timer is driven exactly.
"""

import hashlib

import pytest
from nacl.signing import SigningKey

from tests.support.linkpair import Pair, raw_frames, record_frame
from zentalk_relay.link import frames
from zentalk_relay.link.frames import ErrorCode, Role
from zentalk_relay.link.session import (
    Authenticated,
    Carrier,
    Closing,
    CreditAvailable,
    LinkSettings,
    Priority,
    Received,
    RttSample,
    Sends,
    State,
    rtt_class,
)
from zentalk_relay.link import session
from zentalk_relay.ratelimit import Rate


def _active_pair(**kwargs) -> Pair:
    pair = Pair(**kwargs)
    pair.pump()
    assert pair.initiator.state is State.ACTIVE and pair.responder.state is State.ACTIVE
    return pair


def _closing(pair: Pair, side: str) -> Closing:
    (event,) = pair.of(side, Closing)
    return event


@pytest.mark.parametrize("carrier", list(Carrier))
def test_handshake_authenticates_both_sides(carrier):
    pair = _active_pair(carrier=carrier)
    (relay_view,) = pair.of("responder", Authenticated)
    (client_view,) = pair.of("initiator", Authenticated)
    assert relay_view.peer_id == pair.client_id and relay_view.role is Role.CLIENT
    assert client_view.peer_id == pair.relay_id and client_view.role is Role.RELAY
    assert relay_view.session_token == client_view.session_token
    assert relay_view.version == frames.PROTOCOL_VERSION


@pytest.mark.parametrize("carrier", [Carrier.NOISE_STREAM, Carrier.TLS_STREAM])
def test_the_handshake_is_two_writes_each_way(carrier):
    # The responder's challenge leaves with its Noise reply (first thing on TLS),
    # so the initiator answers it beside its HELLO: two round trips, not three.
    pair = Pair(carrier=carrier)
    writes = {"initiator": 0, "responder": 0}
    for _ in range(4):
        for name, source, sink in (("initiator", pair.initiator, pair.responder),
                                   ("responder", pair.responder, pair.initiator)):
            units = source.pull(pair.now)
            assert len(units) <= 1  # a stream carrier joins what it has into one write
            writes[name] += len(units)
            for unit in units:
                sink.receive_data(unit, pair.now)
    assert pair.initiator.state is State.ACTIVE and pair.responder.state is State.ACTIVE
    assert writes == {"initiator": 2, "responder": 2}


def test_the_responder_takes_an_answer_that_comes_after_hello_ack():
    # An initiator that waits for HELLO_ACK before it answers the challenge (a
    # round trip slower) still gets in: the rules are those of the sequential order.
    pair = Pair(carrier=Carrier.TLS_STREAM)
    challenge = pair.responder.pull(pair.now)  # AUTH_CHALLENGE, held back from the initiator
    hello = pair.initiator.pull(pair.now)  # HELLO, AUTH_CHALLENGE
    assert challenge and len(hello) == 1
    pair.responder.receive_data(hello[0], pair.now)
    reply = pair.responder.pull(pair.now)  # HELLO_ACK, AUTH_RESPONSE: no AUTH_OK yet
    assert pair.responder.state is State.HANDSHAKE
    for unit in challenge + reply:
        pair.initiator.receive_data(unit, pair.now)
    pair.pump()
    assert pair.initiator.state is State.ACTIVE and pair.responder.state is State.ACTIVE


def test_a_second_challenge_is_refused():
    pair = Pair(carrier=Carrier.TLS_STREAM)
    for unit in pair.responder.pull(pair.now):
        pair.initiator.receive_data(unit, pair.now)
    events = pair.initiator.receive_data(raw_frames(frames.AuthChallenge(bytes(32))), pair.now)
    assert [e.code for e in events if isinstance(e, Closing)] == [ErrorCode.UNEXPECTED_FRAME]


def test_version_negotiation_picks_the_highest_common_with_the_same_major():
    pair = _active_pair(initiator_settings=LinkSettings(versions=(0x0300, 0x0302, 0x0401)),
                        responder_settings=LinkSettings(versions=(0x0300, 0x0301, 0x0302)))
    assert pair.initiator.version == pair.responder.version == 0x0302


def test_no_common_major_version_is_refused():
    pair = Pair(initiator_settings=LinkSettings(versions=(0x0200,)))
    pair.pump()
    assert _closing(pair, "responder").code is ErrorCode.VERSION_MISMATCH
    assert _closing(pair, "initiator").code is ErrorCode.VERSION_MISMATCH and _closing(pair, "initiator").by_peer


def test_capabilities_are_anded_and_features_intersected():
    pair = _active_pair(initiator_settings=LinkSettings(capabilities=0b1011, features=("a", "b")),
                        responder_settings=LinkSettings(capabilities=0b0110, features=("b", "c")))
    assert pair.initiator.capabilities == pair.responder.capabilities == 0b0010
    assert pair.initiator.features == pair.responder.features == ("b",)


def test_the_client_refuses_a_relay_with_another_identity():
    pair = Pair(expected_peer_id=b"\x00" * 32)
    pair.pump()
    assert _closing(pair, "initiator").code is ErrorCode.AUTH_WRONG_IDENTITY
    assert pair.of("responder", Closing)[0].by_peer


def test_a_stale_timestamp_is_refused():
    pair = Pair()
    pair.pump(rounds=1)  # Noise messages
    # the client's clock runs 61 s ahead when it signs
    for unit in pair.initiator.pull(pair.now):
        pair.responder.receive_data(unit, pair.now)
    for unit in pair.responder.pull(pair.now):
        pair.initiator.receive_data(unit, pair.now + 61)
    events = []
    for unit in pair.initiator.pull(pair.now + 61):
        events += pair.responder.receive_data(unit, pair.now)
    (closing,) = [e for e in events if isinstance(e, Closing)]
    assert closing.code is ErrorCode.AUTH_STALE_TIMESTAMP


def _tls_responder(**kwargs) -> Pair:
    return Pair(carrier=Carrier.TLS_STREAM, **kwargs)


def test_a_bad_signature_is_refused():
    pair = _tls_responder()
    pair.responder.pull(pair.now)
    key = SigningKey.generate()
    events = pair.responder.receive_data(raw_frames(
        frames.Hello(Role.CLIENT, (frames.PROTOCOL_VERSION,), 0), frames.AuthChallenge(b"\x00" * 32),
        frames.AuthResponse(bytes(key.verify_key), int(pair.now * 1000), b"\x00" * 64)), pair.now)
    assert events[-1].code is ErrorCode.AUTH_BAD_SIGNATURE


def test_a_response_that_fails_costs_the_responder_no_signature(monkeypatch):
    # HELLO, AUTH_CHALLENGE and AUTH_RESPONSE in one record (what every initiator sends): the
    # response is checked before the challenge is signed, so a bad one is refused unsigned.
    pair = _tls_responder()
    pair.responder.pull(pair.now)
    signed = []
    original = session.auth.sign
    monkeypatch.setattr(session.auth, "sign", lambda *args: signed.append(args) or original(*args))
    key = SigningKey.generate()
    flight = [frames.Hello(Role.CLIENT, (frames.PROTOCOL_VERSION,), 0), frames.AuthChallenge(b"\x01" * 32),
              frames.AuthResponse(bytes(key.verify_key), int(pair.now * 1000), b"\x00" * 64)]
    record = frames.pack_record([frames.encode(frame) for frame in flight])
    assert frames.initiator_flight(record) is not None
    events = pair.responder.receive_data(record_frame(record), pair.now)
    assert [e.code for e in events if isinstance(e, Closing)] == [ErrorCode.AUTH_BAD_SIGNATURE]
    assert signed == []
    assert pair.responder.stats.frames_in["auth_response"] == 1
    assert "auth_response" not in pair.responder.stats.frames_out


def test_application_frames_before_authentication_are_refused():
    pair = _tls_responder()
    events = pair.responder.receive_data(raw_frames(frames.Send(b"\x00" * 16, b"\x00" * 32, b"x")), pair.now)
    assert [e.code for e in events if isinstance(e, Closing)] == [ErrorCode.UNEXPECTED_FRAME]
    assert pair.responder.state is State.CLOSING


def test_a_replayed_first_noise_message_is_refused():
    seen = set()

    def fresh(ephemeral: bytes) -> bool:
        if ephemeral in seen:
            return False
        seen.add(ephemeral)
        return True

    first = Pair(replay_check=fresh)
    message = first.initiator.pull(first.now)[0]
    first.responder.receive_data(message, first.now)
    second = Pair(replay_check=fresh)
    events = second.responder.receive_data(message, second.now)
    assert [e.code for e in events] == [ErrorCode.HANDSHAKE_REPLAYED]


def test_a_role_the_listener_does_not_accept_is_refused():
    pair = Pair(initiator_role=Role.RELAY, accept_roles=(Role.CLIENT,))
    pair.pump()
    assert _closing(pair, "responder").code is ErrorCode.ROLE_REFUSED


def test_garbage_instead_of_a_noise_message_is_refused():
    pair = Pair()
    events = pair.responder.receive_data(b"\x00\x30" + b"\x11" * 48, pair.now)
    assert [e.code for e in events] == [ErrorCode.DECRYPT_FAILED]
    assert pair.responder.pull(pair.now) == []  # nothing can be said without a channel


def test_a_tampered_record_is_refused():
    pair = _active_pair()
    pair.initiator.send(frames.Send(b"\x01" * 16, b"\x02" * 32, b"hello"), pair.now)
    (unit,) = pair.initiator.pull(pair.now)
    tampered = unit[:-1] + bytes([unit[-1] ^ 1])
    events = pair.responder.receive_data(tampered, pair.now)
    assert [e.code for e in events] == [ErrorCode.DECRYPT_FAILED]


def test_refusal_is_said_on_the_secure_channel():
    pair = Pair(refuse=(ErrorCode.TOO_MANY_CONNECTIONS_FROM_IP, "too many"))
    pair.pump()
    closing = _closing(pair, "initiator")
    assert closing.code is ErrorCode.TOO_MANY_CONNECTIONS_FROM_IP and closing.by_peer


# -- timers ----------------------------------------------------------------

def test_handshake_timeout():
    pair = Pair()
    assert pair.responder.next_deadline() == pair.now + 10
    assert pair.responder.on_timer(pair.now + 9.999) == []
    (closing,) = pair.responder.on_timer(pair.now + 10)
    assert closing.code is ErrorCode.HANDSHAKE_TIMEOUT


def test_ping_every_30_seconds_plus_jitter_and_rtt_is_measured():
    pair = _active_pair()
    deadline = pair.initiator.next_deadline()
    assert pair.now + 30 <= deadline <= pair.now + 35
    assert pair.initiator.on_timer(deadline - 0.001) == []
    pair.initiator.on_timer(deadline)
    (ping_unit,) = pair.initiator.pull(deadline)
    pair.responder.receive_data(ping_unit, deadline + 0.02)
    (pong_unit,) = pair.responder.pull(deadline + 0.02)
    events = pair.initiator.receive_data(pong_unit, deadline + 0.04)
    (sample,) = [e for e in events if isinstance(e, RttSample)]
    assert sample.seconds == pytest.approx(0.04)
    assert pair.initiator.last_rtt == pytest.approx(0.04)


@pytest.mark.parametrize("seconds,name", [(0.01, "excellent"), (0.1, "good"), (0.3, "fair"), (0.7, "poor"),
                                          (1.5, "bad")])
def test_rtt_quality_classes(seconds, name):
    assert rtt_class(seconds) == name


def test_three_missed_pongs_mark_the_peer_dead():
    pair = _active_pair(initiator_settings=LinkSettings(idle_after=10**9))
    link = pair.initiator
    now = pair.now
    closings = []
    for _ in range(200):
        deadline = link.next_deadline()
        now = deadline
        events = link.on_timer(now)
        link.pull(now)
        closings = [e for e in events if isinstance(e, Closing)]
        if closings:
            break
    assert closings[0].code is ErrorCode.DEAD_PEER
    assert "3 PONGs missed" in closings[0].reason


def test_idle_link_is_probed_and_closed_without_an_answer():
    settings = LinkSettings(ping_interval=10_000)  # keep regular pings out of the way
    pair = _active_pair(carrier=Carrier.TLS_STREAM, initiator_settings=settings)
    link = pair.initiator
    assert link.next_deadline() == pair.now + 300
    assert not link.idle
    link.on_timer(pair.now + 300)
    assert link.idle
    assert [type(f) for f in _tls_frames(link.pull(pair.now + 300))] == [frames.Ping]
    (closing,) = link.on_timer(pair.now + 310)
    assert closing.code is ErrorCode.IDLE_TIMEOUT


def test_idle_link_that_answers_stays_open():
    settings = LinkSettings(ping_interval=10_000)
    pair = _active_pair(initiator_settings=settings)
    t = pair.now + 300
    pair.initiator.on_timer(t)
    for unit in pair.initiator.pull(t):
        pair.responder.receive_data(unit, t)
    for unit in pair.responder.pull(t):
        pair.initiator.receive_data(unit, t + 0.01)
    assert pair.initiator.on_timer(t + 10) == []
    assert pair.initiator.state is State.ACTIVE
    assert pair.initiator.next_deadline() == pytest.approx(t + 0.01 + 300)


# -- flow control and limits ------------------------------------------------

def _sends(count: int, body: bytes = b"x"):
    return [frames.Send(i.to_bytes(16, "big"), b"\x09" * 32, body) for i in range(count)]


def test_window_limits_what_is_sent_and_updates_reopen_it():
    fast = Rate(10**9, 60.0, 10**9)
    settings = LinkSettings(window_initial=10, messages=fast)
    pair = _active_pair(initiator_settings=settings, responder_settings=settings)
    for send in _sends(25):
        assert pair.initiator.send(send, pair.now)
    assert pair.initiator.backlog == 15
    pair.pump()
    received = [e for e in pair.events["responder"] if isinstance(e, Received)]
    assert len(received) == 25  # updates at half a window kept the backlog moving
    assert pair.initiator.backlog == 0


def test_sending_beyond_the_window_is_a_flow_violation():
    settings = LinkSettings(messages=Rate(10**9, 60.0, 10**9))
    pair = _tls_responder(responder_settings=settings)
    pair.pump()
    # no WINDOW_UPDATE can have been read: 1000 is the most the peer may send
    events = pair.responder.receive_data(raw_frames(*_sends(1001)), pair.now)
    assert [e.code for e in events if isinstance(e, Closing)] == [ErrorCode.FLOW_VIOLATION]


def test_a_smaller_window_binds_only_once_the_peer_could_have_read_it():
    settings = LinkSettings(window_initial=4, messages=Rate(10**9, 60.0, 10**9))
    pair = _tls_responder(responder_settings=settings)
    pair.pump()
    events = pair.responder.receive_data(raw_frames(*_sends(1000)), pair.now)
    assert not [e for e in events if isinstance(e, Closing)]


def test_flow_control_pauses_the_sender_for_retry_after():
    pair = _active_pair(carrier=Carrier.TLS_STREAM)
    link = pair.initiator
    link.receive_data(raw_frames(frames.FlowControl(100, 0, frames.FlowReason.SYSTEM_LOAD, 2000)), pair.now)
    assert link.credit(pair.now) == 0
    assert link.send(_sends(1)[0], pair.now)
    assert link.backlog == 1
    assert link.next_deadline() == pytest.approx(pair.now + 2)
    assert isinstance(link.on_timer(pair.now + 2)[-1], CreditAvailable)
    link.pull(pair.now + 2)
    assert link.backlog == 0


def test_message_rate_limit_refuses_with_receipt_and_flow_control():
    settings = LinkSettings(messages=Rate(100, 60.0, 20))
    pair = _tls_responder(responder_settings=settings)
    pair.pump()
    events = pair.responder.receive_data(raw_frames(*_sends(21)), pair.now)
    assert len([e for e in events if isinstance(e, Received)]) == 20
    out = _tls_frames(pair.responder.pull(pair.now))
    refused = [f for f in out if isinstance(f, frames.Receipt)]
    assert refused == [frames.Receipt((20).to_bytes(16, "big"), frames.ReceiptStatus.REFUSED,
                                      ErrorCode.RATE_LIMITED)]
    (flow,) = [f for f in out if isinstance(f, frames.FlowControl)]
    assert flow.reason == frames.FlowReason.RATE_LIMIT and flow.retry_after_ms > 0


def test_a_client_that_waits_before_its_first_burst_gets_the_burst_and_no_more():
    # the bucket is made at the first message, full, as one made at ACTIVE would be by then
    settings = LinkSettings(messages=Rate(100, 60.0, 20))
    pair = _tls_responder(responder_settings=settings)
    pair.pump()
    later = pair.now + 3600
    events = pair.responder.receive_data(raw_frames(*_sends(21)), later)
    assert len([e for e in events if isinstance(e, Received)]) == 20
    events = pair.responder.receive_data(raw_frames(*_sends(1)), later + 0.6)  # 100/min: one token in 0.6 s
    assert len([e for e in events if isinstance(e, Received)]) == 1


def test_pex_is_limited_to_one_request_per_minute():
    pair = _tls_responder()
    pair.pump()
    events = pair.responder.receive_data(raw_frames(frames.Pex(1), frames.Pex(1)), pair.now)
    assert len([e for e in events if isinstance(e, Received)]) == 1
    (error,) = [f for f in _tls_frames(pair.responder.pull(pair.now)) if isinstance(f, frames.Error)]
    assert error.code == ErrorCode.RATE_LIMITED


def test_a_window_other_than_the_initial_one_is_announced():
    pair = _active_pair(responder_settings=LinkSettings(window_initial=7))
    assert pair.initiator.credit(pair.now) == 7


def test_backlog_is_bounded():
    pair = _active_pair(initiator_settings=LinkSettings(max_backlog=3),
                        responder_settings=LinkSettings(window_initial=2))
    results = [pair.initiator.send(send, pair.now) for send in _sends(6)]
    assert results == [True, True, True, True, True, False]


def test_control_frames_overtake_queued_messages():
    pair = _tls_responder(responder_settings=LinkSettings(messages=Rate(10**9, 60.0, 10**9)))
    pair.pump()
    link = pair.responder
    for send in _sends(3):
        link.send(frames.Deliver(send.message_id, b"m"), pair.now)
    link.send(frames.Pex(2, b""), pair.now, Priority.BACKGROUND)
    link.receive_data(raw_frames(frames.Ping(1, b"\x00" * 8, 1)), pair.now)  # its PONG is queued last
    order = [type(f).__name__ for f in _tls_frames(link.pull(pair.now))]
    assert order == ["Pong", "Deliver", "Deliver", "Deliver", "Pex"]


def test_close_from_the_peer_carries_its_code():
    pair = _active_pair()
    pair.initiator.close(ErrorCode.SHUTTING_DOWN, "bye", pair.now)
    pair.pump()
    closing = _closing(pair, "responder")
    assert (closing.code, closing.reason, closing.by_peer) == (ErrorCode.SHUTTING_DOWN, "bye", True)


def _tls_frames(units):
    from zentalk_relay.link.noise import LengthPrefixedReader

    reader = LengthPrefixedReader()
    for unit in units:
        reader.receive_data(unit)
    out = []
    while (record := reader.next_message()) is not None:
        out += [frames.decode(raw) for raw in frames.split_record(record)]
    return out


def test_node_id_is_the_hash_of_the_key():
    pair = _active_pair()
    assert pair.responder.peer_id == hashlib.sha256(bytes(pair.client_key.verify_key)).digest()


def test_connect_timeout():
    pair = Pair()
    link = pair.initiator
    link.state = State.IDLE
    link.connecting(pair.now)
    assert link.state is State.CONNECTING and link.next_deadline() == pair.now + 5
    (closing,) = link.on_timer(pair.now + 5)
    assert closing.code is ErrorCode.HANDSHAKE_TIMEOUT and "connect" in closing.reason


def test_rate_limits_are_counted():
    settings = LinkSettings(messages=Rate(100, 60.0, 2))
    pair = _tls_responder(responder_settings=settings)
    pair.pump()
    pair.responder.receive_data(raw_frames(*_sends(3), frames.Pex(1), frames.Pex(1)), pair.now)
    assert pair.responder.stats.rate_limited == {"messages": 1, "pex": 1}


# -- the relay's batched path: runs of SENDs, DELIVERs and RECEIPTs as bytes ----------

_FAST = Rate(10**9, 60.0, 10**9)


def _active_tls(batch_sends: bool, settings: LinkSettings | None = None) -> Pair:
    pair = _tls_responder(responder_settings=settings or LinkSettings(messages=_FAST), batch_sends=batch_sends)
    pair.pump()
    assert pair.responder.state is State.ACTIVE
    pair.responder.pull(pair.now)
    return pair


def _record_of(*items: frames.Frame | bytes) -> bytes:
    """One plaintext record (TLS carrier) holding every item, behind its length."""
    from zentalk_relay.link.noise import frame as record_frame

    return record_frame(frames.pack_record([i if isinstance(i, bytes) else frames.encode(i) for i in items]))


def _flat(events) -> list:
    """Events with each Sends run spelled out as the Received(Send) events it stands for."""
    out = []
    for event in events:
        if isinstance(event, Sends):
            out += [("received", frames.Send(*item)) for item in event.items]
        elif isinstance(event, Received):
            out.append(("received", event.frame))
        elif isinstance(event, Closing):
            out.append(("closing", event.code, event.reason))
        else:
            out.append((type(event).__name__,))
    return out


def _both_ways(data: bytes, settings: LinkSettings | None = None):
    """Feed the same bytes to a relay link with and without batched SENDs; what each did."""
    seen = []
    for batch in (False, True):
        pair = _active_tls(batch, settings)
        link = pair.responder
        events = link.receive_data(data, pair.now)
        out = _tls_frames(link.pull(pair.now))
        seen.append((events, out, dict(link.stats.frames_in), dict(link.stats.rate_limited), link.state))
    return seen


@pytest.mark.parametrize("case", [
    "sends", "mixed", "bad_type_after_sends", "padded_records", "truncated_send", "zero_length", "short_send", "empty_record",
    "rate_limited_in_a_run", "window_exceeded_in_a_run", "close_after_sends",
])
def test_batched_sends_do_what_one_frame_at_a_time_does(case):
    sends = _sends(6, b"body")
    ack = frames.Ack((b"\x01" * 16,))
    settings = None
    if case == "sends":
        data = _record_of(*sends[:3]) + _record_of(*sends[3:])
    elif case == "mixed":
        data = _record_of(sends[0], ack, sends[1], sends[2], frames.Ping(1, b"\x00" * 8, 1), sends[3])
    elif case == "bad_type_after_sends":
        data = _record_of(sends[0], sends[1], b"\x7e", sends[2])
    elif case == "padded_records":
        data = _record_of(sends[0], sends[1], frames.Padding(bytes(40))) + _record_of(sends[2], frames.Padding())
    elif case == "truncated_send":
        data = _record_of(sends[0], sends[1])[:-3]
        data = data[:1] + bytes([data[1] - 3]) + data[2:]  # the record is whole, its last frame is not
    elif case == "zero_length":
        data = _record_of(sends[0]) + _record_of(sends[1], b"")
    elif case == "short_send":
        data = _record_of(sends[0], b"\x30" + b"\x00" * 40, sends[1])
    elif case == "empty_record":
        data = _record_of(sends[0]) + b"\x00\x00"
    elif case == "rate_limited_in_a_run":
        settings = LinkSettings(messages=Rate(100, 60.0, 4))
        data = _record_of(*sends)
    elif case == "window_exceeded_in_a_run":
        many = _sends(1100)  # 1000 are allowed: the third record crosses the line
        data = _record_of(*many[:400]) + _record_of(*many[400:900]) + _record_of(*many[900:])
    else:
        data = _record_of(sends[0], sends[1], frames.Close(ErrorCode.SHUTTING_DOWN, "bye"), sends[2])
    (one, one_out, one_in, one_limited, one_state), (batched, out, frames_in, limited, state) = _both_ways(
        data, settings)
    assert _flat(batched) == _flat(one)
    assert [f for f in out if not isinstance(f, frames.WindowUpdate)] == [
        f for f in one_out if not isinstance(f, frames.WindowUpdate)]
    assert (frames_in, limited, state) == (one_in, one_limited, one_state)
    if case in ("sends", "mixed", "close_after_sends"):
        assert any(isinstance(e, Sends) for e in batched)
    if case == "padded_records":  # filler does not cut the run
        assert [type(e) for e in batched] == [Sends] and len(batched[0].items) == 3
    if case == "window_exceeded_in_a_run":
        assert _flat(batched)[-1] == ("closing", ErrorCode.FLOW_VIOLATION, "more messages than the window allows")
        assert len(_flat(batched)) == 1001


def test_a_run_of_sends_is_one_event_and_consumes_the_window_once():
    pair = _active_tls(True, LinkSettings(window_initial=10, messages=_FAST))
    link = pair.responder
    events = link.receive_data(_record_of(*_sends(7)), pair.now)
    assert [type(e) for e in events] == [Sends]
    assert [frames.Send(*item) for item in events[0].items] == _sends(7)
    # past half the window: one WINDOW_UPDATE that says all seven were consumed
    assert [f for f in _tls_frames(link.pull(pair.now)) if isinstance(f, frames.WindowUpdate)] == [
        frames.WindowUpdate(10, 7)]


def test_a_run_spans_the_records_of_one_read_up_to_another_frame():
    pair = _active_tls(True)
    sends = _sends(9)
    data = _record_of(*sends[:3]) + _record_of(*sends[3:5]) + _record_of(sends[5], frames.Ping(1, b"\x00" * 8, 1),
                                                                          *sends[6:])
    events = pair.responder.receive_data(data, pair.now)
    assert [type(e) for e in events] == [Sends, Sends]
    assert [[frames.Send(*item) for item in e.items] for e in events] == [sends[:6], sends[6:]]
    assert [type(f) for f in _tls_frames(pair.responder.pull(pair.now))] == [frames.Pong]


def test_a_run_is_handed_over_before_a_bad_record_closes_the_link():
    pair = _active_pair(responder_settings=LinkSettings(messages=_FAST), batch_sends=True)
    for send in _sends(3):
        pair.initiator.send(send, pair.now)
    (unit,) = pair.initiator.pull(pair.now)
    pair.initiator.send(_sends(1)[0], pair.now)
    (bad,) = pair.initiator.pull(pair.now)
    bad = bad[:-1] + bytes([bad[-1] ^ 1])
    events = pair.responder.receive_data(unit + bad, pair.now)
    assert [type(e) for e in events] == [Sends, Closing]
    assert len(events[0].items) == 3 and events[1].code is ErrorCode.DECRYPT_FAILED


def test_without_batch_sends_every_send_is_its_own_event():
    pair = _active_tls(False)
    events = pair.responder.receive_data(_record_of(*_sends(3)), pair.now)
    assert [type(e) for e in events] == [Received] * 3


def _delivers(count: int, size: int = 10) -> list[tuple[bytes, bytes, bytes]]:
    return [(i.to_bytes(16, "big"), b"\x09" * 32, bytes([i % 251]) * size) for i in range(count)]


@pytest.mark.parametrize("window,backlog,paused,count,size", [
    (1000, 2000, False, 40, 10),  # all within the window
    (1000, 2000, False, 40, 1500),  # more than one record's worth
    (5, 20, False, 12, 10),  # window, then backlog
    (5, 3, False, 12, 10),  # window, backlog, refused
    (100, 4, True, 6, 10),  # paused by FLOW_CONTROL: backlog, then refused
])
def test_send_delivers_is_send_deliver_for_each(window, backlog, paused, count, size):
    outcomes = []
    for batched in (False, True):
        pair = _active_pair(carrier=Carrier.TLS_STREAM, initiator_settings=LinkSettings(window_initial=window),
                            responder_settings=LinkSettings(max_backlog=backlog))
        link = pair.responder
        link.pull(pair.now)
        if paused:
            pair.initiator.throttle(100, frames.FlowReason.SYSTEM_LOAD, 1000)
            pair.pump()
        items = _delivers(count, size)
        link.send(frames.Deliver(b"\xff" * 16, b"first"), pair.now)  # a frame queued before the run
        if batched:
            taken = link.send_delivers(items, pair.now)
        else:
            taken = sum(link.send(frames.Deliver(i, b), pair.now) for i, _, b in items)
        first = _tls_frames(link.pull(pair.now))
        later = _tls_frames(link.pull(pair.now + 2))  # after the pause
        outcomes.append((taken, first, later, link.backlog, dict(link.stats.frames_out), link.credit(pair.now + 2)))
    assert outcomes[0] == outcomes[1]


def test_send_delivers_fills_records_to_the_target():
    pair = _active_tls(True)
    link = pair.responder
    assert link.send_delivers(_delivers(40, 1000), pair.now) == 40
    from zentalk_relay.link.noise import LengthPrefixedReader

    reader = LengthPrefixedReader()
    for unit in link.pull(pair.now):
        reader.receive_data(unit)
    sizes = []
    while (record := reader.next_message()) is not None:
        sizes.append(len(record))
    assert len(sizes) == 3 and all(size <= session.RECORD_TARGET for size in sizes)


@pytest.mark.parametrize("count", [1, 3, 1000])
@pytest.mark.parametrize("status,code", [(frames.ReceiptStatus.DELIVERED, 0),
                                         (frames.ReceiptStatus.REFUSED, ErrorCode.RATE_LIMITED)])
def test_send_receipts_is_send_receipt_for_each(count, status, code):
    outcomes = []
    ids = [i.to_bytes(16, "big") for i in range(count)]
    for batched in (False, True):
        pair = _active_tls(True)
        link = pair.responder
        if batched:
            assert link.send_receipts(ids, status, code)
        else:
            assert all(link.send(frames.Receipt(i, status, code), pair.now) for i in ids)
        outcomes.append((_tls_frames(link.pull(pair.now)), dict(link.stats.frames_out)))
    assert outcomes[0] == outcomes[1]
    assert len(outcomes[1][0]) == count


def test_nothing_is_sent_on_a_link_that_is_not_active():
    pair = Pair(batch_sends=True)
    assert pair.responder.send_delivers(_delivers(2), pair.now) == 0
    assert not pair.responder.send_receipts([b"\x00" * 16], 0)


def test_type_names_cover_every_frame():
    assert set(frames.TYPE_NAMES.values()) == set(frames.FRAME_NAMES)
