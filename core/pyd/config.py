"""Daemon configuration: daemon.json merged with ``pyd daemon`` flags into a ``DaemonConfig``.

Key names are Docker's (``data-root``, ``storage-driver``, ``log-opts``, ...), and the rules are
dockerd's (``daemon/config/config.go``):

* an unknown key in the file is an error naming it;
* a value of the wrong type is an error naming the key and the type expected;
* a directive given both as a flag and in the file is an error naming it, even when both
  values agree;
* flags and file are merged over the defaults; only the ``reloadable`` keys change on SIGHUP.

Driver options (``storage-opts``, ``log-opts``, ``exec-opts``, ``authorization-opts``) are only
shape-checked here; their *keys and values* belong to the driver that owns them and are checked
by it when the daemon resolves its drivers (``pyd.daemon.build_engine``).

Adding a key is one ``_opt(...)`` line in ``OPTIONS`` plus a field in ``DaemonConfig`` (and,
if users should set it from the command line, a click option in ``pyd.cli.daemon``).
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping

from pyd.errors import InvalidParameter

DEFAULT_CONFIG_FILE = "/etc/pyd/daemon.json"
DEFAULT_DATA_ROOT = "/var/lib/pyd"
DEFAULT_EXEC_ROOT = "/run/pyd"
DEFAULT_HOST = "unix:///run/pyd/pyd.sock"
DEFAULT_TLS_PORT = 2376
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


class ConfigError(InvalidParameter):
    """The daemon configuration is invalid (daemon.json or flags); the daemon does not start."""


# -- value checkers --------------------------------------------------------------------------
# Each takes the raw value and returns the normalised one, or raises _TypeMismatch (wrong JSON
# type: "expected ...") or ValueError (right type, bad value: the reason).


class _TypeMismatch(Exception):
    pass


def _typename(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _TypeMismatch("a string")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _TypeMismatch("a boolean (true or false)")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _TypeMismatch("an integer")
    return value


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _TypeMismatch("a list of strings")
    return tuple(value)


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _TypeMismatch('an object of strings (e.g. {"max-size": "10m"})')
    return dict(value)


CLUSTER_STORE_OPTS = ("discovery.heartbeat", "discovery.ttl")


def _cluster_store_opts(value: object) -> dict[str, str]:
    """``cluster-store-opts``: Docker's discovery timings (whole seconds > 0)."""
    opts = _str_map(value)
    for key, val in opts.items():
        if key not in CLUSTER_STORE_OPTS:
            raise ValueError(f'unknown option "{key}"; valid options: {", ".join(CLUSTER_STORE_OPTS)}')
        if not val.isdigit() or int(val) <= 0:
            raise ValueError(f'option "{key}" must be a whole number of seconds > 0, not "{val}"')
    return opts


def _kv_pairs(value: object) -> dict[str, str]:
    """Docker's list of ``key=value`` strings (``storage-opts``, ``exec-opts``) -> dict."""
    items = _strings(value)
    out: dict[str, str] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f'"{item}" is not key=value')
        out[key.strip()] = val
    return out


def _labels(value: object) -> tuple[str, ...]:
    items = _strings(value)
    for item in items:
        if "=" not in item or not item.partition("=")[0]:
            raise ValueError(f'label "{item}" is not key=value')
    return items


def _plugin_opts(value: object) -> dict[str, dict[str, str]]:
    """``authorization-opts`` (a pyd extension): ``{"plugin-name": {"key": "value"}}``."""
    if not isinstance(value, dict) or not all(
        isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) for v in value.values()
    ):
        raise _TypeMismatch('an object of objects of strings (e.g. {"policy": {"file": "/etc/pyd/authz.json"}})')
    return {k: dict(v) for k, v in value.items()}


def _hosts(value: object) -> tuple[str, ...]:
    hosts = _strings(value)
    for h in hosts:
        parse_host(h)  # raises ValueError with the reason
    return hosts


