"""pyd-log-plaintext: an example third-party log driver for pyd (``--log-driver plaintext``).

Each container's output goes to ``<dir>/<container id>.log``, one record per line::

    2026-11-28T06:59:48.500237729Z stdout hello
    2026-11-28T06:59:48.501472296Z stderr+ the first piece of a long line,
    2026-11-28T06:59:48.501472301Z stderr and the rest of it

``TIMESTAMP`` is RFC 3339 in UTC with all nine digits (the format of ``docker logs -t``);
``STREAM`` is ``stdout`` or ``stderr``, with ``+`` when the line continues in the next record
(a partial line); ``LINE`` is the container's bytes without the newline, unchanged otherwise.

Everything a pyd plugin needs is in this file:

1. the ``pyd_log_init`` hookimpl that answers for the name ``plaintext`` (and only that);
2. a driver object with ``name``, ``parse_options`` and ``open`` (``pyd.drivers.log.LogDriver``);
3. optionally ``read``, which makes it a ``pyd.drivers.log.LogReader`` (``pyd logs`` works);
4. errors from ``pyd.errors`` only, with messages naming the option and what is accepted.

It imports nothing from pyd but the plugin API: ``pyd`` (the version), ``pyd.hookspecs``,
``pyd.drivers``, ``pyd.errors``.
"""

from __future__ import annotations

import calendar
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Iterator, Mapping

import pyd
from pyd.drivers.log import LogContext, LogMessage, ReadConfig
from pyd.drivers.options import check_options
from pyd.errors import InvalidParameter, NotSupported
from pyd.hookspecs import hookimpl

NAME = "plaintext"
# The plugin API this driver was written against. pyd bumps PLUGIN_API_VERSION only for an
# incompatible change, so "different" means "may not work": refuse to load rather than fail later.
WRITTEN_FOR_API = "0.1"
POLL_SECONDS = 0.05  # how often a follower looks for new records


# -- options -----------------------------------------------------------------------------------


def _directory(value: str) -> str:
    """The ``path`` option: an absolute directory. Checked, never created (parsing is pure)."""
    if not value.strip():
        raise ValueError("is empty; give an absolute directory (e.g. /var/log/pyd)")
    if "\0" in value:
        raise ValueError("contains a NUL byte")
    path = PurePosixPath(value)
    if not path.is_absolute():
        raise ValueError("is not an absolute path (e.g. /var/log/pyd)")
    if ".." in path.parts:
        raise ValueError('must not contain ".." (give the directory itself)')
    if os.path.exists(value) and not os.path.isdir(value):
        raise ValueError("exists and is not a directory")
    return str(path)


PARSERS = {"path": _directory}


@dataclass(frozen=True)
class PlaintextOptions:
    path: str = ""  # empty: the directory the core gives each container (LogContext.log_dir)


# -- the record format -----------------------------------------------------------------------


