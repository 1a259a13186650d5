"""The node's configuration: one frozen, typed object.

Built-in defaults, then a TOML file, then command-line options; each layer
overrides the one before. Every key is declared once, here, with its type,
default and a line of documentation; ``docs/configuration.md`` is generated
from these declarations (``python -m zentalk_relay.config``) and a test keeps
the two equal. Unknown keys and bad values raise :class:`ConfigError` with
one line that names where the value came from, the key and what is wrong,
so that start-up stops before anything listens.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, get_args, get_origin, get_type_hints

LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


class ConfigError(Exception):
    """A configuration problem, phrased as one line for the operator."""

    def __init__(self, origin: str, key: str, problem: str) -> None:
        super().__init__(f"{origin}: {key}: {problem}")
        self.origin = origin
        self.key = key
        self.problem = problem


def setting(default: Any = dataclasses.MISSING, *, doc: str, check: Callable[[Any], None] | None = None,
            factory: Callable[[], Any] | None = None, shown_default: str | None = None) -> Any:
    """Declare one setting: its default, its documentation and an optional check.

    ``check`` raises ValueError with a message when a value is wrong.
    """
    metadata = {"doc": doc, "check": check, "shown_default": shown_default}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# -- value checks -----------------------------------------------------------


def parse_host_port(text: str) -> tuple[str, int]:
    """``1.2.3.4:3478`` or ``[::1]:3478`` into a host and port."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not [IPv6]:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{text!r} is not host:port (write IPv6 addresses as [addr]:port)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} in {text!r} is not an IP address") from None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} in {text!r} is not 0-65535")
    return host, int(port)


def _check_udp_addresses(values: tuple[str, ...]) -> None:
    for value in values:
        parse_host_port(value)


def _check_stream_endpoint(value: str) -> None:
    """A Twisted server endpoint string, parsed without listening."""
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(None, value)
    except Exception as error:  # Twisted raises several types for a bad string
        raise ValueError(f"{value!r} is not a server endpoint string ({error})") from None


def _check_log_level(value: str) -> None:
    if value not in LOG_LEVELS:
        raise ValueError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")


def _check_positive(value: int) -> None:
    if value <= 0:
        raise ValueError(f"{value} is not positive")


def _check_positive_or_zero(value: float) -> None:
    if value < 0:
        raise ValueError(f"{value} is negative")


def _check_software(value: str) -> None:
    if len(value) >= 128:
        raise ValueError("SOFTWARE must be fewer than 128 characters (RFC 8489)")


