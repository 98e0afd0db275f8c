"""``NativeExecDriver``: the daemon side of the native exec driver (``pyd.exec: native``).

It validates a request, writes the bundle's ``config.json``, has a shim started for it and
then talks to that shim (``client``), or reads what the shim left (``state.json``) once it
is gone. It keeps no state in memory: ``<home>/containers/<id>`` is a symlink to each bundle,
so a new driver instance (a restarted daemon) finds every container that still exists.

Shims are forked by a per-driver fork server (``forkserver``) so a create does not pay for a
new interpreter; ``--exec-opt shim-start=exec`` starts each shim as
``python -I -m pyd_exec_native.shim`` instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from pyd.drivers.execdriver import ContainerState, CreateContainerRequest, ExecRequest
from pyd.drivers.options import check_options
from pyd.errors import Conflict, InvalidParameter, NotFound, PydError, Unavailable

from pyd_exec_native import bundle, capabilities, cgroups, client, devices, rlimits
from pyd_exec_native.client import ShimGone

log = logging.getLogger(__name__)

NAME = "native"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_NAMESPACES = {"mnt", "pid", "uts", "ipc", "net", "cgroup"}
# sysctls that live in a namespace the container owns (Docker's rule): prefix -> namespace
_SYSCTLS = (
    ("net.", "net"),
    ("kernel.msg", "ipc"),
    ("kernel.sem", "ipc"),
    ("kernel.shm", "ipc"),
    ("fs.mqueue.", "ipc"),
    ("kernel.domainname", "uts"),
    ("kernel.hostname", "uts"),
)
CREATE_TIMEOUT = 60.0
UNKNOWN_EXIT = 255  # exit status when the shim died before it could record one


def _shim_start(value: str) -> str:
    if value not in ("forkserver", "exec"):
        raise ValueError("must be forkserver or exec")
    return value


@dataclass(frozen=True)
class NativeOptions:
    shim_start: str = "forkserver"


def parse_options(raw: Mapping[str, str]) -> NativeOptions:
    """``exec-opts`` of the native driver (``InvalidOption`` naming a bad key or value)."""
    opts = check_options(raw, {"shim-start": _shim_start}, flag="--exec-opt", driver=NAME, kind="exec")
    return NativeOptions(shim_start=str(opts.get("shim-start", "forkserver")))


def _rfc3339(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def _stat(pid: int) -> tuple[str, str]:
    """(state letter, start time) of ``pid`` from /proc, or ("", "") if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return "", ""


def _starttime(pid: int) -> str:
    return _stat(pid)[1]


def _alive(pid: int, start: str) -> bool:
    """``pid`` runs and is the same process (its start time matches), not a reused pid. A zombie
    counts as gone: the host's init may take a while to reap an orphaned shim."""
    if pid <= 0:
        return False
    state, now = _stat(pid)
    return bool(now) and state not in ("Z", "X") and (not start or now == start)


