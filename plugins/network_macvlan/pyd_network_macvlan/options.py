"""``-o`` options of macvlan networks (Docker's keys)."""

from __future__ import annotations

import re
from typing import Callable, Mapping

from pyd.drivers.options import check_options

DRIVER = "macvlan"
PARENT = "parent"
MODE = "macvlan_mode"
MODES = ("bridge", "private", "vepa", "passthru")

IFNAMSIZ = 15
_IFNAME = re.compile(r"^[A-Za-z0-9_\-]+(\.[0-9]+)?$")


def parse_parent(value: str) -> str:
    """``eth0``, or ``eth0.20`` for the 802.1q sub-interface with VLAN ID 20 of ``eth0``."""
    v = value.strip()
    if not v or len(v) > IFNAMSIZ or not _IFNAME.match(v):
        raise ValueError(
            f"is not an interface name (1 to {IFNAMSIZ} characters; IFACE.VLAN for an 802.1q sub-interface)"
        )
    base, dot, vid = v.rpartition(".")
    if dot and not 1 <= int(vid) <= 4094:
        raise ValueError("has a VLAN ID outside 1 to 4094")
    return v


def parse_mode(value: str) -> str:
    v = value.strip().lower()
    if v not in MODES:
        raise ValueError(f"is not a macvlan mode ({', '.join(MODES)})")
    return v


PARSERS: dict[str, Callable[[str], object]] = {PARENT: parse_parent, MODE: parse_mode}


def parse_options(raw: Mapping[str, str]) -> dict[str, object]:
    return check_options(raw, PARSERS, flag="-o", driver=DRIVER, kind="network")


def coerce_options(options: Mapping[str, object]) -> dict[str, object]:
    """Accept parsed values or raw strings (as the core may persist them)."""
    return parse_options({k: str(v) for k, v in options.items()})


def split_vlan(parent: str) -> tuple[str, int]:
    """``("eth0", 20)`` for ``eth0.20``; ``(parent, 0)`` without a VLAN suffix."""
    base, dot, vid = parent.rpartition(".")
    return (base, int(vid)) if dot else (parent, 0)
