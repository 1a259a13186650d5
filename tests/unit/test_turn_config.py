"""The [turn] section and the NAT keys of [stun]: checks and cross-checks."""

import pytest

from zentalk_relay.config import ConfigError, load


def _load(*pairs):
    return load(None, [("--set", key, value) for key, value in pairs])


def test_defaults_follow_the_design():
    turn = _load().turn
    assert (turn.enabled, turn.default_lifetime, turn.max_lifetime, turn.allocations_per_user) == (False, 600, 3600, 5)
    assert turn.allocation_bandwidth == 1_000_000 and (turn.port_min, turn.port_max) == (49152, 65535)


@pytest.mark.parametrize("key,value,problem", [
    ("turn.relay_addresses", ["localhost"], "is not an IP address"),
    ("turn.relay_addresses", ["192.0.2.1", "192.0.2.2"], "more than one IPv4 relay address"),
    ("turn.relay_addresses", ["192.0.2.1/::1"], "mixes IPv4 and IPv6"),
    ("turn.relay_addresses", ["0.0.0.0"], "need a specific address"),
    ("turn.allowed_peer_ranges", ["127.0.0.0/33"], "is not an IP network"),
    ("turn.port_min", 80, "is not 1024-65535"),
    ("turn.realm", "", "REALM must be 1-127 characters"),
    ("turn.allocation_bandwidth", -1, "is negative"),
    ("stun.alternate_addresses", ["127.0.0.2", "127.0.0.3"], "more than one IPv4 address"),
    ("stun.tcp", ["bogus:1"], "is not a server endpoint string"),
])
def test_bad_values_are_refused_with_the_key(key, value, problem):
    with pytest.raises(ConfigError, match=problem) as caught:
        _load((key, value))
    assert caught.value.key == key


def test_cross_checks():
    with pytest.raises(ConfigError, match="50000 is above turn.port_max 49999"):
        _load(("turn.port_min", 50000), ("turn.port_max", 49999))
    with pytest.raises(ConfigError, match="above turn.max_lifetime"):
        _load(("turn.default_lifetime", 7200))