def _log_level(value: object) -> str:
    level = _string(value).lower()
    if level == "warning":
        level = "warn"
    if level not in LOG_LEVELS:
        raise ValueError(f'"{value}" is not a log level; valid levels: {", ".join(LOG_LEVELS)}')
    return level


def _non_negative(value: object) -> int:
    n = _int(value)
    if n < 0:
        raise ValueError(f"{n} must not be negative")
    return n


def _mtu(value: object) -> int:
    n = _int(value)
    if not 68 <= n <= 65535:
        raise ValueError(f"{n} is not an MTU between 68 and 65535")
    return n


def _cidr_or_empty(kind: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        text = _string(value)
        if text:
            try:
                if kind == "interface":
                    ipaddress.ip_interface(text)
                else:
                    ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(f'"{text}" is not a CIDR (e.g. 172.18.0.1/16)') from None
        return text

    return check


def _address_pools(value: object) -> tuple[dict[str, Any], ...]:
    shape = 'a list of {"base": "CIDR", "size": N} objects'
    if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
        raise _TypeMismatch(shape)
    pools = []
    for p in value:
        unknown = set(p) - {"base", "size"}
        if unknown or not isinstance(p.get("base"), str) or isinstance(p.get("size"), bool) or not isinstance(p.get("size"), int):
            raise _TypeMismatch(shape)
        try:
            net = ipaddress.ip_network(p["base"], strict=False)
        except ValueError:
            raise ValueError(f'pool base "{p["base"]}" is not a CIDR') from None
        if not net.prefixlen <= p["size"] <= net.max_prefixlen:
            raise ValueError(
                f'pool size {p["size"]} must be between the base prefix length {net.prefixlen} and {net.max_prefixlen}'
            )
        pools.append({"base": p["base"], "size": p["size"]})
    return tuple(pools)


def parse_host(host: str) -> tuple[str, str, int]:
    """``unix:///path`` -> ("unix", "/path", 0); ``tcp://ADDR[:PORT]`` -> ("tcp", ADDR, PORT).

    Raises ``ValueError`` naming what is accepted.
    """
    proto, sep, rest = host.partition("://")
    if not sep:
        raise ValueError(f'"{host}" is not a host address; use unix:///path or tcp://host:port')
    if proto == "unix":
        if not rest.startswith("/"):
            raise ValueError(f'"{host}": the unix socket path must be absolute')
        if len(rest.encode()) >= 108:
            raise ValueError(f'"{host}": a unix socket path must be shorter than 108 bytes')
        return "unix", rest, 0
    if proto == "tcp":
        addr, port = rest.rstrip("/"), DEFAULT_TLS_PORT
        if addr.startswith("["):  # [::1]:2376
            end = addr.find("]")
            if end < 0:
                raise ValueError(f'"{host}" has an unterminated IPv6 address')
            hostpart, tail = addr[1:end], addr[end + 1 :]
            if tail:
                if not tail.startswith(":"):
                    raise ValueError(f'"{host}" is not tcp://host:port')
                port_text = tail[1:]
            else:
                port_text = ""
        else:
            hostpart, _, port_text = addr.partition(":")
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f'"{host}" has an invalid port "{port_text}"')
            port = int(port_text)
        return "tcp", hostpart or "0.0.0.0", port
    raise ValueError(f'"{host}": unsupported protocol "{proto}"; use unix:// or tcp://')


@dataclass(frozen=True)
class Option:
    """One daemon.json key: its field in ``DaemonConfig``, checker, default and flag."""

    key: str
    check: Callable[[object], Any]
    default: Any
    reloadable: bool = False
    flag: str = ""  # the pyd daemon flag, for messages ("" when there is none)

    @property
    def attr(self) -> str:
        return self.key.replace("-", "_")


def _opt(key: str, check: Callable[[object], Any], default: Any, *, reloadable: bool = False, flag: str | None = None) -> Option:
    return Option(key, check, default, reloadable, f"--{key}" if flag is None else flag)


