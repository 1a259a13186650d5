"""Onion key rotation on a Clock: schedule, overlap, retirement, and restarts."""

import json

from twisted.internet.task import Clock

from zentalk_relay.identity import load_identity
from zentalk_relay.relay import onion
from zentalk_relay.relay.service import OnionRotation, onion_keyring

DAY = 24 * 3600.0


class Wall:
    def __init__(self, clock: Clock, start: float = 1_800_000_000.0):
        self._clock = clock
        self._start = start

    def __call__(self) -> float:
        return self._start + self._clock.seconds()


def _start(tmp_path, clock, wall, interval=7 * DAY, overlap=DAY, replay=None):
    identity, _ = load_identity(tmp_path)
    keyring = onion_keyring(tmp_path, identity, overlap, clock.seconds(), wall())
    replay = replay or onion.ReplayCache(1000)
    rotation = OnionRotation(clock, tmp_path, keyring, replay, interval, wall)
    rotation.startService()
    return keyring, replay, rotation


def test_rotates_on_schedule_and_retires_the_previous_key_after_the_overlap(tmp_path):
    clock = Clock()
    wall = Wall(clock)
    keyring, _, rotation = _start(tmp_path, clock, wall)
    first = keyring.public
    clock.advance(7 * DAY - 1)
    assert keyring.epoch == 0
    clock.advance(1)
    assert keyring.epoch == 1 and keyring.public != first
    assert keyring.epochs == (1, 0)
    assert (tmp_path / "keys" / "onion.prev.key").exists()
    state = json.loads((tmp_path / "keys" / "onion.json").read_text())
    assert state == {"epoch": 1, "since": wall(), "previous_until": wall() + DAY}
    clock.advance(DAY)
    assert keyring.epochs == (1,)
    assert not (tmp_path / "keys" / "onion.prev.key").exists()
    rotation.stopService()
    assert clock.getDelayedCalls() == []


def test_a_restart_keeps_the_schedule_and_the_overlap(tmp_path):
    clock = Clock()
    wall = Wall(clock)
    keyring, _, rotation = _start(tmp_path, clock, wall)
    for _ in range(7 * 24 + 1):  # a week and an hour, as the hours pass
        clock.advance(3600)
    rotation.stopService()
    current, previous = keyring.public, keyring.previous.public

    again_clock = Clock()
    again_wall = Wall(again_clock, wall())
    restored, _, again = _start(tmp_path, again_clock, again_wall)
    assert restored.epochs == (1, 0)
    assert (restored.public, restored.previous.public) == (current, previous)
    again_clock.advance(DAY - 3600)  # the rest of the overlap, not a whole new one
    assert restored.epochs == (1,)
    again.stopService()


def test_a_nearly_full_replay_memory_rotates_at_once(tmp_path):
    clock = Clock()
    wall = Wall(clock)
    replay = onion.ReplayCache(10)
    keyring, replay, rotation = _start(tmp_path, clock, wall, replay=replay)
    for index in range(1, 10):
        assert replay.check_and_add(keyring.epoch, index.to_bytes(8, "big"))
    clock.advance(rotation.MAX_SLEEP)
    assert keyring.epoch == 1
    rotation.stopService()


def test_replay_memory_survives_a_clean_restart(tmp_path):
    clock = Clock()
    wall = Wall(clock)
    keyring, replay, rotation = _start(tmp_path, clock, wall)
    assert replay.check_and_add(keyring.epoch, b"\x01" * 8)
    rotation.stopService()
    again, replay_again, rotation_again = _start(tmp_path, Clock(), Wall(Clock(), wall()))
    assert again.public == keyring.public  # same key after a clean stop
    assert not replay_again.check_and_add(again.epoch, b"\x01" * 8)  # still remembered
    rotation_again.stopService()


def test_after_a_crash_the_key_is_rotated_without_overlap(tmp_path):
    clock = Clock()
    wall = Wall(clock)
    keyring, replay, rotation = _start(tmp_path, clock, wall)
    before = keyring.public
    # no stopService: the process died
    again, _, rotation_again = _start(tmp_path, Clock(), Wall(Clock(), wall()))
    assert again.public != before
    assert again.epochs == (again.epoch,)  # the old key opens nothing any more
    rotation_again.stopService()
