"""Exec driver protocol: creates and controls container processes.

Modelled on moby's old ``execdriver.Driver`` and on runc's verbs. The engine builds a
``ProcessSpec`` (after security plugins edited it) and hands it to ``create``; the driver
makes the namespaces, mounts, cgroups and credentials, and leaves a per-container shim that
owns the container's stdio and exit status, so the container outlives a daemon restart.
Methods are synchronous; the core calls them from worker threads with deadlines, serialised
per container.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pyd.types import ProcessSpec, User


@dataclass
class StdioConfig:
    open_stdin: bool = False  # keep a stdin pipe open (``-i``)
    stdin_once: bool = False  # close stdin after the first attached client detaches
    tty: bool = False  # allocate a pty (``-t``)
    console_size: tuple[int, int] = (0, 0)  # rows, cols


@dataclass
class CreateContainerRequest:
    container_id: str
    spec: ProcessSpec
    # A directory owned by this container for the driver's state (under the exec-root):
    # the shim's socket, pid files, exit status.
    bundle_dir: str
    stdio: StdioConfig = field(default_factory=StdioConfig)
    # Where the shim appends the container's output for the core's log pipeline
    # (see ``pyd.drivers.log``); the format is the shim's.
    log_path: str = ""


@dataclass
class ContainerState:
    status: str  # "created", "running", "paused", "stopped"
    pid: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    started_at_nano: int = 0
    finished_at_nano: int = 0


@dataclass
class ExecRequest:
    """A process to run inside a running container (``pyd exec``)."""

    exec_id: str
    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = ""
    user: User | None = None  # None: the container's user
    tty: bool = False
    open_stdin: bool = False
    privileged: bool = False


class ExecDriver(Protocol):
    name: str

    def create(self, req: CreateContainerRequest) -> None:
        """Set up the container and its shim; the process is made but has not exec'd yet.

        A failed create leaves no shim, mount, cgroup or namespace behind.
        """
        ...

    def start(self, container_id: str) -> int:
        """Let the created process exec its program; return its host pid."""
        ...

    def state(self, container_id: str) -> ContainerState:
        """Current state, read from the shim (cheap; never blocks on the container)."""
        ...

    def kill(self, container_id: str, signal: int, all: bool = False) -> None:
        """Send ``signal`` to the container's init (``all``: to every process in it)."""
        ...

    def wait(self, container_id: str, timeout: float | None = None) -> ContainerState:
        """Block until the container stops (or ``timeout`` passes) and return its state."""
        ...

    def exec(self, container_id: str, req: ExecRequest) -> str:
        """Start ``req`` inside the running container; return the path of a unix socket for its
        stdio (same stream protocol as ``attach``). Exit status through ``exec_state``.
        """
        ...

    def exec_state(self, container_id: str, exec_id: str) -> ContainerState:
        ...

    def attach(self, container_id: str) -> str:
        """Return the path of the shim's unix socket that streams the container's stdio."""
        ...

    def resize(self, container_id: str, rows: int, cols: int, exec_id: str = "") -> None:
        ...

    def pause(self, container_id: str) -> None:
        ...

    def resume(self, container_id: str) -> None:
        ...

    def stats(self, container_id: str) -> dict[str, object]:
        """Resource usage in Docker's ``/containers/{id}/stats`` shape (memory_stats, cpu_stats, pids_stats)."""
        ...

    def delete(self, container_id: str) -> None:
        """Remove a stopped container's shim, cgroup and state. Idempotent."""
        ...

    def list(self) -> list[str]:
        """IDs of containers this driver still has state for (used at daemon start to restore)."""
        ...


@runtime_checkable
class Checkpointer(Protocol):
    """Optional: checkpoint/restore support (not provided by built-in drivers yet)."""

    def checkpoint(self, container_id: str, path: str) -> None:
        ...
