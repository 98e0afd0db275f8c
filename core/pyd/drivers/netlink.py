"""Netlink helpers for network drivers (pyroute2): links, addresses, veth pairs, sandboxes.

Import this module only from a driver that uses pyroute2 (importing ``pyd.drivers`` or
``pyd.drivers.network`` does not load pyroute2). Functions taking ``ipr`` (a
``pyroute2.IPRoute``) work in the network namespace that ``ipr``'s socket belongs to.
``sandbox_configure`` opens its own ``IPRoute`` and is meant to run inside
``pyd.drivers.network.netns_call``, so that its socket lives in the sandbox.

Every helper is idempotent where the docstring says so: "already there" (``EEXIST``) on an
add and "already gone" (``ENODEV``, ``ENOENT``, ``EADDRNOTAVAIL``) on a delete are not errors,
so a driver method can be retried after a timeout. Other kernel errors propagate as
``pyroute2.NetlinkError`` (``.code`` is the errno).
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any, Iterable

from pyroute2 import IPRoute, NetlinkError

from pyd.errors import Conflict

__all__ = [
    "add_addresses",
    "configure_link",
    "create_veth",
    "delete_index",
    "delete_link",
    "find_by_alias",
    "link_kind",
    "lookup",
    "remove_addresses",
    "sandbox_configure",
]


def lookup(ipr: IPRoute, name: str) -> int | None:
    """The index of the interface ``name``, or None if there is none."""
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_kind(ipr: IPRoute, index: int) -> str:
    """The link kind of interface ``index`` (``"bridge"``, ``"veth"``, ...; ``""`` for a
    physical one). Raises ``NetlinkError`` (``ENODEV``) if there is no such interface."""
    link = ipr.get_links(index)[0]
    return str(link.get(("linkinfo", "kind")) or "")


def find_by_alias(ipr: IPRoute, alias: str) -> Any | None:
    """The link message (``msg["index"]``, ``msg.get("ifname")``...) of the interface whose
    ``ifalias`` is ``alias``, or None. Drivers tag an endpoint's interface with an alias so
    they find it again whatever its name (e.g. after a rename in the sandbox)."""
    for link in ipr.get_links():
        if link.get("ifalias") == alias:
            return link
    return None


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Delete the interface ``name`` if it exists; True if it did. Deleting one end of a veth
    pair removes the other end too, wherever it is. Idempotent."""
    index = lookup(ipr, name)
    if index is None:
        return False
    delete_index(ipr, index)
    return True


def delete_index(ipr: IPRoute, index: int) -> None:
    """Delete the interface ``index``; one that is already gone is not an error."""
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise


def add_addresses(ipr: IPRoute, index: int, cidrs: Iterable[str]) -> None:
    """Add each IPv4 ``cidr`` (e.g. ``"172.18.0.1/16"``) to interface ``index``, with the
    subnet's broadcast address. An address already there is kept (idempotent). Raises
    ``ValueError`` for a CIDR that is not IPv4."""
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


def remove_addresses(ipr: IPRoute, index: int, cidrs: Iterable[str]) -> None:
    """Remove each IPv4 ``cidr`` from interface ``index``. Addresses (or an interface) that
    are already gone are not an error (idempotent)."""
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
    master: int,
    netns: str,
    ifname: str,
    mac: str,
    mtu: int,
    hairpin: bool = False,
) -> int:
    """Make a veth pair: ``host`` here, enslaved to the bridge ``master`` and up; its peer
    made directly inside the sandbox ``netns`` (a netns path) as ``ifname`` with ``mac`` and
    ``mtu``, still down. Making the peer in place avoids a move and a rename (moving an
    interface between namespaces costs the kernel a full unregister/register). ``hairpin``
    lets frames leave the bridge port they came in on (a container reaching its own
    published port). Returns the index of ``host``.

    A leftover ``host`` of an interrupted attempt is replaced, so a retry works. Raises
    ``Conflict`` if the sandbox already has an interface ``ifname``; on any failure nothing
    of the pair is left behind.
    """
    delete_link(ipr, host)
    peer = {"ifname": ifname, "net_ns_fd": netns, "address": mac, "mtu": mtu}
    try:
        ipr.link("add", ifname=host, kind="veth", mtu=mtu, peer=peer)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:  # ``host`` was just removed, so the name clash is inside
            raise Conflict(f"the sandbox already has an interface named {ifname}") from exc
        raise
    try:
        index = lookup(ipr, host)
        assert index is not None
        ipr.link("set", index=index, master=master)
        if hairpin:
            ipr.brport("set", index=index, mode=1)
        ipr.link("set", index=index, state="up")
    except BaseException:
        delete_link(ipr, host)  # takes the peer with it
        raise
    return index


def configure_link(
    ipr: IPRoute, index: int, *, address: str, gateway: str = "", mac: str = "", alias: str = ""
) -> None:
    """Configure an endpoint's interface ``index`` as ``join`` must (see
    ``pyd.drivers.network``): set ``alias`` and ``mac`` if given, add the IPv4 ``address``
    (CIDR), bring it and ``lo`` up, and add a default route via ``gateway`` (an IPv4 address;
    "" for none) unless the namespace has a default route already (another network put it
    there). Idempotent; raises ``NetlinkError`` for other kernel errors."""
    if alias:
        ipr.link("set", index=index, ifalias=alias)
    if mac:
        ipr.link("set", index=index, address=mac)
    add_addresses(ipr, index, [address])
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


def sandbox_configure(*, ifname: str, address: str, gateway: str = "", mac: str = "", alias: str = "") -> None:
    """``configure_link`` for the interface named ``ifname`` in the current network
    namespace, through a netlink socket of its own: run it inside
    ``netns_call(sandbox, ...)``. Raises ``LookupError`` if there is no ``ifname`` here.
    Idempotent."""
    with IPRoute() as ipr:
        index = lookup(ipr, ifname)
        if index is None:
            what = f"{ifname} ({alias})" if alias else ifname
            raise LookupError(f"interface {what} is not in the sandbox")
        configure_link(ipr, index, address=address, gateway=gateway, mac=mac, alias=alias)
