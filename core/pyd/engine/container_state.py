"""A container's run state, Docker's ``State`` object, and the time texts Docker prints.

moby keeps flags (Running, Paused, Restarting, Dead, RemovalInProgress) plus times and derives
both the ``Status`` word and the human ``Status`` text of ``ps`` from them; so does this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

ZERO_TIME = "0001-01-01T00:00:00Z"


def now_nano() -> int:
    return time.time_ns()


def format_time(ns: int, fixed: bool = False) -> str:
    """RFC 3339 with nanoseconds in UTC, as Go prints it: ``RFC3339Nano`` trims trailing zeros
    (inspect's times), ``fixed`` keeps all nine digits (``logs -t``). 0 is Go's zero time."""
    if not ns:
        return ZERO_TIME
    secs, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(secs, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:09d}"
    if not fixed:
        digits = digits.rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def parse_time(text: str | None) -> int:
    """Inverse of ``format_time`` (also accepts an offset instead of ``Z``); zero time -> 0."""
    if not text or text.startswith("0001-01-01"):
        return 0
    main, frac, tz = text, "", "+00:00"
    if text.endswith("Z"):
        main = text[:-1]
    elif len(text) > 6 and text[-6] in "+-" and text[-3] == ":":
        main, tz = text[:-6], text[-6:]
    if "." in main:
        main, frac = main.split(".", 1)
    dt = datetime.fromisoformat(main + tz)
    return int(dt.timestamp()) * 1_000_000_000 + int((frac + "000000000")[:9] or 0)


from pyd.units import human_duration  # noqa: E402  (re-exported)


@dataclass
class State:
    running: bool = False
    paused: bool = False
    restarting: bool = False
    oom_killed: bool = False
    removing: bool = False
    dead: bool = False
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    started_at: int = 0  # ns
    finished_at: int = 0  # ns

    @property
    def status(self) -> str:
        """Docker's ``State.Status`` word."""
        if self.running:
            if self.paused:
                return "paused"
            if self.restarting:
                return "restarting"
            return "running"
        if self.removing:
            return "removing"
        if self.dead:
            return "dead"
        if not self.started_at:
            return "created"
        return "exited"

    def text(self, now_ns: int | None = None) -> str:
        """The human ``Status`` column of ``ps``: ``Up 3 seconds``, ``Exited (0) 2 minutes ago``."""
        now = now_ns if now_ns is not None else now_nano()
        if self.running:
            if self.paused:
                return f"Up {human_duration((now - self.started_at) / 1e9)} (Paused)"
            if self.restarting:
                return f"Restarting ({self.exit_code}) {human_duration((now - self.finished_at) / 1e9)} ago"
            return f"Up {human_duration((now - self.started_at) / 1e9)}"
        if self.removing:
            return "Removal In Progress"
        if self.dead:
            return "Dead"
        if not self.started_at:
            return "Created"
        if not self.finished_at:
            return ""
        return f"Exited ({self.exit_code}) {human_duration((now - self.finished_at) / 1e9)} ago"

    def to_docker(self) -> dict[str, Any]:
        return {
            "Status": self.status,
            "Running": self.running,
            "Paused": self.paused,
            "Restarting": self.restarting,
            "OOMKilled": self.oom_killed,
            "Dead": self.dead,
            "Pid": self.pid if self.running else 0,
            "ExitCode": self.exit_code,
            "Error": self.error,
            "StartedAt": format_time(self.started_at),
            "FinishedAt": format_time(self.finished_at),
        }

    @classmethod
    def from_docker(cls, d: dict[str, Any]) -> "State":
        return cls(
            running=bool(d.get("Running")),
            paused=bool(d.get("Paused")),
            restarting=bool(d.get("Restarting")),
            oom_killed=bool(d.get("OOMKilled")),
            removing=bool(d.get("RemovalInProgress")),
            dead=bool(d.get("Dead")),
            pid=int(d.get("Pid") or 0),
            exit_code=int(d.get("ExitCode") or 0),
            error=str(d.get("Error") or ""),
            started_at=parse_time(d.get("StartedAt")),
            finished_at=parse_time(d.get("FinishedAt")),
        )

    # transitions ---------------------------------------------------------------------------

    def set_running(self, pid: int, started_at: int) -> None:
        self.running, self.paused, self.restarting, self.dead = True, False, False, False
        self.oom_killed, self.error = False, ""
        self.pid, self.exit_code, self.started_at = pid, 0, started_at

    def set_stopped(self, exit_code: int, finished_at: int, oom_killed: bool = False, error: str = "") -> None:
        self.running = self.paused = self.restarting = False
        self.pid, self.exit_code, self.finished_at = 0, exit_code, finished_at
        self.oom_killed, self.error = oom_killed, error

    def set_restarting(self, exit_code: int, finished_at: int) -> None:
        # Docker keeps Running true while a restart is pending
        self.running, self.restarting, self.paused = True, True, False
        self.pid, self.exit_code, self.finished_at = 0, exit_code, finished_at
