"""The relay's TCP link listener as a Tor v3 onion service, through txtorcon.

Two ways to reach a tor:

- **launch** (``tor.control`` empty): the node runs ``tor.binary`` with its
  data directory in ``<data_dir>/tor`` (mode 0700), a control port on
  loopback chosen by tor (``ControlPortWriteToFile``) and cookie
  authentication. The node then sends ``TAKEOWNERSHIP``, so that tor exits
  when the node's control connection closes, however the node ends.
- **connect** (``tor.control`` an endpoint string such as
  ``tcp:127.0.0.1:9051`` or ``unix:/run/tor/control``): a tor that is
  already running; cookie authentication as that tor offers it, or a
  password from ``tor.control_password_file``.

The service is added with ``ADD_ONION`` on the control connection itself,
not with txtorcon's ``create_onion_service``: that waits for a descriptor
upload to the network, which can take minutes and never happens with
``DisableNetwork``; the address is known as soon as tor answers. No
``Flags=Detach``: tor removes the service when the control connection
closes, so it goes away with the node.

The key is the ``ED25519-V3`` blob tor returns on the first start (64
bytes: the clamped secret scalar and the nonce prefix of an expanded
Ed25519 key). It lives in ``<data_dir>/keys/tor_onion.key`` (mode 0600,
written once, never replaced) and is handed back to ``ADD_ONION`` on every
later start, so the address stays the same. The address follows from the
key offline (:func:`onion_address`), which ``zentalk-relay info`` uses.

Links to relays that publish only an onion address are dialled through
tor's SOCKS port (:meth:`TorService.client_endpoint`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import shutil
import stat
from collections import deque
from pathlib import Path
from typing import Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectError, ProcessDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from zope.interface import implementer

from .config import TorConfig
from .identity import KEYS_DIR, IdentityError, ensure_private_dir
from .logs import logger

log = logger(__name__)

KEY_FILE = "tor_onion.key"
TOR_DIR = "tor"
_KIND = "tor-onion"
ONION_VERSION = 3
#: Seconds a link to an onion service may take to open through tor (circuits to a service are slow).
ONION_CONNECT_TIMEOUT = 60.0
#: Seconds a launched tor gets to exit after its control connection closed, before SIGKILL.
STOP_GRACE = 10.0
#: Waits between attempts to get tor back after the control connection was lost.
RETRY_FIRST, RETRY_MAX = 1.0, 30.0


class TorError(Exception):
    """Tor cannot be reached, launched, or will not publish the service; one line for the operator."""


class TorKeyError(IdentityError):
    """The onion service key file is exposed or corrupt."""


# -- addresses and keys (no I/O but the key file) ------------------------------------------


def onion_address(public_key: bytes) -> str:
    """The v3 address of an Ed25519 public key (rend-spec-v3 §6):
    ``base32(pubkey ‖ SHA3-256(".onion checksum" ‖ pubkey ‖ 0x03)[:2] ‖ 0x03) + ".onion"``."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    version = bytes([ONION_VERSION])
    checksum = hashlib.sha3_256(b".onion checksum" + public_key + version).digest()[:2]
    return base64.b32encode(public_key + checksum + version).decode("ascii").lower() + ".onion"


def public_key_of(address: str) -> bytes:
    """The Ed25519 key inside a v3 address, after checking its version and checksum."""
    label = address.lower().removesuffix(".onion")
    try:
        raw = base64.b32decode(label.upper())
    except ValueError:
        raise ValueError(f"{address!r} is not a v3 onion address") from None
    if len(label) != 56 or len(raw) != 35 or raw[34] != ONION_VERSION or onion_address(raw[:32]) != label + ".onion":
        raise ValueError(f"{address!r} is not a v3 onion address")
    return raw[:32]


def _check_blob(blob: bytes) -> None:
    """A 64-byte expanded Ed25519 key whose scalar is clamped as RFC 8032 and tor make it."""
    if len(blob) != 64:
        raise ValueError(f"an ED25519-V3 key is 64 bytes, not {len(blob)}")
    if blob[0] & 7 or blob[31] & 0x80 or not blob[31] & 0x40:
        raise ValueError("the ED25519-V3 key's scalar is not clamped")


def public_key_from_blob(blob: bytes) -> bytes:
    """The Ed25519 public key of tor's expanded secret key: its first 32 bytes times the base point."""
    from nacl.bindings import crypto_scalarmult_ed25519_base_noclamp

    _check_blob(blob)
    return crypto_scalarmult_ed25519_base_noclamp(blob[:32])


