"""KRPC messages (BEP 5, 43, 44), sans-IO: one datagram's bytes in, a typed message out, and back.

A KRPC message is one bencoded dictionary per UDP datagram: ``t`` the
transaction id, ``y`` the kind (``q`` query, ``r`` response, ``e`` error),
then ``q`` and ``a`` (method and arguments), ``r`` (response values) or
``e`` (``[code, message]``). :func:`decode` turns the bytes into one of the
frozen dataclasses below, :func:`encode` turns one back into bytes.

Tolerant of what real implementations add: the client version ``v``, the
read-only flag ``ro`` (BEP 43), the requester's address ``ip`` in responses
(BEP 42; a malformed one is ignored), BEP 32's ``want``, BEP 33's scrape
fields and any other unknown key are accepted and, unless listed here,
ignored. Strict on what a node must check: types, 20-byte ids and targets,
the compact node (26 / 38 bytes) and peer (6 / 18 bytes) formats, ports,
token and transaction-id lengths, and BEP 44's limits (``v`` at most
:data:`MAX_VALUE` bytes bencoded, 32-byte key, 64-byte signature, salt at
most :data:`MAX_SALT` bytes, sequence numbers that fit in a signed 64-bit
integer).

Bencoding is :mod:`fastbencode` (see ``docs/dht.md`` for why), which is
strict: unsorted or duplicate dictionary keys, leading zeros, trailing bytes
are refused. Anything a peer sends either decodes or raises
:class:`KrpcError`, nothing else. The error carries the KRPC error code to
answer with (203 for anything malformed) and, when the datagram was a query
whose transaction id could be read, that id, so the caller can answer it.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable, ClassVar, Union

import fastbencode

__all__ = [
    "Address",
    "AnnouncePeer",
    "ErrorCode",
    "ErrorMessage",
    "FindNode",
    "GetItem",
    "GetPeers",
    "ID_SIZE",
    "KrpcError",
    "MAX_MESSAGE",
    "MAX_SALT",
    "MAX_TID",
    "MAX_TOKEN",
    "MAX_VALUE",
    "Message",
    "NodeInfo",
    "Ping",
    "PutItem",
    "Query",
    "REASONS",
    "Response",
    "decode",
    "encode",
    "error_for",
    "pack_address",
    "pack_nodes",
    "unpack_address",
    "unpack_nodes",
]

#: Node ids, info-hashes and BEP 44 targets.
ID_SIZE = 20
#: Larger datagrams are refused before decoding (a BEP 44 put with a
#: 1000-byte value, a 64-byte salt and a signature is about 1300 bytes).
MAX_MESSAGE = 2048
#: Transaction ids longer than this are refused (real ones are 2 to 8 bytes);
#: the id is echoed in every answer, so it is bounded.
MAX_TID = 32
#: Tokens longer than this are refused (ours are 8 bytes; others use 4 to 20).
MAX_TOKEN = 128
#: BEP 44: the bencoded ``v`` of an item, at most.
MAX_VALUE = 1000
#: BEP 44: the salt of a mutable item, at most.
MAX_SALT = 64
#: Client version strings (``v``) longer than this are ignored.
MAX_CLIENT = 32
#: BEP 32 ``want`` lists longer than this are refused.
MAX_WANT = 4
#: Largest sequence number (BEP 44 uses a signed 64-bit integer).
MAX_SEQ = (1 << 63) - 1

Address = tuple[str, int]

NODE4_SIZE = ID_SIZE + 6
NODE6_SIZE = ID_SIZE + 18


class ErrorCode(IntEnum):
    """KRPC error codes: BEP 5 (201-204) and BEP 44 (205-207, 301, 302)."""

    GENERIC = 201
    SERVER = 202
    PROTOCOL = 203
    METHOD_UNKNOWN = 204
    VALUE_TOO_BIG = 205
    INVALID_SIGNATURE = 206
    SALT_TOO_BIG = 207
    CAS_MISMATCH = 301
    SEQ_TOO_LOW = 302

    @property
    def text(self) -> str:
        return _ERROR_TEXT[self]


_ERROR_TEXT = {
    ErrorCode.GENERIC: "Generic Error",
    ErrorCode.SERVER: "Server Error",
    ErrorCode.PROTOCOL: "Protocol Error",
    ErrorCode.METHOD_UNKNOWN: "Method Unknown",
    ErrorCode.VALUE_TOO_BIG: "Message (v field) too big",
    ErrorCode.INVALID_SIGNATURE: "Invalid signature",
    ErrorCode.SALT_TOO_BIG: "Salt (salt field) too big",
    ErrorCode.CAS_MISMATCH: "CAS mismatch",
    ErrorCode.SEQ_TOO_LOW: "Sequence number less than current",
}

#: Every ``reason`` a :class:`KrpcError` can carry: a fixed short word each,
#: fit for a metric label.
REASONS = frozenset(
    {
        # the envelope
        "too_large", "not_bencoded", "not_a_dict", "bad_tid", "bad_kind", "bad_method",
        "bad_args", "unknown_method", "bad_body", "bad_error",
        # fields
        "bad_id", "bad_target", "bad_port", "bad_token", "bad_want", "bad_nodes", "bad_values",
        "no_value", "value_too_big", "bad_key", "bad_signature", "bad_seq", "bad_salt",
        "salt_too_big", "bad_cas",
        # refusals by the query handler and storage
        "invalid_token", "invalid_signature", "cas_mismatch", "seq_too_low", "storage_full",
        "read_only",
    }
)


class KrpcError(Exception):
    """A message that is refused; ``code`` is the KRPC error code to answer with.

    ``reason`` is one word of :data:`REASONS`. ``tid`` is the transaction id
    when the message was a query whose ``t`` could be read (so it can be
    answered), else None: responses, errors and unreadable datagrams are
    never answered. ``method`` names the query's method when known.
    """

    def __init__(self, code: ErrorCode, reason: str, tid: bytes | None = None,
                 method: str | None = None) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{int(code)} {reason}")
        self.code = code
        self.reason = reason
        self.tid = tid
        self.method = method


# -- messages -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as the compact node format names it: id, IP address, port."""

    id: bytes
    ip: str
    port: int

    @property
    def address(self) -> Address:
        return (self.ip, self.port)


