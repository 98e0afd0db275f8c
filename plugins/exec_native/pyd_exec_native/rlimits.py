"""Resource limit names (Docker's ``--ulimit`` names, or ``RLIMIT_*``) -> numbers."""

from __future__ import annotations

# Linux's RLIMIT_* numbers (the resource module lacks some of them)
RLIMITS = {
    "cpu": 0,
    "fsize": 1,
    "data": 2,
    "stack": 3,
    "core": 4,
    "rss": 5,
    "nproc": 6,
    "nofile": 7,
    "memlock": 8,
    "as": 9,
    "locks": 10,
    "sigpending": 11,
    "msgqueue": 12,
    "nice": 13,
    "rtprio": 14,
    "rttime": 15,
}

def number(name: str) -> int:
    """``"nofile"`` or ``"RLIMIT_NOFILE"`` -> the resource number; ``KeyError`` if unknown."""
    key = name.lower()
    if key.startswith("rlimit_"):
        key = key[7:]
    return RLIMITS[key]