def blob_from_seed(seed: bytes) -> bytes:
    """The expanded key (what tor's ADD_ONION takes) of a 32-byte Ed25519 seed, as RFC 8032 §5.1.5."""
    digest = bytearray(hashlib.sha512(seed).digest())
    digest[0] &= 248
    digest[31] &= 127
    digest[31] |= 64
    return bytes(digest)


def _key_check(blob: bytes) -> str:
    return hashlib.sha256(blob).digest()[:4].hex()


def key_path(data_dir: Path) -> Path:
    return data_dir / KEYS_DIR / KEY_FILE


def read_onion_key(data_dir: Path) -> bytes | None:
    """The saved ED25519-V3 blob, None if there is none yet.

    One line, as the node's other keys::

        zentalk-relay tor-onion v1 <base64 blob> <first 4 bytes of SHA-256(blob) hex>
    """
    path = key_path(data_dir)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as error:
        raise TorKeyError(f"{path}: cannot read: {error.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TorKeyError(
            f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}); run 'chmod 600 {path}' "
            "and consider the onion address taken over if others could log in")
    fields = path.read_bytes().decode("ascii", "replace").split()
    if len(fields) != 5 or fields[:3] != ["zentalk-relay", _KIND, "v1"]:
        raise TorKeyError(f"{path} is corrupt: not a zentalk-relay {_KIND} key file")
    try:
        blob = base64.b64decode(fields[3], validate=True)
        _check_blob(blob)
    except ValueError:
        raise TorKeyError(f"{path} is corrupt: the key is not an ED25519-V3 blob") from None
    if fields[4] != _key_check(blob):
        raise TorKeyError(f"{path} is corrupt: the key fails its check; restore it from a backup")
    return blob


def save_onion_key(data_dir: Path, blob: bytes) -> Path:
    """Write a new key file with mode 0600; never replaces one."""
    _check_blob(blob)
    keys = data_dir / KEYS_DIR
    ensure_private_dir(keys)
    path = keys / KEY_FILE
    content = f"zentalk-relay {_KIND} v1 {base64.b64encode(blob).decode('ascii')} {_key_check(blob)}\n"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, content.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if the file appeared meanwhile
    finally:
        os.unlink(tmp)
    return path


def stored_onion_address(data_dir: Path) -> str | None:
    """The onion address the saved key gives, None before the first start with Tor."""
    blob = read_onion_key(data_dir)
    return None if blob is None else onion_address(public_key_from_blob(blob))


# -- control protocol text ---------------------------------------------------------------


def add_onion_command(blob: bytes | None, virtual_port: int, target: str) -> str:
    """``ADD_ONION`` for the link listener: a new v3 key when ``blob`` is None, else that key again."""
    key = "NEW:ED25519-V3" if blob is None else "ED25519-V3:" + base64.b64encode(blob).decode("ascii")
    return f"ADD_ONION {key} Port={virtual_port},{target}"


def parse_add_onion(reply: str) -> tuple[str, bytes | None]:
    """The ServiceID (with ``.onion``) and, for a new key, the key blob from an ``ADD_ONION`` reply."""
    fields = dict(line.partition("=")[::2] for line in reply.splitlines() if "=" in line)
    service_id = fields.get("ServiceID", "")
    if len(service_id) != 56:
        raise TorError(f"the ADD_ONION reply has no v3 ServiceID: {reply[:80]!r}")
    blob = None
    if "PrivateKey" in fields:
        kind, _, encoded = fields["PrivateKey"].partition(":")
        try:
            blob = base64.b64decode(encoded, validate=True)
            if kind != "ED25519-V3":
                raise ValueError(kind)
            _check_blob(blob)
        except ValueError:
            raise TorError("the ADD_ONION reply has no ED25519-V3 PrivateKey") from None
    return service_id + ".onion", blob


def link_target(endpoints: list[str]) -> str | None:
    """Where tor sends onion connections: the first TCP link listener, on loopback if bound to all."""
    for endpoint in endpoints:
        kind, _, rest = endpoint.partition(":")
        if kind != "tcp":
            continue
        host, _, port = rest.rpartition(":")
        host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
        return f"{host}:{port}"
    return None


def socks_listener(reply: str) -> tuple[str, str | int] | None:
    """The first SOCKS listener in ``GETINFO net/listeners/socks``: ("unix", path) or (host, port)."""
    for item in shlex.split(reply):
        if item.startswith("unix:"):
            return "unix", item[5:]
        host, _, port = item.rpartition(":")
        if port.isdigit() and host:
            return host.strip("[]"), int(port)
    return None


