"""Facts about the host's network that the network service needs (read through pyroute2).

* ``host_routes()``: the IPv4 destinations routed on the host (not the default route), so an
  automatically chosen subnet never shadows one (Docker's rule for the default bridge).
* ``interface_ipv4(name)``: the IPv4 address of an existing interface (``--bridge br0`` with
  an address of its own gives the default network its subnet).
* ``host_nameservers()``: the upstream servers of the host's resolv.conf.

Blocking (netlink); call from a worker thread. pyroute2 is imported only here, so only the
daemon pays for it.
"""

from __future__ import annotations

import ipaddress
import socket

RTN_UNICAST = 1
RT_TABLE_LOCAL = 255


def host_routes() -> list[str]:
    """CIDRs of the host's IPv4 unicast routes, except default routes and the local table."""
    from pyroute2 import IPRoute

    out: set[str] = set()
    with IPRoute() as ipr:
        for r in ipr.get_routes(family=socket.AF_INET):
            if r.get("type") != RTN_UNICAST or r.get_attr("RTA_TABLE") == RT_TABLE_LOCAL:
                continue
            dst = r.get_attr("RTA_DST")
            if not dst or not r.get("dst_len"):
                continue
            out.add(str(ipaddress.IPv4Network(f"{dst}/{r['dst_len']}", strict=False)))
    return sorted(out)


def interface_ipv4(name: str) -> str:
    """``"172.17.0.1/16"`` for interface ``name``, or "" if it is missing or has no IPv4."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return ""
        for a in ipr.get_addr(family=socket.AF_INET, index=found[0]):
            addr = a.get_attr("IFA_ADDRESS") or a.get_attr("IFA_LOCAL")
            if addr:
                return f"{addr}/{a['prefixlen']}"
    return ""


def parse_resolv_conf(text: str) -> tuple[list[str], list[str], list[str]]:
    """(nameservers, search, options) of a resolv.conf text."""
    servers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            servers.append(words[1])
        elif words[0] in ("search", "domain"):
            search = words[1:]
        elif words[0] == "options":
            options.extend(words[1:])
    return servers, search, options


def read_host_resolv_conf(path: str = "/etc/resolv.conf") -> tuple[list[str], list[str], list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_resolv_conf(f.read())
    except OSError:
        return [], [], []
