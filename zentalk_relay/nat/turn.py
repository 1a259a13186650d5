"""TURN allocations (RFC 8656), sans-IO.

:class:`TurnServer` is the whole server-side state machine: bytes from a
client with the client's 5-tuple and the current time go in; actions come
out (a message for a client, a datagram for a peer, relayed sockets to open
or close). Time is passed in, randomness comes from an injected
``random.Random``, and :meth:`TurnServer.next_deadline` tells the adapter
when to call :meth:`TurnServer.expire` next. Nothing here touches a socket.

Opening a relayed socket is a round trip through the adapter: an Allocate
request that passes every check yields :class:`OpenRelays` with candidate
ports from the configured range; the adapter binds the first that is free
and reports back with :meth:`TurnServer.relays_opened`, which yields the
success response (or a 508 when no port could be bound).

The two data paths are separate, allocation-free methods because they run
once per relayed packet: :meth:`TurnServer.channel_from_client` for
ChannelData a client sends, and :meth:`TurnServer.from_peer` for a datagram
arriving on a relayed socket. Every lifetime is checked against ``now`` at
use, so a late timer never lets an expired permission or channel through;
:meth:`TurnServer.expire` only frees what has expired.

Authentication is RFC 8489's long-term mechanism (section 9.2.4, in its
order of checks) with MESSAGE-INTEGRITY and MESSAGE-INTEGRITY-SHA256, the
MD5 and SHA-256 password algorithms, USERHASH, and stateless nonces that
expire (438). Every refusal is counted by reason in :class:`TurnStats`.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
import socket
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Union

from ..ratelimit import Rate, TokenBucket
from . import stun
from .credentials import (
    ALGORITHM_MD5,
    ALGORITHM_NAMES,
    ALGORITHM_SHA256,
    Credentials,
    NonceIssuer,
    Principal,
    password_algorithms_value,
)
from .policy import PeerPolicy
from .stun import Attr, MessageClass, Method, StunError

UDP_PROTOCOL = 17
CHANNEL_MIN = 0x4000
#: RFC 8656 section 12: 0x4000-0x4FFF; 0x5000-0x7FFF became reserved (RFC 7983
#: demultiplexing). RFC 5766 allowed up to 0x7FFF, and some clients still pick
#: numbers there (coturn's turnutils_uclient does), hence TurnSettings.channel_max.
CHANNEL_MAX = 0x4FFF
CHANNEL_MAX_RFC5766 = 0x7FFF
#: RFC 8656 section 9: permissions last 300 s, channels 600 s, and a channel
#: number or peer stays reserved for 300 s after its binding expires.
PERMISSION_LIFETIME = 300.0
CHANNEL_LIFETIME = 600.0
CHANNEL_REUSE_DELAY = 300.0
#: RFC 8656 section 7.2: a RESERVATION-TOKEN holds the odd port of an even pair for 30 s.
RESERVATION_LIFETIME = 30.0
#: Permissions one allocation may hold; more gets 508. A WebRTC session needs a handful.
MAX_PERMISSIONS = 256
#: Candidate ports offered to the adapter per relayed socket.
PORT_CANDIDATES = 16
#: Sources whose 401 rate is tracked; the oldest is forgotten beyond this.
MAX_CHALLENGE_SOURCES = 10_000
#: At most this many types echoed in UNKNOWN-ATTRIBUTES.
MAX_UNKNOWN_ECHOED = 8
#: A token bucket holds this many seconds of its rate, so short bursts pass
#: and the average over a few seconds stays within a few percent of the rate.
BURST_SECONDS = 0.1
#: ...but never less than this many bytes, so that one full-size packet fits.
MIN_BURST_BYTES = 3000

FAMILY_IPV4 = 4
FAMILY_IPV6 = 6
_WIRE_FAMILY = {stun.FAMILY_IPV4: FAMILY_IPV4, stun.FAMILY_IPV6: FAMILY_IPV6}

ERRORS = {
    300: ("try_alternate", "Try Alternate"),
    400: ("bad_request", "Bad Request"),
    401: ("unauthenticated", "Unauthenticated"),
    403: ("forbidden", "Forbidden"),
    420: ("unknown_attribute", "Unknown Attribute"),
    437: ("allocation_mismatch", "Allocation Mismatch"),
    438: ("stale_nonce", "Stale Nonce"),
    440: ("address_family", "Address Family not Supported"),
    441: ("wrong_credentials", "Wrong Credentials"),
    442: ("unsupported_transport", "Unsupported Transport Protocol"),
    443: ("peer_family_mismatch", "Peer Address Family Mismatch"),
    486: ("quota", "Allocation Quota Reached"),
    508: ("insufficient_capacity", "Insufficient Capacity"),
}
#: Every result label of ``TurnStats.requests``.
RESULTS = ("success",) + tuple(name for name, _ in ERRORS.values())
METHODS = ("allocate", "refresh", "create_permission", "channel_bind", "other")
#: Why a client's or a peer's packet was dropped without an answer.
DROP_REASONS = stun.DECODE_ERRORS + (
    "classic_stun", "unexpected_response", "unexpected_indication", "bad_indication", "no_allocation",
    "no_channel", "no_permission", "bad_channel_data", "peer_family", "dont_fragment",
    # counted by the adapters
    "send_failed", "client_backpressure", "bad_framing",
)
#: Why a request or a packet was refused by policy or a limit.
REFUSAL_REASONS = (
    "user_quota", "total_quota", "relay_ports", "permissions_full", "bandwidth", "total_bandwidth",
    "challenge_rate",
) + tuple(f"peer_{reason}" for reason in (
    "unspecified", "loopback", "private", "link_local", "multicast", "broadcast", "reserved", "ipv4_mapped",
    "ipv4_compatible", "nat64", "6to4", "teredo", "own_address", "operator_denied", "bad_address"))

_METHOD_NAMES = {
    Method.ALLOCATE: "allocate",
    Method.REFRESH: "refresh",
    Method.CREATE_PERMISSION: "create_permission",
    Method.CHANNEL_BIND: "channel_bind",
}
_CHANNEL_HEADER = struct.Struct("!HH")
_U32 = struct.Struct("!I")
_COOKIE = stun.MAGIC_COOKIE_BYTES

ClientKey = tuple  # (transport, local (host, port), remote (host, port))
RelayKey = tuple  # the relayed socket's bound (host, port)
Address = tuple  # (host, port)


# -- settings, stats, actions -----------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayAddress:
    """Where relayed sockets of one family are bound, and the address told to clients."""

    bind: str
    advertised: str


@dataclass(frozen=True, slots=True)
class TurnSettings:
    realm: str = "zentalk"
    software: str = ""
    default_lifetime: int = 600
    max_lifetime: int = 3600
    allocations_per_user: int = 5
    max_allocations: int = 10_000
    #: Bytes per second, each direction of one allocation; 0: no limit.
    allocation_bandwidth: int = 125_000
    #: Bytes per second, each direction over every allocation; 0: no limit.
    total_bandwidth: int = 0
    port_min: int = 49152
    port_max: int = 65535
    relays: dict = field(default_factory=dict)  # family (4 or 6) -> RelayAddress
    challenge_rate: Rate = Rate(10, 1.0, 20)
    #: CHANNEL_MAX (RFC 8656), or CHANNEL_MAX_RFC5766 to accept RFC 5766 clients.
    channel_max: int = CHANNEL_MAX


@dataclass(slots=True)
class TurnStats:
    """What the TURN server did; plain integers read by the metrics at scrape time."""

    requests: defaultdict = field(default_factory=lambda: defaultdict(int))  # (method, result)
    dropped: defaultdict = field(default_factory=lambda: defaultdict(int))  # reason
    refusals: defaultdict = field(default_factory=lambda: defaultdict(int))  # reason
    to_peer_packets: int = 0
    to_peer_bytes: int = 0
    to_client_packets: int = 0
    to_client_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ToClient:
    """Send ``data`` to a client (one datagram, or a framed message on its stream)."""

    client: ClientKey
    data: bytes


@dataclass(frozen=True, slots=True)
class ToPeer:
    """Send ``data`` from the relayed socket ``relay`` to ``peer``."""

    relay: RelayKey
    peer: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class RelayBind:
    family: int
    host: str
    #: Ports to try in order; with ``pair``, each with the port after it.
    ports: tuple[int, ...]
    pair: bool = False


@dataclass(frozen=True, slots=True)
class OpenRelays:
    """Bind one UDP socket per entry of ``binds`` for ``client``; answer with ``relays_opened(token, ...)``."""

    token: int
    client: ClientKey
    binds: tuple[RelayBind, ...]


@dataclass(frozen=True, slots=True)
class CloseRelay:
    relay: RelayKey


Action = Union[ToClient, ToPeer, OpenRelays, CloseRelay]


# -- state --------------------------------------------------------------------


class _Channel:
    __slots__ = ("number", "peer", "host", "expires")

    def __init__(self, number: int, peer: Address, expires: float) -> None:
        self.number = number
        self.peer = peer
        self.host = peer[0]
        self.expires = expires


class _Bucket:
    """Bytes per second with a bounded burst; may run into debt by one packet."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(rate * BURST_SECONDS, MIN_BURST_BYTES)
        self.tokens = self.burst
        self.stamp = now

    def take(self, size: int, now: float) -> bool:
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens <= 0:
            self.tokens = tokens
            return False
        self.tokens = tokens - size
        return True


