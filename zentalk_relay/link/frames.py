"""Link frames, sans-IO: typed messages in, exact bytes out, and back.

A frame is ``type u8 ‖ body``. Frames travel in records (one Noise transport
message, or one length-prefixed TLS record); a record's plaintext holds one
or more frames, each behind its own ``length u16`` (covering type and body),
so that small frames share one AEAD call. Integers are big-endian. The byte
layouts are specified in ``docs/protocol.md``; the type numbers PING 0x06,
PONG 0x07, FLOW_CONTROL 0x10 and PEX 0x20 are fixed by the network spec.

A peer's garbage raises :class:`FrameError` and nothing else.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Callable, Iterator

#: Largest record plaintext: a Noise transport message (65535) less its tag.
MAX_RECORD = 65535 - 16
#: Largest frame (type and body), so that one frame always fits one record.
MAX_FRAME = MAX_RECORD - 2
MAX_FEATURES = 32
MAX_FEATURE_NAME = 32
MAX_VERSIONS = 16
MAX_REASON = 256

PROTOCOL_VERSION = 0x0300  # MAJOR 3, MINOR 0: ALPN "zentalk/3"


class FrameType(IntEnum):
    HELLO = 0x01
    HELLO_ACK = 0x02
    AUTH_CHALLENGE = 0x03
    AUTH_RESPONSE = 0x04
    AUTH_OK = 0x05
    PING = 0x06
    PONG = 0x07
    CLOSE = 0x08
    ERROR = 0x09
    FLOW_CONTROL = 0x10
    WINDOW_UPDATE = 0x11
    RESUME = 0x12
    RESUMED = 0x13
    PEX = 0x20
    SEND = 0x30
    DELIVER = 0x31
    RECEIPT = 0x32
    SYNC_REQUEST = 0x33
    SYNC_RESPONSE = 0x34
    ACK = 0x35
    ONION = 0x40
    PUNCH_REQUEST = 0x41
    PUNCH = 0x42
    PADDING = 0x7F


class Role(IntEnum):
    CLIENT = 1
    RELAY = 2


class Capability(IntEnum):
    RELAY = 0
    EXIT = 1
    GUARD = 2
    KYBER = 3
    PADDING = 4
    PEX = 5
    DHT = 6
    STORAGE = 7
    VOICE = 8
    VIDEO = 9
    GROUPS = 10


def capability_mask(*bits: Capability) -> int:
    mask = 0
    for bit in bits:
        mask |= 1 << bit
    return mask


class ErrorCode(IntEnum):
    """Why a link was refused or closed, or why a frame was refused.

    Each failure has its own code so that both ends and the metrics can tell
    them apart; ``reason`` strings are for people.
    """

    NORMAL = 0
    PROTOCOL_ERROR = 1
    FRAME_TOO_LARGE = 2
    UNEXPECTED_FRAME = 3
    VERSION_MISMATCH = 4
    AUTH_BAD_SIGNATURE = 5
    AUTH_STALE_TIMESTAMP = 6
    AUTH_WRONG_IDENTITY = 7
    HANDSHAKE_REPLAYED = 8
    HANDSHAKE_TIMEOUT = 9
    DECRYPT_FAILED = 10
    RATE_LIMITED = 11
    TOO_MANY_CONNECTIONS_FROM_IP = 12
    TOO_MANY_PENDING_HANDSHAKES = 13
    TOO_MANY_LINKS_FOR_PEER = 14
    SERVER_FULL = 15
    IDLE_TIMEOUT = 16
    DEAD_PEER = 17
    FLOW_VIOLATION = 18
    SHUTTING_DOWN = 19
    UNKNOWN_RECIPIENT = 20
    RECIPIENT_BUSY = 21
    ROLE_REFUSED = 22
    MAILBOX_FULL = 23
    MESSAGE_TOO_LARGE = 25
    PEER_NOT_CONNECTED = 26

    @property
    def label(self) -> str:
        return self.name.lower()


class FlowReason(IntEnum):
    BUFFER_FULL = 1
    RATE_LIMIT = 2
    SYSTEM_LOAD = 3


class ReceiptStatus(IntEnum):
    DELIVERED = 0  # handed to the recipient's link
    STORED = 1  # kept in the recipient's mailbox
    REFUSED = 2  # see the error code


class FrameError(Exception):
    """A frame that cannot be parsed; ``code`` is what to tell the peer."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code.label}: {detail}")
        self.code = code
        self.detail = detail


