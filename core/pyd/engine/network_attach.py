"""Containers on networks: sandboxes, endpoints, published ports, the embedded DNS.

``NetworkAttachMixin`` is the container half of ``NetworkService``. What the container
service calls:

* ``register_container(spec)`` at create: checks the networks exist and the combination is
  allowed (Docker's messages), stores the container's network configuration;
* ``await attach_container(spec) -> Attached`` at start: a sandbox (netns at
  ``<exec-root>/netns/<container-id>``), one endpoint per network (``create_endpoint`` +
  ``join`` as eth0, eth1, ...; IPAM address, ``--ip``), published ports on the endpoint that
  gave the default route, the embedded DNS on user-defined networks. All or nothing: a
  failure (a host port in use, ...) undoes every step before it raises;
* ``await detach_container(id)`` when the container stops (or its start failed): everything
  of the run is released (ports, endpoints, addresses, DNS, netns); the configuration stays;
* ``await forget_container(id)`` at remove; ``container_renamed``;
* ``container_settings(id)`` / ``container_ports(id)``: ``NetworkSettings`` and ``ps``'s
  ``Ports`` (records only, no driver call);
* ``await reconcile(running_ids)`` after the container service restored its containers: the
  sandboxes of containers that died while the daemon was down are released.

``network connect``/``disconnect`` work on stopped containers (configuration only) and on
running ones (live endpoint, e.g. a new eth1).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from pyd.drivers.network import EndpointRequest, JoinRequest, netns_call
from pyd.engine import network_views as views
from pyd.engine.network_dns import DNS_ADDRESS, Resolver, SandboxDNS, make_listen_sockets
from pyd.engine.network_hostinfo import read_host_resolv_conf
from pyd.engine.network_ports import check_port_bindings, inspect_ports, list_ports, requested_bindings, to_records
from pyd.engine.network_records import Attachment, ContainerNet, EndpointRecord, NetworkRecord
from pyd.engine.network_sandbox import create_netns, is_netns, remove_netns
from pyd.errors import Conflict, Forbidden, InvalidParameter, NotFound, PydError, Unavailable

if TYPE_CHECKING:
    from pyd.engine.networks import NetworkService

log = logging.getLogger(__name__)

SHORT = 30.0
NONE_MODE_ERROR = "container cannot be connected to multiple networks with one of the networks in private (none) mode"
HOST_MODE_ERROR = "container cannot be disconnected from host network or connected to host network"
SHARED_NS_ERROR = "container sharing network namespace with another container or host cannot be connected to any other network"


@dataclass
class ContainerRef:
    """What the network service needs to know of a container (from the container service)."""

    id: str
    name: str
    running: bool = False
    network_mode: str = "default"
    hostname: str = ""


@dataclass
class ContainerNetSpec:
    """A container's networking as its create body gives it."""

    id: str
    name: str
    hostname: str = ""
    domainname: str = ""
    network_mode: str = "default"  # HostConfig.NetworkMode
    endpoints_config: Mapping[str, Any] = field(default_factory=dict)  # NetworkingConfig.EndpointsConfig
    port_bindings: Mapping[str, Any] = field(default_factory=dict)  # HostConfig.PortBindings
    publish_all: bool = False  # HostConfig.PublishAllPorts (-P)
    exposed_ports: Sequence[str] = ()  # Config.ExposedPorts keys
    dns: Sequence[str] = ()  # HostConfig.Dns
    dns_search: Sequence[str] = ()
    dns_options: Sequence[str] = ()
    links: Sequence[str] = ()  # HostConfig.Links: "name:alias" (or "/name:/ctr/alias")


@dataclass
class Attached:
    """The result of ``attach_container``, for the container's start."""

    netns_path: str | None  # the sandbox; None: the host's namespace (or container:X)
    host_network: bool = False
    ip: str = ""  # the container's address on its first network (for /etc/hosts)
    # resolv.conf content when the embedded DNS serves the container; None: the usual one
    resolv_conf: str | None = None
    hosts_entries: list[tuple[str, list[str]]] = field(default_factory=list)  # --link
    settings: dict[str, Any] = field(default_factory=dict)  # NetworkSettings