class Allocation:
    __slots__ = (
        "client", "username", "relays", "advertised", "expires", "permissions", "channels", "peers",
        "allocate_tid", "allocate_response", "up", "down", "stream", "dead", "scheduled",
    )

    def __init__(self, client: ClientKey, username: str, relays: dict, advertised: dict, expires: float) -> None:
        self.client = client
        self.username = username
        self.relays = relays  # family -> RelayKey
        self.advertised = advertised  # family -> (host, port)
        self.expires = expires
        self.permissions: dict[str, float] = {}
        self.channels: dict[int, _Channel] = {}
        self.peers: dict[Address, _Channel] = {}
        self.allocate_tid = b""
        self.allocate_response = b""
        self.up: _Bucket | None = None
        self.down: _Bucket | None = None
        self.stream = client[0] != "udp"
        self.dead = False
        self.scheduled = float("inf")

    def active_permissions(self, now: float) -> int:
        return sum(1 for expiry in self.permissions.values() if expiry > now)

    def active_channels(self, now: float) -> int:
        return sum(1 for channel in self.channels.values() if channel.expires > now)


class _Reservation:
    __slots__ = ("token", "relay", "family", "expires", "dead", "scheduled")

    def __init__(self, token: bytes, relay: RelayKey, family: int, expires: float) -> None:
        self.token = token
        self.relay = relay
        self.family = family
        self.expires = expires
        self.dead = False
        self.scheduled = float("inf")


@dataclass(slots=True)
class _Pending:
    client: ClientKey
    principal: Principal
    request: stun.Message
    sha256: bool
    lifetime: float
    families: tuple[int, ...]
    reserve: bool
    address_error: int


@dataclass(slots=True)
class _Auth:
    principal: Principal
    sha256: bool


def _normal_host(host: str) -> str:
    """The form the kernel reports a source in: zone dropped, IPv4-mapped unwrapped, IPv6 canonical."""
    if "%" in host:
        host = host.split("%", 1)[0]
    if ":" in host:
        if host.startswith("::ffff:") and "." in host:
            return host[7:]
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, host))
    return host


