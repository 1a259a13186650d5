"""Onion addresses from keys, the onion key file, control-protocol text, and the Tor settings."""

import base64
import os
import stat

import pytest
from nacl.signing import SigningKey

from zentalk_relay.config import ConfigError, load
from zentalk_relay.tap import Options
from zentalk_relay.tor import (
    KEY_FILE,
    TorError,
    TorKeyError,
    add_onion_command,
    blob_from_seed,
    control_port_file,
    link_target,
    onion_address,
    parse_add_onion,
    public_key_from_blob,
    public_key_of,
    read_onion_key,
    save_onion_key,
    socks_listener,
    stored_onion_address,
)

# RFC 8032 §7.1 TEST 1: the key tor's own test_build_address uses (test_hs_common.c), and arti's
# pubkey_to_service test; both give this address.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_ADDRESS = "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenl5sid.onion"

# Made by tor 0.4.9.11 (`ADD_ONION NEW:ED25519-V3 Port=7400,127.0.0.1:7400` with DisableNetwork 1), frozen:
# the PrivateKey blob tor returned and the ServiceID it gave it.
TOR_BLOB = base64.b64decode(
    "QIrRvK/9ajr/KHPwgNFqNhXmP9hNDYrMl8VDKr+/DHHkZuba6DnyEXkFcgp0370hMLSvp0kNNdWv+3TCUR96vw==")
TOR_SERVICE_ID = "r467g2fzogzjxgspzcoosir3zk7dznwwohqcjchbss6cltmrreh3o2ad"


# -- addresses ---------------------------------------------------------------------------


def test_the_rfc8032_key_has_the_address_tor_computes():
    assert onion_address(RFC8032_PUBLIC) == RFC8032_ADDRESS


def test_a_key_tor_made_gives_the_service_id_tor_gave_it():
    assert onion_address(public_key_from_blob(TOR_BLOB)) == TOR_SERVICE_ID + ".onion"


def test_the_expanded_key_of_a_seed_has_the_seeds_public_key():
    blob = blob_from_seed(RFC8032_SEED)
    assert public_key_from_blob(blob) == RFC8032_PUBLIC == bytes(SigningKey(RFC8032_SEED).verify_key)
    assert onion_address(public_key_from_blob(blob)) == RFC8032_ADDRESS


def test_the_public_key_comes_back_out_of_an_address():
    assert public_key_of(RFC8032_ADDRESS) == RFC8032_PUBLIC
    assert public_key_of(RFC8032_ADDRESS.upper().removesuffix(".ONION")) == RFC8032_PUBLIC


@pytest.mark.parametrize("index", [0, 20, 52, 53, 55])
def test_one_changed_character_fails_the_checksum_or_version(index):
    label = RFC8032_ADDRESS.removesuffix(".onion")
    changed = label[:index] + ("a" if label[index] != "a" else "b") + label[index + 1:]
    with pytest.raises(ValueError, match="is not a v3 onion address"):
        public_key_of(changed + ".onion")


@pytest.mark.parametrize("text", ["", "example.com", "nope.onion", "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhk"
                                  ".onion", "!" * 56 + ".onion"])
def test_not_an_address(text):
    with pytest.raises(ValueError):
        public_key_of(text)


def test_an_unclamped_or_short_blob_is_refused():
    with pytest.raises(ValueError, match="64 bytes"):
        public_key_from_blob(TOR_BLOB[:63])
    unclamped = bytes([TOR_BLOB[0] | 1]) + TOR_BLOB[1:]
    with pytest.raises(ValueError, match="not clamped"):
        public_key_from_blob(unclamped)


# -- the key file ------------------------------------------------------------------------


def test_the_key_file_is_private_and_reads_back(tmp_path):
    assert read_onion_key(tmp_path) is None
    assert stored_onion_address(tmp_path) is None
    path = save_onion_key(tmp_path, TOR_BLOB)
    assert path == tmp_path / "keys" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert read_onion_key(tmp_path) == TOR_BLOB
    assert stored_onion_address(tmp_path) == TOR_SERVICE_ID + ".onion"
    assert path.read_text().startswith("zentalk-relay tor-onion v1 ")


def test_a_key_file_is_never_replaced(tmp_path):
    save_onion_key(tmp_path, TOR_BLOB)
    with pytest.raises(FileExistsError):
        save_onion_key(tmp_path, blob_from_seed(RFC8032_SEED))
    assert read_onion_key(tmp_path) == TOR_BLOB
    assert not (tmp_path / "keys" / "tor_onion.tmp").exists()


def test_a_key_file_others_can_read_stops_with_the_fix(tmp_path):
    path = save_onion_key(tmp_path, TOR_BLOB)
    os.chmod(path, 0o640)
    with pytest.raises(TorKeyError, match=rf"{path} is readable by others \(mode 0640\); run 'chmod 600 {path}'"):
        read_onion_key(tmp_path)


