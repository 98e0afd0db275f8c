"""Translate a Docker create body (``Config`` + ``HostConfig``) into pyd's stored container config.

The docker CLI sends every field, with "unset" values (``""``, ``null``, ``0``, ``-1``); the
docker SDK sends only what was set. Both must come out the same: these functions fill Docker's
defaults, merge the image's config the way moby's ``merge`` does, and validate every value with
Docker's messages. Pure functions (no I/O), so they are unit-tested directly.
"""

from __future__ import annotations

import os
import posixpath
import re
import signal as _signal
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from pyd.engine.container_defaults import (
    ALL_CAPABILITIES,
    CONFIG_OPTIONAL,
    DEFAULT_SHM_SIZE,
    HOST_CONFIG_OPTIONAL,
    MIN_MEMORY,
    config_template,
    host_config_template,
)
from pyd.errors import InvalidParameter

RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
CORE_SECURITY_OPT_KEYS = ("no-new-privileges", "label")
LOG_CORE_KEYS = ("mode", "max-buffer-size")


def _str_list(value: Any, what: str) -> list[str] | None:
    """Go's StrSlice: null, a string, or a list of strings."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidParameter(f"invalid {what}: expected a list of strings, got {value!r}")


def _int(value: Any, what: str, default: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameter(f"invalid {what}: expected an integer, got {value!r}")
    return int(value)


def _dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidParameter(f"invalid {what}: expected an object, got {value!r}")
    return dict(value)


# -- environment ----------------------------------------------------------------------------


def replace_or_append_env(base: Iterable[str], overrides: Iterable[str]) -> list[str]:
    """Docker's ReplaceOrAppendEnvValues: an override replaces the same key; ``KEY`` alone
    (without ``=``) removes it."""
    out = list(base)
    index = {e.partition("=")[0]: i for i, e in enumerate(out)}
    removed: set[str] = set()
    for e in overrides:
        key, eq, _ = e.partition("=")
        if not eq:
            removed.add(key)
            continue
        removed.discard(key)
        if key in index:
            out[index[key]] = e
        else:
            index[key] = len(out)
            out.append(e)
    return [e for e in out if e.partition("=")[0] not in removed]


# -- Config --------------------------------------------------------------------------------


def normalize_config(body: Mapping[str, Any], image_config: Mapping[str, Any], image_ref: str) -> dict[str, Any]:
    """The stored ``Config``: the request's fields over Docker's template, merged with the image."""
    cfg = config_template()
    for key in list(cfg) + list(CONFIG_OPTIONAL):
        if key in body and body[key] is not None:
            cfg[key] = body[key]
    for key in ("Hostname", "Domainname", "User", "WorkingDir", "StopSignal"):
        if key in cfg and not isinstance(cfg[key], str):
            raise InvalidParameter(f"invalid {key}: expected a string, got {cfg[key]!r}")
    for key in ("AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin", "StdinOnce"):
        cfg[key] = bool(cfg[key])
    cfg["Image"] = image_ref
    cfg["Cmd"] = _str_list(body.get("Cmd"), "Cmd")
    cfg["Entrypoint"] = _str_list(body.get("Entrypoint"), "Entrypoint")
    if cfg["Entrypoint"] == [""]:  # `--entrypoint ""`: explicitly no entrypoint
        cfg["Entrypoint"] = []
    env = _str_list(body.get("Env"), "Env") or []
    cfg["Labels"] = {str(k): str(v) for k, v in _dict(body.get("Labels"), "Labels").items()}
    if cfg.get("WorkingDir") and not posixpath.isabs(cfg["WorkingDir"]):
        raise InvalidParameter(
            f"the working directory '{cfg['WorkingDir']}' is invalid, it needs to be an absolute path"
        )
    if "StopTimeout" in cfg and cfg["StopTimeout"] is not None:
        cfg["StopTimeout"] = _int(cfg["StopTimeout"], "StopTimeout")
    if cfg.get("StopSignal"):
        parse_signal(cfg["StopSignal"])

    # moby's merge(userConf, imageConf)
    img = image_config or {}
    if not cfg["User"]:
        cfg["User"] = img.get("User") or ""
    img_env = list(img.get("Env") or [])
    merged_env = replace_or_append_env(img_env, env) if img_env else env
    cfg["Env"] = merged_env or None
    labels = dict(img.get("Labels") or {})
    labels.update(cfg["Labels"])
    cfg["Labels"] = labels
    if not cfg["Entrypoint"]:
        if not cfg["Cmd"]:
            cfg["Cmd"] = list(img.get("Cmd") or []) or None
        if cfg["Entrypoint"] is None:
            cfg["Entrypoint"] = list(img.get("Entrypoint") or []) or None
    if not cfg["WorkingDir"]:
        cfg["WorkingDir"] = img.get("WorkingDir") or ""
    if not cfg.get("StopSignal") and img.get("StopSignal"):
        cfg["StopSignal"] = img["StopSignal"]
    ports = dict(img.get("ExposedPorts") or {})
    ports.update(_dict(body.get("ExposedPorts"), "ExposedPorts"))
    if ports:
        cfg["ExposedPorts"] = ports
    else:
        cfg.pop("ExposedPorts", None)
    vols = dict(img.get("Volumes") or {})
    vols.update(_dict(body.get("Volumes"), "Volumes"))
    cfg["Volumes"] = vols or None
    for key in CONFIG_OPTIONAL:
        if key in cfg and cfg[key] in (None, "", {}, []):
            del cfg[key]
    if not command_of(cfg):
        raise InvalidParameter("No command specified")
    return cfg


def command_of(cfg: Mapping[str, Any]) -> list[str]:
    """Entrypoint + Cmd: the argv of the container's first process."""
    return list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])


