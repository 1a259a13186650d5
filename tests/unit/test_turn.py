"""The TURN allocation state machine, driven directly with explicit ``now``."""

from __future__ import annotations

import os
import struct

import pytest

from tests.support.turnclient import (
    CLIENT,
    PEER_V4,
    PEER_V4_B,
    PEER_V6,
    REALM,
    RELAY_V4,
    SECRET,
    TurnClient,
    attribute_u32,
    error_code,
    make_server,
    replies,
)
from zentalk_relay.nat import stun
from zentalk_relay.nat.credentials import rest_credentials
from zentalk_relay.nat.stun import Attr, MessageClass, Method
from zentalk_relay.nat.turn import (
    CloseRelay,
    FramingError,
    OpenRelays,
    RelayAddress,
    StreamFramer,
    ToClient,
    ToPeer,
)


@pytest.fixture
def server():
    return make_server()


@pytest.fixture
def alice(server):
    client = TurnClient(server)
    reply = client.allocate()
    assert reply.cls is MessageClass.SUCCESS, error_code(reply.raw)
    return client


def _code(message: stun.Message) -> int | None:
    return error_code(message.raw)


# -- authentication -----------------------------------------------------------


def test_unsigned_allocate_gets_401_with_realm_nonce_and_algorithms(server):
    client = TurnClient(server)
    out = replies(client.send(client.build(Method.ALLOCATE, auth=False)))
    message = stun.decode(out[0])
    assert (message.method, message.cls, _code(message)) == (Method.ALLOCATE, MessageClass.ERROR, 401)
    assert message.get(Attr.REALM) == REALM.encode()
    assert message.get(Attr.NONCE).startswith(b"obMatJos2AAAD")
    assert message.get(Attr.PASSWORD_ALGORITHMS) == struct.pack("!HHHH", 2, 0, 1, 0)
    assert message.find(Attr.MESSAGE_INTEGRITY) is None
    assert server.stats.requests["allocate", "unauthenticated"] == 1


def test_allocate_success_carries_relayed_mapped_lifetime_and_valid_integrity(server):
    client = TurnClient(server)
    client.login()
    tid = os.urandom(12)
    actions = server.handle(CLIENT, client.build(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0")], tid=tid),
                            0.0)
    (open_relays,) = actions
    assert isinstance(open_relays, OpenRelays) and open_relays.client == CLIENT
    (bind,) = open_relays.binds
    assert bind.family == 4 and bind.host == RELAY_V4 and len(bind.ports) == 16
    assert all(49152 <= port <= 65535 for port in bind.ports)
    (answer,) = server.relays_opened(open_relays.token, [bind.ports[3]], 0.0)
    reply = stun.decode(answer.data)
    assert reply.cls is MessageClass.SUCCESS and reply.transaction_id == tid
    assert stun.decode_xor_address(reply.get(Attr.XOR_RELAYED_ADDRESS), tid) == (RELAY_V4, bind.ports[3])
    assert stun.decode_xor_address(reply.get(Attr.XOR_MAPPED_ADDRESS), tid) == CLIENT[2]
    assert attribute_u32(reply, Attr.LIFETIME) == 600
    assert stun.check_integrity(reply, client.key)
    assert reply.attributes[-1].type == Attr.FINGERPRINT
    assert server.stats.requests["allocate", "success"] == 1


def test_sha256_integrity_is_answered_with_sha256(server):
    client = TurnClient(server)
    client.sha256 = True
    reply = client.allocate()
    assert reply.cls is MessageClass.SUCCESS
    assert reply.find(Attr.MESSAGE_INTEGRITY_SHA256) is not None and reply.find(Attr.MESSAGE_INTEGRITY) is None
    assert stun.check_integrity(reply, client.key)


def test_sha256_password_algorithm(server):
    client = TurnClient(server)
    client.algorithm = "sha256"
    client.sha256 = True
    reply = client.allocate()
    assert reply.cls is MessageClass.SUCCESS
    assert stun.check_integrity(reply, stun.long_term_key("alice", REALM, "wonderland", "sha256"))


def test_password_algorithms_that_do_not_match_the_offer_get_400(server):
    client = TurnClient(server)
    client.login()
    data = client.build(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0")], extra=[
        (Attr.PASSWORD_ALGORITHMS, struct.pack("!HH", 1, 0)), (Attr.PASSWORD_ALGORITHM, struct.pack("!HH", 1, 0))])
    assert error_code(replies(client.send(data))[0]) == 400


