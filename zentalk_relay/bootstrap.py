"""Bootstrap strings: how a relay is named to clients and other relays.

``ztr1:<base64url(ed25519 public ‖ X25519 link public)>[@host:port[,host:port...]]``

The Ed25519 key pins the relay's identity (node id = its SHA-256), the
X25519 key is the Noise NK static key the client needs before its first
message, and the addresses are the relay's link listeners. One string
is enough to reach and authenticate a relay with no directory.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from .config import parse_host_port

PREFIX = "ztr1:"


class BootstrapError(ValueError):
    """Not a bootstrap string this version understands."""


@dataclass(frozen=True, slots=True)
class Bootstrap:
    ed25519_public: bytes
    link_public: bytes
    addresses: tuple[tuple[str, int], ...] = ()

    def __str__(self) -> str:
        keys = base64.urlsafe_b64encode(self.ed25519_public + self.link_public).rstrip(b"=").decode()
        if not self.addresses:
            return PREFIX + keys
        return PREFIX + keys + "@" + ",".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.addresses
        )


def parse(text: str) -> Bootstrap:
    if not text.startswith(PREFIX):
        raise BootstrapError(f"a bootstrap string starts with {PREFIX!r}")
    keys, _, addresses = text[len(PREFIX):].partition("@")
    try:
        raw = base64.urlsafe_b64decode(keys + "=" * (-len(keys) % 4))
    except ValueError:
        raise BootstrapError("the key part is not base64url") from None
    if len(raw) != 64:
        raise BootstrapError("the key part must hold two 32-byte keys")
    parsed = []
    for item in filter(None, addresses.split(",")):
        try:
            parsed.append(parse_host_port(item))
        except ValueError as error:
            raise BootstrapError(str(error)) from None
    return Bootstrap(raw[:32], raw[32:], tuple(parsed))
