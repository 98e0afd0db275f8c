"""Netlink work inside a sandbox (run through ``pyd.drivers.network.netns_call``)."""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

from pyroute2 import IPRoute, NetlinkError

from pyd.errors import Conflict


def lookup(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def find_by_alias(ipr: IPRoute, alias: str) -> Any | None:
    for link in ipr.get_links():
        if link.get("ifalias") == alias:
            return link
    return None


def sandbox_configure(*, alias: str, name: str, ifname: str, mac: str, address: str, gateway: str) -> None:
    """Rename the endpoint's interface to ``ifname``, set MAC and address, bring it and ``lo``
    up, and add a default route via ``gateway`` if there is none yet."""
    iface = ipaddress.IPv4Interface(address)
    with IPRoute() as ipr:
        link = find_by_alias(ipr, alias)
        index = link["index"] if link is not None else lookup(ipr, name)
        if index is None:
            raise LookupError(f"interface {name} ({alias}) is not in the sandbox")
        other = lookup(ipr, ifname)
        if other is not None and other != index:
            raise Conflict(f"the sandbox already has an interface named {ifname}")
        if other is None:
            ipr.link("set", index=index, state="down")
            ipr.link("set", index=index, ifname=ifname)
        if mac:
            ipr.link("set", index=index, address=mac)
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


def sandbox_has(alias: str) -> bool:
    with IPRoute() as ipr:
        return find_by_alias(ipr, alias) is not None


def sandbox_remove(alias: str) -> bool:
    with IPRoute() as ipr:
        link = find_by_alias(ipr, alias)
        if link is None:
            return False
        try:
            ipr.link("del", index=link["index"])
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
        return True
