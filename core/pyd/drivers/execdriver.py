"""Exec driver protocol: creates and controls container processes.

Modelled on moby's old ``execdriver.Driver`` and on runc's verbs. The engine builds a
``ProcessSpec`` (after security plugins edited it) and hands it to ``create``; the driver
makes the namespaces, mounts, cgroups and credentials, and leaves a per-container shim that
owns the container's stdio and exit status, so the container outlives a daemon restart.
Methods are synchronous; the core calls them from worker threads with deadlines, serialised
per container.

Stdio streams (``attach``) use Docker's raw-stream format, so the core can copy bytes between
the returned socket and a hijacked HTTP connection without looking at them:

* output: when the process has no tty, multiplexed frames, each an 8-byte header
  ``[stream, 0, 0, 0, len >> 24, len >> 16, len >> 8, len]`` (stream 1 = stdout,
  2 = stderr) then ``len`` bytes; with a tty, the pty's bytes as they are;
* input: plain bytes, never framed; ``shutdown(SHUT_WR)`` is the end of the client's stdin;
* the driver closes the socket once the process has exited, its output is flushed and its
  exit status is recorded (so ``state``/``exec_state`` right after EOF see the exit code).

The container's output also goes to ``CreateContainerRequest.log_path`` in the *exec log
format* below, which the core tails into the selected log driver (so a daemon that was down
loses nothing):

* UTF-8 text, one JSON object per line, each line ending in ``\\n``; a last line without its
  ``\\n`` is still being written and must not be read yet;
* ``{"s": "stdout"|"stderr", "t": <Unix time in ns>, "l": "<text>"}``; bytes that are not
  valid UTF-8 come as ``"b": "<base64>"`` instead of ``"l"``; ``"p": true`` marks a partial
  line (cut at 16 KiB, or the end of output without a newline);
* when the file reaches 16 MiB the writer renames it to ``<log_path>.1`` (replacing an older
  one) and starts a new file; a reader that follows the path by name finishes the renamed file
  first (it still holds it open) and then switches.

``encode_log_record`` / ``decode_log_record`` below implement it; drivers write with the former
and the core reads with the latter.
"""

from __future__ import annotations

import base64
import json
import socket
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pyd.drivers.log import LogMessage
from pyd.types import ProcessSpec, User

# Docker's defaults (moby oci/caps/defaults.go, oci/defaults.go), for the engine building a spec.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
)
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
# Every capability name, indexed by its number (linux/capability.h), without the CAP_ prefix.
CAPABILITY_NAMES: tuple[str, ...] = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip
# The namespaces Docker creates for a default container (value None = new).
DEFAULT_NAMESPACES: tuple[str, ...] = ("mnt", "pid", "uts", "ipc", "net", "cgroup")

# Docker's raw-stream ids.
STDIN, STDOUT, STDERR = 0, 1, 2


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
    # the shim's socket, pid files, exit status. The driver creates it if missing and
    # removes it in ``delete``.
    bundle_dir: str
    stdio: StdioConfig = field(default_factory=StdioConfig)
    # Where the shim appends the container's output in the exec log format (module
    # docstring), for the core to tail into the log driver. Empty: output is not stored.
    log_path: str = ""


@dataclass
class ContainerState:
    status: str  # "created", "running", "paused", "stopped"
    pid: int = 0  # host pid of the process (0 before it exists)
    exit_code: int | None = None  # 128+N when killed by signal N; 255 when unknown
    oom_killed: bool = False
    started_at_nano: int = 0
    finished_at_nano: int = 0
    # Why the process could not run, e.g. 'exec: "nope": executable file not found in $PATH'
    # (Docker's State.Error); exit_code is then 127 (not found) or 126 (cannot invoke).
    error: str = ""


@dataclass
class ExecRequest:
    """A process to run inside a running container (``pyd exec``)."""

    exec_id: str
    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = ""  # "": the container's working directory
    user: User | None = None  # None: the container's user
    tty: bool = False
    open_stdin: bool = False
    privileged: bool = False  # every capability the daemon holds, as ``--privileged``
    # Start at once with stdio on /dev/null, without waiting for ``attach``.
    detach: bool = False
    console_size: tuple[int, int] = (0, 0)  # rows, cols


