"""The ``bridge`` network driver: ``pyd.drivers.network.NetworkDriver`` + ``NetworkRestorer``.

Per network: a Linux bridge with the gateway address(es), nftables rules in pyd's table
(``firewall.py``), and per endpoint a veth pair (``pyd.drivers.netlink``). Published ports are DNAT
rules plus a held host socket per port (``ports.py``). State per network is kept in
``home`` (``state.py``) so a restarted daemon finds its objects again.

Loopback publishing: connections to ``127.0.0.1:HOSTPORT`` are DNATed in the nat output
chain and their 127.0.0.1 source is masqueraded on the way out of the bridge; the bridge
gets ``route_localnet=1`` so the kernel routes them at all (Docker does the same with
``userland-proxy: false``). pyd uses no userland proxy: no process per port, nothing to
restart after a daemon restart, and published traffic keeps its real client address except
for loopback. ``raw_prerouting`` drops packets from our bridges to 127.0.0.0/8, the hole that
``route_localnet`` would open otherwise (CVE-2020-8558).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from pathlib import Path
from typing import Mapping

from pyroute2 import IPRoute

from pyd.drivers import netlink
from pyd.drivers.network import (
    EndpointInfo,
    EndpointRequest,
    JoinRequest,
    JoinResult,
    NetworkContext,
    NetworkCreateRequest,
    PortBinding,
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
from pyd.errors import Conflict, InvalidParameter, NotFound, NotSupported

from pyd_network_bridge import links, options
from pyd_network_bridge.firewall import Firewall
from pyd_network_bridge.ports import PortInUse, reserve
from pyd_network_bridge.state import EndpointState, NetworkState, PublishedPort, StateStore

log = logging.getLogger(__name__)

NAME = "bridge"
PROC_SYS = Path("/proc/sys")


def enable_ip_forward(proc_sys: Path = PROC_SYS) -> bool:
    """Turn on IPv4 forwarding (as dockerd does at start); True if it was off."""
    return links.set_sysctl(proc_sys / "net/ipv4/ip_forward", "1")


class BridgeDriver:
    name = NAME
    scope = "local"

    def __init__(self, home: Path, context: NetworkContext) -> None:
        prefix = check_name_prefix(NAME, context.name_prefix)
        self.home = Path(home)
        self.prefix = prefix
        self.settings = options.Settings.from_context(context.settings, prefix)
        self.firewall = Firewall(prefix, enabled=self.settings.iptables)
        self.store = StateStore(self.home)
        self.networks: dict[str, NetworkState] = self.store.load_all()
        # Held host-port sockets per endpoint ID (see ports.py).
        self._reserved: dict[str, list[socket.socket]] = {}
        self._lock = threading.RLock()

    # -- options --------------------------------------------------------------------------

    def parse_options(self, raw: Mapping[str, str]) -> Mapping[str, object]:
        return options.parse_options(raw)

    # -- names ----------------------------------------------------------------------------

    def _bridge_name(self, network_id: str, opts: Mapping[str, object]) -> str:
        if opts.get(options.BRIDGE_NAME):
            return str(opts[options.BRIDGE_NAME])
        if opts.get(options.DEFAULT_BRIDGE):
            return self.settings.bridge
        # Docker's "br-<12 hex>"; here "<prefix>-<id>" filling IFNAMSIZ.
        return f"{self.prefix}-{short_id(network_id, options.IFNAMSIZ - len(self.prefix) - 1)}"

    def _veth_name(self, endpoint_id: str) -> str:
        room = options.IFNAMSIZ - len(self.prefix) - 1
        return f"{self.prefix}v{short_id(endpoint_id, room)}"

    # -- lookups --------------------------------------------------------------------------

    def _network(self, network_id: str) -> NetworkState:
        return known_network(self.networks, network_id, NAME)

    def _endpoint(self, network_id: str, endpoint_id: str) -> tuple[NetworkState, EndpointState]:
        st = self._network(network_id)
        return st, known_endpoint(st, endpoint_id, NAME)

    # -- networks -------------------------------------------------------------------------

    def _new_state(self, req: NetworkCreateRequest) -> NetworkState:
        opts = options.coerce_options(req.options)
        default = bool(opts.get(options.DEFAULT_BRIDGE, False))
        gateways = gateway_cidrs(req, f'bridge network "{req.name}"')
        host_ip = str(opts.get(options.HOST_BINDING_IPV4, "") or (self.settings.ip if default else ""))
        return NetworkState(
            network_id=req.network_id,
            name=req.name,
            bridge=self._bridge_name(req.network_id, opts),
            created_bridge=False,
            mtu=int(opts.get(options.MTU) or self.settings.mtu),  # type: ignore[call-overload]
            icc=bool(opts.get(options.ENABLE_ICC, self.settings.icc if default else True)),
            masquerade=bool(opts.get(options.ENABLE_IP_MASQUERADE, self.settings.ip_masq if default else True)),
            host_ip="" if host_ip == "0.0.0.0" else host_ip,
            internal=req.internal,
            gateways=gateways,
        )

    def create_network(self, req: NetworkCreateRequest) -> None:
        if not req.ipv4:
            raise InvalidParameter(f'bridge network "{req.name}": needs an IPv4 pool (subnet and gateway)')
        with self._lock:
            old = self.networks.get(req.network_id)
            st = self._new_state(req)
            if old is not None:  # a retry: keep what we know about the kernel objects
                self._carry_over(old, st)
            for other in self.networks.values():
                if other.network_id != st.network_id and other.bridge == st.bridge:
                    raise Conflict(
                        f'bridge network "{st.name}": bridge {st.bridge} is already used by '
                        f'network "{other.name}"; choose another -o {options.BRIDGE_NAME}'
                    )
            if not st.icc and self.settings.iptables:
                self._need_br_netfilter(st)
            try:
                self._setup(st, adopt_own=old is not None)
            except BaseException:
                if old is None:
                    # Undo only what this call made: never strip an adopted device.
                    self._teardown(st, touch_adopted=False)
                raise

    def restore_network(self, req: NetworkCreateRequest) -> None:
        """Re-adopt the bridge and rules of a network after a restart; recreate what is gone."""
        with self._lock:
            old = self.networks.get(req.network_id)
            st = self._new_state(req)
            if old is not None:
                self._carry_over(old, st)
            self._setup(st, adopt_own=True)
            for ep in st.endpoints.values():
                if ep.ports and ep.endpoint_id not in self._reserved:
                    try:
                        self._publish(st, ep, list(ep.ports))
                    except Conflict as exc:
                        log.warning("%s", exc, extra={"driver": f"network:{NAME}"})

    def _setup(self, st: NetworkState, *, adopt_own: bool) -> None:
        with IPRoute() as ipr:
            index = netlink.lookup(ipr, st.bridge)
            if index is None:
                index = links.create_bridge(ipr, st.bridge, st.mtu)
                st.created_bridge = True
                self._save(st)  # from now on delete_network knows to remove it
            else:
                kind = netlink.link_kind(ipr, index)
                if kind != "bridge":
                    raise Conflict(
                        f'bridge network "{st.name}": an interface named {st.bridge} exists and is '
                        f'a {kind or "non-bridge"} device; choose another -o {options.BRIDGE_NAME}'
                    )
                if not adopt_own:
                    # An existing bridge pyd did not make (Docker reuses one given by name).
                    log.info("adopting existing bridge %s", st.bridge, extra={"driver": f"network:{NAME}"})
                self._save(st)
            ipr.link("set", index=index, mtu=st.mtu)
            netlink.add_addresses(ipr, index, st.gateways)
            ipr.link("set", index=index, state="up")
        if self.settings.iptables:
            # Published ports on 127.0.0.1 are routed out of this bridge (see module doc).
            links.set_sysctl(PROC_SYS / "net/ipv4/conf" / st.bridge / "route_localnet", "1")
        self.firewall.ensure_network(st)
        if st.table != self.prefix:
            st.table = self.prefix
            self._save(st)
        if self.settings.ip_forward and not st.internal and enable_ip_forward():
            log.info("enabled net.ipv4.ip_forward", extra={"driver": f"network:{NAME}"})

    def _carry_over(self, old: NetworkState, st: NetworkState) -> None:
        """A retry or a restart: keep what is known about the network's kernel objects. Under
        another name prefix (the daemon's ``bridge`` setting changed) the bridge's name and the
        rules' table change too: the old ones are removed, not left behind."""
        st.endpoints = old.endpoints
        self._leave_old_table(old)
        if old.bridge == st.bridge:
            st.created_bridge, st.table = old.created_bridge, old.table
        elif old.created_bridge:
            with IPRoute() as ipr:
                netlink.delete_link(ipr, old.bridge)
            log.info("network %s moves from bridge %s to %s", st.name, old.bridge, st.bridge,
                     extra={"driver": f"network:{NAME}"})

    def _leave_old_table(self, st: NetworkState) -> None:
        """Rules of ``st`` made under another name prefix: remove them from that table, and
        the table itself once none of its bridges is left."""
        if not st.table or st.table == self.prefix:
            return
        old = Firewall(st.table, enabled=self.settings.iptables)
        old.remove_network(st.network_id, st.bridge, drop_table=False)
        view = old.view()
        if view is not None and not view.bridges:
            old.delete_table()
        st.table = ""

    def _need_br_netfilter(self, st: NetworkState) -> None:
        # icc=false filters bridged traffic in the ip forward hook, which sees it only through
        # br_netfilter (Docker relies on the same).
        path = PROC_SYS / "net/bridge/bridge-nf-call-iptables"
        if not path.exists():
            raise NotSupported(
                f'bridge network "{st.name}": {options.ENABLE_ICC}=false needs the kernel\'s '
                "br_netfilter (net.bridge.bridge-nf-call-iptables), which is not available"
            )
        if links.set_sysctl(path, "1"):
            log.info("enabled net.bridge.bridge-nf-call-iptables", extra={"driver": f"network:{NAME}"})

    def delete_network(self, network_id: str) -> None:
        with self._lock:
            st = self.networks.get(network_id)
            if st is None:
                # Unknown (already deleted, or state lost): still drop leftover rules.
                self.firewall.remove_network(network_id, "", drop_table=not self.networks)
                return
            self._teardown(st)

    def _teardown(self, st: NetworkState, *, touch_adopted: bool = True) -> None:
        with IPRoute() as ipr:
            for ep in list(st.endpoints.values()):
                self._drop_endpoint(ipr, st, ep)
            last = not any(n for n in self.networks if n != st.network_id)
            self._leave_old_table(st)
            self.firewall.remove_network(st.network_id, st.bridge, drop_table=last)
            if st.created_bridge:
                netlink.delete_link(ipr, st.bridge)
            elif touch_adopted:
                index = netlink.lookup(ipr, st.bridge)
                if index is not None:
                    netlink.remove_addresses(ipr, index, st.gateways)
        self.networks.pop(st.network_id, None)
        self.store.delete(st.network_id)

    def _save(self, st: NetworkState, durable: bool = True) -> None:
        self.store.save(st, durable=durable)
        self.networks[st.network_id] = st

    # -- endpoints ------------------------------------------------------------------------

    def create_endpoint(self, req: EndpointRequest) -> EndpointInfo:
        """Validate and record the endpoint. Its veth pair is made at ``join``, with the peer
        created directly inside the sandbox (see ``pyd.drivers.netlink.create_veth``)."""
        with self._lock:
            st = self._network(req.network_id)
            iface = check_endpoint_address(f'bridge network "{st.name}"', req.address, st.gateways)
            mac = endpoint_mac(req)
            old = st.endpoints.get(req.endpoint_id)
            if old is None or (old.address, old.mac) != (str(iface), mac):
                st.endpoints[req.endpoint_id] = EndpointState(
                    req.endpoint_id, str(iface), mac, self._veth_name(req.endpoint_id)
                )
                self._save(st, durable=False)
            return EndpointInfo(mac_address=mac)

    def delete_endpoint(self, network_id: str, endpoint_id: str) -> None:
        with self._lock:
            st = self.networks.get(network_id)
            if st is None or endpoint_id not in st.endpoints:
                return
            with IPRoute() as ipr:
                self._drop_endpoint(ipr, st, st.endpoints[endpoint_id])
            st.endpoints.pop(endpoint_id, None)
            self._save(st, durable=False)

    def _drop_endpoint(self, ipr: IPRoute, st: NetworkState, ep: EndpointState) -> None:
        if ep.ports or ep.endpoint_id in self._reserved:
            self._unpublish(st, ep)
        netlink.delete_link(ipr, ep.host_if)  # takes the peer in the sandbox with it

    # -- sandbox --------------------------------------------------------------------------

    def join(self, req: JoinRequest) -> JoinResult:
        with self._lock:
            st, ep = self._endpoint(req.network_id, req.endpoint_id)
            check_sandbox(f'bridge network "{st.name}"', req.netns_path)
            with IPRoute() as ipr:
                # A retried join finds its pair in place and only configures it again.
                again = (ep.netns, ep.ifname) == (req.netns_path, req.ifname) and netlink.lookup(ipr, ep.host_if)
                if not again:
                    bridge = netlink.lookup(ipr, st.bridge)
                    if bridge is None:
                        raise NotFound(f'bridge network "{st.name}": bridge {st.bridge} is gone; restart the daemon')
                    # hairpin: a container reaching its own published port through a host
                    # address comes back out of the port it came in on (no userland proxy).
                    netlink.create_veth(
                        ipr,
                        host=ep.host_if,
                        master=bridge,
                        netns=req.netns_path,
                        ifname=req.ifname,
                        mac=ep.mac,
                        mtu=st.mtu,
                        hairpin=self.settings.iptables,
                    )
                    ep.netns, ep.ifname = req.netns_path, req.ifname
                    self._save(st, durable=False)
                gateway = "" if st.internal else gateway_for(ep.address, st.gateways)
                try:
                    netns_call(
                        req.netns_path,
                        lambda: netlink.sandbox_configure(
                            alias=endpoint_alias(ep.endpoint_id), ifname=req.ifname, address=ep.address, gateway=gateway
                        ),
                    )
                except BaseException:
                    netlink.delete_link(ipr, ep.host_if)
                    ep.netns, ep.ifname = "", ""
                    self._save(st, durable=False)
                    raise
            return JoinResult(gateway=gateway, mtu=st.mtu)

    def leave(self, network_id: str, endpoint_id: str) -> None:
        """Delete the veth pair (from the host side: no namespace switch needed). A sandbox
        that is already gone took the pair with it."""
        with self._lock:
            st = self.networks.get(network_id)
            ep = st.endpoints.get(endpoint_id) if st else None
            if st is None or ep is None or not ep.netns:
                return
            with IPRoute() as ipr:
                netlink.delete_link(ipr, ep.host_if)
            ep.netns, ep.ifname = "", ""
            self._save(st, durable=False)

    # -- published ports ------------------------------------------------------------------

    def program_external_connectivity(
        self, network_id: str, endpoint_id: str, ports: list[PortBinding]
    ) -> list[PortBinding]:
        with self._lock:
            st, ep = self._endpoint(network_id, endpoint_id)
            if st.internal:
                # Docker publishes nothing on internal networks (they have no way out).
                log.info("not publishing ports on internal network %s", st.name, extra={"driver": f"network:{NAME}"})
                return []
            container_ip = str(ipaddress.IPv4Interface(ep.address).ip)
            wanted = []
            for b in ports:
                if b.proto not in ("tcp", "udp", "sctp"):
                    raise InvalidParameter(f'bridge network "{st.name}": protocol "{b.proto}" is not tcp, udp or sctp')
                host_ip = b.host_ip or st.host_ip
                if host_ip in ("0.0.0.0", ""):
                    host_ip = ""
                else:
                    try:
                        host_ip = str(ipaddress.IPv4Address(host_ip))
                    except ValueError:
                        raise InvalidParameter(
                            f'bridge network "{st.name}": host IP "{host_ip}" of port '
                            f"{b.container_port}/{b.proto} is not an IPv4 address"
                        ) from None
                if not 0 <= b.host_port <= 65535 or not 1 <= b.container_port <= 65535:
                    raise InvalidParameter(
                        f'bridge network "{st.name}": invalid port mapping {b.host_port}:{b.container_port}/{b.proto}'
                    )
                wanted.append(PublishedPort(b.proto, host_ip, b.host_port, b.container_ip or container_ip, b.container_port))
            self._unpublish(st, ep)  # calling again replaces the earlier bindings
            done = self._publish(st, ep, wanted)
            return [
                PortBinding(container_port=p.container_port, proto=p.proto, host_ip=p.host_ip,  # type: ignore[arg-type]
                            host_port=p.host_port, container_ip=p.container_ip)
                for p in done
            ]

    def _publish(self, st: NetworkState, ep: EndpointState, wanted: list[PublishedPort]) -> list[PublishedPort]:
        held: list[socket.socket] = []
        done: list[PublishedPort] = []
        try:
            for p in wanted:
                try:
                    sock = reserve(p.proto, p.host_ip, p.host_port)
                except PortInUse:
                    raise Conflict(
                        f'bridge network "{st.name}": cannot publish port {p.container_port}/{p.proto}: '
                        f"host port {p.host_ip or '0.0.0.0'}:{p.host_port}/{p.proto} is already in use "
                        "by another process or container"
                    ) from None
                except OSError as exc:
                    raise InvalidParameter(
                        f'bridge network "{st.name}": cannot publish port {p.container_port}/{p.proto} '
                        f"on {p.host_ip or '0.0.0.0'}:{p.host_port}: {exc.strerror}"
                    ) from None
                held.append(sock)
                done.append(PublishedPort(p.proto, p.host_ip, sock.getsockname()[1], p.container_ip, p.container_port))
            self.firewall.publish(st.network_id, ep.endpoint_id, done)
        except BaseException:
            for s in held:
                s.close()
            raise
        self._reserved[ep.endpoint_id] = held
        ep.ports = done
        self._save(st, durable=False)
        return done

    def revoke_external_connectivity(self, network_id: str, endpoint_id: str) -> None:
        with self._lock:
            st = self.networks.get(network_id)
            ep = st.endpoints.get(endpoint_id) if st else None
            if st is None or ep is None:
                return
            self._unpublish(st, ep)
            self._save(st, durable=False)

    def _unpublish(self, st: NetworkState, ep: EndpointState) -> None:
        self.firewall.unpublish(st.network_id, ep.endpoint_id)
        for s in self._reserved.pop(ep.endpoint_id, []):
            s.close()
        ep.ports = []
