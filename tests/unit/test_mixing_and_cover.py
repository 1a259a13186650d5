"""The mixer's delays and order, and cover loops built like real packets."""

import random
import statistics

import pytest
from nacl.public import PrivateKey

from zentalk_relay.relay import delivery, onion
from zentalk_relay.relay.cover import PoissonSchedule, client_loop_packet, loop_packet
from zentalk_relay.relay.mixing import Mixer


def test_each_item_waits_an_exponential_delay_with_the_configured_mean():
    mixer = Mixer(0.05, random.Random(1), capacity=100_000)
    for index in range(20_000):
        assert mixer.push(index, 0.0) == []
    held = []
    while len(mixer):  # release each at its own deadline, as the relay's timer does
        held += [seconds for _, seconds in mixer.due(mixer.next_deadline())]
    assert len(held) == 20_000
    assert statistics.fmean(held) == pytest.approx(0.05, rel=0.03)
    assert statistics.median(held) == pytest.approx(0.05 * 0.6931, rel=0.05)  # ln 2 · mean


def test_items_leave_at_their_deadlines_in_deadline_order_and_report_the_time_held():
    mixer = Mixer(1.0, random.Random(3))
    for index in range(100):
        mixer.push(index, float(index) * 0.01)
    out, now = [], 0.0
    while len(mixer):
        now = mixer.next_deadline()
        due = mixer.due(now)
        assert due and all(held >= 0 for _, held in due)
        out += [item for item, _ in due]
    assert sorted(out) == list(range(100))
    assert out != list(range(100))  # a second-long mean reorders items 10 ms apart
    assert mixer.next_deadline() is None and mixer.due(now + 100) == []


def test_under_load_the_output_order_differs_from_the_input_order():
    mixer = Mixer(0.05, random.Random(4))
    out = []
    for index in range(1000):  # one every millisecond: 50 arrive per mean delay
        now = index * 0.001
        out += [item for item, _ in mixer.due(now)]
        mixer.push(index, now)
    out += [item for item, _ in mixer.due(10.0)]
    assert sorted(out) == list(range(1000))
    displaced = sum(1 for position, item in enumerate(out) if item != position)
    assert displaced > 900


def test_a_full_pool_releases_the_nearest_deadline_at_once_and_drops_nothing():
    mixer = Mixer(10.0, random.Random(5), capacity=3)
    for index in range(3):
        assert mixer.push(index, 0.0) == []
    nearest = min(mixer._heap)[3]  # noqa: SLF001
    released = mixer.push(3, 1.0)
    assert [item for item, _ in released] == [nearest] and released[0][1] == 1.0
    assert len(mixer) == 3 and mixer.released_early == 1
    assert sorted(mixer.drain() + [nearest]) == [0, 1, 2, 3] and len(mixer) == 0


def test_a_mixer_needs_a_positive_mean():
    with pytest.raises(ValueError):
        Mixer(0.0, random.Random())


def test_poisson_gaps_have_the_configured_rate_and_zero_never_fires():
    schedule = PoissonSchedule(5.0, random.Random(6))
    gaps = [schedule.next_gap() for _ in range(20_000)]
    assert statistics.fmean(gaps) == pytest.approx(0.2, rel=0.03)
    assert PoissonSchedule(0.0, random.Random()).next_gap() is None
    with pytest.raises(ValueError):
        PoissonSchedule(-1.0, random.Random())


class _Relay:
    def __init__(self, name: str) -> None:
        self.node_id = bytes([ord(name)]) * 32
        private = PrivateKey.generate()
        self.keyring = onion.OnionKeyring(bytes(private), 0, 0.0, 3600.0)
        self.public = bytes(private.public_key)
        self.replay = onion.ReplayCache(1000)

    def process(self, packet: bytes):
        return onion.process_packet(packet, self.keyring, self.replay, 1.0)


def test_a_relay_loop_goes_through_two_other_relays_and_ends_silently_at_its_sender():
    a, b, c = _Relay("a"), _Relay("b"), _Relay("c")
    first, packet = loop_packet((a.node_id, a.public), [(b.node_id, b.public), (c.node_id, c.public)],
                                random.Random(7))
    assert first == b.node_id and len(packet) == onion.PACKET_SIZE
    step = b.process(packet)
    assert isinstance(step, onion.Forwarded) and step.next_node_id == c.node_id
    step = c.process(step.packet)
    assert isinstance(step, onion.Forwarded) and step.next_node_id == a.node_id
    assert isinstance(a.process(step.packet), onion.Dropped)


def test_a_loop_needs_two_other_relays():
    a, b = _Relay("a"), _Relay("b")
    with pytest.raises(ValueError):
        loop_packet((a.node_id, a.public), [(a.node_id, a.public), (b.node_id, b.public)], random.Random())


def test_a_client_loop_is_delivered_back_to_the_client_with_a_random_body():
    a, b = _Relay("a"), _Relay("b")
    own = b"\x07" * 32
    message_id, packet = client_loop_packet([(a.node_id, a.public), (b.node_id, b.public)], own, 300)
    assert len(packet) == onion.PACKET_SIZE
    step = a.process(packet)
    delivered = b.process(step.packet)
    assert isinstance(delivered, onion.Delivered) and delivered.address == own
    got_id, body = delivery.decode(delivered.payload)
    assert got_id == message_id and len(body) == 300 and body != bytes(300)