def test_userhash_finds_a_static_user(server):
    client = TurnClient(server)
    client.login()
    tid = os.urandom(12)
    data = stun.encode(Method.ALLOCATE, MessageClass.REQUEST, tid, [
        (Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0"), (Attr.USERHASH, stun.userhash("alice", REALM)),
        (Attr.REALM, REALM.encode()), (Attr.NONCE, client.nonce)], integrity_key=client.key)
    actions = client.send(data)
    assert stun.decode(replies(actions)[0]).cls is MessageClass.SUCCESS


@pytest.mark.parametrize("username,password", [("alice", "wrong"), ("mallory", "wonderland")])
def test_wrong_password_or_unknown_user_gets_401(server, username, password):
    client = TurnClient(server, username=username, password=password)
    reply = client.allocate()
    assert _code(reply) == 401
    assert reply.get(Attr.NONCE) and reply.find(Attr.MESSAGE_INTEGRITY) is None


@pytest.mark.parametrize("missing", [Attr.USERNAME, Attr.REALM, Attr.NONCE])
def test_signed_request_missing_username_realm_or_nonce_gets_400(server, missing):
    client = TurnClient(server)
    client.login()
    attributes = [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0"), (Attr.USERNAME, b"alice"), (Attr.REALM, REALM.encode()),
                  (Attr.NONCE, client.nonce)]
    data = stun.encode(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12),
                       [a for a in attributes if a[0] != missing], integrity_key=client.key)
    assert error_code(replies(client.send(data))[0]) == 400


def test_tampered_message_gets_401(server):
    client = TurnClient(server)
    client.login()
    data = bytearray(client.build(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0"),
                                                    (Attr.LIFETIME, struct.pack("!I", 900))],
                                     fingerprint=False))
    data[28] ^= 0x01  # inside the LIFETIME value, covered by MESSAGE-INTEGRITY (no FINGERPRINT here)
    assert error_code(replies(client.send(bytes(data)))[0]) == 401


def test_expired_nonce_gets_438_with_a_fresh_nonce_then_works(server):
    client = TurnClient(server)
    client.retry_stale = False
    client.login(now=0.0)
    reply = client.allocate(now=601.0)
    assert _code(reply) == 438
    assert stun.check_integrity(reply, client.key)  # the request authenticated, so the answer is signed
    fresh = reply.get(Attr.NONCE)
    assert fresh != client.nonce and reply.get(Attr.REALM) == REALM.encode()
    client.nonce = fresh
    assert client.allocate(now=601.0).cls is MessageClass.SUCCESS


def test_nonce_from_another_address_is_stale(server):
    client = TurnClient(server)
    client.login()
    other = TurnClient(server, client=("udp", CLIENT[1], ("192.0.2.99", 1234)))
    other.retry_stale = False
    other.nonce = client.nonce
    assert _code(other.allocate()) == 438


def test_forged_nonce_is_stale(server):
    client = TurnClient(server)
    client.retry_stale = False
    client.nonce = b"obMatJos2AAADnot-a-nonce-of-ours-at-all!"
    assert _code(client.allocate()) == 438


def test_rest_api_credentials_work_until_they_expire(server):
    username, password = rest_credentials(SECRET, now=1000, ttl=3600, label="carol")
    assert username == "4600:carol"
    client = TurnClient(server, username=username, password=password)
    client.login(now=1000)
    assert client.allocate(now=1000).cls is MessageClass.SUCCESS
    late = TurnClient(server, client=("udp", CLIENT[1], ("192.0.2.51", 1)), username=username, password=password)
    late.login(now=4601)
    assert _code(late.allocate(now=4601)) == 401


def test_every_configured_secret_verifies_so_secrets_rotate():
    server = make_server(secrets=(b"new-secret", SECRET))
    username, password = rest_credentials(SECRET, now=0, ttl=60)
    assert TurnClient(server, username=username, password=password).allocate().cls is MessageClass.SUCCESS


def test_unauthenticated_answers_are_rate_limited_per_source(server):
    client = TurnClient(server)
    answered = [bool(replies(client.send(client.build(Method.ALLOCATE, auth=False), now=0.0))) for _ in range(30)]
    assert answered.count(True) == 20  # the burst
    assert server.stats.refusals["challenge_rate"] == 10
    other = TurnClient(server, client=("udp", CLIENT[1], ("192.0.2.77", 9)))
    assert replies(other.send(other.build(Method.ALLOCATE, auth=False), now=0.0))
    assert replies(client.send(client.build(Method.ALLOCATE, auth=False), now=0.5))  # refilled at 10/s


