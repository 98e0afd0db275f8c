"""The ``overlay`` network driver: ``NetworkDriver`` + ``NetworkRestorer``, global scope.

Per network and host, as Docker builds it: a network namespace bind-mounted on
``<exec-root>/overlay/<network-id>`` holding ``br0`` (the subnet's gateway address) and
``vxlan0``. ``vxlan0`` is made in the daemon's namespace, so its UDP socket (port 4789,
``local`` = this host's VTEP) stays on the underlay, then moved in and enslaved to ``br0``.
Learning is off and ARP proxying on: the only way frames and ARP answers find a remote
container is the FDB (``MAC dst VTEP``) and neighbour (``IP lladdr MAC``) entries this driver
programs on ``vxlan0`` from the peer entries in the cluster store (``peers.py``). Endpoints
are veth pairs, one end on ``br0`` and the other made directly in the container's sandbox.

The VNI comes from the cluster store (``cluster.py``), so every host that creates the network
uses the same one. Containers get no default route here (``JoinResult.gateway == ""``): the
engine also connects them to a local gateway bridge (``needs_gateway_bridge``).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
from pathlib import Path
from typing import Mapping

from pyroute2 import IPRoute, NetlinkError

from pyd.drivers import netlink
from pyd.drivers.kvstore import KVStore
from pyd.drivers.network import (
    IFNAMSIZ,
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
    create_netns,
    endpoint_mac,
    gateway_cidrs,
    is_netns,
    known_endpoint,
    known_network,
    netns_call,
    remove_netns,
    short_id,
)
from pyd.errors import InvalidParameter, NotSupported

from pyd_network_overlay import cluster, links, options
from pyd_network_overlay.links import Peer
from pyd_network_overlay.peers import PeerSync
from pyd_network_overlay.state import Endpoint, Network, StateStore

log = logging.getLogger(__name__)

NAME = "overlay"
_EXTRA = {"driver": f"network:{NAME}"}


class OverlayDriver(NoExternalConnectivity):
    """Publishes no ports: they live on the gateway bridge network, not on the overlay."""

    name = NAME
    scope = "global"
    # The engine also connects each container to a local bridge network for the way out.
    needs_gateway_bridge = True

    def __init__(self, home: Path, context: NetworkContext) -> None:
        prefix = check_name_prefix(NAME, context.name_prefix)
        if context.kvstore is None:
            raise NotSupported(
                f'network driver "{NAME}" needs a cluster store: install pyd-kvstore-local (the default '
                "single-host store) or set cluster-store (e.g. etcd://HOST:2379)"
            )
        self.prefix = prefix
        self.kv: KVStore = context.kvstore  # type: ignore[assignment]
        self.settings = options.Settings.from_context(context.settings)
        exec_root = Path(self.settings.exec_root) if self.settings.exec_root else Path(home) / "run"
        self.netns_dir = exec_root / "overlay"
        self.store = StateStore(Path(home))
        self.networks: dict[str, Network] = self.store.load_all()
        # Resolved here, in the daemon's namespace (later calls may come from other threads).
        self.vtep, self.underlay_mtu = links.resolve_vtep(self.settings.cluster_advertise)
        self.programmed: dict[str, set[Peer]] = {}  # network id -> entries on its vxlan0
        self._lock = threading.RLock()
        self.peers = PeerSync(
            self.kv, ttl=self.settings.ttl, heartbeat=self.settings.heartbeat, on_change=self._sync
        )

    def close(self) -> None:
        """Stop the keepalive and watch threads (kernel objects and store entries stay)."""
        self.peers.close()

    cleanup = close  # the engine calls every driver's ``cleanup()`` at daemon shutdown

    def parse_options(self, raw: Mapping[str, str]) -> Mapping[str, object]:
        return options.parse_options(raw)

    # -- helpers --------------------------------------------------------------------------

    def _network(self, network_id: str) -> Network:
        return known_network(self.networks, network_id, NAME)

    def _endpoint(self, network_id: str, endpoint_id: str) -> tuple[Network, Endpoint]:
        net = self._network(network_id)
        return net, known_endpoint(net, endpoint_id, NAME)

    def _netns_path(self, network_id: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", network_id):
            raise InvalidParameter(f"bad network id {network_id!r}")
        return self.netns_dir / network_id

    def _vxlan_name(self, vni: int) -> str:
        # Only for the moment between creating it here and moving it into the namespace.
        return f"{self.prefix}x{vni:x}"[:IFNAMSIZ]

    @staticmethod
    def _veth_name(endpoint_id: str) -> str:
        return "veth" + short_id(endpoint_id, IFNAMSIZ - 4)

    def _mtu(self, opts: Mapping[str, object]) -> int:
        if options.MTU in opts:
            return int(opts[options.MTU])  # type: ignore[call-overload]
        underlay = self.underlay_mtu or self.settings.mtu or 1500
        return max(options.MTU_MIN, underlay - options.VXLAN_OVERHEAD)

    # -- networks -------------------------------------------------------------------------

    def create_network(self, req: NetworkCreateRequest) -> None:
        opts = options.coerce_options(req.options)
        if not req.ipv4:
            raise InvalidParameter(f'overlay network "{req.name}": needs an IPv4 subnet')
        with self._lock:
            net = self.networks.get(req.network_id)
            if net is None:
                fixed = opts.get(options.VXLANID_LIST)
                vni, allocated = cluster.network_vni(
                    self.kv, req.network_id, req.name, fixed if isinstance(fixed, int) else None
                )
                net = Network(
                    network_id=req.network_id, name=req.name, vni=vni, mtu=self._mtu(opts),
                    gateways=gateway_cidrs(req, f'overlay network "{req.name}"'), netns=str(self._netns_path(req.network_id)),
                )
                try:
                    self._ensure(net)
                    self.store.save(net)
                except BaseException:
                    self._teardown(net)
                    if allocated:
                        try:
                            cluster.forget(self.kv, net.network_id)
                        except Exception as exc:
                            log.warning("cannot free VXLAN ID %d of failed network %s: %s", vni, req.name, exc,
                                        extra=_EXTRA)
                    raise
                self.networks[net.network_id] = net
            else:
                self._ensure(net)  # a retried create keeps what exists
            self.programmed.pop(net.network_id, None)
            self.peers.start()
        self.peers.refresh(req.network_id)

    def restore_network(self, req: NetworkCreateRequest) -> None:
        """Re-adopt the namespace after a daemon restart (recreated if gone, e.g. after a
        reboot); joined endpoints whose interfaces survived are published again. Needs the
        cluster store only for a network this host never had."""
        with self._lock:
            net = self.networks.get(req.network_id)
            if net is None:
                restored = False
            else:
                restored = True
                self._ensure(net)
                self.programmed.pop(net.network_id, None)  # read back from the kernel
                for ep in net.endpoints.values():
                    if ep.netns and not netns_call(net.netns, lambda ep=ep: links.overlay_has(ep.veth)):
                        ep.netns, ep.ifname = "", ""  # the container went away meanwhile
                self.store.save(net)
                for ep in net.endpoints.values():
                    if ep.netns:
                        self._publish(net, ep)
                self.peers.start()
        if not restored:
            self.create_network(req)
            return
        self.peers.refresh(req.network_id)

    def _ensure(self, net: Network) -> None:
        """Make whatever of the namespace, ``vxlan0`` and ``br0`` is missing."""
        create_netns(net.netns)
        current = netns_call(net.netns, links.overlay_vni)
        if current is not None and current != net.vni:
            netns_call(net.netns, links.overlay_teardown)
            current = None
        moved = self._vxlan_name(net.vni)
        if current is None:
            links.create_vxlan(name=moved, vni=net.vni, vtep=self.vtep, mtu=net.mtu, netns=net.netns)
        netns_call(net.netns, lambda: links.overlay_setup(moved=moved, gateways=net.gateways, mtu=net.mtu))

    def _teardown(self, net: Network) -> None:
        if is_netns(net.netns):
            try:
                netns_call(net.netns, links.overlay_teardown)
            except OSError as exc:
                log.warning("cannot empty namespace %s: %s", net.netns, exc, extra=_EXTRA)
        remove_netns(net.netns)
        with IPRoute() as ipr:  # a VXLAN device an interrupted create left here
            netlink.delete_link(ipr, self._vxlan_name(net.vni))

    def delete_network(self, network_id: str) -> None:
        with self._lock:
            for key in self.peers.own_keys(f"{cluster.PEERS}{network_id}/"):
                self.peers.withdraw(key)
            net = self.networks.get(network_id)
            if net is None:
                try:
                    remove_netns(self._netns_path(network_id))  # a leftover without state
                except InvalidParameter:
                    pass
                return
            self._teardown(net)
            self.store.remove(network_id)
            self.networks.pop(network_id, None)
            self.programmed.pop(network_id, None)

    def forget_network(self, network_id: str) -> None:
        """The network is gone cluster-wide (``network rm`` ran here): free its VNI and record.
        Called after ``delete_network``; raises ``Unavailable`` when the store is down."""
        cluster.forget(self.kv, network_id)

    # -- endpoints ------------------------------------------------------------------------

    def create_endpoint(self, req: EndpointRequest) -> EndpointInfo:
        with self._lock:
            net = self._network(req.network_id)
            iface = check_endpoint_address(f'overlay network "{net.name}"', req.address, net.gateways)
            mac = endpoint_mac(req)
            ep = net.endpoints.get(req.endpoint_id)
            if ep is None:
                ep = Endpoint(req.endpoint_id, str(iface), mac, self._veth_name(req.endpoint_id))
            else:
                ep.address, ep.mac = str(iface), mac
            net.endpoints[ep.endpoint_id] = ep
            self.store.save(net)
            return EndpointInfo(mac_address=mac)

    def delete_endpoint(self, network_id: str, endpoint_id: str) -> None:
        with self._lock:
            net = self.networks.get(network_id)
            if net is None or endpoint_id not in net.endpoints:
                return
            self._leave(net, net.endpoints[endpoint_id])
            net.endpoints.pop(endpoint_id, None)
            self.store.save(net)

    def join(self, req: JoinRequest) -> JoinResult:
        with self._lock:
            net, ep = self._endpoint(req.network_id, req.endpoint_id)
            check_sandbox(f'overlay network "{net.name}"', req.netns_path)
            if not is_netns(net.netns):
                self._ensure(net)  # someone removed the namespace: make it again
            again = (ep.netns, ep.ifname) == (req.netns_path, req.ifname) and netns_call(
                net.netns, lambda: links.overlay_has(ep.veth)
            )
            if not again:
                netns_call(
                    net.netns,
                    lambda: links.overlay_attach(
                        host=ep.veth, sandbox=req.netns_path, ifname=req.ifname, mac=ep.mac, mtu=net.mtu
                    ),
                )
                ep.netns, ep.ifname = req.netns_path, req.ifname
                self.store.save(net)
            try:
                # No gateway: containers go out through the gateway bridge network.
                netns_call(req.netns_path, lambda: netlink.sandbox_configure(ifname=req.ifname, address=ep.address))
            except BaseException:
                netns_call(net.netns, lambda: links.overlay_detach(ep.veth))
                ep.netns, ep.ifname = "", ""
                self.store.save(net)
                raise
            self._publish(net, ep)
            return JoinResult(gateway="", mtu=net.mtu)

    def leave(self, network_id: str, endpoint_id: str) -> None:
        with self._lock:
            net = self.networks.get(network_id)
            ep = net.endpoints.get(endpoint_id) if net else None
            if net is None or ep is None:
                return
            self._leave(net, ep)
            self.store.save(net)

    def _leave(self, net: Network, ep: Endpoint) -> None:
        key = cluster.peer_key(net.network_id, ep.endpoint_id)
        if ep.netns or self.peers.owns(key):
            self.peers.withdraw(key)
        if ep.netns:
            try:
                # Deleting our end takes the sandbox's end with it.
                netns_call(net.netns, lambda: links.overlay_detach(ep.veth))
            except FileNotFoundError:
                pass  # the namespace is gone, and the pair with it
            ep.netns, ep.ifname = "", ""

    def _publish(self, net: Network, ep: Endpoint) -> None:
        ip = str(ipaddress.IPv4Interface(ep.address).ip)
        self.peers.publish(cluster.peer_key(net.network_id, ep.endpoint_id), cluster.peer_value(ip, ep.mac, self.vtep))

    # -- peers ----------------------------------------------------------------------------

    def _sync(self, network_ids: set[str] | None) -> None:
        """Program ``vxlan0`` of each network with the remote peers the watch knows."""
        with self._lock:
            for network_id in list(self.networks) if network_ids is None else network_ids:
                net = self.networks.get(network_id)
                if net is None:
                    continue
                desired = {
                    p for p in self.peers.snapshot(network_id).values() if p[2] and p[2] != self.vtep and p[1]
                }
                try:
                    have = self.programmed.get(network_id)
                    if have is None:
                        have = netns_call(net.netns, links.overlay_peers)
                    add, remove = desired - have, have - desired
                    if add or remove:
                        netns_call(net.netns, lambda: links.overlay_program(add=add, remove=remove))
                    self.programmed[network_id] = desired
                except (OSError, LookupError, NetlinkError) as exc:
                    self.programmed.pop(network_id, None)  # read back from the kernel next time
                    log.warning("cannot program peers of overlay network %s: %s", net.name, exc, extra=_EXTRA)


__all__ = ["OverlayDriver"]
