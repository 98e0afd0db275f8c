"""Netlink work of the overlay driver (pyroute2): the VXLAN device, ``br0`` and its peers.

Functions named ``overlay_*`` open their own ``IPRoute`` and are meant to run inside
``pyd.drivers.network.netns_call`` for the network's namespace. The generic pieces (links,
addresses, veth pairs, the sandbox side) come from ``pyd.drivers.netlink``.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Iterable

from pyroute2 import IPRoute, NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from pyd.drivers.netlink import add_addresses, create_veth, delete_index, delete_link, lookup
from pyd.drivers.network import random_mac
from pyd.errors import Conflict, InvalidParameter, NotSupported

BRIDGE = "br0"
VXLAN = "vxlan0"
VXLAN_PORT = 4789
NUD_PERMANENT = ndmsg.states["permanent"]
NTF_SELF = ndmsg.NTF_SELF

# A programmed peer: (ip, mac, vtep); ip or vtep may be "" for half entries found in the kernel.
Peer = tuple[str, str, str]


# -- the underlay (daemon's namespace) --------------------------------------------------------


def _first_ipv4(ipr: IPRoute, index: int) -> str:
    for a in ipr.get_addr(family=socket.AF_INET, index=index):
        addr = a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")
        if addr:
            return str(addr)
    return ""


def _mtu(ipr: IPRoute, index: int) -> int:
    return int(ipr.get_links(index)[0].get("IFLA_MTU") or 0)


def resolve_vtep(advertise: str) -> tuple[str, int]:
    """``(VTEP IPv4, underlay MTU)`` from ``cluster-advertise``: an interface name (its first
    IPv4), ``IP`` or ``IP:PORT``; empty: the interface with the default route. ``("", 0)``
    when nothing fits (single host, no ``local`` address)."""
    with IPRoute() as ipr:
        if not advertise:
            for route in ipr.get_default_routes(family=socket.AF_INET):
                oif = route.get("RTA_OIF")
                if oif:
                    ip = _first_ipv4(ipr, oif)
                    if ip:
                        return ip, _mtu(ipr, oif)
            return "", 0
        host = advertise.rsplit(":", 1)[0] if advertise.count(":") == 1 else advertise
        try:
            ip = str(ipaddress.IPv4Address(host))
        except ValueError:
            index = lookup(ipr, advertise)
            if index is None:
                raise InvalidParameter(
                    f'cluster-advertise "{advertise}" is neither an interface of this host nor an IPv4 '
                    "address (give an interface name, IP or IP:PORT)"
                ) from None
            ip = _first_ipv4(ipr, index)
            if not ip:
                raise InvalidParameter(f'cluster-advertise "{advertise}": the interface has no IPv4 address')
            return ip, _mtu(ipr, index)
        for a in ipr.get_addr(family=socket.AF_INET):
            if a.get("IFA_LOCAL") == ip or a.get("IFA_ADDRESS") == ip:
                return ip, _mtu(ipr, a["index"])
        return ip, 0  # not (yet) local: the kernel decides; MTU from settings or 1500


def create_vxlan(*, name: str, vni: int, vtep: str, mtu: int, netns: str) -> None:
    """Make the VXLAN device here (its UDP socket stays in this namespace), then move it into
    the overlay namespace ``netns``. Learning off: peers come from the KV store; proxy on: the
    device answers ARP from its neighbour table."""
    with IPRoute() as ipr:
        delete_link(ipr, name)  # a leftover of an interrupted attempt
        kwargs: dict[str, object] = {
            "vxlan_id": vni,
            "vxlan_port": VXLAN_PORT,
            "vxlan_learning": 0,
            "vxlan_proxy": 1,
        }
        if vtep:
            kwargs["vxlan_local"] = vtep
        try:
            ipr.link("add", ifname=name, kind="vxlan", mtu=mtu, address=random_mac(), **kwargs)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise Conflict(
                    f"VXLAN ID {vni} (UDP port {VXLAN_PORT}) is already used by another VXLAN device in "
                    "this network namespace (another daemon on this host?)"
                ) from exc
            if exc.code in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EAFNOSUPPORT):
                raise NotSupported(
                    "overlay networks need VXLAN support in the kernel (module vxlan)"
                ) from exc
            raise
        try:
            index = lookup(ipr, name)
            assert index is not None
            ipr.link("set", index=index, net_ns_fd=netns)
        except BaseException:
            delete_link(ipr, name)
            raise


# -- inside the overlay namespace -------------------------------------------------------------


def overlay_vni() -> int | None:
    """The VNI of ``vxlan0`` here, or None if there is none."""
    with IPRoute() as ipr:
        index = lookup(ipr, VXLAN)
        if index is None:
            return None
        data = ipr.get_links(index)[0].get(("linkinfo", "data"))
        return int(data.get("IFLA_VXLAN_ID")) if data is not None else None


def overlay_setup(*, moved: str, gateways: Iterable[str], mtu: int) -> None:
    """Rename the moved VXLAN device to ``vxlan0``; make ``br0`` with the gateway addresses;
    enslave ``vxlan0``; bring everything up."""
    with IPRoute() as ipr:
        vx = lookup(ipr, VXLAN)
        if vx is None:
            vx = lookup(ipr, moved)
            if vx is None:
                raise LookupError(f"VXLAN device {moved} did not arrive in the overlay namespace")
            ipr.link("set", index=vx, ifname=VXLAN)
        br = lookup(ipr, BRIDGE)
        if br is None:
            ipr.link("add", ifname=BRIDGE, kind="bridge", mtu=mtu, address=random_mac())
            br = lookup(ipr, BRIDGE)
            assert br is not None
        ipr.link("set", index=br, mtu=mtu)
        add_addresses(ipr, br, gateways)
        ipr.link("set", index=vx, master=br)
        ipr.link("set", index=vx, mtu=mtu, state="up")
        ipr.link("set", index=br, state="up")
        lo = lookup(ipr, "lo")
        if lo is not None:
            ipr.link("set", index=lo, state="up")


def overlay_teardown() -> None:
    """Delete every interface here (endpoint veths take their sandbox ends with them), so the
    sandboxes lose them now and not when the kernel gets round to freeing the namespace."""
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get("IFLA_IFNAME")
            if name and name != "lo":
                delete_index(ipr, link["index"])


def overlay_attach(*, host: str, sandbox: str, ifname: str, mac: str, mtu: int) -> None:
    """A veth pair: ``host`` on ``br0`` here, its peer made directly in ``sandbox`` as
    ``ifname`` with the endpoint's MAC (no move, no rename)."""
    with IPRoute() as ipr:
        br = lookup(ipr, BRIDGE)
        if br is None:
            raise LookupError(f"{BRIDGE} is missing in the overlay namespace")
        create_veth(ipr, host=host, master=br, netns=sandbox, ifname=ifname, mac=mac, mtu=mtu)