@dataclass(frozen=True, slots=True)
class Ping:
    """``ping``; ``want_relay`` (argument ``zr``, a Zentalk extension) asks a relay for its key."""

    method: ClassVar[str] = "ping"
    tid: bytes
    sender: bytes
    read_only: bool = False
    client: bytes | None = None
    want_relay: bool = False


@dataclass(frozen=True, slots=True)
class FindNode:
    method: ClassVar[str] = "find_node"
    tid: bytes
    sender: bytes
    target: bytes
    want: tuple[bytes, ...] = ()
    read_only: bool = False
    client: bytes | None = None


@dataclass(frozen=True, slots=True)
class GetPeers:
    method: ClassVar[str] = "get_peers"
    tid: bytes
    sender: bytes
    info_hash: bytes
    want: tuple[bytes, ...] = ()
    read_only: bool = False
    client: bytes | None = None


@dataclass(frozen=True, slots=True)
class AnnouncePeer:
    """``port`` is 0 when absent, which only an ``implied_port`` announce may be."""

    method: ClassVar[str] = "announce_peer"
    tid: bytes
    sender: bytes
    info_hash: bytes
    port: int
    token: bytes
    implied_port: bool = False
    seed: bool = False
    read_only: bool = False
    client: bytes | None = None


@dataclass(frozen=True, slots=True)
class GetItem:
    """BEP 44 ``get``; ``seq``: only send the value if newer than this.

    ``padding``: the length of a ``pad`` argument of zero bytes, which no
    node reads; it makes the query big enough for a node's amplification
    rule to let a whole item through in the answer (``docs/dht.md``).
    """

    method: ClassVar[str] = "get"
    tid: bytes
    sender: bytes
    target: bytes
    seq: int | None = None
    read_only: bool = False
    client: bytes | None = None
    padding: int = 0


@dataclass(frozen=True, slots=True)
class PutItem:
    """BEP 44 ``put``. ``value`` is ``v`` bencoded, exactly as signed.

    Immutable when ``key`` is None (then ``signature``, ``seq``, ``salt`` and
    ``cas`` are ignored on the wire and None / empty here).
    """

    method: ClassVar[str] = "put"
    tid: bytes
    sender: bytes
    token: bytes
    value: bytes
    key: bytes | None = None
    signature: bytes | None = None
    seq: int | None = None
    salt: bytes = b""
    cas: int | None = None
    read_only: bool = False
    client: bytes | None = None


