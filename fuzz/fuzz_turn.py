#!/usr/bin/env python3
"""Coverage-guided fuzzing of the TURN server (atheris): requests, data, time.

Run through ``fuzz/run``; by hand::

    PYTHONPATH=. python3 fuzz/fuzz_turn.py fuzz/corpus/turn -max_total_time=60
    PYTHONPATH=. python3 fuzz/fuzz_turn.py CRASH_FILE        # replay one input

An input is a script of operations (see :func:`parse_script`), each
``op u8 ‖ who u8 ‖ length u16 ‖ payload``, run against one fresh
:class:`~zentalk_relay.nat.turn.TurnServer` with eight clients (client 2 over TCP,
client 3 over TLS, the others over UDP, client 6 from IPv6; users alice and bob;
at most 3 allocations per user and 5 in all):

====  =====================================================================
op    what the payload is
====  =====================================================================
0     a datagram from client ``who & 7``, as is (unsigned)
1     a STUN message the harness signs for client ``who & 7``: its method,
      class, transaction id and attributes are kept, USERNAME, REALM, NONCE
      and MESSAGE-INTEGRITY (-SHA256 when ``who & 0x80``) added; the nonce is
      the last one the server gave that client when ``who & 0x40``, else a
      fresh one. A payload that does not decode is sent as it is.
2     ChannelData from client ``who & 7``
3     a datagram from peer ``who & 7`` (a fixed table, public and private)
      to relayed socket ``payload[0]`` of those open, the rest the data
4     time passes: ``payload[0:2]`` seconds (big-endian), then timers run
5     bytes on the stream of client 2 (``who`` even) or 3 (odd), cut by StreamFramer
6     client ``who & 7``'s stream closes (UDP clients: nothing)
====  =====================================================================

The harness plays the adapter: it binds the first candidate port of every
OpenRelays (unless taken), tracks open relayed sockets, and closes them on
CloseRelay. Every property violation raises AssertionError; the properties
are listed in ``fuzz/README.md``.
"""

from __future__ import annotations

import random
import struct
import sys
import traceback

import atheris

with atheris.instrument_imports(include=["zentalk_relay"]):
    from zentalk_relay.nat import stun
    from zentalk_relay.nat.credentials import Credentials, NonceIssuer
    from zentalk_relay.nat.policy import PeerPolicy
    from zentalk_relay.nat.turn import (
        CloseRelay,
        FramingError,
        OpenRelays,
        RelayAddress,
        StreamFramer,
        ToClient,
        ToPeer,
        TurnServer,
        TurnSettings,
    )

Attr = stun.Attr
MessageClass = stun.MessageClass

REALM = "fuzz.test"
USERS = {"alice": "wonderland", "bob": "builder"}
RELAY_V4, RELAY_V6 = "130.0.0.1", "2a01:4f8::1"
LISTENER = (RELAY_V4, 3478)
CLIENTS = [
    ("udp", LISTENER, ("192.0.2.10", 40000), "alice"),
    ("udp", LISTENER, ("192.0.2.11", 40001), "bob"),
    ("tcp", LISTENER, ("192.0.2.12", 40002), "alice"),
    ("tls", LISTENER, ("192.0.2.13", 40003), "bob"),
    ("udp", LISTENER, ("192.0.2.14", 40004), "alice"),
    ("udp", LISTENER, ("192.0.2.15", 40005), "alice"),
    ("udp", LISTENER, ("2001:db8::16", 40006), "bob"),
    ("udp", LISTENER, ("192.0.2.17", 40007), "bob"),
]
PEERS = [("93.184.216.34", 5000), ("93.184.216.34", 5001), ("93.184.216.35", 6000), ("2606:4700::1111", 5000),
         ("127.0.0.1", 3480), ("10.0.0.1", 1), (RELAY_V4, 50000), ("::ffff:8.8.8.8", 53)]
OPS = 7
MAX_OPS = 64
_AUTH_ATTRIBUTES = {Attr.USERNAME, Attr.USERHASH, Attr.REALM, Attr.NONCE, Attr.MESSAGE_INTEGRITY,
                    Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT}


def parse_script(data: bytes) -> list[tuple[int, int, bytes]]:
    """``op ‖ who ‖ length u16 ‖ payload`` repeated; a short tail is one last payload for op 0."""
    ops = []
    offset = 0
    while offset + 4 <= len(data) and len(ops) < MAX_OPS:
        op, who, length = struct.unpack_from("!BBH", data, offset)
        payload = data[offset + 4 : offset + 4 + length]
        ops.append((op % OPS, who, payload))
        offset += 4 + length
    if offset < len(data) and len(ops) < MAX_OPS:
        ops.append((0, 0, data[offset:]))
    return ops


