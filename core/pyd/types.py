"""Value types shared by the core and plugins: what hooks and driver methods receive.

All are plain dataclasses. New fields are only ever added with defaults, so a plugin written
against an older version keeps working (see PLUGIN_API_VERSION in ``pyd``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass
class User:
    """The identity the container process runs as, already resolved to numbers."""

    uid: int = 0
    gid: int = 0
    additional_gids: list[int] = field(default_factory=list)


@dataclass
class MountSpec:
    """One mount inside the container, OCI-style.

    ``destination`` is a path inside the container; ``source`` a host path (bind) or a
    device/fs name (tmpfs, proc); ``options`` are mount(8)-style words such as ``ro``,
    ``rbind``, ``nosuid``, ``size=64m``, ``rshared``.
    """

    destination: str
    type: str = "bind"
    source: str = ""
    options: list[str] = field(default_factory=list)


@dataclass
class CgroupSpec:
    """Resource limits. ``None`` (or 0 for shares) means "no limit set"."""

    path: str = ""  # relative cgroup path, e.g. "pyd/<container id>"
    memory: int | None = None  # bytes
    memory_swap: int | None = None  # bytes, memory + swap; -1 = unlimited swap
    cpu_shares: int | None = None
    cpu_quota: int | None = None  # microseconds per cpu_period
    cpu_period: int | None = None
    cpuset_cpus: str = ""
    pids_limit: int | None = None
    # Device rules like the devices cgroup: "c 1:3 rwm"; empty means the default set.
    device_rules: list[str] = field(default_factory=list)


@dataclass
class DeviceSpec:
    """A device node created in the container's /dev."""

    path: str
    type: str  # "c" or "b"
    major: int
    minor: int
    mode: int = 0o666
    uid: int = 0
    gid: int = 0


@dataclass
class ProcessSpec:
    """Everything the exec driver needs to start a container's first process.

    Built by the engine from the container's config; security plugins edit it in
    ``pyd_container_prepare`` (e.g. set ``seccomp_filter``) before the exec driver runs it.
    """

    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    user: User = field(default_factory=User)
    terminal: bool = False
    hostname: str = ""
    domainname: str = ""
    rootfs: str = ""  # host path of the mounted root filesystem
    readonly_rootfs: bool = False
    # Propagation of the container's root mount tree (OCI linux.rootfsPropagation): "" means
    # rprivate; "rslave" lets mounts made on the host under a bind source with shared/slave
    # propagation reach the container (never back). .. versionadded:: 0.1 (issue 6)
    rootfs_propagation: str = ""
    mounts: list[MountSpec] = field(default_factory=list)
    devices: list[DeviceSpec] = field(default_factory=list)
    masked_paths: list[str] = field(default_factory=list)
    readonly_paths: list[str] = field(default_factory=list)
    # Capability names without the CAP_ prefix, e.g. "CHOWN", "NET_RAW".
    capabilities: list[str] = field(default_factory=list)
    no_new_privileges: bool = False
    privileged: bool = False
    # Namespaces to create ("mnt", "pid", "uts", "ipc", "net", "cgroup", "user"): value None
    # means a new one, a path means join that one (e.g. /proc/PID/ns/net).
    namespaces: dict[str, str | None] = field(default_factory=dict)
    cgroup: CgroupSpec = field(default_factory=CgroupSpec)
    rlimits: dict[str, tuple[int, int]] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    oom_score_adj: int = 0
    # A classic BPF program (packed struct sock_filter array) installed last before exec,
    # or None for no filter. Security plugins produce it; the exec driver only loads it.
    seccomp_filter: bytes | None = None
    # Free-form annotations plugins may use to pass data to each other through the core.
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class ContainerInfo:
    """A read-only view of a container that hooks and drivers receive."""

    id: str
    name: str
    image: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    # HostConfig.SecurityOpt, e.g. ["seccomp=unconfined", "no-new-privileges"].
    security_opts: list[str] = field(default_factory=list)
    privileged: bool = False
    # Directory owned by this container under the exec-root / data-root.
    state_dir: str = ""
    # The effective daemon configuration, the mapping ``pyd_configure`` received (e.g.
    # ``seccomp-profile``), so hooks need no module state to find daemon-wide defaults.
    daemon_settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Event:
    """A lifecycle event, Docker's ``/events`` shape: Type, Action, Actor.ID and attributes."""

    type: str  # container, image, network, volume, plugin, daemon
    action: str  # create, start, die, destroy, pull, connect, ...
    actor_id: str
    attributes: dict[str, str] = field(default_factory=dict)
    scope: str = "local"
    time_nano: int = 0

    def to_docker(self) -> dict[str, Any]:
        secs = self.time_nano // 1_000_000_000
        doc: dict[str, Any] = {}
        if self.type in ("container", "image"):
            doc["status"] = self.action
            doc["id"] = self.actor_id
            if "image" in self.attributes:
                doc["from"] = self.attributes["image"]
        doc.update(
            {
                "Type": self.type,
                "Action": self.action,
                "Actor": {"ID": self.actor_id, "Attributes": dict(self.attributes)},
                "scope": self.scope,
                "time": secs,
                "timeNano": self.time_nano,
            }
        )
        return doc
