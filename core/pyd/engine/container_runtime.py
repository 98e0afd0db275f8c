"""Per-container state that lives only while the daemon runs, and small lifecycle helpers.

``Runtime`` holds what is not in the on-disk record: the per-container lock, the futures of
``wait`` callers, the mounted rootfs, the log pipeline, attach sessions waiting for a start,
the pending restart. ``RestartPolicy`` decides, as moby's restart manager does, whether an
exit is followed by a restart and after what delay.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from pyd.engine.container_logs import LogPipeline

BACKOFF_START = 0.1  # seconds; doubled on each restart, reset after a run of 10 s or more
BACKOFF_MAX = 60.0
BACKOFF_RESET_AFTER = 10.0


@dataclass
class WaitResult:
    status_code: int
    error: str | None = None


@dataclass
class Runtime:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    exit_waiters: list[asyncio.Future[WaitResult]] = field(default_factory=list)
    removed_waiters: list[asyncio.Future[WaitResult]] = field(default_factory=list)
    rootfs: str | None = None
    pipeline: LogPipeline | None = None
    # attach sessions that arrived before the start (``docker run`` attaches first)
    pending_attach: list[Any] = field(default_factory=list)
    # attach sessions currently streaming (each an asyncio.Task)
    attached: set[asyncio.Task[Any]] = field(default_factory=set)
    restart_task: asyncio.Task[Any] | None = None
    run_token: int = 0  # increases at each start; an exit report for an older run is ignored
    exiting: bool = False
    backoff: float = BACKOFF_START
    monitor: threading.Thread | None = None

    @property
    def log_closed(self) -> threading.Event:
        """Set once every line of the last run reached the log (at once if nothing runs)."""
        if self.pipeline is not None:
            return self.pipeline.closed
        done = threading.Event()
        done.set()
        return done

    def notify_exit(self, result: WaitResult) -> None:
        waiters, self.exit_waiters = self.exit_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(result)

    def notify_removed(self, result: WaitResult) -> None:
        self.notify_exit(result)
        waiters, self.removed_waiters = self.removed_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(result)


def should_restart(policy: dict[str, Any], exit_code: int, restart_count: int, manually_stopped: bool) -> bool:
    name = policy.get("Name") or "no"
    if manually_stopped or name == "no":
        return False
    if name in ("always", "unless-stopped"):
        return True
    if name == "on-failure":
        limit = int(policy.get("MaximumRetryCount") or 0)
        return exit_code != 0 and (limit == 0 or restart_count < limit)
    return False


def restart_on_daemon_start(policy: dict[str, Any], manually_stopped: bool) -> bool:
    """moby restarts ``always`` and not-manually-stopped ``unless-stopped`` containers when the
    daemon starts; ``on-failure`` containers stay as they are."""
    name = policy.get("Name") or "no"
    return name == "always" and not manually_stopped or name == "unless-stopped" and not manually_stopped


def next_backoff(current: float, ran_for: float) -> tuple[float, float]:
    """(delay before this restart, the delay to use next time)."""
    if ran_for >= BACKOFF_RESET_AFTER:
        current = BACKOFF_START
    return current, min(current * 2, BACKOFF_MAX)


def exit_code_for_start_error(message: str) -> int:
    """The exit code Docker records when a start fails: 127 for a missing executable, 126 when
    it cannot be run, 128 otherwise (moby ``daemon/start.go``)."""
    text = message.lower()
    if "executable file not found" in text or "no such file or directory" in text:
        return 127
    if "permission denied" in text or "is a directory" in text or "exec format error" in text:
        return 126
    return 128