def encode_script(ops) -> bytes:
    return b"".join(struct.pack("!BBH", op, who, len(payload)) + payload for op, who, payload in ops)


def _fail(what: str, error: BaseException | None = None) -> None:
    if error is None:
        raise AssertionError(what)
    original = "".join(traceback.format_exception(error)).rstrip()
    raise AssertionError(f"{what}: {type(error).__name__}: {error}\n--- original exception ---\n{original}") from error


class Harness:
    def __init__(self) -> None:
        settings = TurnSettings(realm=REALM, software="fuzz", port_min=50000, port_max=50015,
                                allocations_per_user=3, max_allocations=5,
                                relays={4: RelayAddress(RELAY_V4, RELAY_V4), 6: RelayAddress(RELAY_V6, RELAY_V6)})
        policy = PeerPolicy(own_addresses=[RELAY_V4, RELAY_V6], own_ports=[3478], own_port_range=(50000, 50015))
        self.server = TurnServer(settings, Credentials(REALM, USERS, (b"fuzz-secret",)),
                                 NonceIssuer(b"f" * 32, 600), policy, random.Random(0))
        self.now = 1000.0
        self.open: set = set()
        self.nonces: dict = {}
        self.framers = {index: StreamFramer() for index in (2, 3)}
        self.keys = {name: {algorithm: stun.long_term_key(name, REALM, password, algorithm)
                            for algorithm in ("md5", "sha256")} for name, password in USERS.items()}

    def client(self, who: int) -> tuple:
        transport, local, remote, _ = CLIENTS[who & 7]
        return transport, local, remote

    # -- the adapter's part --------------------------------------------------------

    def run(self, actions, request: bytes | None = None, key: bytes | None = None) -> None:
        for action in actions:
            if isinstance(action, OpenRelays):
                ports = []
                for bind in action.binds:
                    if not bind.ports:
                        ports.append(None)
                        continue
                    port = bind.ports[0]
                    wanted = [(bind.host, port)] + ([(bind.host, port + 1)] if bind.pair else [])
                    if any(relay in self.open for relay in wanted):
                        _fail(f"OpenRelays offered {wanted}, already open")
                    self.open.update(wanted)
                    ports.append(port)
                self.run(self.server.relays_opened(action.token, ports, self.now), request, key)
            elif isinstance(action, CloseRelay):
                if action.relay not in self.open:
                    _fail(f"CloseRelay {action.relay}: not open")
                self.open.remove(action.relay)
            elif isinstance(action, ToPeer):
                if action.relay not in self.open:
                    _fail(f"ToPeer through {action.relay}, which is not open")
            elif isinstance(action, ToClient):
                self.check_reply(action, request, key)
            else:
                _fail(f"unknown action {action!r}")

    def check_reply(self, action, request: bytes | None, key: bytes | None) -> None:
        try:
            reply = stun.decode(action.data)
        except Exception as error:  # noqa: BLE001
            _fail(f"a reply does not decode: {action.data.hex()}", error)
        if reply.cls not in (MessageClass.SUCCESS, MessageClass.ERROR):
            _fail(f"a reply to a client is a {reply.cls.name}")
        if request is not None and len(request) >= 20 and reply.transaction_id != request[8:20]:
            _fail("a reply does not echo the request's transaction id")
        if reply.cls is MessageClass.SUCCESS:
            # Signed with some user's key: this request's, or, for a retransmission answered
            # from the allocation's cache, the key of the request that made it (RFC 8656 7.2).
            keys = ([key] if key is not None else []) + [k for user in self.keys.values() for k in user.values()]
            if not any(stun.check_integrity(reply, candidate) for candidate in keys):
                _fail("a success without a MESSAGE-INTEGRITY made with a user's key")
        nonce = reply.get(Attr.NONCE)
        if nonce is not None:
            self.nonces[action.client] = nonce

    # -- operations ----------------------------------------------------------------------

    def op_raw(self, who: int, payload: bytes) -> None:
        self.run(self.server.handle(self.client(who), payload, self.now), payload)

    def op_signed(self, who: int, payload: bytes) -> None:
        client = self.client(who)
        try:
            message = stun.decode(payload)
        except stun.StunError:
            return self.op_raw(who, payload)
        if message.classic:
            return self.op_raw(who, payload)
        name = CLIENTS[who & 7][3]
        sha256 = bool(who & 0x80)
        nonce = self.nonces.get(client) if who & 0x40 else None
        if nonce is None:
            nonce = self.server.nonces.issue(client[2][0], self.now)
        algorithm = "md5"
        attributes = [(a.type, a.value) for a in message.attributes if a.type not in _AUTH_ATTRIBUTES]
        if any(t == Attr.PASSWORD_ALGORITHM and v[:2] == b"\x00\x02" for t, v in attributes):
            algorithm = "sha256"
        key = self.keys[name][algorithm]
        attributes += [(Attr.USERNAME, name.encode()), (Attr.REALM, REALM.encode()), (Attr.NONCE, nonce)]
        try:
            data = stun.encode(message.method, message.cls, message.transaction_id, attributes,
                               integrity_key=key, integrity_sha256=sha256)
        except (ValueError, struct.error):
            return None
        if len(data) > stun.MAX_MESSAGE_SIZE:
            return None
        self.run(self.server.handle(client, data, self.now), data, key)
        return None

    def op_channel(self, who: int, payload: bytes) -> None:
        hit = self.server.channel_from_client(self.client(who), payload, self.now)
        if hit is not None:
            relay, data, peer = hit
            if relay not in self.open:
                _fail(f"ChannelData relayed through {relay}, which is not open")
            number, length = struct.unpack_from("!HH", payload)
            if data != payload[4 : 4 + length]:
                _fail("ChannelData payload is not the bytes after the header")
            if self.server.policy.check(peer[0], peer[1]) is not None:
                _fail(f"ChannelData relayed to a refused peer {peer}")

    def op_peer(self, who: int, payload: bytes) -> None:
        if not self.open or not payload:
            return
        relays = sorted(self.open)
        relay = relays[payload[0] % len(relays)]
        peer = PEERS[who & 7]
        out = self.server.from_peer(relay, payload[1:], peer, self.now)
        if out is None:
            return
        if self.server.relay_client(relay) is None:
            _fail("data from a peer went out for a relayed socket without an allocation")
        if self.server.policy.check(peer[0]) is not None:
            _fail(f"data from refused peer {peer} reached a client")
        if out[0] & 0xC0 == 0x40:
            number, length = struct.unpack_from("!HH", out)
            if out[4 : 4 + length] != payload[1:]:
                _fail("ChannelData to the client does not carry the peer's bytes")
        else:
            indication = stun.decode(out)
            if indication.get(Attr.DATA) != payload[1:]:
                _fail("a Data indication does not carry the peer's bytes")

    def op_time(self, who: int, payload: bytes) -> None:
        seconds = int.from_bytes(payload[:2].ljust(2, b"\0"), "big")
        self.now += seconds
        self.run(self.server.expire(self.now))
        deadline = self.server.next_deadline()
        if deadline is not None and deadline <= self.now:
            _fail(f"after expire({self.now}) the next deadline {deadline} is not in the future")

    def op_stream(self, who: int, payload: bytes) -> None:
        index = 2 + (who & 1)
        framer = self.framers[index]
        try:
            messages = framer.receive(payload)
        except FramingError:
            self.framers[index] = StreamFramer()
            return
        for message in messages:
            if message[0] >= 0x40:
                self.op_channel(index, message)
            else:
                self.op_raw(index, message)

    def op_close(self, who: int, payload: bytes) -> None:
        client = self.client(who)
        if client[0] != "udp":
            self.run(self.server.client_closed(client, self.now))

    def finish(self) -> None:
        try:
            self.server.gauges(self.now)
        except Exception as error:  # noqa: BLE001
            _fail("gauges raised", error)
        self.run(self.server.close_all())
        if self.open:
            _fail(f"relayed sockets left open after close_all: {sorted(self.open)}")
        if self.server.allocation_count:
            _fail("allocations left after close_all")


OPERATIONS = ("op_raw", "op_signed", "op_channel", "op_peer", "op_time", "op_stream", "op_close")


def TestOneInput(data: bytes) -> None:
    harness = Harness()
    for op, who, payload in parse_script(data):
        try:
            getattr(harness, OPERATIONS[op])(who, payload)
        except AssertionError:
            raise
        except Exception as error:  # noqa: BLE001 - that is the property under test
            _fail(f"{OPERATIONS[op]} raised", error)
    harness.finish()


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
