"""Container cgroups on cgroup v1 and v2: create with limits, join, freeze, OOM, stats, remove.

The layout is detected from ``/proc/self/mountinfo``: v2 when ``/sys/fs/cgroup`` itself is a
``cgroup2`` mount, else the v1 controller hierarchies (wherever each is mounted, co-mounted or
not; a hybrid host's extra v2 mount is ignored). A container's cgroup is ``<path>`` under each
hierarchy root (``pyd/<id>`` by default). Only file reads and writes here (and, on v2, the
eBPF device filter), so the daemon side may use it too (stats, pause, cleanup).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from pyd.drivers.mounts import unescape

from pyd_exec_native import devices

if TYPE_CHECKING:
    from pyd.types import CgroupSpec

# v1 controllers a container joins; cpuset only when it sets cpus (it needs explicit cpus/mems).
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer", "devices", "blkio")
V1_UNLIMITED = 0x7FFFFFFFFFFFF000  # what memory.limit_in_bytes reads when unset


class CgroupError(OSError):
    """A cgroup could not be set up; the message names the file and the value."""


@dataclass
class Layout:
    version: int  # 1 or 2
    # v1: controller -> mount point; v2: {"": mount point}
    mounts: dict[str, str] = field(default_factory=dict)


def detect(mountinfo: str = "/proc/self/mountinfo") -> Layout:
    v1: dict[str, str] = {}
    with open(mountinfo) as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields = pre.split()
            fstype, _src, superopts = (post.split() + ["", "", ""])[:3]
            mnt = unescape(fields[4])
            if fstype == "cgroup2" and mnt == "/sys/fs/cgroup":
                return Layout(2, {"": mnt})
            if fstype == "cgroup":
                for opt in superopts.split(","):
                    if opt in V1_CONTROLLERS or opt == "cpuset":
                        v1.setdefault(opt, mnt)
    if not v1:
        raise CgroupError(errno.ENOENT, "no cgroup hierarchy is mounted (looked for cgroup2 at "
                          "/sys/fs/cgroup and cgroup v1 controllers)")
    return Layout(1, v1)


def _write(path: str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CgroupError(exc.errno, f"cannot open {path}: {exc.strerror}") from exc
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise CgroupError(exc.errno, f"cannot write {value!r} to {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _read_int(path: str, default: int = 0) -> int:
    try:
        v = _read(path).strip()
    except OSError:
        return default
    if v == "max":
        return default
    try:
        return int(v)
    except ValueError:
        return default


def _read_kv(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = _read(path)
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def cpu_shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares (2..262144) -> v2 cpu.weight (1..10000), as runc converts."""
    shares = max(2, min(262144, shares))
    return 1 + ((shares - 2) * 9999) // 262142