# -- frames -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    role: Role
    versions: tuple[int, ...]
    capabilities: int
    features: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HelloAck:
    role: Role
    version: int
    capabilities: int
    features: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    nonce: bytes  # 32


@dataclass(frozen=True, slots=True)
class AuthResponse:
    public_key: bytes  # Ed25519, 32
    timestamp_ms: int
    signature: bytes  # 64


@dataclass(frozen=True, slots=True)
class AuthOk:
    session_token: bytes  # 32


@dataclass(frozen=True, slots=True)
class Ping:
    timestamp_ms: int
    nonce: bytes  # 8
    sequence: int


@dataclass(frozen=True, slots=True)
class Pong:
    timestamp_ms: int
    nonce: bytes  # 8
    sequence: int
    received_ms: int


@dataclass(frozen=True, slots=True)
class Padding:
    """Filler that brings a record to its bucket's size (capability PADDING); receivers drop it."""

    body: bytes = b""  # zeros when we send; not checked


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class FlowControl:
    window: int
    consumed: int
    reason: int
    retry_after_ms: int


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    window: int
    consumed: int


@dataclass(frozen=True, slots=True)
class Pex:
    subtype: int
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Send:
    message_id: bytes  # 16
    recipient: bytes  # 32
    body: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    message_id: bytes  # 16
    body: bytes


@dataclass(frozen=True, slots=True)
class Receipt:
    message_id: bytes  # 16
    status: int
    code: int = 0


@dataclass(frozen=True, slots=True)
class Resume:
    """Sent instead of HELLO by a client that holds a session token."""

    token: bytes  # 32
    nonce: bytes  # 32: the client's challenge, which the relay signs as in AUTH_RESPONSE


@dataclass(frozen=True, slots=True)
class Resumed:
    accepted: bool
    token: bytes  # 32: the next token (zeros when refused)


@dataclass(frozen=True, slots=True)
class SyncRequest:
    cursor: int
    limit: int


@dataclass(frozen=True, slots=True)
class MailboxMessage:
    message_id: bytes  # 16
    stored_at_ms: int
    body: bytes


@dataclass(frozen=True, slots=True)
class SyncResponse:
    has_more: bool
    next_cursor: int
    messages: tuple[MailboxMessage, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    message_ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Onion:
    packet: bytes


@dataclass(frozen=True, slots=True)
class PunchRequest:
    peer: bytes  # 32: the node id to punch towards
    udp_host: str  # the requester's own UDP candidate (from STUN), "" if none
    udp_port: int


@dataclass(frozen=True, slots=True)
class Punch:
    peer: bytes  # 32
    host: str  # the peer's candidate: its UDP candidate, else its observed link address
    port: int
    start_in_ms: int  # start sending this long after the PUNCH arrives (one-way delay already deducted)
    rtt_ms: int  # the relay's RTT to this side


Frame = (
    Hello | HelloAck | AuthChallenge | AuthResponse | AuthOk | Ping | Pong | Close | Error
    | FlowControl | WindowUpdate | Pex | Send | Deliver | Receipt | Resume | Resumed | SyncRequest
    | SyncResponse | Ack | Onion | PunchRequest | Punch | Padding
)

#: Frames that consume the flow-control window: application traffic.
FLOW_CONTROLLED = (Send, Deliver, Onion)
MAX_ACK_IDS = 1024


# -- helpers ----------------------------------------------------------------

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_PING = struct.Struct("!Q8sI")
_PONG = struct.Struct("!Q8sIQ")
_AUTH_RESPONSE = struct.Struct("!32sQ64s")
_FLOW = struct.Struct("!IIBI")
_WINDOW = struct.Struct("!II")
_CODE = struct.Struct("!H")
_RECEIPT = struct.Struct("!16sBH")
_SYNC_REQUEST = struct.Struct("!QH")
_SYNC_HEAD = struct.Struct("!BQH")
_MAILBOX_ITEM = struct.Struct("!16sQI")
_PUNCH_TAIL = struct.Struct("!II")


def _address(host: str, port: int) -> bytes:
    """family u8 (0 none, 4, 6) ‖ address (0, 4 or 16) ‖ port u16."""
    if not host:
        return b"\x00" + _U16.pack(0)
    ip = ipaddress.ip_address(host)
    return bytes([ip.version]) + ip.packed + _U16.pack(port)


def _read_address(body: bytes, offset: int) -> tuple[str, int, int]:
    if offset >= len(body):
        raise FrameError(ErrorCode.PROTOCOL_ERROR, "address missing")
    family = body[offset]
    size = {0: 0, 4: 4, 6: 16}.get(family)
    if size is None:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, f"unknown address family {family}")
    end = offset + 1 + size + 2
    if end > len(body):
        raise FrameError(ErrorCode.PROTOCOL_ERROR, "address truncated")
    host = str(ipaddress.ip_address(body[offset + 1 : offset + 1 + size])) if size else ""
    (port,) = _U16.unpack_from(body, offset + 1 + size)
    if not size and port:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, "a port without an address")
    return host, port, end