def test_attributes_after_message_integrity_are_ignored(alice, server):
    """Anyone on the path could append them: a LIFETIME of 0 added after the MAC deletes nothing."""
    data = alice.build(Method.REFRESH, fingerprint=False)
    appended = data + struct.pack("!HH", Attr.LIFETIME, 4) + b"\0\0\0\0"
    appended = appended[:2] + struct.pack("!H", len(appended) - 20) + appended[4:]
    reply = stun.decode(replies(alice.send(appended, 1.0))[0])
    assert reply.cls is MessageClass.SUCCESS and attribute_u32(reply, Attr.LIFETIME) == 600
    assert server.allocation_for(CLIENT) is not None


def test_unknown_comprehension_required_attribute_gets_signed_420(server):
    client = TurnClient(server)
    client.login()
    reply = client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0"), (0x7F31, b"??")])
    assert _code(reply) == 420
    assert reply.get(Attr.UNKNOWN_ATTRIBUTES) == b"\x7f\x31"
    assert stun.check_integrity(reply, client.key)


def test_dont_fragment_is_unsupported_so_420(server):
    client = TurnClient(server)
    reply = client.allocate(attributes=[(Attr.DONT_FRAGMENT, b"")])
    assert _code(reply) == 420 and reply.get(Attr.UNKNOWN_ATTRIBUTES) == b"\x00\x1a"


def test_unknown_optional_attribute_is_ignored(server):
    client = TurnClient(server)
    assert client.allocate(attributes=[(0xC0DE, b"x")]).cls is MessageClass.SUCCESS


def test_unknown_method_gets_400(server):
    client = TurnClient(server)
    assert error_code(replies(client.send(client.build(0x0FF, auth=False)))[0]) == 400


# -- Allocate -----------------------------------------------------------------


