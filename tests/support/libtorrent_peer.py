"""A libtorrent DHT node on loopback, for interoperability tests of our DHT.

`LibtorrentPeer` starts a libtorrent session whose only job is its mainline DHT node, bound to
one loopback address, and wraps the DHT calls a test needs in plain blocking methods. It does
not depend on pytest, so a script can use it as well as a test. It imports libtorrent at module
level: a test that must run without it does ``pytest.importorskip("libtorrent")`` first::

    from tests.support.libtorrent_peer import LibtorrentPeer, ed25519_keypair

    with LibtorrentPeer() as a, LibtorrentPeer() as b:
        a.add_node(*b.endpoint)
        b.add_node(*a.endpoint)
        a.wait_for_nodes(1, timeout=5)
        public, secret = ed25519_keypair(bytes(32))
        a.put_mutable(public, secret, b"hello", salt=b"s", timeout=10)
        assert b.get_mutable(public, salt=b"s", timeout=10).value == b"hello"

Every wait has a deadline in seconds and raises `LibtorrentTimeout` when it passes; no loop
here runs without a bound and nothing sleeps to synchronise. The waits block on libtorrent's
alert queue (``wait_for_alert``), so they return as soon as the awaited alert arrives. Each
session runs its network in its own thread: other sessions go on answering while one waits.

Settings (`LOOPBACK_SETTINGS`; measured with libtorrent 2.1.1 from PyPI):

- ``listen_interfaces = 127.0.0.1:PORT`` (port 0: the OS chooses; read back with `port`). The
  DHT uses the session's listen socket, so `port` is the DHT's UDP port. With
  ``max_retry_port_bind`` 0 and ``listen_system_port_fallback`` off, a port that is taken is an
  error (by default libtorrent silently binds the next port up instead).
- ``dht_bootstrap_nodes = ""``: no default router; the node knows only what `add_node` gives
  it. ``enable_lsd``, ``enable_upnp``, ``enable_natpmp``, ``enable_ip_notifier`` off, TCP off:
  nothing leaves loopback.
- ``dht_restrict_routing_ips`` off: **required**. On, the routing table keeps one node per IP,
  so of any number of nodes on 127.0.0.1 it holds exactly one.
- ``dht_restrict_search_ips`` off: **required** when nodes learn of each other through lookups
  (not only `add_node`): on, a lookup keeps one 127.0.0.1 node out of the answers' ``nodes``.
- ``dht_block_ratelimit`` raised (``dht_block_timeout`` 1 s): **required**. libtorrent counts
  every incoming DHT datagram, queries and responses alike, per source IP and past
  10 x ``dht_block_ratelimit`` (default 5) in 10 s drops everything from that IP for
  ``dht_block_timeout`` (default 300 s). All nodes on loopback share 127.0.0.1: with defaults,
  30 put/get rounds among 6 nodes banned it three times and 19 rounds failed.
- ``dht_upload_rate_limit`` raised: **required** past light traffic. libtorrent answers no
  query while its send quota (this many bytes/s, default 8000) is spent; 0 means it never
  answers at all.
- ``dht_prefer_verified_node_ids``, ``dht_enforce_node_id``, ``dht_ignore_dark_internet`` off:
  not needed (a node on 127.0.0.1 with a random id is accepted even with enforcement on: BEP 42
  exempts local addresses; the dark-internet filter covers some public /8s only); off anyway.
- ``dht_max_fail_count`` 3 (default 20): a node that stopped answering leaves the table sooner.
  A lookup that queries a silent node still waits for libtorrent's 15 s request timeout.
- ``alert_mask``: DHT, DHT operation, status and error alerts, plus ``dht_log`` with
  ``log=True``, which records libtorrent's DHT log (`log_lines`) and every DHT datagram it sends
  or receives (`packets`), to check the wire format.

Keys: libtorrent signs with orlp/ed25519, whose 64-byte secret key is the *expanded* key
(SHA-512 of the 32-byte seed, first half clamped), not libsodium's ``seed || public key``; the
Python bindings have no ``ed25519_create_keypair``. `ed25519_keypair(seed)` derives it. With
libsodium's form libtorrent signs garbage: every node answers error 206 "invalid signature".

Values: the binding's ``dht_put_mutable_item`` stores its ``data`` argument as a bencoded
*string*: ``v`` is ``<len>:<data>`` whatever the bytes are; it cannot put a list, dict or int
(the immutable put can). It first gets the item and puts ``seq`` = highest seen + 1 (1 for a
new item), without ``cas``. `get_mutable` returns ``v`` decoded (bytes for a string) and checks
the signature itself over ``[4:salt<len>:<salt>]3:seqi<seq>e1:v<bencoded v>`` (BEP 44).
"""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import time
from dataclasses import dataclass
from typing import Any, Callable

