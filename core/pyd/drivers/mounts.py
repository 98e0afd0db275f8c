"""Reading the mount table (``/proc/self/mountinfo``), for drivers and the engine (stdlib only)."""

from __future__ import annotations

import os
from typing import NamedTuple

MOUNTINFO = "/proc/self/mountinfo"


def unescape(field: str) -> str:
    """A mountinfo path field as the path: the kernel writes space, tab, newline and
    backslash as ``\\ooo`` (octal)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points(mountinfo: str = MOUNTINFO) -> list[str]:
    """Every mount point in this mount namespace, in mount order (stacked ones repeated)."""
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        return [unescape(line.split()[4]) for line in f]


def mounts_under(prefix: str, mountinfo: str = MOUNTINFO) -> list[str]:
    """Mount points at or below ``prefix``, deepest first (the order to unmount them in)."""
    prefix = str(prefix).rstrip("/")
    found = [p for p in mount_points(mountinfo) if p == prefix or p.startswith(prefix + "/")]
    return sorted(found, key=len, reverse=True)


class MountEntry(NamedTuple):
    mount_point: str
    fstype: str
    optional: tuple[str, ...]  # propagation: "shared:N", "master:N", ...


def mount_of(path: str, mountinfo: str = MOUNTINFO) -> MountEntry | None:
    """The mount ``path`` lies on: the deepest mount point above it, the last one stacked
    there. ``path`` is resolved first (``realpath``)."""
    real = os.path.realpath(path)
    best: MountEntry | None = None
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            parts = line.split()
            try:
                sep = parts.index("-")
            except ValueError:
                continue
            point = unescape(parts[4])
            if real == point or real.startswith(point.rstrip("/") + "/"):
                if best is None or len(point) >= len(best.mount_point):
                    best = MountEntry(point, parts[sep + 1] if len(parts) > sep + 1 else "", tuple(parts[6:sep]))
    return best