def test_second_allocate_is_437_but_a_retransmission_gets_the_same_answer(server):
    client = TurnClient(server)
    client.login()
    tid = os.urandom(12)
    first = replies(client.send(client.build(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0")], tid=tid)))
    again = replies(client.send(client.build(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0")], tid=tid)))
    assert first == again
    assert _code(client.allocate()) == 437


@pytest.mark.parametrize("value,code", [(None, 400), (b"\x11\0\0", 400), (b"\x06\0\0\0", 442)])
def test_requested_transport_missing_malformed_or_tcp(server, value, code):
    client = TurnClient(server)
    client.login()
    attributes = [] if value is None else [(Attr.REQUESTED_TRANSPORT, value)]
    assert _code(client.request(Method.ALLOCATE, attributes)) == code


def test_lifetime_is_clamped_between_default_and_max(server):
    for index, (requested, granted) in enumerate([(10, 600), (1200, 1200), (100000, 3600), (0, 600)]):
        client = TurnClient(server, client=("udp", CLIENT[1], ("192.0.2.60", 1000 + index)))
        reply = client.allocate(attributes=[(Attr.LIFETIME, struct.pack("!I", requested))])
        assert attribute_u32(reply, Attr.LIFETIME) == granted


def test_ipv6_relayed_address_on_request(server):
    client = TurnClient(server)
    reply = client.allocate(attributes=[(Attr.REQUESTED_ADDRESS_FAMILY, b"\x02\0\0\0")])
    assert stun.decode_xor_address(reply.get(Attr.XOR_RELAYED_ADDRESS), reply.transaction_id)[0] == "2a01:4f8::1"


@pytest.mark.parametrize("value", [b"\x02\0\0\0", b"\x03\0\0\0", b"\x01"])
def test_address_family_not_served_or_invalid_gets_440(value):
    server = make_server(relays={4: RelayAddress(RELAY_V4, RELAY_V4)})
    client = TurnClient(server)
    assert _code(client.allocate(attributes=[(Attr.REQUESTED_ADDRESS_FAMILY, value)])) == 440


def test_dual_allocation_gives_both_families(server):
    client = TurnClient(server)
    reply = client.allocate(attributes=[(Attr.ADDITIONAL_ADDRESS_FAMILY, b"\x02\0\0\0")])
    relayed = [stun.decode_xor_address(a.value, reply.transaction_id)[0] for a in reply.attributes
               if a.type == Attr.XOR_RELAYED_ADDRESS]
    assert relayed == [RELAY_V4, "2a01:4f8::1"]
    assert client.permit(PEER_V4, PEER_V6).cls is MessageClass.SUCCESS


def test_dual_allocation_without_ipv6_reports_address_error():
    server = make_server(relays={4: RelayAddress(RELAY_V4, RELAY_V4)})
    reply = TurnClient(server).allocate(attributes=[(Attr.ADDITIONAL_ADDRESS_FAMILY, b"\x02\0\0\0")])
    assert reply.cls is MessageClass.SUCCESS
    value = reply.get(Attr.ADDRESS_ERROR_CODE)
    assert value[0] == stun.FAMILY_IPV6 and value[2:4] == b"\x04\x28"  # 440


def test_requested_and_additional_family_together_get_400(server):
    reply = TurnClient(server).allocate(attributes=[(Attr.REQUESTED_ADDRESS_FAMILY, b"\x01\0\0\0"),
                                                    (Attr.ADDITIONAL_ADDRESS_FAMILY, b"\x02\0\0\0")])
    assert _code(reply) == 400


def test_even_port_with_reservation_token(server):
    client = TurnClient(server)
    client.login()
    actions = server.handle(CLIENT, client.build(Method.ALLOCATE, [
        (Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0"), (Attr.EVEN_PORT, b"\x80")]), 0.0)
    (open_relays,) = actions
    (bind,) = open_relays.binds
    assert bind.pair and all(port % 2 == 0 and port + 1 <= 65535 for port in bind.ports)
    (answer,) = server.relays_opened(open_relays.token, [bind.ports[0]], 0.0)
    reply = stun.decode(answer.data)
    token = reply.get(Attr.RESERVATION_TOKEN)
    assert len(token) == 8
    second = TurnClient(server, client=("udp", CLIENT[1], ("192.0.2.61", 7)))
    got = second.allocate(attributes=[(Attr.RESERVATION_TOKEN, token)])
    assert stun.decode_xor_address(got.get(Attr.XOR_RELAYED_ADDRESS), got.transaction_id)[1] == bind.ports[0] + 1
    third = TurnClient(server, client=("udp", CLIENT[1], ("192.0.2.62", 7)))
    assert _code(third.allocate(attributes=[(Attr.RESERVATION_TOKEN, token)])) == 508


def test_unused_reservation_closes_its_socket_after_30_seconds(server):
    client = TurnClient(server)
    client.allocate(attributes=[(Attr.EVEN_PORT, b"\x80")])
    port = client.relay()[1]
    assert server.expire(29.0) == []
    assert CloseRelay((RELAY_V4, port + 1)) in server.expire(30.0)


def test_reservation_token_with_even_port_is_400(server):
    reply = TurnClient(server).allocate(attributes=[(Attr.RESERVATION_TOKEN, b"12345678"), (Attr.EVEN_PORT, b"\0")])
    assert _code(reply) == 400


def test_no_free_relay_port_gets_508(server):
    client = TurnClient(server)
    client.login()
    (open_relays,) = server.handle(CLIENT, client.build(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\0\0\0")]),
                                   0.0)
    (answer,) = server.relays_opened(open_relays.token, [None], 0.0)
    assert error_code(answer.data) == 508
    assert server.stats.refusals["relay_ports"] == 1
    assert server.allocation_for(CLIENT) is None


def test_small_port_range_offers_only_free_ports():
    server = make_server(port_min=50000, port_max=50002)
    seen = set()
    for index in range(3):
        client = TurnClient(server, client=("udp", CLIENT[1], ("192.0.2.70", 100 + index)),
                            username=["alice", "alice", "bob"][index],
                            password=["wonderland", "wonderland", "builder"][index])
        client.allocate()
        seen.add(client.relay()[1])
    assert seen == {50000, 50001, 50002}
    late = TurnClient(server, client=("udp", CLIENT[1], ("192.0.2.70", 200)), username="bob", password="builder")
    assert _code(late.allocate()) == 508


# -- quotas -------------------------------------------------------------------


def test_sixth_allocation_of_a_user_gets_486(server):
    for index in range(5):
        assert TurnClient(server, client=("udp", CLIENT[1], ("192.0.2.80", index + 1))).allocate().cls \
            is MessageClass.SUCCESS
    reply = TurnClient(server, client=("udp", CLIENT[1], ("192.0.2.80", 99))).allocate()
    assert _code(reply) == 486
    assert server.stats.refusals["user_quota"] == 1
    assert TurnClient(server, client=("udp", CLIENT[1], ("192.0.2.81", 1)), username="bob",
                      password="builder").allocate().cls is MessageClass.SUCCESS


def test_total_quota_gets_508():
    server = make_server(max_allocations=1)
    assert TurnClient(server).allocate().cls is MessageClass.SUCCESS
    other = TurnClient(server, client=("udp", CLIENT[1], ("192.0.2.90", 1)), username="bob", password="builder")
    assert _code(other.allocate()) == 508
    assert server.stats.refusals["total_quota"] == 1


def test_quota_frees_when_an_allocation_is_deleted(server):
    clients = [TurnClient(server, client=("udp", CLIENT[1], ("192.0.2.82", i + 1))) for i in range(6)]
    for client in clients[:5]:
        client.allocate()
    clients[0].refresh(0)
    assert clients[5].allocate().cls is MessageClass.SUCCESS


# -- Refresh and expiry -------------------------------------------------------


def test_refresh_extends_and_zero_deletes(alice, server):
    assert attribute_u32(alice.refresh(1800, now=100.0), Attr.LIFETIME) == 1800
    assert server.expire(700.0) == []
    reply = alice.refresh(0, now=200.0)
    assert attribute_u32(reply, Attr.LIFETIME) == 0
    assert server.allocation_for(CLIENT) is None
    assert _code(alice.refresh(now=201.0)) == 437


def test_refresh_zero_closes_the_relayed_socket(alice, server):
    relay = alice.relay()
    actions = alice.send(alice.build(Method.REFRESH, [(Attr.LIFETIME, b"\0\0\0\0")]), 5.0)
    assert CloseRelay(relay) in actions


def test_allocation_expires_at_its_lifetime(alice, server):
    relay = alice.relay()
    assert server.next_deadline() == 600.0
    assert server.expire(599.0) == []
    assert server.expire(600.0) == [CloseRelay(relay)]
    assert server.allocation_for(CLIENT) is None and server.next_deadline() is None


def test_shortening_refresh_moves_the_deadline(server):
    client = TurnClient(server)
    client.allocate(attributes=[(Attr.LIFETIME, struct.pack("!I", 3600))])
    assert server.next_deadline() == 3600.0
    client.refresh(600, now=10.0)
    relay = client.relay()
    assert server.next_deadline() == 610.0
    assert server.expire(610.0) == [CloseRelay(relay)]


def test_expired_allocation_is_dead_even_before_its_timer_runs(alice, server):
    alice.permit(PEER_V4)
    assert server.from_peer(alice.relay(), b"x", PEER_V4, 601.0) is None
    assert _code(alice.refresh(now=601.0)) == 437
    assert alice.allocate(now=601.0).cls is MessageClass.SUCCESS  # the 5-tuple is free again


def test_refresh_with_wrong_family_gets_443(alice):
    assert _code(alice.refresh(attributes=[(Attr.REQUESTED_ADDRESS_FAMILY, b"\x02\0\0\0")])) == 443


def test_other_user_on_the_same_5_tuple_gets_441(alice, server):
    bob = TurnClient(server, username="bob", password="builder")
    bob.nonce = alice.nonce
    assert _code(bob.refresh()) == 441


def test_requests_without_an_allocation_get_437(server):
    client = TurnClient(server)
    client.login()
    assert _code(client.permit(PEER_V4)) == 437
    assert _code(client.bind(0x4000, PEER_V4)) == 437


def test_tcp_client_closing_deletes_its_allocation():
    server = make_server()
    client_key = ("tcp", ("130.0.0.1", 3478), ("192.0.2.50", 40000))
    client = TurnClient(server, client=client_key)
    client.allocate()
    relay = client.relay()
    assert server.client_closed(client_key, 1.0) == [CloseRelay(relay)]


# -- permissions and data -------------------------------------------------------


def test_create_permission_lets_the_peer_in_for_300_seconds(alice, server):
    relay = alice.relay()
    assert server.from_peer(relay, b"early", PEER_V4, 1.0) is None
    assert server.stats.dropped["no_permission"] == 1
    assert alice.permit(PEER_V4, now=10.0).cls is MessageClass.SUCCESS
    indication = stun.decode(server.from_peer(relay, b"hello", (PEER_V4[0], 9999), 20.0))
    assert (indication.method, indication.cls) == (Method.DATA, MessageClass.INDICATION)
    assert indication.get(Attr.DATA) == b"hello"
    assert stun.decode_xor_address(indication.get(Attr.XOR_PEER_ADDRESS), indication.transaction_id) == \
        (PEER_V4[0], 9999)  # permissions are per IP address, any port
    assert server.from_peer(relay, b"late", PEER_V4, 310.0) is None
    alice.permit(PEER_V4, now=305.0)
    assert server.from_peer(relay, b"again", PEER_V4, 310.0) is not None


def test_permission_needs_a_peer_address(alice):
    assert _code(alice.request(Method.CREATE_PERMISSION, [])) == 400


def test_permission_with_malformed_peer_address_is_400(alice):
    assert _code(alice.request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, b"\0\1\2")])) == 400


def test_permission_for_the_other_family_gets_443(alice):
    assert _code(alice.permit(PEER_V6)) == 443


def test_send_indication_reaches_a_permitted_peer_only(alice, server):
    assert alice.send_indication(PEER_V4, b"nope") == []
    assert server.stats.dropped["no_permission"] == 1
    alice.permit(PEER_V4)
    assert alice.send_indication(PEER_V4, b"data") == [ToPeer(alice.relay(), PEER_V4, b"data")]
    assert (server.stats.to_peer_packets, server.stats.to_peer_bytes) == (1, 4)


def test_send_indication_without_data_or_with_dont_fragment_is_dropped(alice, server):
    alice.permit(PEER_V4)
    assert alice.send_indication(PEER_V4, b"x", extra=[(Attr.DONT_FRAGMENT, b"")]) == []
    no_data = alice.build(Method.SEND, [(Attr.XOR_PEER_ADDRESS, lambda t: stun.encode_xor_address(*PEER_V4, t))],
                          auth=False, cls=MessageClass.INDICATION)
    assert server.handle(CLIENT, no_data, 0.0) == []
    assert server.stats.dropped["dont_fragment"] == 1 and server.stats.dropped["bad_indication"] == 1


def test_send_indication_to_the_nodes_own_relay_port_is_dropped(alice, server):
    public = ("93.184.216.34", 3478)
    alice.permit(PEER_V4)
    assert alice.send_indication(public, b"x") != []  # same host as the peer, an ordinary port
    own = TurnClient(server, client=("udp", CLIENT[1], ("192.0.2.99", 1)))
    own.allocate()
    assert _code(own.permit((RELAY_V4, 50000))) == 403
    assert own.permit((RELAY_V4, 80)).cls is MessageClass.SUCCESS  # permissions are per IP...
    assert own.send_indication((RELAY_V4, 50000), b"x") == []  # ...so the port is checked on each send
    assert server.stats.refusals["peer_own_address"] == 2


def test_send_indication_without_allocation_is_dropped(server):
    client = TurnClient(server)
    assert client.send_indication(PEER_V4, b"x") == []
    assert server.stats.dropped["no_allocation"] == 1


# -- channels -------------------------------------------------------------------


def test_channel_bind_relays_channel_data_both_ways(alice, server):
    assert alice.bind(0x4000, PEER_V4).cls is MessageClass.SUCCESS
    relay = alice.relay()
    assert alice.channel_data(0x4000, b"to the peer", 1.0) == (relay, b"to the peer", PEER_V4)
    assert server.from_peer(relay, b"to the client", PEER_V4, 2.0) == b"\x40\x00\x00\x0dto the client"
    # another port of the same host has a permission but no channel: a Data indication
    assert stun.decode(server.from_peer(relay, b"x", (PEER_V4[0], 1), 2.0)).method == Method.DATA
    assert (server.stats.to_peer_packets, server.stats.to_client_packets) == (1, 2)


def test_channel_data_with_padding_on_udp_is_accepted(alice, server):
    alice.bind(0x4001, PEER_V4)
    data = b"\x40\x01\x00\x03abc\x00"
    assert server.channel_from_client(CLIENT, data, 1.0)[1] == b"abc"


def test_channel_data_shorter_than_its_length_is_dropped(alice, server):
    alice.bind(0x4001, PEER_V4)
    assert server.channel_from_client(CLIENT, b"\x40\x01\x00\x09abc", 1.0) is None
    assert server.channel_from_client(CLIENT, b"\x40\x01", 1.0) is None
    assert server.stats.dropped["bad_channel_data"] == 2


def test_channel_data_on_an_unbound_channel_is_dropped(alice, server):
    assert alice.channel_data(0x4002, b"x") is None
    assert server.stats.dropped["no_channel"] == 1


def test_over_tcp_channel_data_is_padded_to_four_bytes():
    server = make_server()
    client = TurnClient(server, client=("tcp", ("130.0.0.1", 3478), ("192.0.2.50", 40000)))
    client.allocate()
    client.bind(0x4000, PEER_V4)
    assert server.from_peer(client.relay(), b"abcde", PEER_V4, 1.0) == b"\x40\x00\x00\x05abcde\x00\x00\x00"
    assert server.from_peer(client.relay(), b"abcd", PEER_V4, 1.0) == b"\x40\x00\x00\x04abcd"


@pytest.mark.parametrize("number", [0x0000, 0x3FFF, 0x5000, 0x7FFF, 0x8000, 0xFFFF])
def test_channel_number_out_of_range_gets_400(alice, number):
    assert _code(alice.bind(number, PEER_V4)) == 400


@pytest.mark.parametrize("number,code", [(0x5000, None), (0x7FFF, None), (0x8000, 400), (0x3FFF, 400)])
def test_rfc5766_channel_numbers_when_the_operator_allows_them(number, code):
    server = make_server(channel_max=0x7FFF)
    client = TurnClient(server)
    client.allocate()
    assert _code(client.bind(number, PEER_V4)) == code
    if code is None:
        assert client.channel_data(number, b"x") is not None


def test_reserved_channel_numbers_are_framed_on_a_stream_and_dropped_by_the_server(server):
    assert StreamFramer().receive(b"\x50\x00\x00\x01x\x00\x00\x00") == [b"\x50\x00\x00\x01x"]


def test_channel_bind_without_peer_or_number_gets_400(alice):
    assert _code(alice.request(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, b"\x40\0\0\0")])) == 400
    assert _code(alice.request(Method.CHANNEL_BIND, [
        (Attr.XOR_PEER_ADDRESS, lambda t: stun.encode_xor_address(*PEER_V4, t))])) == 400


def test_a_channel_and_its_peer_stay_paired_until_five_minutes_after_expiry(alice, server):
    alice.bind(0x4000, PEER_V4, now=0.0)
    assert _code(alice.bind(0x4000, PEER_V4_B, now=1.0)) == 400  # number taken by another peer
    assert _code(alice.bind(0x4001, PEER_V4, now=1.0)) == 400  # peer taken by another number
    assert alice.bind(0x4000, PEER_V4, now=500.0).cls is MessageClass.SUCCESS  # a refresh is fine
    alice.refresh(3600, now=500.0)
    alice.permit(PEER_V4, now=1000.0)
    assert alice.channel_data(0x4000, b"x", 1099.0) is not None
    assert alice.channel_data(0x4000, b"x", 1100.0) is None  # expired (and permission too)
    assert _code(alice.bind(0x4000, PEER_V4_B, now=1399.0)) == 400
    assert alice.bind(0x4000, PEER_V4_B, now=1400.0).cls is MessageClass.SUCCESS
    assert alice.bind(0x4001, PEER_V4, now=1400.0).cls is MessageClass.SUCCESS


def test_channel_data_needs_a_live_permission(alice, server):
    alice.bind(0x4000, PEER_V4, now=0.0)
    assert alice.channel_data(0x4000, b"x", 299.0) is not None
    assert alice.channel_data(0x4000, b"x", 300.0) is None
    assert server.stats.dropped["no_permission"] == 1
    alice.permit(PEER_V4, now=301.0)
    assert alice.channel_data(0x4000, b"x", 302.0) is not None


def test_housekeeping_forgets_expired_permissions_and_channels(alice, server):
    alice.refresh(3600)
    alice.bind(0x4000, PEER_V4)
    alice.permit(PEER_V4_B)
    allocation = server.allocation_for(CLIENT)
    assert server.gauges(1.0) == {"allocations": {("udp", "ipv4"): 1}, "permissions": 2, "channels": 1}
    deadlines = []
    while (deadline := server.next_deadline()) is not None and deadline < 3600:
        deadlines.append(deadline)
        server.expire(deadline)
    assert deadlines == [300.0, 600.0, 900.0]
    assert allocation.permissions == {} and allocation.channels == {} and allocation.peers == {}
    assert server.gauges(901.0) == {"allocations": {("udp", "ipv4"): 1}, "permissions": 0, "channels": 0}


# -- bandwidth ------------------------------------------------------------------


def test_bandwidth_per_allocation_holds_the_configured_rate():
    rate = 125_000  # 1 Mbit/s
    server = make_server(allocation_bandwidth=rate)
    client = TurnClient(server)
    client.allocate()
    client.bind(0x4000, PEER_V4)
    client.refresh(3600)
    passed = 0
    packet = b"x" * 1000
    for tick in range(20_000):  # 2 Mbit/s offered for 10 s, both directions
        now = 1.0 + tick * 0.0005
        if client.channel_data(0x4000, packet, now) is not None:
            passed += len(packet)
        if tick % 1000 == 999:
            client.permit(PEER_V4, now=now)
    assert abs(passed - rate * 10) / (rate * 10) < 0.05
    assert server.stats.refusals["bandwidth"] > 9000


def test_total_bandwidth_is_shared():
    server = make_server(allocation_bandwidth=0, total_bandwidth=10_000)
    client = TurnClient(server)
    client.allocate()
    client.bind(0x4000, PEER_V4)
    results = [client.channel_data(0x4000, b"y" * 1000, 1.0) for _ in range(10)]
    assert results.count(None) == 7  # a 3000-byte burst, spent in debt by one packet
    assert server.stats.refusals["total_bandwidth"] == 7


def test_unlimited_bandwidth():
    server = make_server(allocation_bandwidth=0)
    client = TurnClient(server)
    client.allocate()
    client.bind(0x4000, PEER_V4)
    assert all(client.channel_data(0x4000, b"z" * 1200, 1.0) for _ in range(1000))


# -- odd input ------------------------------------------------------------------


def test_garbage_responses_and_classic_stun_are_dropped(server):
    assert server.handle(CLIENT, b"\x00\x03\x00", 0.0) == []
    assert server.handle(CLIENT, stun.encode(Method.ALLOCATE, MessageClass.SUCCESS, os.urandom(12)), 0.0) == []
    assert server.handle(CLIENT, stun.encode(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(16)), 0.0) == []
    assert server.handle(CLIENT, stun.encode(Method.DATA, MessageClass.INDICATION, os.urandom(12)), 0.0) == []
    assert dict(server.stats.dropped) == {"truncated": 1, "unexpected_response": 1, "classic_stun": 1,
                                          "unexpected_indication": 1}


def test_close_all_closes_every_relay_and_reservation(server):
    one = TurnClient(server)
    one.allocate(attributes=[(Attr.EVEN_PORT, b"\x80")])
    two = TurnClient(server, client=("udp", CLIENT[1], ("192.0.2.5", 5)))
    two.allocate()
    closing = server.close_all()
    assert len(closing) == 3 and all(isinstance(action, CloseRelay) for action in closing)
    assert server.allocation_count == 0


def test_relays_opened_with_an_unknown_token_does_nothing(server):
    assert server.relays_opened(12345, [50000], 0.0) == []


# -- stream framing ---------------------------------------------------------------


def test_stream_framer_cuts_stun_and_padded_channel_data_at_any_boundary():
    stun_message = stun.encode(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
    channel = b"\x40\x00\x00\x05hello\x00\x00\x00"
    stream = stun_message + channel + b"\x40\x01\x00\x04abcd" + stun_message
    for cut in range(1, len(stream)):
        framer = StreamFramer()
        messages = framer.receive(stream[:cut]) + framer.receive(stream[cut:])
        assert messages == [stun_message, b"\x40\x00\x00\x05hello", b"\x40\x01\x00\x04abcd", stun_message]


@pytest.mark.parametrize("first", [0x80, 0xC0, 0xFF])
def test_stream_framer_refuses_what_is_neither(first):
    with pytest.raises(FramingError):
        StreamFramer().receive(bytes([first, 0, 0, 0]))


def test_stream_framer_refuses_stun_without_the_cookie():
    framer = StreamFramer()
    assert framer.receive(b"\x16\x03\x01\x02\x00") == []  # not enough to tell yet
    with pytest.raises(FramingError, match="magic cookie"):
        framer.receive(b"\x01\x00\x01")


def test_to_client_actions_name_the_client(server):
    client = TurnClient(server)
    (action,) = client.send(client.build(Method.ALLOCATE, auth=False))
    assert isinstance(action, ToClient) and action.client == CLIENT


# -- draining -------------------------------------------------------------------


def test_a_draining_server_sends_new_allocations_to_the_alternate_with_integrity(server):
    server.draining = True
    server.alternate = ("192.0.2.99", 3478)
    client = TurnClient(server)
    reply = client.allocate()
    assert (reply.cls, _code(reply)) == (MessageClass.ERROR, 300)
    assert stun.decode_address(reply.get(Attr.ALTERNATE_SERVER)) == ("192.0.2.99", 3478)
    assert stun.check_integrity(reply, client.key)
    assert server.stats.requests["allocate", "try_alternate"] == 1


def test_a_draining_server_without_an_alternate_refuses_new_allocations_but_keeps_old_ones(alice, server):
    server.draining = True
    bob = TurnClient(server, client=("udp", CLIENT[1], ("192.0.2.8", 5000)))
    assert _code(bob.allocate()) == 508
    refresh = replies(alice.send(alice.build(Method.REFRESH, [(Attr.LIFETIME, struct.pack("!I", 600))])))
    assert stun.decode(refresh[0]).cls is MessageClass.SUCCESS
