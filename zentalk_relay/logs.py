"""One filtering observer for the node's own log events.

twistd owns the log destination (stdout, a file, journald); the node only
decides which of its own events pass. Every module takes its Logger from
:func:`logger`, and :func:`set_level` moves the threshold at start-up and
on reload without touching Twisted's own events.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

NAMESPACE = "zentalk_relay"

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug)
_predicate.setLogLevelForNamespace(NAMESPACE, LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def logger(namespace: str) -> Logger:
    """A Logger for a module of this package (pass ``__name__``)."""
    return Logger(namespace=namespace, observer=_observer)


def set_level(name: str) -> None:
    _predicate.setLogLevelForNamespace(NAMESPACE, LogLevel.levelWithName(name))
