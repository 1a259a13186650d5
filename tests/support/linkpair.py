"""Two sans-IO link connections wired back to back, for unit tests."""

from __future__ import annotations

import hashlib
import itertools

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from zentalk_relay.link import frames
from zentalk_relay.link.noise import frame as record_frame
from zentalk_relay.link.session import Carrier, LinkConnection, LinkSettings, Role


def counter_rng(seed: int = 1):
    """Deterministic 'randomness' so that tests are repeatable."""
    stream = itertools.count(seed)

    def rng(size: int) -> bytes:
        return hashlib.sha256(next(stream).to_bytes(8, "big")).digest()[:size].ljust(size, b"\x01")

    return rng


class Pair:
    def __init__(self, *, carrier: Carrier = Carrier.NOISE_STREAM, now: float = 1000.0,
                 initiator_settings: LinkSettings | None = None, responder_settings: LinkSettings | None = None,
                 initiator_role: Role = Role.CLIENT, expected_peer_id: bytes | None = None, **responder_kwargs):
        self.now = now
        self.relay_static = PrivateKey.generate()
        self.relay_key = SigningKey.generate()
        self.client_key = SigningKey.generate()
        self.relay_id = hashlib.sha256(bytes(self.relay_key.verify_key)).digest()
        self.client_id = hashlib.sha256(bytes(self.client_key.verify_key)).digest()
        self.initiator = LinkConnection(
            initiator=True, role=initiator_role, signing_key=self.client_key, carrier=carrier,
            settings=initiator_settings or LinkSettings(), now=now, rng=counter_rng(1),
            remote_static=bytes(self.relay_static.public_key),
            expected_peer_id=self.relay_id if expected_peer_id is None else expected_peer_id,
        )
        self.responder = LinkConnection(
            initiator=False, role=Role.RELAY, signing_key=self.relay_key, carrier=carrier,
            settings=responder_settings or LinkSettings(), now=now, rng=counter_rng(1000),
            static_private=bytes(self.relay_static), **responder_kwargs,
        )
        self.events = {"initiator": [], "responder": []}
        self.initiator.connection_made(now)
        self.responder.connection_made(now)
        if carrier is Carrier.TLS_STREAM:
            self.initiator.secure_established(b"B" * 32, now)
            self.responder.secure_established(b"B" * 32, now)

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            moved = False
            for name, source, sink in (("responder", self.initiator, self.responder),
                                       ("initiator", self.responder, self.initiator)):
                for unit in source.pull(self.now):
                    moved = True
                    if sink.carrier is Carrier.NOISE_MESSAGES:
                        self.events[name] += sink.receive_record(unit, self.now)
                    else:
                        self.events[name] += sink.receive_data(unit, self.now)
            if not moved:
                return

    def of(self, side: str, kind: type) -> list:
        return [event for event in self.events[side] if isinstance(event, kind)]


def raw_frames(*items: frames.Frame | bytes) -> bytes:
    """Plaintext records as a TLS-carrier peer would write them, one frame each."""
    out = b""
    for item in items:
        encoded = item if isinstance(item, bytes) else frames.encode(item)
        out += record_frame(frames.pack_record([encoded]))
    return out