def control_port_file(text: str) -> tuple[str, int]:
    """``PORT=127.0.0.1:45227`` as tor writes it for ``ControlPortWriteToFile``."""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        host, _, port = value.rpartition(":")
        if key == "PORT" and port.isdigit():
            return host.strip("[]"), int(port)
    raise TorError(f"no control port in tor's ControlPortWriteToFile: {text[:80]!r}")


# -- the launched process ----------------------------------------------------------------


class _TorProcess(ProcessProtocol):
    """A tor the node launched: its output goes to the node's log; its last lines explain a failure."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=30)
        self.exited: str | None = None
        self._partial = b""
        self._waiting: list[Deferred] = []

    def outReceived(self, data: bytes) -> None:
        self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            self.lines.append(line)
            if "[err]" in line or "[warn]" in line:
                log.warn("tor: {line}", line=line.split("] ", 1)[-1])
            else:
                log.debug("tor: {line}", line=line)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.exited = "exit status 0" if reason.check(ProcessDone) else (
            f"exit status {reason.value.exitCode}" if reason.value.exitCode is not None
            else f"signal {reason.value.signal}")
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self.exited)

    def when_ended(self) -> Deferred:
        if self.exited is not None:
            d = Deferred()
            d.callback(self.exited)
            return d
        d = Deferred()
        self._waiting.append(d)
        return d

    def problem(self) -> str:
        """The last error or warning tor printed, else its last line."""
        for line in reversed(self.lines):
            if "[err]" in line or "[warn]" in line:
                return line.split("] ", 1)[-1]
        return self.lines[-1].split("] ", 1)[-1] if self.lines else "no output"

    def signal(self, name: str) -> None:
        if self.exited is None and self.transport is not None:
            try:
                self.transport.signalProcess(name)
            except Exception:  # noqa: BLE001 - it ended meanwhile
                pass


# -- the service -------------------------------------------------------------------------


@implementer(IStreamClientEndpoint)
class _ViaTor:
    """A stream to ``host:port`` through the node's tor (its SOCKS port), opened when asked."""

    def __init__(self, service: TorService, host: str, port: int) -> None:
        self._service = service
        self._host = host
        self._port = port

    def connect(self, protocol_factory):
        socks = self._service.socks_endpoint
        if socks is None:
            return fail(ConnectError(string="tor is not up, or offers no SOCKS port"))
        from txtorcon import TorClientEndpoint

        reactor = self._service.reactor
        return TorClientEndpoint(self._host, self._port, socks_endpoint=socks, reactor=reactor).connect(
            protocol_factory).addTimeout(ONION_CONNECT_TIMEOUT, reactor)