def _peer_host(host: str) -> str:
    """A peer's address as the kernel reports datagram sources: IPv6 canonical, nothing unwrapped.

    An IPv4-mapped peer stays an IPv6 address, so that the policy sees (and refuses) it.
    """
    if ":" in host:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, host))
    return host


def _protected(message: stun.Message) -> stun.Message:
    """The message without what follows MESSAGE-INTEGRITY(-SHA256), which the MAC does not cover.

    RFC 8489 section 14.5: attributes after MESSAGE-INTEGRITY are ignored
    (but FINGERPRINT and MESSAGE-INTEGRITY-SHA256); anything else there could
    have been added by anyone on the path.
    """
    for index, attribute in enumerate(message.attributes):
        if attribute.type in (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256):
            return dataclasses.replace(message, attributes=message.attributes[:index])
    return message


def _family_of(host: str) -> int:
    return FAMILY_IPV6 if ":" in host else FAMILY_IPV4


# -- the server ---------------------------------------------------------------


class TurnServer:
    """Every allocation of one node, keyed by the client's 5-tuple and by relayed address."""

    def __init__(
        self,
        settings: TurnSettings,
        credentials: Credentials,
        nonces: NonceIssuer,
        policy: PeerPolicy,
        rng: random.Random,
        stats: TurnStats | None = None,
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        #: Set when the node drains before it stops: new allocations are sent to
        #: ``alternate`` (300 Try Alternate) if one is configured, else refused (508).
        self.draining = False
        self.alternate: tuple[str, int] | None = None
        self.nonces = nonces
        self.policy = policy
        self.stats = stats if stats is not None else TurnStats()
        self._rng = rng
        software = settings.software.encode("utf-8")[:763]
        self._software: tuple = ((Attr.SOFTWARE, software),) if software else ()
        self._realm = settings.realm.encode("utf-8")
        self._algorithms = password_algorithms_value()
        self._by_client: dict[ClientKey, Allocation] = {}
        self._by_relay: dict[RelayKey, Allocation] = {}
        self._per_user: defaultdict[str, int] = defaultdict(int)
        self._pending: dict[int, _Pending] = {}
        self._reservations: dict[bytes, _Reservation] = {}
        self._reserved_relays: set[RelayKey] = set()
        self._heap: list = []
        self._seq = 0
        self._challenges: dict[str, TokenBucket] = {}
        self._total_up: _Bucket | None = None
        self._total_down: _Bucket | None = None

    # -- introspection for metrics and tests --------------------------------

    def allocation_for(self, client: ClientKey) -> Allocation | None:
        return self._by_client.get(client)

    def relay_client(self, relay: RelayKey) -> ClientKey | None:
        """The client whose allocation a relayed socket serves, if any."""
        allocation = self._by_relay.get(relay)
        return None if allocation is None else allocation.client

    @property
    def allocation_count(self) -> int:
        return len(self._by_client)

    def gauges(self, now: float) -> dict[str, dict]:
        """Live counts at ``now``: allocations by (transport, family), permissions, channels."""
        allocations: defaultdict[tuple[str, str], int] = defaultdict(int)
        permissions = channels = 0
        for allocation in self._by_client.values():
            if allocation.expires <= now:
                continue
            for family in allocation.relays:
                allocations[allocation.client[0], f"ipv{family}"] += 1
            permissions += allocation.active_permissions(now)
            channels += allocation.active_channels(now)
        return {"allocations": dict(allocations), "permissions": permissions, "channels": channels}

    # -- the client side ----------------------------------------------------

    def handle(self, client: ClientKey, data: bytes, now: float) -> list:
        """A STUN message from a client (not Binding: the adapter answers those)."""
        try:
            message = stun.decode(data)
        except StunError as error:
            self.stats.dropped[error.reason] += 1
            return []
        if message.classic:
            self.stats.dropped["classic_stun"] += 1
            return []
        if message.cls is MessageClass.REQUEST:
            return self._request(client, message, now)
        if message.cls is MessageClass.INDICATION and message.method == Method.SEND:
            return self._send_indication(client, message, now)
        if message.cls is MessageClass.INDICATION:
            self.stats.dropped["unexpected_indication"] += 1
        else:
            self.stats.dropped["unexpected_response"] += 1
        return []

    def channel_from_client(self, client: ClientKey, data: bytes, now: float):
        """ChannelData from a client: ``(relay, payload, peer)`` to send, or None to drop."""
        allocation = self._by_client.get(client)
        if allocation is None or allocation.expires <= now:
            self.stats.dropped["no_allocation"] += 1
            return None
        if len(data) < 4:
            self.stats.dropped["bad_channel_data"] += 1
            return None
        number, length = _CHANNEL_HEADER.unpack_from(data)
        if length > len(data) - 4:
            self.stats.dropped["bad_channel_data"] += 1
            return None
        channel = allocation.channels.get(number)
        if channel is None or channel.expires <= now:
            self.stats.dropped["no_channel"] += 1
            return None
        if allocation.permissions.get(channel.host, 0.0) <= now:
            self.stats.dropped["no_permission"] += 1
            return None
        if allocation.up is not None and not allocation.up.take(length, now):
            self.stats.refusals["bandwidth"] += 1
            return None
        if self._total_up is not None and not self._total_up.take(length, now):
            self.stats.refusals["total_bandwidth"] += 1
            return None
        stats = self.stats
        stats.to_peer_packets += 1
        stats.to_peer_bytes += length
        peer = channel.peer
        return allocation.relays[FAMILY_IPV6 if ":" in channel.host else FAMILY_IPV4], data[4:4 + length], peer

    def client_closed(self, client: ClientKey, now: float) -> list:
        """The client's stream closed: its allocation goes with it (RFC 8656 section 3.1)."""
        allocation = self._by_client.get(client)
        return [] if allocation is None else self._delete(allocation)

    # -- the peer side ------------------------------------------------------

    def from_peer(self, relay: RelayKey, data: bytes, peer: Address, now: float) -> bytes | None:
        """A datagram from ``peer`` on a relayed socket: the bytes for the client, or None to drop."""
        allocation = self._by_relay.get(relay)
        if allocation is None or allocation.expires <= now:
            self.stats.dropped["no_allocation"] += 1
            return None
        host = peer[0]
        if allocation.permissions.get(host, 0.0) <= now:
            self.stats.dropped["no_permission"] += 1
            return None
        size = len(data)
        if allocation.down is not None and not allocation.down.take(size, now):
            self.stats.refusals["bandwidth"] += 1
            return None
        if self._total_down is not None and not self._total_down.take(size, now):
            self.stats.refusals["total_bandwidth"] += 1
            return None
        stats = self.stats
        stats.to_client_packets += 1
        stats.to_client_bytes += size
        channel = allocation.peers.get(peer)
        if channel is not None and channel.expires > now:
            out = _CHANNEL_HEADER.pack(channel.number, size) + data
            if allocation.stream and size & 3:
                out += b"\x00" * (4 - (size & 3))
            return out
        tid = self._rng.randbytes(12)
        return stun.encode(Method.DATA, MessageClass.INDICATION, tid, (
            (Attr.XOR_PEER_ADDRESS, stun.encode_xor_address(host, peer[1], tid)),
            (Attr.DATA, data),
        ), fingerprint=False)

    # -- relayed sockets ------------------------------------------------------

    def relays_opened(self, token: int, ports: list, now: float) -> list:
        """The adapter's answer to :class:`OpenRelays`: the port bound per bind, None where none was."""
        pending = self._pending.pop(token, None)
        if pending is None:  # not a token this server gave out
            return []
        request = pending.request
        families = pending.families
        bound = {family: port for family, port in zip(families, ports) if port is not None}
        if families[0] not in bound:
            closing = [CloseRelay((self.settings.relays[f].bind, p)) for f, p in bound.items()]
            self.stats.refusals["relay_ports"] += 1
            return closing + self._error(pending.client, request, 508, pending.principal.key, pending.sha256)
        attributes: list = []
        relays = {}
        advertised = {}
        for family, port in bound.items():
            relay = self.settings.relays[family]
            relays[family] = (relay.bind, port)
            advertised[family] = (relay.advertised, port)
            attributes.append((Attr.XOR_RELAYED_ADDRESS,
                               stun.encode_xor_address(relay.advertised, port, request.transaction_id)))
        address_error = pending.address_error
        if len(families) > 1 and families[1] not in bound and not address_error:
            address_error = 508
        allocation = self._new_allocation(pending, relays, advertised, now)
        attributes.append((Attr.LIFETIME, _U32.pack(int(pending.lifetime))))
        if pending.reserve:
            family = families[0]
            reserved = (relays[family][0], relays[family][1] + 1)
            reservation_token = self._rng.randbytes(8)
            reservation = _Reservation(reservation_token, reserved, family, now + RESERVATION_LIFETIME)
            self._reservations[reservation_token] = reservation
            self._reserved_relays.add(reserved)
            self._schedule(reservation, reservation.expires)
            attributes.append((Attr.RESERVATION_TOKEN, reservation_token))
        host, port = pending.client[2][:2]
        attributes.append((Attr.XOR_MAPPED_ADDRESS,
                           stun.encode_xor_address(_normal_host(host), port, request.transaction_id)))
        if address_error:
            family_byte = stun.FAMILY_IPV6 if families[1] == FAMILY_IPV6 else stun.FAMILY_IPV4
            code_value = stun.encode_error_code(address_error, ERRORS[address_error][1])
            attributes.append((Attr.ADDRESS_ERROR_CODE, bytes([family_byte]) + code_value[1:]))
        response = self._success(request, attributes, pending.principal.key, pending.sha256)
        allocation.allocate_tid = request.transaction_id
        allocation.allocate_response = response
        return [ToClient(pending.client, response)]

    # -- time -----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`expire` has something to do next, or None."""
        heap = self._heap
        while heap:
            when, _, item = heap[0]
            if item.dead or when != item.scheduled:
                heapq.heappop(heap)
                continue
            return when
        return None

    def expire(self, now: float) -> list:
        """Free allocations, reservations, permissions and channels whose time is up."""
        actions: list = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, item = heapq.heappop(heap)
            if item.dead or when != item.scheduled:
                continue
            item.scheduled = float("inf")
            if isinstance(item, _Reservation):
                if item.expires <= now:
                    actions += self._drop_reservation(item)
                else:
                    self._schedule(item, item.expires)
                continue
            if item.expires <= now:
                actions += self._delete(item)
                continue
            self._schedule(item, self._housekeep(item, now))
        return actions

    def close_all(self) -> list:
        """Every relayed socket to close, for a service that stops."""
        actions = []
        for allocation in list(self._by_client.values()):
            actions += self._delete(allocation)
        for reservation in list(self._reservations.values()):
            actions += self._drop_reservation(reservation)
        return actions

    # -- internals: scheduling ------------------------------------------------

    def _schedule(self, item, when: float) -> None:
        if when < item.scheduled:
            item.scheduled = when
            self._seq += 1
            heapq.heappush(self._heap, (when, self._seq, item))

    def _housekeep(self, allocation: Allocation, now: float) -> float:
        """Forget expired permissions and channels past their reuse delay; the next time to look again."""
        next_time = allocation.expires
        permissions = allocation.permissions
        for host in [h for h, expiry in permissions.items() if expiry <= now]:
            del permissions[host]
        for expiry in permissions.values():
            if expiry < next_time:
                next_time = expiry
        for number, channel in list(allocation.channels.items()):
            released = channel.expires + CHANNEL_REUSE_DELAY
            if released <= now:
                del allocation.channels[number]
                if allocation.peers.get(channel.peer) is channel:
                    del allocation.peers[channel.peer]
            else:
                soonest = channel.expires if channel.expires > now else released
                if soonest < next_time:
                    next_time = soonest
        return next_time

    def _new_allocation(self, pending: _Pending, relays: dict, advertised: dict, now: float) -> Allocation:
        allocation = Allocation(pending.client, pending.principal.username, relays, advertised, now + pending.lifetime)
        rate = self.settings.allocation_bandwidth
        if rate:
            allocation.up = _Bucket(rate, now)
            allocation.down = _Bucket(rate, now)
        if self.settings.total_bandwidth and self._total_up is None:
            self._total_up = _Bucket(self.settings.total_bandwidth, now)
            self._total_down = _Bucket(self.settings.total_bandwidth, now)
        self._by_client[pending.client] = allocation
        for relay in relays.values():
            self._by_relay[relay] = allocation
        self._per_user[allocation.username] += 1
        self._schedule(allocation, allocation.expires)
        return allocation

    def _delete(self, allocation: Allocation) -> list:
        if allocation.dead:
            return []
        allocation.dead = True
        if self._by_client.get(allocation.client) is allocation:
            del self._by_client[allocation.client]
        for relay in allocation.relays.values():
            self._by_relay.pop(relay, None)
        self._per_user[allocation.username] -= 1
        if self._per_user[allocation.username] <= 0:
            del self._per_user[allocation.username]
        return [CloseRelay(relay) for relay in allocation.relays.values()]

    def _drop_reservation(self, reservation: _Reservation) -> list:
        if reservation.dead:
            return []
        reservation.dead = True
        self._reservations.pop(reservation.token, None)
        self._reserved_relays.discard(reservation.relay)
        return [CloseRelay(reservation.relay)]

    # -- internals: responses -------------------------------------------------

    def _success(self, request: stun.Message, attributes, key: bytes, sha256: bool) -> bytes:
        method = _METHOD_NAMES.get(request.method, "other")
        self.stats.requests[method, "success"] += 1
        return stun.encode(request.method, MessageClass.SUCCESS, request.transaction_id,
                           tuple(attributes) + self._software, integrity_key=key, integrity_sha256=sha256)

    def _error(self, client: ClientKey, request: stun.Message, code: int, key: bytes | None = None,
               sha256: bool = False, extra: tuple = ()) -> list:
        name, reason = ERRORS[code]
        method = _METHOD_NAMES.get(request.method, "other")
        self.stats.requests[method, name] += 1
        attributes = ((Attr.ERROR_CODE, stun.encode_error_code(code, reason)),) + extra + self._software
        data = stun.encode(request.method, MessageClass.ERROR, request.transaction_id, attributes,
                           integrity_key=key, integrity_sha256=sha256)
        return [ToClient(client, data)]

    def _challenge(self, client: ClientKey, request: stun.Message, code: int, now: float,
                   key: bytes | None = None, sha256: bool = False) -> list:
        """401 or 438 with REALM, a fresh NONCE and PASSWORD-ALGORITHMS."""
        if key is None and not self._challenge_allowed(client[2][0], now):
            self.stats.refusals["challenge_rate"] += 1
            return []
        nonce = self.nonces.issue(_normal_host(client[2][0]), now)
        extra = ((Attr.REALM, self._realm), (Attr.NONCE, nonce), (Attr.PASSWORD_ALGORITHMS, self._algorithms))
        return self._error(client, request, code, key, sha256, extra)

    def _unauthenticated_error(self, client: ClientKey, request: stun.Message, code: int, now: float) -> list:
        """An error to a request that has not authenticated: rate-limited like a 401."""
        if not self._challenge_allowed(client[2][0], now):
            self.stats.refusals["challenge_rate"] += 1
            return []
        return self._error(client, request, code)

    def _challenge_allowed(self, host: str, now: float) -> bool:
        bucket = self._challenges.get(host)
        if bucket is None:
            if len(self._challenges) >= MAX_CHALLENGE_SOURCES:
                del self._challenges[next(iter(self._challenges))]
            bucket = self._challenges[host] = TokenBucket(self.settings.challenge_rate, now)
        return bucket.take(now)

    # -- internals: requests --------------------------------------------------

    def _request(self, client: ClientKey, message: stun.Message, now: float) -> list:
        handler = _HANDLERS.get(message.method)
        if handler is None:
            return self._unauthenticated_error(client, message, 400, now)
        auth = self._authenticate(client, message, now)
        if not isinstance(auth, _Auth):
            return auth
        message = _protected(message)
        unknown = message.unknown_required()
        if message.method == Method.ALLOCATE and message.find(Attr.DONT_FRAGMENT) is not None:
            # RFC 8656 section 7.2: a server that cannot set DF treats the
            # attribute as an unknown comprehension-required one.
            unknown.append(Attr.DONT_FRAGMENT)
        if unknown:
            value = stun.encode_unknown_attributes(unknown[:MAX_UNKNOWN_ECHOED])
            return self._error(client, message, 420, auth.principal.key, auth.sha256,
                               ((Attr.UNKNOWN_ATTRIBUTES, value),))
        return handler(self, client, message, auth, now)

    def _authenticate(self, client: ClientKey, message: stun.Message, now: float):
        """RFC 8489 section 9.2.4, in its order; an :class:`_Auth`, or the actions refusing the request."""
        if message.find(Attr.MESSAGE_INTEGRITY) is None and message.find(Attr.MESSAGE_INTEGRITY_SHA256) is None:
            return self._challenge(client, message, 401, now)
        username_value = message.get(Attr.USERNAME)
        user_hash = message.get(Attr.USERHASH)
        realm = message.get(Attr.REALM)
        nonce = message.get(Attr.NONCE)
        if (username_value is None and user_hash is None) or realm is None or nonce is None:
            return self._unauthenticated_error(client, message, 400, now)
        algorithm = ALGORITHM_MD5
        offered = message.get(Attr.PASSWORD_ALGORITHMS)
        chosen = message.get(Attr.PASSWORD_ALGORITHM)
        if nonce.startswith(b"obMatJos2") and (offered is not None or chosen is not None):
            if offered != self._algorithms or chosen is None or len(chosen) != 4:
                return self._unauthenticated_error(client, message, 400, now)
            number, parameters = struct.unpack("!HH", chosen)
            if parameters or number not in (ALGORITHM_MD5, ALGORITHM_SHA256):
                return self._unauthenticated_error(client, message, 400, now)
            algorithm = number
        if username_value is not None:
            try:
                username = username_value.decode("utf-8")
            except UnicodeDecodeError:
                return self._challenge(client, message, 401, now)
        else:
            found = self.credentials.username_for_hash(user_hash)
            if found is None:
                return self._challenge(client, message, 401, now)
            username = found
        principal = None
        for candidate in self.credentials.candidates(username, ALGORITHM_NAMES[algorithm], now):
            if stun.check_integrity(message, candidate.key):
                principal = candidate
                break
        if principal is None:
            return self._challenge(client, message, 401, now)
        sha256 = message.find(Attr.MESSAGE_INTEGRITY_SHA256) is not None
        if not self.nonces.check(nonce, _normal_host(client[2][0]), now):
            return self._challenge(client, message, 438, now, principal.key, sha256)
        return _Auth(principal, sha256)

    def _lifetime(self, message: stun.Message) -> float | None:
        """RFC 8656 section 7.2: max(default, min(requested, max)); None when LIFETIME is malformed."""
        value = message.get(Attr.LIFETIME)
        settings = self.settings
        if value is None:
            return float(settings.default_lifetime)
        if len(value) != 4:
            return None
        requested = _U32.unpack(value)[0]
        if requested == 0:
            return 0.0
        return float(max(settings.default_lifetime, min(requested, settings.max_lifetime)))

    def _allocate(self, client: ClientKey, message: stun.Message, auth: _Auth, now: float) -> list:
        key, sha256 = auth.principal.key, auth.sha256
        existing = self._by_client.get(client)
        closing: list = []
        if existing is not None and existing.expires <= now:
            closing = self._delete(existing)  # expired, but its timer has not run yet
            existing = None
        if existing is not None:
            if existing.allocate_tid == message.transaction_id:
                # A retransmission of the request that made it: the same answer (RFC 8656 section 7.2).
                return [ToClient(client, existing.allocate_response)]
            return self._error(client, message, 437, key, sha256)
        if self.draining:
            if self.alternate is None:
                return closing + self._error(client, message, 508, key, sha256)
            # Authenticated, so the redirect carries MESSAGE-INTEGRITY (RFC 8489 section 14.15).
            alternate = ((Attr.ALTERNATE_SERVER, stun.encode_address(*self.alternate)),)
            return closing + self._error(client, message, 300, key, sha256, alternate)
        transport = message.get(Attr.REQUESTED_TRANSPORT)
        if transport is None or len(transport) != 4:
            return closing + self._error(client, message, 400, key, sha256)
        if transport[0] != UDP_PROTOCOL:
            return closing + self._error(client, message, 442, key, sha256)
        token = message.get(Attr.RESERVATION_TOKEN)
        even = message.get(Attr.EVEN_PORT)
        requested = message.get(Attr.REQUESTED_ADDRESS_FAMILY)
        additional = message.get(Attr.ADDITIONAL_ADDRESS_FAMILY)
        if token is not None and (even is not None or requested is not None or additional is not None):
            return closing + self._error(client, message, 400, key, sha256)
        if requested is not None and additional is not None:
            return closing + self._error(client, message, 400, key, sha256)
        if token is not None and len(token) != 8:
            return closing + self._error(client, message, 400, key, sha256)
        if even is not None and len(even) != 1:
            return closing + self._error(client, message, 400, key, sha256)
        relays = self.settings.relays
        address_error = 0
        if requested is not None:
            if len(requested) != 4 or requested[0] not in _WIRE_FAMILY:
                return closing + self._error(client, message, 440, key, sha256)
            families: tuple[int, ...] = (_WIRE_FAMILY[requested[0]],)
        else:
            families = (FAMILY_IPV4,)
        if additional is not None:
            # RFC 8656 section 7.2: ADDITIONAL-ADDRESS-FAMILY asks for an IPv6
            # relayed address next to the IPv4 one (a dual allocation).
            if len(additional) != 4 or additional[0] != stun.FAMILY_IPV6:
                return closing + self._error(client, message, 400, key, sha256)
            families = (FAMILY_IPV4, FAMILY_IPV6)
            if FAMILY_IPV6 not in relays:
                address_error = 440
        if families[0] not in relays:
            return closing + self._error(client, message, 440, key, sha256)
        reserve = even is not None and bool(even[0] & 0x80)
        if reserve and len(families) > 1:
            return closing + self._error(client, message, 400, key, sha256)
        lifetime = self._lifetime(message)
        if lifetime is None:
            return closing + self._error(client, message, 400, key, sha256)
        if lifetime == 0:
            lifetime = float(self.settings.default_lifetime)
        username = auth.principal.username
        if self._per_user.get(username, 0) >= self.settings.allocations_per_user:
            self.stats.refusals["user_quota"] += 1
            return closing + self._error(client, message, 486, key, sha256)
        if len(self._by_client) + len(self._pending) >= self.settings.max_allocations:
            self.stats.refusals["total_quota"] += 1
            return closing + self._error(client, message, 508, key, sha256)
        pending = _Pending(client, auth.principal, message, sha256, lifetime, families, reserve, address_error)
        if token is not None:
            reservation = self._reservations.get(token)
            if reservation is None or reservation.expires <= now:
                return closing + self._error(client, message, 508, key, sha256)
            reservation.dead = True
            del self._reservations[token]
            self._reserved_relays.discard(reservation.relay)
            pending.families = (reservation.family,)
            self._seq += 1
            self._pending[self._seq] = pending
            return closing + self.relays_opened(self._seq, [reservation.relay[1]], now)
        binds = []
        for family in families:
            if family not in relays:
                continue
            host = relays[family].bind
            binds.append(RelayBind(family, host, self._port_candidates(host, even is not None, reserve), reserve))
        self._seq += 1
        self._pending[self._seq] = pending
        return closing + [OpenRelays(self._seq, client, tuple(binds))]

    def _port_candidates(self, host: str, even: bool, pair: bool) -> tuple[int, ...]:
        low, high = self.settings.port_min, self.settings.port_max
        if even or pair:
            low += low & 1
        step = 2 if even or pair else 1
        top = high - 1 if pair else high
        if top < low:
            return ()

        def free(port: int) -> bool:
            if (host, port) in self._by_relay or (host, port) in self._reserved_relays:
                return False
            return not pair or ((host, port + 1) not in self._by_relay and (host, port + 1) not in self._reserved_relays)

        count = (top - low) // step + 1
        if count <= PORT_CANDIDATES * 4:
            ports = [port for port in range(low, top + 1, step) if free(port)]
            self._rng.shuffle(ports)
            return tuple(ports[:PORT_CANDIDATES])
        chosen: list[int] = []
        for _ in range(PORT_CANDIDATES * 4):
            port = low + step * self._rng.randrange(count)
            if port not in chosen and free(port):
                chosen.append(port)
                if len(chosen) == PORT_CANDIDATES:
                    break
        return tuple(chosen)

    def _owned(self, client: ClientKey, message: stun.Message, auth: _Auth, now: float):
        """The client's live allocation, or the 437/441 that refuses the request."""
        allocation = self._by_client.get(client)
        if allocation is None or allocation.expires <= now:
            return self._error(client, message, 437, auth.principal.key, auth.sha256)
        if allocation.username != auth.principal.username:
            return self._error(client, message, 441, auth.principal.key, auth.sha256)
        return allocation

    def _refresh(self, client: ClientKey, message: stun.Message, auth: _Auth, now: float) -> list:
        key, sha256 = auth.principal.key, auth.sha256
        allocation = self._owned(client, message, auth, now)
        if not isinstance(allocation, Allocation):
            return allocation
        requested = message.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if requested is not None:
            if len(requested) != 4 or requested[0] not in _WIRE_FAMILY:
                return self._error(client, message, 440, key, sha256)
            if _WIRE_FAMILY[requested[0]] not in allocation.relays:
                return self._error(client, message, 443, key, sha256)
        lifetime = self._lifetime(message)
        if lifetime is None:
            return self._error(client, message, 400, key, sha256)
        if lifetime == 0:
            closing = self._delete(allocation)
            return closing + [ToClient(client, self._success(message, ((Attr.LIFETIME, _U32.pack(0)),), key, sha256))]
        allocation.expires = now + lifetime
        # A later expiry is found by the entry already scheduled; an earlier one needs its own.
        self._schedule(allocation, allocation.expires)
        return [ToClient(client, self._success(message, ((Attr.LIFETIME, _U32.pack(int(lifetime))),), key, sha256))]

    def _peer(self, allocation: Allocation, message: stun.Message, value: bytes):
        """A decoded, normalised XOR-PEER-ADDRESS, or the error code it earns."""
        try:
            host, port = stun.decode_xor_address(value, message.transaction_id)
        except StunError:
            return 400
        host = _peer_host(host)
        if _family_of(host) not in allocation.relays:
            return 443
        return host, port

    def _refuse_peer(self, reason: str) -> None:
        self.stats.refusals[f"peer_{reason}"] += 1

    def _create_permission(self, client: ClientKey, message: stun.Message, auth: _Auth, now: float) -> list:
        key, sha256 = auth.principal.key, auth.sha256
        allocation = self._owned(client, message, auth, now)
        if not isinstance(allocation, Allocation):
            return allocation
        hosts = []
        for attribute in message.attributes:
            if attribute.type != Attr.XOR_PEER_ADDRESS:
                continue
            peer = self._peer(allocation, message, attribute.value)
            if isinstance(peer, int):
                return self._error(client, message, peer, key, sha256)
            reason = self.policy.check(peer[0], peer[1])
            if reason is not None:
                self._refuse_peer(reason)
                return self._error(client, message, 403, key, sha256)
            hosts.append(peer[0])
        if not hosts:
            return self._error(client, message, 400, key, sha256)
        new = {host for host in hosts if allocation.permissions.get(host, 0.0) <= now}
        if allocation.active_permissions(now) + len(new) > MAX_PERMISSIONS:
            self.stats.refusals["permissions_full"] += 1
            return self._error(client, message, 508, key, sha256)
        self._permit(allocation, hosts, now)
        return [ToClient(client, self._success(message, (), key, sha256))]

    def _permit(self, allocation: Allocation, hosts, now: float) -> None:
        expiry = now + PERMISSION_LIFETIME
        for host in hosts:
            allocation.permissions[host] = expiry
        self._schedule(allocation, expiry)

    def _channel_bind(self, client: ClientKey, message: stun.Message, auth: _Auth, now: float) -> list:
        key, sha256 = auth.principal.key, auth.sha256
        allocation = self._owned(client, message, auth, now)
        if not isinstance(allocation, Allocation):
            return allocation
        value = message.get(Attr.CHANNEL_NUMBER)
        peer_value = message.get(Attr.XOR_PEER_ADDRESS)
        if value is None or len(value) != 4 or peer_value is None:
            return self._error(client, message, 400, key, sha256)
        number = struct.unpack_from("!H", value)[0]
        if not CHANNEL_MIN <= number <= self.settings.channel_max:
            return self._error(client, message, 400, key, sha256)
        peer = self._peer(allocation, message, peer_value)
        if isinstance(peer, int):
            return self._error(client, message, peer, key, sha256)
        reason = self.policy.check(peer[0], peer[1])
        if reason is not None:
            self._refuse_peer(reason)
            return self._error(client, message, 403, key, sha256)
        # A number or a peer stays bound to its partner until 5 minutes after expiry.
        bound = allocation.channels.get(number)
        if bound is not None and bound.peer != peer and bound.expires + CHANNEL_REUSE_DELAY > now:
            return self._error(client, message, 400, key, sha256)
        other = allocation.peers.get(peer)
        if other is not None and other.number != number and other.expires + CHANNEL_REUSE_DELAY > now:
            return self._error(client, message, 400, key, sha256)
        if bound is None and allocation.permissions.get(peer[0], 0.0) <= now:
            if allocation.active_permissions(now) + 1 > MAX_PERMISSIONS:
                self.stats.refusals["permissions_full"] += 1
                return self._error(client, message, 508, key, sha256)
        expiry = now + CHANNEL_LIFETIME
        if bound is not None and bound.peer == peer:
            bound.expires = expiry
        else:
            if bound is not None:
                allocation.peers.pop(bound.peer, None)
            if other is not None:
                allocation.channels.pop(other.number, None)
            channel = _Channel(number, peer, expiry)
            allocation.channels[number] = channel
            allocation.peers[peer] = channel
        self._permit(allocation, (peer[0],), now)
        return [ToClient(client, self._success(message, (), key, sha256))]

    def _send_indication(self, client: ClientKey, message: stun.Message, now: float) -> list:
        allocation = self._by_client.get(client)
        if allocation is None or allocation.expires <= now:
            self.stats.dropped["no_allocation"] += 1
            return []
        peer_value = message.get(Attr.XOR_PEER_ADDRESS)
        data = message.get(Attr.DATA)
        if peer_value is None or data is None or message.unknown_required():
            self.stats.dropped["bad_indication"] += 1
            return []
        if message.find(Attr.DONT_FRAGMENT) is not None:
            self.stats.dropped["dont_fragment"] += 1
            return []
        try:
            host, port = stun.decode_xor_address(peer_value, message.transaction_id)
        except StunError:
            self.stats.dropped["bad_indication"] += 1
            return []
        host = _peer_host(host)
        relay = allocation.relays.get(_family_of(host))
        if relay is None:
            self.stats.dropped["peer_family"] += 1
            return []
        if allocation.permissions.get(host, 0.0) <= now:
            self.stats.dropped["no_permission"] += 1
            return []
        if self.policy.is_own(host, port):
            reason = self.policy.check(host, port)
            if reason is not None:
                self._refuse_peer(reason)
                return []
        size = len(data)
        if allocation.up is not None and not allocation.up.take(size, now):
            self.stats.refusals["bandwidth"] += 1
            return []
        if self._total_up is not None and not self._total_up.take(size, now):
            self.stats.refusals["total_bandwidth"] += 1
            return []
        self.stats.to_peer_packets += 1
        self.stats.to_peer_bytes += size
        return [ToPeer(relay, (host, port), data)]


_HANDLERS = {
    Method.ALLOCATE: TurnServer._allocate,
    Method.REFRESH: TurnServer._refresh,
    Method.CREATE_PERMISSION: TurnServer._create_permission,
    Method.CHANNEL_BIND: TurnServer._channel_bind,
}


# -- TURN over a stream (RFC 8656 section 3.1, RFC 4571-like framing) --------


class FramingError(Exception):
    """The stream holds something that is neither a STUN message nor ChannelData."""


class StreamFramer:
    """Cuts a TCP or TLS byte stream into STUN messages and ChannelData messages.

    A STUN message is its 20-byte header plus the length it states; a
    ChannelData message is 4 bytes plus its length, padded to a multiple of 4
    (RFC 8656 section 12.5). Anything else (a byte that starts neither, a STUN
    header without the magic cookie) is a :class:`FramingError`, and the
    adapter closes the connection. The buffer never holds more than one
    message.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def receive(self, data: bytes) -> list[bytes]:
        buffer = self._buffer + data if self._buffer else data
        out = []
        offset = 0
        size = len(buffer)
        while size - offset >= 4:
            first = buffer[offset]
            length = (buffer[offset + 2] << 8) | buffer[offset + 3]
            if first < 0x40:
                if size - offset >= 8 and buffer[offset + 4:offset + 8] != _COOKIE:
                    # Over a stream only RFC 5389+ STUN is defined: no magic cookie, no STUN.
                    raise FramingError("a STUN header without the magic cookie")
                total = 20 + length
                padded = total
            elif first < 0x80:
                # ChannelData, including the reserved numbers 0x5000-0x7FFF: the
                # length still frames them, and the server drops what is not bound.
                total = 4 + length
                padded = (total + 3) & ~3
            else:
                raise FramingError(f"first byte 0x{first:02x} starts neither STUN nor ChannelData")
            if size - offset < padded:
                break
            out.append(buffer[offset:offset + total])
            offset += padded
        self._buffer = buffer[offset:]
        return out