def _features(names: tuple[str, ...]) -> bytes:
    out = bytearray([len(names)])
    for name in names:
        raw = name.encode("ascii")
        out.append(len(raw))
        out += raw
    return bytes(out)


def _read_features(body: bytes, offset: int) -> tuple[tuple[str, ...], int]:
    if offset >= len(body):
        raise FrameError(ErrorCode.PROTOCOL_ERROR, "feature list missing")
    count = body[offset]
    offset += 1
    if count > MAX_FEATURES:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, f"{count} features is more than {MAX_FEATURES}")
    names = []
    for _ in range(count):
        if offset >= len(body):
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "feature list truncated")
        size = body[offset]
        raw = body[offset + 1 : offset + 1 + size]
        if size == 0 or size > MAX_FEATURE_NAME or len(raw) != size:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "bad feature name length")
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "feature name is not ASCII") from None
        if not name.isprintable():
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "feature name is not printable")
        names.append(name)
        offset += 1 + size
    return tuple(names), offset


_ROLES = {int(role): role for role in Role}


def _role(value: int) -> Role:
    role = _ROLES.get(value)  # a dict: Role(value) costs several times as much, per handshake
    if role is None:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, f"unknown role {value}")
    return role


def _reason(raw: bytes) -> str:
    """Strict, so that a frame re-encodes to exactly its bytes."""
    if len(raw) > MAX_REASON:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, f"a reason is at most {MAX_REASON} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, "a reason is not UTF-8") from None


def _encode_reason(reason: str) -> bytes:
    """At most MAX_REASON bytes, cut at a character boundary."""
    raw = reason.encode("utf-8")
    if len(raw) <= MAX_REASON:
        return raw
    return raw[:MAX_REASON].decode("utf-8", "ignore").encode("utf-8")


def _exact(body: bytes, size: int, name: str) -> None:
    if len(body) != size:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, f"{name} body is {len(body)} bytes, not {size}")


def _at_least(body: bytes, size: int, name: str) -> None:
    if len(body) < size:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, f"{name} body is {len(body)} bytes, fewer than {size}")


# -- encoding ---------------------------------------------------------------


def encode(frame: Frame) -> bytes:
    """``type ‖ body`` for one frame (without the record's length prefix)."""
    kind = type(frame)
    if kind is Send:
        return b"\x30" + frame.message_id + frame.recipient + frame.body
    if kind is Deliver:
        return b"\x31" + frame.message_id + frame.body
    return _ENCODERS[kind](frame)


def _encode_hello(f: Hello) -> bytes:
    return (bytes([FrameType.HELLO, f.role, len(f.versions)]) + b"".join(_U16.pack(v) for v in f.versions)
            + _U32.pack(f.capabilities) + _features(f.features))


def _encode_hello_ack(f: HelloAck) -> bytes:
    return bytes([FrameType.HELLO_ACK, f.role]) + _U16.pack(f.version) + _U32.pack(f.capabilities) + _features(
        f.features)


def encode_auth_challenge(nonce: bytes) -> bytes:
    return b"\x03" + nonce


def encode_auth_response(public_key: bytes, timestamp_ms: int, signature: bytes) -> bytes:
    return b"\x04" + _AUTH_RESPONSE.pack(public_key, timestamp_ms, signature)


def encode_auth_ok(session_token: bytes) -> bytes:
    return b"\x05" + session_token


