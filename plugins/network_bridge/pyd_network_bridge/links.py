"""Netlink work of the bridge driver that no other driver shares: the bridge device and
sysctls. Veth pairs, addresses and the sandbox side come from ``pyd.drivers.netlink``.
"""

from __future__ import annotations

from pathlib import Path

from pyroute2 import IPRoute

from pyd.drivers.netlink import lookup
from pyd.drivers.network import random_mac


def create_bridge(ipr: IPRoute, name: str, mtu: int) -> int:
    # A fixed random MAC (see random_mac), set at creation.
    ipr.link("add", ifname=name, kind="bridge", mtu=mtu, address=random_mac())
    index = lookup(ipr, name)
    assert index is not None
    return index


def set_sysctl(path: Path, value: str) -> bool:
    """Write ``value`` to a sysctl file if it differs; True if it changed."""
    current = path.read_text().strip()
    if current == value:
        return False
    path.write_text(value + "\n")
    return True