# -- signals --------------------------------------------------------------------------------


def parse_signal(value: str | int) -> int:
    """``"SIGTERM"``, ``"TERM"``, ``"term"`` or ``"15"`` -> 15; Docker's error otherwise."""
    s = str(value).strip()
    if s.isdigit():
        num = int(s)
        if 0 < num < 65:
            return num
        raise InvalidParameter(f"Invalid signal: {value}")
    name = s.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    m = re.match(r"^SIGRTMIN(\+\d+)?$|^SIGRTMAX(-\d+)?$", name)
    if m:
        base = _signal.SIGRTMIN if name.startswith("SIGRTMIN") else _signal.SIGRTMAX
        off = int((m.group(1) or m.group(2) or "0"))
        return int(base) + off
    sig = getattr(_signal.Signals, name, None) if name in _signal.Signals.__members__ else None
    if sig is None:
        raise InvalidParameter(f"Invalid signal: {value}")
    return int(sig)


# -- capabilities ---------------------------------------------------------------------------


def _norm_cap(cap: str) -> str:
    c = cap.strip().upper()
    if c.startswith("CAP_"):
        c = c[4:]
    if c != "ALL" and c not in ALL_CAPABILITIES:
        raise InvalidParameter(f'unknown capability: "{cap}"')
    return c


def tweak_capabilities(base: Iterable[str], add: Iterable[str] | None, drop: Iterable[str] | None) -> list[str]:
    """Docker's TweakCapabilities: start from ``base`` (or nothing when ``drop`` has ALL, or
    everything when ``add`` has ALL), add ``add``, remove ``drop``; names without ``CAP_``."""
    add_n = [_norm_cap(c) for c in add or []]
    drop_n = [_norm_cap(c) for c in drop or []]
    if "ALL" in add_n:
        caps = list(ALL_CAPABILITIES)
    elif "ALL" in drop_n:
        caps = []
    else:
        caps = list(base)
    for c in add_n:
        if c != "ALL" and c not in caps:
            caps.append(c)
    if "ALL" not in drop_n:
        caps = [c for c in caps if c not in drop_n]
    return caps


# -- security options -----------------------------------------------------------------------


@dataclass
class SecurityOpts:
    no_new_privileges: bool = False
    label_disabled: bool = False
    # key -> value for options owned by plugins, e.g. {"seccomp": "unconfined"}
    plugin_opts: dict[str, str] = field(default_factory=dict)