_ENCODERS: dict[type, Callable[[object], bytes]] = {
    Hello: _encode_hello,
    HelloAck: _encode_hello_ack,
    AuthChallenge: lambda f: encode_auth_challenge(f.nonce),
    AuthResponse: lambda f: encode_auth_response(f.public_key, f.timestamp_ms, f.signature),
    AuthOk: lambda f: encode_auth_ok(f.session_token),
    Ping: lambda f: b"\x06" + _PING.pack(f.timestamp_ms, f.nonce, f.sequence),
    Pong: lambda f: b"\x07" + _PONG.pack(f.timestamp_ms, f.nonce, f.sequence, f.received_ms),
    Close: lambda f: b"\x08" + _CODE.pack(f.code) + _encode_reason(f.reason),
    Error: lambda f: b"\x09" + _CODE.pack(f.code) + _encode_reason(f.reason),
    FlowControl: lambda f: b"\x10" + _FLOW.pack(f.window, f.consumed, f.reason, f.retry_after_ms),
    WindowUpdate: lambda f: b"\x11" + _WINDOW.pack(f.window, f.consumed),
    Pex: lambda f: b"\x20" + bytes([f.subtype]) + f.body,
    Receipt: lambda f: b"\x32" + _RECEIPT.pack(f.message_id, f.status, f.code),
    Resume: lambda f: b"\x12" + f.token + f.nonce,
    Resumed: lambda f: b"\x13" + bytes([1 if f.accepted else 0]) + f.token,
    SyncRequest: lambda f: b"\x33" + _SYNC_REQUEST.pack(f.cursor, f.limit),
    SyncResponse: lambda f: b"\x34" + _SYNC_HEAD.pack(1 if f.has_more else 0, f.next_cursor, len(f.messages))
    + b"".join(_MAILBOX_ITEM.pack(m.message_id, m.stored_at_ms, len(m.body)) + m.body for m in f.messages),
    Ack: lambda f: b"\x35" + _U16.pack(len(f.message_ids)) + b"".join(f.message_ids),
    Onion: lambda f: b"\x40" + f.packet,
    PunchRequest: lambda f: b"\x41" + f.peer + _address(f.udp_host, f.udp_port),
    Punch: lambda f: b"\x42" + f.peer + _address(f.host, f.port) + _PUNCH_TAIL.pack(f.start_in_ms, f.rtt_ms),
    Padding: lambda f: b"\x7f" + f.body,
}


# -- decoding ---------------------------------------------------------------


#: A HELLO's version list of each length, read in one call.
_VERSION_LISTS = [struct.Struct(f"!{count}H") for count in range(MAX_VERSIONS + 1)]


def _decode_hello(body: bytes) -> Hello:
    _at_least(body, 2, "HELLO")
    role, count = _role(body[0]), body[1]
    if count == 0 or count > MAX_VERSIONS:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, f"HELLO lists {count} versions")
    end = 2 + 2 * count
    _at_least(body, end + 4, "HELLO")
    versions = _VERSION_LISTS[count].unpack_from(body, 2)
    (capabilities,) = _U32.unpack_from(body, end)
    features, offset = _read_features(body, end + 4)
    if offset != len(body):
        raise FrameError(ErrorCode.PROTOCOL_ERROR, "trailing bytes after HELLO")
    return Hello(role, versions, capabilities, features)


def _decode_hello_ack(body: bytes) -> HelloAck:
    _at_least(body, 7, "HELLO_ACK")
    role = _role(body[0])
    (version,) = _U16.unpack_from(body, 1)
    (capabilities,) = _U32.unpack_from(body, 3)
    features, offset = _read_features(body, 7)
    if offset != len(body):
        raise FrameError(ErrorCode.PROTOCOL_ERROR, "trailing bytes after HELLO_ACK")
    return HelloAck(role, version, capabilities, features)


def _fixed(size: int, name: str, build: Callable[[bytes], Frame]) -> Callable[[bytes], Frame]:
    def decode_fixed(body: bytes) -> Frame:
        _exact(body, size, name)
        return build(body)

    return decode_fixed


def _decode_send(body: bytes) -> Send:
    _at_least(body, 48, "SEND")
    return Send(body[:16], body[16:48], body[48:])


def _decode_deliver(body: bytes) -> Deliver:
    _at_least(body, 16, "DELIVER")
    return Deliver(body[:16], body[16:])


def _decode_close(body: bytes) -> Close:
    _at_least(body, 2, "CLOSE")
    return Close(_CODE.unpack_from(body)[0], _reason(body[2:]))


def _decode_error(body: bytes) -> Error:
    _at_least(body, 2, "ERROR")
    return Error(_CODE.unpack_from(body)[0], _reason(body[2:]))


