"""The local log cache ("dual logging") for log drivers that cannot read back.

When a container's log driver is not a ``LogReader`` (e.g. syslog), the core also keeps the
lines in a small local file so ``pyd logs`` still works, as dockerd 20.10 does. Format: one
JSON object per line, ``{"log": ..., "stream": ..., "time": <ns>}`` (``log`` as UTF-8 text with
surrogate escapes for raw bytes), rotated at ``max_size`` keeping ``max_files`` files.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from typing import Iterator

from pyd.drivers.log import LogMessage, ReadConfig

CACHE_NAME = "container-cached.log"
DEFAULT_MAX_SIZE = 20 * 1024 * 1024
DEFAULT_MAX_FILES = 2
_POLL = 0.05


def _encode(msg: LogMessage) -> bytes:
    doc = {"log": msg.line.decode("utf-8", "surrogateescape"), "stream": msg.stream, "time": msg.time_nano}
    if msg.partial:
        doc["partial"] = True
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def _decode(line: bytes) -> LogMessage | None:
    try:
        doc = json.loads(line)
        return LogMessage(
            doc["log"].encode("utf-8", "surrogateescape"),
            doc["stream"],
            int(doc["time"]),
            bool(doc.get("partial")),
        )
    except (ValueError, KeyError, TypeError):
        return None


class CacheWriter:
    """A ``LogWriter`` that appends to the cache and rotates it."""

    def __init__(self, directory: str, max_size: int = DEFAULT_MAX_SIZE, max_files: int = DEFAULT_MAX_FILES) -> None:
        self.path = os.path.join(directory, CACHE_NAME)
        self.max_size, self.max_files = max_size, max_files
        self._f = open(self.path, "ab")
        self._size = self._f.tell()
        self._lock = threading.Lock()

    def log(self, msg: LogMessage) -> None:
        data = _encode(msg)
        with self._lock:
            if self._size + len(data) > self.max_size and self._size:
                self._rotate()
            self._f.write(data)
            self._f.flush()
            self._size += len(data)

    def _rotate(self) -> None:
        self._f.close()
        for i in range(self.max_files - 1, 0, -1):
            src = self.path if i == 1 else f"{self.path}.{i - 1}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i}")
        self._f = open(self.path, "ab")
        self._size = 0

    def close(self) -> None:
        with self._lock:
            self._f.close()


def _read_file(path: str) -> Iterator[LogMessage]:
    try:
        with open(path, "rb") as f:
            for line in f:
                msg = _decode(line)
                if msg is not None:
                    yield msg
    except FileNotFoundError:
        return


def read_cache(directory: str, cfg: ReadConfig, closed: threading.Event, max_files: int = DEFAULT_MAX_FILES) -> Iterator[LogMessage]:
    """Stored messages honouring ``cfg``; with ``follow``, new ones until ``closed`` is set
    (the container's log pipeline ended) or ``cfg.cancel`` is set (the client left)."""
    path = os.path.join(directory, CACHE_NAME)

    def selected(msgs: Iterator[LogMessage]) -> Iterator[LogMessage]:
        for m in msgs:
            if cfg.since_nano and m.time_nano < cfg.since_nano:
                continue
            if cfg.until_nano and m.time_nano > cfg.until_nano:
                continue
            yield m

    files = [f"{path}.{i}" for i in range(max_files - 1, 0, -1)] + [path]
    try:
        start_size = os.path.getsize(path)
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        start_size, inode = 0, 0
    history: Iterator[LogMessage] = (m for f in files for m in _read_file(f) if f != path)
    # read the current file only up to where it was, then follow from there
    current: list[LogMessage] = []
    if start_size:
        with open(path, "rb") as f:
            data = f.read(start_size)
        cut = data.rfind(b"\n") + 1
        start_size = cut
        current = [m for m in (_decode(x) for x in data[:cut].splitlines()) if m is not None]
    stored: Iterator[LogMessage] = iter([*history, *current])
    if cfg.tail >= 0:  # tail counts before since/until, as the drivers do
        stored = iter(deque(stored, maxlen=cfg.tail) if cfg.tail else ())
    yield from selected(stored)
    if not cfg.follow:
        return
    pos = start_size
    while True:
        if cfg.cancel is not None and cfg.cancel.is_set():
            return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_ino != inode or st.st_size < pos):
            inode, pos = st.st_ino, 0  # rotated
        if st is not None and st.st_size > pos:
            with open(path, "rb") as f:
                f.seek(pos)
                data = f.read()
            cut = data.rfind(b"\n") + 1
            pos += cut
            for m in selected(_decode(x) for x in data[:cut].splitlines() if x):  # type: ignore[misc]
                if m is None:
                    continue
                if cfg.until_nano and m.time_nano > cfg.until_nano:
                    return
                yield m
            continue
        if closed.is_set():
            return
        if cfg.until_nano and time.time_ns() > cfg.until_nano:
            return
        closed.wait(_POLL)
