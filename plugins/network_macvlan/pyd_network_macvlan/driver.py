"""The ``macvlan`` network driver: ``NetworkDriver`` + ``NetworkRestorer``.

A network is a parent interface (``-o parent=IFACE``) and a mode; each endpoint is a macvlan
sub-interface of the parent, made on the host at ``create_endpoint`` and moved into the
sandbox at ``join``. Containers appear on the parent's link as hosts of their own (own MAC),
so the gateway is a router on that link, not the host; no NAT and no published ports.

* ``parent=IFACE.VID``: the 802.1q sub-interface ``IFACE.VID`` is used if it exists, else
  pyd creates it (and removes it with the network). Kernels without VLAN support (8021q)
  fail with ``NotSupported`` naming it.
* No parent: as Docker, a dummy parent is made and the network has no way out (internal).
* ``internal``: no default route in the sandboxes.
* Modes: ``bridge`` (default; sub-interfaces of one parent talk directly), ``private`` (they
  cannot), ``vepa`` (through the external switch, which must hairpin), ``passthru`` (one
  endpoint that takes over the parent; it keeps the parent's MAC).

State (parent, what pyd created, endpoints) is one JSON file per network in ``home``.
"""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

from pyroute2 import IPRoute, NetlinkError

from pyd.drivers.netlink import delete_link, lookup
from pyd.drivers.network import (
    EndpointInfo,
    EndpointRequest,
    JoinRequest,
    JoinResult,
    NetworkContext,
    NetworkCreateRequest,
    NoExternalConnectivity,
    check_endpoint_address,
    check_name_prefix,
    check_sandbox,
    endpoint_alias,
    endpoint_mac,
    gateway_cidrs,
    gateway_for,
    known_endpoint,
    known_network,
    netns_call,
    short_id,
)
from pyd.drivers.state import JsonRecords
from pyd.errors import Conflict, InvalidParameter, NotFound, NotSupported

from pyd_network_macvlan import options
from pyd_network_macvlan.sandbox import sandbox_configure, sandbox_has, sandbox_remove

log = logging.getLogger(__name__)

NAME = "macvlan"


@dataclass
class Endpoint:
    endpoint_id: str
    address: str
    mac: str
    link: str  # the sub-interface's name while on the host
    netns: str = ""
    ifname: str = ""


@dataclass
class Network:
    network_id: str
    name: str
    parent: str
    mode: str
    internal: bool
    gateways: list[str]
    created_parent: str = ""  # "vlan" or "dummy": pyd made the parent and removes it
    endpoints: dict[str, Endpoint] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> Network:
        eps = {k: Endpoint(**v) for k, v in d.get("endpoints", {}).items()}
        return cls(**{**d, "endpoints": eps})


def _missing_feature(exc: NetlinkError) -> bool:
    return exc.code in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EAFNOSUPPORT)


