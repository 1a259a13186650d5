"""Configuration layers, validation messages, and the documentation staying true."""

from pathlib import Path

import pytest

from zentalk_relay import config
from zentalk_relay.config import ConfigError, load, parse_override

DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"


def _write(tmp_path, text):
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file(monkeypatch):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", "/xdg")
    cfg = load()
    assert cfg.node.data_dir == Path("/xdg/zentalk-relay")
    assert cfg.stun.udp == ("0.0.0.0:3478", "[::]:3478")
    assert cfg.metrics.listen == "tcp:9464:interface=127.0.0.1"


def test_systemd_state_directory_is_the_default(monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/zentalk-relay")
    assert load().node.data_dir == Path("/var/lib/zentalk-relay")


def test_file_overrides_defaults_and_options_override_the_file(tmp_path):
    path = _write(tmp_path, '[stun]\nudp = ["127.0.0.1:5000"]\nsoftware = "from-file"\n[node]\nlog_level = "debug"\n')
    cfg = load(path, [("--stun-udp", "stun.udp", ("127.0.0.1:6000",))])
    assert cfg.stun.udp == ("127.0.0.1:6000",)
    assert cfg.stun.software == "from-file"
    assert cfg.node.log_level == "debug"


def test_config_is_frozen():
    cfg = load()
    with pytest.raises(AttributeError):
        cfg.stun.software = "x"  # type: ignore[misc]


def test_unknown_key_names_file_key_and_suggests(tmp_path):
    path = _write(tmp_path, "[stun]\nudpp = []\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: stun.udpp: unknown key; did you mean 'stun.udp'?"


def test_unknown_section(tmp_path):
    path = _write(tmp_path, "[stunn]\nudp = []\n")
    with pytest.raises(ConfigError, match=r"stunn.udp: unknown key; did you mean 'stun.udp'\?"):
        load(path)


def test_top_level_value_is_refused(tmp_path):
    path = _write(tmp_path, 'stun = "yes"\n')
    with pytest.raises(ConfigError, match="stun: expected a \\[table\\]"):
        load(path)


@pytest.mark.parametrize(
    "text,message",
    [
        ('[stun]\nudp = ["localhost:3478"]\n', "stun.udp: 'localhost' in 'localhost:3478' is not an IP address"),
        ('[stun]\nudp = ["1.2.3.4:70000"]\n', "stun.udp: port '70000' in '1.2.3.4:70000' is not 0-65535"),
        ('[stun]\nudp = ["::1:3478"]\n', "write IPv6 addresses as [addr]:port"),
        ("[stun]\nenabled = 1\n", "stun.enabled: expected true or false, got 1"),
        ("[stun]\nsocket_buffer = true\n", "stun.socket_buffer: expected an integer, got True"),
        ("[stun]\nsocket_buffer = -1\n", "stun.socket_buffer: -1 is not positive"),
        ('[node]\nlog_level = "loud"\n', "node.log_level: 'loud' is not one of debug, info"),
        ('[metrics]\nlisten = "tcpp:9464"\n', "metrics.listen: 'tcpp:9464' is not a server endpoint string"),
        ('[stun]\nsoftware = "' + "x" * 200 + '"\n', "stun.software: SOFTWARE must be fewer than 128"),
    ],
)
def test_bad_values_name_file_key_and_problem(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_bad_toml_names_the_file(tmp_path):
    path = _write(tmp_path, "[stun\n")
    with pytest.raises(ConfigError, match=f"{path}: -: not valid TOML"):
        load(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        load(tmp_path / "absent.toml")


def test_option_origin_is_named():
    with pytest.raises(ConfigError) as caught:
        load(None, [("--set stun.enabled", "stun.enabled", "maybe")])
    assert str(caught.value) == "--set stun.enabled: stun.enabled: expected true or false, got 'maybe'"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("stun.enabled=false", ("stun.enabled", False)),
        ('stun.udp=["127.0.0.1:1"]', ("stun.udp", ["127.0.0.1:1"])),
        ("metrics.listen=tcp:0", ("metrics.listen", "tcp:0")),
        ("stun.socket_buffer=65536", ("stun.socket_buffer", 65536)),
    ],
)
def test_set_values_are_toml_or_bare_strings(text, expected):
    assert parse_override(text) == expected


def test_a_single_string_is_accepted_for_a_list():
    assert load(None, [("x", "stun.udp", "127.0.0.1:1")]).stun.udp == ("127.0.0.1:1",)


def test_every_key_is_documented_with_its_default():
    """docs/configuration.md holds the generated table; regenerate with python -m zentalk_relay.config."""
    assert config.markdown_table() in DOCS.read_text()
    for key in config.known_keys():
        assert f"`{key}`" in DOCS.read_text()
