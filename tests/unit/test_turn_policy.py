"""The peer-address policy: every denied form gets 403 through the TURN server, and the allowances work."""

from __future__ import annotations

import ipaddress

import pytest

from tests.support.turnclient import RELAY_V4, RELAY_V6, TurnClient, error_code, make_server
from zentalk_relay.nat.policy import REASONS, PeerPolicy, address_class, parse_networks
from zentalk_relay.nat.stun import Attr, MessageClass
from zentalk_relay.nat.turn import REFUSAL_REASONS

#: (peer address, the reason it is refused) for every form the issue lists.
DENIED = [
    # IPv4
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"),
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"),
    ("10.0.0.1", "private"), ("10.255.255.255", "private"), ("172.16.0.1", "private"), ("172.31.255.254", "private"),
    ("192.168.0.1", "private"), ("100.64.0.1", "private"), ("100.127.255.254", "private"),
    ("169.254.0.1", "link_local"), ("169.254.169.254", "link_local"),  # cloud metadata
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"), ("192.0.0.170", "reserved"), ("192.0.2.1", "reserved"), ("198.18.0.1", "reserved"),
    ("198.51.100.7", "reserved"), ("203.0.113.9", "reserved"), ("192.88.99.1", "reserved"),
    # IPv6
    ("::1", "loopback"), ("::", "unspecified"),
    ("fc00::1", "private"), ("fd00:ec2::254", "private"),  # the AWS metadata service over IPv6
    ("fe80::1", "link_local"), ("febf::1", "link_local"),
    ("ff02::1", "multicast"), ("ff0e::fb", "multicast"),
    ("fec0::1", "reserved"), ("2001:db8::1", "reserved"), ("100::1", "reserved"), ("4000::1", "reserved"),
    # IPv6 forms that wrap an IPv4 address
    ("::ffff:127.0.0.1", "ipv4_mapped"), ("::ffff:10.0.0.1", "ipv4_mapped"),
    ("::ffff:169.254.169.254", "ipv4_mapped"), ("::ffff:8.8.8.8", "ipv4_mapped"),
    ("::127.0.0.1", "ipv4_compatible"), ("::10.0.0.1", "ipv4_compatible"), ("::8.8.8.8", "ipv4_compatible"),
    ("64:ff9b::127.0.0.1", "nat64"), ("64:ff9b::10.0.0.1", "nat64"), ("64:ff9b::169.254.169.254", "nat64"),
    ("64:ff9b::192.168.1.1", "nat64"), ("64:ff9b:1::a00:1", "nat64"),
    ("2002:7f00:1::1", "6to4"), ("2002:a00:1::1", "6to4"), ("2002:a9fe:a9fe::1", "6to4"), ("2002:c0a8:101::", "6to4"),
    # Teredo: server 65.54.227.120, client 127.0.0.1 (stored inverted: 0x80fffffe)
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "teredo"),
    # Teredo: server 10.0.0.1, client a public address
    ("2001:0:a00:1:8000:63bf:f7f7:f7f7", "teredo"),
]

ALLOWED = ["8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.0", "172.32.0.1", "2606:4700::1111",
           "64:ff9b::8.8.8.8", "2002:808:808::1", "2001:0:4136:e378:8000:63bf:f7f7:f7f7", "2a00:1450:4001::1"]


def _dual(server, source=1):
    client = TurnClient(server, client=("udp", (RELAY_V4, 3478), ("192.0.2.200", source)))
    reply = client.allocate(attributes=[(Attr.ADDITIONAL_ADDRESS_FAMILY, b"\x02\0\0\0")])
    assert reply.cls is MessageClass.SUCCESS
    return client


@pytest.mark.parametrize("host,reason", DENIED, ids=[h for h, _ in DENIED])
def test_every_denied_address_form_gets_403_for_permission_and_channel(host, reason):
    server = make_server()
    client = _dual(server)
    assert error_code(client.permit((host, 5000)).raw) == 403
    assert error_code(client.bind(0x4000, (host, 5000)).raw) == 403
    assert server.stats.refusals[f"peer_{reason}"] == 2
    assert server.allocation_for(client.client).permissions == {}


@pytest.mark.parametrize("host", ALLOWED)
def test_public_addresses_are_allowed(host):
    server = make_server()
    client = _dual(server)
    assert client.permit((host, 5000)).cls is MessageClass.SUCCESS
    assert client.bind(0x4000, (host, 5000)).cls is MessageClass.SUCCESS


@pytest.mark.parametrize("relay", [RELAY_V4, RELAY_V6])
def test_the_nodes_own_relay_and_listener_ports_get_403(relay):
    server = make_server()
    client = _dual(server)
    for port in (3478, 49152, 50000, 65535):
        assert error_code(client.bind(0x4000, (relay, port)).raw) == 403
    assert client.bind(0x4000, (relay, 443)).cls is MessageClass.SUCCESS
    assert server.stats.refusals["peer_own_address"] == 4


def test_an_operator_allowance_lets_loopback_through():
    policy = PeerPolicy(allowed=["127.0.0.0/8", "::1"], own_addresses=["127.0.0.1"], own_ports=[3478],
                        own_port_range=(49152, 65535))
    server = make_server(policy=policy)
    client = _dual(server)
    assert client.permit(("127.0.0.1", 3480), ("::1", 3480)).cls is MessageClass.SUCCESS
    assert client.bind(0x4000, ("127.0.0.1", 50000)).cls is MessageClass.SUCCESS  # allowed explicitly
    assert error_code(client.permit(("10.0.0.1", 1)).raw) == 403


def test_an_operator_denial_beats_everything():
    policy = PeerPolicy(allowed=["8.8.8.0/24"], denied=["8.8.8.8/32"])
    assert policy.check("8.8.8.8") == "operator_denied"
    assert policy.check("8.8.8.9") is None


def test_reasons_are_all_metric_labels():
    assert {reason for _, reason in DENIED} <= set(REASONS)
    assert {f"peer_{reason}" for reason in REASONS} <= set(REFUSAL_REASONS)


def test_bad_address_and_bad_network():
    assert PeerPolicy().check("not an address") == "bad_address"
    with pytest.raises(ValueError, match="not an IP network"):
        parse_networks(["10.0.0.0/33"])


def test_address_class_matches_python_for_the_obvious_cases():
    for host, reason in DENIED:
        address = ipaddress.ip_address(host)
        assert address_class(address) == reason
        if reason in ("loopback", "link_local", "multicast"):
            assert getattr(address, f"is_{reason}")
    for host in ALLOWED:
        assert address_class(ipaddress.ip_address(host)) is None