class Cgroup:
    """One container's cgroup across the hierarchies of ``layout``."""

    def __init__(self, layout: Layout, path: str, cpuset: bool = False) -> None:
        path = path.strip("/")
        if not path or any(p in ("", ".", "..") for p in path.split("/")):
            raise ValueError(f'cgroup path "{path}" must be relative, without "." or ".." parts')
        self.layout = layout
        self.path = path
        self.cpuset = cpuset
        if layout.version == 2:
            self.dirs = {"": os.path.join(layout.mounts[""], path)}
        else:
            names = list(V1_CONTROLLERS) + (["cpuset"] if cpuset else [])
            self.dirs = {c: os.path.join(layout.mounts[c], path) for c in names if c in layout.mounts}

    # -- helpers ---------------------------------------------------------------------------

    def _dir(self, controller: str) -> str | None:
        return self.dirs.get("" if self.layout.version == 2 else controller)

    def _unique_dirs(self) -> list[str]:
        return sorted(set(self.dirs.values()))

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self._unique_dirs())

    def to_dict(self) -> dict[str, object]:
        return {"version": self.layout.version, "path": self.path, "dirs": dict(self.dirs)}

    # -- creation ----------------------------------------------------------------------------

    def create(self, spec: CgroupSpec, device_rules: list[str]) -> None:
        """Make the directories and apply ``spec`` (a ``pyd.types.CgroupSpec``) and the device
        rules. On failure everything made here is removed again before raising."""
        try:
            if self.layout.version == 2:
                self._create_v2(spec, device_rules)
            else:
                self._create_v1(spec, device_rules)
        except BaseException:
            self.destroy(timeout=1.0)
            raise

    def _mkdirs(self, root: str, on_new: Callable[[str], None] | None = None) -> None:
        parts = self.path.split("/")
        for _attempt in range(5):
            try:
                cur = root
                for i, part in enumerate(parts):
                    cur = os.path.join(cur, part)
                    try:
                        os.mkdir(cur, 0o755)
                    except FileExistsError:
                        if i == len(parts) - 1:
                            raise CgroupError(errno.EEXIST, f"cgroup {cur} already exists") from None
                        continue
                    if on_new is not None:
                        on_new(cur)
                return
            except FileNotFoundError:
                continue  # a concurrent destroy removed an empty parent between our mkdirs
        raise CgroupError(errno.ENOENT, f"cannot create cgroup {self.path} under {root}")

    def _create_v1(self, s: CgroupSpec, device_rules: list[str]) -> None:
        needs = {
            "memory": s.memory is not None,
            "cpu": bool(s.cpu_shares or s.cpu_quota or s.cpu_period),
            "pids": s.pids_limit is not None,
            "cpuset": bool(s.cpuset_cpus),
        }
        for controller, needed in needs.items():
            if needed and controller not in self.layout.mounts:
                raise CgroupError(errno.ENOTSUP, f"the {controller} cgroup controller is not mounted on this host")

        def init_cpuset(d: str) -> None:
            parent = os.path.dirname(d)
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not _read(os.path.join(d, f)).strip():
                    _write(os.path.join(d, f), _read(os.path.join(parent, f)).strip())

        made: set[str] = set()
        for controller, d in self.dirs.items():
            if d in made:
                continue
            self._mkdirs(self.layout.mounts[controller], init_cpuset if controller == "cpuset" else None)
            made.add(d)
        mem = self._dir("memory")
        if mem and s.memory is not None:
            _write(f"{mem}/memory.limit_in_bytes", str(s.memory))
            swap = s.memory_swap
            if swap is not None and os.path.exists(f"{mem}/memory.memsw.limit_in_bytes"):
                _write(f"{mem}/memory.memsw.limit_in_bytes", "-1" if swap < 0 else str(swap))
        cpu = self._dir("cpu")
        if cpu:
            if s.cpu_shares:
                _write(f"{cpu}/cpu.shares", str(s.cpu_shares))
            if s.cpu_period:
                _write(f"{cpu}/cpu.cfs_period_us", str(s.cpu_period))
            if s.cpu_quota:
                _write(f"{cpu}/cpu.cfs_quota_us", str(s.cpu_quota))
        pids = self._dir("pids")
        if pids and s.pids_limit is not None:
            _write(f"{pids}/pids.max", str(s.pids_limit) if s.pids_limit > 0 else "max")
        cs = self._dir("cpuset")
        if cs and s.cpuset_cpus:
            _write(f"{cs}/cpuset.cpus", s.cpuset_cpus)
        dev = self._dir("devices")
        if dev:
            rules = [devices.parse_rule(r) for r in device_rules]
            if not any(r.type == "a" and r.access == "rwm" and r.major < 0 and r.minor < 0 for r in rules):
                _write(f"{dev}/devices.deny", "a")
                for r in rules:
                    _write(f"{dev}/devices.allow", str(r))

    def _create_v2(self, s: CgroupSpec, device_rules: list[str]) -> None:
        root = self.layout.mounts[""]
        available = set(_read(f"{root}/cgroup.controllers").split())
        wanted = {"memory", "cpu", "pids", "io"} | ({"cpuset"} if self.cpuset else set())
        enable = " ".join(f"+{c}" for c in sorted(wanted & available))
        needs = {
            "memory": s.memory is not None,
            "cpu": bool(s.cpu_shares or s.cpu_quota),
            "pids": s.pids_limit is not None,
            "cpuset": bool(s.cpuset_cpus),
        }
        for controller, needed in needs.items():
            if needed and controller not in available:
                raise CgroupError(errno.ENOTSUP, f"the {controller} controller is not enabled in {root}")
        self._mkdirs(root)
        # Enable the controllers in every ancestor (they have no processes of their own), so
        # the leaf gets their interface files.
        if enable:
            cur = root
            for part in [""] + self.path.split("/")[:-1]:
                cur = os.path.join(cur, part) if part else cur
                _write(f"{cur}/cgroup.subtree_control", enable)
        d = self.dirs[""]
        if s.memory is not None:
            _write(f"{d}/memory.max", str(s.memory))
            swap = s.memory_swap
            if swap is not None and os.path.exists(f"{d}/memory.swap.max"):
                _write(f"{d}/memory.swap.max", "max" if swap < 0 else str(max(0, swap - s.memory)))
        if s.cpu_shares:
            _write(f"{d}/cpu.weight", str(cpu_shares_to_weight(s.cpu_shares)))
        if s.cpu_quota:
            _write(f"{d}/cpu.max", f"{s.cpu_quota} {s.cpu_period or 100000}")
        if s.pids_limit is not None:
            _write(f"{d}/pids.max", str(s.pids_limit) if s.pids_limit > 0 else "max")
        if s.cpuset_cpus:
            _write(f"{d}/cpuset.cpus", s.cpuset_cpus)
        rules = [devices.parse_rule(r) for r in device_rules]
        if not any(r.type == "a" and r.access == "rwm" and r.major < 0 and r.minor < 0 for r in rules):
            devices.attach_bpf_filter(d, rules)

    # -- membership --------------------------------------------------------------------------

    def join(self, pid: int) -> None:
        for d in self._unique_dirs():
            _write(f"{d}/cgroup.procs", str(pid))

    def self_join_files(self) -> list[str]:
        """The files a single-threaded process writes "0" to, to move itself into this cgroup.

        On v1 these are the ``tasks`` files: moving the writing thread itself needs no global
        lock, whereas every write to ``cgroup.procs`` (or of another pid) takes the cgroup
        threadgroup rwsem, whose first writer waits for an RCU grace period (~10 ms here, on
        the critical path of every start and exec). A process with one thread moves whole.
        On v2 (no ``tasks``) it is ``cgroup.procs``, where the writer pays the wait itself.
        """
        name = "tasks" if self.layout.version == 1 else "cgroup.procs"
        return [f"{d}/{name}" for d in self._unique_dirs()]

    def procs(self) -> list[int]:
        for d in self._unique_dirs():
            try:
                return [int(x) for x in _read(f"{d}/cgroup.procs").split()]
            except OSError:
                continue
        return []

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        d = self._dir("")
        if self.layout.version == 2 and d and sig == signal.SIGKILL and os.path.exists(f"{d}/cgroup.kill"):
            _write(f"{d}/cgroup.kill", "1")
        else:
            for pid in self.procs():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        if sig == signal.SIGKILL and self.frozen():
            self.thaw()  # a frozen task only dies once thawed

    # -- freezer -----------------------------------------------------------------------------

    def frozen(self) -> bool:
        try:
            if self.layout.version == 2:
                return _read_kv(f"{self.dirs['']}/cgroup.events").get("frozen") == 1
            d = self._dir("freezer")
            return bool(d) and _read(f"{d}/freezer.state").strip() in ("FROZEN", "FREEZING")
        except OSError:
            return False

    def freeze(self, timeout: float = 5.0) -> None:
        if self.layout.version == 2:
            _write(f"{self.dirs['']}/cgroup.freeze", "1")
            ok = lambda: _read_kv(f"{self.dirs['']}/cgroup.events").get("frozen") == 1  # noqa: E731
        else:
            d = self._dir("freezer")
            if not d:
                raise CgroupError(errno.ENOTSUP, "the freezer cgroup controller is not mounted on this host")
            _write(f"{d}/freezer.state", "FROZEN")
            ok = lambda: _read(f"{d}/freezer.state").strip() == "FROZEN"  # noqa: E731
        deadline = time.monotonic() + timeout
        delay = 0.001
        while not ok():
            if time.monotonic() > deadline:
                self.thaw()
                raise CgroupError(errno.ETIMEDOUT, f"cgroup {self.path} did not freeze within {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def thaw(self) -> None:
        if self.layout.version == 2:
            _write(f"{self.dirs['']}/cgroup.freeze", "0")
        else:
            d = self._dir("freezer")
            if d:
                _write(f"{d}/freezer.state", "THAWED")

    # -- accounting --------------------------------------------------------------------------

    def oom_kills(self) -> int:
        if self.layout.version == 2:
            return _read_kv(f"{self.dirs['']}/memory.events").get("oom_kill", 0)
        d = self._dir("memory")
        return _read_kv(f"{d}/memory.oom_control").get("oom_kill", 0) if d else 0

    def stats(self) -> dict[str, object]:
        """Usage in the shape of Docker's stats ``cpu_stats``, ``memory_stats``,
        ``pids_stats`` and ``blkio_stats``."""
        host_mem = _host_memory()
        if self.layout.version == 2:
            return self._stats_v2(host_mem)
        return self._stats_v1(host_mem)

    def _stats_v1(self, host_mem: int) -> dict[str, object]:
        mem = self._dir("memory") or ""
        acct = self._dir("cpuacct") or ""
        cpu = self._dir("cpu") or ""
        pids = self._dir("pids") or ""
        blk = self._dir("blkio") or ""
        hz = os.sysconf("SC_CLK_TCK")
        ticks = _read_kv(f"{acct}/cpuacct.stat")
        try:
            percpu = [int(x) for x in _read(f"{acct}/cpuacct.usage_percpu").split()]
        except OSError:
            percpu = []
        throttle = _read_kv(f"{cpu}/cpu.stat")
        limit = _read_int(f"{mem}/memory.limit_in_bytes", V1_UNLIMITED)
        pids_stats: dict[str, int] = {"current": _read_int(f"{pids}/pids.current")}
        pmax = _read_int(f"{pids}/pids.max", 0)
        if pmax:
            pids_stats["limit"] = pmax
        return {
            "pids_stats": pids_stats,
            "cpu_stats": {
                "cpu_usage": {
                    "total_usage": _read_int(f"{acct}/cpuacct.usage"),
                    "percpu_usage": percpu,
                    "usage_in_kernelmode": ticks.get("system", 0) * 1_000_000_000 // hz,
                    "usage_in_usermode": ticks.get("user", 0) * 1_000_000_000 // hz,
                },
                "system_cpu_usage": _system_cpu_usage(),
                "online_cpus": _online_cpus(),
                "throttling_data": {
                    "periods": throttle.get("nr_periods", 0),
                    "throttled_periods": throttle.get("nr_throttled", 0),
                    "throttled_time": throttle.get("throttled_time", 0),
                },
            },
            "memory_stats": {
                "usage": _read_int(f"{mem}/memory.usage_in_bytes"),
                "max_usage": _read_int(f"{mem}/memory.max_usage_in_bytes"),
                "failcnt": _read_int(f"{mem}/memory.failcnt"),
                "limit": min(limit, host_mem) if host_mem else limit,
                "stats": _read_kv(f"{mem}/memory.stat"),
            },
            "blkio_stats": _blkio_v1(blk),
        }

    def _stats_v2(self, host_mem: int) -> dict[str, object]:
        d = self.dirs[""]
        cpu = _read_kv(f"{d}/cpu.stat")
        mem_max = _read_int(f"{d}/memory.max", 0)
        pids_stats: dict[str, int] = {"current": _read_int(f"{d}/pids.current")}
        pmax = _read_int(f"{d}/pids.max", 0)
        if pmax:
            pids_stats["limit"] = pmax
        limit = mem_max or host_mem
        return {
            "pids_stats": pids_stats,
            "cpu_stats": {
                "cpu_usage": {
                    "total_usage": cpu.get("usage_usec", 0) * 1000,
                    "usage_in_kernelmode": cpu.get("system_usec", 0) * 1000,
                    "usage_in_usermode": cpu.get("user_usec", 0) * 1000,
                },
                "system_cpu_usage": _system_cpu_usage(),
                "online_cpus": _online_cpus(),
                "throttling_data": {
                    "periods": cpu.get("nr_periods", 0),
                    "throttled_periods": cpu.get("nr_throttled", 0),
                    "throttled_time": cpu.get("throttled_usec", 0) * 1000,
                },
            },
            "memory_stats": {
                "usage": _read_int(f"{d}/memory.current"),
                "limit": min(limit, host_mem) if host_mem else limit,
                "stats": _read_kv(f"{d}/memory.stat"),
            },
            "blkio_stats": _blkio_v2(d),
        }

    # -- removal -----------------------------------------------------------------------------

    def destroy(self, timeout: float = 5.0) -> None:
        """Kill what is left inside, remove the directories and any empty parents. Idempotent."""
        if not self.exists():
            self._remove_parents()
            return
        if self.procs():
            self.kill_all(signal.SIGKILL)
        elif self.frozen():
            self.thaw()
        deadline = time.monotonic() + timeout
        delay = 0.001
        for d in self._unique_dirs():
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY while exiting tasks are still being reaped
                    if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                        raise CgroupError(exc.errno, f"cannot remove cgroup {d}: {exc.strerror}") from exc
                    if self.procs():
                        self.kill_all(signal.SIGKILL)
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
        self._remove_parents()

    def _remove_parents(self) -> None:
        parts = self.path.split("/")[:-1]
        roots = set(self.layout.mounts.values()) if self.layout.version == 1 else {self.layout.mounts[""]}
        for root in roots:
            for i in range(len(parts), 0, -1):
                try:
                    os.rmdir(os.path.join(root, *parts[:i]))
                except OSError:
                    break  # still used by another container, or already gone


def _blkio_v1(d: str) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {
        k: []
        for k in (
            "io_service_bytes_recursive",
            "io_serviced_recursive",
            "io_queue_recursive",
            "io_service_time_recursive",
            "io_wait_time_recursive",
            "io_merged_recursive",
            "io_time_recursive",
            "sectors_recursive",
        )
    }
    for key, fname in (
        ("io_service_bytes_recursive", "blkio.throttle.io_service_bytes"),
        ("io_serviced_recursive", "blkio.throttle.io_serviced"),
    ):
        try:
            text = _read(f"{d}/{fname}") if d else ""
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and ":" in parts[0]:
                major, minor = parts[0].split(":")
                out[key].append({"major": int(major), "minor": int(minor), "op": parts[1].lower(), "value": int(parts[2])})
    return out


def _blkio_v2(d: str) -> dict[str, list[dict[str, object]]]:
    rows: list[dict[str, object]] = []
    try:
        text = _read(f"{d}/io.stat")
    except OSError:
        text = ""
    for line in text.splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, minor = (int(x) for x in parts[0].split(":"))
        kv = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        for op, key in (("read", "rbytes"), ("write", "wbytes")):
            rows.append({"major": major, "minor": minor, "op": op, "value": int(kv.get(key, 0))})
    return {"io_service_bytes_recursive": rows}


def _host_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _system_cpu_usage() -> int:
    """Host CPU time in ns, from the first line of /proc/stat, as Docker reports it."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:8]
    return sum(int(x) for x in fields) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _online_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except OSError:
        return os.cpu_count() or 1