def parse_security_opts(opts: Iterable[str] | None, plugin_keys: Iterable[str]) -> SecurityOpts:
    """Split ``--security-opt`` values; a key neither the core nor a plugin owns is an error."""
    plugin_keys = list(plugin_keys)
    valid = ", ".join(sorted(set(CORE_SECURITY_OPT_KEYS) | set(plugin_keys)))
    out = SecurityOpts()
    for opt in opts or []:
        if not isinstance(opt, str):
            raise InvalidParameter(f"invalid --security-opt {opt!r}: expected a string")
        if opt == "no-new-privileges":
            out.no_new_privileges = True
            continue
        m = re.match(r"^([^=:]+)[=:](.*)$", opt)
        if not m:
            raise InvalidParameter(f'invalid --security-opt "{opt}": expected KEY=VALUE; valid keys: {valid}')
        key, value = m.group(1), m.group(2)
        if key == "no-new-privileges":
            if value.lower() not in ("true", "false", "1", "0"):
                raise InvalidParameter(
                    f'invalid --security-opt "{opt}": no-new-privileges takes true or false'
                )
            out.no_new_privileges = value.lower() in ("true", "1")
        elif key == "label":
            out.label_disabled = out.label_disabled or value == "disable"
        elif key in plugin_keys:
            out.plugin_opts[key] = value
        else:
            raise InvalidParameter(f'invalid --security-opt "{opt}": unknown key "{key}"; valid keys: {valid}')
    return out


# -- restart policy -------------------------------------------------------------------------


def parse_restart_policy(value: str) -> dict[str, Any]:
    """CLI form ``on-failure:3`` -> ``{"Name": "on-failure", "MaximumRetryCount": 3}``."""
    name, _, count = value.partition(":")
    policy = {"Name": name or "no", "MaximumRetryCount": 0}
    if count:
        if not count.isdigit():
            raise InvalidParameter(f"maximum retry count must be an integer: {count}")
        policy["MaximumRetryCount"] = int(count)
    validate_restart_policy(policy)
    return policy


def validate_restart_policy(policy: Mapping[str, Any]) -> None:
    name = policy.get("Name") or "no"
    count = _int(policy.get("MaximumRetryCount"), "RestartPolicy.MaximumRetryCount")
    if name not in RESTART_POLICIES:
        raise InvalidParameter(f"invalid restart policy '{name}'; valid policies: {', '.join(RESTART_POLICIES)}")
    if count < 0:
        raise InvalidParameter("maximum retry count cannot be negative")
    if count and name != "on-failure":
        raise InvalidParameter(f"maximum retry count cannot be used with restart policy '{name}'")


# -- HostConfig -----------------------------------------------------------------------------


@dataclass
class HostConfigResult:
    host_config: dict[str, Any]
    warnings: list[str]
    security: SecurityOpts
    log_driver: str
    log_opts: dict[str, str]  # without the core's keys
    log_mode: str  # "blocking" | "non-blocking"
    log_max_buffer: int  # bytes, for non-blocking


def _namespace_mode(hc: dict[str, Any], key: str, allowed: tuple[str, ...], default: str) -> None:
    value = hc.get(key) or default
    if value not in allowed and not (value.startswith("container:") and "container:" in allowed):
        raise InvalidParameter(
            f"invalid {key} {value!r}: pyd supports {', '.join(a if a else repr(a) for a in allowed)}"
        )
    hc[key] = value


