"""One link's state machine, sans-IO: secure channel, handshake, timers, flow control.

A :class:`LinkConnection` is fed the bytes (or WebSocket messages) that
arrive and the current time; it returns events for its owner and holds the
records to write until :meth:`LinkConnection.pull` takes them. It never
touches a socket, the clock or global randomness; the adapter arms one timer
for :meth:`LinkConnection.next_deadline`.

States: IDLE → CONNECTING → HANDSHAKE → ACTIVE → CLOSING → CLOSED.

Handshake over Noise (TCP and WebSocket carriers)::

    I → R   Noise  -> e, es
    I ← R   Noise  <- e, ee ; AUTH_CHALLENGE(nr)  channel binding = handshake hash
    I → R   HELLO, AUTH_CHALLENGE(ni), AUTH_RESPONSE(sig over nr)
    I ← R   HELLO_ACK, AUTH_RESPONSE(sig over ni), AUTH_OK(session token)
                                                  R: ACTIVE at AUTH_OK, I: when it reads it

Over TLS the Noise messages are absent and the binding is the TLS exporter.
Both sides always prove their node id, so relay-to-relay links are
authenticated both ways and a client knows it reached the relay it pinned.
"""

from __future__ import annotations

import enum
import functools
import os
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from nacl.signing import SigningKey

from . import auth, frames
from .frames import (
    FLOW_CONTROLLED,
    AuthChallenge,
    AuthOk,
    AuthResponse,
    Close,
    Deliver,
    Error,
    ErrorCode,
    FlowControl,
    FlowReason,
    FrameError,
    Hello,
    HelloAck,
    Ping,
    Padding,
    Pong,
    Receipt,
    Resume,
    Resumed,
    Role,
    Send,
    WindowUpdate,
)
from .noise import LengthPrefixedReader, NoiseError, NoiseNK, nk_responder
from .padding import pad, split
from .noise import frame as noise_frame
from ..ratelimit import Rate, TokenBucket

PROLOGUE = b"zentalk-link/3"
#: The window each side may assume of the other until told otherwise.
INITIAL_WINDOW = 1000
#: Records are filled up to this many bytes of frames when more are queued;
#: larger records cost fewer AEAD calls, smaller ones less head-of-line delay.
#: One PADDING frame (3 bytes) less than 16 KiB, so that a full record still fits
#: its padding bucket (see padding.py).
RECORD_TARGET = 16384 - 3
RTT_CLASSES = ((0.050, "excellent"), (0.150, "good"), (0.500, "fair"), (1.000, "poor"))

_LENGTH = struct.Struct("!H").pack  # the length in front of each frame in a record
_PADDING_BIT = 1 << frames.Capability.PADDING
_PADDING_TYPE = frames.FrameType.PADDING.value
_FRAME_HEAD = struct.Struct("!HB").pack  # length ‖ type
#: A SEND frame's type, message id and recipient: the smallest SEND is this long.
_SEND_HEAD = 1 + 16 + 32
_SEND, _DELIVER = frames.FrameType.SEND.value, frames.FrameType.DELIVER.value
#: A SEND's record length, type, message id and recipient, read in one call.
_SEND_FIELDS = struct.Struct("!HB16s32s").unpack_from
_SEND_FIELDS_SIZE = 2 + _SEND_HEAD
_MAX_FRAME = frames.MAX_FRAME
_FRAME_NAMES = frames.FRAME_NAME_OF
_RECEIPT_SIZE = len(frames.encode(frames.Receipt(bytes(16), 0)))
_RECEIPT_HEAD = _FRAME_HEAD(_RECEIPT_SIZE, frames.FrameType.RECEIPT)
#: RECEIPTs built together: as many as fill one record.
_RECEIPTS_PER_CHUNK = RECORD_TARGET // (2 + _RECEIPT_SIZE)


class State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    HANDSHAKE = "handshake"
    ACTIVE = "active"
    CLOSING = "closing"
    CLOSED = "closed"


class Carrier(enum.Enum):
    NOISE_STREAM = "tcp"  # Noise messages behind 2-byte lengths on a byte stream
    NOISE_MESSAGES = "ws"  # one Noise message per WebSocket binary message
    TLS_STREAM = "tls"  # plaintext records behind 2-byte lengths inside TLS 1.3


class Priority(enum.IntEnum):
    CONTROL = 0  # handshake, PING/PONG, CLOSE, flow control
    KEY_EXCHANGE = 1
    MESSAGE = 2
    BACKGROUND = 3  # presence, PEX


_CONTROL = int(Priority.CONTROL)  # the queue index, without the enum's lookup in hot paths


@dataclass(frozen=True, slots=True)
class LinkSettings:
    connect_timeout: float = 5.0
    handshake_timeout: float = 10.0
    ping_interval: float = 30.0
    ping_jitter: float = 5.0
    pong_timeout: float = 10.0
    dead_after_missed: int = 3
    idle_after: float = 300.0
    window_initial: int = 1000
    window_min: int = 100
    window_max: int = 10000
    #: Application frames waiting for the peer's window before new ones are refused.
    max_backlog: int = 2000
    messages: Rate = Rate(100, 60.0, 20)
    pex: Rate = Rate(1, 60.0, 1)
    versions: tuple[int, ...] = (frames.PROTOCOL_VERSION,)
    capabilities: int = 0
    features: tuple[str, ...] = ()


@dataclass(slots=True)
class LinkStats:
    """Counts shared by every link of a node; exported by the metrics module."""

    frames_in: dict[str, int] = field(default_factory=dict)
    frames_out: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    handshakes: dict[str, int] = field(default_factory=dict)
    closes: dict[str, int] = field(default_factory=dict)
    rate_limited: dict[str, int] = field(default_factory=dict)  # by what: messages, pex

    def count(self, table: dict[str, int], key: str, amount: int = 1) -> None:
        table[key] = table.get(key, 0) + amount


# -- events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Authenticated:
    peer_id: bytes
    role: Role
    version: int
    capabilities: int
    features: tuple[str, ...]
    session_token: bytes
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class Received:
    """An application frame from the authenticated peer."""

    frame: frames.Frame