def test_an_edited_key_file_fails_its_check(tmp_path):
    path = save_onion_key(tmp_path, TOR_BLOB)
    fields = path.read_text().split()
    fields[3] = base64.b64encode(blob_from_seed(RFC8032_SEED)).decode()
    path.write_text(" ".join(fields) + "\n")
    with pytest.raises(TorKeyError, match="fails its check; restore it from a backup"):
        read_onion_key(tmp_path)
    path.write_text("zentalk-relay tor-onion v1 not-base64 00000000\n")
    with pytest.raises(TorKeyError, match="not an ED25519-V3 blob"):
        read_onion_key(tmp_path)
    path.write_text("something else\n")
    with pytest.raises(TorKeyError, match="not a zentalk-relay tor-onion key file"):
        read_onion_key(tmp_path)


# -- control protocol text ---------------------------------------------------------------


def test_add_onion_asks_for_a_new_key_then_hands_the_saved_one_back():
    assert add_onion_command(None, 7400, "127.0.0.1:41000") == "ADD_ONION NEW:ED25519-V3 Port=7400,127.0.0.1:41000"
    again = add_onion_command(TOR_BLOB, 7400, "[::1]:41000")
    assert again == f"ADD_ONION ED25519-V3:{base64.b64encode(TOR_BLOB).decode()} Port=7400,[::1]:41000"
    assert "Detach" not in again  # the service goes away with the node's control connection


def test_the_add_onion_reply_of_a_new_service():
    reply = f"ServiceID={TOR_SERVICE_ID}\nPrivateKey=ED25519-V3:{base64.b64encode(TOR_BLOB).decode()}"
    assert parse_add_onion(reply) == (TOR_SERVICE_ID + ".onion", TOR_BLOB)
    assert parse_add_onion(f"ServiceID={TOR_SERVICE_ID}") == (TOR_SERVICE_ID + ".onion", None)


@pytest.mark.parametrize("reply, message", [
    ("", "no v3 ServiceID"),
    ("ServiceID=abc", "no v3 ServiceID"),
    (f"ServiceID={TOR_SERVICE_ID}\nPrivateKey=RSA1024:AAAA", "no ED25519-V3 PrivateKey"),
    (f"ServiceID={TOR_SERVICE_ID}\nPrivateKey=ED25519-V3:!!", "no ED25519-V3 PrivateKey"),
])
def test_a_strange_add_onion_reply_is_an_error(reply, message):
    with pytest.raises(TorError, match=message):
        parse_add_onion(reply)


@pytest.mark.parametrize("endpoints, target", [
    (["tcp:127.0.0.1:41000"], "127.0.0.1:41000"),
    (["tcp:0.0.0.0:7400", "tcp:[::]:7400"], "127.0.0.1:7400"),
    (["tcp:[::]:7400"], "[::1]:7400"),
    (["tcp:192.0.2.7:7400"], "192.0.2.7:7400"),
    (["tls:127.0.0.1:7401", "ws:127.0.0.1:7402", "tcp:127.0.0.1:7400"], "127.0.0.1:7400"),
    (["tls:127.0.0.1:7401"], None),
    ([], None),
])
def test_tor_forwards_to_the_first_tcp_link_listener(endpoints, target):
    assert link_target(endpoints) == target


@pytest.mark.parametrize("reply, found", [
    ('"127.0.0.1:9050"', ("127.0.0.1", 9050)),
    ('"unix:/run/tor/socks" "127.0.0.1:9050"', ("unix", "/run/tor/socks")),
    ('"[::1]:9050"', ("::1", 9050)),
    ("", None),
])
def test_the_socks_listener_tor_reports(reply, found):
    assert socks_listener(reply) == found


def test_the_control_port_file():
    assert control_port_file("PORT=127.0.0.1:45227\n") == ("127.0.0.1", 45227)
    with pytest.raises(TorError):
        control_port_file("")


# -- settings ----------------------------------------------------------------------------


def test_tor_is_off_by_default_and_the_flag_turns_it_on(tmp_path):
    assert load().tor.enabled is False
    options = Options()
    options.parseOptions(["--data-dir", str(tmp_path), "--tor", "--set", "tor.disable_network=true"])
    assert options.config.tor.enabled is True
    assert options.config.tor.disable_network is True
    assert options.config.tor.timeout == 60.0


def test_tor_needs_a_tcp_link_listener():
    with pytest.raises(ConfigError, match="tor.enabled: needs a TCP link listener"):
        load(None, [("--tor", "tor.enabled", True), ("test", "link.tcp", [])])


def test_disable_network_is_for_a_launched_tor_only():
    with pytest.raises(ConfigError, match="tor.disable_network: applies only to a tor the node launches"):
        load(None, [("test", "tor.control", "tcp:127.0.0.1:9051"), ("test", "tor.disable_network", True)])


@pytest.mark.parametrize("value", ["tcp:127.0.0.1:9051", "unix:/run/tor/control", "tcp:host=localhost:port=9051"])
def test_control_endpoints(value):
    assert load(None, [("test", "tor.control", value)]).tor.control == value


def test_a_bad_control_endpoint_names_the_key():
    with pytest.raises(ConfigError, match="tor.control: 'nonsense:9051' is not a client endpoint string"):
        load(None, [("test", "tor.control", "nonsense:9051")])


def test_the_virtual_port_is_a_port():
    with pytest.raises(ConfigError, match="tor.port: 0 is not 1-65535"):
        load(None, [("test", "tor.port", 0)])
