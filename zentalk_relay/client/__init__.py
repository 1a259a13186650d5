"""The reference client: what tests, benchmarks and the CLI use to talk to a relay."""

from .link import ClientLink, LinkClosed, connect

__all__ = ["ClientLink", "LinkClosed", "connect"]
