"""Shared parsers for driver option values, so "10m" means the same in every driver.

Option values arrive as strings, as Docker's do. Each parser raises ``ValueError`` with a
short description of what is accepted; ``check_options`` turns that into ``InvalidOption``
naming the flag, the driver, the key and the valid keys.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, TypeVar

from pyd.errors import InvalidOption

T = TypeVar("T")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$", re.I)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def parse_size(value: str) -> int:
    """``"10m"`` -> 10485760. Binary units (k, m, g, t, p, with optional b/ib), as Docker's RAMInBytes."""
    m = _SIZE.match(value)
    if not m:
        raise ValueError("is not a size (e.g. 10m, 1g)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_bool(value: str) -> bool:
    """Go's strconv.ParseBool words: 1, t, true, 0, f, false (any case)."""
    v = value.strip().lower()
    if v in ("1", "t", "true", "yes", "on"):
        return True
    if v in ("0", "f", "false", "no", "off"):
        return False
    raise ValueError("is not a boolean (true or false)")


def parse_int(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError("is not an integer") from None


def parse_positive_int(value: str) -> int:
    n = parse_int(value)
    if n < 1:
        raise ValueError("must be a positive integer")
    return n


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DUR_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """Go duration syntax (``"1m30s"``, ``"500ms"``) -> seconds."""
    v = value.strip()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(v):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(v) or not v:
        raise ValueError("is not a duration (e.g. 10s, 1m30s)")
    return total


def check_options(
    raw: Mapping[str, str],
    parsers: Mapping[str, Callable[[str], object]],
    *,
    flag: str,
    driver: str,
    kind: str,
) -> dict[str, object]:
    """Parse every key of ``raw`` with its parser; unknown keys and bad values raise InvalidOption.

    >>> check_options({"max-size": "1k"}, {"max-size": parse_size}, flag="--log-opt",
    ...               driver="json-file", kind="log")
    {'max-size': 1024}
    """
    valid = ", ".join(sorted(parsers)) or "(none)"
    out: dict[str, object] = {}
    for key, value in raw.items():
        parser = parsers.get(key)
        if parser is None:
            raise InvalidOption(
                f'invalid {flag} for {kind} driver "{driver}": unknown option "{key}"; valid keys: {valid}'
            )
        try:
            out[key] = parser(value)
        except ValueError as exc:
            raise InvalidOption(
                f'invalid {flag} for {kind} driver "{driver}": {key}="{value}" {exc}; valid keys: {valid}'
            ) from None
    return out
