"""The engine: the daemon's services, held by one ``Engine`` object (no module state).

``pyd.daemon.build_engine(config)`` makes it: it resolves the selected drivers, then builds
the services and attaches them. The server reaches it through ``request.app[ENGINE]``;
services never see aiohttp.

Adding a service (e.g. the image store) takes two lines in ``build_engine``::

    layers = engine.add_service("layers", LayerStore(engine.graph, root / "layers", engine.events))
    engine.add_service("images", ImageStore(root / "image", layers, engine.events))

``add_service`` sets ``engine.layers`` / ``engine.images`` and remembers the service, so
``Engine.close()`` closes it (in reverse order, if it has a ``close()``, sync or async). A
service that adds to ``GET /info`` defines ``contribute_info(info: dict) -> None`` (sync,
fast, no driver calls), e.g. ``info["Images"] = len(self._images)``; one that adds to
``GET /system/df`` defines ``contribute_disk_usage(df: dict) -> None``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import platform
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyd
from pyd.engine.authz import AuthzChain
from pyd.engine.events import EventBus
from pyd.registry import Kind, list_installed

if TYPE_CHECKING:
    from pyd.config import DaemonConfig
    from pyd.drivers.graph import GraphDriver
    from pyd.registry import PluginRegistry

log = logging.getLogger(__name__)

S = TypeVar("S")

DRIVER_STATUS_TIMEOUT = 5.0
CLEANUP_TIMEOUT = 30.0


class Engine:
    """Holds the configuration, the plugin registry, the selected drivers and the services."""

    def __init__(
        self,
        config: DaemonConfig,
        registry: PluginRegistry,
        *,
        graph: GraphDriver | None = None,
        log_driver_name: str = "",
        authz: AuthzChain | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.graph = graph
        self.log_driver_name = log_driver_name or config.log_driver
        self.log_driver: Any = None  # the LogDriver for log_driver_name (set by build_engine)
        self.exec_driver: Any = None  # the ExecDriver, or None when none is installed
        self.authz = authz or AuthzChain()
        self.events = events or EventBus(registry)
        self.root = Path(config.data_root)
        self.warnings: list[str] = []  # start-up findings shown in /info Warnings
        self.started = time.time()
        self._services: list[tuple[str, Any]] = []
        self._closed = False
        self.id = self._engine_id()
        self._host = _HostFacts()

    # -- services -----------------------------------------------------------------------------

    def add_service(self, name: str, service: S) -> S:
        """Attach ``service`` as ``engine.<name>`` and close it with the engine. Returns it."""
        if hasattr(self, name) and not any(n == name for n, _ in self._services):
            raise ValueError(f"Engine already has an attribute {name!r}")
        setattr(self, name, service)
        self._services = [(n, s) for n, s in self._services if n != name] + [(name, service)]
        return service

    @property
    def services(self) -> dict[str, Any]:
        return dict(self._services)

    async def close(self) -> None:
        """Close services (reverse order), clean up drivers, then call ``pyd_daemon_shutdown``.

        Idempotent. Every step is isolated: one failure is logged and the rest still run.
        """
        if self._closed:
            return
        self._closed = True
        self.events.close()
        for name, svc in reversed(self._services):
            close = getattr(svc, "close", None)
            if close is None:
                continue
            try:
                if inspect.iscoroutinefunction(close):
                    await asyncio.wait_for(close(), CLEANUP_TIMEOUT)
                else:
                    await asyncio.wait_for(asyncio.to_thread(close), CLEANUP_TIMEOUT)
            except Exception:
                log.exception("closing service %s failed", name)
        for (kind, name), driver in list(self.registry.drivers.items()):
            cleanup = getattr(driver, "cleanup", None)
            if cleanup is None:
                continue
            try:
                await asyncio.wait_for(asyncio.to_thread(cleanup), CLEANUP_TIMEOUT)
            except Exception:
                log.exception("driver cleanup failed", extra={"plugin": f"{kind.value}:{name}"})
        self.registry.broadcast("pyd_daemon_shutdown")

    # -- identity -------------------------------------------------------------------------------

    def _engine_id(self) -> str:
        """A stable ID per data-root (``<data-root>/engine-id``), as dockerd keeps one."""
        from pyd.engine.store import atomic_write

        path = self.root / "engine-id"
        try:
            value = path.read_text().strip()
            if value:
                return value
        except FileNotFoundError:
            pass
        value = str(uuid.uuid4())
        self.root.mkdir(parents=True, exist_ok=True, mode=0o711)
        atomic_write(path, value.encode() + b"\n", 0o644)
        return value

    # -- /info ------------------------------------------------------------------------------------

    async def driver_status(self) -> list[list[str]]:
        """The graph driver's ``status()`` rows, with a deadline (a hung driver must not hang
        ``/info``)."""
        if self.graph is None:
            return []
        try:
            rows = await asyncio.wait_for(asyncio.to_thread(self.graph.status), DRIVER_STATUS_TIMEOUT)
        except asyncio.TimeoutError:
            return [["Status", f"driver did not answer within {DRIVER_STATUS_TIMEOUT:g}s"]]
        except Exception as exc:
            log.exception("graph driver status failed", extra={"plugin": f"graphdriver:{self.graph_name}"})
            return [["Status", f"error: {exc}"]]
        return [[str(k), str(v)] for k, v in rows]

    @property
    def graph_name(self) -> str:
        return getattr(self.graph, "name", "") if self.graph is not None else ""

    async def info(self) -> dict[str, Any]:
        """Docker's ``GET /info`` document (API 1.41 key order), plus pyd's ``PydPlugins``."""
        driver_status = await self.driver_status()
        return await asyncio.to_thread(self._info, driver_status)

    def _info(self, driver_status: list[list[str]]) -> dict[str, Any]:
        cfg, host = self.config, self._host
        cg = host.cgroup_features()
        # Read from metadata on every call: a plugin pip-installed or uninstalled while the
        # daemon runs shows up (or goes) here at once, as it does in `pyd plugin ls`.
        installed = list_installed()
        names: dict[Kind, set[str]] = {k: set() for k in Kind}
        for p in installed:
            names[p.kind].add(p.name)
        plugins = {
            "Volume": sorted(names[Kind.VOLUME]),
            "Network": sorted(names[Kind.NETWORK]),
            # Docker lists the authorization plugins in effect, not every one installed.
            "Authorization": list(cfg.authorization_plugins) or None,
            "Log": sorted(names[Kind.LOG]),
            # pyd extras (Docker's clients ignore unknown keys)
            "Storage": sorted(names[Kind.GRAPHDRIVER]),
            "Exec": sorted(names[Kind.EXEC]),
            "KVStore": sorted(names[Kind.KVSTORE]),
            "IPAM": sorted(names[Kind.IPAM]),
            "Security": sorted(names[Kind.SECURITY]),
        }
        warnings = list(self.warnings)
        for (kind, name), err in sorted(self.registry.failures.items(), key=lambda kv: (kv[0][0].value, kv[0][1])):
            warnings.append(f"WARNING: {kind.value} plugin {name}: {err}")
        info: dict[str, Any] = {
            "ID": self.id,
            "Containers": 0,
            "ContainersRunning": 0,
            "ContainersPaused": 0,
            "ContainersStopped": 0,
            "Images": 0,
            "Driver": self.graph_name,
            "DriverStatus": driver_status,
            "Plugins": plugins,
            "MemoryLimit": cg["memory"],
            "SwapLimit": cg["swap"],
            "KernelMemory": False,
            "KernelMemoryTCP": False,
            "CpuCfsPeriod": cg["cfs"],
            "CpuCfsQuota": cg["cfs"],
            "CPUShares": cg["cpu_shares"],
            "CPUSet": cg["cpuset"],
            "PidsLimit": cg["pids"],
            "IPv4Forwarding": _read("/proc/sys/net/ipv4/ip_forward") == "1",
            "BridgeNfIptables": _read("/proc/sys/net/bridge/bridge-nf-call-iptables") == "1",
            "BridgeNfIp6tables": _read("/proc/sys/net/bridge/bridge-nf-call-ip6tables") == "1",
            "Debug": cfg.debug,
            "NFd": _count_fds(),
            "OomKillDisable": cg["memory"] and host.cgroup_version == "1",
            "NGoroutines": threading.active_count(),
            "SystemTime": _rfc3339_now(),
            "LoggingDriver": self.log_driver_name,
            "CgroupDriver": "cgroupfs",
            "CgroupVersion": host.cgroup_version,
            "NEventsListener": self.events.listeners,
            "KernelVersion": platform.release(),
            "OperatingSystem": host.os_name,
            "OSVersion": host.os_version,
            "OSType": "linux",
            "Architecture": platform.machine(),
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {
                "AllowNondistributableArtifactsCIDRs": [],
                "AllowNondistributableArtifactsHostnames": [],
                "InsecureRegistryCIDRs": ["127.0.0.0/8"] + [r for r in cfg.insecure_registries if "/" in r],
                "IndexConfigs": {
                    "docker.io": {"Name": "docker.io", "Mirrors": list(cfg.registry_mirrors), "Secure": True, "Official": True}
                },
                "Mirrors": list(cfg.registry_mirrors),
            },
            "NCPU": os.cpu_count() or 1,
            "MemTotal": host.mem_total,
            "GenericResources": None,
            "DockerRootDir": cfg.data_root,
            "HttpProxy": os.environ.get("HTTP_PROXY", os.environ.get("http_proxy", "")),
            "HttpsProxy": os.environ.get("HTTPS_PROXY", os.environ.get("https_proxy", "")),
            "NoProxy": os.environ.get("NO_PROXY", os.environ.get("no_proxy", "")),
            "Name": socket.gethostname(),
            "Labels": list(cfg.labels),
            "ExperimentalBuild": False,
            "ServerVersion": pyd.__version__,
            "Runtimes": {},
            "DefaultRuntime": "",
            "Swarm": {
                "NodeID": "",
                "NodeAddr": "",
                "LocalNodeState": "inactive",
                "ControlAvailable": False,
                "Error": "",
                "RemoteManagers": None,
            },
            # API <= 1.40 fields, kept by pyd for its multi-host networking
            "ClusterStore": cfg.cluster_store,
            "ClusterAdvertise": cfg.cluster_advertise,
            "LiveRestoreEnabled": cfg.live_restore,
            "Isolation": "",
            "InitBinary": "",
            "ContainerdCommit": {"ID": "", "Expected": ""},
            "RuncCommit": {"ID": "", "Expected": ""},
            "InitCommit": {"ID": "", "Expected": ""},
            "SecurityOptions": [],
            "Warnings": warnings,
            # pyd extras: every installed plugin with its state (what `pyd plugin ls` shows)
            "PydPlugins": self.registry.status(installed),
            "PydPluginAPIVersion": pyd.PLUGIN_API_VERSION,
        }
        if host.cgroup_version == "2":
            info["SecurityOptions"].append("name=cgroupns")
        for name, svc in self._services:
            contribute = getattr(svc, "contribute_info", None)
            if contribute is not None:
                try:
                    contribute(info)
                except Exception:
                    log.exception("service %s failed to contribute to /info", name)
        self.registry.broadcast("pyd_info", info=info)
        if not info["Warnings"]:
            info["Warnings"] = None  # Docker sends null, not []
        return info


    async def disk_usage(self) -> dict[str, Any]:
        """Docker's ``GET /system/df`` document. Services fill it in through
        ``contribute_disk_usage(df: dict) -> None`` (run in a worker thread)."""
        df: dict[str, Any] = {
            "LayersSize": 0,
            "Images": [],
            "Containers": [],
            "Volumes": [],
            "BuildCache": None,
            "BuilderSize": 0,
        }

        def fill() -> None:
            for name, svc in self._services:
                contribute = getattr(svc, "contribute_disk_usage", None)
                if contribute is not None:
                    contribute(df)

        await asyncio.to_thread(fill)
        return df


# -- host facts ---------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _count_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _rfc3339_now() -> str:
    now = time.time_ns()
    dt = datetime.fromtimestamp(now // 1_000_000_000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{now % 1_000_000_000:09d}Z"


class _HostFacts:
    """Facts about the host that do not change while the daemon runs (read once, lazily)."""

    def __init__(self) -> None:
        self._os: tuple[str, str] | None = None
        self._cgroup_version: str | None = None
        self._features: dict[str, bool] | None = None

    @property
    def cgroup_version(self) -> str:
        # A unified hierarchy at /sys/fs/cgroup is v2; a v1 host may still have a v2 mount
        # elsewhere (e.g. /sys/fs/cgroup/unified), which does not make it a v2 host.
        if self._cgroup_version is None:
            self._cgroup_version = "2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "1"
        return self._cgroup_version

    def cgroup_features(self) -> dict[str, bool]:
        if self._features is None:
            base = "/sys/fs/cgroup"
            if self.cgroup_version == "2":
                controllers = set(_read(f"{base}/cgroup.controllers").split())
                self._features = {
                    "memory": "memory" in controllers,
                    "swap": "memory" in controllers,
                    "cfs": "cpu" in controllers,
                    "cpu_shares": "cpu" in controllers,
                    "cpuset": "cpuset" in controllers,
                    "pids": "pids" in controllers,
                }
            else:
                ex = os.path.exists
                self._features = {
                    "memory": ex(f"{base}/memory/memory.limit_in_bytes"),
                    "swap": ex(f"{base}/memory/memory.memsw.limit_in_bytes"),
                    "cfs": ex(f"{base}/cpu/cpu.cfs_quota_us") or ex(f"{base}/cpu,cpuacct/cpu.cfs_quota_us"),
                    "cpu_shares": ex(f"{base}/cpu/cpu.shares") or ex(f"{base}/cpu,cpuacct/cpu.shares"),
                    "cpuset": ex(f"{base}/cpuset/cpuset.cpus"),
                    "pids": ex(f"{base}/pids/pids.max") or ex(f"{base}/pids"),
                }
        return self._features

    def _os_release(self) -> tuple[str, str]:
        if self._os is None:
            fields: dict[str, str] = {}
            for line in _read("/etc/os-release").splitlines():
                key, _, value = line.partition("=")
                fields[key] = value.strip().strip('"')
            self._os = (fields.get("PRETTY_NAME", "Linux"), fields.get("VERSION_ID", ""))
        return self._os

    @property
    def os_name(self) -> str:
        return self._os_release()[0]

    @property
    def os_version(self) -> str:
        return self._os_release()[1]

    @property
    def mem_total(self) -> int:
        for line in _read("/proc/meminfo").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
        return 0