@dataclass(frozen=True, slots=True)
class Sends:
    """SEND frames from the authenticated peer, in order: ``(message_id, recipient, body)`` each.

    Only a connection made with ``batch_sends=True`` (the relay's) returns
    it, for each run of SEND frames in one input (a run may span records;
    any other frame ends it); the frames have passed the
    window and the rate limit and are counted, just as a :class:`Received`
    for each would have been. A run that the window or the rate limit cuts
    short comes as one :class:`Received` per frame instead, with the refusals
    they cause.
    """

    items: list[tuple[bytes, bytes, bytes]]


@dataclass(frozen=True, slots=True)
class RttSample:
    seconds: float


@dataclass(frozen=True, slots=True)
class Closing:
    """The link is over: write what :meth:`pull` returns, then drop the transport."""

    code: ErrorCode
    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class CreditAvailable:
    """The peer opened its window: queued application frames can move again."""


Event = Authenticated | Received | Sends | RttSample | Closing | CreditAvailable


def rtt_class(seconds: float) -> str:
    for bound, name in RTT_CLASSES:
        if seconds < bound:
            return name
    return "bad"


class LinkConnection:
    """The sans-IO core of one link, either side."""

    # Slots for the attributes it sets (faster to make and to use); "__dict__" keeps
    # an instance open to others, e.g. a test wrapping its pull().
    __slots__ = ("__dict__", "_accept_roles", "_allowed_total", "_auth_ok_seen", "_backlog", "_batch_sends", "_binding",
                 "_challenge_answered", "_created", "_deadline_connect", "_deadline_handshake",
                 "_ephemeral", "_expected_peer_id", "_handshaking", "_hello_done", "_idle_check_at",
                 "_idle_probe", "_key", "_message_bucket", "_missed_pongs", "_next_ping", "_noise",
                 "_our_challenge", "_padded", "_peer_challenge", "_paused_until", "_peer_consumed", "_peer_verified",
                 "_peer_window", "_pex_bucket", "_ping_out", "_ping_sequence", "_queues", "_raw_out", "_reader",
                 "_received_flow", "_recv_cipher", "_refuse", "_replay_check", "_reported_consumed",
                 "_reported_window", "_responder", "_resume", "_resume_check", "_resume_token",
                 "_resume_tried", "_rng", "_run", "_send_cipher", "_sent_flow", "_token", "_window", "capabilities",
                 "carrier", "close_code", "features", "idle", "initiator", "last_rtt", "peer_features",
                 "peer_id", "peer_role", "role", "settings", "state", "stats", "version")

    def __init__(
        self,
        *,
        initiator: bool,
        role: Role,
        signing_key: SigningKey,
        carrier: Carrier,
        settings: LinkSettings,
        now: float,
        stats: LinkStats | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        static_private: bytes | None = None,
        static_public: bytes | None = None,
        remote_static: bytes | None = None,
        expected_peer_id: bytes | None = None,
        accept_roles: tuple[Role, ...] = (Role.CLIENT, Role.RELAY),
        replay_check: Callable[[bytes], bool] | None = None,
        refuse: tuple[ErrorCode, str] | None = None,
        resume: Authenticated | None = None,
        resume_check: Callable[[bytes], Authenticated | None] | None = None,
        batch_sends: bool = False,
    ) -> None:
        self.initiator = initiator
        self.role = role
        self.carrier = carrier
        self.settings = settings
        self.stats = stats if stats is not None else LinkStats()
        self.state = State.IDLE
        self.peer_id: bytes | None = None
        self.peer_role: Role | None = None
        self.version: int | None = None
        self.capabilities = 0
        self._padded = False
        self.features: tuple[str, ...] = ()
        #: The features the peer offered, before intersection: its wishes (e.g. "pex-opt-out").
        self.peer_features: tuple[str, ...] = ()
        self.close_code: ErrorCode | None = None
        self.last_rtt: float | None = None
        self.idle = False
        self._key = signing_key
        self._rng = rng
        self._expected_peer_id = expected_peer_id
        self._accept_roles = accept_roles
        self._replay_check = replay_check
        self._refuse = refuse
        self._resume = resume  # initiator: the session to resume
        self._resume_check = resume_check  # responder: token -> the session it resumes
        self._resume_tried = False
        self._resume_token: bytes | None = None
        self._created = now
        self._batch_sends = batch_sends
        self._run: list[tuple[bytes, bytes, bytes]] = []  # SENDs of the read being handled, not yet handed over

        # The initiator runs the generic HandshakeState; the responder (a relay, many
        # handshakes) the straight-line NK responder with its ephemeral key drawn here.
        self._noise = None
        self._responder = None
        self._ephemeral: bytes | None = None
        self._handshaking = carrier is not Carrier.TLS_STREAM
        if carrier is Carrier.TLS_STREAM:
            pass
        elif initiator:
            if remote_static is None:
                raise ValueError("a Noise initiator needs the responder's static key")
            self._noise = NoiseNK.initiator(remote_static, PROLOGUE, rng=rng)
        else:
            if static_private is None:
                raise ValueError("a Noise responder needs its static key")
            self._responder = nk_responder(static_private, PROLOGUE, static_public)
        self._reader = LengthPrefixedReader() if carrier is not Carrier.NOISE_MESSAGES else None
        self._send_cipher = None
        self._recv_cipher = None
        self._binding: bytes | None = None

        # handshake progress
        if initiator:
            self._our_challenge = rng(32)
            self._token: bytes | None = None
        else:
            # A responder's secrets for this handshake in one draw, one system call instead of
            # three: our challenge, the session token AUTH_OK (or RESUMED) carries, and for
            # Noise the ephemeral key.
            draw = rng(96 if self._responder is not None else 64)
            self._our_challenge, self._token = draw[:32], draw[32:64]
            if self._responder is not None:
                self._ephemeral = draw[64:]
        self._hello_done = False
        self._peer_challenge: bytes | None = None  # the nonce the peer asked us to sign
        self._challenge_answered = False
        self._peer_verified = False
        self._auth_ok_seen = False

        # outbound: each queue holds frames already behind their record length
        # prefix, one frame or several (a run of DELIVERs or RECEIPTs) per item.
        # Lists: pull takes each whole (an empty deque is ten times the size of an empty list).
        self._queues: tuple[list[bytes], ...] = ([], [], [], [])
        self._raw_out: list[bytes] = []  # handshake messages, sent as they are
        #: Flow-controlled frames waiting for credit, one per item: an empty tuple until the first
        #: waits (most links never have one), then a deque.
        self._backlog: deque[bytes] | tuple[()] = ()
        self._sent_flow = 0
        self._peer_window = INITIAL_WINDOW
        self._peer_consumed = 0
        self._paused_until = 0.0

        # inbound flow control
        self._window = settings.window_initial
        self._received_flow = 0
        self._reported_consumed = 0  # in the last WINDOW_UPDATE or FLOW_CONTROL queued
        self._reported_window = INITIAL_WINDOW  # likewise
        # The most the peer may have sent: it only grows, because a frame sent
        # under a bound the peer was given is never a violation, even if we
        # have shrunk the window since (the peer may not have read that yet).
        self._allowed_total = INITIAL_WINDOW

        # timers
        self._deadline_handshake: float | None = None
        self._deadline_connect: float | None = None
        self._next_ping: float | None = None
        self._ping_out: tuple[int, bytes, float] | None = None  # sequence, nonce, sent at
        self._ping_sequence = 0
        self._missed_pongs = 0
        self._idle_check_at = now + settings.idle_after
        self._idle_probe = False

        # per-link rate limits, each made at its first use (a bucket starts full, and an unused one stays so)
        self._message_bucket: TokenBucket | None = None
        self._pex_bucket: TokenBucket | None = None

    # -- lifecycle inputs ----------------------------------------------------

    def connecting(self, now: float) -> None:
        """The initiator's transport is being connected."""
        self.state = State.CONNECTING
        self._deadline_connect = now + self.settings.connect_timeout

    def connection_made(self, now: float) -> list[Event]:
        """The transport is up; for TLS, call :meth:`secure_established` when the handshake ends."""
        self.state = State.HANDSHAKE
        self._deadline_connect = None
        self._deadline_handshake = now + self.settings.handshake_timeout
        if self._noise is not None and self.initiator:
            self._raw_out.append(self._noise.write_message(b""))
        return []

    def secure_established(self, binding: bytes, now: float) -> list[Event]:
        """TLS finished its handshake; ``binding`` is its RFC 9266 exporter value."""
        self._binding = binding
        return self._channel_ready(now)

    def connection_lost(self) -> None:
        self.state = State.CLOSED

    def close(self, code: ErrorCode, reason: str, now: float) -> list[Event]:
        """Close from our side: a CLOSE frame goes out if the channel is secure."""
        return self._close(code, reason, by_peer=False)

    # -- data inputs ---------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Bytes from a stream carrier (TCP, TLS)."""
        if self.state in (State.CLOSING, State.CLOSED):
            return []
        self.stats.bytes_in += len(data)
        reader = self._reader
        assert reader is not None
        record = reader.whole(data)
        if record is not None:  # the common case in a handshake: one read, one record
            events = self._record(record, now)
            if self._run:
                events += self._end_run(now)
            return events
        try:
            reader.receive_data(data)
        except NoiseError as error:
            return self._close(ErrorCode.FRAME_TOO_LARGE if error.reason == "bad_length" else ErrorCode.PROTOCOL_ERROR,
                               f"bad record length ({error.reason})", by_peer=False)
        events: list[Event] = []
        while self.state not in (State.CLOSING, State.CLOSED):
            try:
                record = self._reader.next_message()
            except NoiseError as error:
                events += self._end_run(now)
                events += self._close(ErrorCode.FRAME_TOO_LARGE, f"bad record ({error.reason})", by_peer=False)
                break
            if record is None:
                break
            events += self._record(record, now)
        if self._run:
            events += self._end_run(now)
        return events

    def receive_record(self, record: bytes, now: float) -> list[Event]:
        """One WebSocket binary message."""
        if self.state in (State.CLOSING, State.CLOSED):
            return []
        self.stats.bytes_in += len(record)
        if len(record) > 65535:
            return self._close(ErrorCode.FRAME_TOO_LARGE, "WebSocket message larger than a record", by_peer=False)
        events = self._record(record, now)
        if self._run:
            events += self._end_run(now)
        return events

    def _record(self, record: bytes, now: float) -> list[Event]:
        if self._handshaking:
            return self._noise_handshake(record, now)
        if self._recv_cipher is not None:
            try:
                plaintext = self._recv_cipher.decrypt(record)
            except NoiseError:
                return self._end_run(now) + self._close(ErrorCode.DECRYPT_FAILED, "a record failed authentication",
                                                        by_peer=False)
        elif self.carrier is Carrier.TLS_STREAM and self._binding is not None:
            plaintext = record
        else:
            return self._close(ErrorCode.UNEXPECTED_FRAME, "data before the secure channel", by_peer=False)
        if self._batch_sends and self.state is State.ACTIVE:
            return self._active_record(plaintext, now)
        if not self.initiator and not self._hello_done:
            flight = frames.initiator_flight(plaintext)  # a responder's commonest record in a handshake
            if flight is not None:
                return self._initiator_flight(*flight, now)
        events: list[Event] = []
        frames_in = self.stats.frames_in
        try:
            for frame in map(frames.decode, frames.split_record(plaintext)):
                name = _FRAME_NAMES[type(frame)]
                frames_in[name] = frames_in.get(name, 0) + 1
                events += self._frame(frame, now)
                if self.state is State.CLOSING or self.state is State.CLOSED:
                    break
        except FrameError as error:
            events += self._close(error.code, error.detail, by_peer=False)
        return events

    def _active_record(self, plaintext: bytes, now: float) -> list[Event]:
        """A record on an ACTIVE link: its SEND frames join the run, the rest are handled one by one.

        The run (:attr:`_run`) goes on across the records of one read, up to
        the first other frame; it is handed over as one :class:`Sends` before
        that frame, before the link closes, and at the end of the read. The
        checks are those of :func:`frames.split_record` and
        :func:`frames.decode`, in the same order.
        """
        run = self._run
        append = run.append
        head = _SEND_FIELDS
        events: list[Event] = []
        offset, end = 0, len(plaintext)
        try:
            if end == 0:
                raise FrameError(ErrorCode.PROTOCOL_ERROR, "empty record")
            while offset < end:
                if end - offset >= _SEND_FIELDS_SIZE:
                    size, kind, message_id, recipient = head(plaintext, offset)
                    stop = offset + 2 + size
                    if kind == _SEND and _SEND_HEAD <= size <= _MAX_FRAME and stop <= end:
                        append((message_id, recipient, plaintext[offset + _SEND_FIELDS_SIZE:stop]))
                        offset = stop
                        continue
                elif offset + 2 > end:
                    raise FrameError(ErrorCode.PROTOCOL_ERROR, "frame length runs past the record")
                size = (plaintext[offset] << 8) | plaintext[offset + 1]
                start = offset + 2
                stop = start + size
                if size == 0:
                    raise FrameError(ErrorCode.PROTOCOL_ERROR, "zero-length frame")
                if size > frames.MAX_FRAME:
                    raise FrameError(ErrorCode.FRAME_TOO_LARGE, f"{size} bytes")
                if stop > end:
                    raise FrameError(ErrorCode.PROTOCOL_ERROR, "frame runs past the record")
                if plaintext[start] == _PADDING_TYPE:
                    # filler at a record's end: the run goes on into the next record
                    self.stats.count(self.stats.frames_in, "padding")
                    offset = stop
                    continue
                if run:
                    events += self._end_run(now)
                    run = self._run
                    append = run.append
                    if self.state is not State.ACTIVE:
                        return events
                frame = frames.decode(plaintext[start:stop])
                self.stats.count(self.stats.frames_in, frames.type_name(frame))
                events += self._active_frame(frame, now)
                if self.state is not State.ACTIVE:
                    return events
                offset = stop
        except FrameError as error:
            events += self._end_run(now)
            return events + self._close(error.code, error.detail, by_peer=False)
        return events

    def _end_run(self, now: float) -> list[Event]:
        """Hand over the SENDs gathered so far: at once if the window and the rate limit take them all."""
        run = self._run
        if not run:
            return []
        self._run = []
        count = len(run)
        flow = self._received_flow + count
        if flow > self._allowed_total or (
                self.peer_role is Role.CLIENT and not self._messages_bucket(now).take(now, count)):
            # the window or the rate limit ends inside this run: frame by frame, as always
            events: list[Event] = []
            frames_in = self.stats.frames_in
            for item in run:
                frames_in["send"] = frames_in.get("send", 0) + 1
                events += self._active_frame(Send(*item), now)
                if self.state is not State.ACTIVE:
                    break
            return events
        frames_in = self.stats.frames_in
        frames_in["send"] = frames_in.get("send", 0) + count
        self._received_flow = flow
        self._idle_check_at = now + self.settings.idle_after
        self.idle = False
        self._consumed(count)
        return [Sends(run)]

    # -- Noise ---------------------------------------------------------------

    def _noise_handshake(self, message: bytes, now: float) -> list[Event]:
        try:
            if not self.initiator:
                if self._replay_check is not None and len(message) >= 32 and not self._replay_check(message[:32]):
                    return self._close(ErrorCode.HANDSHAKE_REPLAYED, "this handshake was seen before",
                                       by_peer=False, secure=False)
                if self._ephemeral is None:
                    raise NoiseError("out_of_order")  # a failed handshake is not tried again
                ephemeral, self._ephemeral = self._ephemeral, None
                reply, _, self._send_cipher, self._recv_cipher, self._binding = self._responder.respond(
                    message, ephemeral)
                self._raw_out.append(reply)
            else:
                noise = self._noise
                noise.read_message(message)
                self._send_cipher, self._recv_cipher = noise.split()
                self._binding = noise.handshake_hash
        except NoiseError as error:
            return self._close(ErrorCode.DECRYPT_FAILED, f"Noise handshake failed ({error.reason})",
                               by_peer=False, secure=False)
        self._handshaking = False
        return self._channel_ready(now)

    def _channel_ready(self, now: float) -> list[Event]:
        if self._refuse is not None:
            # A limit was hit: say so on the secure channel, then go.
            return self._close(*self._refuse, by_peer=False)
        if self.initiator:
            if self._resume is not None:
                self._queue(Resume(self._resume.session_token, self._our_challenge), Priority.CONTROL)
            else:
                self._send_hello(now)
        else:
            # The responder's challenge leaves with its Noise reply (or first thing
            # on TLS), so that the initiator answers it beside its HELLO: the
            # handshake takes two round trips after the transport's, not three.
            self._queue_encoded("auth_challenge", frames.encode_auth_challenge(self._our_challenge), _CONTROL)
        return []

    def _send_hello(self, now: float) -> None:
        s = self.settings
        self._queue(Hello(self.role, s.versions, s.capabilities, s.features), Priority.CONTROL)
        self._queue(AuthChallenge(self._our_challenge), Priority.CONTROL)
        self._answer_challenge(now)  # the responder's, if it came before our HELLO (a refused RESUME)

    def _answer_challenge(self, now: float) -> None:
        """Sign the peer's challenge once we may: the responder after HELLO, the initiator after its own HELLO."""
        if self._peer_challenge is None or self._challenge_answered:
            return
        if self.initiator and self._resume is not None:
            return  # resuming: answered only if the relay refuses the RESUME
        self._challenge_answered = True
        side = auth.INITIATOR if self.initiator else auth.RESPONDER
        stamp = _ms(now)
        public, signature = auth.sign(self._key, side, self._peer_challenge, stamp, self._binding)
        self._queue_encoded("auth_response", frames.encode_auth_response(public, stamp, signature), _CONTROL)

    # -- frames --------------------------------------------------------------

    def _frame(self, frame: frames.Frame, now: float) -> list[Event]:
        if self.state is State.ACTIVE:
            return self._active_frame(frame, now)
        kind = type(frame)
        if kind is Padding:
            return []  # the peer pads from its ACTIVE on: AUTH_OK may come padded
        if kind is Close:
            return self._close(ErrorCode.NORMAL, frame.reason, by_peer=True, peer_code=frame.code)
        if kind is Hello and not self.initiator and not self._hello_done:
            return self._hello(frame)
        if kind is Resume and not self.initiator and not self._hello_done and not self._resume_tried:
            return self._resume_requested(frame, now)
        if kind is Resumed and self.initiator and self._resume is not None and self._resume_token is None:
            return self._resume_answered(frame, now)
        if kind is HelloAck and self.initiator and not self._hello_done:
            return self._hello_ack(frame)
        if kind is AuthChallenge and self._peer_challenge is None and (self.initiator or self._hello_done):
            self._peer_challenge = frame.nonce
            self._answer_challenge(now)
            return []
        if kind is AuthResponse and not self._peer_verified and (self._hello_done or self._resume_token):
            return self._auth_response(frame, now)
        if kind is AuthOk and self.initiator and self._peer_verified:
            return self._activate(now, frame.session_token)
        return self._close(ErrorCode.UNEXPECTED_FRAME,
                           f"{frames.type_name(frame)} is not expected during the handshake", by_peer=False)

    def _initiator_flight(self, hello: Hello, challenge: AuthChallenge, response: AuthResponse,
                          now: float) -> list[Event]:
        """HELLO, AUTH_CHALLENGE and AUTH_RESPONSE in one record, before the responder's HELLO is done.

        What :meth:`_frame` does with these frames one by one in that state,
        without its dispatch: the HELLO is settled (or the link refused), the
        response checked, the challenge answered (none can have come before a
        HELLO). The same frames leave in the same order; only the work is
        ordered differently (see below).
        """
        frames_in = self.stats.frames_in
        frames_in["hello"] = frames_in.get("hello", 0) + 1
        events = self._hello(hello)
        if events:  # refused: the link is closing
            return events
        frames_in["auth_challenge"] = frames_in.get("auth_challenge", 0) + 1
        frames_in["auth_response"] = frames_in.get("auth_response", 0) + 1
        # The peer's response is checked before its challenge is signed: the wire is the same
        # (a refusal drops whatever was queued), and a response that fails costs no signature.
        refused = self._check_response(response, now)
        if refused:
            return refused
        self._peer_challenge = challenge.nonce
        self._answer_challenge(now)
        return self._accepted(now)

    def _hello(self, hello: Hello) -> list[Event]:
        if hello.role not in self._accept_roles:
            return self._close(ErrorCode.ROLE_REFUSED, f"this listener does not accept {hello.role.name.lower()}s",
                               by_peer=False)
        version = _negotiate(self.settings.versions, hello.versions)
        if version is None:
            return self._close(ErrorCode.VERSION_MISMATCH, "no common protocol version with the same major",
                               by_peer=False)
        self._settle(hello.role, version, hello.capabilities, hello.features)
        # our own capabilities and features, not the intersection: each side
        # computes that, and learns what the other offered (its wishes among them)
        s = self.settings
        self._queue_encoded("hello_ack", _encoded_hello_ack(self.role, version, s.capabilities, s.features), _CONTROL)
        return []  # our AUTH_CHALLENGE went out with the channel (see _channel_ready)

    def _hello_ack(self, ack: HelloAck) -> list[Event]:
        ours = self.settings.versions
        if ack.version not in ours:
            return self._close(ErrorCode.VERSION_MISMATCH, "the peer chose a version we did not offer", by_peer=False)
        self._settle(ack.role, ack.version, ack.capabilities, ack.features)
        return []

    def _settle(self, role: Role, version: int, capabilities: int, features: tuple[str, ...]) -> None:
        self.peer_role = role
        self.version = version
        self.peer_features = features
        self.capabilities = self.settings.capabilities & capabilities
        ours = self.settings.features
        self.features = tuple(name for name in ours if name in features) if ours and features else ()
        self._hello_done = True

    def _check_response(self, response: AuthResponse, now: float) -> list[Event]:
        """Verify the peer's AUTH_RESPONSE: nothing if it holds (the peer's id is set), else the close."""
        side = auth.RESPONDER if self.initiator else auth.INITIATOR
        try:
            self.peer_id = auth.verify(response, side, self._our_challenge, _ms(now), self._binding,
                                       self._expected_peer_id)
        except FrameError as error:
            return self._close(error.code, error.detail, by_peer=False)
        self._peer_verified = True
        return []

    def _auth_response(self, response: AuthResponse, now: float) -> list[Event]:
        refused = self._check_response(response, now)
        if refused:
            return refused
        if self.initiator:
            if self._resume_token is not None:
                previous = self._resume
                self._settle(previous.role, previous.version, previous.capabilities, previous.features)
                return self._activate(now, self._resume_token, resumed=True)
            return []
        return self._accepted(now)

    def _accepted(self, now: float) -> list[Event]:
        """The responder has checked the initiator's AUTH_RESPONSE: AUTH_OK, and the link is ACTIVE."""
        token = self._token
        self._queue_encoded("auth_ok", frames.encode_auth_ok(token), _CONTROL)
        return self._activate(now, token)

    def _resume_requested(self, resume: Resume, now: float) -> list[Event]:
        self._resume_tried = True
        session = self._resume_check(resume.token) if self._resume_check is not None else None
        if session is None:
            self.stats.count(self.stats.handshakes, "resume_rejected")
            self._queue(Resumed(False, bytes(32)), Priority.CONTROL)
            return []  # the client goes on with HELLO on this same link
        self.peer_id = session.peer_id
        self.peer_role = session.role
        self.version = session.version
        self.capabilities = session.capabilities
        self.features = session.features
        self._hello_done = True
        self._peer_verified = True
        token = self._token
        self._queue(Resumed(True, token), Priority.CONTROL)
        self._queue(auth.respond(self._key, auth.RESPONDER, resume.nonce, _ms(now), self._binding), Priority.CONTROL)
        return self._activate(now, token, resumed=True)

    def _resume_answered(self, resumed: Resumed, now: float) -> list[Event]:
        if resumed.accepted:
            self._resume_token = resumed.token
            return []
        self._resume = None
        self._send_hello(now)
        return []

    def _activate(self, now: float, token: bytes, resumed: bool = False) -> list[Event]:
        self.state = State.ACTIVE
        # From here on (AUTH_OK and everything after) records go out padded, if both offered PADDING.
        self._padded = bool(self.capabilities & _PADDING_BIT)
        if self._window != INITIAL_WINDOW:
            self._report(WindowUpdate(self._window, 0))
        self._deadline_handshake = None
        self._idle_check_at = now + self.settings.idle_after
        self._schedule_ping(now)
        self.stats.count(self.stats.handshakes, "resumed" if resumed else "success")
        assert self.peer_id is not None and self.peer_role is not None and self.version is not None
        return [Authenticated(self.peer_id, self.peer_role, self.version, self.capabilities, self.features, token,
                              resumed)]

    def _messages_bucket(self, now: float) -> TokenBucket:
        bucket = self._message_bucket
        if bucket is None:
            bucket = self._message_bucket = TokenBucket(self.settings.messages, now)
        return bucket

    def _pex_requests(self, now: float) -> TokenBucket:
        bucket = self._pex_bucket
        if bucket is None:
            bucket = self._pex_bucket = TokenBucket(self.settings.pex, now)
        return bucket

    def _active_frame(self, frame: frames.Frame, now: float) -> list[Event]:
        kind = type(frame)
        if kind in FLOW_CONTROLLED:
            self._received_flow += 1
            if self._received_flow > self._allowed_total:
                return self._close(ErrorCode.FLOW_VIOLATION, "more messages than the window allows", by_peer=False)
            self._idle_check_at = now + self.settings.idle_after
            self.idle = False
            # Relays forward for many clients: only client links are rate limited.
            if kind is not Deliver and self.peer_role is Role.CLIENT and not self._messages_bucket(now).take(now):
                self._consumed(1)
                self.stats.count(self.stats.rate_limited, "messages")
                retry = self._message_bucket.retry_after(now)
                if kind is Send:
                    self._queue(Receipt(frame.message_id, frames.ReceiptStatus.REFUSED, ErrorCode.RATE_LIMITED),
                                Priority.MESSAGE)
                self.throttle(self._window, FlowReason.RATE_LIMIT, int(retry * 1000) + 1)
                return []
            self._consumed(1)
            return [Received(frame)]
        if kind is Padding:
            return []
        if kind is Ping:
            self._queue(Pong(frame.timestamp_ms, frame.nonce, frame.sequence, _ms(now)), Priority.CONTROL)
            return []
        if kind is Pong:
            return self._pong(frame, now)
        if kind is WindowUpdate or kind is FlowControl:
            return self._window_update(frame, now)
        if kind is Close:
            return self._close(ErrorCode.NORMAL, frame.reason, by_peer=True, peer_code=frame.code)
        if kind in _APPLICATION:
            if kind is frames.Pex and frame.subtype == PEX_REQUEST and not self._pex_requests(now).take(now):
                self.stats.count(self.stats.rate_limited, "pex")
                self._queue(Error(ErrorCode.RATE_LIMITED, "one PEX request per minute"), Priority.BACKGROUND)
                return []
            return [Received(frame)]
        return self._close(ErrorCode.UNEXPECTED_FRAME, f"{frames.type_name(frame)} after the handshake",
                           by_peer=False)

    # -- flow control --------------------------------------------------------

    def _consumed(self, count: int) -> None:
        """We processed ``count`` flow-controlled frames; tell the peer at half a window."""
        consumed = self._received_flow
        if consumed - self._reported_consumed >= self._window // 2:
            self._report(WindowUpdate(self._window, consumed & 0xFFFFFFFF))

    def _report(self, frame: WindowUpdate | FlowControl) -> None:
        self._reported_consumed = self._received_flow
        self._reported_window = frame.window
        self._queue(frame, Priority.CONTROL)

    def throttle(self, window: int, reason: FlowReason, retry_after_ms: int) -> None:
        """Ask the peer to slow down: a new window and a pause (FLOW_CONTROL)."""
        window = max(self.settings.window_min, min(window, self.settings.window_max))
        self._window = window
        self._report(FlowControl(window, self._received_flow & 0xFFFFFFFF, reason, retry_after_ms))

    def _window_update(self, frame: WindowUpdate | FlowControl, now: float) -> list[Event]:
        s = self.settings
        self._peer_window = max(0, min(frame.window, s.window_max))
        # counters are u32 on the wire and cumulative; accept only forward movement
        delta = (frame.consumed - self._peer_consumed) & 0xFFFFFFFF
        if delta <= self._sent_flow - self._peer_consumed:
            self._peer_consumed += delta
        if isinstance(frame, FlowControl):
            self._paused_until = now + min(frame.retry_after_ms, 60_000) / 1000.0
        if self._backlog and self.credit(now) > 0:
            return [CreditAvailable()]
        return []

    def credit(self, now: float) -> int:
        """How many flow-controlled frames the peer will take now."""
        if now < self._paused_until:
            return 0
        return self._peer_window - (self._sent_flow - self._peer_consumed)

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def send(self, frame: frames.Frame, now: float, priority: Priority = Priority.MESSAGE) -> bool:
        """Queue an application frame; False if the link cannot take more (refuse upstream)."""
        if self.state is not State.ACTIVE:
            return False
        if isinstance(frame, FLOW_CONTROLLED):
            if self._backlog or self.credit(now) <= 0:
                if len(self._backlog) >= self.settings.max_backlog:
                    return False
                encoded = frames.encode(frame)
                self._waiting().append(_LENGTH(len(encoded)) + encoded)
                return True
            self._sent_flow += 1
            self._idle_check_at = now + self.settings.idle_after
        self._queue(frame, priority)
        return True

    def send_delivers(self, items: list[tuple[bytes, bytes, bytes]], now: float) -> int:
        """Queue ``DELIVER(message_id, body)`` for each ``(message_id, _, body)``, in order.

        What :meth:`send` does for each, for a whole run: those the peer's
        window takes are queued, the next wait in the backlog up to
        ``max_backlog``. Returns how many were taken; the rest are refused.
        """
        if self.state is not State.ACTIVE:
            return 0
        count = len(items)
        backlog = self._backlog
        ready = 0 if backlog else max(0, min(count, self.credit(now)))
        if ready:
            queue = self._queues[Priority.MESSAGE]
            parts: list[bytes] = []
            size = 0
            last = -1
            for message_id, _, body in items if ready == count else items[:ready]:
                length = len(body)
                if length != last:
                    head = _FRAME_HEAD(length + 17, _DELIVER)
                    last = length
                size += length + 19
                if size > RECORD_TARGET and parts:
                    queue.append(b"".join(parts))  # one record's worth of DELIVERs in one item
                    parts, size = [], length + 19
                parts += (head, message_id, body)
            queue.append(b"".join(parts))
            self._sent_flow += ready
            self._idle_check_at = now + self.settings.idle_after
            frames_out = self.stats.frames_out
            frames_out["deliver"] = frames_out.get("deliver", 0) + ready
        if ready == count:
            return count
        waiting = max(0, min(count - ready, self.settings.max_backlog - len(backlog)))
        if waiting:
            backlog = self._waiting()
        for index in range(ready, ready + waiting):
            message_id, _, body = items[index]
            backlog.append(_FRAME_HEAD(17 + len(body), _DELIVER) + message_id + body)
        return ready + waiting

    def send_receipts(self, message_ids: list[bytes], status: int, code: int = 0) -> bool:
        """Queue ``RECEIPT(message_id, status, code)`` for each id, in order, as :meth:`send` would."""
        if self.state is not State.ACTIVE:
            return False
        head = _RECEIPT_HEAD
        tail = bytes([status]) + _LENGTH(code)
        glue = tail + head
        queue = self._queues[Priority.MESSAGE]
        for start in range(0, len(message_ids), _RECEIPTS_PER_CHUNK):
            queue.append(head + glue.join(message_ids[start:start + _RECEIPTS_PER_CHUNK]) + tail)
        frames_out = self.stats.frames_out
        frames_out["receipt"] = frames_out.get("receipt", 0) + len(message_ids)
        return True

    def _waiting(self) -> deque[bytes]:
        """The backlog, made at its first use."""
        backlog = self._backlog
        if not isinstance(backlog, deque):
            backlog = self._backlog = deque()
        return backlog

    def _release_backlog(self, now: float) -> None:
        credit = self.credit(now)
        backlog, queue, frames_out = self._backlog, self._queues[Priority.MESSAGE], self.stats.frames_out
        while backlog and credit > 0:
            item = backlog.popleft()
            queue.append(item)
            name = frames.TYPE_NAMES[item[2]]
            frames_out[name] = frames_out.get(name, 0) + 1
            self._sent_flow += 1
            credit -= 1

    # -- timers --------------------------------------------------------------

    def _schedule_ping(self, now: float) -> None:
        jitter = int.from_bytes(self._rng(2), "big") / 65535 * self.settings.ping_jitter
        self._next_ping = now + self.settings.ping_interval + jitter

    def _send_ping(self, now: float) -> None:
        self._ping_sequence = (self._ping_sequence + 1) & 0xFFFFFFFF
        nonce = self._rng(8)
        self._ping_out = (self._ping_sequence, nonce, now)
        self._queue(Ping(_ms(now), nonce, self._ping_sequence), Priority.CONTROL)

    def _pong(self, pong: Pong, now: float) -> list[Event]:
        if self._ping_out is None or (pong.sequence, pong.nonce) != self._ping_out[:2]:
            return []  # late or unsolicited: harmless
        rtt = now - self._ping_out[2]
        self._ping_out = None
        self._missed_pongs = 0
        if self._idle_probe:
            self._idle_probe = False
            self._idle_check_at = now + self.settings.idle_after
        self.last_rtt = rtt
        return [RttSample(rtt)]

    def next_deadline(self) -> float | None:
        if self.state is State.ACTIVE and self._ping_out is None and not self._idle_probe and not (
                self._backlog and self._paused_until) and self._deadline_handshake is None:
            # an active link between PINGs (after every input): the next PING or the idle check
            ping, idle = self._next_ping, self._idle_check_at
            return idle if ping is None or idle < ping else ping
        connect, handshake = self._deadline_connect, self._deadline_handshake
        if self.state is not State.ACTIVE:  # before ACTIVE only these two count
            if connect is None or (handshake is not None and handshake < connect):
                return handshake
            return connect
        candidates = [connect, handshake]
        if self.state is State.ACTIVE:
            candidates.append(self._next_ping)
            if self._ping_out is not None:
                candidates.append(self._ping_out[2] + self.settings.pong_timeout)
            if not self._idle_probe:
                candidates.append(self._idle_check_at)
            if self._backlog and self._paused_until:
                candidates.append(self._paused_until)
        return min((c for c in candidates if c is not None), default=None)

    def on_timer(self, now: float) -> list[Event]:
        """Run whatever is due at ``now``."""
        if self.state in (State.CLOSING, State.CLOSED):
            return []
        if self._deadline_connect is not None and now >= self._deadline_connect:
            return self._close(ErrorCode.HANDSHAKE_TIMEOUT, "connect timed out", by_peer=False, secure=False)
        if self._deadline_handshake is not None and now >= self._deadline_handshake:
            return self._close(ErrorCode.HANDSHAKE_TIMEOUT, "the handshake took too long", by_peer=False)
        if self.state is not State.ACTIVE:
            return []
        events: list[Event] = []
        if self._ping_out is not None and now >= self._ping_out[2] + self.settings.pong_timeout:
            self._ping_out = None
            if self._idle_probe:
                return self._close(ErrorCode.IDLE_TIMEOUT, "idle, and no PONG to the probe", by_peer=False)
            self._missed_pongs += 1
            if self._missed_pongs >= self.settings.dead_after_missed:
                return self._close(ErrorCode.DEAD_PEER, f"{self._missed_pongs} PONGs missed", by_peer=False)
        if not self._idle_probe and now >= self._idle_check_at:
            self.idle = True
            self._idle_probe = True
            if self._ping_out is None:
                self._send_ping(now)
        if self._next_ping is not None and now >= self._next_ping:
            if self._ping_out is None:
                self._send_ping(now)
            self._schedule_ping(now)
        if self._backlog and self.credit(now) > 0:
            events.append(CreditAvailable())
        return events

    # -- closing -------------------------------------------------------------

    def _close(self, code: ErrorCode, reason: str, *, by_peer: bool, secure: bool = True,
               peer_code: int | None = None) -> list[Event]:
        if self.state in (State.CLOSING, State.CLOSED):
            return []
        # Nothing follows a CLOSE: what was queued is dropped (the owner learns of
        # undelivered messages from the Closing event and keeps them elsewhere).
        for queue in self._queues:
            queue.clear()
        self._backlog = ()
        if not by_peer and secure and self._binding is not None:
            self._queue(Close(code, reason), Priority.CONTROL)
        if self.state is not State.ACTIVE:
            self.stats.count(self.stats.handshakes, ("peer_" if by_peer else "") + code.label)
        self.state = State.CLOSING
        final = code
        if by_peer and peer_code is not None:
            try:
                final = ErrorCode(peer_code)
            except ValueError:
                final = ErrorCode.PROTOCOL_ERROR
        self.close_code = final
        self.stats.count(self.stats.closes, ("peer_" if by_peer else "") + final.label)
        return [Closing(final, reason, by_peer)]

    # -- output --------------------------------------------------------------

    def _queue(self, frame: frames.Frame, priority: Priority) -> None:
        self._queue_encoded(_FRAME_NAMES[type(frame)], frames.encode(frame), priority)

    def _queue_encoded(self, name: str, encoded: bytes, priority: int) -> None:
        """An encoded frame (``type ‖ body``) and its metric label."""
        self._queues[priority].append(_LENGTH(len(encoded)) + encoded)
        frames_out = self.stats.frames_out
        frames_out[name] = frames_out.get(name, 0) + 1

    def pending(self) -> bool:
        return bool(self._raw_out) or any(self._queues)

    def pull(self, now: float) -> list[bytes]:
        """Wire units to write now: one joined chunk for a stream carrier, messages for WebSocket."""
        if self._backlog:
            self._release_backlog(now)
        allowed = self._reported_consumed + self._reported_window
        if allowed > self._allowed_total:
            self._allowed_total = allowed
        units = self._raw_out
        if not units:
            queues = self._queues
            if not (queues[0] or queues[1] or queues[2] or queues[3]):
                return []  # nothing to write
        else:
            self._raw_out = []
        if self._send_cipher is None and not (self.carrier is Carrier.TLS_STREAM and self._binding is not None):
            if self._reader is not None and units:
                units = [b"".join(noise_frame(u) for u in units)]
            return self._count_out(units)
        items: list[bytes] = []
        for queue in self._queues:  # in priority order
            if queue:
                items += queue
                queue.clear()
        records: list[bytes] = []
        seal = self._seal_padded if self._padded else self._seal
        if len(items) > 1 and sum(map(len, items)) > RECORD_TARGET:
            batch: list[bytes] = []
            size = 0
            for item in items:
                if batch and size + len(item) > RECORD_TARGET:
                    seal(batch, records)
                    batch, size = [], 0
                batch.append(item)
                size += len(item)
            seal(batch, records)
        elif items:
            seal(items, records)  # the usual case: one record
        if self._reader is None:
            return self._count_out(units + records)
        pieces = [noise_frame(u) for u in units] if units else []
        for record in records:
            pieces += (_LENGTH(len(record)), record)
        return self._count_out([b"".join(pieces)])

    def _seal(self, batch: list[bytes], records: list[bytes]) -> None:
        plaintext = batch[0] if len(batch) == 1 else b"".join(batch)
        records.append(plaintext if self._send_cipher is None else self._send_cipher.encrypt(plaintext))

    def _seal_padded(self, batch: list[bytes], records: list[bytes]) -> None:
        """Padded records, split where smaller buckets cost fewer bytes (see padding.split)."""
        plaintext = batch[0] if len(batch) == 1 else b"".join(batch)
        cipher = self._send_cipher
        for piece in split(plaintext):
            piece = pad(piece)
            records.append(piece if cipher is None else cipher.encrypt(piece))

    def _count_out(self, units: list[bytes]) -> list[bytes]:
        for unit in units:
            self.stats.bytes_out += len(unit)
        return units


PEX_REQUEST = 0x01
#: Frames handed to the owner as they are once the link is active.
_APPLICATION = (Receipt, Error, frames.Pex, frames.SyncRequest, frames.SyncResponse, frames.Ack,
                frames.PunchRequest, frames.Punch)


@functools.lru_cache(maxsize=64)  # nearly every HELLO lists the same versions
def _negotiate(ours: tuple[int, ...], theirs: tuple[int, ...]) -> int | None:
    """Highest common version whose MAJOR equals our highest MAJOR."""
    major = max(ours) >> 8
    common = [v for v in set(ours) & set(theirs) if v >> 8 == major]
    return max(common) if common else None


@functools.lru_cache(maxsize=64)  # a node answers every HELLO with one of very few
def _encoded_hello_ack(role: Role, version: int, capabilities: int, features: tuple[str, ...]) -> bytes:
    """An encoded HELLO_ACK."""
    return frames.encode(HelloAck(role, version, capabilities, features))


def _ms(now: float) -> int:
    return int(now * 1000)
