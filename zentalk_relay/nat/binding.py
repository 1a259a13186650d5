"""The STUN Binding responder, sans-IO: a request's bytes and source in, a reply out.

Binding is the hottest path of the NAT service (every ICE agent sends a few
per candidate pair, and keep-alives forever), so a plain request with no
attributes is answered without building a :class:`~.stun.Message`. Anything
else goes through the full codec. Counts are plain integers, read by the
metrics module at scrape time, so the hot path takes no lock.
"""

from __future__ import annotations

import socket
import struct
import zlib
from collections import defaultdict
from dataclasses import dataclass, field

from . import stun
from .stun import Attr, MessageClass, Method, StunError

_METHOD_NAMES = {int(m): m.name.lower() for m in Method}
_COOKIE = stun.MAGIC_COOKIE_BYTES
_PLAIN_BINDING = b"\x00\x01\x00\x00" + _COOKIE
_XOR_PORT = stun.MAGIC_COOKIE >> 16
#: A whole IPv4 success up to SOFTWARE: header, transaction id, XOR-MAPPED-ADDRESS.
_SUCCESS_V4 = struct.Struct("!HHI12sHHBBHI")
_FINGERPRINT = struct.Struct("!HHI")
# Plain ints and bound functions: enum members and module attributes cost
# a lookup each on the hot path.
_COOKIE_INT = stun.MAGIC_COOKIE
_XMA = int(Attr.XOR_MAPPED_ADDRESS)
_FP = int(Attr.FINGERPRINT)
_FP_XOR = stun.FINGERPRINT_XOR
inet_aton = socket.inet_aton
crc32 = zlib.crc32
#: At most this many types echoed in UNKNOWN-ATTRIBUTES, so that an error
#: answer is never larger than the request that caused it.
MAX_UNKNOWN_ECHOED = 8
#: Why a datagram got no answer: the codec's reasons, and responses sent to us.
DROP_REASONS = stun.DECODE_ERRORS + ("unexpected_response",)


@dataclass(slots=True)
class BindingStats:
    """What the responder did, by (method, result) and by drop reason."""

    requests: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    dropped: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: Successes of the fast path, kept apart because an attribute increment
    #: is several times cheaper than a dict update keyed by a tuple.
    fast_success: int = 0

    def request_counts(self) -> dict[tuple[str, str], int]:
        counts = dict(self.requests)
        counts["binding", "success"] = counts.get(("binding", "success"), 0) + self.fast_success
        return counts