def _wait_exit(pid: int, timeout: float) -> None:
    """Sleep until ``pid`` exits or ``timeout`` passes (a pidfd wakes us at the exit itself;
    the caller re-checks with ``_alive``, so a reused pid only ends the wait early)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd (old kernel, seccomp): poll
        time.sleep(min(timeout, 0.002))
        return
    try:
        select.select([fd], [], [], max(timeout, 0.0))
    finally:
        os.close(fd)


def _to_state(d: Mapping[str, Any]) -> ContainerState:
    return ContainerState(
        status=d.get("status", "stopped"),
        pid=int(d.get("pid") or 0),
        exit_code=d.get("exit_code"),
        oom_killed=bool(d.get("oom_killed")),
        started_at_nano=int(d.get("started_at") or 0),
        finished_at_nano=int(d.get("finished_at") or 0),
        error=d.get("error") or "",
    )


class NativeExecDriver:
    name = NAME

    def __init__(self, home: Path, options: NativeOptions | None = None) -> None:
        self.home = Path(home)
        self.options = options or NativeOptions()
        self.index = self.home / "containers"
        self.index.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._fs: subprocess.Popen[bytes] | None = None
        self._fs_sock: socket.socket | None = None
        self._layout: cgroups.Layout | None = None
        self._caps: tuple[set[int], list[int]] | None = None
        if self.options.shim_start == "forkserver":
            with self._lock:  # its imports take a few hundred ms: let them overlap daemon start-up
                self._start_forkserver()

    # -- helpers -------------------------------------------------------------------------------

    def _held_capabilities(self) -> tuple[set[int], list[int]]:
        """What the daemon holds (bounding and permitted sets), read once: it never changes."""
        if self._caps is None:
            held = capabilities.held("CapBnd") & capabilities.held("CapPrm")
            last = capabilities.last_cap()
            self._caps = (held, sorted(c for c in held if c <= last))
        return self._caps

    def _cgroup_layout(self) -> cgroups.Layout:
        if self._layout is None:
            self._layout = cgroups.detect()
        return self._layout

    def _bundle(self, container_id: str) -> str:
        if not _ID.match(container_id or ""):
            raise NotFound(f"No such container: {container_id}")
        try:
            target = os.readlink(self.index / container_id)
        except FileNotFoundError:
            raise NotFound(f"No such container: {container_id}") from None
        if not os.path.isdir(target):
            raise NotFound(f"No such container: {container_id} (its state directory {target} is gone)")
        return target

    def _saved_state(self, b: str) -> dict[str, Any]:
        try:
            return dict(bundle.read_json(os.path.join(b, bundle.STATE)))
        except (OSError, ValueError):
            return {}

    def _config(self, b: str) -> dict[str, Any]:
        return dict(bundle.read_json(os.path.join(b, bundle.CONFIG)))

    def _cgroup(self, b: str) -> cgroups.Cgroup:
        cfg = self._config(b)
        lay = cfg["cgroup_layout"]
        return cgroups.Cgroup(
            cgroups.Layout(lay["version"], lay["mounts"]),
            cfg["cgroup_path"],
            cpuset=bool(cfg["spec"].get("cgroup", {}).get("cpuset_cpus")),
        )

    def _offline_state(self, b: str) -> dict[str, Any]:
        """The state when the shim is gone: what it recorded, checked against reality."""
        st = self._saved_state(b)
        if st.get("status") in ("created", "running", "paused"):
            if _alive(int(st.get("pid") or 0), st.get("pid_start", "")):
                return {**st, "status": "running"}  # orphaned: its shim was killed
            st.update(status="stopped", exit_code=UNKNOWN_EXIT, error=st.get("error") or "the shim exited before the container")
        elif not st:
            st = {"status": "stopped", "exit_code": UNKNOWN_EXIT, "error": "the shim is gone and left no state"}
        if st.get("exit_code") is None:
            st["exit_code"] = UNKNOWN_EXIT
        return st

    def _request(self, container_id: str, msg: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
        b = self._bundle(container_id)
        try:
            return client.request(b, msg, timeout)
        except ShimGone:
            raise Conflict(f"Container {container_id} is not running") from None

    # -- validation ----------------------------------------------------------------------------

    def _validate(self, req: CreateContainerRequest) -> tuple[list[int], list[int], list[str], str]:
        cid, spec = req.container_id, req.spec
        if not _ID.match(cid or ""):
            raise InvalidParameter(f'invalid container id "{cid}": use letters, digits, "_", "." and "-"')
        if not os.path.isabs(req.bundle_dir):
            raise InvalidParameter(f'bundle directory "{req.bundle_dir}" must be an absolute path')
        if not spec.args:
            raise InvalidParameter(f"container {cid}: no command specified")
        if not spec.rootfs or not os.path.isdir(spec.rootfs):
            raise InvalidParameter(f'container {cid}: root filesystem "{spec.rootfs}" is not a directory')
        if not spec.cwd.startswith("/"):
            raise InvalidParameter(f'container {cid}: working directory "{spec.cwd}" must be an absolute path')
        ns = spec.namespaces
        unknown = set(ns) - _NAMESPACES
        if "user" in unknown:
            raise InvalidParameter(f"container {cid}: user namespaces are not supported by the native exec driver yet")
        if unknown:
            raise InvalidParameter(
                f"container {cid}: unknown namespace {sorted(unknown)[0]}; valid: {', '.join(sorted(_NAMESPACES))}"
            )
        if ns.get("mnt", "absent") is not None:
            raise InvalidParameter(f"container {cid}: the native exec driver needs a new mount namespace (mnt: None)")
        for name, path in ns.items():
            if path is not None and not os.path.exists(path):
                raise InvalidParameter(f'container {cid}: {name} namespace path "{path}" does not exist')
        if (spec.hostname or spec.domainname) and ns.get("uts", "absent") is not None:
            raise InvalidParameter(f"container {cid}: a hostname needs a new UTS namespace")
        for key in spec.sysctls:
            owner = next((n for prefix, n in _SYSCTLS if key.startswith(prefix)), None)
            if owner is None:
                raise InvalidParameter(f'container {cid}: sysctl "{key}" is not allowed: it is not namespaced')
            if ns.get(owner, "absent") is not None:
                raise InvalidParameter(f'container {cid}: sysctl "{key}" needs a new {owner} namespace')
        for name in spec.rlimits:
            try:
                rlimits.number(name)
            except KeyError:
                raise InvalidParameter(f'container {cid}: unknown ulimit "{name}"') from None
        for m in spec.mounts:
            if not m.destination.startswith("/"):
                raise InvalidParameter(f'container {cid}: mount destination "{m.destination}" must be an absolute path')
            if (m.type or "bind") == "bind" and not os.path.exists(m.source):
                raise InvalidParameter(f'container {cid}: bind source path does not exist: "{m.source}"')
        c = spec.cgroup
        if c.memory_swap is not None and c.memory_swap != -1:
            if c.memory is None:
                raise InvalidParameter(f"container {cid}: set a memory limit when setting memory-swap")
            if c.memory_swap < c.memory:
                raise InvalidParameter(f"container {cid}: memory-swap must be at least the memory limit")
        held, held_caps = self._held_capabilities()
        if spec.privileged:
            caps = held_caps
        else:
            bad = capabilities.unknown(spec.capabilities)
            if bad:
                raise InvalidParameter(f'container {cid}: unknown capability "{bad[0]}"')
            caps = sorted({capabilities.number(n) for n in spec.capabilities})
            missing = [capabilities.name(n) for n in caps if n not in held]
            if missing:
                raise InvalidParameter(
                    f"container {cid}: capability {missing[0]} is not available: the daemon does not hold it"
                )
        if spec.privileged:
            rules = [devices.ALLOW_ALL]
        else:
            rules = list(c.device_rules or devices.DEFAULT_RULES)
            rules += [f"{d.type} {d.major}:{d.minor} rwm" for d in spec.devices]
        for r in rules:
            try:
                devices.parse_rule(r)
            except ValueError as exc:
                raise InvalidParameter(f"container {cid}: {exc}") from None
        path = c.path or f"pyd/{cid}"
        try:
            cgroups.Cgroup(self._cgroup_layout(), path)
        except ValueError as exc:
            raise InvalidParameter(f"container {cid}: {exc}") from None
        return caps, held_caps, rules, path

    # -- ExecDriver ----------------------------------------------------------------------------

    def create(self, req: CreateContainerRequest) -> None:
        caps, held_caps, rules, cg_path = self._validate(req)
        cid = req.container_id
        link = self.index / cid
        if os.path.lexists(link):
            if os.path.isdir(link):
                raise Conflict(f"container {cid} already exists in the native exec driver")
            os.unlink(link)  # its bundle is gone: a leftover entry, not a container
        made_dir = not os.path.isdir(req.bundle_dir)
        os.makedirs(req.bundle_dir, mode=0o700, exist_ok=True)
        lay = self._cgroup_layout()
        cfg = {
            "id": cid,
            "bundle": req.bundle_dir,
            "log_path": req.log_path,
            "stdio": {**asdict(req.stdio), "tty": req.stdio.tty or req.spec.terminal},
            "spec": bundle.spec_to_dict(req.spec),
            "capabilities": caps,
            "privileged_capabilities": held_caps,
            "cgroup_path": cg_path,
            "cgroup_layout": {"version": lay.version, "mounts": lay.mounts},
            "device_rules": rules,
        }
        shim_pid = 0
        try:
            bundle.write_json(os.path.join(req.bundle_dir, bundle.CONFIG), cfg)
            os.symlink(req.bundle_dir, link)
            report = self._spawn_shim(req.bundle_dir)
            try:
                report.settimeout(CREATE_TIMEOUT)
                first = json.loads(report.recv(65536) or b"{}")
                shim_pid = int(first.get("shim_pid") or 0)
                if shim_pid:
                    with open(os.path.join(req.bundle_dir, "shim.pid"), "w") as f:
                        f.write(f"{shim_pid} {_starttime(shim_pid)}")
                    outcome = json.loads(report.recv(65536) or b"{}")
                else:
                    outcome = first
            except (TimeoutError, socket.timeout):
                raise Unavailable(f"container {cid}: the shim did not finish the create within {CREATE_TIMEOUT:.0f}s") from None
            finally:
                report.close()
            if not outcome.get("ok"):
                err = client.error_from_reply(outcome) if outcome else PydError("the shim exited without an answer")
                if type(err) is PydError:
                    err = PydError(f"container {cid}: {err}")
                raise err
        except BaseException:
            self._cleanup(cid, req.bundle_dir, made_dir, shim_pid)
            raise

    def _spawn_shim(self, bundle_dir: str) -> socket.socket:
        """Start a shim for ``bundle_dir``; return the socket its report arrives on."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            if self.options.shim_start == "exec":
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-m", "pyd_exec_native.shim", bundle_dir, str(theirs.fileno())],
                    pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd="/",
                )
                proc.wait()  # it forks the shim and exits at once
            else:
                self._send_to_forkserver(bundle_dir, theirs.fileno())
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return mine

    def _send_to_forkserver(self, bundle_dir: str, fd: int) -> None:
        with self._lock:
            for attempt in (1, 2):
                if self._fs is None or self._fs.poll() is not None or self._fs_sock is None:
                    self._start_forkserver()
                assert self._fs_sock is not None
                try:
                    socket.send_fds(self._fs_sock, [os.fsencode(bundle_dir)], [fd])
                    return
                except OSError:
                    if attempt == 2:
                        raise Unavailable("the native exec driver's fork server is not answering") from None
                    self._stop_forkserver()

    def _start_forkserver(self) -> None:
        self._stop_forkserver()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        errlog = open(self.home / "forkserver.log", "ab")
        try:
            self._fs = subprocess.Popen(
                [sys.executable, "-I", "-m", "pyd_exec_native.forkserver"],
                stdin=theirs,
                stdout=subprocess.DEVNULL,
                stderr=errlog,
                start_new_session=True,
                cwd="/",
            )
        finally:
            theirs.close()
            errlog.close()
        self._fs_sock = mine

    def _stop_forkserver(self) -> None:
        if self._fs_sock is not None:
            self._fs_sock.close()
            self._fs_sock = None
        if self._fs is not None:
            try:
                self._fs.wait(timeout=5)  # EOF on its socket ends it
            except subprocess.TimeoutExpired:
                self._fs.kill()
                self._fs.wait()
            self._fs = None

    def close(self) -> None:
        with self._lock:
            self._stop_forkserver()

    def _cleanup(self, cid: str, b: str, remove_dir: bool, shim_pid: int) -> None:
        """Remove what a (failed or deleted) container left: shim, cgroup, bundle, index."""
        pid, start = shim_pid, ""
        try:
            with open(os.path.join(b, "shim.pid")) as f:
                p, _, start = f.read().partition(" ")
                pid = int(p)
        except (OSError, ValueError):
            pass
        deadline, killed = time.monotonic() + 10, False
        while _alive(pid, start.strip()):  # the shim exits once its clients have their output
            if time.monotonic() > deadline:
                if killed:
                    log.warning("container %s: shim %d does not exit", cid, pid, extra={"driver": NAME})
                    break
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                deadline, killed = time.monotonic() + 5, True
            _wait_exit(pid, min(0.1, deadline - time.monotonic()))
        try:
            self._cgroup(b).destroy()
        except (OSError, KeyError, ValueError) as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("container %s: %s", cid, exc, extra={"driver": NAME})
        try:
            os.unlink(self.index / cid)
        except FileNotFoundError:
            pass
        if remove_dir:
            shutil.rmtree(b, ignore_errors=True)
        else:
            for name in (bundle.CONFIG, bundle.STATE, bundle.SOCKET, bundle.SHIM_LOG, "shim.pid"):
                try:
                    os.unlink(os.path.join(b, name))
                except FileNotFoundError:
                    pass

    def start(self, container_id: str) -> int:
        b = self._bundle(container_id)
        try:
            reply = client.request(b, {"op": "start"}, timeout=CREATE_TIMEOUT)
        except ShimGone:
            raise Conflict(f"container {container_id} has exited; create it again to run it") from None
        return int(reply["pid"])

    def state(self, container_id: str) -> ContainerState:
        b = self._bundle(container_id)
        try:
            return _to_state(client.request(b, {"op": "state"}, timeout=10))
        except ShimGone:
            return _to_state(self._offline_state(b))

    def kill(self, container_id: str, signal: int, all: bool = False) -> None:
        b = self._bundle(container_id)
        try:
            client.request(b, {"op": "kill", "signal": int(signal), "all": bool(all)})
        except ShimGone:
            st = self._offline_state(b)
            pid = int(st.get("pid") or 0)
            # An orphaned init whose shim was killed; check its start time so a reused pid
            # (another host process) is never signalled.
            if st.get("status") != "running" or not _alive(pid, st.get("pid_start", "")) or not st.get("pid_start"):
                raise Conflict(f"Container {container_id} is not running") from None
            os.kill(pid, signal)

    def wait(self, container_id: str, timeout: float | None = None) -> ContainerState:
        b = self._bundle(container_id)
        try:
            return _to_state(client.request(b, {"op": "wait"}, timeout=timeout))
        except ShimGone:
            pass
        except (TimeoutError, socket.timeout):
            return self.state(container_id)
        st = self._offline_state(b)
        if st.get("status") == "running":  # an orphan: poll until it is gone
            deadline = None if timeout is None else time.monotonic() + timeout
            while _alive(int(st.get("pid") or 0), st.get("pid_start", "")):
                if deadline is not None and time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            st = self._offline_state(b)
        return _to_state(st)

    def exec(self, container_id: str, req: ExecRequest) -> int:
        msg = {"op": "exec", **asdict(req)}
        return int(self._request(container_id, msg, timeout=CREATE_TIMEOUT)["pid"])

    def exec_state(self, container_id: str, exec_id: str) -> ContainerState:
        b = self._bundle(container_id)
        try:
            return _to_state(client.request(b, {"op": "exec_state", "exec_id": exec_id}, timeout=10))
        except ShimGone:
            st = self._saved_state(b).get("execs", {}).get(exec_id)
            if st is None:
                raise NotFound(f"No such exec instance: {exec_id}") from None
            if st.get("status") != "stopped":
                st = {**st, "status": "stopped", "exit_code": st.get("exit_code") or UNKNOWN_EXIT}
            return _to_state(st)

    def attach(self, container_id: str, exec_id: str = "", stdin: bool = False) -> socket.socket:
        b = self._bundle(container_id)
        try:
            sock, _reply = client.open_stream(b, {"op": "attach", "exec_id": exec_id, "stdin": bool(stdin)})
        except ShimGone:
            raise Conflict(f"Container {container_id} is not running") from None
        return sock

    def resize(self, container_id: str, rows: int, cols: int, exec_id: str = "") -> None:
        self._request(container_id, {"op": "resize", "rows": int(rows), "cols": int(cols), "exec_id": exec_id})

    def pause(self, container_id: str) -> None:
        st = self.state(container_id)
        if st.status != "running":
            raise Conflict(f"Container {container_id} is not running")
        try:
            self._cgroup(self._bundle(container_id)).freeze()
        except OSError as exc:
            raise PydError(f"cannot pause container {container_id}: {exc}") from exc

    def resume(self, container_id: str) -> None:
        st = self.state(container_id)
        if st.status != "paused":
            raise Conflict(f"Container {container_id} is not paused")
        self._cgroup(self._bundle(container_id)).thaw()

    def stats(self, container_id: str) -> dict[str, object]:
        st = self.state(container_id)
        if st.status not in ("running", "paused"):
            raise Conflict(f"Container {container_id} is not running")
        data = self._cgroup(self._bundle(container_id)).stats()
        return {"read": _rfc3339(time.time_ns()), **data, "num_procs": 0, "storage_stats": {}}

    def delete(self, container_id: str) -> None:
        try:
            b = self._bundle(container_id)
        except NotFound:
            try:  # a dangling index entry
                os.unlink(self.index / container_id)
            except (FileNotFoundError, OSError):
                pass
            return
        try:
            client.request(b, {"op": "shutdown"}, timeout=10)
        except ShimGone:
            st = self._offline_state(b)
            if st.get("status") == "running":
                raise Conflict(f"You cannot remove a running container {container_id}. Stop it first") from None
        self._cleanup(container_id, b, remove_dir=True, shim_pid=0)

    def list(self) -> list[str]:
        out = []
        for entry in sorted(os.listdir(self.index)):
            if os.path.isdir(self.index / entry):
                out.append(entry)
        return out

