"""TURN credentials, sans-IO: static users, TURN REST API secrets and nonces.

Two sources of long-term credentials (RFC 8489 section 9.2):

- **static users**, ``name:password`` lines in a file the operator keeps
  (mode 0600), for fixed accounts;
- **TURN REST API** credentials (draft-uberti-behave-turn-rest, as coturn's
  ``use-auth-secret``): the user name is ``<expiry unix time>:<label>`` and
  the password ``base64(HMAC-SHA1(secret, user name))``, so an application
  server that knows the shared secret hands out passwords that stop working
  at the expiry without telling the relay anything. Several secrets may be
  configured, one per line: the first signs (``zentalk-relay
  turn-credentials``), every one verifies, which lets an operator rotate.

Nonces are stateless: ``obMatJos2`` and the security-feature bits (RFC 8489
section 9.2, numbered from the least significant bit as erratum 6290 says),
then base64url of ``expiry u32 ‖ HMAC-SHA256(node secret, expiry ‖ client
IP)[:12]``. A nonce is bound to the client's IP, expires after
``nonce_lifetime`` seconds (438 Stale Nonce), and costs no memory per client.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from .stun import long_term_key, userhash

#: RFC 8489 section 9.2: the prefix that tells a client the next four
#: characters carry the server's security features.
NONCE_COOKIE = "obMatJos2"
FEATURE_PASSWORD_ALGORITHMS = 1 << 0
FEATURE_USERNAME_ANONYMITY = 1 << 1

#: PASSWORD-ALGORITHM numbers (RFC 8489 section 18.5).
ALGORITHM_MD5 = 0x0001
ALGORITHM_SHA256 = 0x0002
ALGORITHM_NAMES = {ALGORITHM_MD5: "md5", ALGORITHM_SHA256: "sha256"}

#: Longest user name and password accepted from a file or a request
#: (RFC 8489: USERNAME is fewer than 509 bytes).
MAX_USERNAME = 508
MAX_PASSWORD = 256
#: A users file with more entries than this is a mistake, not a configuration.
MAX_USERS = 100_000
#: The separator between the expiry and the label in a REST API user name.
REST_SEPARATOR = ":"


class CredentialsError(Exception):
    """A credentials file cannot be used; the message names the file and the problem."""


def password_algorithms_value() -> bytes:
    """PASSWORD-ALGORITHMS as this server offers it: SHA-256 first, then MD5, no parameters."""
    return struct.pack("!HHHH", ALGORITHM_SHA256, 0, ALGORITHM_MD5, 0)


# -- files ------------------------------------------------------------------


def read_secret_file(path: str | Path, what: str) -> str:
    """The text of a file that holds a secret; refused unless only its owner may read it."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CredentialsError(f"{what} {path}: cannot read: {error.strerror}") from None
    except UnicodeDecodeError:
        raise CredentialsError(f"{what} {path}: not UTF-8 text") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(
            f"{what} {path} is readable by others (mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    return text


def parse_users(text: str, origin: str = "users file") -> dict[str, str]:
    """``name:password`` per line; blank lines and ``#`` comments are skipped.

    The password is everything after the first colon, so it may hold colons.
    A name may not contain a colon (it would read as a REST API name).
    """
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name or not password:
            raise CredentialsError(f"{origin}: line {number}: expected name:password")
        if len(name.encode()) > MAX_USERNAME or len(password.encode()) > MAX_PASSWORD:
            raise CredentialsError(f"{origin}: line {number}: name or password too long")
        if name in users:
            raise CredentialsError(f"{origin}: line {number}: user {name!r} appears twice")
        users[name] = password
        if len(users) > MAX_USERS:
            raise CredentialsError(f"{origin}: more than {MAX_USERS} users")
    return users


def parse_secrets(text: str, origin: str = "secret file") -> tuple[bytes, ...]:
    """One shared secret per non-blank, non-comment line; the first one signs."""
    secrets = tuple(
        line.strip().encode("utf-8") for line in text.splitlines() if line.strip() and not line.strip().startswith("#")
    )
    if not secrets:
        raise CredentialsError(f"{origin}: no secret in it")
    return secrets


def load_users(path: str | Path) -> dict[str, str]:
    return parse_users(read_secret_file(path, "turn.users_file"), str(path))


def load_secrets(path: str | Path) -> tuple[bytes, ...]:
    return parse_secrets(read_secret_file(path, "turn.secret_file"), str(path))


# -- TURN REST API ----------------------------------------------------------


def rest_password(secret: bytes, username: str) -> str:
    """The password for a REST API user name: base64(HMAC-SHA1(secret, name))."""
    return base64.b64encode(hmac.new(secret, username.encode("utf-8"), hashlib.sha1).digest()).decode("ascii")


def rest_credentials(secret: bytes, now: float, ttl: int, label: str = "") -> tuple[str, str]:
    """A user name valid until ``now + ttl`` and its password."""
    expiry = int(now) + ttl
    username = f"{expiry}{REST_SEPARATOR}{label}" if label else str(expiry)
    return username, rest_password(secret, username)


def rest_expiry(username: str) -> int | None:
    """The expiry a REST API user name carries, or None if it is not one."""
    head = username.split(REST_SEPARATOR, 1)[0]
    if not head.isdigit() or len(head) > 12:
        return None
    return int(head)


# -- the credential store ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request authenticated as, and with which key."""

    username: str
    key: bytes
    #: Which source vouched: "static" or "rest".
    source: str


class Credentials:
    """Finds the candidate keys for a user name (or USERHASH) in a realm."""

    def __init__(self, realm: str, users: dict[str, str] | None = None, secrets: tuple[bytes, ...] = ()) -> None:
        self.realm = realm
        self._users = dict(users or {})
        self._secrets = tuple(secrets)
        self._by_hash = {userhash(name, realm): name for name in self._users}
        self._key_cache: dict[tuple[str, str], bytes] = {}

    @property
    def configured(self) -> bool:
        return bool(self._users or self._secrets)

    @property
    def signing_secret(self) -> bytes | None:
        return self._secrets[0] if self._secrets else None

    def username_for_hash(self, value: bytes) -> str | None:
        """The static user whose USERHASH this is; REST users cannot be found by hash."""
        return self._by_hash.get(value)

    def candidates(self, username: str, algorithm: str, now: float) -> list[Principal]:
        """Every key ``username`` may hold: its static password, then each REST secret.

        Empty when the user is unknown or its REST API name has expired.
        """
        found: list[Principal] = []
        password = self._users.get(username)
        if password is not None:
            key = self._key_cache.get((username, algorithm))
            if key is None:
                try:
                    key = long_term_key(username, self.realm, password, algorithm)
                except ValueError:  # SASLprep refuses the password: nobody can log in with it
                    key = b""
                self._key_cache[username, algorithm] = key
            if key:
                found.append(Principal(username, key, "static"))
        if self._secrets:
            expiry = rest_expiry(username)
            if expiry is not None and expiry > now:
                for secret in self._secrets:
                    try:
                        key = long_term_key(username, self.realm, rest_password(secret, username), algorithm)
                    except ValueError:
                        continue
                    found.append(Principal(username, key, "rest"))
        return found


# -- nonces -----------------------------------------------------------------


class NonceIssuer:
    """Stateless nonces bound to a client IP, valid for ``lifetime`` seconds."""

    _BODY = struct.Struct("!I")

    def __init__(self, secret: bytes, lifetime: float,
                 features: int = FEATURE_PASSWORD_ALGORITHMS | FEATURE_USERNAME_ANONYMITY) -> None:
        if len(secret) < 16:
            raise ValueError("the nonce secret must be at least 16 bytes")
        self._secret = secret
        self.lifetime = lifetime
        self.features = features
        self._prefix = NONCE_COOKIE + base64.b64encode(features.to_bytes(3, "big")).decode("ascii")

    def _mac(self, expiry: bytes, ip: str) -> bytes:
        return hmac.new(self._secret, expiry + ip.encode("ascii", "replace"), hashlib.sha256).digest()[:12]

    def issue(self, ip: str, now: float) -> bytes:
        expiry = self._BODY.pack(int(now + self.lifetime) & 0xFFFFFFFF)
        return (self._prefix + base64.urlsafe_b64encode(expiry + self._mac(expiry, ip)).decode("ascii")).encode()

    def check(self, nonce: bytes, ip: str, now: float) -> bool:
        """True while ``nonce`` is one of ours, for this IP, and not expired."""
        prefix = self._prefix.encode()
        if not nonce.startswith(prefix) or len(nonce) != len(prefix) + 24:
            return False
        try:
            body = base64.urlsafe_b64decode(nonce[len(prefix):])
        except (binascii.Error, ValueError):
            return False
        if len(body) != 16:
            return False
        expiry = body[:4]
        if not hmac.compare_digest(body[4:], self._mac(expiry, ip)):
            return False
        return self._BODY.unpack(expiry)[0] > now