def normalize_host_config(
    raw: Mapping[str, Any] | None,
    *,
    ncpu: int,
    default_log_driver: str,
    default_log_opts: Mapping[str, str] | None = None,
    plugin_security_keys: Iterable[str] = (),
    runtime: str = "",
) -> HostConfigResult:
    """The stored ``HostConfig`` with Docker's defaults, after validating every field pyd uses."""
    from pyd.drivers.options import parse_size

    raw = dict(raw or {})
    hc = host_config_template()
    for key in list(hc) + list(HOST_CONFIG_OPTIONAL):
        if key in raw and raw[key] is not None:
            # the CLI's [] and the SDK's absent key mean the same: keep Docker's default
            if raw[key] in ([], {}) and hc.get(key) is None:
                continue
            hc[key] = raw[key]
    warnings: list[str] = []

    # network
    mode = hc.get("NetworkMode") or "default"
    hc["NetworkMode"] = mode
    # any other mode names a network: the network service checks it exists (NotFound)
    if mode.startswith("container:") and not mode[len("container:"):]:
        raise InvalidParameter("invalid NetworkMode 'container:': a container name or ID is required")
    if hc.get("PortBindings") and mode in ("none", "host") or (mode.startswith("container:") and hc.get("PortBindings")):
        if mode == "host":
            warnings.append("Published ports are discarded when using host network mode")
            hc["PortBindings"] = {}
        else:
            raise InvalidParameter("conflicting options: port publishing and the container type network mode")
    _namespace_mode(hc, "IpcMode", ("private", "shareable", "host"), "private")
    _namespace_mode(hc, "PidMode", ("", "host"), "")
    _namespace_mode(hc, "UTSMode", ("", "host"), "")
    _namespace_mode(hc, "UsernsMode", ("", "host"), "")
    _namespace_mode(hc, "CgroupnsMode", ("private", "host"), "private")

    # restart / auto-remove
    policy = _dict(hc.get("RestartPolicy"), "RestartPolicy")
    policy = {"Name": policy.get("Name") or "no", "MaximumRetryCount": _int(policy.get("MaximumRetryCount"), "MaximumRetryCount")}
    validate_restart_policy(policy)
    hc["RestartPolicy"] = policy
    hc["AutoRemove"] = bool(hc.get("AutoRemove"))
    if hc["AutoRemove"] and policy["Name"] != "no":
        raise InvalidParameter("can't create 'AutoRemove' container with restart policy")

    # resources
    mem = _int(hc.get("Memory"), "Memory")
    swap = _int(hc.get("MemorySwap"), "MemorySwap")
    if mem < 0:
        raise InvalidParameter("invalid Memory: must not be negative")
    if 0 < mem < MIN_MEMORY:
        raise InvalidParameter("Minimum memory limit allowed is 6MB")
    if swap > 0 and mem == 0:
        raise InvalidParameter("You should always set the Memory limit when using Memoryswap limit, see usage")
    if mem > 0 and swap > 0 and swap < mem:
        raise InvalidParameter("Minimum memoryswap limit should be larger than memory limit, see usage")
    if mem > 0 and swap == 0:
        swap = 2 * mem  # Docker's default: as much swap as memory
    hc["Memory"], hc["MemorySwap"] = mem, swap
    swappiness = hc.get("MemorySwappiness")
    if swappiness is not None:
        swappiness = _int(swappiness, "MemorySwappiness")
        if swappiness == -1:
            swappiness = None
        elif not 0 <= swappiness <= 100:
            raise InvalidParameter(f"Invalid value: {swappiness}, valid memory swappiness range is 0-100")
    hc["MemorySwappiness"] = swappiness
    nano = _int(hc.get("NanoCpus"), "NanoCpus")
    quota = _int(hc.get("CpuQuota"), "CpuQuota")
    period = _int(hc.get("CpuPeriod"), "CpuPeriod")
    if nano and (quota or period):
        raise InvalidParameter("Conflicting options: Nano CPUs and CPU Period cannot both be set")
    if nano < 0 or nano > ncpu * 10**9 or 0 < nano < 10**7:
        raise InvalidParameter(
            f"Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"
        )
    if period and not 1000 <= period <= 1000000:
        raise InvalidParameter("CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)")
    if quota and quota > 0 and quota < 1000:
        raise InvalidParameter("CPU cfs quota can not be less than 1ms (i.e. 1000)")
    hc["NanoCpus"], hc["CpuQuota"], hc["CpuPeriod"] = nano, quota, period
    shares = _int(hc.get("CpuShares"), "CpuShares")
    if shares < 0:
        raise InvalidParameter("invalid CpuShares: must not be negative")
    hc["CpuShares"] = shares
    pids = hc.get("PidsLimit")
    pids = _int(pids, "PidsLimit") if pids is not None else None
    hc["PidsLimit"] = pids if pids is not None and pids > 0 else None
    shm = _int(hc.get("ShmSize"), "ShmSize")
    if shm < 0:
        raise InvalidParameter("SHM size can not be less than 0")
    hc["ShmSize"] = shm or DEFAULT_SHM_SIZE
    oom = _int(hc.get("OomScoreAdj"), "OomScoreAdj")
    if not -1000 <= oom <= 1000:
        raise InvalidParameter(f"Invalid value {oom}, range for oom score adj is [-1000, 1000]")
    hc["OomScoreAdj"] = oom
    for key in ("BlkioWeight", "CpuRealtimePeriod", "CpuRealtimeRuntime", "CpuCount", "CpuPercent",
                "IOMaximumIOps", "IOMaximumBandwidth", "KernelMemory", "KernelMemoryTCP", "MemoryReservation"):
        hc[key] = _int(hc.get(key), key)
    if hc.get("Devices"):
        raise InvalidParameter("--device is not supported by pyd yet")
    if hc.get("DeviceRequests"):
        raise InvalidParameter("--gpus is not supported by pyd")

    # capabilities and security
    hc["Privileged"] = bool(hc.get("Privileged"))
    hc["ReadonlyRootfs"] = bool(hc.get("ReadonlyRootfs"))
    cap_add = _str_list(hc.get("CapAdd"), "CapAdd")
    cap_drop = _str_list(hc.get("CapDrop"), "CapDrop")
    tweak_capabilities([], cap_add, cap_drop)  # validates names
    hc["CapAdd"], hc["CapDrop"] = cap_add or None, cap_drop or None
    sec = _str_list(hc.get("SecurityOpt"), "SecurityOpt")
    security = parse_security_opts(sec, plugin_security_keys)
    hc["SecurityOpt"] = sec or None
    for key in ("MaskedPaths", "ReadonlyPaths"):
        paths = _str_list(hc.get(key), key)
        hc[key] = paths
    hc["GroupAdd"] = _str_list(hc.get("GroupAdd"), "GroupAdd") or None

    # tmpfs, binds
    tmpfs = _dict(hc.get("Tmpfs"), "Tmpfs")
    for dest, opts in tmpfs.items():
        if not posixpath.isabs(dest):
            raise InvalidParameter(
                f"invalid mount config for type \"tmpfs\": invalid mount path: '{dest}' mount path must be absolute"
            )
        if not isinstance(opts, str):
            raise InvalidParameter(f"invalid Tmpfs options for {dest}: expected a string")
        if posixpath.normpath(dest) == "/":
            raise InvalidParameter("invalid mount config for type \"tmpfs\": destination can't be '/'")
    if tmpfs:
        hc["Tmpfs"] = tmpfs
    else:
        hc.pop("Tmpfs", None)
    # Binds, Mounts, VolumesFrom: checked here, planned at create (pyd.engine.container_mounts)
    from pyd.engine.container_mounts import parse_bind_spec, parse_mount, parse_volumes_from

    binds = _str_list(hc.get("Binds"), "Binds")
    for b in binds or []:
        parse_bind_spec(b)
    hc["Binds"] = binds or None
    if not isinstance(hc.get("VolumeDriver") or "", str):
        raise InvalidParameter(f"invalid VolumeDriver: expected a string, got {hc['VolumeDriver']!r}")
    hc["VolumeDriver"] = hc.get("VolumeDriver") or ""
    mounts = hc.get("Mounts")
    if mounts is not None and not isinstance(mounts, list):
        raise InvalidParameter(f"invalid Mounts: expected a list, got {mounts!r}")
    for m in mounts or []:
        parse_mount(m)
    if not mounts:
        hc.pop("Mounts", None)
    volumes_from = _str_list(hc.get("VolumesFrom"), "VolumesFrom")
    for v in volumes_from or []:
        parse_volumes_from(v)
    hc["VolumesFrom"] = volumes_from or None
    if hc.get("Init") is not None:
        hc["Init"] = bool(hc["Init"])
    else:
        hc.pop("Init", None)
    for key in ("Dns", "DnsOptions", "DnsSearch"):
        hc[key] = _str_list(hc.get(key), key) or []
    hc["ExtraHosts"] = _str_list(hc.get("ExtraHosts"), "ExtraHosts") or None
    for h in hc["ExtraHosts"] or []:
        host, sep, ip = h.partition(":")
        if not sep or not host or not ip:
            raise InvalidParameter(f"invalid argument \"{h}\" for \"--add-host\" flag: bad format for add-host: \"{h}\"")
    ulimits = hc.get("Ulimits") or None
    for u in ulimits or []:
        if not isinstance(u, dict) or not u.get("Name"):
            raise InvalidParameter(f"invalid Ulimits entry {u!r}: expected {{Name, Soft, Hard}}")
    hc["Ulimits"] = ulimits
    cs = hc.get("ConsoleSize") or [0, 0]
    hc["ConsoleSize"] = [_int(cs[0], "ConsoleSize"), _int(cs[1], "ConsoleSize")] if len(cs) == 2 else [0, 0]
    if runtime:
        hc["Runtime"] = runtime

    # logging: the core owns mode and max-buffer-size; the rest goes to the driver
    lc = _dict(hc.get("LogConfig"), "LogConfig")
    ltype = lc.get("Type") or default_log_driver
    lopts = {str(k): str(v) for k, v in _dict(lc.get("Config"), "LogConfig.Config").items()}
    if not lc.get("Type") and not lopts:
        lopts = dict(default_log_opts or {})
    hc["LogConfig"] = {"Type": ltype, "Config": dict(lopts)}
    mode = lopts.pop("mode", "blocking") or "blocking"
    if mode not in ("blocking", "non-blocking"):
        raise InvalidParameter(
            f'invalid --log-opt for log driver "{ltype}": mode="{mode}" must be blocking or non-blocking'
        )
    max_buf = 1024 * 1024
    if "max-buffer-size" in lopts:
        raw_size = lopts.pop("max-buffer-size")
        if mode != "non-blocking":
            raise InvalidParameter(
                f'invalid --log-opt for log driver "{ltype}": max-buffer-size is only valid with mode=non-blocking'
            )
        try:
            max_buf = parse_size(raw_size)
        except ValueError as exc:
            raise InvalidParameter(
                f'invalid --log-opt for log driver "{ltype}": max-buffer-size="{raw_size}" {exc}'
            ) from None
    if "Sysctls" in hc and not hc["Sysctls"]:
        del hc["Sysctls"]
    return HostConfigResult(hc, warnings, security, ltype, lopts, mode, max_buf)


