"""twistd's entry point: the ``zentalk-relay`` options and ``makeService``.

Options are parsed and the whole configuration validated in
``postOptions``, so a bad file or flag stops twistd with one line before
anything listens. The reactor is imported inside ``makeService`` only:
twistd picks the reactor after plugins load.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from pathlib import Path

from twisted.python import usage

from .config import ConfigError, load, parse_override


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a Zentalk network node. Settings come from built-in defaults, then the "
        "--config file, then these options (see docs/configuration.md)."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file."],
        ["data-dir", "d", None, "Directory for keys and state (node.data_dir)."],
        ["log-level", None, None, "debug, info, warn, error or critical (node.log_level)."],
        ["metrics-listen", None, None, "Endpoint string for /metrics, /healthz, /status (metrics.listen)."],
    ]
    optFlags = [
        ["tor", None, "Publish the link listener as a Tor onion service (tor.enabled)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self._stun_udp: list[str] = []
        self._dht_udp: list[str] = []
        self._sets: list[tuple[str, str, object]] = []

    def opt_stun_udp(self, address: str) -> None:
        """UDP address for STUN, host:port or [v6]:port; repeat for more (stun.udp)."""
        self._stun_udp.append(address)

    def opt_dht_udp(self, address: str) -> None:
        """UDP address of the DHT node, host:port or [v6]:port; one per family (dht.udp)."""
        self._dht_udp.append(address)

    def opt_set(self, assignment: str) -> None:
        """Set any configuration key, KEY=VALUE with a TOML value; repeatable."""
        try:
            key, value = parse_override(assignment)
        except ConfigError as error:
            raise SystemExit(f"zentalk-relay: {error}") from None
        self._sets.append((f"--set {key}", key, value))

    def overrides(self) -> list[tuple[str, str, object]]:
        named = [
            ("--data-dir", "node.data_dir", self["data-dir"]),
            ("--log-level", "node.log_level", self["log-level"]),
            ("--metrics-listen", "metrics.listen", self["metrics-listen"]),
            ("--stun-udp", "stun.udp", self._stun_udp or None),
            ("--dht-udp", "dht.udp", self._dht_udp or None),
            ("--tor", "tor.enabled", True if self["tor"] else None),
        ]
        return [item for item in named if item[2] is not None] + self._sets

    def postOptions(self) -> None:
        try:
            self.config = load(Path(self["config"]) if self["config"] else None, self.overrides())
        except ConfigError as error:
            # Not usage.UsageError: twistd would print the whole help and exit 0.
            raise SystemExit(f"zentalk-relay: {error}") from None


def makeService(options: Options):
    from twisted.internet import reactor

    from .identity import IdentityError
    from .logs import set_level
    from .node import build_node

    set_level(options.config.node.log_level)
    try:
        node = build_node(reactor, options.config, reload_config=lambda: load(
            Path(options["config"]) if options["config"] else None, options.overrides()))
    except (IdentityError, OSError) as error:
        raise SystemExit(f"zentalk-relay: {error}") from None
    atexit.register(_exit_status, node)
    freeze_after_start(reactor)
    return node


#: Net new container objects between young collections (CPython's default is 700).
YOUNG_COLLECTION_THRESHOLD = 10_000


def freeze_after_start(reactor) -> None:
    """Once the node has started, move what start-up made out of the garbage collector's generations,
    and collect the young generation less often.

    Modules, the configuration, the tables read from disk live as long as the
    process; left in, every full collection walks them again. Under a stream of
    handshakes the collector took about 3 % of a busy node's time. A node's
    objects are freed by their reference counts (a link's state goes when its
    connection does); what calls for the collector is the slow growth of
    long-lived tables (resumable sessions), which at the default threshold set
    off a young collection every 30 handshakes or so: 1.9 % of a busy node's
    time under a stream of handshakes (measured with gc.callbacks), about none
    at 10,000.
    """
    reactor.callWhenRunning(reactor.callLater, 0, _freeze)


def _freeze() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])


def _exit_status(node) -> None:
    """twistd exits 0 once the reactor stops, whatever stopped it; a start-up that failed after the
    reactor ran (tor did not come up) exits 1 with its one line, as a StartupError before it would."""
    if node.startup_failure is None:
        return
    # twistd has replaced sys.stdout and sys.stderr with its log; the line goes to the real stderr
    for stream in (sys.stdout, sys.__stdout__):
        stream.flush()
    sys.__stderr__.write(f"zentalk-relay: {node.startup_failure}\n")
    sys.__stderr__.flush()
    os._exit(1)