def default_data_dir() -> Path:
    """systemd's StateDirectory when run as a unit, else a per-user directory."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "zentalk-relay"


# -- the settings -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeConfig:
    data_dir: Path = setting(
        factory=default_data_dir,
        shown_default='"$STATE_DIRECTORY" under systemd, else "~/.local/share/zentalk-relay"',
        doc="Directory for keys and state. Created with mode 0700 on first start.",
    )
    log_level: str = setting("info", check=_check_log_level,
                             doc="Lowest level of the node's own log events: debug, info, warn, error, critical.")
    drain_timeout: float = setting(15.0, check=_check_positive,
                                   doc="Seconds a stopping node (SIGTERM) waits for its links to close, the mailbox "
                                       "to commit and state to be saved before it exits anyway.")


def _check_ip_addresses(values: tuple[str, ...]) -> None:
    families = set()
    for value in values:
        try:
            family = ipaddress.ip_address(value).version
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
        if family in families:
            raise ValueError(f"more than one IPv{family} address")
        families.add(family)


def _check_relay_addresses(values: tuple[str, ...]) -> None:
    families = set()
    for value in values:
        advertised, _, bind = value.partition("/")
        try:
            versions = {ipaddress.ip_address(advertised).version, ipaddress.ip_address(bind or advertised).version}
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or public/local pair of them") from None
        if len(versions) != 1:
            raise ValueError(f"{value!r} mixes IPv4 and IPv6")
        if (bind or advertised) in ("0.0.0.0", "::"):
            raise ValueError(f"{value!r}: relayed sockets need a specific address")
        family = versions.pop()
        if family in families:
            raise ValueError(f"more than one IPv{family} relay address")
        families.add(family)


def _check_networks(values: tuple[str, ...]) -> None:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network like 192.0.2.0/24 or 2001:db8::/32") from None


def _check_port(value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not 0-65535")


def _check_relay_port(value: int) -> None:
    if not 1024 <= value <= 65535:
        raise ValueError(f"{value} is not 1024-65535")


def _check_cover_rate(value: float) -> None:
    if not 0 <= value <= 50:
        raise ValueError(f"{value} is not 0-50 packets per second")


def _check_non_negative(value: int) -> None:
    if value < 0:
        raise ValueError(f"{value} is negative")


def _check_realm(value: str) -> None:
    if not value or len(value) >= 128:
        raise ValueError("REALM must be 1-127 characters (RFC 8489)")


def _check_optional_address(value: str) -> None:
    if value:
        parse_host_port(value)


def _check_nat_streams(values: tuple[str, ...]) -> None:
    for value in values:
        _check_stream_endpoint(value)


def _check_nat_stream(value: str) -> None:
    if value:
        _check_stream_endpoint(value)


@dataclass(frozen=True, slots=True)
class StunConfig:
    enabled: bool = setting(True, doc="Serve STUN Binding over UDP.")
    udp: tuple[str, ...] = setting(
        ("0.0.0.0:3478", "[::]:3478"), check=_check_udp_addresses,
        doc="UDP addresses to answer on, `host:port` or `[v6]:port`; port 0 picks a free port.",
    )
    software: str = setting("zentalk-relay", check=_check_software,
                            doc="SOFTWARE attribute in responses; empty to send none.")
    socket_buffer: int = setting(4 * 1024 * 1024, check=_check_positive,
                                 doc="Requested SO_RCVBUF and SO_SNDBUF in bytes, so bursts are not dropped by the kernel.")
    tcp: tuple[str, ...] = setting((), check=_check_nat_streams,
                                   doc="Endpoint strings for STUN and TURN over TCP, e.g. `tcp:3478`; empty: none.")
    tls: str = setting("", check=_check_nat_stream,
                       doc="Endpoint string for STUN and TURN over TLS (1.2 or 1.3), e.g. `tcp:5349`; empty: none.")
    tls_certificate: str = setting("", doc="PEM certificate chain for `stun.tls`.")
    tls_private_key: str = setting("", doc="PEM private key for `stun.tls` (keep it mode 0600).")
    alternate_addresses: tuple[str, ...] = setting(
        (), check=_check_ip_addresses,
        doc="A second IP address per family for RFC 5780 behaviour discovery (OTHER-ADDRESS, CHANGE-REQUEST, "
            "RESPONSE-ORIGIN), paired with the first specific `stun.udp` address of that family. Empty: off, "
            "and CHANGE-REQUEST gets 420.")
    alternate_port: int = setting(3479, check=_check_port,
                                  doc="The second port for RFC 5780, on both addresses; 0 picks a free one.")


@dataclass(frozen=True, slots=True)
class TurnConfig:
    enabled: bool = setting(False, doc="Serve TURN (RFC 8656) relayed allocations on the STUN listeners "
                                       "(`stun.udp`, `stun.tcp`, `stun.tls`). Needs `turn.users_file` or "
                                       "`turn.secret_file`.")
    realm: str = setting("zentalk", check=_check_realm, doc="REALM of the long-term credentials.")
    users_file: str = setting("", doc="Static users, one `name:password` per line; mode 0600. Empty: none.")
    secret_file: str = setting("", doc="TURN REST API shared secrets, one per line (the first signs, every one "
                                       "verifies); mode 0600. Empty: none.")
    nonce_lifetime: int = setting(600, check=_check_positive,
                                  doc="Seconds a NONCE is good for; then requests get 438 Stale Nonce.")
    relay_addresses: tuple[str, ...] = setting(
        (), check=_check_relay_addresses,
        doc="Addresses relayed sockets bind to, at most one IPv4 and one IPv6; `public/local` advertises "
            "`public` while binding `local` (behind 1:1 NAT). Empty: the specific `stun.udp` addresses.")
    port_min: int = setting(49152, check=_check_relay_port, doc="Lowest port of a relayed socket.")
    port_max: int = setting(65535, check=_check_relay_port, doc="Highest port of a relayed socket.")
    default_lifetime: int = setting(600, check=_check_positive, doc="Seconds an allocation lives unless refreshed.")
    max_lifetime: int = setting(3600, check=_check_positive, doc="Longest lifetime a client may ask for.")
    allocations_per_user: int = setting(5, check=_check_positive,
                                        doc="Allocations one user name holds at once; more get 486.")
    max_allocations: int = setting(10000, check=_check_positive, doc="Allocations held at once; more get 508.")
    allocation_bandwidth: int = setting(1_000_000, check=_check_non_negative,
                                        doc="Bits per second one allocation relays in each direction (token "
                                            "bucket); 0: no limit.")
    total_bandwidth: int = setting(0, check=_check_non_negative,
                                   doc="Bits per second all allocations relay together in each direction; 0: no limit.")
    allowed_peer_ranges: tuple[str, ...] = setting(
        (), check=_check_networks,
        doc="Peer networks allowed although the policy refuses them (loopback, private, link-local, the node's "
            "own ports...), e.g. `10.20.0.0/16`. `127.0.0.0/8` is for tests.")
    denied_peer_ranges: tuple[str, ...] = setting((), check=_check_networks,
                                                  doc="Peer networks refused on top of the built-in policy.")
    challenges_per_second: int = setting(10, check=_check_positive,
                                         doc="401 answers per second to one source IP, to limit reflection.")
    challenge_burst: int = setting(20, check=_check_positive, doc="401 answers at once to one source IP.")
    alternate_server: str = setting("", check=_check_optional_address,
                                    doc="`ip:port` of another TURN server; while this node drains before it stops, "
                                        "new allocations are sent there (300 Try Alternate) instead of refused (508).")
    rfc5766_channels: bool = setting(False, doc="Accept channel numbers 0x5000-0x7FFF, which RFC 5766 allowed and "
                                                "RFC 8656 reserves, for old clients (coturn's turnutils_uclient "
                                                "picks them).")


def _check_stream_endpoints(values: tuple[str, ...]) -> None:
    for value in values:
        _check_stream_endpoint(value)


def _check_optional_endpoint(value: str) -> None:
    if value:
        _check_stream_endpoint(value)


def _check_path(value: str) -> None:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must start with /")


def _check_window(value: int) -> None:
    if not 1 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{value} is not 1-4294967295")


@dataclass(frozen=True, slots=True)
class LinkConfig:
    enabled: bool = setting(True, doc="Accept relay links from clients and other relays.")
    tcp: tuple[str, ...] = setting(("tcp:7400:backlog=1024",), check=_check_stream_endpoints,
                                   doc="Endpoint strings for TCP links (Noise NK inside). Add `tcp6:7400:interface=\\:\\:` for IPv6.")
    tls: str = setting("", check=_check_optional_endpoint,
                       doc="Endpoint string for TLS 1.3 links (ALPN `zentalk/3`), e.g. `tcp:7401`; empty: none.")
    tls_certificate: str = setting("", doc="PEM certificate chain for the TLS listener.")
    tls_private_key: str = setting("", doc="PEM private key for the TLS listener (keep it mode 0600).")
    websocket: str = setting("", check=_check_optional_endpoint,
                             doc="Endpoint string for WebSocket links (binary messages, Noise inside), e.g. `tcp:7402`; empty: none.")
    websocket_path: str = setting("/zentalk", check=_check_path, doc="HTTP path of the WebSocket listener.")
    public_addresses: tuple[str, ...] = setting(
        (), check=_check_udp_addresses,
        doc="`host:port` addresses advertised in the bootstrap string; empty: the TCP listeners bound to a specific address.")
    accept_relays: bool = setting(True, doc="Accept links from other relays, not only from clients.")
    max_links: int = setting(10000, check=_check_positive, doc="Links held at once, all kinds together.")
    links_per_ip: int = setting(5, check=_check_positive, doc="Links from one IP address at once.")
    pending_handshakes: int = setting(20, check=_check_positive, doc="Links still in their handshake at once.")
    links_per_peer: int = setting(3, check=_check_positive, doc="Authenticated links of one node id at once.")
    messages_per_minute: int = setting(100, check=_check_positive, doc="Messages a link may send per minute (token bucket).")
    messages_burst: int = setting(20, check=_check_positive, doc="Messages a link may send at once.")
    pex_per_minute: int = setting(1, check=_check_positive, doc="PEX requests per minute per link.")
    pex_burst: int = setting(1, check=_check_positive, doc="PEX requests at once per link.")
    window_initial: int = setting(1000, check=_check_window, doc="Messages a peer may send before our WINDOW_UPDATE.")
    window_min: int = setting(100, check=_check_window, doc="Smallest window granted under load.")
    window_max: int = setting(10000, check=_check_window, doc="Largest window a peer's update is believed up to.")
    session_ttl: float = setting(600.0, check=_check_positive,
                                 doc="Seconds a client may resume its session (RESUME) after authenticating.")
    padding: bool = setting(True, doc="Offer capability PADDING: on links where the peer offers it too, every "
                                      "record after the handshake is padded to a fixed size bucket "
                                      "(docs/protocol.md, Padding).")
    max_backlog: int = setting(2000, check=_check_positive,
                               doc="Messages queued for a link beyond its window before new ones are refused.")


def _check_bootstraps(values: tuple[str, ...]) -> None:
    from .bootstrap import BootstrapError, parse

    for value in values:
        try:
            parsed = parse(value)
        except BootstrapError as error:
            raise ValueError(f"{value[:24]!r}...: {error}") from None
        if not parsed.addresses:
            raise ValueError(f"{value[:24]!r}... names no address to connect to")


@dataclass(frozen=True, slots=True)
class MailboxConfig:
    ttl: float = setting(7 * 24 * 3600.0, check=_check_positive,
                         doc="Seconds a message waits for its offline recipient before it expires.")
    max_message_bytes: int = setting(65536, check=_check_positive, doc="Largest message body kept.")
    per_recipient_messages: int = setting(10000, check=_check_positive, doc="Messages kept for one recipient.")
    per_recipient_bytes: int = setting(64 * 1024 * 1024, check=_check_positive, doc="Bytes kept for one recipient.")
    total_bytes: int = setting(4 * 1024 * 1024 * 1024, check=_check_positive, doc="Bytes kept for everyone.")
    purge_interval: float = setting(60.0, check=_check_positive, doc="Seconds between sweeps of expired messages.")


@dataclass(frozen=True, slots=True)
class OnionConfig:
    rotation_interval: float = setting(7 * 24 * 3600.0, check=_check_positive,
                                       doc="Seconds between onion key rotations; each key also bounds the replay memory.")
    overlap: float = setting(24 * 3600.0, check=_check_positive,
                             doc="Seconds the previous onion key still opens packets after a rotation.")
    replay_entries: int = setting(1_000_000, check=_check_positive,
                                  doc="Replay tags remembered per onion key (16 bytes each); rotate before it fills.")
    mix_delay: float = setting(0.05, check=_check_positive_or_zero,
                               doc="Mean seconds each onion packet is held before it moves on (exponential, drawn "
                                   "per packet), so that output order and timing do not follow input; 0: off.")
    mix_capacity: int = setting(10000, check=_check_positive,
                                doc="Onion packets held for mixing at most; beyond, the nearest deadline leaves early.")
    cover_rate: float = setting(0.2, check=_check_cover_rate,
                                doc="Cover loop packets per second this relay sends (Poisson, through two other relays "
                                    "and back), at most 50; 0: none.")


@dataclass(frozen=True, slots=True)
class MeshConfig:
    peers: tuple[str, ...] = setting((), check=_check_bootstraps,
                                     doc="Bootstrap strings (`ztr1:...@host:port`) of relays this node may forward to.")
    max_links: int = setting(64, check=_check_positive, doc="Relay links this node opens at most.")
    idle_timeout: float = setting(600.0, check=_check_positive,
                                  doc="Seconds without a forwarded packet before an opened relay link is closed.")
    queue: int = setting(1000, check=_check_positive,
                         doc="Onion packets held for a next hop while its link comes up.")


@dataclass(frozen=True, slots=True)
class PexConfig:
    enabled: bool = setting(True, doc="Exchange peers with other relays over relay links.")
    target_links: int = setting(8, check=_check_positive, doc="Relay links to keep up.")
    interval: float = setting(60.0, check=_check_positive,
                              doc="Seconds between PEX requests to each relay (the responder allows one a minute).")
    dials_per_minute: int = setting(10, check=_check_positive,
                                    doc="Most dials per minute, whatever PEX responses say: no use as a scanner.")
    min_uptime: float = setting(600.0, check=_check_positive_or_zero,
                                doc="Seconds a peer must have been verified before it is shared.")
    fresh: float = setting(3600.0, check=_check_positive, doc="A peer is shared only if seen within this many seconds.")
    max_failures: int = setting(5, check=_check_positive, doc="Failed dials in a row before a peer is dropped.")
    capacity: int = setting(5000, check=_check_positive, doc="Peers kept in the book.")
    opt_out: bool = setting(False, doc="Ask other relays never to share this node.")
    private: bool = setting(False, doc="Ask other relays to share this node by node id only, never by address.")
    allow_private_addresses: bool = setting(False,
                                            doc="Accept loopback and private addresses in PEX (tests, private networks).")


def parse_udp_target(text: str) -> tuple[str, int]:
    """``host:port`` where host may be a name (resolved when used) or ``[v6]``."""
    if text.startswith("["):
        return parse_host_port(text)
    host, sep, port = text.rpartition(":")
    if not sep or not host or ":" in host:
        raise ValueError(f"{text!r} is not host:port (write IPv6 addresses as [addr]:port)")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} in {text!r} is not 1-65535")
    return host, int(port)


def _check_udp_targets(values: tuple[str, ...]) -> None:
    for value in values:
        parse_udp_target(value)


def _check_dht_udp(values: tuple[str, ...]) -> None:
    families = set()
    for value in values:
        host, _ = parse_host_port(value)
        family = ipaddress.ip_address(host).version
        if family in families:
            raise ValueError(f"more than one IPv{family} address: a node serves one address per family (BEP 32)")
        families.add(family)


DHT_NETWORKS = ("zentalk", "mainline")
#: The routers BitTorrent clients bootstrap the mainline DHT from.
MAINLINE_ROUTERS = ("router.bittorrent.com:6881", "router.utorrent.com:6881", "dht.transmissionbt.com:6881",
                    "dht.libtorrent.org:25401")


def _check_network(value: str) -> None:
    if value not in DHT_NETWORKS:
        raise ValueError(f"{value!r} is not one of {', '.join(DHT_NETWORKS)}")


def _check_bep42(value: str) -> None:
    if value not in ("flag", "enforce", "off"):
        raise ValueError(f"{value!r} is not one of flag, enforce, off")


@dataclass(frozen=True, slots=True)
class DhtConfig:
    enabled: bool = setting(True, doc="Run a DHT node (mainline KRPC over UDP): relay records, relay discovery, "
                                      "and a bootstrap node for others.")
    udp: tuple[str, ...] = setting(("0.0.0.0:7403",), check=_check_dht_udp,
                                   doc="UDP addresses of the DHT node, at most one per family (each family is its "
                                       "own node, BEP 32); add `[::]:7403` for IPv6; port 0 picks a free port.")
    network: str = setting("zentalk", check=_check_network,
                           doc="`zentalk`: a private Zentalk DHT; `mainline`: the public BitTorrent DHT, "
                               "bootstrapped from its usual routers when `dht.bootstrap` is empty.")
    bootstrap: tuple[str, ...] = setting(
        (), check=_check_udp_targets,
        doc="DHT nodes to join through, `host:port` (names resolved at start). Empty on the `zentalk` network: "
            "this node is a bootstrap node and waits for others.")
    publish: bool = setting(True, doc="Publish this relay's signed record (BEP 44) and announce it on the relays' "
                                      "info-hash.")
    republish_interval: float = setting(1800.0, check=_check_positive,
                                        doc="Seconds between republishing the record and the announce; a change "
                                            "publishes at once.")
    discover_interval: float = setting(300.0, check=_check_positive,
                                       doc="Seconds between looking up other relays' records for the mesh.")
    bep42: str = setting("flag", check=_check_bep42,
                         doc="Others' node ids that do not match their IP (BEP 42): `flag` keeps and marks them, "
                             "`enforce` refuses them, `off` does not check.")
    queries_per_second: int = setting(20, check=_check_positive,
                                      doc="Datagrams per second one source IP may send us (token bucket).")
    query_burst: int = setting(50, check=_check_positive, doc="Datagrams one source IP may send at once.")
    save_interval: float = setting(300.0, check=_check_positive,
                                   doc="Seconds between saves of the routing table and stored items and peers.")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = setting(True, doc="Serve /metrics, /healthz and /status over HTTP.")
    listen: str = setting("tcp:9464:interface=127.0.0.1", check=_check_stream_endpoint,
                          doc="Twisted endpoint string for the HTTP listener. Keep it on loopback or behind a firewall.")
    allow: tuple[str, ...] = setting(
        ("127.0.0.0/8", "::1/128"), check=_check_networks,
        doc="Networks that may connect to the metrics listener; others are disconnected at once. Add your "
            "Prometheus server when `metrics.listen` is not on loopback; empty: anyone.")
    blur_interval: float = setting(
        60.0, check=_check_positive_or_zero,
        doc="Usage statistics (link frames and bytes, onion packets, mailbox, TURN relayed traffic) are rounded "
            "down to 16 events or 64 KiB and refreshed once per this many seconds, so that a scrape cannot show "
            "one user's message; 0: exact and live (tests, benchmarks).")


def _check_client_endpoint(value: str) -> None:
    """A Twisted client endpoint string (``tcp:host:port``, ``unix:/path``), parsed without connecting."""
    if not value:
        return
    from twisted.internet.endpoints import clientFromString

    try:
        clientFromString(None, value)
    except Exception as error:  # Twisted raises several types for a bad string
        raise ValueError(f"{value!r} is not a client endpoint string like tcp:127.0.0.1:9051 or "
                         f"unix:/run/tor/control ({error})") from None


def _check_port_number(value: int) -> None:
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is not 1-65535")


@dataclass(frozen=True, slots=True)
class TorConfig:
    enabled: bool = setting(False, doc="Publish the first TCP link listener as a Tor v3 onion service (`--tor`); "
                                       "its address goes into /status, `zentalk-relay info` and the DHT record, "
                                       "and links to onion-only relays go through this tor.")
    control: str = setting("", check=_check_client_endpoint,
                           doc="Control port of a running tor, an endpoint string such as `tcp:127.0.0.1:9051` or "
                               "`unix:/run/tor/control` (cookie authentication, or `tor.control_password_file`). "
                               "Empty: the node launches `tor.binary` itself, with its data in `<data_dir>/tor`.")
    control_password_file: str = setting("", doc="File holding the control port password (tor's "
                                                 "HashedControlPassword), mode 0600. Empty: cookie authentication.")
    binary: str = setting("tor", doc="The tor program the node launches when `tor.control` is empty: a path, or "
                                     "a name looked up on PATH and in /usr/sbin.")
    port: int = setting(7400, check=_check_port_number,
                        doc="Virtual port of the onion service: relays reach this node at `<address>.onion:<port>`.")
    timeout: float = setting(60.0, check=_check_positive,
                             doc="Seconds tor gets (launch or connect, authenticate, ADD_ONION) before start-up "
                                 "fails; below systemd's default TimeoutStartSec of 90 s.")
    disable_network: bool = setting(False, doc="For tests only: the launched tor gets `DisableNetwork 1`, so it "
                                               "creates the onion service but never connects to the Tor network "
                                               "and nobody can reach the service.")


@dataclass(frozen=True, slots=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    stun: StunConfig = field(default_factory=StunConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    link: LinkConfig = field(default_factory=LinkConfig)
    mailbox: MailboxConfig = field(default_factory=MailboxConfig)
    onion: OnionConfig = field(default_factory=OnionConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    pex: PexConfig = field(default_factory=PexConfig)
    dht: DhtConfig = field(default_factory=DhtConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tor: TorConfig = field(default_factory=TorConfig)


# -- loading ----------------------------------------------------------------


def _sections() -> dict[str, type]:
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def known_keys() -> list[str]:
    return [f"{name}.{f.name}" for name, cls in _sections().items() for f in dataclasses.fields(cls)]


def _unknown(origin: str, key: str) -> ConfigError:
    close = difflib.get_close_matches(key, known_keys(), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(origin, key, f"unknown key{hint}")


def _type_name(tp: Any) -> str:
    if get_origin(tp) is tuple:
        return f"list of {_type_name(get_args(tp)[0])}s"
    return {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path"}[tp]


def _coerce(tp: Any, value: Any) -> Any:
    """Check a TOML value against a declared type; raise ValueError if it does not fit."""
    if get_origin(tp) is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {type(value).__name__}")
        inner = get_args(tp)[0]
        return tuple(_coerce(inner, item) for item in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ValueError(f"expected a path string, got {value!r}")
        return Path(value).expanduser()
    raise TypeError(tp)


def _field(section: str, name: str) -> tuple[type, dataclasses.Field]:
    cls = _sections()[section]
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == name:
            return hints[name], f
    raise KeyError(name)


def _apply(values: dict[str, dict[str, Any]], origin: str, key: str, raw: Any) -> None:
    section, _, name = key.partition(".")
    if section not in _sections() or not name:
        raise _unknown(origin, key)
    try:
        tp, f = _field(section, name)
    except KeyError:
        raise _unknown(origin, key) from None
    try:
        value = _coerce(tp, raw)
        if f.metadata["check"] is not None:
            f.metadata["check"](value)
    except ValueError as error:
        raise ConfigError(origin, key, str(error)) from None
    values.setdefault(section, {})[name] = value


def read_file(path: Path) -> list[tuple[str, Any]]:
    """A TOML file as (dotted key, value) pairs; a syntax error names the file."""
    origin = str(path)
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(origin, "-", f"cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(origin, "-", f"not valid TOML: {error}") from None
    pairs: list[tuple[str, Any]] = []
    for section, table in document.items():
        if not isinstance(table, dict):
            if section in _sections():
                raise ConfigError(origin, section, "expected a [table]")
            raise _unknown(origin, section)
        for name, value in table.items():
            pairs.append((f"{section}.{name}", value))
    return pairs


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is TOML, or else a bare string."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError("--set", text, "expected key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def load(path: Path | None = None, overrides: list[tuple[str, str, Any]] = ()) -> Config:
    """Defaults, then the file at ``path``, then ``overrides`` as (origin, key, value)."""
    values: dict[str, dict[str, Any]] = {}
    if path is not None:
        for key, value in read_file(path):
            _apply(values, str(path), key, value)
    for origin, key, value in overrides:
        _apply(values, origin, key, value)
    sections = {name: cls(**values.get(name, {})) for name, cls in _sections().items()}
    config = Config(**sections)
    _check_together(config, str(path) if path is not None else (overrides[-1][0] if overrides else "defaults"))
    return config


def _check_together(config: Config, origin: str) -> None:
    """Checks that involve more than one setting."""
    tor = config.tor
    if tor.enabled and not (config.link.enabled and config.link.tcp):
        raise ConfigError(origin, "tor.enabled", "needs a TCP link listener to publish (link.enabled, link.tcp)")
    if tor.disable_network and tor.control:
        raise ConfigError(origin, "tor.disable_network", "applies only to a tor the node launches; tor.control is set")
    turn = config.turn
    if turn.port_min > turn.port_max:
        raise ConfigError(origin, "turn.port_min", f"{turn.port_min} is above turn.port_max {turn.port_max}")
    if turn.default_lifetime > turn.max_lifetime:
        raise ConfigError(origin, "turn.default_lifetime",
                          f"{turn.default_lifetime} is above turn.max_lifetime {turn.max_lifetime}")


# -- documentation ----------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def describe() -> Iterator[tuple[str, str, str, str]]:
    """(key, type, default, documentation) for every setting."""
    for section, cls in _sections().items():
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata["shown_default"]:
                default = f.metadata["shown_default"]
            else:
                default = _toml_value(f.default)
            yield f"{section}.{f.name}", _type_name(hints[f.name]), default, f.metadata["doc"]


def markdown_table() -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, type_name, default, doc in describe():
        lines.append(f"| `{key}` | {type_name} | `{default}` | {doc} |")
    return "\n".join(lines) + "\n"


GENERATED_MARKER = "<!-- generated by: python -m zentalk_relay.config --update docs/configuration.md -->"


def update_document(path: Path) -> None:
    """Replace everything after the marker line of ``path`` with the table."""
    text = path.read_text()
    head, marker, _ = text.partition(GENERATED_MARKER)
    if not marker:
        raise SystemExit(f"{path} has no marker line {GENERATED_MARKER}")
    path.write_text(head + marker + "\n\n" + markdown_table())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--update"]:
        update_document(Path(sys.argv[2]))
    else:
        sys.stdout.write(markdown_table())