def format_time(time_nano: int) -> bytes:
    sec, frac = divmod(time_nano, 1_000_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z").encode()


_TIME = re.compile(rb"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{9})Z$")


def parse_time(value: bytes) -> int:
    m = _TIME.match(value)
    if m is None:
        raise ValueError(f"bad timestamp {value!r}")
    fields = [int(g) for g in m.groups()]
    return calendar.timegm((*fields[:6], 0, 0, 0)) * 1_000_000_000 + fields[6]


def format_record(msg: LogMessage) -> bytes:
    body = msg.line[:-1] if msg.line.endswith(b"\n") else msg.line
    # A newline inside a message (the shim never sends one) would break the format: such a
    # message becomes several records with the same time.
    pieces = body.split(b"\n")
    out = []
    for i, piece in enumerate(pieces):
        cont = msg.partial and i == len(pieces) - 1
        stream = (msg.stream + ("+" if cont else "")).encode()
        out.append(format_time(msg.time_nano) + b" " + stream + b" " + piece + b"\n")
    return b"".join(out)


def parse_record(raw: bytes) -> LogMessage:
    """One record without its newline -> the message that was logged."""
    stamp, stream, line = raw.split(b" ", 2)
    partial = stream.endswith(b"+")
    return LogMessage(
        line=line if partial else line + b"\n",
        stream=stream.rstrip(b"+").decode(),
        time_nano=parse_time(stamp),
        partial=partial,
    )


# -- the driver --------------------------------------------------------------------------------


class PlaintextWriter:
    """``pyd.drivers.log.LogWriter``: appends records, flushed on every line."""

    def __init__(self, driver: PlaintextDriver, path: Path) -> None:
        self._driver, self._path = driver, path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")
        self._lock = threading.Lock()
        self._closed = False

    def log(self, msg: LogMessage) -> None:
        record = format_record(msg)
        with self._lock:
            if self._closed:
                raise ValueError(f"log writer for {self._path} is closed")
            self._file.write(record)
            self._file.flush()  # a follower sees the line at once

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return  # close is idempotent
            self._closed = True
            self._file.close()
        self._driver._writer_closed(self._path)


class PlaintextDriver:
    """``LogDriver`` and ``LogReader`` (because it has ``read``)."""

    name = NAME

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self._lock = threading.Lock()
        self._writers: dict[Path, int] = {}  # open writers per file, for followers

    def parse_options(self, raw: Mapping[str, str]) -> PlaintextOptions:
        parsed = check_options(raw, PARSERS, flag="--log-opt", driver=NAME, kind="log")
        return PlaintextOptions(**{k.replace("-", "_"): v for k, v in parsed.items()})  # type: ignore[arg-type]

    def log_file(self, ctx: LogContext, options: object) -> Path:
        if not isinstance(options, PlaintextOptions):
            raise TypeError(f"{NAME}: options must come from parse_options")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", ctx.container_id):
            raise InvalidParameter(f'log driver "{NAME}": invalid container ID "{ctx.container_id}"')
        directory = options.path or ctx.log_dir or str(self.home / ctx.container_id)
        return Path(directory) / f"{ctx.container_id}.log"

    def open(self, ctx: LogContext, options: object) -> PlaintextWriter:
        path = self.log_file(ctx, options)
        writer = PlaintextWriter(self, path)
        with self._lock:
            self._writers[path] = self._writers.get(path, 0) + 1
        return writer

    def _writer_closed(self, path: Path) -> None:
        with self._lock:
            self._writers[path] -= 1
            if not self._writers[path]:
                del self._writers[path]

    def _writing(self, path: Path) -> bool:
        with self._lock:
            return path in self._writers

    def read(self, ctx: LogContext, options: object, cfg: ReadConfig) -> Iterator[LogMessage]:
        path = self.log_file(ctx, options)
        return self._read(path, cfg)

    def _read(self, path: Path, cfg: ReadConfig) -> Iterator[LogMessage]:
        try:
            f: IO[bytes] | None = open(path, "rb")
        except FileNotFoundError:
            f = None
        try:
            pending = b""

            def new_messages() -> list[LogMessage]:
                nonlocal pending
                if f is None:
                    return []
                *records, pending = (pending + f.read()).split(b"\n")
                return [parse_record(r) for r in records]

            def in_window(msg: LogMessage) -> bool | None:
                """True: yield it; False: skip it; None: past ``until``, stop."""
                if cfg.until_nano and msg.time_nano > cfg.until_nano:
                    return None
                return msg.time_nano >= cfg.since_nano

            stored: deque[LogMessage] | list[LogMessage] = new_messages()
            if cfg.tail >= 0:  # the last N records, before since/until (as Docker does)
                stored = deque(stored, maxlen=cfg.tail)
            for msg in stored:
                keep = in_window(msg)
                if keep is None:
                    return
                if keep:
                    yield msg
            if not cfg.follow:
                return
            while not (cfg.cancel is not None and cfg.cancel.is_set()):
                writing = self._writing(path)  # looked at before reading: no line is missed
                if f is None and path.exists():
                    f = open(path, "rb")
                fresh = new_messages()
                for msg in fresh:
                    keep = in_window(msg)
                    if keep is None:
                        return
                    if keep:
                        yield msg
                if not fresh:
                    if not writing:
                        return  # the container's writer is closed and everything was read
                    time.sleep(POLL_SECONDS)
        finally:
            if f is not None:
                f.close()


@hookimpl
def pyd_log_init(name: str, home: Path) -> PlaintextDriver | None:
    """pyd calls this with the name a user selected; answer only for our own name."""
    if name != NAME:
        return None
    if pyd.PLUGIN_API_VERSION != WRITTEN_FOR_API:
        raise NotSupported(
            f'log driver "{NAME}" was written for pyd plugin API {WRITTEN_FOR_API}, '
            f"this pyd has {pyd.PLUGIN_API_VERSION}; install a matching pyd-log-plaintext"
        )
    return PlaintextDriver(home)
