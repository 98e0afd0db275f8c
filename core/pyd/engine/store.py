"""On-disk helpers shared by the engine's services: atomic writes and safe names.

* ``atomic_write``, ``atomic_write_json``: a crash never leaves a half-written record that
  reads as complete (temp file in the same directory, fsync, rename, fsync of the directory).
  The same writer drivers get, from ``pyd.drivers.state``.
* ``validate_name``: Docker's rules for container, volume, network and image names, checked
  before a name is ever used as a path component or stored.
* ``safe_join``: join a validated name under a root and refuse anything that escapes it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pyd.drivers.state import atomic_write, atomic_write_json
from pyd.errors import InvalidParameter

__all__ = ["atomic_write", "atomic_write_json", "safe_join", "validate_name"]


# Docker's rules (moby daemon/names, volume/local, distribution/reference). Always used with
# fullmatch: "$" alone would accept a trailing newline.
_CONTAINER = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_VOLUME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
# Docker accepts almost any network name; pyd uses names as path components, so it keeps to
# the character set of the other objects (compose's "<project>_default" and all usual names fit).
_NETWORK = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
# An image reference: [domain[:port]/]path[:tag][@digest]; path components are lower case.
_REF_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*"
_REF_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_IMAGE = re.compile(
    rf"^(?:{_REF_DOMAIN}/)?{_REF_COMPONENT}(?:/{_REF_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
_MAX_NAME = 255


def validate_name(kind: str, name: str) -> str:
    """Check ``name`` for an object of ``kind`` ("container", "volume", "network", "image")
    against Docker's rules; return it (without a container name's leading "/").

    Raises ``InvalidParameter`` (400) with Docker's wording, so nothing reaches a path.
    """
    if kind == "container":
        if not _CONTAINER.fullmatch(name) or len(name) > _MAX_NAME:
            raise InvalidParameter(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        return name.lstrip("/")
    if kind == "volume":
        if not _VOLUME.fullmatch(name) or len(name) > _MAX_NAME:
            raise InvalidParameter(
                f'"{name}" includes invalid characters for a local volume name, only '
                '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host '
                "directory, use absolute path"
            )
        return name
    if kind == "network":
        if not _NETWORK.fullmatch(name) or len(name) > _MAX_NAME:
            raise InvalidParameter(
                f'invalid network name "{name}": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed'
            )
        return name
    if kind == "image":
        if len(name) > _MAX_NAME or not _IMAGE.fullmatch(name):
            raise InvalidParameter(f'invalid reference format: "{name}"')
        return name
    raise ValueError(f"validate_name: unknown kind {kind!r}")


def safe_join(root: str | os.PathLike[str], *parts: str) -> Path:
    """``root/parts...``, refusing empty parts, "." / "..", slashes and NUL bytes.

    A last line of defence: callers validate names first; this makes a missed check an
    error instead of a write outside ``root``.
    """
    base = Path(root)
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\0" in part:
            raise InvalidParameter(f'invalid path component "{part}"')
        base = base / part
    return base