def overlay_has(name: str) -> bool:
    with IPRoute() as ipr:
        return lookup(ipr, name) is not None


def overlay_detach(host: str) -> bool:
    with IPRoute() as ipr:
        return delete_link(ipr, host)


def overlay_peers() -> set[Peer]:
    """What is programmed on ``vxlan0`` now: neighbour entries joined with FDB entries."""
    with IPRoute() as ipr:
        vx = lookup(ipr, VXLAN)
        if vx is None:
            return set()
        fdb: dict[str, str] = {}
        for m in ipr.fdb("dump", ifindex=vx):
            mac, dst = m.get("NDA_LLADDR"), m.get("NDA_DST")
            if mac and dst and m["ifindex"] == vx:
                fdb[str(mac)] = str(dst)
        neigh: dict[str, str] = {}
        for m in ipr.neigh("dump", ifindex=vx, family=socket.AF_INET):
            ip, mac = m.get("NDA_DST"), m.get("NDA_LLADDR")
            if ip and mac and m["state"] & NUD_PERMANENT:
                neigh[str(ip)] = str(mac)
    out = {(ip, mac, fdb.get(mac, "")) for ip, mac in neigh.items()}
    out |= {("", mac, dst) for mac, dst in fdb.items() if mac not in neigh.values()}
    return out


def overlay_program(*, add: Iterable[Peer], remove: Iterable[Peer]) -> None:
    """Remove, then add (replace) FDB ``MAC dst VTEP self permanent`` and neighbour ``IP lladdr
    MAC permanent`` entries on ``vxlan0``. Missing entries on removal are fine."""
    with IPRoute() as ipr:
        vx = lookup(ipr, VXLAN)
        if vx is None:
            raise LookupError(f"{VXLAN} is missing in the overlay namespace")
        for ip, mac, vtep in remove:
            if ip:
                _ignore_missing(lambda: ipr.neigh("del", ifindex=vx, dst=ip, family=socket.AF_INET))
            if vtep:
                _ignore_missing(
                    lambda: ipr.fdb("del", ifindex=vx, lladdr=mac, dst=vtep, state=NUD_PERMANENT, flags=NTF_SELF)
                )
        for ip, mac, vtep in add:
            if vtep:
                ipr.fdb("replace", ifindex=vx, lladdr=mac, dst=vtep, state=NUD_PERMANENT, flags=NTF_SELF)
            if ip:
                ipr.neigh("replace", ifindex=vx, dst=ip, lladdr=mac, state=NUD_PERMANENT, family=socket.AF_INET)


def _ignore_missing(fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            raise