import libtorrent as lt
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

__all__ = [
    "LOOPBACK_SETTINGS",
    "LibtorrentPeer",
    "LibtorrentTimeout",
    "MutableItem",
    "PutResult",
    "ed25519_keypair",
    "mutable_signing_buffer",
    "mutable_target",
    "verify_mutable",
]

#: Settings for a loopback-only DHT node; the module docstring says why each one is set.
LOOPBACK_SETTINGS: dict[str, Any] = {
    "dht_bootstrap_nodes": "",
    "enable_dht": True,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "enable_ip_notifier": False,
    "enable_incoming_tcp": False,
    "enable_outgoing_tcp": False,
    "dht_restrict_routing_ips": False,
    "dht_restrict_search_ips": False,
    "dht_block_ratelimit": 100_000,
    "dht_block_timeout": 1,
    "dht_upload_rate_limit": 1_000_000,
    "dht_prefer_verified_node_ids": False,
    "dht_enforce_node_id": False,
    "dht_ignore_dark_internet": False,
    "dht_extended_routing_table": True,
    "dht_max_fail_count": 3,
    "max_retry_port_bind": 0,
    "listen_system_port_fallback": False,
    "alert_queue_size": 10_000,
}

_ALERTS = (
    lt.alert_category.dht
    | lt.alert_category.dht_operation
    | lt.alert_category.status
    | lt.alert_category.error
)
_POLL_MS = 100  # longest single wait_for_alert; every wait is bounded by its own deadline too
_STATS_INTERVAL = 0.02  # seconds between two dht_stats polls


class LibtorrentTimeout(TimeoutError):
    """A wait passed its deadline; the message says what was awaited."""


@dataclass(frozen=True)
class PutResult:
    """The outcome of a put (``dht_put_alert``).

    `num_success` counts the nodes that acknowledged the put. libtorrent learns its own
    endpoint from other nodes' answers and then queries itself too, so this can include
    libtorrent itself: to know that a given node stored an item, ask that node.
    """

    target: bytes  # SHA-1(public key + salt) for mutable, SHA-1(bencoded v) for immutable
    num_success: int
    seq: int = 0  # mutable only: the sequence number libtorrent chose
    signature: bytes = b""  # mutable only
    public_key: bytes = b""  # mutable only
    salt: bytes = b""  # mutable only


@dataclass(frozen=True)
class MutableItem:
    """The newest validly signed mutable item a get found, or `found` False."""

    found: bool
    value: Any = None  # v decoded: bytes for a string (all that libtorrent's put stores)
    value_bencoded: bytes = b""  # v as signed
    seq: int = 0
    signature: bytes = b""
    public_key: bytes = b""
    salt: bytes = b""
    signature_valid: bool = False  # checked here with PyNaCl, not only by libtorrent
    versions_seen: int = 0  # non-final alerts: one per newer item libtorrent came across


@dataclass(frozen=True)
class _Event:
    """What the helper keeps of an alert: plain data, since an alert object must not be used
    after the next ``pop_alerts``."""

    kind: str
    data: dict