def _decode_sync_response(body: bytes) -> SyncResponse:
    _at_least(body, _SYNC_HEAD.size, "SYNC_RESPONSE")
    more, cursor, count = _SYNC_HEAD.unpack_from(body)
    offset = _SYNC_HEAD.size
    messages = []
    for _ in range(count):
        if offset + _MAILBOX_ITEM.size > len(body):
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "SYNC_RESPONSE item truncated")
        message_id, stored_at, size = _MAILBOX_ITEM.unpack_from(body, offset)
        offset += _MAILBOX_ITEM.size
        if offset + size > len(body):
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "SYNC_RESPONSE body truncated")
        messages.append(MailboxMessage(message_id, stored_at, body[offset : offset + size]))
        offset += size
    if offset != len(body) or more > 1:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, "malformed SYNC_RESPONSE")
    return SyncResponse(bool(more), cursor, tuple(messages))


def _decode_ack(body: bytes) -> Ack:
    _at_least(body, 2, "ACK")
    (count,) = _U16.unpack_from(body)
    if count > MAX_ACK_IDS:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, f"ACK of {count} ids is more than {MAX_ACK_IDS}")
    _exact(body, 2 + 16 * count, "ACK")
    return Ack(struct.unpack_from("16s" * count, body, 2))  # the ids in one call


def _decode_resumed(body: bytes) -> Resumed:
    _exact(body, 33, "RESUMED")
    if body[0] > 1:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, "RESUMED flag is not 0 or 1")
    return Resumed(bool(body[0]), body[1:])


def _decode_punch_request(body: bytes) -> PunchRequest:
    _at_least(body, 33, "PUNCH_REQUEST")
    host, port, end = _read_address(body, 32)
    if end != len(body):
        raise FrameError(ErrorCode.PROTOCOL_ERROR, "trailing bytes after PUNCH_REQUEST")
    return PunchRequest(body[:32], host, port)


def _decode_punch(body: bytes) -> Punch:
    _at_least(body, 33, "PUNCH")
    host, port, end = _read_address(body, 32)
    _exact(body[end:], _PUNCH_TAIL.size, "PUNCH tail")
    start_in, rtt = _PUNCH_TAIL.unpack_from(body, end)
    return Punch(body[:32], host, port, start_in, rtt)


def _decode_pex(body: bytes) -> Pex:
    _at_least(body, 1, "PEX")
    return Pex(body[0], body[1:])


_DECODERS: dict[int, Callable[[bytes], Frame]] = {
    FrameType.HELLO: _decode_hello,
    FrameType.HELLO_ACK: _decode_hello_ack,
    FrameType.AUTH_CHALLENGE: _fixed(32, "AUTH_CHALLENGE", lambda b: AuthChallenge(b)),
    FrameType.AUTH_RESPONSE: _fixed(104, "AUTH_RESPONSE", lambda b: AuthResponse(*_AUTH_RESPONSE.unpack(b))),
    FrameType.AUTH_OK: _fixed(32, "AUTH_OK", lambda b: AuthOk(b)),
    FrameType.PING: _fixed(20, "PING", lambda b: Ping(*_PING.unpack(b))),
    FrameType.PONG: _fixed(28, "PONG", lambda b: Pong(*_PONG.unpack(b))),
    FrameType.CLOSE: _decode_close,
    FrameType.ERROR: _decode_error,
    FrameType.FLOW_CONTROL: _fixed(13, "FLOW_CONTROL", lambda b: FlowControl(*_FLOW.unpack(b))),
    FrameType.WINDOW_UPDATE: _fixed(8, "WINDOW_UPDATE", lambda b: WindowUpdate(*_WINDOW.unpack(b))),
    FrameType.PEX: _decode_pex,
    FrameType.SEND: _decode_send,
    FrameType.DELIVER: _decode_deliver,
    FrameType.RECEIPT: _fixed(19, "RECEIPT", lambda b: Receipt(*_RECEIPT.unpack(b))),
    FrameType.RESUME: _fixed(64, "RESUME", lambda b: Resume(b[:32], b[32:])),
    FrameType.RESUMED: _decode_resumed,
    FrameType.SYNC_REQUEST: _fixed(10, "SYNC_REQUEST", lambda b: SyncRequest(*_SYNC_REQUEST.unpack(b))),
    FrameType.SYNC_RESPONSE: _decode_sync_response,
    FrameType.ACK: _decode_ack,
    FrameType.ONION: lambda b: Onion(b),
    FrameType.PUNCH_REQUEST: _decode_punch_request,
    FrameType.PUNCH: _decode_punch,
    FrameType.PADDING: lambda b: Padding(b),
}


