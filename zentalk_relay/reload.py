"""SIGHUP: what a running node takes from a changed configuration, and what needs a restart.

A reload reads the configuration the node started with (the same file and
command-line options) again. Settings listed in :data:`RELOADABLE` apply at
once; any other change is logged as needing a restart and the running value
is kept, so the node's view of its configuration stays what it runs with.
Files named by the configuration are read again whether or not their paths
changed: TLS certificates and keys (renewed in place by an ACME client) and
TURN credentials (rotated secrets).

Limits apply to what comes next: a lower ``link.links_per_ip`` refuses the
next link from an IP over it, but closes none; new links get the new
message rate and windows, existing ones keep theirs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import Config

__all__ = ["RELOADABLE", "changed_keys", "merge"]

RELOADABLE = frozenset({
    "node.log_level", "node.drain_timeout",
    "link.max_links", "link.links_per_ip", "link.pending_handshakes", "link.links_per_peer",
    "link.messages_per_minute", "link.messages_burst", "link.pex_per_minute", "link.pex_burst",
    "link.window_initial", "link.window_min", "link.window_max", "link.max_backlog", "link.session_ttl",
    "link.accept_relays", "link.tls_certificate", "link.tls_private_key",
    "stun.tls_certificate", "stun.tls_private_key",
    "turn.users_file", "turn.secret_file", "turn.alternate_server",
    "mesh.max_links", "mesh.idle_timeout",
    "dht.queries_per_second", "dht.query_burst",
    "metrics.blur_interval",
})


def _values(config: Config) -> dict[str, Any]:
    return {f"{section.name}.{item.name}": getattr(getattr(config, section.name), item.name)
            for section in dataclasses.fields(config)
            for item in dataclasses.fields(getattr(config, section.name))}


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ, in declaration order."""
    before, after = _values(old), _values(new)
    return [key for key in before if before[key] != after[key]]


def merge(old: Config, new: Config) -> Config:
    """``new`` where a key is reloadable, ``old`` everywhere else: the configuration the node then runs."""
    sections = {}
    for section in dataclasses.fields(old):
        name = section.name
        kept, wanted = getattr(old, name), getattr(new, name)
        updates = {item.name: getattr(wanted, item.name) for item in dataclasses.fields(kept)
                   if f"{name}.{item.name}" in RELOADABLE}
        sections[name] = dataclasses.replace(kept, **updates)
    return Config(**sections)
