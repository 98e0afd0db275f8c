"""The network service: networks, IPAM, sandboxes, endpoints and the embedded DNS.

The core owns networks and endpoints (libnetwork's controller); drivers (``pyd.network``
plugins, loaded through the registry) only turn them into kernel objects, and the IPAM driver
(``pyd.ipam``, ``default`` is a core plugin) hands out pools and addresses.

* Networks: records under ``<data-root>/network/files`` (``network_records``); drivers
  validate ``-o`` in ``parse_options`` before anything is made; the predefined ``bridge``
  (default network; ``--bridge``/``--bip``/``fixed-cidr``/``mtu``/``default-address-pools``),
  ``host`` and ``none`` are made at start when their drivers are installed.
* At start every known network is handed to its driver again (``restore_network``, else
  ``create_network``) before any endpoint call; at shutdown the kernel objects of networks
  nobody uses are removed (the records stay), so a stopped daemon leaves no bridge or rule.
* Containers (``network_attach``): a sandbox (netns) per container, endpoints joined as eth0,
  eth1, ..., published ports, the embedded DNS, ``NetworkSettings`` for inspect.

Driver calls run in worker threads with deadlines, serialised per network; list and inspect
read records only, so a hung driver never freezes ``network ls`` (moby#33994).
"""

from __future__ import annotations

import asyncio
import ipaddress
from concurrent.futures import ThreadPoolExecutor
import json
import logging
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

from pyd.drivers.network import IPAMData, NetworkContext, NetworkCreateRequest, NetworkRestorer
from pyd.engine import network_views as views
from pyd.engine.container_state import format_time, now_nano, parse_time
from pyd.engine.network_attach import NetworkAttachMixin
from pyd.engine.network_cluster import ClusterSync, KVProxy
from pyd.engine.network_dns import SandboxDNS
from pyd.engine.network_hostinfo import host_routes, interface_ipv4
from pyd.engine.network_records import (
    ContainerNet,
    EndpointRecord,
    NetworkRecord,
    PoolRecord,
    RecordDir,
)
from pyd.engine.store import validate_name
from pyd.errors import (
    Conflict,
    DriverNotInstalled,
    Forbidden,
    InvalidParameter,
    NotFound,
    NotSupported,
    PydError,
    Unavailable,
)
from pyd.registry import Kind, installed_names

if TYPE_CHECKING:
    from pyd.config import DaemonConfig
    from pyd.engine.events import EventBus
    from pyd.registry import PluginRegistry

log = logging.getLogger(__name__)
T = TypeVar("T")

SHORT = 30.0  # deadline of a driver call that should be quick (seconds)
LONG = 120.0  # network create/delete, restore
DEFAULT_PREFIX = "pyd"
MAX_PREFIX = 8
PREDEFINED_NAMES = ("bridge", "host", "none", "default")
# Drivers whose networks have no addresses (Docker gives them the "null" IPAM).
NO_IPAM_DRIVERS = frozenset({"host", "null"})
LOCAL_SPACE = "LocalDefault"
GLOBAL_SPACE = "GlobalDefault"
# Bridge options the default network is made with (the names Docker shows in inspect).
DEFAULT_BRIDGE_OPT = "com.docker.network.bridge.default_bridge"
BRIDGE_NAME_OPT = "com.docker.network.bridge.name"
ICC_OPT = "com.docker.network.bridge.enable_icc"
MASQ_OPT = "com.docker.network.bridge.enable_ip_masquerade"
MTU_OPT = "com.docker.network.driver.mtu"
# Options of the default IPAM driver the service passes for automatic subnets.
IPAM_EXCLUDE = "pyd.ipam.exclude"
IPAM_DEFAULT_POOLS = "pyd.ipam.default-pools"
IPAM_GATEWAY = {"RequestAddressType": "com.docker.network.gateway"}
_PREFIX_FROM_BRIDGE = re.compile(r"^([A-Za-z][A-Za-z0-9_-]{0,7})0$")


def name_prefix_for(bridge: str) -> str:
    """The prefix of every kernel object name, from the ``bridge`` setting: ``pyd0`` (the
    default) gives ``pyd``, ``pt1a2b0`` gives ``pt1a2b``; a name not of that form (``br-lan``,
    ``none``) keeps ``pyd``. Tests give each daemon its own bridge and so its own prefix."""
    m = _PREFIX_FROM_BRIDGE.match(bridge or "")
    return m.group(1) if m else DEFAULT_PREFIX