@dataclass(frozen=True, slots=True)
class Response:
    """Any response: which fields are present depends on the query it answers.

    ``nodes`` / ``nodes6`` / ``values`` are None when absent (an empty tuple
    is an empty string or list on the wire). ``value`` is ``v`` bencoded.
    ``your_ip`` is the top-level ``ip`` (BEP 42): the address the responder
    saw the query come from. ``relay_key`` (``zr``, a Zentalk extension) is
    a relay's Ed25519 public key, sent only to a ``ping`` that asks for it.
    """

    tid: bytes
    sender: bytes
    nodes: tuple[NodeInfo, ...] | None = None
    nodes6: tuple[NodeInfo, ...] | None = None
    values: tuple[Address, ...] | None = None
    token: bytes | None = None
    value: bytes | None = None
    key: bytes | None = None
    signature: bytes | None = None
    seq: int | None = None
    your_ip: Address | None = None
    client: bytes | None = None
    relay_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    tid: bytes
    code: int
    text: str = ""
    client: bytes | None = None


Query = Union[Ping, FindNode, GetPeers, AnnouncePeer, GetItem, PutItem]
Message = Union[Ping, FindNode, GetPeers, AnnouncePeer, GetItem, PutItem, Response, ErrorMessage]

QUERY_TYPES: tuple[type, ...] = (Ping, FindNode, GetPeers, AnnouncePeer, GetItem, PutItem)


def error_for(error: KrpcError) -> ErrorMessage | None:
    """The error message that answers ``error``, or None if it is not to be answered."""
    if error.tid is None:
        return None
    return ErrorMessage(error.tid, int(error.code), error.code.text)


# -- compact formats ----------------------------------------------------------


def pack_address(ip: str, port: int) -> bytes:
    """Compact peer format: 4 or 16 address bytes, then the port (big-endian)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return socket.inet_pton(family, ip) + port.to_bytes(2, "big")


def unpack_address(data: bytes) -> Address:
    """The inverse of :func:`pack_address`; ``data`` is 6 or 18 bytes."""
    if len(data) == 6:
        return socket.inet_ntop(socket.AF_INET, data[:4]), int.from_bytes(data[4:], "big")
    if len(data) == 18:
        return socket.inet_ntop(socket.AF_INET6, data[:16]), int.from_bytes(data[16:], "big")
    raise ValueError("compact address is 6 or 18 bytes")


def pack_nodes(nodes) -> bytes:
    """Compact node info: id ‖ compact address, for each node, concatenated."""
    return b"".join(node.id + pack_address(node.ip, node.port) for node in nodes)


_NODE4 = struct.Struct("!20s4sH")
_NODE6 = struct.Struct("!20s16sH")


def unpack_nodes(data: bytes, size: int = NODE4_SIZE) -> tuple[NodeInfo, ...]:
    """``nodes`` (``size`` 26) or ``nodes6`` (38); raises ValueError on a bad length."""
    if len(data) % size:
        raise ValueError("compact node list of a wrong length")
    if size == NODE4_SIZE:
        ntoa = socket.inet_ntoa
        return tuple([NodeInfo(i, ntoa(a), p) for i, a, p in _NODE4.iter_unpack(data)])
    ntop = socket.inet_ntop
    v6 = socket.AF_INET6
    return tuple([NodeInfo(i, ntop(v6, a), p) for i, a, p in _NODE6.iter_unpack(data)])


# -- decoding -----------------------------------------------------------------


def decode(data: bytes) -> Message:
    """One datagram's bytes as a message; raises :class:`KrpcError` and nothing else."""
    if len(data) > MAX_MESSAGE:
        raise KrpcError(ErrorCode.PROTOCOL, "too_large")
    try:
        top = fastbencode.bdecode(bytes(data))
    except Exception:  # noqa: BLE001 - whatever the bencode library raises on garbage
        raise KrpcError(ErrorCode.PROTOCOL, "not_bencoded") from None
    if type(top) is not dict:
        raise KrpcError(ErrorCode.PROTOCOL, "not_a_dict")
    tid = top.get(b"t")
    if type(tid) is not bytes or len(tid) > MAX_TID:
        raise KrpcError(ErrorCode.PROTOCOL, "bad_tid")
    client = top.get(b"v")
    if type(client) is not bytes or len(client) > MAX_CLIENT:
        client = None  # tolerated: a version string is informational
    kind = top.get(b"y")
    if kind == b"q":
        return _decode_query(top, tid, client)
    if kind == b"r":
        return _decode_response(top, tid, client)
    if kind == b"e":
        return _decode_error(top, tid, client)
    raise KrpcError(ErrorCode.PROTOCOL, "bad_kind")


