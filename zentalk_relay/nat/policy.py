"""Which peer addresses a TURN allocation may reach, sans-IO.

A TURN server relays to whatever address a client names, so without a
policy it is an open proxy into the operator's own networks: loopback
services, RFC 1918 hosts, the cloud metadata endpoint at 169.254.169.254,
multicast groups. :class:`PeerPolicy` refuses every address that is not
plainly a public unicast address, every IPv6 form that wraps such an IPv4
address (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo), and the node's
own relay and listener ports (so an allocation cannot loop into another
one). Ranges the operator lists in ``turn.allowed_peer_ranges`` are allowed
whatever they are; ranges in ``turn.denied_peer_ranges`` are refused on top.

The answer is a short reason (a metric label) or None when the peer is
allowed. The tables name every range with the reason it is refused, so the
verdict does not depend on which Python version's ``is_global`` is running.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Every reason :meth:`PeerPolicy.check` can give, for metric labels.
REASONS = (
    "unspecified", "loopback", "private", "link_local", "multicast", "broadcast", "reserved",
    "ipv4_mapped", "ipv4_compatible", "nat64", "6to4", "teredo", "own_address", "operator_denied",
    "bad_address",
)

_V4 = [
    # The order matters: the first range that contains an address names it.
    ("0.0.0.0/8", "unspecified"),  # "this network"; 0.0.0.0 itself
    ("10.0.0.0/8", "private"),  # RFC 1918
    ("100.64.0.0/10", "private"),  # RFC 6598 shared address space (carrier-grade NAT)
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link_local"),  # includes the cloud metadata service 169.254.169.254
    ("172.16.0.0/12", "private"),  # RFC 1918
    ("192.0.0.0/24", "reserved"),  # IETF protocol assignments (NAT64 discovery, DS-Lite)
    ("192.0.2.0/24", "reserved"),  # TEST-NET-1
    ("192.88.99.0/24", "reserved"),  # 6to4 relay anycast, deprecated
    ("192.168.0.0/16", "private"),  # RFC 1918
    ("198.18.0.0/15", "reserved"),  # benchmarking
    ("198.51.100.0/24", "reserved"),  # TEST-NET-2
    ("203.0.113.0/24", "reserved"),  # TEST-NET-3
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),  # class E
]

_V6 = [
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fc00::/7", "private"),  # unique local; includes the AWS metadata service fd00:ec2::254
    ("fe80::/10", "link_local"),
    ("fec0::/10", "reserved"),  # site-local, deprecated
    ("ff00::/8", "multicast"),
    ("100::/64", "reserved"),  # discard-only
    ("2001:db8::/32", "reserved"),  # documentation
    ("3fff::/20", "reserved"),  # documentation (RFC 9637)
    ("2001::/23", "reserved"),  # IETF protocol assignments (Teredo is looked at before this)
]

_V4_TABLE = [(ipaddress.IPv4Network(net), reason) for net, reason in _V4]
_V6_TABLE = [(ipaddress.IPv6Network(net), reason) for net, reason in _V6]

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def address_class(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address, or None if it is one.

    Only the address itself is judged: no allowed or denied ranges, no ports.
    """
    if address.version == 4:
        for network, reason in _V4_TABLE:
            if address in network:
                return reason
        return None
    if address in _MAPPED:
        return "ipv4_mapped"
    for network, reason in _V6_TABLE[:2]:
        if address in network:
            return reason
    if address in _COMPATIBLE:
        return "ipv4_compatible"
    for network in _NAT64:
        if address in network:
            # NAT64 reaches public IPv4 hosts from IPv6-only networks: fine,
            # unless the IPv4 address it wraps is one we would refuse.
            return "nat64" if address_class(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)) else None
    if address in _SIX_TO_FOUR:
        inner = ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF)
        return "6to4" if address_class(inner) else None
    if address in _TEREDO:
        # 2001:0:SSSS:SSSS:flags:port:CCCC:CCCC, the client address inverted.
        server = ipaddress.IPv4Address((int(address) >> 64) & 0xFFFFFFFF)
        client = ipaddress.IPv4Address(~int(address) & 0xFFFFFFFF)
        return "teredo" if address_class(server) or address_class(client) else None
    for network, reason in _V6_TABLE[2:]:
        if address in network:
            return reason
    if address not in _GLOBAL_UNICAST:
        return "reserved"
    return None


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDR strings (a bare address is a /32 or /128); ValueError names a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network like 192.0.2.0/24 or 2001:db8::/32") from None
    return tuple(networks)


class PeerPolicy:
    """The verdict on a peer address: a refusal reason, or None to allow.

    ``own`` holds the node's own addresses with the ports that belong to it
    (listener ports); ``own_port_range`` is the relay port range on those
    addresses. A peer on one of them is refused (``own_address``) so that an
    allocation cannot relay into the node itself.
    """

    def __init__(
        self,
        allowed: Iterable[str] = (),
        denied: Iterable[str] = (),
        own_addresses: Iterable[str] = (),
        own_ports: Iterable[int] = (),
        own_port_range: tuple[int, int] = (0, -1),
    ) -> None:
        self._allowed = parse_networks(allowed)
        self._denied = parse_networks(denied)
        self._own_hosts = frozenset(str(ipaddress.ip_address(host)) for host in own_addresses)
        self._own_ports = frozenset(own_ports)
        self._own_range = own_port_range

    def add_own(self, host: str, port: int) -> None:
        """Another address the node listens on (a listener bound to port 0 learns its port late)."""
        self._own_hosts = self._own_hosts | {str(ipaddress.ip_address(host))}
        self._own_ports = self._own_ports | {port}

    def check(self, host: str, port: int | None = None) -> str | None:
        """None if a permission or channel to ``host`` (and ``port``) may exist, else why not."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return "bad_address"
        for network in self._denied:
            if address.version == network.version and address in network:
                return "operator_denied"
        for network in self._allowed:
            if address.version == network.version and address in network:
                return None
        reason = address_class(address)
        if reason is not None:
            return reason
        if port is not None and self.is_own(str(address), port):
            return "own_address"
        return None

    def is_own(self, host: str, port: int) -> bool:
        """True when ``host:port`` is one of the node's listener or relay ports."""
        if host not in self._own_hosts:
            return False
        return port in self._own_ports or self._own_range[0] <= port <= self._own_range[1]

    def allowed_explicitly(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address.version == n.version and address in n for n in self._allowed)