class TorService(Service):
    """Publishes the link listener as an onion service while the node runs.

    ``when_published()`` fires once the first ``ADD_ONION`` succeeded, or
    fails with :class:`TorError` (after at most ``tor.timeout`` seconds);
    the node announces readiness only after it. If the control connection
    is lost later, the service logs it and brings tor back with backoff.
    """

    def __init__(self, reactor, config: TorConfig, data_dir: Path, target: Callable[[], str | None],
                 *, key: bytes | None, control=None, binary: str | None = None,
                 password: str | None = None) -> None:
        self.reactor = reactor
        self._config = config
        self._data_dir = data_dir
        self._target = target
        self._key = key
        self._control_endpoint = control
        self._binary = binary
        self._password = password
        self.onion_service = ""  # "x.onion:port" once known
        self.published = False
        self.socks_endpoint = None
        self._protocol = None
        self._process: _TorProcess | None = None
        self._loop: Deferred | None = None
        self._failure: TorError | None = None
        self._waiting: list[Deferred] = []
        if key is not None:
            self.onion_service = f"{onion_address(public_key_from_blob(key))}:{config.port}"

    @property
    def mode(self) -> str:
        return "connect" if self._control_endpoint is not None else "launch"

    @property
    def endpoints(self) -> list[str]:
        return [f"onion:{self.onion_service}"] if self.published else []

    def status(self) -> dict:
        return {"onion_service": self.onion_service or None, "published": self.published, "mode": self.mode,
                "socks": self.socks_endpoint is not None}

    def client_endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        """An endpoint that reaches ``host:port`` (an onion address) through this tor."""
        return _ViaTor(self, host, port)

    def when_published(self) -> Deferred:
        d = Deferred()
        if self.published:
            d.callback(self.onion_service)
        elif self._failure is not None:
            d.errback(self._failure)
        else:
            self._waiting.append(d)
        return d

    # -- lifecycle -------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        # tor is started once the reactor runs: after twistd shed privileges, with signals handled
        self.reactor.callWhenRunning(self._begin)

    def _begin(self) -> None:
        if self.running and self._loop is None:
            self._loop = Deferred.fromCoroutine(self._keep_up())
            self._loop.addErrback(lambda failure: failure.trap(CancelledError))

    def stopService(self):
        super().stopService()
        if self._loop is not None:
            self._loop.cancel()
            self._loop = None
        self.published = False
        self.socks_endpoint = None
        return self._close()

    def _close(self) -> Deferred:
        """Close the control connection (tor drops the service; a launched tor exits) and reap the process."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.loseConnection()
        process, self._process = self._process, None
        if process is None or process.exited is not None:
            d = Deferred()
            d.callback(None)
            return d
        if protocol is None:
            process.signal("TERM")  # not ours yet: nothing else will make it exit
        ended = process.when_ended()
        kill = self.reactor.callLater(STOP_GRACE, process.signal, "KILL")
        ended.addBoth(lambda result: kill.cancel() if kill.active() else None)
        term = self.reactor.callLater(STOP_GRACE / 2, process.signal, "TERM")
        ended.addBoth(lambda result: term.cancel() if term.active() else None)
        return ended

    def _settle(self, failure: TorError | None) -> None:
        if failure is not None:
            self._failure = failure
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if failure is None:
                d.callback(self.onion_service)
            else:
                d.errback(failure)

    async def _keep_up(self) -> None:
        delay = RETRY_FIRST
        first = True
        while self.running:
            attempt = Deferred.fromCoroutine(self._bring_up()).addTimeout(self._config.timeout, self.reactor)
            try:
                await attempt
            except defer.TimeoutError:
                error = TorError(f"no onion service within tor.timeout ({self._config.timeout:g} s) while "
                                 f"{self._where()}; raise tor.timeout or check tor")
            except CancelledError:
                raise
            except TorError as caught:
                error = caught
            except Exception as unexpected:  # noqa: BLE001 - a control command failing, a file not writable
                error = TorError(f"{self._where()}: {_reason(unexpected)}")
            else:
                error = None
            if error is not None:
                await self._close()
                if first:
                    self._settle(TorError(f"tor: {error}"))
                    return
                log.warn("tor: {error}; trying again in {delay:g} s", error=str(error), delay=delay)
                await deferLater(self.reactor, delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            delay = RETRY_FIRST
            if first:
                first = False
                self._settle(None)
            try:
                await self._protocol.when_disconnected()
            except Exception:  # noqa: BLE001 - txtorcon reports every loss as a failure
                pass
            if not self.running:
                return
            self.published = False
            self.socks_endpoint = None
            self._protocol = None
            exited = f" (tor {self._process.exited}: {self._process.problem()})" if (
                self._process is not None and self._process.exited) else ""
            log.error("tor: the control connection closed{exited}; the onion service is down until tor is back",
                      exited=exited)
            await self._close()

    def _where(self) -> str:
        return f"using the control port {self._config.control}" if self._control_endpoint is not None else (
            f"launching {self._binary}")

    async def _bring_up(self) -> None:
        target = self._target()
        if target is None:
            raise TorError("no TCP link listener to publish (link.tcp)")
        if self._control_endpoint is not None:
            protocol = await self._authenticate(self._control_endpoint, f"the control port {self._config.control}")
        else:
            protocol = await self._launch()
        self._protocol = protocol
        try:
            reply = await protocol.queue_command(add_onion_command(self._key, self._config.port, target))
        except Exception as error:  # noqa: BLE001 - TorProtocolError, or the connection dropping
            raise TorError(f"ADD_ONION refused: {error}") from None
        address, blob = parse_add_onion(reply)
        if self._key is None:
            if blob is None:
                raise TorError("the ADD_ONION reply for a new service has no PrivateKey")
            path = save_onion_key(self._data_dir, blob)
            self._key = blob
            log.info("created a new tor-onion key in {path}", path=str(path))
        expected = onion_address(public_key_from_blob(self._key))
        if address != expected:
            raise TorError(f"published {address}, but {key_path(self._data_dir)} gives {expected}")
        current = await protocol.get_info("onions/current")
        if address.removesuffix(".onion") not in current.get("onions/current", "").split():
            raise TorError(f"{address} is not listed in onions/current")
        self.socks_endpoint = await self._socks(protocol)
        self.onion_service = f"{address}:{self._config.port}"
        self.published = True
        log.info("tor: onion service {address} for links on {target}{socks}", address=self.onion_service,
                 target=target, socks="" if self.socks_endpoint is not None else
                 "; tor has no SOCKS port, so links to onion-only relays are off")

    async def _socks(self, protocol):
        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint

        try:
            reply = await protocol.get_info("net/listeners/socks")
        except Exception:  # noqa: BLE001 - an old tor without the key
            return None
        found = socks_listener(reply.get("net/listeners/socks", ""))
        if found is None:
            return None
        host, port = found
        if host == "unix":
            return UNIXClientEndpoint(self.reactor, port)
        return (TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint)(self.reactor, host, port, timeout=10)

    async def _authenticate(self, endpoint, where: str):
        from txtorcon import TorProtocolFactory

        password = self._password
        factory = TorProtocolFactory(password_function=(lambda: password) if password is not None else lambda: None)
        try:
            protocol = await endpoint.connect(factory)
        except CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - every way a connection fails
            raise TorError(f"cannot connect to {where}: {_reason(error)}") from None
        try:
            await protocol.post_bootstrap
        except CancelledError:
            protocol.transport.loseConnection()
            raise
        except Exception as error:  # noqa: BLE001 - txtorcon raises RuntimeError and TorProtocolError
            protocol.transport.loseConnection()
            raise TorError(f"{where} refused authentication: {_reason(error)}") from None
        return protocol

    async def _launch(self):
        directory = self._data_dir / TOR_DIR
        ensure_private_dir(directory)
        port_file, cookie = directory / "control.port", directory / "control_auth_cookie"
        for stale in (port_file, cookie):  # left by a tor that was killed
            stale.unlink(missing_ok=True)
        options = {
            "DataDirectory": str(directory),
            "ControlPort": "auto",
            "ControlPortWriteToFile": str(port_file),
            "CookieAuthentication": "1",
            "CookieAuthFile": str(cookie),
            "SocksPort": "auto",
            "__OwningControllerProcess": str(os.getpid()),
        }
        if self._config.disable_network:
            options["DisableNetwork"] = "1"
        args = [self._binary, "-f", "/dev/null/none", "--ignore-missing-torrc", "--defaults-torrc", "/dev/null/none"]
        for key, value in options.items():
            args += [key, value]
        process = _TorProcess()
        self._process = process
        self.reactor.spawnProcess(process, self._binary, args, env={"HOME": str(directory)}, path=str(directory))
        log.info("tor: launched {binary} with its data in {directory}", binary=self._binary,
                 directory=str(directory))
        while not (port_file.exists() and cookie.exists()):
            if process.exited is not None:
                raise TorError(f"{self._binary} ended ({process.exited}) before it opened its control port: "
                               f"{process.problem()}")
            await deferLater(self.reactor, 0.05)
        host, port = control_port_file(port_file.read_text())
        from twisted.internet.endpoints import TCP4ClientEndpoint

        protocol = await self._authenticate(TCP4ClientEndpoint(self.reactor, host, port, timeout=10),
                                            f"the launched tor's control port {host}:{port}")
        # tor exits when this connection closes; the pid it watched is no longer needed
        await protocol.queue_command("TAKEOWNERSHIP")
        await protocol.queue_command("RESETCONF __OwningControllerProcess")
        return protocol


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    for prefix in ("Connection was refused by other side: ", "An error occurred while connecting: "):
        text = text.removeprefix(prefix)
    number, _, rest = text.partition(": ")
    if number.isdigit() and rest:  # "111: Connection refused"
        text = rest
    return text.rstrip(".") or type(error).__name__


def find_tor(name: str) -> str | None:
    """The tor program: a path, or a name on PATH or in /usr/sbin (Debian's place, which a user's PATH may lack)."""
    return shutil.which(name, path=os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/sbin")


def build_tor_service(reactor, config: TorConfig, data_dir: Path, target: Callable[[], str | None]) -> TorService:
    """The service, after the checks that need no tor: the key file, the program, the password file."""
    key = read_onion_key(data_dir)
    password = None
    if config.control_password_file:
        password = _read_password(Path(config.control_password_file))
    if config.control:
        from twisted.internet.endpoints import clientFromString

        endpoint = clientFromString(reactor, config.control)
        return TorService(reactor, config, data_dir, target, key=key, control=endpoint, password=password)
    binary = find_tor(config.binary)
    if binary is None:
        raise TorError(f"cannot launch {config.binary!r}: no such program; install tor (apt-get install tor), "
                       "set tor.binary, or set tor.control to use a running tor")
    return TorService(reactor, config, data_dir, target, key=key, binary=binary)


def _read_password(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as error:
        raise TorError(f"tor.control_password_file {path}: cannot read: {error.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TorError(f"tor.control_password_file {path} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                       f"run 'chmod 600 {path}'")
    password = text.strip()
    if not password:
        raise TorError(f"tor.control_password_file {path} is empty")
    return password