def decode(data: bytes) -> Frame:
    """One frame from ``type ‖ body``."""
    if not data:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, "empty frame")
    decoder = _DECODERS.get(data[0])
    if decoder is None:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, f"unknown frame type 0x{data[0]:02x}")
    return decoder(data[1:])


#: What follows HELLO in an initiator's usual second flight: AUTH_CHALLENGE and AUTH_RESPONSE, each with
#: its length in the record.
_FLIGHT_TAIL = struct.Struct("!HB32sHB32sQ64s")
_CHALLENGE_SIZE, _RESPONSE_SIZE = 1 + 32, 1 + _AUTH_RESPONSE.size
_HELLO, _AUTH_CHALLENGE, _AUTH_RESPONSE_TYPE = int(FrameType.HELLO), int(FrameType.AUTH_CHALLENGE), int(
    FrameType.AUTH_RESPONSE)


def initiator_flight(plaintext: bytes) -> tuple[Hello, AuthChallenge, AuthResponse] | None:
    """The frames of a record that is exactly HELLO, AUTH_CHALLENGE, AUTH_RESPONSE, or None.

    What an initiator sends once the channel is up (see session.py), read at
    fixed offsets: the frames are those :func:`split_record` and
    :func:`decode` give for such a record. For anything else, malformed
    records included, None, and the caller reads the record frame by frame
    (which says what is wrong with it).
    """
    end = len(plaintext)
    if end < 3 or plaintext[2] != _HELLO:
        return None
    size = (plaintext[0] << 8) | plaintext[1]
    hello_end = 2 + size
    if size == 0 or size > MAX_FRAME or hello_end + _FLIGHT_TAIL.size != end:
        return None
    challenge_size, challenge_type, nonce, response_size, response_type, public_key, timestamp_ms, signature = \
        _FLIGHT_TAIL.unpack_from(plaintext, hello_end)
    if challenge_size != _CHALLENGE_SIZE or challenge_type != _AUTH_CHALLENGE \
            or response_size != _RESPONSE_SIZE or response_type != _AUTH_RESPONSE_TYPE:
        return None
    try:
        hello = _decode_hello(plaintext[3:hello_end])
    except FrameError:
        return None
    return hello, AuthChallenge(nonce), AuthResponse(public_key, timestamp_ms, signature)


def type_name(frame: Frame) -> str:
    """A metric label for a frame."""
    return _NAMES[type(frame)]


_NAMES = {
    Hello: "hello", HelloAck: "hello_ack", AuthChallenge: "auth_challenge", AuthResponse: "auth_response",
    AuthOk: "auth_ok", Ping: "ping", Pong: "pong", Close: "close", Error: "error", FlowControl: "flow_control",
    WindowUpdate: "window_update", Pex: "pex", Send: "send", Deliver: "deliver", Receipt: "receipt",
    Resume: "resume", Resumed: "resumed", SyncRequest: "sync_request", SyncResponse: "sync_response", Ack: "ack",
    Onion: "onion", PunchRequest: "punch_request", Punch: "punch", Padding: "padding",
}
FRAME_NAMES = tuple(_NAMES.values())
#: The metric label of each frame class (type_name's table, for loops that look it up themselves).
FRAME_NAME_OF = _NAMES
#: The metric label of each frame type, by its type byte.
TYPE_NAMES = {int(kind): kind.name.lower() for kind in FrameType}


# -- records ----------------------------------------------------------------


def pack_record(frames: list[bytes]) -> bytes:
    """Join encoded frames into one record plaintext; the caller keeps it under MAX_RECORD."""
    return b"".join(_U16.pack(len(f)) + f for f in frames)


def split_record(plaintext: bytes) -> Iterator[bytes]:
    """The encoded frames in a record plaintext."""
    offset, end = 0, len(plaintext)
    if end == 0:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, "empty record")
    while offset < end:
        if offset + 2 > end:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "frame length runs past the record")
        (size,) = _U16.unpack_from(plaintext, offset)
        if size == 0:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "zero-length frame")
        if size > MAX_FRAME:
            raise FrameError(ErrorCode.FRAME_TOO_LARGE, f"{size} bytes")
        offset += 2
        if offset + size > end:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "frame runs past the record")
        yield plaintext[offset : offset + size]
        offset += size
