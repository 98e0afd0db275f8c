"""daemon.json + flags -> DaemonConfig: dockerd's rules for unknown keys, types and conflicts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pyd.config import (
    OPTIONS,
    RELOADABLE,
    ConfigError,
    DaemonConfig,
    load_config,
    parse_host,
    reload_config,
)


def write(tmp_path: Path, doc: Any) -> str:
    path = tmp_path / "daemon.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def test_defaults_are_dockerd_like() -> None:
    cfg = load_config({}, None)
    assert cfg.data_root == "/var/lib/pyd"
    assert cfg.exec_root == "/run/pyd"
    assert cfg.hosts == ("unix:///run/pyd/pyd.sock",)
    assert cfg.pidfile == "/run/pyd/pyd.pid"
    assert cfg.log_driver == "json-file"
    assert cfg.storage_driver == ""
    assert cfg.iptables is True and cfg.icc is True and cfg.mtu == 1500


def test_every_option_has_a_field_with_the_same_default() -> None:
    defaults = DaemonConfig()
    names = {f.name for f in dataclasses.fields(DaemonConfig)}
    for opt in OPTIONS:
        assert opt.attr in names, opt.key
        if opt.key != "pidfile":
            assert getattr(defaults, opt.attr) == opt.default, opt.key


def test_file_and_flags_merge(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "data-root": "/srv/pyd",
            "log-opts": {"max-size": "10m"},
            "storage-opts": ["overlay2.size=1G"],
            "labels": ["env=test"],
            "default-address-pools": [{"base": "10.10.0.0/16", "size": 24}],
            "authorization-plugins": ["policy"],
            "authorization-opts": {"policy": {"file": "/etc/pyd/p.json"}},
        },
    )
    cfg = load_config({"hosts": ["unix:///tmp/x.sock"], "debug": True}, path)
    assert cfg.data_root == "/srv/pyd"
    assert cfg.pidfile == "/run/pyd/pyd.pid"  # follows exec-root
    assert cfg.log_opts == {"max-size": "10m"}
    assert cfg.storage_opts == {"overlay2.size": "1G"}
    assert cfg.hosts == ("unix:///tmp/x.sock",) and cfg.debug is True
    assert cfg.default_address_pools == ({"base": "10.10.0.0/16", "size": 24},)
    assert cfg.authorization_opts == {"policy": {"file": "/etc/pyd/p.json"}}
    assert cfg.config_file == path
    settings = cfg.settings()
    assert settings["data-root"] == "/srv/pyd" and settings["labels"] == ["env=test"]
    assert json.loads(json.dumps(settings)) == settings  # plain JSON for plugins


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({}, write(tmp_path, {"debug": True, "storage-drvier": "vfs", "zzz": 1}))
    assert str(err.value) == "the following directives don't match any configuration option: storage-drvier, zzz"


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("debug", "yes", "a boolean"),
        ("mtu", "1500", "an integer"),
        ("mtu", True, "an integer"),
        ("hosts", "unix:///x.sock", "a list of strings"),
        ("log-opts", {"max-size": 10}, "an object of strings"),
        ("log-opts", ["max-size=10m"], "an object of strings"),
        ("storage-opts", {"a": "b"}, "a list of strings"),
        ("authorization-opts", {"policy": "x"}, "an object of objects"),
        ("default-address-pools", [{"base": "10.0.0.0/8"}], 'a list of {"base"'),
    ],
)
def test_wrong_type_names_key_and_expected_type(tmp_path: Path, key: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({}, write(tmp_path, {key: value}))
    msg = str(err.value)
    assert f'"{key}"' in msg and f"expected {expected}" in msg and str(tmp_path) in msg, msg


@pytest.mark.parametrize(
    "doc, words",
    [
        ({"hosts": ["tcp//x"]}, ['"hosts"', "unix:///path"]),
        ({"hosts": ["udp://x"]}, ['"hosts"', 'unsupported protocol "udp"']),
        ({"log-level": "loud"}, ['"log-level"', "valid levels"]),
        ({"mtu": 20}, ['"mtu"', "MTU"]),
        ({"bip": "10.0.0.300/24"}, ['"bip"', "CIDR"]),
        ({"storage-opts": ["noequals"]}, ['"storage-opts"', "key=value"]),
        ({"labels": ["novalue"]}, ['"labels"', "key=value"]),
        ({"default-address-pools": [{"base": "10.0.0.0/16", "size": 8}]}, ["pool size 8"]),
        ({"data-root": "relative/dir"}, ['"data-root"', "absolute"]),
        ({"bridge": "br0", "bip": "10.1.0.1/24"}, ['"bridge"', '"bip"']),
        ({"authorization-opts": {"policy": {}}}, ["authorization-opts", "policy"]),
        ({"shutdown-timeout": -1}, ['"shutdown-timeout"']),
    ],
)
def test_bad_values_are_errors_naming_the_key(tmp_path: Path, doc: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({}, write(tmp_path, doc))
    for word in words:
        assert word in str(err.value), str(err.value)


def test_flag_and_file_conflict_is_dockerds_message(tmp_path: Path) -> None:
    path = write(tmp_path, {"data-root": "/from/file", "debug": True, "log-opts": {"max-size": "1m"}})
    with pytest.raises(ConfigError) as err:
        load_config({"data-root": "/from/flag", "log-opts": {"max-size": "2m"}}, path)
    assert str(err.value) == (
        "the following directives are specified both as a flag and in the configuration file: "
        "data-root: (from flag: /from/flag, from file: /from/file), "
        "log-opts: (from flag: map[max-size:2m], from file: map[max-size:1m])"
    )


def test_conflict_even_when_values_agree(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="debug: \\(from flag: true, from file: true\\)"):
        load_config({"debug": True}, write(tmp_path, {"debug": True}))


@pytest.mark.parametrize("text, words", [("{", "invalid JSON"), ("[1]", "JSON object")])
def test_malformed_file(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_config({}, write(tmp_path, text))


def test_empty_file_is_fine_and_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    assert load_config({}, write(tmp_path, "")).data_root == "/var/lib/pyd"
    with pytest.raises(ConfigError, match="no such file"):
        load_config({}, str(tmp_path / "missing.json"))


def test_parse_host() -> None:
    assert parse_host("unix:///run/pyd/pyd.sock") == ("unix", "/run/pyd/pyd.sock", 0)
    assert parse_host("tcp://127.0.0.1:2376") == ("tcp", "127.0.0.1", 2376)
    assert parse_host("tcp://0.0.0.0") == ("tcp", "0.0.0.0", 2376)
    assert parse_host("tcp://[::1]:9999") == ("tcp", "::1", 9999)
    for bad in ("unix://relative.sock", "tcp://host:99999", "unix:///" + "x" * 120):
        with pytest.raises(ValueError):
            parse_host(bad)


def test_reload_applies_only_reloadable_keys(tmp_path: Path) -> None:
    path = write(tmp_path, {"debug": False, "labels": ["a=1"], "bip": "10.1.0.1/24"})
    cfg = load_config({"data-root": "/srv/x"}, path)
    write(tmp_path, {"debug": True, "labels": ["a=2"], "bip": "10.2.0.1/24"})
    result = reload_config(cfg)
    assert set(result.changed) == {"debug", "labels"}
    assert result.ignored == ("bip",)
    new = result.config
    assert new.debug is True and new.labels == ("a=2",)
    assert new.bip == "10.1.0.1/24"  # needs a restart
    assert new.data_root == "/srv/x"  # the flag still holds
    assert {"debug", "labels", "log-level", "live-restore"} <= RELOADABLE


def test_reload_keeps_rules(tmp_path: Path) -> None:
    path = write(tmp_path, {})
    cfg = load_config({"debug": True}, path)
    write(tmp_path, {"debug": False})
    with pytest.raises(ConfigError, match="both as a flag"):
        reload_config(cfg)
    write(tmp_path, {"nope": 1})
    with pytest.raises(ConfigError, match="nope"):
        reload_config(cfg)


# -- the click command: which flags count as given --------------------------------------------


def run_validate(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> tuple[Any, dict[str, Any]]:
    """Invoke `pyd daemon ... --validate` with the daemon side replaced: returns the result
    and the DaemonConfig the command built."""
    from pyd import daemon as daemon_mod
    from pyd.cli.daemon import daemon

    seen: dict[str, Any] = {}
    monkeypatch.setattr(daemon_mod, "validate", lambda cfg: seen.setdefault("config", cfg))
    result = CliRunner().invoke(daemon, args + ["--validate"], standalone_mode=False)
    return result, seen


def test_cli_only_given_flags_count(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, {"debug": True, "iptables": False, "log-opts": {"max-size": "1m"}})
    result, seen = run_validate(monkeypatch, ["--config-file", path, "-H", "unix:///tmp/a.sock", "-H", "unix:///tmp/b.sock"])
    assert result.exception is None, result.output
    cfg = seen["config"]
    assert cfg.hosts == ("unix:///tmp/a.sock", "unix:///tmp/b.sock")
    assert cfg.debug is True and cfg.iptables is False  # file values, untouched by flag defaults
    assert cfg.flags == {"hosts": ["unix:///tmp/a.sock", "unix:///tmp/b.sock"]}
    assert "configuration OK" in result.output


def test_cli_bool_and_kv_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, {})
    args = ["--config-file", path, "--iptables=false", "-D", "--log-opt", "max-size=1m", "--log-opt", "max-file=2",
            "--storage-opt", "a=b", "--default-address-pool", "base=10.20.0.0/16,size=24", "--label", "x=y"]
    result, seen = run_validate(monkeypatch, args)
    assert result.exception is None, result.output
    cfg = seen["config"]
    assert cfg.iptables is False and cfg.debug is True
    assert cfg.log_opts == {"max-size": "1m", "max-file": "2"}
    assert cfg.storage_opts == {"a": "b"}
    assert cfg.default_address_pools == ({"base": "10.20.0.0/16", "size": 24},)
    assert cfg.labels == ("x=y",)


def test_cli_conflict_names_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, {"storage-driver": "vfs"})
    result, _ = run_validate(monkeypatch, ["--config-file", path, "--storage-driver", "overlay2"])
    assert isinstance(result.exception, ConfigError)
    assert "storage-driver: (from flag: overlay2, from file: vfs)" in str(result.exception)


def test_cli_bad_log_opt_shape(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result, _ = run_validate(monkeypatch, ["--config-file", write(tmp_path, {}), "--log-opt", "max-size"])
    assert isinstance(result.exception, ConfigError)
    assert 'invalid --log-opt "max-size": expected key=value' == str(result.exception)


def test_cli_missing_explicit_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result, _ = run_validate(monkeypatch, ["--config-file", str(tmp_path / "nope.json")])
    assert isinstance(result.exception, ConfigError) and "nope.json" in str(result.exception)
