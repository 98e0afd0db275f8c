"""Capability names and numbers, and what the running process holds."""

from __future__ import annotations

from typing import Iterable

from pyd.drivers.execdriver import CAPABILITY_NAMES

NAMES = CAPABILITY_NAMES
_NUMBERS = {name: i for i, name in enumerate(NAMES)}


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(NAMES) - 1


def number(name: str) -> int:
    """``"NET_ADMIN"``, ``"CAP_NET_ADMIN"`` or ``"net_admin"`` -> 12; ``KeyError`` if unknown."""
    key = name.upper()
    if key.startswith("CAP_"):
        key = key[4:]
    return _NUMBERS[key]


def name(num: int) -> str:
    return NAMES[num] if num < len(NAMES) else f"CAP_{num}"


def held(which: str = "CapBnd", pid: int | str = "self") -> set[int]:
    """Capability numbers in ``which`` (CapBnd, CapPrm, CapEff, ...) of a process."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(which + ":"):
                mask = int(line.split()[1], 16)
                return {i for i in range(64) if mask >> i & 1}
    return set()


def unknown(names: Iterable[str]) -> list[str]:
    out = []
    for n in names:
        try:
            number(n)
        except KeyError:
            out.append(n)
    return out
