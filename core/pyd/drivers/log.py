"""Log driver protocol, modelled on moby's ``daemon/logger.Logger`` and ``LogReader``.

A log driver is created once per daemon (``pyd_log_init``); for each container the core
calls ``open`` to get a ``LogWriter`` that receives every line the container prints.
Reading back is an optional ability (``LogReader``): when a driver lacks it, the core keeps a
local cache so ``pyd logs`` still works ("dual logging").
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Protocol, runtime_checkable


@dataclass
class LogMessage:
    """One line (or partial line) the container wrote."""

    line: bytes  # including the trailing newline, if there was one
    stream: str  # "stdout" or "stderr"
    time_nano: int  # Unix time in nanoseconds when the shim read it
    partial: bool = False  # the line was cut (longer than the buffer); more follows


@dataclass
class LogContext:
    """Who is logging, and where the driver may keep per-container files."""

    container_id: str
    container_name: str
    image: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    env: list[str] = field(default_factory=list)
    # A directory owned by this container (Docker's json-file puts <id>-json.log here).
    log_dir: str = ""


@dataclass
class ReadConfig:
    """What ``pyd logs`` asked for. ``tail`` < 0 means all; times are Unix nanoseconds."""

    tail: int = -1
    since_nano: int = 0
    until_nano: int = 0  # 0: no upper bound
    follow: bool = False
    # Set by the core when the client went away: a following reader returns soon after
    # (moby's WatchConsumerGone). None: the reader is stopped only by the writer closing.
    cancel: threading.Event | None = None


class LogWriter(Protocol):
    def log(self, msg: LogMessage) -> None:
        """Write one message. May block (the core honours mode=blocking|non-blocking)."""
        ...

    def close(self) -> None:
        """Flush and release resources; called once when the container's stdio ends."""
        ...


class LogDriver(Protocol):
    name: str

    def parse_options(self, raw: Mapping[str, str]) -> object:
        """Validate ``--log-opt``/``log-opts`` (the core has already removed ``mode`` and
        ``max-buffer-size``). Return an opaque parsed value that ``open`` accepts; raise
        ``InvalidOption`` naming the key and listing the valid keys. Pure: no side effects.
        """
        ...

    def open(self, ctx: LogContext, options: object) -> LogWriter:
        """Start logging for one container with options returned by ``parse_options``."""
        ...


@runtime_checkable
class LogReader(Protocol):
    """Optional ability: the driver can read back what it stored."""

    def read(self, ctx: LogContext, options: object, cfg: ReadConfig) -> Iterator[LogMessage]:
        """Yield stored messages in order, honouring ``cfg``.

        With ``cfg.follow`` the iterator blocks for new lines until the container's writer is
        closed; the core calls it from a worker thread and stops consuming when the client goes.
        """
        ...