def ed25519_keypair(seed: bytes) -> tuple[bytes, bytes]:
    """(public key, libtorrent's 64-byte secret key) for a 32-byte Ed25519 seed.

    libtorrent's secret key is orlp/ed25519's expanded form: ``h = SHA-512(seed)`` with
    ``h[0] &= 248; h[31] &= 63; h[31] |= 64``; its first half is the signing scalar, its second
    the nonce prefix. The public key is the RFC 8032 one (PyNaCl's for the same seed).
    """
    if len(seed) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    h = bytearray(hashlib.sha512(seed).digest())
    h[0] &= 248
    h[31] &= 63
    h[31] |= 64
    return bytes(SigningKey(seed).verify_key), bytes(h)


def mutable_signing_buffer(value_bencoded: bytes, seq: int, salt: bytes = b"") -> bytes:
    """The bytes a BEP 44 mutable item's signature covers."""
    prefix = b"4:salt%d:%s" % (len(salt), salt) if salt else b""
    return prefix + b"3:seqi%de1:v" % seq + value_bencoded


def mutable_target(public_key: bytes, salt: bytes = b"") -> bytes:
    """The BEP 44 target of a mutable item: SHA-1(public key + salt)."""
    return hashlib.sha1(public_key + salt).digest()


def verify_mutable(
    public_key: bytes, value_bencoded: bytes, seq: int, signature: bytes, salt: bytes = b""
) -> bool:
    """Whether `signature` is a valid BEP 44 signature of the item."""
    try:
        VerifyKey(public_key).verify(mutable_signing_buffer(value_bencoded, seq, salt), signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def _sha1(raw: bytes) -> lt.sha1_hash:
    if len(raw) != 20:
        raise ValueError("an info-hash or target is 20 bytes")
    return lt.sha1_hash(raw)


def _hash_bytes(h: lt.sha1_hash) -> bytes:
    return bytes(h.to_bytes())


class LibtorrentPeer:
    """A libtorrent session running nothing but a DHT node on a loopback address.

    `host` must be a loopback address (127.0.0.0/8 or ::1); `port` 0 lets the OS choose.
    `settings` go over `LOOPBACK_SETTINGS` (e.g. ``{"dht_read_only": True}``). With `log`,
    libtorrent's DHT log lines and DHT datagrams are kept (the last `history` of each).
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        settings: dict[str, Any] | None = None,
        log: bool = False,
        history: int = 5000,
        start_timeout: float = 5.0,
    ) -> None:
        address = ipaddress.ip_address(host)
        if not address.is_loopback:
            raise ValueError(f"{host} is not a loopback address")
        self.host = host
        listen = f"[{host}]:{port}" if address.version == 6 else f"{host}:{port}"
        pack = dict(LOOPBACK_SETTINGS, listen_interfaces=listen)
        pack["alert_mask"] = int(_ALERTS | (lt.alert_category.dht_log if log else 0))
        pack.update(settings or {})
        self.settings = pack
        self._log_lines: collections.deque[str] = collections.deque(maxlen=history)
        self._packets: collections.deque[tuple[str, str, bytes]] = collections.deque(maxlen=history)
        self._incoming_announces: list[tuple[str, int, bytes]] = []
        self._errors: list[str] = []
        self._events: collections.deque[_Event] = collections.deque(maxlen=history)
        self._node_id: bytes | None = None
        self._port = 0
        self._session: lt.session | None = lt.session(lt.session_params(pack))
        try:
            self._wait(lambda e: e.kind == "listen", start_timeout, "listen alert", consume=False)
            self._port = self._session.listen_port()
            if not self._port:
                raise RuntimeError(f"libtorrent did not listen on {listen}: {self._errors}")
        except BaseException:
            self.close()
            raise

    # ---- identity -------------------------------------------------------------------------

    @property
    def session(self) -> lt.session:
        """The libtorrent session, for calls this class does not wrap."""
        return self._live()

    # Alerts are only read when a method waits on them: these drain what is pending first.

    @property
    def log_lines(self) -> collections.deque[str]:
        """libtorrent's DHT log (with log=True)."""
        self._drain_if_open()
        return self._log_lines

    @property
    def packets(self) -> collections.deque[tuple[str, str, bytes]]:
        """DHT datagrams (with log=True): ("in" or "out", "ip:port" of the other end, bytes)."""
        self._drain_if_open()
        return self._packets

    @property
    def incoming_announces(self) -> list[tuple[str, int, bytes]]:
        """The announce_peer queries this node accepted: (ip, port announced, info-hash)."""
        self._drain_if_open()
        return self._incoming_announces

    @property
    def errors(self) -> list[str]:
        """Messages of error alerts (a failed listen, DHT errors)."""
        self._drain_if_open()
        return self._errors

    @property
    def port(self) -> int:
        """The DHT node's UDP port (the session's listen port)."""
        return self._port

    @property
    def endpoint(self) -> tuple[str, int]:
        return (self.host, self._port)

    @property
    def node_id(self) -> bytes | None:
        """The node's 20-byte id (from the saved DHT state; None before the DHT started)."""
        if self._node_id is None:
            flags = lt.save_state_flags_t.save_dht_state
            saved = lt.write_session_params_buf(self._live().session_state(flags), flags)
            state = lt.bdecode(saved) or {}
            # "node-id": a list of the 20-byte id followed by the address it is for
            ids = (state.get(b"dht state") or {}).get(b"node-id") or []
            if ids:
                self._node_id = bytes(ids[0][:20])
        return self._node_id

    # ---- routing table --------------------------------------------------------------------

    def add_node(self, host: str, port: int) -> None:
        """``add_dht_node``: libtorrent queries the node (a ``get_peers`` for a random
        info-hash serves as its ping) and adds it to the table once it answers. No lookup
        follows: to have every node know every other, add them all to each other."""
        self._live().add_dht_node((host, port))

    def dht_stats(self, timeout: float = 5.0) -> dict:
        """A fresh ``dht_stats_alert``: ``routing_table`` (a dict with num_nodes and
        num_replacements per bucket) and ``active_requests`` (a dict per running lookup)."""
        self._take_all(lambda e: e.kind == "stats")  # an answer to an earlier request
        self._live().post_dht_stats()
        return self._wait(lambda e: e.kind == "stats", timeout, "dht_stats_alert").data

    def routing_table_size(self, timeout: float = 5.0) -> int:
        """Nodes in the routing table, replacements not counted."""
        return sum(b["num_nodes"] for b in self.dht_stats(timeout)["routing_table"])

    def wait_for_nodes(self, n: int, timeout: float = 10.0) -> int:
        """Wait until the routing table holds at least `n` nodes; returns how many it holds.

        libtorrent has no alert for a node being added: this polls ``post_dht_stats`` (every
        20 ms, waiting on the alert queue in between).
        """
        deadline = time.monotonic() + timeout
        count = 0
        while time.monotonic() < deadline:
            count = self.routing_table_size(timeout=self._left(deadline))
            if count >= n:
                return count
            self._pump(min(deadline, time.monotonic() + _STATS_INTERVAL))
        raise LibtorrentTimeout(f"{self.endpoint}: routing table holds {count} nodes, not {n}")

    def wait_idle(self, timeout: float = 10.0, kinds: tuple[str, ...] | None = None) -> None:
        """Wait until no lookup runs whose type starts with one of `kinds` (any if None).
        libtorrent's types include "get_peers" (also an announce's lookup), "get_peers
        [obfuscated]" (with dht_privacy_lookups), "get", "put_data", "bootstrap", "refresh"."""
        deadline = time.monotonic() + timeout
        active: list[dict] = []
        while time.monotonic() < deadline:
            active = self._lookups(kinds, self._left(deadline))
            if not active:
                return
            self._pump(min(deadline, time.monotonic() + _STATS_INTERVAL))
        raise LibtorrentTimeout(f"{self.endpoint}: lookups still running: {active}")

    # ---- BEP 44 ---------------------------------------------------------------------------

    def put_mutable(
        self,
        public_key: bytes,
        secret_key: bytes,
        value: bytes,
        salt: bytes = b"",
        timeout: float = 10.0,
    ) -> PutResult:
        """Store `value` (stored as a bencoded string) under `public_key` and `salt`.

        `secret_key` is libtorrent's 64-byte expanded key (`ed25519_keypair`). Returns when
        libtorrent reports the put done (``dht_put_alert``): at once with `num_success` 0 if
        its table is empty, after its 15 s request timeout if a node in it is silent.
        """
        if len(public_key) != 32 or len(secret_key) != 64:
            raise ValueError("libtorrent takes a 32-byte public key, a 64-byte expanded secret")
        self._live().dht_put_mutable_item(secret_key, public_key, value, salt)
        event = self._wait(
            lambda e: e.kind == "put" and e.data.get("public_key") == public_key
            and e.data["salt"] == salt,
            timeout,
            f"dht_put_alert for mutable {public_key.hex()} salt {salt!r}",
        )
        return PutResult(**event.data)

    def get_mutable(
        self, public_key: bytes, salt: bytes = b"", timeout: float = 10.0
    ) -> MutableItem:
        """The newest validly signed item under `public_key` and `salt`, or `found` False.

        libtorrent posts a ``dht_mutable_item_alert`` for each newer item it meets and a last,
        authoritative one when the lookup ends; this waits for that one. "Nothing found" is an
        alert with an empty value, seq 0 and a signature that may hold anything (zeros, or bytes
        left from other data): only a signature that verifies makes an item found.
        """
        self._live().dht_get_mutable_item(public_key, salt)
        deadline = time.monotonic() + timeout
        best: dict | None = None
        versions = 0
        while True:
            d = self._wait(
                lambda e: e.kind == "mutable" and e.data["key"] == public_key
                and e.data["salt"] == salt,
                self._left(deadline),
                f"dht_mutable_item_alert for {public_key.hex()} salt {salt!r}",
            ).data
            encoded = lt.bencode(d["item"]) if d["item"] is not None else b""
            valid = bool(encoded) and verify_mutable(
                public_key, encoded, d["seq"], d["signature"], salt
            )
            if valid and (best is None or d["seq"] >= best["seq"]):
                best = dict(d, encoded=encoded)
            if d["authoritative"]:
                break
            versions += 1
        if best is None:
            return MutableItem(
                found=False, public_key=public_key, salt=salt, versions_seen=versions
            )
        return MutableItem(
            found=True,
            value=best["item"],
            value_bencoded=best["encoded"],
            seq=best["seq"],
            signature=best["signature"],
            public_key=public_key,
            salt=salt,
            signature_valid=True,
            versions_seen=versions,
        )

    def put_immutable(self, value: Any, timeout: float = 10.0) -> PutResult:
        """Store an immutable item: any bencodable value (bytes, int, list, dict with bytes
        keys). Its target is SHA-1 of its bencoding."""
        target = _hash_bytes(self._live().dht_put_immutable_item(value))
        event = self._wait(
            lambda e: e.kind == "put" and e.data["target"] == target and "public_key" not in e.data,
            timeout,
            f"dht_put_alert for immutable {target.hex()}",
        )
        return PutResult(**event.data)

    def get_immutable(self, target: bytes, timeout: float = 10.0) -> Any:
        """The immutable item under `target`, decoded, or None if none was found."""
        self._live().dht_get_immutable_item(_sha1(target))
        event = self._wait(
            lambda e: e.kind == "immutable" and e.data["target"] == target,
            timeout,
            f"dht_immutable_item_alert for {target.hex()}",
        )
        return event.data["item"]

    # ---- BEP 5 ----------------------------------------------------------------------------

    def announce(
        self,
        info_hash: bytes,
        port: int = 0,
        *,
        implied_port: bool = False,
        seed: bool = False,
        wait: bool = True,
        timeout: float = 10.0,
    ) -> None:
        """Announce a peer for `info_hash` (``dht_announce``): `port`, or with `implied_port`
        the port the datagrams come from (the DHT port). Port 0 announces the listen port.

        libtorrent runs a get_peers lookup, then sends ``announce_peer`` to the 8 closest nodes
        that gave a token, without waiting for answers; no alert marks the end. With `wait`,
        this returns once the lookup is over (the announces are sent, maybe not yet handled:
        poll `get_peers` elsewhere rather than expecting them stored at once).
        """
        flags = 0
        if implied_port:
            flags |= int(lt.announce_flags_t.implied_port)
        if seed:
            flags |= int(lt.announce_flags_t.seed)
        self._live().dht_announce(_sha1(info_hash), port, flags)
        if wait:
            self.wait_idle(timeout, kinds=("get_peers",))

    def get_peers(
        self, info_hash: bytes, timeout: float = 10.0, min_peers: int = 1
    ) -> list[tuple[str, int]]:
        """Peers for `info_hash` (``dht_get_peers``), as sorted (ip, port) pairs.

        libtorrent posts a ``dht_get_peers_reply_alert`` for each answer that has peers, none
        for answers without, and nothing at the end. So this returns as soon as `min_peers`
        distinct peers are known, or else once the lookup is over (with what it found, maybe
        nothing); LibtorrentTimeout only if the lookup still runs at the deadline.
        """
        self._live().dht_get_peers(_sha1(info_hash))
        deadline = time.monotonic() + timeout
        peers: set[tuple[str, int]] = set()

        def is_reply(e: _Event) -> bool:
            return e.kind == "peers" and e.data["info_hash"] == info_hash

        while time.monotonic() < deadline:
            try:
                event = self._wait(is_reply, min(self._left(deadline), _STATS_INTERVAL), "reply")
            except LibtorrentTimeout:
                # None for a while: is the lookup over? libtorrent posts the stats after every
                # alert the lookup posted (one network thread), and _wait has drained those.
                if not self._lookups(("get_peers",), self._left(deadline)):
                    for e in self._take_all(is_reply):
                        peers.update(e.data["peers"])
                    return sorted(peers)
                continue
            peers.update(event.data["peers"])
            if len(peers) >= min_peers:
                return sorted(peers)
        raise LibtorrentTimeout(f"{self.endpoint}: get_peers still running; found {sorted(peers)}")

    def wait_for_incoming_announce(
        self, info_hash: bytes, timeout: float = 10.0
    ) -> tuple[str, int]:
        """Wait until this node accepts an ``announce_peer`` for `info_hash`; returns the
        (ip, port) announced (the same as `incoming_announces` records)."""
        event = self._wait(
            lambda e: e.kind == "announce" and e.data["info_hash"] == info_hash,
            timeout,
            f"announce_peer for {info_hash.hex()}",
            consume=False,
        )
        return event.data["ip"], event.data["port"]

    # ---- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the session: dropping the last reference runs libtorrent's destructor, which
        closes the socket and joins its threads (a few ms on loopback). Idempotent."""
        session, self._session = self._session, None
        if session is not None:
            session.pause()
            del session

    def __enter__(self) -> LibtorrentPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._session is not None else "closed"
        return f"LibtorrentPeer({self.host}:{self._port}, {state})"

    # ---- alerts ---------------------------------------------------------------------------

    def _live(self) -> lt.session:
        if self._session is None:
            raise RuntimeError("this LibtorrentPeer is closed")
        return self._session

    @staticmethod
    def _left(deadline: float) -> float:
        return max(deadline - time.monotonic(), 0.0)

    def _lookups(self, kinds: tuple[str, ...] | None, timeout: float) -> list[dict]:
        requests = self.dht_stats(max(timeout, 0.001))["active_requests"]
        return [r for r in requests if kinds is None or (r["type"] or "").startswith(kinds)]

    def _pump(self, until: float) -> None:
        """Record the alerts that arrive until the monotonic time `until`."""
        session = self._live()
        while (left := until - time.monotonic()) > 0:
            session.wait_for_alert(max(1, min(_POLL_MS, int(left * 1000))))
            self._drain()

    def _drain_if_open(self) -> None:
        if self._session is not None:
            self._drain()

    def _drain(self) -> None:
        for alert in self._live().pop_alerts():
            event = self._convert(alert)
            if event is not None:
                self._events.append(event)

    def _take_all(self, match: Callable[[_Event], bool]) -> list[_Event]:
        taken = [e for e in self._events if match(e)]
        for e in taken:
            self._events.remove(e)
        return taken

    def _wait(
        self, match: Callable[[_Event], bool], timeout: float, what: str, consume: bool = True
    ) -> _Event:
        """The first recorded event that `match`es, waiting up to `timeout` seconds for it."""
        deadline = time.monotonic() + max(timeout, 0.0)
        session = self._live()
        while True:
            for event in self._events:
                if match(event):
                    if consume:
                        self._events.remove(event)
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise LibtorrentTimeout(
                    f"{self.host}:{self._port}: no {what} within {timeout:.3g} s"
                    + (f"; errors: {self._errors[-3:]}" if self._errors else "")
                )
            session.wait_for_alert(max(1, min(_POLL_MS, int(left * 1000))))
            self._drain()

    def _convert(self, a: lt.alert) -> _Event | None:
        """Keep what matters of an alert as plain data (or in the logs), drop the rest."""
        if isinstance(a, lt.dht_pkt_alert):
            # message(): "<== [ip:port] ..." for received, "==> [ip:port] ..." for sent
            text = a.message()
            head, _, rest = text.partition("[")
            direction = "out" if "==>" in head else "in"
            self._packets.append((direction, rest.partition("]")[0], bytes(a.pkt_buf)))
            return None
        if isinstance(a, lt.dht_log_alert):
            self._log_lines.append(a.log_message())
            return None
        if isinstance(a, lt.dht_put_alert):
            public_key = bytes(a.public_key)
            if any(public_key):  # mutable; libtorrent leaves its target all zero
                salt = bytes(a.salt)
                data: dict = dict(
                    target=mutable_target(public_key, salt),
                    seq=a.seq,
                    signature=bytes(a.signature),
                    public_key=public_key,
                    salt=salt,
                )
            else:  # immutable; key, salt, seq and signature all zero
                data = dict(target=_hash_bytes(a.target))
            return _Event("put", dict(data, num_success=a.num_success))
        if isinstance(a, lt.dht_mutable_item_alert):
            return _Event(
                "mutable",
                dict(
                    key=bytes(a.key),
                    salt=bytes(a.salt),
                    seq=a.seq,
                    signature=bytes(a.signature),
                    item=a.item,
                    authoritative=a.authoritative,
                ),
            )
        if isinstance(a, lt.dht_immutable_item_alert):
            target, item = _hash_bytes(a.target), a.item
            # nothing found is an empty entry (b""); a found item hashes to its target
            if item is None or hashlib.sha1(lt.bencode(item)).digest() != target:
                item = None
            return _Event("immutable", dict(target=target, item=item))
        if isinstance(a, lt.dht_get_peers_reply_alert):
            peers = [(ip, port) for ip, port in a.peers()]
            return _Event("peers", dict(info_hash=_hash_bytes(a.info_hash), peers=peers))
        if isinstance(a, lt.dht_stats_alert):
            return _Event(
                "stats",
                dict(routing_table=list(a.routing_table), active_requests=list(a.active_requests)),
            )
        if isinstance(a, lt.dht_announce_alert):
            announce = (a.ip, a.port, _hash_bytes(a.info_hash))
            self._incoming_announces.append(announce)
            return _Event("announce", dict(ip=a.ip, port=a.port, info_hash=announce[2]))
        if isinstance(a, lt.listen_succeeded_alert):
            return _Event("listen", dict(message=a.message()))
        is_error = int(a.category()) & int(lt.alert_category.error)
        if isinstance(a, lt.listen_failed_alert) or is_error:
            self._errors.append(a.message())
            if isinstance(a, lt.listen_failed_alert):
                return _Event("listen", dict(message=a.message(), failed=True))
        return None