OPTIONS: tuple[Option, ...] = (
    # paths and sockets
    _opt("data-root", _string, DEFAULT_DATA_ROOT),
    _opt("exec-root", _string, DEFAULT_EXEC_ROOT),
    _opt("hosts", _hosts, (DEFAULT_HOST,), flag="-H/--host"),
    _opt("pidfile", _string, "", flag="-p/--pidfile"),  # "" -> <exec-root>/pyd.pid
    _opt("group", _string, "pyd", flag="-G/--group"),  # group owning unix sockets, if it exists
    # drivers
    _opt("storage-driver", _string, "", flag="-s/--storage-driver"),  # "" -> first that works
    _opt("storage-opts", _kv_pairs, {}, flag="--storage-opt"),
    _opt("log-driver", _string, "json-file"),
    _opt("log-opts", _str_map, {}, flag="--log-opt"),
    _opt("exec-driver", _string, "", flag="--exec-driver"),  # "" -> "native" when installed
    _opt("exec-opts", _kv_pairs, {}, flag="--exec-opt"),
    _opt("authorization-plugins", _strings, (), flag="--authorization-plugin"),
    _opt("authorization-opts", _plugin_opts, {}, flag=""),
    _opt("seccomp-profile", _string, ""),
    # networking
    _opt("bridge", _string, "", flag="-b/--bridge"),
    _opt("bip", _cidr_or_empty("interface"), ""),
    _opt("fixed-cidr", _cidr_or_empty("network"), ""),
    _opt("mtu", _mtu, 1500),
    _opt("iptables", _bool, True),
    _opt("ip-forward", _bool, True),
    _opt("ip-masq", _bool, True),
    _opt("icc", _bool, True),
    _opt("default-address-pools", _address_pools, (), flag="--default-address-pool"),
    _opt("dns", _strings, ()),
    _opt("dns-search", _strings, ()),
    _opt("dns-opts", _strings, (), flag="--dns-opt"),
    _opt("cluster-store", _string, ""),
    _opt("cluster-advertise", _string, ""),
    _opt("cluster-store-opts", _cluster_store_opts, {}, flag="--cluster-store-opt"),
    # registries
    _opt("insecure-registries", _strings, (), reloadable=True, flag="--insecure-registry"),
    _opt("registry-mirrors", _strings, (), reloadable=True, flag="--registry-mirror"),
    # daemon behaviour
    _opt("live-restore", _bool, False, reloadable=True),
    _opt("debug", _bool, False, reloadable=True, flag="-D/--debug"),
    _opt("log-level", _log_level, "info", reloadable=True, flag="-l/--log-level"),
    _opt("labels", _labels, (), reloadable=True, flag="--label"),
    _opt("shutdown-timeout", _non_negative, 15, reloadable=True),
    # TLS for tcp:// hosts
    _opt("tls", _bool, False),
    _opt("tlsverify", _bool, False),
    _opt("tlscacert", _string, ""),
    _opt("tlscert", _string, ""),
    _opt("tlskey", _string, ""),
)
OPTIONS_BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}
RELOADABLE: frozenset[str] = frozenset(o.key for o in OPTIONS if o.reloadable)