class ExecDriver(Protocol):
    name: str

    def create(self, req: CreateContainerRequest) -> None:
        """Set up the container and its shim; the process is made but has not exec'd yet.

        Raises ``InvalidParameter`` for a spec that cannot work (missing rootfs or mount
        source, unknown capability, bad cwd), ``Conflict`` if the id exists. A failed create
        leaves no shim, mount, cgroup, namespace or bundle directory behind. Takes tens of ms.
        """
        ...

    def start(self, container_id: str) -> int:
        """Let the created process exec its program; return its host pid.

        Raises ``InvalidParameter`` when the program cannot be run (not found: the state then
        has exit code 127; not executable: 126), ``NotModified`` if it already runs,
        ``Conflict`` if it has exited, ``NotFound`` for an unknown id.
        """
        ...

    def state(self, container_id: str) -> ContainerState:
        """Current state, from the shim or, once the shim is gone, from what it recorded.
        Cheap; never blocks on the container. ``NotFound`` for an unknown id."""
        ...

    def kill(self, container_id: str, signal: int, all: bool = False) -> None:
        """Send ``signal`` to the container's init (``all``: to every process in it).
        ``Conflict`` if it is not running."""
        ...

    def wait(self, container_id: str, timeout: float | None = None) -> ContainerState:
        """Block until the container stops (or ``timeout`` passes) and return its state."""
        ...

    def exec(self, container_id: str, req: ExecRequest) -> int:
        """Make ``req``'s process inside the running container and return its host pid.

        The process has joined the container's namespaces and cgroup and dropped its
        privileges; it runs its program when ``attach(container_id, req.exec_id)`` is first
        called (so no output is lost), or at once if ``req.detach``. ``Conflict`` if the
        container is not running or is paused, or the exec id is in use.
        """
        ...

    def exec_state(self, container_id: str, exec_id: str) -> ContainerState:
        """State of an exec process (``NotFound`` for an unknown exec id)."""
        ...

    def attach(self, container_id: str, exec_id: str = "", stdin: bool = False) -> socket.socket:
        """Return a connected socket carrying the process's stdio in the raw-stream format
        (module docstring); ``exec_id`` selects an exec process instead of the container's.

        Allowed on a created container (output starts once it runs; stdin written before is
        kept). With ``stdin``, the client's input goes to the process; its end of input
        (``shutdown(SHUT_WR)``) closes the process's stdin for a ``stdin_once`` container or
        an exec, and ends this stream for an ``open_stdin`` container that is not
        ``stdin_once`` (as dockerd does). Without ``stdin``, input is ignored. Several clients
        may attach at once; each gets the output from the moment it attached.
        """
        ...

    def resize(self, container_id: str, rows: int, cols: int, exec_id: str = "") -> None:
        """Set the pty size of the container (or exec) process. ``Conflict`` without a tty."""
        ...

    def pause(self, container_id: str) -> None:
        """Freeze every process of the container (cgroup freezer). ``Conflict`` if not running."""
        ...

    def resume(self, container_id: str) -> None:
        """Thaw a paused container. ``Conflict`` if it is not paused."""
        ...

    def stats(self, container_id: str) -> dict[str, object]:
        """Resource usage in Docker's ``/containers/{id}/stats`` shape: ``read``,
        ``pids_stats``, ``cpu_stats``, ``memory_stats``, ``blkio_stats`` (the core adds
        ``name``, ``id``, ``precpu_stats``, ``networks``). ``Conflict`` if not running."""
        ...

    def delete(self, container_id: str) -> None:
        """Remove a stopped (or created, never started) container's shim, cgroup, state and
        bundle directory. Idempotent: an unknown id is not an error. ``Conflict`` if it runs."""
        ...

    def list(self) -> list[str]:
        """IDs of containers this driver still has state for (used at daemon start to restore)."""
        ...

    def close(self) -> None:
        """Release the driver's own helper processes (called at daemon shutdown). Containers
        and their shims keep running; a new driver instance on the same home finds them."""
        ...


@runtime_checkable
class Checkpointer(Protocol):
    """Optional: checkpoint/restore support (not provided by built-in drivers yet)."""

    def checkpoint(self, container_id: str, path: str) -> None:
        ...


# --------------------------------------------------------------------------------------------
# The exec log format (see the module docstring)
# --------------------------------------------------------------------------------------------

LOG_ROTATE_SIZE = 16 * 1024 * 1024
LOG_MAX_LINE = 16 * 1024


def encode_log_record(msg: LogMessage) -> bytes:
    """One line of the exec log format for ``msg``."""
    rec: dict[str, object] = {"s": msg.stream, "t": msg.time_nano}
    try:
        rec["l"] = msg.line.decode("utf-8")
    except UnicodeDecodeError:
        rec["b"] = base64.b64encode(msg.line).decode("ascii")
    if msg.partial:
        rec["p"] = True
    return json.dumps(rec, separators=(",", ":")).encode() + b"\n"


def decode_log_record(line: bytes) -> LogMessage:
    """Parse one complete line of the exec log format; ``ValueError`` if it is not one."""
    rec = json.loads(line)
    if not isinstance(rec, dict) or rec.get("s") not in ("stdout", "stderr"):
        raise ValueError(f"not an exec log record: {line[:80]!r}")
    data = base64.b64decode(rec["b"]) if "b" in rec else str(rec.get("l", "")).encode("utf-8")
    return LogMessage(line=data, stream=rec["s"], time_nano=int(rec["t"]), partial=bool(rec.get("p")))
