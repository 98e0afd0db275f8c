"""Build the ``ProcessSpec`` the exec driver runs, from a container's stored Config/HostConfig.

Pure: the caller supplies what needs I/O (the mounted rootfs path, the user resolved against the
rootfs, the namespace paths of a container whose network is joined).
"""

from __future__ import annotations

from typing import Any, Mapping

from pyd.engine.container_config import (
    command_of,
    parse_security_opts,
    replace_or_append_env,
    tweak_capabilities,
)
from pyd.engine.container_defaults import (
    ALL_CAPABILITIES,
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH_ENV,
    MASKED_PATHS,
    READONLY_PATHS,
)
from pyd.engine.container_user import ExecUser
from pyd.types import CgroupSpec, MountSpec, ProcessSpec

INIT_PATH = "/sbin/docker-init"
# Docker's tmpfs defaults (moby volume/mounts: noexec, nosuid, nodev unless given).
_TMPFS_DEFAULTS = ("noexec", "nosuid", "nodev")

_RLIMITS = {
    "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
    "rss", "rtprio", "rttime", "sigpending", "stack", "as",
}


def process_env(config: Mapping[str, Any], tty: bool, home: str) -> list[str]:
    """Docker's CreateDaemonEnvironment: PATH, HOSTNAME, TERM under the container's Env; plus
    HOME from /etc/passwd when the Env has none (as runc does)."""
    env = [DEFAULT_PATH_ENV, f"HOSTNAME={config.get('Hostname', '')}"]
    if tty:
        env.append("TERM=xterm")
    env = replace_or_append_env(env, config.get("Env") or [])
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={home or '/'}")
    return env


def tmpfs_mount(dest: str, options: str) -> MountSpec:
    opts = [o for o in options.split(",") if o]
    keys = {o.split("=", 1)[0] for o in opts}
    for default in _TMPFS_DEFAULTS:
        counter = {"noexec": "exec", "nosuid": "suid", "nodev": "dev"}[default]
        if default not in keys and counter not in keys:
            opts.append(default)
    return MountSpec(destination=dest, type="tmpfs", source="tmpfs", options=opts)


def capabilities_for(hc: Mapping[str, Any]) -> list[str]:
    if hc.get("Privileged"):
        return list(ALL_CAPABILITIES)
    return tweak_capabilities(DEFAULT_CAPABILITIES, hc.get("CapAdd"), hc.get("CapDrop"))


def cgroup_for(cid: str, hc: Mapping[str, Any]) -> CgroupSpec:
    parent = (hc.get("CgroupParent") or "pyd").strip("/")
    cg = CgroupSpec(path=f"{parent}/{cid}")
    if hc.get("Memory"):
        cg.memory = int(hc["Memory"])
        swap = int(hc.get("MemorySwap") or 0)
        cg.memory_swap = swap if swap else None
    elif int(hc.get("MemorySwap") or 0) == -1:
        cg.memory_swap = -1
    if hc.get("CpuShares"):
        cg.cpu_shares = int(hc["CpuShares"])
    if hc.get("NanoCpus"):
        cg.cpu_period = 100000
        cg.cpu_quota = int(hc["NanoCpus"]) * 100000 // 10**9
    else:
        if hc.get("CpuQuota"):
            cg.cpu_quota = int(hc["CpuQuota"])
        if hc.get("CpuPeriod"):
            cg.cpu_period = int(hc["CpuPeriod"])
    cg.cpuset_cpus = hc.get("CpusetCpus") or ""
    if hc.get("PidsLimit"):
        cg.pids_limit = int(hc["PidsLimit"])
    return cg


def build_spec(
    *,
    cid: str,
    config: Mapping[str, Any],
    hc: Mapping[str, Any],
    rootfs: str,
    user: ExecUser,
    etc_files: Mapping[str, str],
    plugin_security_keys: list[str],
    net_ns_path: str | None = None,
    init_binary: str = "",
) -> ProcessSpec:
    """The container's first process. ``etc_files`` maps /etc/hostname, /etc/hosts and
    /etc/resolv.conf to host files; ``net_ns_path`` is the netns to join (``container:X``)."""
    tty = bool(config.get("Tty"))
    args = command_of(config)
    if hc.get("Init") and init_binary:
        args = [INIT_PATH, "--"] + args
    privileged = bool(hc.get("Privileged"))
    readonly = bool(hc.get("ReadonlyRootfs"))
    sec = parse_security_opts(hc.get("SecurityOpt"), plugin_security_keys)

    mounts: list[MountSpec] = []
    for dest in ("/etc/resolv.conf", "/etc/hostname", "/etc/hosts"):
        src = etc_files.get(dest)
        if src:
            opts = ["rbind", "rprivate"] + (["ro"] if readonly else [])
            mounts.append(MountSpec(destination=dest, type="bind", source=src, options=opts))
    shm = int(hc.get("ShmSize") or 0)
    if shm and hc.get("IpcMode") != "host":
        mounts.append(
            MountSpec(
                destination="/dev/shm",
                type="tmpfs",
                source="shm",
                options=["nosuid", "noexec", "nodev", "mode=1777", f"size={shm}"],
            )
        )
    for dest, opts in (hc.get("Tmpfs") or {}).items():
        mounts.append(tmpfs_mount(dest, opts))
    # Binds, Mounts and volumes are added by pyd.engine.container_volumes (they need the host)
    if hc.get("Init") and init_binary:
        mounts.append(MountSpec(destination=INIT_PATH, type="bind", source=init_binary, options=["bind", "ro"]))

    namespaces: dict[str, str | None] = {"mnt": None}
    if hc.get("PidMode") != "host":
        namespaces["pid"] = None
    if hc.get("UTSMode") != "host":
        namespaces["uts"] = None
    if hc.get("IpcMode") != "host":
        namespaces["ipc"] = None
    if hc.get("CgroupnsMode", "private") == "private":
        namespaces["cgroup"] = None
    mode = hc.get("NetworkMode") or "default"
    if mode.startswith("container:"):
        namespaces["net"] = net_ns_path
    elif mode != "host":
        # default/bridge behave like none until networks are implemented: only lo
        namespaces["net"] = None

    if privileged:
        masked, ro_paths = [], []
    else:
        masked = list(hc["MaskedPaths"]) if hc.get("MaskedPaths") is not None else list(MASKED_PATHS)
        ro_paths = list(hc["ReadonlyPaths"]) if hc.get("ReadonlyPaths") is not None else list(READONLY_PATHS)

    rlimits: dict[str, tuple[int, int]] = {}
    for u in hc.get("Ulimits") or []:
        name = str(u.get("Name", "")).lower()
        if name in _RLIMITS:
            rlimits[name] = (int(u.get("Soft", 0)), int(u.get("Hard", 0)))

    hostname = config.get("Hostname") or cid[:12]
    if hc.get("UTSMode") == "host":
        hostname = ""
    return ProcessSpec(
        args=args,
        env=process_env(config, tty, user.home),
        cwd=config.get("WorkingDir") or "/",
        user=user.user,
        terminal=tty,
        hostname=hostname,
        domainname=config.get("Domainname") or "",
        rootfs=rootfs,
        readonly_rootfs=readonly,
        mounts=mounts,
        masked_paths=masked,
        readonly_paths=ro_paths,
        capabilities=capabilities_for(hc),
        no_new_privileges=sec.no_new_privileges,
        privileged=privileged,
        namespaces=namespaces,
        cgroup=cgroup_for(cid, hc),
        rlimits=rlimits,
        sysctls=dict(hc.get("Sysctls") or {}),
        oom_score_adj=int(hc.get("OomScoreAdj") or 0),
    )