@dataclass(frozen=True)
class DaemonConfig:
    """The effective daemon configuration. Field names are the daemon.json keys with ``_``.

    ``config_file`` and ``flags`` record where it came from, so SIGHUP can re-read the file
    under the same rules. ``settings()`` gives the Docker-keyed view plugins receive.
    """

    data_root: str = DEFAULT_DATA_ROOT
    exec_root: str = DEFAULT_EXEC_ROOT
    hosts: tuple[str, ...] = (DEFAULT_HOST,)
    pidfile: str = ""
    group: str = "pyd"
    storage_driver: str = ""
    storage_opts: dict[str, str] = field(default_factory=dict)
    log_driver: str = "json-file"
    log_opts: dict[str, str] = field(default_factory=dict)
    exec_driver: str = ""
    exec_opts: dict[str, str] = field(default_factory=dict)
    authorization_plugins: tuple[str, ...] = ()
    authorization_opts: dict[str, dict[str, str]] = field(default_factory=dict)
    seccomp_profile: str = ""
    bridge: str = ""
    bip: str = ""
    fixed_cidr: str = ""
    mtu: int = 1500
    iptables: bool = True
    ip_forward: bool = True
    ip_masq: bool = True
    icc: bool = True
    default_address_pools: tuple[dict[str, Any], ...] = ()
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_opts: tuple[str, ...] = ()
    cluster_store: str = ""
    cluster_advertise: str = ""
    cluster_store_opts: dict[str, str] = field(default_factory=dict)
    insecure_registries: tuple[str, ...] = ()
    registry_mirrors: tuple[str, ...] = ()
    live_restore: bool = False
    debug: bool = False
    log_level: str = "info"
    labels: tuple[str, ...] = ()
    shutdown_timeout: int = 15
    tls: bool = False
    tlsverify: bool = False
    tlscacert: str = ""
    tlscert: str = ""
    tlskey: str = ""
    # provenance (not daemon.json keys)
    config_file: str | None = None
    flags: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.pidfile:
            object.__setattr__(self, "pidfile", os.path.join(self.exec_root, "pyd.pid"))

    def settings(self) -> dict[str, Any]:
        """Every daemon.json key with its effective value (lists as lists), for plugins
        (``pyd_configure``) and for ``pyd daemon --validate``."""
        out: dict[str, Any] = {}
        for opt in OPTIONS:
            value = getattr(self, opt.attr)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = json.loads(json.dumps(value))  # a deep copy plugins may keep
            out[opt.key] = value
        return out

    def get(self, key: str) -> Any:
        """The value of a daemon.json key, e.g. ``config.get("data-root")``."""
        return getattr(self, OPTIONS_BY_KEY[key].attr)

    @property
    def tls_enabled(self) -> bool:
        return self.tls or self.tlsverify


def parse_kv(flag: str, values: Iterable[str]) -> dict[str, str]:
    """Repeated ``--log-opt key=value`` flags -> ``{"key": "value"}``; a bad item is a ConfigError."""
    out: dict[str, str] = {}
    for item in values:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ConfigError(f'invalid {flag} "{item}": expected key=value')
        out[key] = val
    return out


def _check(key: str, value: object, where: str) -> Any:
    opt = OPTIONS_BY_KEY[key]
    try:
        return opt.check(value)
    except _TypeMismatch as exc:
        raise ConfigError(
            f'invalid type for "{key}" {where}: expected {exc}, got {_typename(value)} ({json.dumps(value)})'
        ) from None
    except ValueError as exc:
        raise ConfigError(f'invalid value for "{key}" {where}: {exc}') from None