def new_id() -> str:
    return secrets.token_hex(32)


class NetworkService(NetworkAttachMixin):
    """``/networks/*`` and the networking of containers. Coroutines run on the event loop."""

    def __init__(
        self,
        *,
        config: DaemonConfig,
        registry: PluginRegistry,
        events: EventBus,
        name_prefix: str | None = None,
        host_id: str | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.events = events
        self.data_root = Path(config.data_root)
        self.prefix = name_prefix or name_prefix_for(config.bridge)
        self.default_bridge_name = (
            config.bridge if config.bridge and config.bridge != "none" else f"{self.prefix}0"
        )
        files = self.data_root / "network" / "files"
        self._net_dir: RecordDir[NetworkRecord] = RecordDir(files / "networks", NetworkRecord)
        self._ep_dir: RecordDir[EndpointRecord] = RecordDir(files / "endpoints", EndpointRecord)
        self._ctr_dir: RecordDir[ContainerNet] = RecordDir(files / "containers", ContainerNet)
        self.netns_dir = Path(config.exec_root) / "netns"
        self.networks: dict[str, NetworkRecord] = {}
        self.endpoints: dict[str, EndpointRecord] = {}
        self.cnets: dict[str, ContainerNet] = {}
        self.unavailable: dict[str, str] = {}  # network id -> why its driver cannot serve it
        self._drivers: dict[str, Any] = {}
        self._dns: dict[str, SandboxDNS] = {}
        self._net_locks: dict[str, asyncio.Lock] = {}
        self._ctr_locks: dict[str, asyncio.Lock] = {}
        self._creating: set[str] = set()
        self._start_lock: asyncio.Lock | None = None
        self._started = False
        # Its own workers: many parallel starts must not queue behind other services' threads.
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="pyd-net")
        # Set by the composition root once the container service exists: ref -> ContainerRef.
        self.container_lookup: Callable[[str], Any] | None = None
        # The cluster store (made on first use) and the sync of global networks/endpoints.
        self.kv = KVProxy(config, registry, self.data_root)
        self.cluster = ClusterSync(self.kv, dict(config.cluster_store_opts), host=host_id)
        self._gw_lock: asyncio.Lock | None = None

    # -- plumbing -------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, timeout: float = SHORT, what: str = "") -> T:
        """A blocking call in a worker thread; ``Unavailable`` if it misses its deadline (the
        thread runs on; driver methods are retry-safe)."""
        fut = asyncio.get_running_loop().run_in_executor(self._pool, lambda: fn(*args))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            name = what or getattr(fn, "__qualname__", "network call")
            raise Unavailable(f"{name} did not complete within {timeout:g}s") from None

    async def _call_quiet(self, fn: Callable[..., Any], *args: Any) -> None:
        """A clean-up call whose failure is logged, never raised."""
        try:
            await self._call(fn, *args, timeout=LONG)
        except Exception as exc:
            log.warning("clean-up step %s failed: %s", getattr(fn, "__qualname__", fn), exc)

    def _net_lock(self, network_id: str) -> asyncio.Lock:
        lock = self._net_locks.get(network_id)
        if lock is None:
            lock = self._net_locks[network_id] = asyncio.Lock()
        return lock

    def _ctr_lock(self, container_id: str) -> asyncio.Lock:
        lock = self._ctr_locks.get(container_id)
        if lock is None:
            lock = self._ctr_locks[container_id] = asyncio.Lock()
        return lock

    def settings(self) -> dict[str, Any]:
        """Daemon settings by their daemon.json names, for ``NetworkContext.settings``."""
        return self.config.settings()

    def driver(self, name: str) -> Any:
        """The network driver ``name`` (loaded once); ``DriverNotInstalled`` lists the
        installed ones."""
        drv = self._drivers.get(name)
        if drv is not None:
            return drv
        installed = installed_names(Kind.NETWORK)
        if name not in installed:
            raise DriverNotInstalled("network", name, installed)
        ctx = NetworkContext(settings=self.settings(), kvstore=self.kv, name_prefix=self.prefix)
        home = self.registry.home(self.data_root, Kind.NETWORK, name)
        # In a worker thread: a driver's init may use libraries that run an event loop of
        # their own (pyroute2 >= 0.9), which cannot start inside the daemon's loop thread.
        drv = self._pool.submit(self.registry.init_driver, Kind.NETWORK, name, home=home, context=ctx).result()
        self._drivers[name] = drv
        return drv

    def ipam(self, name: str) -> Any:
        installed = installed_names(Kind.IPAM)
        if name not in installed:
            raise DriverNotInstalled("ipam", name, installed)
        return self.registry.init_driver(
            Kind.IPAM, name, home=self.registry.home(self.data_root, Kind.IPAM, name), kvstore=self.kv
        )

    def _driver_for(self, rec: NetworkRecord) -> Any:
        why = self.unavailable.get(rec.id)
        if why:
            raise Unavailable(f'network {rec.name}: its driver "{rec.driver}" is unavailable: {why}')
        return self.driver(rec.driver)

    def find(self, ref: str) -> NetworkRecord:
        """A network by full ID, name, or unique ID prefix (Docker's order)."""
        rec = self.networks.get(ref)
        if rec is not None:
            return rec
        for r in self.networks.values():
            if r.name == ref:
                return r
        if ref:
            found = [r for r in self.networks.values() if r.id.startswith(ref)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise InvalidParameter(f"network {ref} is ambiguous ({len(found)} matches found based on ID prefix)")
        raise NotFound(f"network {ref} not found")

    def in_use(self, network_id: str) -> bool:
        return any(ep.network_id == network_id for ep in self.endpoints.values())

    def _save_network(self, rec: NetworkRecord) -> None:
        self._net_dir.save(rec.id, rec)

    def _emit(self, rec: NetworkRecord, action: str, **extra: str) -> None:
        self.events.emit("network", action, rec.id, {"name": rec.name, "type": rec.driver, **extra})

    # -- start and stop ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the records, give every network back to its driver, make the predefined
        networks, drop sandboxes whose namespace is gone. Idempotent; every public coroutine
        awaits it, so the order of start-up hooks does not matter."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await self._call(self._load_records, timeout=LONG)
            for rec in sorted(self.networks.values(), key=lambda r: r.created):
                await self._restore_network(rec)
            await self._ensure_predefined()
            await self._recover_sandboxes()
            if self.config.cluster_store or any(r.scope == "global" for r in self.networks.values()):
                self._start_cluster()
            self._started = True

    def _load_records(self) -> None:
        self.networks = {r.id: r for r in self._net_dir.load_all()}
        self.endpoints = {e.id: e for e in self._ep_dir.load_all()}
        self.cnets = {c.id: c for c in self._ctr_dir.load_all()}

    def create_request(self, rec: NetworkRecord, options: Mapping[str, object] | None = None) -> NetworkCreateRequest:
        return NetworkCreateRequest(
            network_id=rec.id,
            name=rec.name,
            options=dict(options if options is not None else rec.options),
            ipv4=[IPAMData(pool=p.subnet, gateway=p.gateway, ip_range=p.ip_range) for p in rec.pools],
            internal=rec.internal,
            labels=dict(rec.labels),
            enable_ipv6=rec.enable_ipv6,
        )

    async def _restore_network(self, rec: NetworkRecord, *, adopted: bool = False) -> None:
        """Hand a known network to its driver; ``adopted``: new to this host (made by another)."""
        try:
            drv = self.driver(rec.driver)
            req = self.create_request(rec)
            fn = drv.restore_network if isinstance(drv, NetworkRestorer) and not adopted else drv.create_network
            async with self._net_lock(rec.id):
                await self._call(fn, req, timeout=LONG, what=f'restoring network {rec.name} (driver "{rec.driver}")')
        except Exception as exc:
            # Restored as unavailable, never a daemon that will not start.
            self.unavailable[rec.id] = str(exc)
            log.warning("network %s cannot be restored: %s", rec.name, exc, extra={"driver": f"network:{rec.driver}"})
        else:
            self.unavailable.pop(rec.id, None)

    async def close(self) -> None:
        """Daemon shutdown: stop the DNS servers; remove the kernel objects of networks that
        no running container uses (records and IPAM stay; ``start`` recreates them)."""
        for cid in list(self._dns):
            await self._stop_dns(cid)
        if self._started:
            for rec in list(self.networks.values()):
                if self.in_use(rec.id) or rec.id in self.unavailable:
                    continue
                try:
                    drv = self.driver(rec.driver)
                    async with self._net_lock(rec.id):
                        await self._call(drv.delete_network, rec.id, timeout=LONG)
                except Exception as exc:
                    log.warning("cannot release network %s at shutdown: %s", rec.name, exc)
        await asyncio.to_thread(self.cluster.close)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the cluster (global-scope networks) -----------------------------------------------------------

    def _start_cluster(self) -> None:
        """Follow the cluster's networks and keep this host's endpoints published (once)."""
        known = [r.id for r in self.networks.values() if r.scope == "global"]
        if not self.cluster.start(asyncio.get_running_loop(), self._on_cluster_network, known):
            return
        for ep in list(self.endpoints.values()):  # a restarted daemon publishes again
            rec = self.networks.get(ep.network_id)
            if rec is not None and rec.scope == "global" and ep.joined:
                self._pool.submit(self.cluster.publish_endpoint, rec.id, ep.id, self._endpoint_entry(ep))

    def _endpoint_entry(self, ep: EndpointRecord) -> dict[str, Any]:
        cnet = self.cnets.get(ep.container_id)
        return {"container_id": ep.container_id, "name": cnet.name if cnet else "", "aliases": list(ep.aliases),
                "ip": ep.ip, "mac": ep.mac}

    async def _on_cluster_network(self, network_id: str, record: dict[str, Any] | None) -> None:
        """A global network was created or removed on some host (maybe this one)."""
        await self.start()
        current = self.networks.get(network_id)
        if record is None:
            if current is not None and current.scope == "global":
                await self._drop_global(current)
            return
        if current is not None or network_id in {r.id for r in self.networks.values()}:
            return
        rec = NetworkRecord.from_json(record)
        rec.predefined = False
        self._save_network(rec)
        self.networks[rec.id] = rec
        await self._restore_network(rec, adopted=True)

    async def _drop_global(self, rec: NetworkRecord) -> None:
        """Removed from the cluster by another host: release it here (records, kernel objects)."""
        for ep in [e for e in self.endpoints.values() if e.network_id == rec.id]:
            log.warning("network %s was removed in the cluster; disconnecting container %s", rec.name, ep.container_id[:12])
            await self._leave(ep)
        if rec.id not in self.unavailable:
            drv = self._drv_quiet(rec)
            if drv is not None:
                async with self._net_lock(rec.id):
                    await self._call_quiet(drv.delete_network, rec.id)
        self._net_dir.delete(rec.id)
        self.networks.pop(rec.id, None)
        self.unavailable.pop(rec.id, None)
        self._net_locks.pop(rec.id, None)

    async def gateway_bridge(self) -> NetworkRecord:
        """The local bridge that gives containers on global networks their way out (Docker's
        ``docker_gwbridge``): no inter-container traffic, masquerade on. Made on first use."""
        if self._gw_lock is None:
            self._gw_lock = asyncio.Lock()
        async with self._gw_lock:
            for rec in self.networks.values():
                if rec.extra.get("gwbridge"):
                    return rec
            name = f"{self.prefix}_gwbridge"
            device = name if len(name) <= 15 else f"{self.prefix}gw"
            return await self._create_network(
                name=name, driver_name="bridge",
                options={BRIDGE_NAME_OPT: device, ICC_OPT: "false", MASQ_OPT: "true"},
                extra={"gwbridge": True},
            )

    # -- predefined networks ------------------------------------------------------------------------

    async def _ensure_predefined(self) -> None:
        installed = set(installed_names(Kind.NETWORK))
        if self.config.bridge == "none":
            await self._drop_predefined("bridge")
        elif "bridge" in installed:
            await self._ensure_default_bridge()
        for name, driver in (("host", "host"), ("none", "null")):
            if driver not in installed or any(r.name == name for r in self.networks.values()):
                continue
            try:
                await self._create_network(name=name, driver_name=driver, predefined=True)
            except PydError as exc:
                log.warning("cannot create the predefined network %s: %s", name, exc)

    async def _drop_predefined(self, name: str) -> None:
        for rec in list(self.networks.values()):
            if rec.name == name and rec.predefined:
                if self.in_use(rec.id):
                    log.warning("network %s is disabled but still in use; kept", name)
                    return
                await self._delete_network(rec)

    def _default_bridge_fingerprint(self) -> dict[str, Any]:
        c = self.config
        return {
            "bridge": self.default_bridge_name,
            "bip": c.bip,
            "fixed-cidr": c.fixed_cidr,
            "mtu": c.mtu,
            "default-address-pools": json.loads(json.dumps(list(c.default_address_pools))),
            "icc": c.icc,
            "ip-masq": c.ip_masq,
        }

    async def _ensure_default_bridge(self) -> None:
        fingerprint = self._default_bridge_fingerprint()
        for rec in list(self.networks.values()):
            if rec.name != "bridge":
                continue
            if rec.extra.get("default_bridge") == fingerprint or self.in_use(rec.id):
                if rec.extra.get("default_bridge") != fingerprint:
                    log.warning("the default bridge settings changed but network bridge is in use; kept as it was")
                return
            log.info("default bridge settings changed: recreating network bridge")
            await self._delete_network(rec)
        c = self.config
        config: dict[str, str] = {}
        if c.bip:
            iface = ipaddress.IPv4Interface(c.bip)
            config = {"Subnet": str(iface.network), "Gateway": str(iface.ip)}
        else:
            existing = await self._call(interface_ipv4, self.default_bridge_name)
            if existing:  # an existing bridge's address decides, as dockerd does with -b
                iface = ipaddress.IPv4Interface(existing)
                config = {"Subnet": str(iface.network), "Gateway": str(iface.ip)}
            elif c.fixed_cidr:
                config = {"Subnet": str(ipaddress.IPv4Network(c.fixed_cidr, strict=False))}
        if c.fixed_cidr:
            config["IPRange"] = str(ipaddress.IPv4Network(c.fixed_cidr, strict=False))
        options = {
            DEFAULT_BRIDGE_OPT: "true",
            BRIDGE_NAME_OPT: self.default_bridge_name,
            ICC_OPT: "true" if c.icc else "false",
            MASQ_OPT: "true" if c.ip_masq else "false",
            MTU_OPT: str(c.mtu),
        }
        await self._create_network(
            name="bridge",
            driver_name="bridge",
            options=options,
            ipam_configs=[config] if config else [],
            ipam_options=None,
            predefined=True,
            extra={"default_bridge": fingerprint},
        )

    # -- create -------------------------------------------------------------------------------------

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /networks/create``: ``{"Id": ..., "Warning": ""}``."""
        await self.start()
        if not isinstance(body, Mapping):
            raise InvalidParameter("invalid network create body: expected a JSON object")
        name = body.get("Name")
        if not name or not isinstance(name, str):
            raise InvalidParameter("network name is required (Name)")
        if name in PREDEFINED_NAMES:
            raise Forbidden(f"operation is not permitted on predefined {name} network")
        validate_name("network", name)
        for flag in ("EnableIPv6", "Ingress", "ConfigOnly"):
            if body.get(flag):
                raise NotSupported(f"{flag} networks are not supported by pyd")
        if (body.get("ConfigFrom") or {}).get("Network"):
            raise NotSupported("ConfigFrom networks are not supported by pyd")
        ipam = body.get("IPAM") or {}
        if not isinstance(ipam, Mapping):
            raise InvalidParameter("invalid IPAM: expected an object with Driver, Config and Options")
        configs = ipam.get("Config") or []
        if not isinstance(configs, list) or not all(isinstance(c, Mapping) for c in configs):
            raise InvalidParameter("invalid IPAM.Config: expected a list of objects with Subnet, IPRange, Gateway")
        options = body.get("Options") or {}
        labels = body.get("Labels") or {}
        for what, value in (("Options", options), ("Labels", labels), ("IPAM.Options", ipam.get("Options") or {})):
            if not isinstance(value, Mapping):
                raise InvalidParameter(f"invalid {what}: expected an object of strings")
        rec = await self._create_network(
            name=name,
            driver_name=str(body.get("Driver") or "bridge"),
            options={str(k): str(v) for k, v in options.items()},
            ipam_driver=str(ipam.get("Driver") or "default"),
            ipam_options=None if ipam.get("Options") is None else {str(k): str(v) for k, v in ipam["Options"].items()},
            ipam_configs=[dict(c) for c in configs],
            internal=bool(body.get("Internal")),
            attachable=bool(body.get("Attachable")),
            labels={str(k): str(v) for k, v in labels.items()},
            scope=str(body.get("Scope") or ""),
        )
        return {"Id": rec.id, "Warning": ""}

    async def _create_network(
        self,
        *,
        name: str,
        driver_name: str,
        options: Mapping[str, str] | None = None,
        ipam_driver: str = "default",
        ipam_options: Mapping[str, str] | None = None,
        ipam_configs: list[dict[str, Any]] | None = None,
        internal: bool = False,
        attachable: bool = False,
        labels: Mapping[str, str] | None = None,
        scope: str = "",
        predefined: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> NetworkRecord:
        if name in self._creating or any(r.name == name for r in self.networks.values()):
            raise Conflict(f"network with name {name} already exists")
        self._creating.add(name)  # before any await: a concurrent create sees the name taken
        try:
            drv = self.driver(driver_name)
            raw = dict(options or {})
            parsed = drv.parse_options(raw)  # the owner checks -o before anything is made
            driver_scope = getattr(drv, "scope", "local")
            if scope and scope != driver_scope:
                raise InvalidParameter(f'network driver "{driver_name}" has scope {driver_scope}, not {scope}')
            rec = NetworkRecord(
                id=new_id(),
                name=name,
                driver=driver_name,
                created=format_time(now_nano()),
                scope=driver_scope,
                ipam_driver=ipam_driver,
                ipam_options=dict(ipam_options) if ipam_options is not None else None,
                options=raw,
                labels=dict(labels or {}),
                internal=internal,
                attachable=attachable,
                predefined=predefined,
                extra=dict(extra or {}),
            )
            if driver_scope == "global":
                self._start_cluster()
                await self._call(self.cluster.claim_name, name, rec.id, what="reserving the name in the cluster store")
            try:
                await self._make_network(rec, drv, parsed, ipam_configs, driver_name)
            except BaseException:
                if driver_scope == "global":
                    await asyncio.shield(self._call_quiet(self.cluster.release_name, name, rec.id))
                raise
        finally:
            self._creating.discard(name)
        if not predefined:  # dockerd makes its predefined networks without events too
            self._emit(rec, "create")
        return rec

    async def _make_network(
        self, rec: NetworkRecord, drv: Any, parsed: Mapping[str, object], ipam_configs: list[dict[str, Any]] | None,
        driver_name: str,
    ) -> None:
        """Pools, record, kernel objects (and, for a global network, its cluster record): all
        or nothing."""
        name, driver_scope = rec.name, rec.scope
        if driver_name not in NO_IPAM_DRIVERS:
            configs = _check_ipam_configs(ipam_configs or [])
            space = GLOBAL_SPACE if driver_scope == "global" else LOCAL_SPACE
            allocator = self.ipam(rec.ipam_driver)
            auto = await self._auto_pool_options(rec.ipam_driver)
            rec.pools = await self._call(
                _allocate_pools, allocator, space, configs, dict(rec.ipam_options or {}), auto, what="allocating the network's pools"
            )
        elif ipam_configs:
            raise InvalidParameter(f'network driver "{driver_name}" does not take IPAM configuration (subnets)')
        created = False
        try:
            self._save_network(rec)  # first: a crash after this is repaired by restore at start
            async with self._net_lock(rec.id):
                await self._call(
                    drv.create_network, self.create_request(rec, parsed), timeout=LONG,
                    what=f'creating network {name} (driver "{driver_name}")',
                )
                created = True
            self.networks[rec.id] = rec
            if driver_scope == "global":  # last: other hosts adopt it from here on
                await self._call(self.cluster.publish_network, rec.id, rec.to_json(),
                                 what="publishing the network in the cluster store")
        except BaseException:
            self.networks.pop(rec.id, None)
            if created:
                await asyncio.shield(self._call_quiet(drv.delete_network, rec.id))
                if hasattr(drv, "forget_network"):
                    await asyncio.shield(self._call_quiet(drv.forget_network, rec.id))
            self._net_dir.delete(rec.id)
            await self._release_pools(rec)
            raise

    async def _auto_pool_options(self, ipam_driver: str) -> dict[str, str]:
        """Options for a subnet the IPAM chooses: avoid the host's routes; the daemon's
        ``default-address-pools``. Only the default IPAM driver knows these keys."""
        if ipam_driver != "default":
            return {}
        opts: dict[str, str] = {}
        try:
            routes = await self._call(host_routes)
        except Exception as exc:  # not fatal: the IPAM then picks without knowing the routes
            log.warning("cannot read the host's routes: %s", exc)
            routes = []
        if routes:
            opts[IPAM_EXCLUDE] = ",".join(routes)
        if self.config.default_address_pools:
            opts[IPAM_DEFAULT_POOLS] = json.dumps(
                [{"base": p["base"], "size": p["size"]} for p in self.config.default_address_pools]
            )
        return opts

    async def _release_pools(self, rec: NetworkRecord) -> None:
        if not rec.pools:
            return
        try:
            allocator = self.ipam(rec.ipam_driver)
            await self._call(_release_pools, allocator, rec.pools, what="releasing the network's pools")
        except Exception as exc:
            log.warning("cannot release the address pools of network %s: %s", rec.name, exc)

    # -- inspect / list -------------------------------------------------------------------------

    def _containers_of(self, rec: NetworkRecord) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for ep in self.endpoints.values():
            if ep.network_id != rec.id:
                continue
            cnet = self.cnets.get(ep.container_id)
            out[ep.container_id] = views.container_entry(cnet.name if cnet else "", ep)
        return out

    async def inspect(self, ref: str) -> dict[str, Any]:
        await self.start()
        rec = self.find(ref)
        return views.network_doc(rec, self._containers_of(rec))

    async def list(self, filters: Mapping[str, list[str]] | None = None) -> list[dict[str, Any]]:
        await self.start()
        filters = dict(filters or {})
        views.check_filters(filters)
        out = []
        for rec in sorted(self.networks.values(), key=lambda r: r.name):
            if views.matches(rec, filters, self.in_use(rec.id)):
                out.append(views.network_doc(rec, self._containers_of(rec)))
        return out

    # -- remove / prune -------------------------------------------------------------------------

    async def remove(self, ref: str) -> None:
        await self.start()
        rec = self.find(ref)
        if rec.predefined:
            raise Forbidden(f"{rec.name} is a pre-defined network and cannot be removed")
        if self.in_use(rec.id):
            raise Forbidden(f"error while removing network: network {rec.name} id {rec.id} has active endpoints")
        await self._delete_network(rec)

    async def _delete_network(self, rec: NetworkRecord) -> None:
        drv = None
        if rec.scope == "global":  # endpoints on other hosts count too; needs the store
            remote = await self._call(self.cluster.endpoints_of, rec.id, what="reading the cluster store")
            if remote:
                hosts = sorted({str(e.get("host", ""))[:12] for e in remote})
                raise Forbidden(
                    f"error while removing network: network {rec.name} id {rec.id} has active endpoints "
                    f"(on hosts {', '.join(hosts)})"
                )
        if rec.id not in self.unavailable:
            drv = self.driver(rec.driver)
            async with self._net_lock(rec.id):
                await self._call(drv.delete_network, rec.id, timeout=LONG, what=f"removing network {rec.name}")
        await self._release_pools(rec)
        if rec.scope == "global":
            forget = getattr(drv if drv is not None else self._drv_quiet(rec), "forget_network", None)
            if forget is not None:
                await self._call(forget, rec.id, what=f"releasing network {rec.name} in the cluster")
            await self._call(self.cluster.unpublish_network, rec.id, rec.name, what="removing the network from the cluster store")
        self._net_dir.delete(rec.id)
        self.networks.pop(rec.id, None)
        self.unavailable.pop(rec.id, None)
        self._net_locks.pop(rec.id, None)
        if not rec.predefined:
            self._emit(rec, "destroy")

    async def prune(self, filters: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
        await self.start()
        filters = dict(filters or {})
        views.check_filters(filters, views.PRUNE_FILTERS)
        until = 0
        if filters.get("until"):
            from pyd.engine.events import parse_timestamp

            until = parse_timestamp(filters["until"][0], name="until")
        deleted: list[str] = []
        for rec in sorted(self.networks.values(), key=lambda r: r.name):
            if rec.predefined or self.in_use(rec.id):
                continue
            if filters.get("label") and not views.labels_match(filters["label"], rec.labels):
                continue
            if filters.get("label!") and any(views.labels_match([v], rec.labels) for v in filters["label!"]):
                continue
            if until and parse_time(rec.created) > until:
                continue
            try:
                await self._delete_network(rec)
            except PydError as exc:
                log.warning("prune: cannot remove network %s: %s", rec.name, exc)
                continue
            deleted.append(rec.name)
        if deleted:
            self.events.emit("network", "prune", "", {"reclaimed": "0"})
        return {"NetworksDeleted": deleted or None}


# -- IPAM helpers (worker thread) --------------------------------------------------------------


def _check_ipam_configs(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Docker's checks of IPAM.Config, before any pool is requested."""
    out = []
    for cfg in configs:
        subnet = str(cfg.get("Subnet") or "").strip()
        ip_range = str(cfg.get("IPRange") or "").strip()
        gateway = str(cfg.get("Gateway") or "").strip()
        aux = cfg.get("AuxiliaryAddresses") or {}
        net = None
        if subnet:
            try:
                net = ipaddress.ip_network(subnet, strict=False)
            except ValueError:
                raise InvalidParameter(f'invalid subnet "{subnet}": not a CIDR (e.g. 172.28.0.0/16)') from None
            if net.version != 4:
                raise NotSupported(f"subnet {subnet}: pyd networks are IPv4 only")
        elif ip_range or gateway or aux:
            raise InvalidParameter("IPRange, Gateway and AuxiliaryAddresses need a Subnet")
        if ip_range:
            try:
                rng = ipaddress.ip_network(ip_range, strict=False)
            except ValueError:
                raise InvalidParameter(f'invalid ip-range "{ip_range}": not a CIDR') from None
            if net is not None and (rng.version != 4 or not rng.subnet_of(net)):  # type: ignore[arg-type]
                raise InvalidParameter(f"ip-range {ip_range} is not inside subnet {net}")
        if gateway:
            try:
                gw = ipaddress.ip_address(gateway.split("/", 1)[0])
            except ValueError:
                raise InvalidParameter(f'invalid gateway "{gateway}": not an IP address') from None
            if net is not None and gw not in net:
                raise InvalidParameter(f"no matching subnet for gateway {gateway}")
        if not isinstance(aux, Mapping):
            raise InvalidParameter("invalid AuxiliaryAddresses: expected an object of name: address")
        for host, addr in aux.items():
            try:
                ip = ipaddress.ip_address(str(addr))
            except ValueError:
                raise InvalidParameter(f'invalid auxiliary address "{addr}" for {host}') from None
            if net is not None and ip not in net:
                raise InvalidParameter(f"no matching subnet for aux-address {addr}")
        out.append({"Subnet": str(net) if net else "", "IPRange": ip_range, "Gateway": gateway.split("/", 1)[0],
                    "AuxiliaryAddresses": {str(k): str(v) for k, v in aux.items()}})
    # two configs of one network must not overlap either
    nets = [ipaddress.ip_network(c["Subnet"]) for c in out if c["Subnet"]]
    for i, a in enumerate(nets):
        for b in nets[i + 1:]:
            if a.overlaps(b):  # type: ignore[arg-type]
                raise InvalidParameter(f"subnets {a} and {b} overlap")
    return out or [{"Subnet": "", "IPRange": "", "Gateway": "", "AuxiliaryAddresses": {}}]


def _allocate_pools(
    ipam: Any, space: str, configs: list[dict[str, Any]], options: dict[str, str], auto: dict[str, str]
) -> list[PoolRecord]:
    """Request a pool, its gateway and auxiliary addresses per config; all or nothing."""
    pools: list[PoolRecord] = []
    try:
        for cfg in configs:
            opts = dict(options)
            if not cfg["Subnet"]:
                opts.update(auto)
            pool = ipam.request_pool(space, cfg["Subnet"], cfg["IPRange"], opts)
            rec = PoolRecord(
                pool_id=pool.pool_id,
                subnet=pool.subnet,
                ip_range=cfg["IPRange"] and str(ipaddress.ip_network(cfg["IPRange"], strict=False)),
                requested_subnet=cfg["Subnet"],
                requested_gateway=cfg["Gateway"],
            )
            pools.append(rec)
            rec.gateway = ipam.request_address(pool.pool_id, cfg["Gateway"], dict(IPAM_GATEWAY))
            for host, addr in cfg["AuxiliaryAddresses"].items():
                ipam.request_address(pool.pool_id, addr)
                rec.aux_addresses[host] = addr
    except BaseException:
        _release_pools(ipam, pools)
        raise
    return pools


def _release_pools(ipam: Any, pools: list[PoolRecord]) -> None:
    for p in pools:
        try:
            ipam.release_pool(p.pool_id)  # forgets the pool's addresses with it
        except NotFound:
            pass