def _id(args: dict, key: bytes, reason: str, tid: bytes | None, method: str | None) -> bytes:
    value = args.get(key)
    if type(value) is not bytes or len(value) != ID_SIZE:
        raise KrpcError(ErrorCode.PROTOCOL, reason, tid, method)
    return value


def _flag(value: Any) -> bool:
    # Tolerant: BEP 43 and BEP 5 flags are the integer 1; anything else is "no".
    return type(value) is int and value == 1


def _seq(value: Any, reason: str, tid: bytes | None, method: str | None) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise KrpcError(ErrorCode.PROTOCOL, reason, tid, method)
    return value


def _want(args: dict, tid: bytes, method: str) -> tuple[bytes, ...]:
    want = args.get(b"want")
    if want is None:
        return ()
    if type(want) is not list or len(want) > MAX_WANT or any(type(w) is not bytes for w in want):
        raise KrpcError(ErrorCode.PROTOCOL, "bad_want", tid, method)
    return tuple(want)


def _token(value: Any, tid: bytes | None, method: str | None) -> bytes:
    if type(value) is not bytes or len(value) > MAX_TOKEN:
        raise KrpcError(ErrorCode.PROTOCOL, "bad_token", tid, method)
    return value


def _value(args: dict, tid: bytes | None, method: str | None) -> bytes:
    # fastbencode decodes canonical bencoding only, so re-encoding gives back
    # the bytes that were on the wire: the ones a signature covers.
    value = fastbencode.bencode(args[b"v"])
    if len(value) > MAX_VALUE:
        raise KrpcError(ErrorCode.VALUE_TOO_BIG, "value_too_big", tid, method)
    return value


def _q_ping(tid: bytes, sender: bytes, args: dict, ro: bool, client: bytes | None) -> Ping:
    return Ping(tid, sender, ro, client, _flag(args.get(b"zr")))


def _q_find_node(tid: bytes, sender: bytes, args: dict, ro: bool, client: bytes | None) -> FindNode:
    target = _id(args, b"target", "bad_target", tid, "find_node")
    return FindNode(tid, sender, target, _want(args, tid, "find_node"), ro, client)


def _q_get_peers(tid: bytes, sender: bytes, args: dict, ro: bool, client: bytes | None) -> GetPeers:
    info_hash = _id(args, b"info_hash", "bad_target", tid, "get_peers")
    return GetPeers(tid, sender, info_hash, _want(args, tid, "get_peers"), ro, client)


def _q_announce_peer(tid: bytes, sender: bytes, args: dict, ro: bool, client: bytes | None) -> AnnouncePeer:
    method = "announce_peer"
    info_hash = _id(args, b"info_hash", "bad_target", tid, method)
    implied = _flag(args.get(b"implied_port"))
    port = args.get(b"port")
    if port is None and implied:
        port = 0
    elif type(port) is not int or not (0 if implied else 1) <= port <= 0xFFFF:
        raise KrpcError(ErrorCode.PROTOCOL, "bad_port", tid, method)
    token = _token(args.get(b"token"), tid, method)
    return AnnouncePeer(tid, sender, info_hash, port, token, implied, _flag(args.get(b"seed")), ro, client)


def _q_get(tid: bytes, sender: bytes, args: dict, ro: bool, client: bytes | None) -> GetItem:
    target = _id(args, b"target", "bad_target", tid, "get")
    seq = args.get(b"seq")
    if seq is not None:
        seq = _seq(seq, "bad_seq", tid, "get")
    pad = args.get(b"pad")
    return GetItem(tid, sender, target, seq, ro, client, len(pad) if type(pad) is bytes else 0)


