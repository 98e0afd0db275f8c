"""``-o`` options of bridge networks and the daemon settings the driver reads.

Keys and meanings are Docker's (``docker network inspect bridge`` shows them). Values arrive
as strings; ``parse_options`` turns them into typed values and rejects unknown keys.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable, Mapping

from pyd.drivers.options import check_options, parse_bool, parse_int
from pyd.errors import InvalidOption

DRIVER = "bridge"

BRIDGE_NAME = "com.docker.network.bridge.name"
ENABLE_ICC = "com.docker.network.bridge.enable_icc"
ENABLE_IP_MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
HOST_BINDING_IPV4 = "com.docker.network.bridge.host_binding_ipv4"
DEFAULT_BRIDGE = "com.docker.network.bridge.default_bridge"
MTU = "com.docker.network.driver.mtu"

IFNAMSIZ = 15  # usable characters of a Linux interface name
_IFNAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def parse_ifname(value: str) -> str:
    v = value.strip()
    if not v or len(v) > IFNAMSIZ or not _IFNAME.match(v) or v in (".", ".."):
        raise ValueError(
            f"is not an interface name (1 to {IFNAMSIZ} characters of letters, digits, '_', '-', '.')"
        )
    return v


def parse_mtu(value: str) -> int:
    n = parse_int(value)
    if not 68 <= n <= 65535:
        raise ValueError("is not an MTU (68 to 65535)")
    return n


def parse_ipv4(value: str) -> str:
    v = value.strip()
    try:
        return str(ipaddress.IPv4Address(v))
    except ValueError:
        raise ValueError("is not an IPv4 address (e.g. 127.0.0.1 or 0.0.0.0)") from None


PARSERS: dict[str, Callable[[str], object]] = {
    BRIDGE_NAME: parse_ifname,
    ENABLE_ICC: parse_bool,
    ENABLE_IP_MASQUERADE: parse_bool,
    HOST_BINDING_IPV4: parse_ipv4,
    DEFAULT_BRIDGE: parse_bool,
    MTU: parse_mtu,
}


def parse_options(raw: Mapping[str, str]) -> dict[str, object]:
    """Validate ``-o`` options; typed values keyed by Docker's option names."""
    return check_options(raw, PARSERS, flag="-o", driver=DRIVER, kind="network")


def coerce_options(options: Mapping[str, object]) -> dict[str, object]:
    """Accept parsed values or raw strings (as the core may persist them) for ``create``."""
    raw = {k: v for k, v in options.items() if isinstance(v, str)}
    out = dict(options)
    out.update(parse_options(raw))
    unknown = sorted(set(out) - set(PARSERS))
    if unknown:
        raise InvalidOption(
            f'invalid -o for network driver "{DRIVER}": unknown option "{unknown[0]}"; '
            f"valid keys: {', '.join(sorted(PARSERS))}"
        )
    return out


def _setting_bool(settings: Mapping[str, object], key: str, default: bool) -> bool:
    value = settings.get(key, default)
    if isinstance(value, bool):
        return value
    if value is None or value == "":
        return default
    try:
        return parse_bool(str(value))
    except ValueError:
        raise InvalidOption(
            f'network driver "{DRIVER}": daemon setting {key}="{value}" is not a boolean (true or false)'
        ) from None


@dataclass(frozen=True)
class Settings:
    """Daemon-wide settings (daemon.json names) the bridge driver reads from its context.

    ``bridge``, ``icc``, ``ip-masq`` and ``ip`` apply to the default network only (the one
    created with ``com.docker.network.bridge.default_bridge=true``), as in Docker.
    """

    bridge: str  # name of the default network's bridge
    mtu: int  # MTU of networks created without com.docker.network.driver.mtu
    icc: bool
    ip_masq: bool
    ip: str  # default host IP of published ports on the default network ("" = all)
    iptables: bool  # False: no firewall rules at all (no NAT, no isolation, no -p)
    ip_forward: bool  # True: enable net.ipv4.ip_forward for non-internal networks

    @classmethod
    def from_context(cls, settings: Mapping[str, object], prefix: str) -> Settings:
        bridge = str(settings.get("bridge") or f"{prefix}0")
        ip_raw = str(settings.get("ip") or "")
        values = {"mtu": str(settings.get("mtu") or 1500), "ip": ip_raw, "bridge": bridge}
        try:
            key = "mtu"
            mtu = parse_mtu(values[key])
            key = "ip"
            ip = "" if ip_raw in ("", "0.0.0.0") else parse_ipv4(ip_raw)
            key = "bridge"
            if bridge != "none":
                parse_ifname(bridge)
        except ValueError as exc:
            raise InvalidOption(
                f'network driver "{DRIVER}": daemon setting {key}="{values[key]}" {exc}'
            ) from None
        return cls(
            bridge=bridge,
            mtu=mtu,
            icc=_setting_bool(settings, "icc", True),
            ip_masq=_setting_bool(settings, "ip-masq", True),
            ip=ip,
            iptables=_setting_bool(settings, "iptables", True),
            ip_forward=_setting_bool(settings, "ip-forward", True),
        )
