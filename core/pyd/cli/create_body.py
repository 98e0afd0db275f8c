"""Turn ``pyd create``/``pyd run`` flags into the Docker create body (``Config`` + ``HostConfig``).

Pure and cheap to import (no click, no client), so it is unit-tested directly. Value formats
are the docker CLI's: sizes like ``32m``, ``--cpus 1.5``, ``--tmpfs /run:size=64k``,
``--restart on-failure:3``, ``-e KEY`` taking the value from the CLI's own environment.
Only fields that were set are sent (as the docker SDK does); the daemon fills the defaults.
"""

from __future__ import annotations

import os
from pyd.cli.mount_flags import mount_fields, split_volumes
from pyd.errors import InvalidParameter

TYPE_CHECKING = False  # typing itself costs ~5 ms of every CLI invocation
if TYPE_CHECKING:
    from typing import Any, Mapping, Sequence

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def parse_bytes(value: str, flag: str) -> int:
    """Docker's RAMInBytes: ``32m`` -> 33554432 (binary units, optional ``b``)."""
    v = value.strip().lower()
    if v.endswith("ib"):
        v = v[:-2]
    elif v.endswith("b") and len(v) > 1 and not v[-2].isdigit():
        v = v[:-1]
    num, unit = v, ""
    if v and v[-1] in _UNITS and not v[-1].isdigit():
        num, unit = v[:-1], v[-1]
    try:
        n = float(num)
    except ValueError:
        raise InvalidParameter(f'invalid argument "{value}" for "{flag}" flag: invalid size: \'{value}\'') from None
    if n < 0:
        raise InvalidParameter(f'invalid argument "{value}" for "{flag}" flag: invalid size: \'{value}\'')
    return int(n * _UNITS[unit])


def parse_env_item(item: str, environ: Mapping[str, str]) -> str:
    """``KEY=VAL`` as is; ``KEY`` alone takes the value from ``environ`` (or stays ``KEY``)."""
    if "=" in item:
        if item.startswith("="):
            raise InvalidParameter(f'invalid argument "{item}" for "-e, --env" flag: invalid environment variable: {item}')
        return item
    if item in environ:
        return f"{item}={environ[item]}"
    return item