def _q_put(tid: bytes, sender: bytes, args: dict, ro: bool, client: bytes | None) -> PutItem:
    method = "put"
    token = _token(args.get(b"token"), tid, method)
    if b"v" not in args:
        raise KrpcError(ErrorCode.PROTOCOL, "no_value", tid, method)
    value = _value(args, tid, method)
    key = args.get(b"k")
    if key is None:
        return PutItem(tid, sender, token, value, read_only=ro, client=client)
    if type(key) is not bytes or len(key) != 32:
        raise KrpcError(ErrorCode.PROTOCOL, "bad_key", tid, method)
    signature = args.get(b"sig")
    if type(signature) is not bytes or len(signature) != 64:
        raise KrpcError(ErrorCode.PROTOCOL, "bad_signature", tid, method)
    seq = _seq(args.get(b"seq"), "bad_seq", tid, method)
    salt = args.get(b"salt", b"")
    if type(salt) is not bytes:
        raise KrpcError(ErrorCode.PROTOCOL, "bad_salt", tid, method)
    if len(salt) > MAX_SALT:
        raise KrpcError(ErrorCode.SALT_TOO_BIG, "salt_too_big", tid, method)
    cas = args.get(b"cas")
    if cas is not None:
        cas = _seq(cas, "bad_cas", tid, method)
    return PutItem(tid, sender, token, value, key, signature, seq, salt, cas, ro, client)


_QUERIES: dict[bytes, Callable[..., Query]] = {
    b"ping": _q_ping,
    b"find_node": _q_find_node,
    b"get_peers": _q_get_peers,
    b"announce_peer": _q_announce_peer,
    b"get": _q_get,
    b"put": _q_put,
}


def _decode_query(top: dict, tid: bytes, client: bytes | None) -> Query:
    method = top.get(b"q")
    if type(method) is not bytes:
        raise KrpcError(ErrorCode.PROTOCOL, "bad_method", tid)
    parse = _QUERIES.get(method)
    name = method.decode("ascii") if parse is not None else "unknown"
    args = top.get(b"a")
    if type(args) is not dict:
        raise KrpcError(ErrorCode.PROTOCOL, "bad_args", tid, name)
    sender = _id(args, b"id", "bad_id", tid, name)
    if parse is None:
        raise KrpcError(ErrorCode.METHOD_UNKNOWN, "unknown_method", tid, name)
    return parse(tid, sender, args, _flag(top.get(b"ro")), client)


def _nodes(body: dict, key: bytes, size: int) -> tuple[NodeInfo, ...] | None:
    data = body.get(key)
    if data is None:
        return None
    if type(data) is not bytes or len(data) % size:
        raise KrpcError(ErrorCode.PROTOCOL, "bad_nodes")
    return unpack_nodes(data, size)


def _decode_response(top: dict, tid: bytes, client: bytes | None) -> Response:
    body = top.get(b"r")
    if type(body) is not dict:
        raise KrpcError(ErrorCode.PROTOCOL, "bad_body")
    sender = _id(body, b"id", "bad_id", None, None)
    nodes = _nodes(body, b"nodes", NODE4_SIZE)
    nodes6 = _nodes(body, b"nodes6", NODE6_SIZE)
    values = body.get(b"values")
    if values is not None:
        if type(values) is not list or any(type(v) is not bytes or len(v) not in (6, 18) for v in values):
            raise KrpcError(ErrorCode.PROTOCOL, "bad_values")
        values = tuple(unpack_address(v) for v in values)
    token = body.get(b"token")
    if token is not None:
        token = _token(token, None, None)
    value = key = signature = seq = None
    if b"v" in body:
        value = _value(body, None, None)
    if b"k" in body:
        key = body[b"k"]
        if type(key) is not bytes or len(key) != 32:
            raise KrpcError(ErrorCode.PROTOCOL, "bad_key")
    if b"sig" in body:
        signature = body[b"sig"]
        if type(signature) is not bytes or len(signature) != 64:
            raise KrpcError(ErrorCode.PROTOCOL, "bad_signature")
    if b"seq" in body:
        seq = _seq(body[b"seq"], "bad_seq", None, None)
    your_ip = top.get(b"ip")
    if type(your_ip) is bytes and len(your_ip) in (6, 18):
        your_ip = unpack_address(your_ip)
    else:
        your_ip = None  # tolerated: BEP 42's hint is optional
    relay_key = body.get(b"zr")
    if type(relay_key) is not bytes or len(relay_key) != 32:
        relay_key = None  # an extension: ignored unless well-formed
    return Response(tid, sender, nodes, nodes6, values, token, value, key, signature, seq, your_ip, client,
                    relay_key)


