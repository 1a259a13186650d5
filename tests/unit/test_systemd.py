"""The systemd notification protocol against a fake NOTIFY_SOCKET."""

import os
import socket

import pytest
from twisted.internet.task import Clock

from zentalk_relay import systemd


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


def test_notify_sends_one_datagram(notify_socket):
    path, sock = notify_socket
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": path})
    assert sock.recv(100) == b"READY=1"


def test_abstract_namespace():
    name = f"zentalk-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert systemd.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"READY=1"


def test_nothing_happens_outside_systemd():
    assert systemd.notify("READY=1", {}) is False
    assert systemd.watchdog_interval({}) is None


def test_a_missing_socket_is_not_fatal(tmp_path):
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_watchdog_pings_at_half_the_period(notify_socket):
    path, sock = notify_socket
    clock = Clock()
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    loop = systemd.start_watchdog(clock, environ)
    assert sock.recv(100) == b"WATCHDOG=1"
    clock.advance(1.9)
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(100)
    clock.advance(0.1)
    assert sock.recv(100) == b"WATCHDOG=1"
    loop.stop()


def test_watchdog_for_another_pid_is_ignored():
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