def read_env_file(path: str, environ: Mapping[str, str]) -> list[str]:
    """Docker's env-file: ``KEY=VAL`` or ``KEY`` per line; ``#`` comments and blank lines skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise InvalidParameter(f"open {path}: {exc.strerror}") from None
    out = []
    for line in lines:
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        out.append(parse_env_item(line, environ))
    return out


def parse_kv_list(items: Sequence[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise InvalidParameter(f'invalid argument "{item}" for "{flag}" flag: expected key=value')
        out[key] = value if sep else ""
    return out


def parse_restart(value: str) -> dict[str, Any]:
    name, _, count = value.partition(":")
    policy: dict[str, Any] = {"Name": name or "no", "MaximumRetryCount": 0}
    if count:
        if not count.isdigit():
            raise InvalidParameter(f"invalid restart policy format: maximum retry count must be an integer: {count}")
        policy["MaximumRetryCount"] = int(count)
    return policy


def parse_cpus(value: str) -> int:
    try:
        n = float(value)
    except ValueError:
        raise InvalidParameter(f'invalid argument "{value}" for "--cpus" flag: failed to parse {value} as a rational number') from None
    return int(round(n * 1e9))


def parse_tmpfs(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        dest, _, opts = item.partition(":")
        out[dest] = opts
    return out


def parse_ulimit(item: str) -> dict[str, Any]:
    name, sep, limits = item.partition("=")
    if not sep:
        raise InvalidParameter(f'invalid argument "{item}" for "--ulimit" flag: invalid ulimit argument: {item}')
    soft, _, hard = limits.partition(":")
    try:
        s = int(soft)
        h = int(hard) if hard else s
    except ValueError:
        raise InvalidParameter(f'invalid argument "{item}" for "--ulimit" flag: invalid ulimit value') from None
    return {"Name": name, "Soft": s, "Hard": h}


class RunOptions:
    """What ``pyd create``/``pyd run`` were given (click fills it).

    A plain class, not a dataclass: generating a 60-field dataclass costs ~10 ms at import,
    and this module is on the path of every ``pyd run``.
    """

    _LISTS = (
        "command",
        "env",
        "env_file",
        "labels",
        "cap_add",
        "cap_drop",
        "security_opt",
        "tmpfs",
        "log_opt",
        "dns",
        "dns_search",
        "dns_option",
        "add_host",
        "group_add",
        "volumes",
        "mounts",
        "volumes_from",
        "ulimits",
        "sysctls",
        "publish",
        "expose",
        "attach",
        "network_alias",
        "link",
    )
    _DEFAULTS: dict[str, Any] = {
        "name": "",
        "detach": False,
        "interactive": False,
        "tty": False,
        "rm": False,
        "workdir": "",
        "user": "",
        "hostname": "",
        "domainname": "",
        "entrypoint": None,
        "restart": "",
        "stop_signal": "",
        "stop_timeout": None,
        "network": "",
        "ip": "",
        "publish_all": False,
        "memory": "",
        "memory_swap": "",
        "cpus": "",
        "cpu_shares": 0,
        "cpu_quota": 0,
        "cpu_period": 0,
        "pids_limit": None,
        "privileged": False,
        "read_only": False,
        "log_driver": "",
        "volume_driver": "",
        "init": None,
        "shm_size": "",
        "oom_score_adj": 0,
        "ipc": "",
        "pid": "",
        "uts": "",
        "cgroupns": "",
        "console_size": (0, 0),
    }

    def __init__(self, image: str, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self._DEFAULTS) - set(self._LISTS)
        if unknown:
            raise TypeError(f"unknown run options: {', '.join(sorted(unknown))}")
        self.image = image
        for key, value in self._DEFAULTS.items():
            setattr(self, key, kwargs.get(key, value))
        for key in self._LISTS:
            setattr(self, key, list(kwargs.get(key) or []))


def build_create_body(o: RunOptions, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    env: list[str] = []
    for path in o.env_file:
        env.extend(read_env_file(path, environ))
    env.extend(parse_env_item(e, environ) for e in o.env)

    attach = {s.lower() for s in o.attach}
    for s in attach:
        if s not in ("stdin", "stdout", "stderr"):
            raise InvalidParameter(f"invalid argument \"{s}\" for \"-a, --attach\" flag: valid streams are STDIN, STDOUT and STDERR")
    if o.detach:
        if attach:
            raise InvalidParameter("Conflicting options: -a and -d")
        a_in = a_out = a_err = False
    elif attach:
        a_in, a_out, a_err = "stdin" in attach, "stdout" in attach, "stderr" in attach
    else:
        a_in, a_out, a_err = o.interactive, True, True

    body: dict[str, Any] = {
        "Image": o.image,
        "AttachStdin": a_in,
        "AttachStdout": a_out,
        "AttachStderr": a_err,
        "Tty": o.tty,
        "OpenStdin": o.interactive,
        "StdinOnce": o.interactive and not o.detach,
    }
    if o.command:
        body["Cmd"] = list(o.command)
    if env:
        body["Env"] = env
    for key, value in (("WorkingDir", o.workdir), ("User", o.user), ("Hostname", o.hostname),
                       ("Domainname", o.domainname), ("StopSignal", o.stop_signal)):
        if value:
            body[key] = value
    if o.entrypoint is not None:
        body["Entrypoint"] = [o.entrypoint] if o.entrypoint else [""]
    if o.labels:
        body["Labels"] = parse_kv_list(o.labels, "--label")
    if o.stop_timeout is not None:
        body["StopTimeout"] = o.stop_timeout
    ports: dict[str, dict[str, Any]] = {}
    for e in o.expose:
        ports[e if "/" in e else f"{e}/tcp"] = {}

    hc: dict[str, Any] = {}
    if o.rm:
        hc["AutoRemove"] = True
    if o.network:
        hc["NetworkMode"] = o.network
    if o.restart:
        hc["RestartPolicy"] = parse_restart(o.restart)
    if o.memory:
        hc["Memory"] = parse_bytes(o.memory, "-m, --memory")
    if o.memory_swap:
        hc["MemorySwap"] = -1 if o.memory_swap == "-1" else parse_bytes(o.memory_swap, "--memory-swap")
    if o.cpus:
        hc["NanoCpus"] = parse_cpus(o.cpus)
    for key, value in (("CpuShares", o.cpu_shares), ("CpuQuota", o.cpu_quota), ("CpuPeriod", o.cpu_period),
                       ("OomScoreAdj", o.oom_score_adj)):
        if value:
            hc[key] = value
    if o.pids_limit is not None:
        hc["PidsLimit"] = o.pids_limit
    if o.cap_add:
        hc["CapAdd"] = list(o.cap_add)
    if o.cap_drop:
        hc["CapDrop"] = list(o.cap_drop)
    if o.privileged:
        hc["Privileged"] = True
    if o.security_opt:
        hc["SecurityOpt"] = list(o.security_opt)
    if o.read_only:
        hc["ReadonlyRootfs"] = True
    if o.tmpfs:
        hc["Tmpfs"] = parse_tmpfs(o.tmpfs)
    if o.log_driver or o.log_opt:
        hc["LogConfig"] = {"Type": o.log_driver, "Config": parse_kv_list(o.log_opt, "--log-opt")}
    if o.init is not None:
        hc["Init"] = o.init
    for key, values in (("Dns", o.dns), ("DnsSearch", o.dns_search), ("DnsOptions", o.dns_option),
                        ("ExtraHosts", o.add_host), ("GroupAdd", o.group_add)):
        if values:
            hc[key] = list(values)
    # -v, --mount, --volumes-from, --volume-driver (pyd.cli.mount_flags)
    binds, anonymous = split_volumes(o.volumes)
    if binds:
        hc["Binds"] = binds
    if anonymous:
        body["Volumes"] = anonymous
    hc.update(mount_fields(o.mounts, o.volumes_from, o.volume_driver))
    if o.ulimits:
        hc["Ulimits"] = [parse_ulimit(u) for u in o.ulimits]
    if o.sysctls:
        hc["Sysctls"] = parse_kv_list(o.sysctls, "--sysctl")
    if o.shm_size:
        hc["ShmSize"] = parse_bytes(o.shm_size, "--shm-size")
    for key, value in (("IpcMode", o.ipc), ("PidMode", o.pid), ("UTSMode", o.uts), ("CgroupnsMode", o.cgroupns)):
        if value:
            hc[key] = value
    if o.publish:
        bindings: dict[str, list[dict[str, str]]] = {}
        for p in o.publish:
            port_key, binding = _parse_publish(p)
            ports[port_key] = {}
            bindings.setdefault(port_key, []).append(binding)
        hc["PortBindings"] = bindings
    if o.publish_all:
        hc["PublishAllPorts"] = True
    if o.link:
        hc["Links"] = list(o.link)
    if o.network_alias or o.ip:
        # docker puts them in the endpoint config of the network named by --network
        ep: dict[str, Any] = {}
        if o.network_alias:
            ep["Aliases"] = list(o.network_alias)
        if o.ip:
            ep["IPAMConfig"] = {"IPv4Address": o.ip}
        body["NetworkingConfig"] = {"EndpointsConfig": {o.network or "default": ep}}
    if ports:
        body["ExposedPorts"] = ports
    if o.tty and o.console_size != (0, 0):
        hc["ConsoleSize"] = list(o.console_size)
    body["HostConfig"] = hc
    return body


def _parse_publish(spec: str) -> tuple[str, dict[str, str]]:
    """``[ip:][hostPort:]containerPort[/proto]``."""
    proto = "tcp"
    if "/" in spec:
        spec, proto = spec.rsplit("/", 1)
    parts = spec.rsplit(":", 2)
    ip, host_port = "", ""
    if len(parts) == 3:
        ip, host_port, ctr = parts
    elif len(parts) == 2:
        host_port, ctr = parts
    else:
        ctr = parts[0]
    if not ctr.isdigit():
        raise InvalidParameter(f"invalid containerPort: {ctr}")
    return f"{ctr}/{proto}", {"HostIp": ip, "HostPort": host_port}
