"""Netlink work of the bridge driver (pyroute2): bridges, veth pairs, the sandbox side.

Functions taking ``ipr`` work in the namespace that ``ipr``'s socket belongs to. The
``sandbox_*`` functions open their own ``IPRoute`` and are meant to run inside
``pyd.drivers.network.netns_call``, so their socket lives in the sandbox.
"""

from __future__ import annotations

import errno
import ipaddress
import secrets
from pathlib import Path

from pyroute2 import IPRoute, NetlinkError

from pyd.errors import Conflict


def lookup(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_kind(ipr: IPRoute, index: int) -> str:
    link = ipr.get_links(index)[0]
    return str(link.get(("linkinfo", "kind")) or "")


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Delete the interface ``name`` if it exists; True if it did."""
    index = lookup(ipr, name)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise
    return True


def random_mac() -> str:
    # Docker gives its bridges a fixed random MAC, so the bridge's MAC does not change
    # (and break ARP caches) as ports come and go.
    return "02:42:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(4))


def create_bridge(ipr: IPRoute, name: str, mtu: int) -> int:
    ipr.link("add", ifname=name, kind="bridge", mtu=mtu, address=random_mac())
    index = lookup(ipr, name)
    assert index is not None
    return index


def set_addresses(ipr: IPRoute, index: int, cidrs: list[str]) -> None:
    for cidr in cidrs:
        iface = ipaddress.IPv4Interface(cidr)
        try:
            ipr.addr(
                "add",
                index=index,
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                broadcast=str(iface.network.broadcast_address),
            )
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise


def remove_addresses(ipr: IPRoute, index: int, cidrs: list[str]) -> None:
    for cidr in cidrs:
        iface = ipaddress.IPv4Interface(cidr)
        try:
            ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            if exc.code not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                raise


def create_veth(
    ipr: IPRoute,
    *,
    host: str,
    bridge: int,
    netns: str,
    ifname: str,
    mac: str,
    mtu: int,
    hairpin: bool,
) -> None:
    """A veth pair: ``host`` on ``bridge`` and up; its peer made directly inside the sandbox
    ``netns`` as ``ifname`` with the endpoint's MAC (no move and no rename: moving an
    interface between namespaces costs the kernel a full unregister/register)."""
    delete_link(ipr, host)  # a leftover of an interrupted attempt
    peer = {"ifname": ifname, "net_ns_fd": netns, "address": mac, "mtu": mtu}
    try:
        ipr.link("add", ifname=host, kind="veth", mtu=mtu, peer=peer)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:  # ``host`` was just removed, so the name clash is inside
            raise Conflict(f"the sandbox already has an interface named {ifname}") from exc
        raise
    try:
        h = lookup(ipr, host)
        assert h is not None
        ipr.link("set", index=h, master=bridge)
        if hairpin:
            # A container reaching its own published port through a host address comes
            # back out of the port it came in on (no userland proxy to turn it around).
            ipr.brport("set", index=h, mode=1)
        ipr.link("set", index=h, state="up")
    except BaseException:
        delete_link(ipr, host)  # takes the peer with it
        raise


def set_sysctl(path: Path, value: str) -> bool:
    """Write ``value`` to a sysctl file if it differs; True if it changed."""
    current = path.read_text().strip()
    if current == value:
        return False
    path.write_text(value + "\n")
    return True


# -- the sandbox side (run inside netns_call) -------------------------------------------------


def sandbox_configure(*, alias: str, ifname: str, address: str, gateway: str) -> None:
    """Address and bring up the endpoint's interface ``ifname``; ``lo`` up; default route via
    ``gateway`` unless the sandbox has one already (another network put it there)."""
    iface = ipaddress.IPv4Interface(address)
    with IPRoute() as ipr:
        index = lookup(ipr, ifname)
        if index is None:
            raise LookupError(f"interface {ifname} ({alias}) is not in the sandbox")
        ipr.link("set", index=index, ifalias=alias)
        try:
            ipr.addr(
                "add",
                index=index,
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                broadcast=str(iface.network.broadcast_address),
            )
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
        ipr.link("set", index=index, state="up")
        lo = lookup(ipr, "lo")
        if lo is not None:
            ipr.link("set", index=lo, state="up")
        if gateway and not ipr.get_default_routes(family=2):
            try:
                ipr.route("add", dst="0.0.0.0/0", gateway=gateway, oif=index)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
