"""Static users, TURN REST API credentials and nonces."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from zentalk_relay.nat import stun
from zentalk_relay.nat.credentials import (
    Credentials,
    CredentialsError,
    NonceIssuer,
    load_secrets,
    load_users,
    parse_secrets,
    parse_users,
    rest_credentials,
    rest_expiry,
    rest_password,
)

SECRET = b"0123456789abcdef0123456789abcdef"


def test_users_file_format():
    users = parse_users("# comment\n\nalice:wonderland\nbob:pass:with:colons\n")
    assert users == {"alice": "wonderland", "bob": "pass:with:colons"}


@pytest.mark.parametrize("text,problem", [
    ("alice\n", "line 1: expected name:password"),
    (":x\n", "line 1: expected name:password"),
    ("alice:\n", "line 1: expected name:password"),
    ("a:1\na:2\n", "line 2: user 'a' appears twice"),
])
def test_users_file_errors_name_the_line(text, problem):
    with pytest.raises(CredentialsError, match=problem):
        parse_users(text, "users")


def test_secret_files_must_be_private(tmp_path):
    path = tmp_path / "users"
    path.write_text("alice:wonderland\n")
    path.chmod(0o644)
    with pytest.raises(CredentialsError, match=r"readable by others \(mode 0644\); chmod 600 it"):
        load_users(path)
    path.chmod(0o600)
    assert load_users(path) == {"alice": "wonderland"}
    with pytest.raises(CredentialsError, match="cannot read"):
        load_secrets(tmp_path / "missing")


def test_secrets_one_per_line_first_signs(tmp_path):
    assert parse_secrets("# rotate\nnew\nold\n") == (b"new", b"old")
    with pytest.raises(CredentialsError, match="no secret"):
        parse_secrets("\n# nothing\n")


def test_rest_password_is_coturns_formula():
    expected = base64.b64encode(hmac.new(b"s3cret", b"1700000000:alice", hashlib.sha1).digest()).decode()
    assert rest_password(b"s3cret", "1700000000:alice") == expected
    assert rest_credentials(b"s3cret", 1699999000.7, 1000, "alice") == ("1700000000:alice", expected)
    assert rest_credentials(b"s3cret", 100, 50)[0] == "150"
    assert rest_expiry("150") == 150 and rest_expiry("150:x:y") == 150
    assert rest_expiry("alice") is None and rest_expiry("") is None and rest_expiry("1" * 13) is None


def test_candidates_static_then_rest_and_expiry():
    credentials = Credentials("realm", {"alice": "pw", "200": "static-for-a-numeric-name"}, (b"k1", b"k2"))
    alice = credentials.candidates("alice", "md5", now=0)
    assert [(p.source, p.key) for p in alice] == [("static", stun.long_term_key("alice", "realm", "pw"))]
    both = credentials.candidates("200", "md5", now=100)
    assert [p.source for p in both] == ["static", "rest", "rest"]
    assert both[1].key == stun.long_term_key("200", "realm", rest_password(b"k1", "200"))
    assert [p.source for p in credentials.candidates("200", "md5", now=200)] == ["static"]
    assert credentials.candidates("nobody", "md5", now=0) == []
    assert credentials.candidates("alice", "sha256", now=0)[0].key == \
        stun.long_term_key("alice", "realm", "pw", "sha256")
    assert credentials.username_for_hash(stun.userhash("alice", "realm")) == "alice"
    assert credentials.username_for_hash(b"\0" * 32) is None


def test_a_password_saslprep_refuses_matches_nothing():
    credentials = Credentials("realm", {"eve": "bad\u0007password"})
    assert credentials.candidates("eve", "md5", now=0) == []


def test_nonces_expire_and_are_bound_to_the_address():
    issuer = NonceIssuer(SECRET, 600)
    nonce = issuer.issue("192.0.2.1", now=1000.0)
    assert nonce.startswith(b"obMatJos2AAAD")
    assert issuer.check(nonce, "192.0.2.1", 1599.0)
    assert not issuer.check(nonce, "192.0.2.1", 1600.0)
    assert not issuer.check(nonce, "192.0.2.2", 1000.0)
    assert not NonceIssuer(b"another secret of 32 bytes......", 600).check(nonce, "192.0.2.1", 1000.0)
    tampered = bytearray(nonce)
    tampered[-3] ^= 1
    assert not issuer.check(bytes(tampered), "192.0.2.1", 1000.0)
    assert not issuer.check(b"obMatJos2AAAD!!!!", "192.0.2.1", 1000.0)
    assert not issuer.check(nonce[:-1] + b"*", "192.0.2.1", 1000.0)


def test_nonce_secret_must_be_long_enough():
    with pytest.raises(ValueError):
        NonceIssuer(b"short", 600)
