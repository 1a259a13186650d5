"""Write tokens: bound to the querier's IP, secret rotated every 5 minutes, the previous one still good."""

import random

from zentalk_relay.dht import krpc
from zentalk_relay.dht.krpc import AnnouncePeer, ErrorCode, ErrorMessage, GetPeers, Response
from zentalk_relay.dht.node import DhtNode, PeerAnnounced
from zentalk_relay.dht.tokens import ROTATION, TOKEN_SIZE, TokenSecrets

IP = "198.51.100.7"


def test_token_is_bound_to_the_ip():
    secrets = TokenSecrets(random.Random(1), 0.0)
    token = secrets.issue(IP, 0.0)
    assert len(token) == TOKEN_SIZE
    assert secrets.valid(token, IP, 1.0)
    assert not secrets.valid(token, "198.51.100.8", 1.0)
    assert not secrets.valid(token, "2001:db8::1", 1.0)
    assert not secrets.valid(token[:-1], IP, 1.0)
    assert not secrets.valid(b"", IP, 1.0)
    assert secrets.issue("2001:db8::1", 0.0) != token


def test_previous_secret_is_accepted_then_not():
    secrets = TokenSecrets(random.Random(1), 0.0)
    token = secrets.issue(IP, 10.0)
    assert secrets.valid(token, IP, ROTATION - 1)
    # One rotation: the token was made with what is now the previous secret.
    fresh = secrets.issue(IP, ROTATION + 1)
    assert fresh != token
    assert secrets.valid(token, IP, ROTATION + 1)
    assert secrets.next_rotation == 2 * ROTATION
    # Two rotations: gone.
    assert not secrets.valid(token, IP, 2 * ROTATION + 1)
    assert secrets.valid(fresh, IP, 2 * ROTATION + 1)


def test_rotation_is_anchored_and_a_long_gap_forgets_both():
    secrets = TokenSecrets(random.Random(1), 0.0)
    token = secrets.issue(IP, 0.0)
    # Late lazy rotation at 9.9 minutes still expires the token at 10 minutes.
    assert secrets.valid(token, IP, 2 * ROTATION - 6)
    assert not secrets.valid(token, IP, 2 * ROTATION)
    token = secrets.issue(IP, 2 * ROTATION)
    assert not secrets.valid(token, IP, 10 * ROTATION)


def test_secrets_differ_per_node():
    a, b = TokenSecrets(random.Random(1), 0.0), TokenSecrets(random.Random(2), 0.0)
    assert a.issue(IP, 0.0) != b.issue(IP, 0.0)


# -- through the node: get_peers gives a token, announce_peer brings it back ------------

HASH = b"h" * 20
OTHER = b"o" * 20


def _answer(node, query, source, now):
    out = node.handle(krpc.encode(query), source, now)
    return [m for m in map(krpc.decode, (d.data for d in out)) if isinstance(m, (Response, ErrorMessage))][0]


def test_announce_with_the_previous_token_then_a_foreign_one():
    node = DhtNode(b"n" * 20, now=0.0, rng=random.Random(1))
    source = (IP, 40000)
    token = _answer(node, GetPeers(b"1", OTHER, HASH), source, 1.0).token
    # After one rotation the token still works (implied_port: the source port is used).
    ok = _answer(node, AnnouncePeer(b"2", OTHER, HASH, 0, token, implied_port=True), source, ROTATION + 5)
    assert isinstance(ok, Response)
    assert PeerAnnounced(HASH, source) in node.take_events()
    values = _answer(node, GetPeers(b"3", OTHER, HASH), ("203.0.113.1", 1), ROTATION + 6).values
    assert values == (source,)
    # After two rotations it is refused with 203.
    stale = _answer(node, AnnouncePeer(b"4", OTHER, HASH, 6881, token), source, 2 * ROTATION + 5)
    assert isinstance(stale, ErrorMessage) and (stale.code, stale.tid) == (ErrorCode.PROTOCOL, b"4")
    # Another IP's token is refused.
    foreign = _answer(node, GetPeers(b"5", OTHER, HASH), ("203.0.113.1", 1), 2 * ROTATION + 6).token
    refused = _answer(node, AnnouncePeer(b"6", OTHER, HASH, 6881, foreign), source, 2 * ROTATION + 7)
    assert refused.code == ErrorCode.PROTOCOL
    assert node.stats.queries["announce_peer", "203"] == 2
    assert node.stats.queries["announce_peer", "ok"] == 1


def test_announced_peers_expire_after_30_minutes():
    node = DhtNode(b"n" * 20, now=0.0, rng=random.Random(1))
    source = (IP, 40000)
    token = _answer(node, GetPeers(b"1", OTHER, HASH), source, 0.0).token
    _answer(node, AnnouncePeer(b"2", OTHER, HASH, 6881, token), source, 0.0)
    assert node.peers.peers(HASH, 1799.0, 10, random.Random()) == [(IP, 6881)]
    assert node.peers.peers(HASH, 1800.0, 10, random.Random()) == []
    node.tick(1800.0)
    assert len(node.peers) == 0
