"""BEP 42 node ids against the BEP's vectors, byte for byte, and the routing table's policy.

Vectors: tests/vectors/bep44_vectors.json, section "bep42", copied from
bittorrent.org beps/bep_0042.rst (test vectors table).
"""

import json
import random

import pytest

from tests.conftest import VECTORS
from zentalk_relay.dht import bep42
from zentalk_relay.dht.bep42 import Bep42Policy
from zentalk_relay.dht.routing import Outcome, RoutingTable

_BEP42 = json.loads((VECTORS / "bep44_vectors.json").read_text())["bep42"]["vectors"]


def test_crc32c_check_value():
    assert bep42.crc32c(b"123456789") == 0xE3069283
    assert bep42.crc32c(b"") == 0


@pytest.mark.parametrize("vector", _BEP42, ids=lambda v: v["ip"])
def test_vector_crc_of_masked_ip(vector):
    packed = bytes(int(part) for part in vector["ip"].split("."))
    masked = (int.from_bytes(packed, "big") & 0x030F3FFF) | ((vector["rand"] & 7) << 29)
    assert f"{bep42.crc32c(masked.to_bytes(4, 'big')):08x}" == vector["crc32c_of_masked_ip"]


@pytest.mark.parametrize("vector", _BEP42, ids=lambda v: v["ip"])
def test_vector_node_id_byte_for_byte(vector):
    example = bytes.fromhex(vector["example_node_id"])
    # The BEP's ids: 21 bits of CRC, random bits, the random byte last.
    made = bep42.node_id_from(vector["ip"], vector["rand"], example[2:19])
    assert made == example
    assert made[19] == vector["rand"]
    assert bep42.node_id_matches(example, vector["ip"])


@pytest.mark.parametrize("vector", _BEP42, ids=lambda v: v["ip"])
def test_vector_prefix_is_checked(vector):
    example = bytearray.fromhex(vector["example_node_id"])
    for index, bit in ((0, 0x80), (1, 0x01), (2, 0x08)):
        changed = bytearray(example)
        changed[index] ^= bit
        assert not bep42.node_id_matches(bytes(changed), vector["ip"])
    # The three low bits of byte 2 are free, and so are bytes 3-18.
    free = bytearray(example)
    free[2] ^= 0x07
    free[10] ^= 0xFF
    assert bep42.node_id_matches(bytes(free), vector["ip"])
    # r is the low 3 bits of the last byte: changing them changes the CRC.
    other_r = bytearray(example)
    other_r[19] ^= 0x01
    assert not bep42.node_id_matches(bytes(other_r), vector["ip"])


@pytest.mark.parametrize("ip", ["124.31.75.21", "2001:db8:1234:5678::1", "8.8.8.8"])
def test_generated_ids_match(ip):
    rng = random.Random(5)
    for _ in range(20):
        node_id = bep42.node_id_for(ip, rng)
        assert len(node_id) == 20 and bep42.node_id_matches(node_id, ip)
        assert not bep42.node_id_matches(node_id, "1.1.1.1") or ip == "1.1.1.1"


@pytest.mark.parametrize(
    "ip, exempt",
    [
        ("10.1.2.3", True), ("172.16.0.1", True), ("172.31.255.255", True), ("172.32.0.1", False),
        ("192.168.1.1", True), ("169.254.3.4", True), ("127.0.0.1", True), ("8.8.8.8", False),
        ("::1", True), ("fe80::1", True), ("fd00::1", True), ("2a00:1450::1", False), ("::ffff:10.0.0.1", True),
    ],
)
def test_exempt_addresses(ip, exempt):
    assert bep42.is_exempt(ip) is exempt


def test_policy_enforce_refuses_and_flag_marks():
    rng = random.Random(1)
    own = bep42.node_id_for("8.8.8.8", rng)
    good = bep42.node_id_for("124.31.75.21", rng)
    bad = bytes(20)
    enforce = RoutingTable(own, 0.0, bep42=Bep42Policy.ENFORCE)
    assert enforce.heard_from(bad, ("124.31.75.21", 1), 0.0, responded=True).outcome is Outcome.REFUSED_BEP42
    assert enforce.heard_from(good, ("124.31.75.21", 1), 0.0, responded=True).outcome is Outcome.ADDED
    # Local addresses may use any id.
    assert enforce.heard_from(bad, ("192.168.0.5", 1), 0.0, responded=True).outcome is Outcome.ADDED
    flag = RoutingTable(own, 0.0, bep42=Bep42Policy.FLAG)
    assert flag.heard_from(bad, ("124.31.75.21", 1), 0.0, responded=True).outcome is Outcome.ADDED
    assert flag.get(bad).secure is False
    assert flag.heard_from(good, ("65.23.51.170", 1), 0.0, responded=True).outcome is Outcome.ADDED
    assert flag.get(good).secure is False  # a valid id, but for another address
    off = RoutingTable(own, 0.0, bep42=Bep42Policy.OFF)
    off.heard_from(bad, ("124.31.75.21", 1), 0.0, responded=True)
    assert off.get(bad).secure is True
