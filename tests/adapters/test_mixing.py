"""The router holds onion packets for their mixing delay on the reactor's clock."""

import random
import statistics

import pytest
from nacl.public import PrivateKey
from twisted.internet.task import Clock

from zentalk_relay.link.frames import Onion
from zentalk_relay.relay import delivery, onion
from zentalk_relay.relay.mixing import Mixer
from zentalk_relay.relay.service import RelayStats, Router

NEXT = b"\x02" * 32


class _Mesh:
    def __init__(self) -> None:
        self.forwarded: list[tuple[bytes, bytes]] = []

    def forward(self, node_id: bytes, frame: Onion) -> None:
        self.forwarded.append((node_id, frame.packet))


def _router(mean: float):
    clock = Clock()
    private = PrivateKey.generate()
    keyring = onion.OnionKeyring(bytes(private), 0, 0.0, 3600.0)
    mesh, held = _Mesh(), []
    mixer = Mixer(mean, random.Random(11)) if mean else None
    router = Router(clock, None, None, mesh, keyring, onion.ReplayCache(100_000), RelayStats(), mixer=mixer,
                    mix_held=held.append)
    return clock, router, mesh, held, bytes(private.public_key)


def _packets(public: bytes, count: int) -> list[bytes]:
    hops = [onion.Hop(public, onion.Instruction.FORWARD, NEXT),
            onion.Hop(bytes(PrivateKey.generate().public_key), onion.Instruction.DROP, bytes(32))]
    return [onion.build_packet(hops, delivery.encode(i.to_bytes(16, "big"), b"", onion.MAX_PAYLOAD))
            for i in range(count)]


def _feed(clock, router, packets, gap):
    for packet in packets:
        router.handle(None, Onion(packet))
        clock.advance(gap)


def test_with_mixing_on_packets_leave_after_the_configured_mean_delay():
    clock, router, mesh, held, public = _router(0.05)
    packets = _packets(public, 1000)
    _feed(clock, router, packets, 0.001)  # 1000 packets/s: 50 arrive per mean delay
    for _ in range(2000):
        if not len(router.mixer):
            break
        clock.advance(0.01)
    assert len(mesh.forwarded) == 1000 and all(node_id == NEXT for node_id, _ in mesh.forwarded)
    assert len(held) == 1000
    assert statistics.fmean(held) == pytest.approx(0.05, rel=0.1)


def test_output_order_differs_from_input_order_under_load():
    clock, router, mesh, _, public = _router(0.05)
    order = []
    original = router._onward  # noqa: SLF001 - observe which input leaves when

    def onward(result):
        order.append(result)
        original(result)

    router._onward = onward  # noqa: SLF001
    inputs = []
    for packet in _packets(public, 500):
        before = len(router.mixer)
        router.handle(None, Onion(packet))
        inputs.append(router.mixer._heap[-1][3] if len(router.mixer) > before else None)  # noqa: SLF001
        clock.advance(0.001)
    clock.advance(10.0)
    router._mix_due()  # noqa: SLF001 - the timer fired in advance(); release any rounding leftovers
    assert len(order) == 500
    positions = {id(result): index for index, result in enumerate(order)}
    out_of_place = sum(1 for index, result in enumerate(inputs) if result is not None
                       and positions[id(result)] != index)
    assert out_of_place > 400


def test_without_mixing_packets_leave_at_once_in_order():
    clock, router, mesh, held, public = _router(0.0)
    _feed(clock, router, _packets(public, 5), 0.0)
    assert len(mesh.forwarded) == 5 and held == []


def test_a_stopping_relay_sends_on_what_the_mixer_holds():
    clock, router, mesh, _, public = _router(10.0)
    _feed(clock, router, _packets(public, 20), 0.0)
    assert len(mesh.forwarded) < 20
    router.release_all()
    assert len(mesh.forwarded) == 20 and len(router.mixer) == 0
    assert not clock.getDelayedCalls()


def test_packets_due_together_leave_in_one_batch_of_writes():
    from zentalk_relay.link.protocol import _batch

    clock, router, mesh, _, public = _router(0.05)
    batches = []
    original = mesh.forward

    def forward(node_id, frame):
        batches.append(_batch.adapters)  # the batch the write joins, None if written at once
        original(node_id, frame)

    mesh.forward = forward
    _feed(clock, router, _packets(public, 20), 0.0)
    clock.advance(10.0)  # every deadline has passed: one timer call releases them all
    assert len(batches) == 20
    assert batches[0] is not None and all(batch is batches[0] for batch in batches)
