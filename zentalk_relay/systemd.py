"""systemd's notification protocol: READY=1 once listening, WATCHDOG=1 while the reactor runs.

A datagram to ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
namespace); nothing happens when the variable is unset, so the node runs the
same outside systemd.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.task import LoopingCall

from .logs import logger

log = logger(__name__)


def notify(message: str, environ=os.environ) -> bool:
    """Send one notification; False when not under systemd or when the socket is gone."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as error:
        log.warn("cannot notify systemd: {error}", error=str(error))
        return False
    return True


def watchdog_interval(environ=os.environ) -> float | None:
    """Half the watchdog period systemd asked for (WATCHDOG_USEC), or None."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


def start_watchdog(reactor, environ=os.environ) -> LoopingCall | None:
    """Ping the watchdog from the reactor itself: a stuck reactor stops the pings."""
    interval = watchdog_interval(environ)
    if interval is None:
        return None
    loop = LoopingCall(notify, "WATCHDOG=1", environ)
    loop.clock = reactor
    loop.start(interval, now=True)
    return loop