@dataclass(frozen=True)
class Bind:
    source: str
    destination: str
    read_only: bool
    propagation: str = "rprivate"


def parse_bind(spec: str) -> Bind:
    """``/host:/ctr[:ro|rw][,...]``; named volumes arrive with the volumes issue."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidParameter(f"invalid volume specification: '{spec}'")
    src, dst = parts[0], parts[1]
    modes = parts[2].split(",") if len(parts) == 3 else []
    if not src.startswith("/"):
        raise InvalidParameter(
            f"invalid volume specification: '{spec}': named volumes are not supported by pyd yet; use an absolute host path"
        )
    if not posixpath.isabs(dst):
        raise InvalidParameter(f"invalid volume specification: '{spec}': mount path must be absolute")
    if posixpath.normpath(dst) == "/":
        raise InvalidParameter(f"invalid volume specification: '{spec}': destination can't be '/'")
    ro = False
    prop = "rprivate"
    for m in modes:
        if m in ("ro", "rw"):
            ro = m == "ro"
        elif m in ("z", "Z", "nocopy", ""):
            continue
        elif m in ("private", "rprivate", "shared", "rshared", "slave", "rslave"):
            prop = m
        else:
            raise InvalidParameter(f"invalid mode: {m}")
    return Bind(os.path.normpath(src), posixpath.normpath(dst), ro, prop)
