"""Docker's json-file line format: encoding and decoding one entry.

An entry is one line: ``{"log":"hi\\n","stream":"stdout","attrs":{...},"time":"<RFC3339Nano>"}``
with the keys in that order, ``attrs`` only when there are extra attributes, and ``log``
omitted when empty. Strings are escaped as moby's writer does (Go's HTML-safe JSON): ``\\n``,
``\\r``, ``\\"`` and ``\\\\`` by name, other control bytes and ``<``, ``>``, ``&`` as ``\\u00xx``,
U+2028/U+2029 as ``\\u2028``/``\\u2029``, each byte that is not valid UTF-8 as ``\\ufffd``.
Times are UTC in Go's RFC3339Nano: trailing zeros of the fraction dropped, and no fraction at
all on a whole second.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from typing import Mapping, NamedTuple

_ESCAPE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\udc80-\udcff]')
_NAMED = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r"}


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    named = _NAMED.get(c)
    if named is not None:
        return named
    if "\udc80" <= c <= "\udcff":  # a byte that was not valid UTF-8 (surrogateescape)
        return "\\ufffd"
    return f"\\u{ord(c):04x}"


def json_string(data: bytes | str) -> str:
    """``data`` as a JSON string literal, escaped byte-for-byte as moby's json-file writer does."""
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    return '"' + _ESCAPE.sub(_escape_char, text) + '"'


def format_time(time_nano: int) -> str:
    """Unix nanoseconds -> Go's ``time.RFC3339Nano`` in UTC, e.g. ``2026-11-28T06:59:48.5Z``."""
    sec, frac = divmod(time_nano, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    if frac:
        stamp += "." + f"{frac:09d}".rstrip("0")
    return stamp + "Z"


_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$"
)


def parse_time(value: str) -> int:
    """RFC 3339 (any fraction length up to nanoseconds, any offset) -> Unix nanoseconds."""
    m = _TIME.match(value)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {value!r}")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    sec = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    zone = m.group(8)
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        sec -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    frac = int((m.group(7) or "0").ljust(9, "0"))
    return sec * 1_000_000_000 + frac


def encode_attrs(attrs: Mapping[str, str]) -> str:
    """The ``attrs`` object as Go marshals a ``map[string]string``: compact, keys sorted."""
    return "{" + ",".join(f"{json_string(k)}:{json_string(v)}" for k, v in sorted(attrs.items())) + "}"


def encode_entry(line: bytes, stream: str, time_nano: int, attrs: str = "") -> bytes:
    """One json-file line, newline included. ``attrs`` is the output of ``encode_attrs``."""
    parts = []
    if line:
        parts.append('"log":' + json_string(line))
    if stream:
        parts.append('"stream":' + json_string(stream))
    if attrs:
        parts.append('"attrs":' + attrs)
    parts.append(f'"time":"{format_time(time_nano)}"')
    return ("{" + ",".join(parts) + "}\n").encode("utf-8")


class Entry(NamedTuple):
    line: bytes
    stream: str
    time_nano: int
    attrs: dict[str, str]


def decode_entry(raw: bytes) -> Entry:
    """Parse one json-file line; ``ValueError`` if it is not one (e.g. cut short by a crash)."""
    doc = json.loads(raw)
    if not isinstance(doc, dict) or "time" not in doc:
        raise ValueError("not a json-file log entry")
    return Entry(
        line=str(doc.get("log", "")).encode("utf-8", "replace"),
        stream=str(doc.get("stream", "")),
        time_nano=parse_time(str(doc["time"])),
        attrs=dict(doc.get("attrs") or {}),
    )
