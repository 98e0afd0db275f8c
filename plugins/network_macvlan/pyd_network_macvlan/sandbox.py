"""Netlink work inside a sandbox (run through ``pyd.drivers.network.netns_call``).

The endpoint's sub-interface arrives under its host name and is renamed to ``ifname`` here;
it carries the endpoint's alias, so it is found again under either name.
"""

from __future__ import annotations

from pyroute2 import IPRoute

from pyd.drivers.netlink import configure_link, delete_index, find_by_alias, lookup
from pyd.errors import Conflict


def sandbox_configure(*, alias: str, name: str, ifname: str, mac: str, address: str, gateway: str) -> None:
    """Rename the endpoint's interface to ``ifname``, set MAC and address, bring it and ``lo``
    up, and add a default route via ``gateway`` if there is none yet."""
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
        configure_link(ipr, index, address=address, gateway=gateway, mac=mac)


def sandbox_has(alias: str) -> bool:
    with IPRoute() as ipr:
        return find_by_alias(ipr, alias) is not None


def sandbox_remove(alias: str) -> bool:
    with IPRoute() as ipr:
        link = find_by_alias(ipr, alias)
        if link is None:
            return False
        delete_index(ipr, link["index"])
        return True