def _plain_host(host: str) -> str:
    """Strip an IPv6 zone and unwrap an IPv4-mapped source address."""
    if "%" in host:
        host = host.split("%", 1)[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host


def _raw(attributes: tuple[tuple[int, bytes], ...]) -> bytes:
    return b"".join(struct.pack("!HH", t, len(v)) + v + b"\x00" * (-len(v) % 4) for t, v in attributes)


class BindingResponder:
    """Answers Binding requests as RFC 8489 (and RFC 3489 for classic clients) say.

    With ``origin`` and ``other`` (RFC 5780, see :class:`BehaviourResponder`)
    every success also carries RESPONSE-ORIGIN and OTHER-ADDRESS; they are
    constant per socket, so the fast path stays a single pack.
    """

    def __init__(self, software: str = "", stats: BindingStats | None = None,
                 origin: tuple[str, int] | None = None, other: tuple[str, int] | None = None) -> None:
        self.stats = stats if stats is not None else BindingStats()
        value = software.encode("utf-8")[:763]  # RFC 8489: fewer than 128 characters
        self._software: tuple[tuple[int, bytes], ...] = ((Attr.SOFTWARE, value),) if value else ()
        self._behaviour: tuple[tuple[int, bytes], ...] = ()
        if origin is not None and other is not None:
            self._behaviour = ((Attr.OTHER_ADDRESS, stun.encode_address(*other)),
                               (Attr.RESPONSE_ORIGIN, stun.encode_address(*origin)))
        self._software_raw = _raw(self._behaviour + self._software)
        self._length_v4 = 12 + len(self._software_raw) + 8
        self._length_v6 = 24 + len(self._software_raw) + 8

    def respond(self, data: bytes, source: tuple) -> bytes | None:
        """The bytes to send back to ``source``, or None to stay silent."""
        if len(data) == 20 and data.startswith(_PLAIN_BINDING):
            self.stats.fast_success += 1
            host = source[0]
            if ":" in host:
                host = _plain_host(host)
                if ":" in host:
                    return self._success_v6(data[8:20], host, source[1])
            body = _SUCCESS_V4.pack(
                0x0101, self._length_v4, _COOKIE_INT, data[8:20], _XMA, 8, 0, 1,
                source[1] ^ _XOR_PORT, int.from_bytes(inet_aton(host), "big") ^ _COOKIE_INT,
            ) + self._software_raw
            return body + _FINGERPRINT.pack(_FP, 4, crc32(body) ^ _FP_XOR)
        return self._respond_full(data, _plain_host(source[0]), source[1])

    def _success_v6(self, tid: bytes, host: str, port: int) -> bytes:
        body = (
            struct.pack("!HHI", 0x0101, self._length_v6, stun.MAGIC_COOKIE)
            + tid
            + struct.pack("!HH", Attr.XOR_MAPPED_ADDRESS, 20)
            + stun.encode_xor_address(host, port, tid)
            + self._software_raw
        )
        return body + _FINGERPRINT.pack(_FP, 4, crc32(body) ^ _FP_XOR)

    def _respond_full(self, data: bytes, host: str, port: int) -> bytes | None:
        try:
            message = stun.decode(data)
        except StunError as error:
            self.stats.dropped[error.reason] += 1
            return None
        return self.answer(message, host, port)

    def answer(self, message: stun.Message, host: str, port: int, change_honoured: bool = False) -> bytes | None:
        """The reply to a decoded message from ``host:port``.

        ``change_honoured``: the caller sends the reply from the socket a
        CHANGE-REQUEST asked for (RFC 5780), so the attribute is understood.
        """
        method = _METHOD_NAMES.get(message.method, "other")
        if message.cls is MessageClass.INDICATION:
            # A Binding indication is a keep-alive: RFC 8489 wants no answer.
            self.stats.requests[method, "indication"] += 1
            return None
        if message.cls is not MessageClass.REQUEST:
            self.stats.dropped["unexpected_response"] += 1
            return None
        if message.method != Method.BINDING:
            self.stats.requests[method, "error"] += 1
            return self._error(message, 400, "Unsupported method")
        unknown = message.unknown_required()
        if message.find(Attr.CHANGE_REQUEST) is not None and not change_honoured:
            # RFC 5780: without an alternate address the server cannot honour
            # CHANGE-REQUEST and must say so with 420.
            unknown.append(Attr.CHANGE_REQUEST)
        if unknown:
            self.stats.requests[method, "error"] += 1
            return self._error(
                message,
                420,
                "Unknown comprehension-required attribute",
                ((Attr.UNKNOWN_ATTRIBUTES, stun.encode_unknown_attributes(unknown[:MAX_UNKNOWN_ECHOED])),),
            )
        self.stats.requests[method, "success"] += 1
        if message.classic:
            mapped = ((Attr.MAPPED_ADDRESS, stun.encode_address(host, port)),)
        else:
            mapped = ((Attr.XOR_MAPPED_ADDRESS, stun.encode_xor_address(host, port, message.transaction_id)),)
        return stun.encode(
            Method.BINDING, MessageClass.SUCCESS, message.transaction_id, mapped + self._behaviour + self._software
        )

    def _error(
        self, message: stun.Message, code: int, reason: str, extra: tuple[tuple[int, bytes], ...] = ()
    ) -> bytes:
        attributes = ((Attr.ERROR_CODE, stun.encode_error_code(code, reason)),) + extra + self._software
        return stun.encode(message.method, MessageClass.ERROR, message.transaction_id, attributes)


#: RFC 5780 CHANGE-REQUEST flags.
CHANGE_IP = 0x04
CHANGE_PORT = 0x02


class BehaviourResponder:
    """RFC 5780 behaviour discovery over four sockets.

    ``addresses`` are the sockets' addresses indexed by role: 0 is the
    primary A:P1, 1 is A:P2 (alternate port), 2 is B:P1 (alternate IP), 3 is
    B:P2. Flipping bit 1 of a role changes the IP, flipping bit 0 the port.
    A success names in OTHER-ADDRESS the address that differs in both IP and
    port from the one the request reached, and in RESPONSE-ORIGIN the socket
    that sends it. :meth:`respond` returns the reply and the role of the
    socket to send it from.
    """

    def __init__(self, software: str, stats: BindingStats, addresses: list[tuple[str, int]]) -> None:
        if len(addresses) != 4:
            raise ValueError("RFC 5780 needs four addresses: A:P1, A:P2, B:P1, B:P2")
        self.addresses = list(addresses)
        self.stats = stats
        self._responders = [
            BindingResponder(software, stats, origin=addresses[role], other=addresses[role ^ 3]) for role in range(4)
        ]
        # A reply sent from another socket still names the other address of
        # the socket the request reached: [receiving role][sending role].
        self._changed = [
            [BindingResponder(software, stats, origin=addresses[target], other=addresses[role ^ 3])
             for target in range(4)]
            for role in range(4)
        ]

    def respond(self, data: bytes, source: tuple, role: int) -> tuple[bytes, int] | None:
        responder = self._responders[role]
        if len(data) == 20:  # no attributes, so no CHANGE-REQUEST: the fast path
            reply = responder.respond(data, source)
            return None if reply is None else (reply, role)
        try:
            message = stun.decode(data)
        except StunError as error:
            self.stats.dropped[error.reason] += 1
            return None
        value = message.get(Attr.CHANGE_REQUEST)
        host, port = _plain_host(source[0]), source[1]
        if value is None or message.cls is not MessageClass.REQUEST or message.method != Method.BINDING:
            reply = responder.answer(message, host, port)
            return None if reply is None else (reply, role)
        if len(value) != 4:
            self.stats.requests["binding", "error"] += 1
            return responder._error(message, 400, "Bad CHANGE-REQUEST"), role
        flags = value[3]
        target = role ^ ((2 if flags & CHANGE_IP else 0) | (1 if flags & CHANGE_PORT else 0))
        reply = self._changed[role][target].answer(message, host, port, change_honoured=True)
        return None if reply is None else (reply, target)
