"""Keys on disk, node ids, and bootstrap strings."""

import hashlib
import os
import stat

import pytest
from nacl.signing import VerifyKey

from zentalk_relay import bootstrap
from zentalk_relay.identity import IdentityError, load_identity


def test_first_start_creates_private_keys(tmp_path):
    data = tmp_path / "data"
    identity, created = load_identity(data)
    assert created == ["ed25519", "x25519-link", "x25519-onion"]
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "keys").stat().st_mode) == 0o700
    for name in ("ed25519.key", "link.key", "onion.key"):
        assert stat.S_IMODE((data / "keys" / name).stat().st_mode) == 0o600
    assert identity.node_id == hashlib.sha256(identity.ed25519_public).digest()


def test_second_start_loads_the_same_identity(tmp_path):
    first, _ = load_identity(tmp_path)
    second, created = load_identity(tmp_path)
    assert created == []
    assert (second.node_id, second.link_public, second.onion_public) == (
        first.node_id, first.link_public, first.onion_public)


def test_signatures_verify_with_the_published_key(tmp_path):
    identity, _ = load_identity(tmp_path)
    VerifyKey(identity.ed25519_public).verify(b"challenge", identity.sign(b"challenge"))


def test_key_readable_by_others_stops_start(tmp_path):
    load_identity(tmp_path)
    os.chmod(tmp_path / "keys" / "ed25519.key", 0o644)
    with pytest.raises(IdentityError, match=r"ed25519.key is readable by others \(mode 0644\); run 'chmod 600"):
        load_identity(tmp_path)


def _with_key(text: str, change) -> str:
    """The key file's text with only its key field changed (the same hex digits may occur elsewhere)."""
    fields = text.split()
    fields[3] = change(fields[3])
    return " ".join(fields) + "\n"


@pytest.mark.parametrize(
    "mangle,message",
    [
        (lambda text: text[:-3] + "\n", "fails its check"),
        (lambda text: text.replace("v1", "v9"), "not a zentalk-relay ed25519 key file"),
        (lambda text: "", "not a zentalk-relay ed25519 key file"),
        (lambda text: _with_key(text, lambda key: "zz" + key[2:]), "the key is not hex"),
        (lambda text: _with_key(text, lambda key: ("00" if key[:2] != "00" else "11") + key[2:]), "fails its check"),
    ],
)
def test_corrupt_key_stops_start(tmp_path, mangle, message):
    load_identity(tmp_path)
    path = tmp_path / "keys" / "ed25519.key"
    path.write_text(mangle(path.read_text()))
    with pytest.raises(IdentityError, match=message):
        load_identity(tmp_path)


def test_missing_keys_are_not_created_when_not_asked(tmp_path):
    with pytest.raises(IdentityError, match="does not exist; start the node or run 'zentalk-relay keygen'"):
        load_identity(tmp_path, create=False)


def test_bootstrap_string_round_trip(tmp_path):
    identity, _ = load_identity(tmp_path)
    value = bootstrap.Bootstrap(identity.ed25519_public, identity.link_public,
                                (("192.0.2.1", 7400), ("2001:db8::1", 7400)))
    text = str(value)
    assert text.startswith("ztr1:") and text.endswith("@192.0.2.1:7400,[2001:db8::1]:7400")
    assert bootstrap.parse(text) == value
    assert bootstrap.parse(str(bootstrap.Bootstrap(identity.ed25519_public, identity.link_public))).addresses == ()


@pytest.mark.parametrize("text", ["ztr2:abc", "ztr1:!!!", "ztr1:AAAA", "ztr1:" + "A" * 86 + "@host:1"])
def test_bad_bootstrap_strings(text):
    with pytest.raises(bootstrap.BootstrapError):
        bootstrap.parse(text)
