"""The node's keys on disk: an Ed25519 signing key and two X25519 keys.

``node_id = SHA-256(ed25519 public key)``. The Ed25519 key signs
authentication challenges and the node's DHT record; the link key is the
Noise static key clients pin; the onion key decrypts onion layers and may
rotate. Each key is one line of text in ``<data_dir>/keys``::

    zentalk-relay <kind> v1 <secret hex> <first 4 bytes of SHA-256(secret) hex>

The check bytes catch a truncated or edited file, which would otherwise
silently become a different identity. A key file that others can read, or
that does not parse, stops start-up: the operator must decide, not the node.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nacl.public import PrivateKey
from nacl.signing import SigningKey

KEYS_DIR = "keys"
_FILES = {
    "ed25519": "ed25519.key",
    "x25519-link": "link.key",
    "x25519-onion": "onion.key",
}


class IdentityError(Exception):
    """A key file is missing where it must exist, corrupt, or exposed."""


@dataclass(frozen=True)
class Identity:
    signing_key: SigningKey
    link_key: PrivateKey
    onion_key: PrivateKey

    @property
    def ed25519_public(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def link_public(self) -> bytes:
        return bytes(self.link_key.public_key)

    @property
    def onion_public(self) -> bytes:
        return bytes(self.onion_key.public_key)

    @property
    def node_id(self) -> bytes:
        return node_id_for(self.ed25519_public)

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature


def node_id_for(ed25519_public: bytes) -> bytes:
    return hashlib.sha256(ed25519_public).digest()


def _check(secret: bytes) -> str:
    return hashlib.sha256(secret).digest()[:4].hex()


def _encode(kind: str, secret: bytes) -> bytes:
    return f"zentalk-relay {kind} v1 {secret.hex()} {_check(secret)}\n".encode("ascii")


def _decode(path: Path, kind: str, text: bytes) -> bytes:
    fields = text.decode("ascii", "replace").split()
    if len(fields) != 5 or fields[:3] != ["zentalk-relay", kind, "v1"]:
        raise IdentityError(f"{path} is corrupt: not a zentalk-relay {kind} key file")
    try:
        secret = bytes.fromhex(fields[3])
    except ValueError:
        raise IdentityError(f"{path} is corrupt: the key is not hex") from None
    if len(secret) != 32 or fields[4] != _check(secret):
        raise IdentityError(f"{path} is corrupt: the key fails its check; restore it from a backup")
    return secret


def _read(path: Path, kind: str) -> bytes:
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise IdentityError(f"{path}: cannot read: {error.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}); run 'chmod 600 {path}' "
            "and consider the key compromised if others could log in"
        )
    return _decode(path, kind, path.read_bytes())


def _write_new(path: Path, content: bytes) -> None:
    """Create ``path`` with mode 0600 atomically; never overwrite."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.link(tmp, path)  # fails if path appeared meanwhile
    os.unlink(tmp)


def ensure_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) & (stat.S_IRWXG | stat.S_IRWXO):
        os.chmod(path, 0o700)


def _load_or_create(keys: Path, kind: str, create: bool) -> tuple[bytes, bool]:
    path = keys / _FILES[kind]
    if path.exists():
        return _read(path, kind), False
    if not create:
        raise IdentityError(f"{path} does not exist; start the node or run 'zentalk-relay keygen' first")
    secret = os.urandom(32)
    _write_new(path, _encode(kind, secret))
    return secret, True


PREVIOUS_ONION = "onion.prev.key"
ONION_STATE = "onion.json"


def rotate_onion_key(data_dir: Path) -> PrivateKey:
    """Make a new onion key current; the old one moves to ``onion.prev.key``."""
    keys = data_dir / KEYS_DIR
    current = keys / _FILES["x25519-onion"]
    fresh = os.urandom(32)
    staged = keys / "onion.next.key"
    staged.unlink(missing_ok=True)
    _write_new(staged, _encode("x25519-onion", fresh))
    os.replace(current, keys / PREVIOUS_ONION)
    os.replace(staged, current)
    return PrivateKey(fresh)


def load_previous_onion_key(data_dir: Path) -> PrivateKey | None:
    path = data_dir / KEYS_DIR / PREVIOUS_ONION
    if not path.exists():
        return None
    return PrivateKey(_read(path, "x25519-onion"))


def forget_previous_onion_key(data_dir: Path) -> None:
    (data_dir / KEYS_DIR / PREVIOUS_ONION).unlink(missing_ok=True)


def load_identity(data_dir: Path, create: bool = True) -> tuple[Identity, list[str]]:
    """The node's identity, creating missing keys when ``create``.

    Returns the identity and the kinds of key that were created now.
    """
    keys = data_dir / KEYS_DIR
    if create:
        ensure_private_dir(data_dir)
        ensure_private_dir(keys)
    secrets: dict[str, bytes] = {}
    created: list[str] = []
    for kind in _FILES:
        secrets[kind], new = _load_or_create(keys, kind, create)
        if new:
            created.append(kind)
    identity = Identity(
        SigningKey(secrets["ed25519"]),
        PrivateKey(secrets["x25519-link"]),
        PrivateKey(secrets["x25519-onion"]),
    )
    return identity, created