def _decode_error(top: dict, tid: bytes, client: bytes | None) -> ErrorMessage:
    body = top.get(b"e")
    if type(body) is not list or not body or type(body[0]) is not int:
        raise KrpcError(ErrorCode.PROTOCOL, "bad_error")
    text = body[1] if len(body) > 1 and type(body[1]) is bytes else b""
    return ErrorMessage(tid, body[0], text[:256].decode("utf-8", "replace"), client)


# -- encoding -----------------------------------------------------------------


def _query(message: Query, args: dict) -> dict:
    args[b"id"] = message.sender
    top = {b"t": message.tid, b"y": b"q", b"q": message.method.encode("ascii"), b"a": args}
    if message.read_only:
        top[b"ro"] = 1
    if message.client is not None:
        top[b"v"] = message.client
    return top


def _e_ping(m: Ping) -> dict:
    return _query(m, {b"zr": 1} if m.want_relay else {})


def _e_find_node(m: FindNode) -> dict:
    args: dict = {b"target": m.target}
    if m.want:
        args[b"want"] = list(m.want)
    return _query(m, args)


def _e_get_peers(m: GetPeers) -> dict:
    args: dict = {b"info_hash": m.info_hash}
    if m.want:
        args[b"want"] = list(m.want)
    return _query(m, args)


def _e_announce_peer(m: AnnouncePeer) -> dict:
    args: dict = {b"info_hash": m.info_hash, b"port": m.port, b"token": m.token}
    if m.implied_port:
        args[b"implied_port"] = 1
    if m.seed:
        args[b"seed"] = 1
    return _query(m, args)


def _e_get(m: GetItem) -> dict:
    args: dict = {b"target": m.target}
    if m.seq is not None:
        args[b"seq"] = m.seq
    if m.padding:
        args[b"pad"] = bytes(m.padding)
    return _query(m, args)


def _e_put(m: PutItem) -> dict:
    args: dict = {b"token": m.token, b"v": fastbencode.Bencached(m.value)}
    if m.key is not None:
        args[b"k"] = m.key
        args[b"sig"] = m.signature
        args[b"seq"] = m.seq
        if m.salt:
            args[b"salt"] = m.salt
        if m.cas is not None:
            args[b"cas"] = m.cas
    return _query(m, args)


def _e_response(m: Response) -> dict:
    body: dict = {b"id": m.sender}
    if m.nodes is not None:
        body[b"nodes"] = pack_nodes(m.nodes)
    if m.nodes6 is not None:
        body[b"nodes6"] = pack_nodes(m.nodes6)
    if m.values is not None:
        body[b"values"] = [pack_address(ip, port) for ip, port in m.values]
    if m.token is not None:
        body[b"token"] = m.token
    if m.value is not None:
        body[b"v"] = fastbencode.Bencached(m.value)
    if m.key is not None:
        body[b"k"] = m.key
    if m.signature is not None:
        body[b"sig"] = m.signature
    if m.seq is not None:
        body[b"seq"] = m.seq
    if m.relay_key is not None:
        body[b"zr"] = m.relay_key
    top = {b"t": m.tid, b"y": b"r", b"r": body}
    if m.your_ip is not None:
        top[b"ip"] = pack_address(*m.your_ip)
    if m.client is not None:
        top[b"v"] = m.client
    return top


def _e_error(m: ErrorMessage) -> dict:
    top = {b"t": m.tid, b"y": b"e", b"e": [m.code, m.text.encode("utf-8")]}
    if m.client is not None:
        top[b"v"] = m.client
    return top


_ENCODERS: dict[type, Callable[[Any], dict]] = {
    Ping: _e_ping,
    FindNode: _e_find_node,
    GetPeers: _e_get_peers,
    AnnouncePeer: _e_announce_peer,
    GetItem: _e_get,
    PutItem: _e_put,
    Response: _e_response,
    ErrorMessage: _e_error,
}


def encode(message: Message) -> bytes:
    """The datagram for ``message`` (keys sorted, as bencoding requires)."""
    return fastbencode.bencode(_ENCODERS[type(message)](message))
