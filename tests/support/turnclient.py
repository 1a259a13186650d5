"""A scripted TURN client for driving :class:`TurnServer` in unit and adapter tests.

It builds requests with long-term credentials the way RFC 8489 clients do:
first without MESSAGE-INTEGRITY to learn REALM and NONCE, then signed.
"""

from __future__ import annotations

import os
import random
import struct

from zentalk_relay.nat import stun
from zentalk_relay.nat.credentials import Credentials, NonceIssuer
from zentalk_relay.nat.policy import PeerPolicy
from zentalk_relay.nat.stun import Attr, MessageClass, Method
from zentalk_relay.nat.turn import OpenRelays, RelayAddress, ToClient, TurnServer, TurnSettings

REALM = "zentalk.test"
USERS = {"alice": "wonderland", "bob": "builder"}
SECRET = b"rest-api-shared-secret"
NONCE_SECRET = b"0123456789abcdef0123456789abcdef"
RELAY_V4 = "130.0.0.1"
RELAY_V6 = "2a01:4f8::1"
PEER_V4 = ("93.184.216.34", 5000)
PEER_V4_B = ("93.184.216.35", 6000)
PEER_V6 = ("2606:4700::1111", 5000)
CLIENT = ("udp", ("130.0.0.1", 3478), ("192.0.2.50", 40000))


def make_server(*, relays=None, policy=None, secrets=(SECRET,), users=None, **overrides) -> TurnServer:
    settings = TurnSettings(
        realm=REALM,
        software="zentalk-relay test",
        relays=relays if relays is not None else {4: RelayAddress(RELAY_V4, RELAY_V4), 6: RelayAddress(RELAY_V6, RELAY_V6)},
        **overrides,
    )
    return TurnServer(
        settings,
        Credentials(REALM, USERS if users is None else users, tuple(secrets)),
        NonceIssuer(NONCE_SECRET, 600),
        policy or PeerPolicy(own_addresses=[RELAY_V4, RELAY_V6], own_ports=[3478],
                             own_port_range=(settings.port_min, settings.port_max)),
        random.Random(7),
    )


def error_code(data: bytes) -> int | None:
    message = stun.decode(data)
    value = message.get(Attr.ERROR_CODE)
    return None if value is None else stun.decode_error_code(value)[0]


def replies(actions) -> list[bytes]:
    return [action.data for action in actions if isinstance(action, ToClient)]


class TurnClient:
    def __init__(self, server: TurnServer, client=CLIENT, username="alice", password="wonderland") -> None:
        self.server = server
        self.client = client
        self.username = username
        self.password = password
        self.nonce: bytes | None = None
        self.realm = REALM
        self.algorithm = "md5"
        self.sha256 = False
        self.retry_stale = True

    @property
    def key(self) -> bytes:
        return stun.long_term_key(self.username, self.realm, self.password, self.algorithm)

    def build(self, method, attributes=(), *, tid=None, auth=True, cls=MessageClass.REQUEST, username=None,
              nonce=None, extra=(), key=None, fingerprint=True) -> bytes:
        tid = tid or os.urandom(12)
        attributes = [(t, v(tid) if callable(v) else v) for t, v in attributes]
        if not auth:
            return stun.encode(method, cls, tid, attributes + list(extra))
        name = self.username if username is None else username
        attributes += [(Attr.USERNAME, name.encode()), (Attr.REALM, self.realm.encode()),
                       (Attr.NONCE, nonce if nonce is not None else self.nonce)]
        attributes += list(extra)
        if self.algorithm == "sha256":
            attributes += [(Attr.PASSWORD_ALGORITHMS, struct.pack("!HHHH", 2, 0, 1, 0)),
                           (Attr.PASSWORD_ALGORITHM, struct.pack("!HH", 2, 0))]
        return stun.encode(method, cls, tid, attributes, integrity_key=key or self.key,
                           integrity_sha256=self.sha256, fingerprint=fingerprint)

    def send(self, data: bytes, now: float = 0.0):
        actions = self.server.handle(self.client, data, now)
        for action in actions:
            if isinstance(action, OpenRelays):
                ports = [bind.ports[0] if bind.ports else None for bind in action.binds]
                actions = [a for a in actions if a is not action] + self.server.relays_opened(action.token, ports, now)
                break
        return actions

    def login(self, now: float = 0.0) -> None:
        """An unsigned request, to learn the nonce."""
        out = replies(self.send(self.build(Method.ALLOCATE, auth=False), now))
        message = stun.decode(out[0])
        assert error_code(out[0]) == 401
        self.nonce = message.get(Attr.NONCE)

    def request(self, method, attributes=(), now: float = 0.0, **kwargs) -> stun.Message:
        out = replies(self.send(self.build(method, attributes, **kwargs), now))
        assert len(out) == 1, out
        reply = stun.decode(out[0])
        if self.retry_stale and error_code(out[0]) == 438 and "nonce" not in kwargs:
            # What a real client does: take the fresh nonce and try once more.
            self.nonce = reply.get(Attr.NONCE)
            out = replies(self.send(self.build(method, attributes, **kwargs), now))
            reply = stun.decode(out[0])
        return reply

    def allocate(self, now: float = 0.0, attributes=(), **kwargs) -> stun.Message:
        if self.nonce is None:
            self.login(now)
        attributes = [(Attr.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00")] + list(attributes)
        return self.request(Method.ALLOCATE, attributes, now, **kwargs)

    def permit(self, *peers, now: float = 0.0) -> stun.Message:
        return self.request(Method.CREATE_PERMISSION, [
            (Attr.XOR_PEER_ADDRESS, lambda tid, p=p: stun.encode_xor_address(p[0], p[1], tid)) for p in peers], now)

    def bind(self, number: int, peer, now: float = 0.0) -> stun.Message:
        return self.request(Method.CHANNEL_BIND, [
            (Attr.CHANNEL_NUMBER, struct.pack("!HH", number, 0)),
            (Attr.XOR_PEER_ADDRESS, lambda tid: stun.encode_xor_address(peer[0], peer[1], tid))], now)

    def refresh(self, lifetime: int | None = None, now: float = 0.0, attributes=(), **kwargs) -> stun.Message:
        attributes = list(attributes) + ([] if lifetime is None else [(Attr.LIFETIME, struct.pack("!I", lifetime))])
        return self.request(Method.REFRESH, attributes, now, **kwargs)

    def send_indication(self, peer, data: bytes, now: float = 0.0, extra=()):
        message = self.build(Method.SEND, [
            (Attr.XOR_PEER_ADDRESS, lambda tid: stun.encode_xor_address(peer[0], peer[1], tid)),
            (Attr.DATA, data)], auth=False, cls=MessageClass.INDICATION, extra=extra)
        return self.server.handle(self.client, message, now)

    def channel_data(self, number: int, data: bytes, now: float = 0.0):
        return self.server.channel_from_client(self.client, struct.pack("!HH", number, len(data)) + data, now)

    def relay(self, family: int = 4):
        return self.server.allocation_for(self.client).relays[family]


def attribute_u32(message: stun.Message, attribute: int) -> int:
    return struct.unpack("!I", message.get(attribute))[0]