def _fmt(value: object) -> str:
    """A value as dockerd prints it in a conflict message (Go's %v)."""
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_fmt(v)}" for k, v in value.items()) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_config_file(path: str) -> dict[str, Any]:
    """Parse daemon.json; a missing or malformed file, or a non-object, is a ConfigError."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"unable to configure the pyd daemon with file {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"unable to configure the pyd daemon with file {path}: {exc.strerror}") from None
    if not raw.strip():
        return {}  # dockerd accepts an empty file
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"unable to configure the pyd daemon with file {path}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"unable to configure the pyd daemon with file {path}: the top level must be a JSON object")
    return data


def _merge(flags: Mapping[str, object], file_values: Mapping[str, object], config_file: str | None) -> dict[str, Any]:
    unknown = sorted(k for k in file_values if k not in OPTIONS_BY_KEY)
    if unknown:
        raise ConfigError(
            "the following directives don't match any configuration option: " + ", ".join(unknown)
        )
    bad_flags = sorted(k for k in flags if k not in OPTIONS_BY_KEY)
    if bad_flags:  # a programming error in the CLI, but say what it is
        raise ConfigError("unknown daemon flags: " + ", ".join(bad_flags))
    conflicts = [
        f"{key}: (from flag: {_fmt(flags[key])}, from file: {_fmt(file_values[key])})"
        for key in OPTIONS_BY_KEY
        if key in flags and key in file_values
    ]
    if conflicts:
        raise ConfigError(
            "the following directives are specified both as a flag and in the configuration file: "
            + ", ".join(conflicts)
        )
    values: dict[str, Any] = {}
    where_file = f"in {config_file}"
    for key, value in file_values.items():
        values[OPTIONS_BY_KEY[key].attr] = _check(key, value, where_file)
    for key, value in flags.items():
        opt = OPTIONS_BY_KEY[key]
        values[opt.attr] = _check(key, value, f"(flag {opt.flag})" if opt.flag else "(flag)")
    return values


def _cross_check(cfg: DaemonConfig) -> None:
    """Rules that involve more than one key."""
    for key in ("data-root", "exec-root"):
        if not os.path.isabs(cfg.get(key)):
            raise ConfigError(f'"{key}" must be an absolute path, got "{cfg.get(key)}"')
    if not cfg.hosts:
        raise ConfigError('"hosts" must name at least one address to listen on')
    if cfg.bridge and cfg.bip:
        raise ConfigError('"bridge" and "bip" cannot be used together (dockerd rejects them too)')
    missing = [k for k in cfg.authorization_opts if k not in cfg.authorization_plugins]
    if missing:
        raise ConfigError(
            "authorization-opts names plugins that are not in authorization-plugins: " + ", ".join(sorted(missing))
        )
    if cfg.tlsverify and not cfg.tlscacert and any(h.startswith("tcp://") for h in cfg.hosts):
        raise ConfigError('"tlsverify" needs "tlscacert" (the CA that signs client certificates)')


def load_config(flags: Mapping[str, object], config_file: str | None) -> DaemonConfig:
    """Merge ``config_file`` (daemon.json; None: no file) with ``flags`` over the defaults.

    ``flags`` holds only the flags the user actually gave, keyed by daemon.json key with
    values in daemon.json shape (``{"hosts": ["unix:///x.sock"], "log-opts": {"max-size":
    "1m"}}``). Raises ``ConfigError`` for an unknown key, a wrong type or value, or a key given
    in both places.
    """
    file_values = read_config_file(config_file) if config_file else {}
    values = _merge(flags, file_values, config_file)
    cfg = DaemonConfig(**values, config_file=config_file, flags=dict(flags))
    _cross_check(cfg)
    return cfg


@dataclass(frozen=True)
class Reload:
    """The result of ``reload_config``: the new configuration and what changed."""

    config: DaemonConfig
    changed: tuple[str, ...]  # reloadable keys whose value changed (now in effect)
    ignored: tuple[str, ...]  # keys that changed in the file but need a restart


def reload_config(current: DaemonConfig) -> Reload:
    """Re-read ``current.config_file`` under the start-up rules (SIGHUP); apply only the
    reloadable keys. A key removed from the file returns to its default (as in dockerd).
    Raises ``ConfigError``; the caller keeps ``current`` then.
    """
    if not current.config_file:
        return Reload(current, (), ())
    fresh = load_config(current.flags, current.config_file)
    updates: dict[str, Any] = {}
    changed, ignored = [], []
    for opt in OPTIONS:
        new, old = getattr(fresh, opt.attr), getattr(current, opt.attr)
        if new == old:
            continue
        if opt.reloadable:
            updates[opt.attr] = new
            changed.append(opt.key)
        else:
            ignored.append(opt.key)
    return Reload(replace(current, **updates), tuple(changed), tuple(ignored))


def config_fields() -> list[str]:
    """The daemon.json keys pyd accepts (for docs and ``--help``)."""
    return [o.key for o in OPTIONS]

