"""What ``network inspect``/``ls`` and container inspect show of networks. Pure functions.

Shapes are Docker's (API 1.41, see the traces): a network object with ``IPAM``,
``Containers`` keyed by container ID, ``Options``, ``Labels``; a container's
``NetworkSettings`` with one ``Networks`` entry per attached network.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterable, Mapping

from pyd.engine.network_records import Attachment, EndpointRecord, NetworkRecord
from pyd.errors import InvalidParameter

LIST_FILTERS = frozenset({"driver", "id", "label", "name", "type", "scope", "dangling"})
PRUNE_FILTERS = frozenset({"until", "label", "label!"})


def ipam_config(rec: NetworkRecord) -> list[dict[str, Any]]:
    out = []
    for p in rec.pools:
        entry: dict[str, Any] = {"Subnet": p.subnet}
        if p.ip_range:
            entry["IPRange"] = p.ip_range
        # The default bridge shows only its subnet (as dockerd 20.10 does); the others their
        # gateway too.
        if p.gateway and not rec.extra.get("default_bridge"):
            entry["Gateway"] = p.gateway.split("/", 1)[0]
        if p.aux_addresses:
            entry["AuxiliaryAddresses"] = dict(p.aux_addresses)
        out.append(entry)
    return out


def network_doc(rec: NetworkRecord, containers: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Docker's network object (``GET /networks/{id}``)."""
    return {
        "Name": rec.name,
        "Id": rec.id,
        "Created": rec.created,
        "Scope": rec.scope,
        "Driver": rec.driver,
        "EnableIPv6": rec.enable_ipv6,
        "IPAM": {"Driver": rec.ipam_driver, "Options": rec.ipam_options, "Config": ipam_config(rec)},
        "Internal": rec.internal,
        "Attachable": rec.attachable,
        "Ingress": rec.ingress,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": dict(containers),
        "Options": dict(rec.options),
        "Labels": dict(rec.labels),
    }


def container_entry(name: str, ep: EndpointRecord) -> dict[str, Any]:
    return {
        "Name": name,
        "EndpointID": ep.id,
        "MacAddress": ep.mac,
        "IPv4Address": ep.address,
        "IPv6Address": "",
    }


def gateway_of(rec: NetworkRecord | None, ip: str) -> str:
    """The gateway of the pool that holds ``ip``."""
    if rec is None or not ip:
        return ""
    addr = ipaddress.IPv4Address(ip)
    for p in rec.pools:
        if p.gateway and addr in ipaddress.IPv4Network(p.subnet, strict=False):
            return p.gateway.split("/", 1)[0]
    return ""


def endpoint_settings(rec: NetworkRecord | None, att: Attachment, ep: EndpointRecord | None) -> dict[str, Any]:
    """One ``NetworkSettings.Networks`` entry (empty addresses while the container is stopped)."""
    ip = ep.ip if ep else ""
    return {
        "IPAMConfig": {"IPv4Address": att.ipv4} if att.ipv4 else None,
        "Links": list(att.links) or None,
        "Aliases": list(att.aliases) or None,
        "NetworkID": rec.id if rec else att.network_id,
        "EndpointID": ep.id if ep else "",
        "Gateway": gateway_of(rec, ip),
        "IPAddress": ip,
        "IPPrefixLen": ep.prefixlen if ep else 0,
        "IPv6Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "MacAddress": ep.mac if ep else "",
        "DriverOpts": dict(att.driver_opts) or None,
    }


def empty_settings() -> dict[str, Any]:
    """``NetworkSettings`` with nothing attached."""
    return {
        "Bridge": "",
        "SandboxID": "",
        "HairpinMode": False,
        "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "Ports": {},
        "SandboxKey": "",
        "SecondaryIPAddresses": None,
        "SecondaryIPv6Addresses": None,
        "EndpointID": "",
        "Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "IPAddress": "",
        "IPPrefixLen": 0,
        "IPv6Gateway": "",
        "MacAddress": "",
        "Networks": {},
    }


# -- filters ----------------------------------------------------------------------------------


def check_filters(filters: Mapping[str, Iterable[str]], allowed: frozenset[str] = LIST_FILTERS) -> None:
    for key, values in filters.items():
        if key not in allowed:
            raise InvalidParameter(f"invalid filter '{key}'")
        if key == "type":
            for v in values:
                if v not in ("custom", "builtin"):
                    raise InvalidParameter(f"invalid filter: 'type'='{v}'")
        if key == "dangling":
            for v in values:
                if v.lower() not in ("true", "false", "1", "0"):
                    raise InvalidParameter(f"invalid filter 'dangling={v}'")


def _regex_any(values: Iterable[str], source: str) -> bool:
    # Docker's filters.Match: the exact value, or the value as a regular expression.
    for v in values:
        if v == source:
            return True
        try:
            if re.search(v, source):
                return True
        except re.error:
            continue
    return False


def labels_match(wanted: Iterable[str], labels: Mapping[str, str]) -> bool:
    """Every ``key`` / ``key=value`` in ``wanted`` holds for ``labels``."""
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def matches(rec: NetworkRecord, filters: Mapping[str, list[str]], in_use: bool) -> bool:
    for key, values in filters.items():
        if not values:
            continue
        if key == "driver" and rec.driver not in values:
            return False
        if key == "id" and not _regex_any(values, rec.id):
            return False
        if key == "name" and not _regex_any(values, rec.name):
            return False
        if key == "label" and not labels_match(values, rec.labels):
            return False
        if key == "scope" and rec.scope not in values:
            return False
        if key == "type" and ("builtin" if rec.predefined else "custom") not in values:
            return False
        if key == "dangling":
            want = {v.lower() in ("true", "1") for v in values}
            dangling = not in_use and not rec.predefined
            if dangling not in want:
                return False
    return True
