#!/usr/bin/env python3
"""Write the seed corpus of fuzz_link.py to fuzz/corpus/link/ (run from anywhere).

Each seed is laid out as fuzz_link reads it (the first byte picks the target;
see parse_handshake and parse_session). The files are committed; rerun this
only to change the seeds. Every seed is run through the harness before it is
written, so a seed that trips a property stops the script.

    python3 fuzz/make_link_corpus.py
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The checkout's package, not an installed copy; then the harness beside us.
sys.path[:0] = [str(HERE.parent), str(HERE)]

import fuzz_link as F  # noqa: E402  (the harness, for its layout and checks)

frames = F.frames
noise = F.noise
Role = frames.Role

MID = bytes(range(16))
RECIPIENT = bytes(range(32, 64))


def encode(*items: frames.Frame) -> tuple[bytes, ...]:
    return tuple(frames.encode(item) for item in items)


#: One valid frame of every type the harness knows a layout for; worked
#: examples from docs/protocol.md where there is one.
HELLO = frames.Hello(Role.CLIENT, (frames.PROTOCOL_VERSION,), 0x21, ("padding",))
HELLO_ACK = frames.HelloAck(Role.RELAY, frames.PROTOCOL_VERSION, 1)
PING = frames.Ping(0x19B76DAA800, bytes.fromhex("0011223344556677"), 1)
PONG = frames.Pong(0x19B76DAA800, bytes.fromhex("0011223344556677"), 1, 0x19B76DAA82A)
CLOSE = frames.Close(19, "bye")
FLOW = frames.FlowControl(100, 1500, 1, 250)
WINDOW = frames.WindowUpdate(1000, 500)
SEND = frames.Send(MID, RECIPIENT, b"hello")
DELIVER = frames.Deliver(MID, b"hello")
RECEIPT = frames.Receipt(MID, 0, 0)
ERROR = frames.Error(11, "one PEX request per minute")
PEX = frames.Pex(1, b"")
AUTH_CHALLENGE = frames.AuthChallenge(bytes(range(32)))
AUTH_RESPONSE = frames.AuthResponse(bytes(32), 0x19B76DAA800, bytes(64))
AUTH_OK = frames.AuthOk(bytes(32))
ALL_FRAMES = (HELLO, HELLO_ACK, AUTH_CHALLENGE, AUTH_RESPONSE, AUTH_OK, PING, PONG, CLOSE, ERROR, FLOW, WINDOW, PEX,
              SEND, DELIVER, RECEIPT)
#: Application and control frames an active relay takes without closing.
ACTIVE_FRAMES = (PING, WINDOW, FLOW, SEND, DELIVER, RECEIPT, ERROR, PEX, PONG)


def frames_seed(payload: bytes) -> bytes:
    return bytes([F.TARGET_FRAMES]) + payload


def seeds() -> dict[str, bytes]:
    msg1 = noise.frame(F.CANONICAL_MSG1)
    seed = b"seed"
    out: dict[str, bytes] = {}

    # frames: one record holding a frame of every type; single frames; truncated and oversized lengths
    out["frames_record_all_types"] = frames_seed(frames.pack_record(list(encode(*ALL_FRAMES))))
    out["frames_hello_worked_example"] = frames_seed(bytes.fromhex("010101030000000021010770616464696e67"))
    out["frames_close_non_utf8_reason"] = frames_seed(b"\x08\x00\x13" + b"\xff\xfe bye")
    out["frames_record_truncated"] = frames_seed(frames.pack_record(list(encode(SEND, DELIVER)))[:-3])
    out["frames_record_oversized_length"] = frames_seed(b"\xff\xff\x30" + MID + RECIPIENT)

    # handshake: a genuine first Noise message, whole, in chunks, then garbage; over WebSocket; oversized;
    # TLS bytes before the TLS handshake finished; a replayed and a refused handshake
    ws, tls_early = F.HS_NOISE_MESSAGES, F.HS_TLS_EARLY
    out["handshake_msg1"] = F.encode_handshake(F.HandshakeCase(seed=seed, chunks=[msg1]))
    out["handshake_msg1_chunked_then_record"] = F.encode_handshake(F.HandshakeCase(
        seed=seed, chunks=[msg1[:1], msg1[1:20], msg1[20:] + b"\x00\x20", bytes(32)]))
    out["handshake_ws_msg1_then_record"] = F.encode_handshake(F.HandshakeCase(
        carrier=ws, seed=seed, chunks=[F.CANONICAL_MSG1, bytes(40)]))
    out["handshake_truncated_msg1_late_timer"] = F.encode_handshake(F.HandshakeCase(
        seed=seed, chunks=[msg1[:30]], late_timer=True))
    out["handshake_oversized_record_amplified"] = F.encode_handshake(F.HandshakeCase(
        seed=seed, chunks=[msg1, b"\xff\xff" + bytes(254)], amplify=True))
    out["handshake_one_megabyte_in_one_read"] = F.encode_handshake(F.HandshakeCase(
        seed=seed, chunks=[msg1, b"\xff\xff" + bytes(254)], amplify=True, one_call=True))
    out["handshake_ws_oversized_message"] = F.encode_handshake(F.HandshakeCase(
        carrier=ws, seed=seed, chunks=[F.CANONICAL_MSG1, bytes(255)], amplify=True))
    out["handshake_tls_record_before_secure"] = F.encode_handshake(F.HandshakeCase(
        carrier=tls_early, seed=seed, chunks=[frames.pack_record(list(encode(HELLO)))[:5],
                                              noise.frame(frames.pack_record(list(encode(HELLO))))]))
    out["handshake_replayed"] = F.encode_handshake(F.HandshakeCase(seed=seed, chunks=[msg1], replayed=True))
    out["handshake_refused"] = F.encode_handshake(F.HandshakeCase(seed=seed, chunks=[msg1], refused=True))

    # noise: the handshake step by step; every frame an active relay takes; unexpected frames; the window
    out["noise_handshake_steps"] = F.encode_session(F.SessionCase(seed=seed, ops=[
        F.StepOp(0), F.PumpOp(), F.StepOp(1), F.PumpOp(), F.FramesOp(encode(SEND)), F.PumpOp()]))
    out["noise_active_application_frames"] = F.encode_session(F.SessionCase(seed=seed, active=True, ops=[
        F.FramesOp(encode(*ACTIVE_FRAMES[:8])), F.FramesOp(encode(ACTIVE_FRAMES[8]), split=7), F.PumpOp(),
        F.FramesOp(encode(CLOSE))]))
    out["noise_ws_active_unexpected_hello"] = F.encode_session(F.SessionCase(
        seed=seed, websocket=True, active=True, ops=[F.FramesOp(encode(DELIVER)), F.FramesOp(encode(HELLO)),
                                                     F.PumpOp()]))
    out["noise_clients_only_relay_hello"] = F.encode_session(F.SessionCase(seed=seed, clients_only=True, ops=[
        F.StepOp(3), F.PumpOp()]))
    out["noise_small_window"] = F.encode_session(F.SessionCase(seed=seed, active=True, small_window=True, ops=[
        F.BurstOp(frames.encode(DELIVER), 100), F.PumpOp(), F.BurstOp(frames.encode(DELIVER), 101), F.PumpOp()]))
    out["noise_small_window_burst_before_its_update"] = F.encode_session(F.SessionCase(
        seed=seed, small_window=True, ops=[F.StepOp(0), F.PumpOp(), F.StepOp(1),
                                           F.BurstOp(frames.encode(DELIVER), 101), F.PumpOp()]))
    out["noise_relay_sends_within_window"] = F.encode_session(F.SessionCase(seed=seed, active=True, ops=[
        F.StepOp(4, 70), F.PumpOp(), F.StepOp(5), F.PumpOp(), F.StepOp(6, 20), F.TimerOp(3000), F.PumpOp(),
        F.StepOp(4, 255), F.PumpOp()]))
    out["noise_backlog_released_after_close"] = F.encode_session(F.SessionCase(seed=seed, active=True, ops=[
        F.StepOp(6, 30), F.StepOp(4, 1), F.FramesOp((b"\x99",)), F.TimerOp(4000), F.PumpOp()]))
    out["noise_active_truncated_plaintext"] = F.encode_session(F.SessionCase(seed=seed, active=True, ops=[
        F.PlaintextOp(frames.pack_record(list(encode(PING, SEND)))[:-5]), F.PumpOp()]))
    out["noise_window_burst"] = F.encode_session(F.SessionCase(seed=seed, active=True, ops=[
        F.BurstOp(frames.encode(DELIVER), 1000), F.PumpOp(), F.BurstOp(frames.encode(DELIVER), 1001), F.PumpOp()]))
    out["noise_rate_limit_then_burst"] = F.encode_session(F.SessionCase(seed=seed, active=True, ops=[
        F.BurstOp(frames.encode(SEND), 21), F.PumpOp(), F.TimerOp(2000), F.BurstOp(frames.encode(SEND), 1000),
        F.PumpOp()]))
    out["noise_timers_pings"] = F.encode_session(F.SessionCase(seed=seed, active=True, ops=[
        F.TimerOp(40000), F.PumpOp(), F.TimerOp(40000), F.PumpOp(pong=False), F.TimerOp(60000),
        F.TimerOp(60000), F.TimerOp(60000), F.PumpOp()]))
    # A ValidOp's bytes: two frames from build_frame (a HELLO offering our version, then a SEND).
    out["noise_valid_builder_frames"] = F.encode_session(F.SessionCase(seed=seed, ops=[
        bytes([(1 << 3) | 2])  # ValidOp, two frames
        + b"\x00" + b"\x00" + b"\x03\x00" + b"\x00" + bytes(4) + b"\x00"  # HELLO: flags, version, role, caps, features
        + bytes([F.FRAME_TYPES.index(frames.Send)]) + MID + RECIPIENT + b"\x00\x02hi",
        F.PumpOp()]))

    # tls: plaintext records; raw bytes straight into the record reader
    out["tls_handshake_steps"] = F.encode_session(F.SessionCase(tls=True, seed=seed, ops=[
        F.StepOp(0), F.PumpOp(), F.StepOp(1), F.PumpOp(), F.FramesOp(encode(PEX, PEX)), F.PumpOp()]))
    out["tls_wire_records"] = F.encode_session(F.SessionCase(tls=True, seed=seed, active=True, ops=[
        F.WireOp(noise.frame(frames.pack_record(list(encode(PING, RECEIPT))))), F.PumpOp(),
        F.WireOp(b"\xff\xff\x00\x04\x11\x00"), F.PumpOp()]))
    out["tls_empty_record"] = F.encode_session(F.SessionCase(tls=True, seed=seed, active=True, ops=[
        F.PlaintextOp(b""), F.PumpOp()]))
    out["tls_stale_auth_response"] = F.encode_session(F.SessionCase(tls=True, seed=seed, ops=[
        F.StepOp(0), F.PumpOp(), F.StepOp(1, 0), F.PumpOp()]))
    out["tls_resume"] = F.encode_session(F.SessionCase(tls=True, seed=seed, resumable=True, ops=[
        F.StepOp(7, 1), F.PumpOp(), F.FramesOp(encode(SEND)), F.PumpOp()]))
    out["tls_resume_unknown_token"] = F.encode_session(F.SessionCase(tls=True, seed=seed, resumable=True, ops=[
        F.StepOp(7, 2), F.PumpOp(), F.StepOp(0), F.PumpOp(), F.StepOp(1), F.PumpOp()]))
    return out


def main() -> None:
    target = HERE / "corpus" / "link"
    target.mkdir(parents=True, exist_ok=True)
    for old in target.iterdir():
        old.unlink()
    for name, data in seeds().items():
        if data[0] % F.TARGETS == F.TARGET_HANDSHAKE:
            assert F.encode_handshake(F.parse_handshake(data)) == data, f"{name}: layout mismatch"
        F.TestOneInput(data)  # a seed must pass every property
        (target / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes, sha1 {hashlib.sha1(data).hexdigest()[:12]}")


if __name__ == "__main__":
    main()