class MacvlanDriver(NoExternalConnectivity):
    """Containers on macvlan are reachable at their own addresses: no ports to publish."""

    name = NAME
    scope = "local"

    def __init__(self, home: Path, context: NetworkContext) -> None:
        self.prefix = check_name_prefix(NAME, context.name_prefix)
        self.records = JsonRecords(Path(home) / "networks", owner=f"network:{NAME}")
        self.networks: dict[str, Network] = {
            net.network_id: net for net in self.records.load_all(Network.from_json)
        }
        self._lock = threading.RLock()

    def parse_options(self, raw: Mapping[str, str]) -> Mapping[str, object]:
        return options.parse_options(raw)

    # -- state ----------------------------------------------------------------------------

    def _save(self, net: Network) -> None:
        self.records.save(net.network_id, asdict(net))
        self.networks[net.network_id] = net

    def _forget(self, network_id: str) -> None:
        self.networks.pop(network_id, None)
        self.records.delete(network_id)

    def _network(self, network_id: str) -> Network:
        return known_network(self.networks, network_id, NAME)

    def _short(self, ident: str) -> str:
        return short_id(ident, options.IFNAMSIZ - len(self.prefix) - 1)

    # -- networks -------------------------------------------------------------------------

    def _new(self, req: NetworkCreateRequest) -> Network:
        opts = options.coerce_options(req.options)
        gateways = gateway_cidrs(req, f'macvlan network "{req.name}"')
        parent = str(opts.get(options.PARENT, ""))
        return Network(
            network_id=req.network_id,
            name=req.name,
            parent=parent or f"{self.prefix}d{self._short(req.network_id)}",
            mode=str(opts.get(options.MODE, "bridge")),
            # Docker: a macvlan network without a parent has no way out.
            internal=req.internal or not parent,
            gateways=gateways,
            created_parent="" if parent else "dummy",
        )

    def create_network(self, req: NetworkCreateRequest) -> None:
        if not req.ipv4:
            raise InvalidParameter(f'macvlan network "{req.name}": needs an IPv4 pool (subnet and gateway)')
        with self._lock:
            old = self.networks.get(req.network_id)
            net = self._new(req)
            if old is not None:
                net.created_parent, net.endpoints = old.created_parent or net.created_parent, old.endpoints
            for other in self.networks.values():
                if other.network_id != net.network_id and other.parent == net.parent:
                    raise Conflict(
                        f'macvlan network "{net.name}": network "{other.name}" is already using '
                        f"parent interface {net.parent}"
                    )
            try:
                self._ensure_parent(net)
            except BaseException:
                if old is None:
                    self._remove_parent(net)
                    self._forget(net.network_id)
                raise

    def restore_network(self, req: NetworkCreateRequest) -> None:
        with self._lock:
            old = self.networks.get(req.network_id)
            net = self._new(req)
            if old is not None:
                net.created_parent, net.endpoints = old.created_parent or net.created_parent, old.endpoints
            self._ensure_parent(net)

    def _ensure_parent(self, net: Network) -> None:
        with IPRoute() as ipr:
            if lookup(ipr, net.parent) is not None:
                self._save(net)
                return
            base, vid = options.split_vlan(net.parent)
            if net.created_parent == "dummy":
                self._save(net)  # from now on delete_network knows to remove it
                try:
                    ipr.link("add", ifname=net.parent, kind="dummy")
                except NetlinkError as exc:
                    if _missing_feature(exc):
                        raise NotSupported(
                            f'macvlan network "{net.name}": without -o parent pyd makes a dummy parent '
                            "interface, but this kernel has no dummy interface support (module dummy); "
                            "give -o parent=IFACE"
                        ) from exc
                    raise
            elif vid:
                base_index = lookup(ipr, base)
                if base_index is None:
                    raise InvalidParameter(
                        f'macvlan network "{net.name}": -o parent={net.parent}: interface {base} '
                        "was not found on the host"
                    )
                net.created_parent = "vlan"
                self._save(net)
                try:
                    ipr.link("add", ifname=net.parent, kind="vlan", link=base_index, vlan_id=vid)
                except NetlinkError as exc:
                    if _missing_feature(exc):
                        raise NotSupported(
                            f'macvlan network "{net.name}": -o parent={net.parent} needs an 802.1q VLAN '
                            "sub-interface, but this kernel has no VLAN support (kernel module 8021q)"
                        ) from exc
                    raise
            else:
                raise InvalidParameter(
                    f'macvlan network "{net.name}": -o parent interface {net.parent} was not found on the host'
                )
            index = lookup(ipr, net.parent)
            assert index is not None
            ipr.link("set", index=index, state="up")

    def _remove_parent(self, net: Network) -> None:
        if net.created_parent:
            with IPRoute() as ipr:
                delete_link(ipr, net.parent)

    def delete_network(self, network_id: str) -> None:
        with self._lock:
            net = self.networks.get(network_id)
            if net is None:
                return
            for ep in list(net.endpoints.values()):
                self._drop_endpoint(ep)
            self._remove_parent(net)
            self._forget(network_id)

    # -- endpoints ------------------------------------------------------------------------

    def create_endpoint(self, req: EndpointRequest) -> EndpointInfo:
        with self._lock:
            net = self._network(req.network_id)
            iface = check_endpoint_address(f'macvlan network "{net.name}"', req.address, net.gateways)
            mac = endpoint_mac(req)
            ep = Endpoint(req.endpoint_id, str(iface), mac, f"{self.prefix}m{self._short(req.endpoint_id)}")
            net.endpoints[ep.endpoint_id] = ep
            self._save(net)
            try:
                ep.mac = self._make_link(net, ep)
            except BaseException:
                net.endpoints.pop(ep.endpoint_id, None)
                self._save(net)
                raise
            self._save(net)
            return EndpointInfo(mac_address=ep.mac)

    def _make_link(self, net: Network, ep: Endpoint) -> str:
        with IPRoute() as ipr:
            parent = lookup(ipr, net.parent)
            if parent is None:
                raise NotFound(f'macvlan network "{net.name}": parent interface {net.parent} is gone')
            delete_link(ipr, ep.link)  # a leftover of an interrupted attempt
            kwargs = {} if net.mode == "passthru" else {"address": ep.mac}  # passthru keeps the parent's MAC
            try:
                ipr.link("add", ifname=ep.link, kind="macvlan", link=parent, macvlan_mode=net.mode, **kwargs)
            except NetlinkError as exc:
                if exc.code == errno.EINVAL and net.mode == "passthru":
                    raise Conflict(
                        f'macvlan network "{net.name}": parent {net.parent} is in passthru mode and '
                        "already has its one endpoint"
                    ) from exc
                raise
            index = lookup(ipr, ep.link)
            assert index is not None
            ipr.link("set", index=index, ifalias=endpoint_alias(ep.endpoint_id))
            return str(ipr.get_links(index)[0].get("address"))

    def delete_endpoint(self, network_id: str, endpoint_id: str) -> None:
        with self._lock:
            net = self.networks.get(network_id)
            if net is None or endpoint_id not in net.endpoints:
                return
            self._drop_endpoint(net.endpoints[endpoint_id])
            net.endpoints.pop(endpoint_id, None)
            self._save(net)

    def _drop_endpoint(self, ep: Endpoint) -> None:
        if ep.netns:
            self._leave_sandbox(ep)
        with IPRoute() as ipr:
            delete_link(ipr, ep.link)

    # -- sandbox --------------------------------------------------------------------------

    def join(self, req: JoinRequest) -> JoinResult:
        with self._lock:
            net = self._network(req.network_id)
            ep = known_endpoint(net, req.endpoint_id, NAME)
            check_sandbox(f'macvlan network "{net.name}"', req.netns_path)
            alias = endpoint_alias(ep.endpoint_id)
            with IPRoute() as ipr:
                index = lookup(ipr, ep.link)
                if index is None and not netns_call(req.netns_path, lambda: sandbox_has(alias)):
                    self._make_link(net, ep)  # left earlier (leave deletes it): make it again
                    index = lookup(ipr, ep.link)
                if index is not None:
                    ipr.link("set", index=index, net_ns_fd=req.netns_path)
            gateway = "" if net.internal else gateway_for(ep.address, net.gateways)
            try:
                netns_call(
                    req.netns_path,
                    lambda: sandbox_configure(
                        alias=alias, name=ep.link, ifname=req.ifname, mac="" if net.mode == "passthru" else ep.mac,
                        address=ep.address, gateway=gateway,
                    ),
                )
            except BaseException:
                # e.g. the name is taken there: take the sub-interface out again (a later
                # join makes a new one), so the sandbox is as it was.
                netns_call(req.netns_path, lambda: sandbox_remove(alias))
                ep.netns, ep.ifname = "", ""
                self._save(net)
                raise
            ep.netns, ep.ifname = req.netns_path, req.ifname
            self._save(net)
            return JoinResult(gateway=gateway)

    def leave(self, network_id: str, endpoint_id: str) -> None:
        with self._lock:
            net = self.networks.get(network_id)
            ep = net.endpoints.get(endpoint_id) if net else None
            if net is None or ep is None or not ep.netns:
                return
            self._leave_sandbox(ep)
            ep.netns, ep.ifname = "", ""
            self._save(net)

    def _leave_sandbox(self, ep: Endpoint) -> None:
        alias = endpoint_alias(ep.endpoint_id)
        try:
            netns_call(ep.netns, lambda: sandbox_remove(alias))
        except OSError as exc:  # the sandbox is gone, and its interfaces with it
            log.debug("sandbox %s unusable at leave: %s", ep.netns, exc, extra={"driver": f"network:{NAME}"})