def _endpoint_config(value: Any, network: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidParameter(f"invalid EndpointsConfig for network {network}: expected an object")
    return dict(value)


class NetworkAttachMixin:
    # -- configuration --------------------------------------------------------------------------

    def _primary_network(self: NetworkService, mode: str) -> NetworkRecord:
        if mode in ("default", ""):
            for name in ("bridge", "none"):
                for rec in self.networks.values():
                    if rec.name == name and rec.predefined:
                        return rec
            raise NotFound("network bridge not found (the daemon runs with --bridge none and no none network)")
        return self.find(mode)

    def _is_user_defined(self: NetworkService, rec: NetworkRecord) -> bool:
        # the gateway bridge is the daemon's plumbing: no aliases, no names resolved through it
        return not rec.predefined and not rec.extra.get("gwbridge")

    def _make_attachment(self: NetworkService, rec: NetworkRecord, cfg: Mapping[str, Any], container_id: str) -> Attachment:
        aliases = [str(a) for a in cfg.get("Aliases") or []]
        links = [str(a) for a in cfg.get("Links") or []]
        ipam = cfg.get("IPAMConfig") or {}
        ipv4 = str(ipam.get("IPv4Address") or "") if isinstance(ipam, Mapping) else ""
        if not self._is_user_defined(rec):
            if aliases:
                raise InvalidParameter("network-scoped alias is supported only for containers in user defined networks")
            if ipv4:
                raise InvalidParameter("user specified IP address is supported on user defined networks only")
        if ipv4:
            try:
                ip = ipaddress.IPv4Address(ipv4)
            except ValueError:
                raise InvalidParameter(f'invalid IPv4 address "{ipv4}" for network {rec.name}') from None
            if not any(p.requested_subnet for p in rec.pools):
                raise InvalidParameter(
                    "user specified IP address is supported only when connecting to networks with user configured subnets"
                )
            if not any(ip in ipaddress.IPv4Network(p.subnet) for p in rec.pools):
                raise InvalidParameter(f"address {ipv4} is not in the subnets of network {rec.name}")
        short = container_id[:12]
        if self._is_user_defined(rec) and short not in aliases:
            aliases.append(short)  # Docker adds the short ID as an alias on user networks
        opts = cfg.get("DriverOpts") or {}
        return Attachment(
            network_id=rec.id, name=rec.name, aliases=aliases, ipv4=ipv4, links=links,
            driver_opts={str(k): str(v) for k, v in opts.items()} if isinstance(opts, Mapping) else {},
            mac=str(cfg.get("MacAddress") or ""),
        )

    def _build_cnet(self: NetworkService, spec: ContainerNetSpec) -> ContainerNet:
        mode = spec.network_mode or "default"
        cnet = ContainerNet(id=spec.id, name=spec.name, network_mode=mode, hostname=spec.hostname)
        self._update_cnet(cnet, spec)
        if mode.startswith("container:"):
            if spec.endpoints_config:
                raise InvalidParameter(SHARED_NS_ERROR)
            return cnet
        primary = self._primary_network(mode)
        configs = dict(spec.endpoints_config or {})
        primary_cfg = {}
        for key in (primary.name, primary.id, mode):
            if key in configs:
                primary_cfg = _endpoint_config(configs.pop(key), primary.name)
        cnet.attachments.append(self._make_attachment(primary, primary_cfg, spec.id))
        for key, value in configs.items():
            rec = self.find(key)
            if rec.id == primary.id:
                continue
            if primary.driver in ("null", "host") or rec.driver in ("null", "host"):
                raise InvalidParameter(NONE_MODE_ERROR if "null" in (primary.driver, rec.driver) else HOST_MODE_ERROR)
            cnet.attachments.append(self._make_attachment(rec, _endpoint_config(value, key), spec.id))
        return cnet

    @staticmethod
    def _update_cnet(cnet: ContainerNet, spec: ContainerNetSpec) -> None:
        check_port_bindings(spec.port_bindings)
        cnet.name = spec.name
        cnet.hostname = spec.hostname
        cnet.port_bindings = dict(spec.port_bindings or {})
        cnet.publish_all = bool(spec.publish_all)
        cnet.exposed_ports = list(spec.exposed_ports or [])
        cnet.dns = [d for d in spec.dns or []]
        cnet.links = [str(x) for x in spec.links or []]

    def _save_cnet(self: NetworkService, cnet: ContainerNet, *, durable: bool = True) -> None:
        # durable=False: only the run's state changed (sandbox, endpoints); see network_records
        if cnet.id in self.cnets:
            self._ctr_dir.save(cnet.id, cnet, durable=durable)

    def register_container(self: NetworkService, spec: ContainerNetSpec) -> None:
        """At container create: validate the networking (NotFound names a missing network)
        and store it. No kernel object is made. Sync: records only."""
        cnet = self._build_cnet(spec)
        self.cnets[cnet.id] = cnet
        self._save_cnet(cnet)

    def prepare_registration(self: NetworkService, spec: ContainerNetSpec) -> Registration:
        """``register_container`` in three steps, so that its durable write (two fsyncs) runs
        in the create's worker thread next to the container's own record, not on the event
        loop: validate now (NotFound names a missing network), ``write()`` in any thread once
        the container exists on disk, ``commit()`` on the loop when the create succeeded."""
        cnet = self._build_cnet(spec)
        return Registration(self, cnet, self._ctr_dir.writer(cnet.id, cnet))

    def _forget_record(self: NetworkService, container_id: str) -> None:
        self._ctr_dir.delete(container_id)

    def container_renamed(self: NetworkService, container_id: str, name: str) -> None:
        cnet = self.cnets.get(container_id)
        if cnet is not None:
            cnet.name = name
            self._save_cnet(cnet)

    # -- attach / detach ----------------------------------------------------------------------------

    async def attach_container(self: NetworkService, spec: ContainerNetSpec) -> Attached:
        """At container start: sandbox, endpoints, ports, DNS. See the module docstring."""
        await self.start()
        async with self._ctr_lock(spec.id):
            cnet = self.cnets.get(spec.id)
            if cnet is None:
                cnet = self._build_cnet(spec)
                self.cnets[cnet.id] = cnet
            else:
                self._update_cnet(cnet, spec)
            if cnet.endpoints or cnet.sandbox:
                await self._teardown(cnet)  # left over from a run the daemon did not see end
            if cnet.network_mode.startswith("container:"):
                self._save_cnet(cnet, durable=False)
                return Attached(netns_path=None)
            for att in cnet.attachments:
                if att.network_id not in self.networks:
                    raise NotFound(f"network {att.name or att.network_id} not found")
            host = any(self.networks[a.network_id].driver == "host" for a in cnet.attachments) or any(
                getattr(self._drv_quiet(self.networks[a.network_id]), "shares_host_netns", False) for a in cnet.attachments
            )
            try:
                if not host:
                    # not recorded yet: a crash from here on leaves a netns file that the next
                    # start sweeps (``_recover_sandboxes``), and endpoint records it undoes
                    path = str(self.netns_dir / cnet.id)
                    await self._call(create_netns, path, what="creating the container's network namespace")
                    cnet.sandbox, cnet.sandbox_id = path, secrets.token_hex(32)
                for att in cnet.attachments:
                    await self._join(cnet, att)
                if not host and self._needs_gateway_bridge(cnet):
                    gw = await self.gateway_bridge()
                    await self._join(cnet, Attachment(network_id=gw.id, name=gw.name))
                await self._publish(cnet)
                if not host and self._wants_dns(cnet):
                    await self._start_dns(cnet)
                result = Attached(
                    netns_path=cnet.sandbox or None,
                    host_network=host,
                    ip=self._first_ip(cnet),
                    resolv_conf=self._resolv_conf(spec) if cnet.id in self._dns else None,
                    hosts_entries=self._link_entries(cnet),
                )
                self._save_cnet(cnet, durable=False)
            except BaseException:
                await asyncio.shield(self._teardown(cnet, emit=False))
                raise
            for nid in cnet.endpoints:
                rec = self.networks.get(nid)
                if rec is not None:
                    self._emit(rec, "connect", container=cnet.id)
            result.settings = self.container_settings(cnet.id)
            return result

    def _needs_gateway_bridge(self: NetworkService, cnet: ContainerNet) -> bool:
        """Docker's rule: a container whose networks give it no default route, but one of them
        wants a way out (overlay, not internal), also joins the local gateway bridge."""
        if any(self.endpoints[e].gateway for e in cnet.endpoints.values() if e in self.endpoints):
            return False
        for nid in cnet.endpoints:
            rec = self.networks.get(nid)
            if rec is not None and not rec.internal and getattr(self._drv_quiet(rec), "needs_gateway_bridge", False):
                return True
        return False

    def _drv_quiet(self: NetworkService, rec: NetworkRecord) -> Any:
        try:
            return self._driver_for(rec)
        except PydError:
            return None

    async def detach_container(self: NetworkService, container_id: str) -> None:
        """When the container stopped (or its start failed): release the run's networking.
        Idempotent; failures of single steps are logged, the rest still runs."""
        async with self._ctr_lock(container_id):
            cnet = self.cnets.get(container_id)
            if cnet is not None and (cnet.endpoints or cnet.sandbox):
                await self._teardown(cnet)

    async def forget_container(self: NetworkService, container_id: str) -> None:
        """At container remove: detach and drop its configuration."""
        await self.detach_container(container_id)
        self.cnets.pop(container_id, None)
        self._ctr_dir.delete(container_id)
        self._ctr_locks.pop(container_id, None)

    async def reconcile(self: NetworkService, running: Iterable[str]) -> None:
        """After the container service's restore: release what belongs to containers that are
        no longer running; drop endpoints of containers nobody knows."""
        await self.start()
        alive = set(running)
        for cid, cnet in list(self.cnets.items()):
            if cid not in alive and (cnet.endpoints or cnet.sandbox):
                await self.detach_container(cid)

    async def _recover_sandboxes(self: NetworkService) -> None:
        """At start: sandboxes whose namespace is gone (host reboot, exec-root wiped) are
        released; endpoints of no known container too. The rest waits for ``reconcile``."""
        for cnet in list(self.cnets.values()):
            if cnet.sandbox and not is_netns(cnet.sandbox):
                await self._teardown(cnet, emit=False)
            elif cnet.sandbox and self._wants_dns(cnet):
                try:  # a live-restored container keeps its resolver
                    await self._start_dns(cnet)
                except Exception as exc:
                    log.warning("cannot restart the embedded DNS of container %s: %s", cnet.id[:12], exc)
        known = {(c.id, eid) for c in self.cnets.values() for eid in c.endpoints.values()}
        for ep in list(self.endpoints.values()):
            if (ep.container_id, ep.id) not in known:
                await self._leave(ep, emit=False)
        # namespaces of starts that a crash interrupted before they were recorded
        in_use = {c.sandbox for c in self.cnets.values() if c.sandbox}
        if self.netns_dir.is_dir():
            for entry in self.netns_dir.iterdir():
                if str(entry) not in in_use:
                    try:
                        await self._call(remove_netns, str(entry))
                    except Exception as exc:
                        log.warning("cannot remove the stale network namespace %s: %s", entry, exc)

    # -- endpoints ------------------------------------------------------------------------------------

    def _next_ifname(self: NetworkService, cnet: ContainerNet) -> str:
        used = {self.endpoints[e].ifname for e in cnet.endpoints.values() if e in self.endpoints}
        n = 0
        while f"eth{n}" in used:
            n += 1
        return f"eth{n}"

    async def _join(self: NetworkService, cnet: ContainerNet, att: Attachment) -> EndpointRecord:
        rec = self.networks.get(att.network_id)
        if rec is None:
            raise NotFound(f"network {att.name or att.network_id} not found")
        drv = self._driver_for(rec)
        ep = EndpointRecord(
            id=secrets.token_hex(32), network_id=rec.id, container_id=cnet.id,
            ifname=self._next_ifname(cnet) if cnet.sandbox else "", sandbox=cnet.sandbox,
            aliases=list(att.aliases),
        )
        if rec.pools:
            pool = self._pool_for(rec, att.ipv4)
            allocator = self.ipam(rec.ipam_driver)
            ep.pool_id = pool.pool_id
            ep.address = await self._call(allocator.request_address, pool.pool_id, att.ipv4, what="allocating an address")
        # Recorded before the driver is called: whatever a crash interrupts is found and undone
        # (an endpoint its container's record does not list yet is an orphan at the next start).
        self.endpoints[ep.id] = ep
        cnet.endpoints[rec.id] = ep.id
        # durable when it holds an address: the IPAM's allocation is, and must be released once
        self._ep_dir.save(ep.id, ep, durable=bool(ep.address))
        try:
            async with self._net_lock(rec.id):
                info = await self._call(
                    drv.create_endpoint,
                    EndpointRequest(rec.id, ep.id, ep.address, att.mac, dict(att.driver_opts)),
                    what=f"creating an endpoint on network {rec.name}",
                )
                ep.mac = info.mac_address
                res = await self._call(
                    drv.join, JoinRequest(rec.id, ep.id, cnet.sandbox, ep.ifname),
                    what=f"joining network {rec.name}",
                )
            ep.joined = True
            ep.gateway = res.gateway
            self._ep_dir.save(ep.id, ep, durable=False)
            if rec.scope == "global":
                await self._call(self.cluster.publish_endpoint, rec.id, ep.id, self._endpoint_entry(ep),
                                 what="publishing the endpoint in the cluster store")
        except BaseException:
            await asyncio.shield(self._leave(ep, emit=False))
            raise
        return ep

    def _pool_for(self: NetworkService, rec: NetworkRecord, ipv4: str) -> Any:
        if ipv4:
            ip = ipaddress.IPv4Address(ipv4)
            for p in rec.pools:
                if ip in ipaddress.IPv4Network(p.subnet):
                    return p
            raise InvalidParameter(f"address {ipv4} is not in the subnets of network {rec.name}")
        return rec.pools[0]

    async def _leave(self: NetworkService, ep: EndpointRecord, *, emit: bool = True, save: bool = True) -> None:
        """Undo one endpoint: ports, join, endpoint, address, records. Each step isolated."""
        rec = self.networks.get(ep.network_id)
        drv = self._drv_quiet(rec) if rec is not None else None
        if drv is not None and rec is not None:
            async with self._net_lock(rec.id):
                steps = []
                if ep.ports:
                    steps.append(("revoke_external_connectivity", drv.revoke_external_connectivity))
                if ep.joined:
                    steps.append(("leave", drv.leave))
                steps.append(("delete_endpoint", drv.delete_endpoint))
                for what, fn in steps:
                    try:
                        await self._call(fn, rec.id, ep.id, what=f"{what} on network {rec.name}")
                    except Exception as exc:
                        log.warning("%s of endpoint %s on network %s failed: %s", what, ep.id[:12], rec.name, exc,
                                    extra={"driver": f"network:{rec.driver}"})
        if rec is not None and rec.scope == "global":
            await self._call(self.cluster.withdraw_endpoint, rec.id, ep.id, what="withdrawing the endpoint")
        if ep.address and ep.pool_id and rec is not None:
            try:
                allocator = self.ipam(rec.ipam_driver)
                await self._call(allocator.release_address, ep.pool_id, ep.address)
            except NotFound:
                pass  # the pool is gone with its network
            except Unavailable as exc:
                if rec.scope != "global":
                    log.warning("cannot release address %s of network %s: %s", ep.address, rec.name, exc)
                else:  # the cluster store is away: released when it is back, never leaked
                    log.warning("cannot release address %s of network %s now (retried when the cluster store "
                                "is back): %s", ep.address, rec.name, exc)
                    self.cluster.defer(f"releasing address {ep.address} of network {rec.name}",
                                       self.ipam(rec.ipam_driver).release_address, ep.pool_id, ep.address)
            except Exception as exc:
                log.warning("cannot release address %s of network %s: %s", ep.address, rec.name, exc)
        self.endpoints.pop(ep.id, None)
        self._ep_dir.delete(ep.id)
        cnet = self.cnets.get(ep.container_id)
        if cnet is not None and cnet.endpoints.get(ep.network_id) == ep.id:
            del cnet.endpoints[ep.network_id]
            if save:
                self._save_cnet(cnet, durable=False)
        if emit and rec is not None:
            self._emit(rec, "disconnect", container=ep.container_id)

    async def _teardown(self: NetworkService, cnet: ContainerNet, *, emit: bool = True) -> None:
        try:
            await self._stop_dns(cnet.id)
        except Exception as exc:  # never a reason to keep the rest of the sandbox
            log.warning("cannot stop the embedded DNS of container %s: %s", cnet.id[:12], exc)
        for nid, eid in reversed(list(cnet.endpoints.items())):
            ep = self.endpoints.get(eid)
            if ep is not None:
                await self._leave(ep, emit=emit, save=False)  # saved once below
            cnet.endpoints.pop(nid, None)
        if cnet.sandbox:
            try:
                await self._call(remove_netns, cnet.sandbox, what="removing the container's network namespace")
            except Exception as exc:
                log.warning("cannot remove network namespace %s: %s", cnet.sandbox, exc)
        cnet.sandbox = cnet.sandbox_id = ""
        self._save_cnet(cnet, durable=False)

    def _gateway_endpoint(self: NetworkService, cnet: ContainerNet) -> EndpointRecord | None:
        """The endpoint that gave the default route (published ports go there, as Docker's)."""
        for eid in cnet.endpoints.values():  # in join order; the gateway bridge comes last
            ep = self.endpoints.get(eid)
            if ep is not None and ep.gateway:
                return ep
        return None

    async def _publish(self: NetworkService, cnet: ContainerNet) -> None:
        if not cnet.port_bindings and not cnet.publish_all:
            return
        bindings = await self._call(
            partial(requested_bindings, cnet.port_bindings, publish_all=cnet.publish_all, exposed_ports=cnet.exposed_ports)
        )
        if not bindings:
            return
        ep = self._gateway_endpoint(cnet)
        if ep is None:
            log.info("container %s publishes ports but has no network with a way out", cnet.id[:12])
            return
        rec = self.networks[ep.network_id]
        drv = self._driver_for(rec)
        async with self._net_lock(rec.id):
            done = await self._call(
                drv.program_external_connectivity, rec.id, ep.id, bindings, what=f"publishing ports on network {rec.name}"
            )
        ep.ports = to_records(done)
        self._ep_dir.save(ep.id, ep, durable=False)

    def _first_ip(self: NetworkService, cnet: ContainerNet) -> str:
        for att in cnet.attachments:
            ep = self.endpoints.get(cnet.endpoints.get(att.network_id, ""))
            if ep is not None and ep.ip:
                return ep.ip
        return ""

    def _link_entries(self: NetworkService, cnet: ContainerNet) -> list[tuple[str, list[str]]]:
        """/etc/hosts lines for ``--link name:alias`` (the target must run and share a network)."""
        out: list[tuple[str, list[str]]] = []
        for link in cnet.links:
            target, _, alias = link.partition(":")
            target = target.strip("/")
            alias = alias.rsplit("/", 1)[-1] if alias else target
            other = next((c for c in self.cnets.values() if c.name == target or c.id == target), None)
            ip = ""
            if other is not None:
                for nid in cnet.endpoints:
                    ep = self.endpoints.get(other.endpoints.get(nid, ""))
                    if ep is not None and ep.ip:
                        ip = ep.ip
                        break
            if not ip:
                raise Conflict(f"Cannot link to a non running container: /{target} AS /{cnet.name}/{alias}")
            names = [alias] + ([target] if target != alias else [])
            out.append((ip, names))
        return out

    # -- connect / disconnect ---------------------------------------------------------------------------

    def _lookup(self: NetworkService, ref: str) -> ContainerRef:
        if self.container_lookup is not None:
            return self.container_lookup(ref)
        for c in self.cnets.values():  # without a container service (tests): registered ones
            if ref in (c.id, c.name) or (len(ref) >= 3 and c.id.startswith(ref)):
                return ContainerRef(c.id, c.name, bool(c.sandbox or c.endpoints), c.network_mode, c.hostname)
        raise NotFound(f"No such container: {ref}")

    async def connect(self: NetworkService, network: str, container: str, endpoint_config: Mapping[str, Any] | None = None) -> None:
        """``POST /networks/{id}/connect``."""
        await self.start()
        rec = self.find(network)
        ref = self._lookup(container)
        async with self._ctr_lock(ref.id):
            cnet = self.cnets.get(ref.id)
            if cnet is None:
                cnet = self._build_cnet(ContainerNetSpec(ref.id, ref.name, ref.hostname, network_mode=ref.network_mode))
                self.cnets[cnet.id] = cnet
            mode = cnet.network_mode
            if mode.startswith("container:"):
                raise InvalidParameter(SHARED_NS_ERROR)
            drivers = {self.networks[a.network_id].driver for a in cnet.attachments if a.network_id in self.networks}
            if "null" in drivers or rec.driver == "null":
                raise InvalidParameter(NONE_MODE_ERROR)
            if "host" in drivers or rec.driver == "host":
                raise InvalidParameter(HOST_MODE_ERROR)
            if cnet.attachment(rec.id) is not None:
                raise Forbidden(f"endpoint with name {ref.name} already exists in network {rec.name}")
            att = self._make_attachment(rec, _endpoint_config(endpoint_config, rec.name), ref.id)
            cnet.attachments.append(att)
            live = ref.running and bool(cnet.sandbox)
            try:
                if live:
                    await self._join(cnet, att)
                    if self._wants_dns(cnet) and cnet.id not in self._dns:
                        await self._start_dns(cnet)
            except BaseException:
                cnet.attachments.remove(att)
                self._save_cnet(cnet)
                raise
            self._save_cnet(cnet)
        if live:
            self._emit(rec, "connect", container=ref.id)

    async def disconnect(self: NetworkService, network: str, container: str, force: bool = False) -> None:
        """``POST /networks/{id}/disconnect``."""
        await self.start()
        rec = self.find(network)
        ref = self._lookup(container)
        async with self._ctr_lock(ref.id):
            cnet = self.cnets.get(ref.id)
            att = cnet.attachment(rec.id) if cnet is not None else None
            if cnet is None or att is None:
                raise PydError(f"container {ref.id} is not connected to network {rec.name}")
            if rec.driver == "host":
                raise InvalidParameter(HOST_MODE_ERROR)
            ep = self.endpoints.get(cnet.endpoints.get(rec.id, ""))
            if ep is not None:
                await self._leave(ep)
            cnet.attachments.remove(att)
            self._save_cnet(cnet)

    # -- embedded DNS ---------------------------------------------------------------------------------

    def _wants_dns(self: NetworkService, cnet: ContainerNet) -> bool:
        """Docker's rule: the embedded DNS serves containers on user-defined networks."""
        return any(
            nid in self.networks and self._is_user_defined(self.networks[nid]) for nid in cnet.endpoints
        )

    async def _start_dns(self: NetworkService, cnet: ContainerNet) -> None:
        if cnet.id in self._dns or not cnet.sandbox:
            return
        udp, tcp = await self._call(netns_call, cnet.sandbox, make_listen_sockets, what="opening the embedded DNS")
        cid = cnet.id
        resolver = Resolver(
            lookup=partial(self.dns_lookup, cid),
            reverse=partial(self.dns_reverse, cid),
            upstreams=partial(self.dns_upstreams, cid),
            forward=partial(self.dns_may_forward, cid),
        )
        server = SandboxDNS(resolver)
        await server.start(udp, tcp)
        self._dns[cid] = server

    async def _stop_dns(self: NetworkService, container_id: str) -> None:
        server = self._dns.pop(container_id, None)
        if server is not None:
            await server.close()

    def _shared_user_networks(self: NetworkService, container_id: str) -> list[NetworkRecord]:
        cnet = self.cnets.get(container_id)
        if cnet is None:
            return []
        return [self.networks[n] for n in cnet.endpoints if n in self.networks and self._is_user_defined(self.networks[n])]

    def dns_lookup(self: NetworkService, container_id: str, qname: str) -> list[str]:
        """IPv4 addresses of ``qname`` as seen from the container: names, aliases and short
        IDs of containers on its user-defined networks (also ``NAME.NETWORK``)."""
        qname = qname.lower().rstrip(".")
        ips: list[str] = []
        for net in self._shared_user_networks(container_id):
            suffix = "." + net.name.lower()
            name = qname[: -len(suffix)] if qname.endswith(suffix) else qname
            for ep in self.endpoints.values():
                if ep.network_id != net.id or not ep.ip:
                    continue
                other = self.cnets.get(ep.container_id)
                if other is None:
                    continue
                att = other.attachment(net.id)
                names = {other.name.lower(), other.id[:12]}
                names.update(a.lower() for a in (att.aliases if att else []))
                if name in names and ep.ip not in ips:
                    ips.append(ep.ip)
            if net.scope == "global":  # containers on the other hosts of the cluster
                for entry in self.cluster.remote_endpoints(net.id):
                    names = {str(entry.get("name", "")).lower(), str(entry.get("container_id", ""))[:12]}
                    names.update(str(a).lower() for a in entry.get("aliases") or [])
                    ip = str(entry.get("ip", ""))
                    if ip and name in names and ip not in ips:
                        ips.append(ip)
        return ips

    def dns_reverse(self: NetworkService, container_id: str, ip: str) -> str | None:
        for net in self._shared_user_networks(container_id):
            for ep in self.endpoints.values():
                if ep.network_id == net.id and ep.ip == ip:
                    other = self.cnets.get(ep.container_id)
                    if other is not None:
                        return f"{other.name}.{net.name}"
            if net.scope == "global":
                for entry in self.cluster.remote_endpoints(net.id):
                    if entry.get("ip") == ip and entry.get("name"):
                        return f"{entry['name']}.{net.name}"
        return None

    def dns_upstreams(self: NetworkService, container_id: str) -> list[str]:
        """The container's ``--dns``, else the daemon's ``dns``, else the host's servers."""
        cnet = self.cnets.get(container_id)
        servers = list(cnet.dns) if cnet is not None and cnet.dns else list(self.config.dns)
        if not servers:
            servers = read_host_resolv_conf()[0]
        return [s for s in servers if s != DNS_ADDRESS]

    def dns_may_forward(self: NetworkService, container_id: str) -> bool:
        """No forwarding for a container whose networks are all internal (no way out)."""
        cnet = self.cnets.get(container_id)
        if cnet is None:
            return False
        nets = [self.networks[n] for n in cnet.endpoints if n in self.networks]
        return any(not n.internal for n in nets)

    def _resolv_conf(self: NetworkService, spec: ContainerNetSpec) -> str:
        """resolv.conf of a container served by the embedded DNS (Docker's: 127.0.0.11,
        the search domains and options kept, ``ndots:0`` unless an ndots is given)."""
        _, host_search, host_options = read_host_resolv_conf()
        search = list(spec.dns_search) or list(self.config.dns_search) or host_search
        options = list(spec.dns_options) or list(self.config.dns_opts) or host_options
        if not any(o.startswith("ndots:") for o in options):
            options = ["ndots:0"] + options
        lines = []
        if search and search != ["."]:
            lines.append("search " + " ".join(search))
        lines.append(f"nameserver {DNS_ADDRESS}")
        lines.append("options " + " ".join(options))
        return "\n".join(lines) + "\n"

    # -- what inspect shows -----------------------------------------------------------------------------

    def container_settings(self: NetworkService, container_id: str) -> dict[str, Any]:
        """Docker's ``NetworkSettings`` of a container (records only)."""
        doc = views.empty_settings()
        cnet = self.cnets.get(container_id)
        if cnet is None:
            return doc
        live = bool(cnet.sandbox or cnet.endpoints)
        if live:
            doc["SandboxID"] = cnet.sandbox_id
            doc["SandboxKey"] = cnet.sandbox
        published = []
        for att in cnet.attachments:
            rec = self.networks.get(att.network_id)
            ep = self.endpoints.get(cnet.endpoints.get(att.network_id, ""))
            entry = views.endpoint_settings(rec, att, ep)
            doc["Networks"][rec.name if rec else (att.name or att.network_id)] = entry
            if ep is not None:
                published += ep.ports
                if rec is not None and rec.extra.get("default_bridge"):
                    for key in ("EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "MacAddress"):
                        doc[key] = entry[key]
        if live:
            doc["Ports"] = inspect_ports(published, cnet.exposed_ports)
        return doc

    def container_ports(self: NetworkService, container_id: str) -> list[dict[str, Any]]:
        """``Ports`` of ``GET /containers/json``."""
        cnet = self.cnets.get(container_id)
        if cnet is None:
            return []
        published = [p for e in cnet.endpoints.values() if e in self.endpoints for p in self.endpoints[e].ports]
        return list_ports(published, cnet.exposed_ports if (cnet.sandbox or cnet.endpoints) else [])


class Registration:
    """A container's network record between ``prepare_registration`` and ``commit``."""

    def __init__(self, service: Any, cnet: ContainerNet, write: Any) -> None:
        self._service, self.cnet, self._write = service, cnet, write

    def write(self) -> None:
        """The durable write of the record (any thread)."""
        self._write()

    def discard(self) -> None:
        """The create failed after ``write``: no record stays (any thread)."""
        self._service._forget_record(self.cnet.id)

    def commit(self) -> None:
        """The container exists: the service knows its networking from now on (event loop)."""
        self._service.cnets[self.cnet.id] = self.cnet
