"""Helpers for drivers that keep state on disk (stdlib only): atomic writes and JSON records.

A driver gets a ``home`` directory from the core (see ``pyd.hookspecs``) and may keep files
there to find its objects again after a daemon restart. These helpers make sure a crash
never leaves a half-written file that reads as complete:

* ``atomic_write`` / ``atomic_write_json``: replace one file (temp file, fsync, rename).
* ``JsonRecords``: one JSON document per key in a directory, e.g. one per network.

The engine uses the same writer for its own records.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

from pyd.errors import InvalidParameter

T = TypeVar("T")

log = logging.getLogger(__name__)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically: readers see the old or the new content.

    The temp file (``.<name>.*.tmp``) lives in the same directory, since a rename is atomic
    only within one filesystem, and is removed again if anything fails. ``mode`` is the
    file's permission bits.

    ``durable=True`` fsyncs the file before the rename and the directory after it, so the new
    content survives a power cut. ``durable=False`` skips both (each costs 1-25 ms on a busy
    disk): still atomic for a crash of the process, but a power cut may lose the write. Use it
    only for state that is cheap to lose (runtime state a reboot makes obsolete anyway).

    Raises ``OSError`` (e.g. ``FileNotFoundError`` when the directory is missing). Idempotent:
    writing the same data again gives the same file.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if not durable:
        return
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)  # make the rename itself durable
    finally:
        os.close(dfd)


def atomic_write_json(
    path: str | os.PathLike[str],
    obj: Any,
    mode: int = 0o600,
    *,
    durable: bool = True,
    indent: int | None = None,
    sort_keys: bool = False,
) -> None:
    """``atomic_write`` of ``obj`` as JSON: compact by default, or with ``indent`` (and
    ``sort_keys``) for files people read. Raises ``TypeError`` for an object JSON cannot
    encode (nothing is written then) and ``OSError`` as ``atomic_write``."""
    if indent is None:
        text = json.dumps(obj, separators=(",", ":"), sort_keys=sort_keys)
    else:
        text = json.dumps(obj, indent=indent, sort_keys=sort_keys)
    atomic_write(path, text.encode(), mode, durable=durable)


class JsonRecords:
    """One JSON document per key, in ``<directory>/<key>.json`` (e.g. a driver's networks).

    Documents are written atomically with ``indent=1, sort_keys=True``. ``owner`` names the
    driver in log messages (e.g. ``"network:bridge"``). The directory is made (mode 0700) on
    construction; raises ``OSError`` if that fails.
    """

    def __init__(self, directory: str | os.PathLike[str], *, owner: str = "") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.owner = owner

    def path(self, key: str) -> Path:
        """The file of ``key``. Raises ``InvalidParameter`` for a key that is empty, starts
        with a dot or contains a slash (it must stay a file name inside the directory)."""
        if not key or "/" in key or "\0" in key or key.startswith("."):
            raise InvalidParameter(f"bad record key {key!r} for {self.dir} (a file name without '/')")
        return self.dir / f"{key}.json"

    def load_all(self, parse: Callable[[Any], T]) -> list[T]:
        """``parse`` applied to every document, in file-name order. A file that is not JSON or
        that ``parse`` rejects (``ValueError``, ``TypeError``, ``KeyError``) is logged and
        skipped, so one damaged record does not stop the driver. Reads only; repeatable."""
        out: list[T] = []
        for p in sorted(self.dir.glob("*.json")):
            try:
                out.append(parse(json.loads(p.read_text())))
            except (ValueError, TypeError, KeyError) as exc:
                log.error("ignoring unreadable state %s: %s", p, exc, extra={"driver": self.owner})
        return out

    def save(self, key: str, doc: Any, *, durable: bool = True) -> None:
        """Replace the document of ``key`` atomically (see ``atomic_write`` for ``durable``).
        Raises ``InvalidParameter`` for a bad key, ``TypeError``/``OSError`` as
        ``atomic_write_json``. Idempotent."""
        atomic_write_json(self.path(key), doc, durable=durable, indent=1, sort_keys=True)

    def delete(self, key: str) -> None:
        """Remove the document of ``key``; a missing one is not an error (idempotent)."""
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass
