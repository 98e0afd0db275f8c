"""The per-container shim: parent of the container's processes, owner of their stdio and exit.

One shim per container, started by the driver (forked from the driver's fork server, or run as
``python -I -m pyd_exec_native.shim BUNDLE REPORT_FD``), in a session of its own, not a child of
the daemon: killing the daemon (even with SIGKILL) leaves it and its container running. It is a
single-threaded ``selectors`` loop (so forking exec helpers from it is safe) that

* enters the container's new pid namespace (only its children land there), creates the
  cgroup and forks the container's init (``container.run_init``), which moves itself into it
  (cgroup v1; on v2 the shim moves init while init builds its filesystem); then holds init
  in "created" until ``start``; init and exec
  processes are its own children (it is non-dumpable, and so are they until they exec), and
  it alone reaps them and records their exit status (128+N for signal N) and, for init,
  whether the memory cgroup OOM-killed anything;
* owns stdio: pipes, or a pty from the container's own devpts when ``tty``; appends init's
  output to the log file in the exec log format (``pyd.drivers.execdriver``) and copies it to
  attached clients;
* writes ``state.json`` atomically on every change; when init has exited it drains output,
  removes the cgroup, answers every waiter, flushes every attached client and exits.

Protocol on ``<bundle>/shim.sock`` (unix stream socket). A client sends one request, a JSON
object on one line; the shim answers with one JSON line, ``{"ok": true, ...}`` or
``{"ok": false, "error": "...", "kind": K}`` where K is ``invalid``, ``notfound``,
``conflict``, ``notmodified`` or ``internal``, and closes the connection, except for attach:

``{"op": "state"}``                      -> the state (as in ``state.json``)
``{"op": "start"}``                      -> ``{"pid": N}`` once the program has exec'd, or the
                                            error (with ``"code"`` 126/127) when it cannot run
``{"op": "wait"}``                       -> the state, once init has exited
``{"op": "kill", "signal": N, "all": B, "exec_id": E}`` -> ``{}``
``{"op": "resize", "rows": R, "cols": C, "exec_id": E}`` -> ``{}``
``{"op": "exec", "exec_id": E, "args": [...], "env": [...], "cwd": P, "user": {...}|null,
   "tty": B, "open_stdin": B, "privileged": B, "detach": B, "console_size": [R, C]}``
                                         -> ``{"pid": N}`` once the process is ready to exec
``{"op": "exec_state", "exec_id": E}``   -> that exec's state
``{"op": "shutdown", "force": B}``       -> ``{}``; the shim kills a created (``force``: also a
                                            running) init, cleans up and exits
``{"op": "attach", "exec_id": E, "stdin": B}`` -> ``{"ok": true, "tty": B}``, then the
    connection carries the process's stdio in Docker's raw-stream format (see
    ``pyd.drivers.execdriver``): output to the client (framed unless tty), input from it.
    The client's half-close ends its stdin (for a ``stdin_once`` container or an exec it
    closes the process's stdin; for an ``open_stdin`` one it ends this attach). The shim
    closes the connection once the process has exited, its output is flushed and its state
    recorded. The first attach of an exec that is not detached starts it.
"""

from __future__ import annotations

import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import sys
import termios
import time
from typing import Any, Callable, NoReturn

from pyd_exec_native import bundle, cgroups

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
CHUNK = 65536
HIGH_WATER = 1 << 20  # per client: stop reading the process's output above this
LOW_WATER = 1 << 18
MAX_REQUEST = 1 << 20


class RequestError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.mode = "request"  # request -> waiting | stream -> closing
        self.proc: Proc | None = None
        self.stdin = False
        self.read_eof = False
        self.closing = False
        self.closed = False


class Proc:
    """The container's init (``exec_id`` "") or one exec process."""

    def __init__(self, exec_id: str, tty: bool, open_stdin: bool, stdin_once: bool, detach: bool = False) -> None:
        self.exec_id = exec_id
        self.tty = tty
        self.open_stdin = open_stdin
        self.stdin_once = stdin_once
        self.detach = detach
        self.status = "creating"  # creating -> created -> starting -> running -> stopped
        self.pid = 0
        self.exit_code: int | None = None
        self.oom_killed = False
        self.started = 0
        self.finished = 0
        self.error = ""
        self.error_kind = ""
        self.error_code: int | None = None
        self.ctl: socket.socket | None = None
        self.stdin_fd = -1
        self.stdin_buf = bytearray()
        self.stdin_eof = False  # close stdin once the buffer is written
        self.outs: dict[int, int] = {}  # fd -> stream (1 stdout, 2 stderr)
        self.master = -1
        self.console_size = (0, 0)
        self.clients: list[Client] = []
        self.start_waiters: list[Client] = []
        self.ready_waiters: list[Client] = []
        self.output_paused = False
        self.pid_start = ""

    def public_status(self, frozen: bool) -> str:
        if self.status == "running":
            return "paused" if frozen else "running"
        if self.status == "stopped":
            return "stopped"
        return "created"

    def state(self, frozen: bool = False) -> dict[str, Any]:
        return {
            "status": self.public_status(frozen),
            "pid": self.pid,
            "exit_code": self.exit_code,
            "oom_killed": self.oom_killed,
            "started_at": self.started,
            "finished_at": self.finished,
            "error": self.error,
        }


class LogFile:
    """Appends output in the exec log format, split into lines (16 KiB at most each)."""

    def __init__(self, path: str) -> None:
        from pyd.drivers.execdriver import LOG_MAX_LINE, LOG_ROTATE_SIZE, encode_log_record
        from pyd.drivers.log import LogMessage

        self.path = path
        self._encode = encode_log_record
        self._msg = LogMessage
        self.max_line = LOG_MAX_LINE
        self.rotate_size = LOG_ROTATE_SIZE
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size
        self.pending: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, stream: int, data: bytes) -> None:
        buf = self.pending[stream]
        buf += data
        now = time.time_ns()
        while True:
            nl = buf.find(b"\n")
            if nl < 0 or nl >= self.max_line:
                break
            self._record(stream, bytes(buf[: nl + 1]), now, False)
            del buf[: nl + 1]
        while len(buf) >= self.max_line:
            self._record(stream, bytes(buf[: self.max_line]), now, True)
            del buf[: self.max_line]

    def flush(self, stream: int) -> None:
        buf = self.pending[stream]
        if buf:
            self._record(stream, bytes(buf), time.time_ns(), True)
            buf.clear()

    def _record(self, stream: int, line: bytes, t: int, partial: bool) -> None:
        rec = self._encode(self._msg(line=line, stream="stdout" if stream == 1 else "stderr", time_nano=t, partial=partial))
        view = memoryview(rec)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(rec)
        if self.size >= self.rotate_size:
            os.rename(self.path, self.path + ".1")
            os.close(self.fd)
            self.fd = self._open()
            self.size = 0

    def close(self) -> None:
        for stream in (1, 2):
            self.flush(stream)
        os.close(self.fd)


def _proc_starttime(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


class Shim:
    def __init__(self, bundle_dir: str, report: socket.socket | None) -> None:
        self.bundle_dir = bundle_dir
        self.report = report
        self.cfg: dict[str, Any] = bundle.read_json(os.path.join(bundle_dir, bundle.CONFIG))
        self.spec = bundle.spec_from_dict(self.cfg["spec"])
        lay = self.cfg["cgroup_layout"]
        self.cgroup = cgroups.Cgroup(
            cgroups.Layout(lay["version"], lay["mounts"]), self.cfg["cgroup_path"], cpuset=bool(self.spec.cgroup.cpuset_cpus)
        )
        self.sel = selectors.DefaultSelector()
        self.handlers: dict[int, list[Callable[[], None] | None]] = {}
        stdio = self.cfg["stdio"]
        self.init = Proc("", stdio["tty"], stdio["open_stdin"], stdio["stdin_once"])
        self.init.console_size = tuple(stdio.get("console_size") or (0, 0))  # type: ignore[assignment]
        self.execs: dict[str, Proc] = {}
        self.by_pid: dict[int, Proc] = {}
        self.clients: dict[int, Client] = {}
        self.exit_waiters: list[Client] = []
        self.log: LogFile | None = None
        self.listener: socket.socket | None = None
        self.cleaned = False
        self.shutdown_requested = False

    # -- event loop plumbing --------------------------------------------------------------------

    def _set(self, fd: int, read: Callable[[], None] | None | bool = False, write: Callable[[], None] | None | bool = False) -> None:
        """Change the read and/or write handler of ``fd`` (``False``: leave as it is)."""
        cur = self.handlers.get(fd, [None, None])
        new = [cur[0] if read is False else read, cur[1] if write is False else write]
        events = (READ if new[0] else 0) | (WRITE if new[1] else 0)
        if fd in self.handlers:
            if events:
                self.sel.modify(fd, events)
            else:
                self.sel.unregister(fd)
        elif events:
            self.sel.register(fd, events)
        if events:
            self.handlers[fd] = new  # type: ignore[assignment]
        else:
            self.handlers.pop(fd, None)

    def _drop(self, fd: int) -> None:
        if fd in self.handlers:
            self.sel.unregister(fd)
            del self.handlers[fd]

    def run(self) -> NoReturn:
        try:
            self._start()
        except BaseException as exc:  # noqa: BLE001
            if self.init.ctl is not None:
                self._on_ctl(self.init)  # init's own error, if it sent one, says more
            invalid = isinstance(exc, (cgroups.CgroupError, ValueError))
            self._fail_create(str(exc), "invalid" if invalid else "internal")
        while True:
            for key, events in self.sel.select():
                for mask, slot in ((READ, 0), (WRITE, 1)):
                    h = self.handlers.get(key.fd)
                    if h is None or not events & mask or not h[slot]:
                        continue
                    try:
                        h[slot]()  # type: ignore[misc]
                    except Exception:  # noqa: BLE001 - a bug must not orphan the container
                        import traceback

                        traceback.print_exc()
            if self._done():
                self._exit(0)

    def _start(self) -> None:
        import prctl

        from pyd_exec_native import linux

        # Every process forked from here is a copy of a host Python binary: non-dumpable from
        # birth, so nothing in a container can open it through /proc/PID/exe.
        prctl.set_dumpable(False)
        prctl.set_child_subreaper(True)
        rd, wr = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake = rd
        signal.set_wakeup_fd(wr, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self._set(rd, read=self._on_wake)
        # Children go to the container's pid namespace from now on (init is its pid 1).
        pidns = self.spec.namespaces.get("pid", "host")
        if pidns is None:
            linux.unshare(linux.CLONE_FLAGS["pid"])
        elif pidns != "host":
            fd = os.open(pidns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                linux.setns(fd, linux.CLONE_FLAGS["pid"])
            finally:
                os.close(fd)
        join_files = self.cgroup.self_join_files() if self.cgroup.layout.version == 1 else []
        if join_files:
            # cgroup v1: init moves itself (a write to "tasks" without the global lock), so
            # the cgroup is made first and nothing waits for a migration.
            self.cgroup.create(self.spec.cgroup, self.cfg["device_rules"])
            self._spawn_init(join_files)
        else:
            # v2: while init builds its filesystem, make the cgroup and move init into it
            # (the migration waits for an RCU grace period); "joined" tells init it is done.
            self._spawn_init([])
            self.cgroup.create(self.spec.cgroup, self.cfg["device_rules"])
            self.cgroup.join(self.init.pid)
            try:
                assert self.init.ctl is not None
                self.init.ctl.send(b"joined")
            except OSError:
                pass  # init already gave up; its error is waiting on the control socket
        # The driver connects once it has the create's report, which comes after this.
        try:
            os.unlink(bundle.SOCKET)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        self.listener.bind(bundle.SOCKET)
        os.chmod(bundle.SOCKET, 0o600)
        self.listener.listen(64)
        self._set(self.listener.fileno(), read=self._on_accept)

    # -- init -----------------------------------------------------------------------------------

    def _procs_files(self) -> list[str]:
        return self.cgroup.self_join_files()

    def _stdio_pair(self, proc: Proc, discard: bool) -> list[int] | None:
        """Make the pipes of a non-tty process; return the child's ends (stdin, stdout, stderr)."""
        if proc.tty:
            return None
        null_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if proc.open_stdin and not discard:
            child_in, proc.stdin_fd = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(proc.stdin_fd, False)
        else:
            child_in = null_r
        if discard:
            null_w = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            if child_in != null_r:
                os.close(null_r)
            return [child_in, null_w, null_w]
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        proc.outs = {out_r: 1, err_r: 2}
        if child_in != null_r:
            os.close(null_r)
        return [child_in, out_w, err_w]

    def _fork_helper(self, proc: Proc, target: Callable[[socket.socket, list[int] | None], NoReturn], discard: bool = False) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stdio = self._stdio_pair(proc, discard)
        try:
            pid = os.fork()
        except OSError:
            parent.close()
            child.close()
            for fd in {*(stdio or []), proc.stdin_fd, *proc.outs} - {-1}:
                os.close(fd)
            raise
        if pid == 0:
            try:
                parent.close()
                # the shim's own ends must not stay open in the container
                for fd in [proc.stdin_fd, *proc.outs, *self.handlers]:
                    if fd >= 0:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                target(child, stdio)
            finally:
                os._exit(1)
        child.close()
        for fd in set(stdio or []):
            os.close(fd)
        parent.setblocking(False)
        proc.ctl = parent
        proc.pid = pid
        self.by_pid[pid] = proc
        self._set(parent.fileno(), read=lambda: self._on_ctl(proc))
        for fd in proc.outs:
            self._set(fd, read=lambda fd=fd: self._on_output(proc, fd))

    def _spawn_init(self, join_files: list[str]) -> None:
        from pyd_exec_native import container

        self._fork_helper(
            self.init, lambda ctl, stdio: container.run_init(self.cfg, self.spec, ctl, stdio, join_files)
        )

    def _fail_create(self, message: str, kind: str) -> NoReturn:
        """Creation failed: undo everything, tell the driver, exit."""
        if self.init.ctl is not None:  # a process still in setup sees EOF and gives up
            self.init.ctl.close()
            self.init.ctl = None
        if self.init.pid and self.init.status != "stopped":
            try:
                os.kill(self.init.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.cgroup.kill_all(signal.SIGKILL)
        except OSError:
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.002)
        try:
            self.cgroup.destroy()
        except OSError as exc:
            print(f"shim: {exc}", file=sys.stderr)
        self._send_report({"ok": False, "error": message, "kind": kind})
        self._exit(1)

    def _send_report(self, msg: dict[str, Any]) -> None:
        if self.report is not None:
            try:
                self.report.setblocking(True)
                self.report.send(json.dumps(msg).encode())
            except OSError:
                pass
            self.report.close()
            self.report = None

    # -- control channel from the forked processes ----------------------------------------------

    def _on_ctl(self, proc: Proc) -> None:
        ctl = proc.ctl
        if ctl is None:
            return
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(ctl, 65536, 4, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._drop(ctl.fileno())
                ctl.close()
                proc.ctl = None
                self._ctl_eof(proc)
                return
            self._ctl_message(proc, json.loads(data), fds)

    def _ctl_message(self, proc: Proc, msg: dict[str, Any], fds: list[int]) -> None:
        if msg.get("ready"):
            if fds:
                self._attach_master(proc, fds[0])
            proc.status = "created"
            proc.pid_start = _proc_starttime(proc.pid)
            self._on_ready(proc)
        elif "error" in msg:
            proc.error = msg["error"]
            proc.error_kind = msg.get("kind", "internal")
            proc.error_code = msg.get("code")
            if proc.status == "creating":
                self._setup_failed(proc)
            elif proc.status == "starting":
                self._reply_all(proc.start_waiters, self._error(proc))

    def _error(self, proc: Proc) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": False, "error": proc.error, "kind": proc.error_kind or "internal"}
        if proc.error_code is not None:
            out["code"] = proc.error_code
        return out

    def _attach_master(self, proc: Proc, master: int) -> None:
        os.set_blocking(master, False)
        proc.master = proc.stdin_fd = master
        proc.outs = {master: 1}
        if proc.console_size != (0, 0):
            self._winsize(master, *proc.console_size)
        self._set(master, read=lambda: self._on_output(proc, master))

    def _ctl_eof(self, proc: Proc) -> None:
        if proc.status == "creating":
            if not proc.error:
                proc.error, proc.error_kind = "the process exited while it was being set up", "internal"
            self._setup_failed(proc)
        elif proc.status == "starting" and not proc.error:
            # close-on-exec closed the channel: the program runs
            proc.status = "running"
            proc.started = time.time_ns()
            self._reply_all(proc.start_waiters, {"ok": True, "pid": proc.pid})
            self._write_state()

    def _on_ready(self, proc: Proc) -> None:
        # Answers first, state.json right after, in this same turn: no request is read before
        if proc is self.init:
            if self.cfg.get("log_path"):
                self.log = LogFile(self.cfg["log_path"])
            self._send_report({"ok": True, "pid": proc.pid})
            self._write_state()
            if self.shutdown_requested:
                self._kill(proc, signal.SIGKILL)
            return
        self._reply_all(proc.ready_waiters, {"ok": True, "pid": proc.pid})
        self._write_state()
        if proc.detach:
            self._go(proc)

    def _setup_failed(self, proc: Proc) -> None:
        if proc is self.init:
            self._fail_create(proc.error, proc.error_kind or "internal")
        self._reply_all(proc.ready_waiters, self._error(proc))
        self._kill(proc, signal.SIGKILL)

    def _go(self, proc: Proc) -> None:
        if proc.status != "created" or proc.ctl is None:
            return
        try:
            proc.ctl.send(b"go")
            proc.status = "starting"
        except OSError:
            pass

    # -- process exit ---------------------------------------------------------------------------

    def _on_wake(self) -> None:
        try:
            while os.read(self._wake, 512):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.by_pid.pop(pid, None)
            if proc is not None:
                code = os.waitstatus_to_exitcode(status)
                self._on_exit(proc, code if code >= 0 else 128 - code)

    def _on_exit(self, proc: Proc, code: int) -> None:
        self._on_ctl(proc)  # messages it sent before dying come first
        if proc.ctl is not None:
            self._drop(proc.ctl.fileno())
            proc.ctl.close()
            proc.ctl = None
        prev = proc.status
        proc.exit_code = code
        proc.finished = time.time_ns()
        proc.status = "stopped"
        if proc is self.init:
            try:
                proc.oom_killed = self.cgroup.oom_kills() > 0
            except OSError:
                pass
            if "pid" not in self.spec.namespaces:
                # without a pid namespace the kernel does not end the rest: we do
                try:
                    self.cgroup.kill_all(signal.SIGKILL)
                except OSError:
                    pass
        for fd in list(proc.outs):
            self._drain(proc, fd)
        self._close_stdin(proc)
        if prev == "creating":
            if proc is self.init:
                self._fail_create(proc.error or f"the container process exited with {code} during setup", proc.error_kind or "internal")
            self._reply_all(proc.ready_waiters, self._error(proc) if proc.error else {"ok": False, "error": f"exec process exited with {code} during setup", "kind": "internal"})
        if proc.start_waiters:
            if proc.error:
                self._reply_all(proc.start_waiters, self._error(proc))
            else:
                proc.started = proc.started or proc.finished
                self._reply_all(proc.start_waiters, {"ok": True, "pid": proc.pid})
        self._write_state()
        for c in list(proc.clients):
            self._finish_client(c)
        if proc is self.init:
            self._close_log()  # every line is in the log before anyone hears of the exit
            self._reply_all(self.exit_waiters, {"ok": True, **self._state()})
            self._cleanup()  # the cgroup's rmdirs (~1 ms) after the answer

    def _cleanup(self) -> None:
        if self.cleaned:
            return
        self.cleaned = True
        try:
            self.cgroup.destroy()
        except OSError as exc:
            print(f"shim: {exc}", file=sys.stderr)
        self._close_log()

    def _close_log(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def _done(self) -> bool:
        if self.init.status != "stopped" or any(e.status != "stopped" for e in self.execs.values()):
            return False
        return not any(c.mode == "stream" or c.closing for c in self.clients.values())

    def _exit(self, code: int) -> NoReturn:
        if self.init.status == "stopped":
            self._write_state()
        try:
            os.unlink(os.path.join(self.bundle_dir, bundle.SOCKET))
        except OSError:
            pass
        os._exit(code)

    # -- output and input -----------------------------------------------------------------------

    def _on_output(self, proc: Proc, fd: int) -> None:
        try:
            data = os.read(fd, CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: the pty's other side is gone
            data = b""
        if not data:
            self._close_output(proc, fd)
            return
        self._emit(proc, proc.outs[fd], data)

    def _drain(self, proc: Proc, fd: int) -> None:
        while fd in proc.outs:
            try:
                data = os.read(fd, CHUNK)
            except OSError:
                data = b""
            if not data:
                self._close_output(proc, fd)
                return
            self._emit(proc, proc.outs[fd], data)

    def _close_output(self, proc: Proc, fd: int) -> None:
        stream = proc.outs.pop(fd)
        self._drop(fd)
        if fd == proc.master:
            proc.master = proc.stdin_fd = -1
            proc.stdin_buf.clear()
        os.close(fd)
        if proc is self.init and self.log is not None:
            self.log.flush(stream)

    def _emit(self, proc: Proc, stream: int, data: bytes) -> None:
        if proc is self.init and self.log is not None:
            self.log.write(stream, data)
        if not proc.clients:
            return
        frame = data if proc.tty else struct.pack(">BxxxI", stream, len(data)) + data
        for c in proc.clients:
            if not c.closed:
                c.outbuf += frame
                self._set(c.fd, write=lambda c=c: self._on_client_writable(c))
                if len(c.outbuf) > HIGH_WATER and not proc.output_paused:
                    proc.output_paused = True
                    for fd in proc.outs:
                        self._set(fd, read=None)

    def _maybe_resume_output(self, proc: Proc) -> None:
        if proc.output_paused and all(len(c.outbuf) < LOW_WATER for c in proc.clients):
            proc.output_paused = False
            for fd in proc.outs:
                self._set(fd, read=lambda fd=fd: self._on_output(proc, fd))

    def _stdin_write(self, proc: Proc, data: bytes) -> None:
        if proc.stdin_fd < 0 or proc.stdin_eof:
            return
        proc.stdin_buf += data
        self._set(proc.stdin_fd, write=lambda: self._on_stdin_writable(proc))

    def _on_stdin_writable(self, proc: Proc) -> None:
        fd = proc.stdin_fd
        if fd < 0:
            return
        try:
            n = os.write(fd, proc.stdin_buf)
            del proc.stdin_buf[:n]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EPIPE: the process closed its stdin
            proc.stdin_buf.clear()
            if fd != proc.master:
                self._close_stdin(proc)
            return
        if not proc.stdin_buf:
            self._set(fd, write=None)
            if proc.stdin_eof:
                self._close_stdin(proc)
        for c in proc.clients:
            if c.stdin and c.mode == "stream" and not c.read_eof and len(proc.stdin_buf) < LOW_WATER:
                self._set(c.fd, read=lambda c=c: self._on_client_readable(c))

    def _close_stdin(self, proc: Proc) -> None:
        fd = proc.stdin_fd
        if fd < 0 or fd == proc.master:  # the master is closed with the output
            return
        self._set(fd, write=None)
        os.close(fd)
        proc.stdin_fd = -1
        proc.stdin_buf.clear()

    def _winsize(self, fd: int, rows: int, cols: int) -> None:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    # -- clients --------------------------------------------------------------------------------

    def _on_accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            c = Client(sock)
            self.clients[c.fd] = c
            self._set(c.fd, read=lambda c=c: self._on_client_readable(c))

    def _on_client_readable(self, c: Client) -> None:
        try:
            data = c.sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_client(c)
            return
        if c.mode == "request":
            if not data:
                self._close_client(c)
                return
            c.inbuf += data
            nl = c.inbuf.find(b"\n")
            if nl < 0:
                if len(c.inbuf) > MAX_REQUEST:
                    self._close_client(c)
                return
            line, rest = bytes(c.inbuf[:nl]), bytes(c.inbuf[nl + 1 :])
            c.inbuf.clear()
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("request must be a JSON object")
                self._handle(c, req)
            except RequestError as exc:
                self._reply(c, {"ok": False, "error": str(exc), "kind": exc.kind})
            except (ValueError, KeyError, TypeError) as exc:
                self._reply(c, {"ok": False, "error": f"bad request: {exc}", "kind": "invalid"})
            except OSError as exc:
                self._reply(c, {"ok": False, "error": str(exc), "kind": "internal"})
            if c.mode == "stream" and rest:
                self._client_input(c, rest)
        elif c.mode == "stream":
            if data:
                self._client_input(c, data)
            else:
                self._client_eof(c)
        elif not data:
            if c.mode == "waiting" or not c.outbuf:  # a waiter went away
                self._close_client(c)
            else:
                self._set(c.fd, read=None)

    def _client_input(self, c: Client, data: bytes) -> None:
        proc = c.proc
        if proc is None or not c.stdin:
            return
        self._stdin_write(proc, data)
        if len(proc.stdin_buf) > HIGH_WATER:
            self._set(c.fd, read=None)

    def _client_eof(self, c: Client) -> None:
        c.read_eof = True
        self._set(c.fd, read=None)
        proc = c.proc
        if proc is None or not c.stdin:
            return
        if proc.exec_id or proc.stdin_once:
            if proc.tty:  # a pty cannot be half-closed: send the EOF character instead
                self._stdin_write(proc, b"\x04")
            else:
                proc.stdin_eof = True
                if not proc.stdin_buf:
                    self._close_stdin(proc)
        else:
            self._finish_client(c)

    def _on_client_writable(self, c: Client) -> None:
        try:
            n = c.sock.send(c.outbuf)
            del c.outbuf[:n]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_client(c)
            return
        if not c.outbuf:
            self._set(c.fd, write=None)
            if c.closing:
                self._close_client(c)
                return
        if c.proc is not None:
            self._maybe_resume_output(c.proc)

    def _reply(self, c: Client, msg: dict[str, Any], close: bool = True) -> None:
        if c.closed:
            return
        c.outbuf += json.dumps(msg).encode() + b"\n"
        if close:
            c.closing = True
            c.mode = "closing"
        self._set(c.fd, write=lambda: self._on_client_writable(c))
        if close:  # a last answer goes out now, before the rest of this turn's work
            self._on_client_writable(c)

    def _reply_all(self, clients: list[Client], msg: dict[str, Any]) -> None:
        for c in list(clients):  # a client closed on the way leaves the list
            if not c.closed:
                self._reply(c, msg)
        clients.clear()

    def _finish_client(self, c: Client) -> None:
        """Close an attached client once what it is owed has been sent."""
        c.closing = True
        c.mode = "closing"
        if not c.outbuf:
            self._close_client(c)

    def _close_client(self, c: Client) -> None:
        if c.closed:
            return
        c.closed = True
        self._drop(c.fd)
        self.clients.pop(c.fd, None)
        if c.proc is not None and c in c.proc.clients:
            c.proc.clients.remove(c)
            self._maybe_resume_output(c.proc)
        for waiters in [self.exit_waiters] + [p.start_waiters for p in self._procs()] + [p.ready_waiters for p in self._procs()]:
            if c in waiters:
                waiters.remove(c)
        c.sock.close()

    def _procs(self) -> list[Proc]:
        return [self.init, *self.execs.values()]

    # -- requests -------------------------------------------------------------------------------

    def _proc(self, exec_id: str) -> Proc:
        if not exec_id:
            return self.init
        proc = self.execs.get(exec_id)
        if proc is None:
            raise RequestError("notfound", f"no such exec instance: {exec_id}")
        return proc

    def _cid(self) -> str:
        return self.cfg["id"]

    def _handle(self, c: Client, req: dict[str, Any]) -> None:
        op = req.get("op")
        if op == "state":
            self._reply(c, {"ok": True, **self._state()})
        elif op == "wait":
            if self.init.status == "stopped":
                self._reply(c, {"ok": True, **self._state()})
            else:
                c.mode = "waiting"
                self.exit_waiters.append(c)
        elif op == "start":
            p = self.init
            if p.status == "created":
                c.mode = "waiting"
                p.start_waiters.append(c)
                self._go(p)
            elif p.status == "starting":
                c.mode = "waiting"
                p.start_waiters.append(c)
            elif p.status == "running":
                raise RequestError("notmodified", f"container {self._cid()} is already running")
            else:
                raise RequestError("conflict", f"container {self._cid()} is not in the created state")
        elif op == "kill":
            proc = self._proc(req.get("exec_id", ""))
            if proc.status not in ("starting", "running"):
                raise RequestError("conflict", f"container {self._cid()} is not running")
            sig = int(req["signal"])
            if proc is self.init and req.get("all"):
                self.cgroup.kill_all(sig)
            else:
                self._kill(proc, sig)
            self._reply(c, {"ok": True})
        elif op == "resize":
            proc = self._proc(req.get("exec_id", ""))
            rows, cols = int(req["rows"]), int(req["cols"])
            if not proc.tty:
                raise RequestError("conflict", "the process has no tty to resize")
            proc.console_size = (rows, cols)
            if proc.master >= 0:
                self._winsize(proc.master, rows, cols)
            self._reply(c, {"ok": True})
        elif op == "exec":
            self._exec(c, req)
        elif op == "exec_state":
            proc = self._proc(req["exec_id"])
            self._reply(c, {"ok": True, **proc.state()})
        elif op == "attach":
            self._attach(c, req)
        elif op == "shutdown":
            self._shutdown(c, bool(req.get("force")))
        else:
            raise RequestError("invalid", f"unknown op {op!r}")

    def _kill(self, proc: Proc, sig: int) -> None:
        if proc.pid and proc.status != "stopped":
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            if sig == signal.SIGKILL and proc is self.init and self.cgroup.frozen():
                self.cgroup.thaw()  # a frozen task only dies once thawed

    def _shutdown(self, c: Client, force: bool) -> None:
        p = self.init
        if p.status in ("starting", "running") and not force:
            raise RequestError("conflict", f"container {self._cid()} is running; stop it first")
        self.shutdown_requested = True
        if p.status != "stopped":
            if p.pid:
                self._kill(p, signal.SIGKILL)
            elif p.ctl is not None:  # not forked yet as far as we know: abort the setup
                self._drop(p.ctl.fileno())
                p.ctl.close()
                p.ctl = None
        for e in self.execs.values():
            if e.status != "stopped":
                self._kill(e, signal.SIGKILL)
        self._reply(c, {"ok": True})

    def _exec(self, c: Client, req: dict[str, Any]) -> None:
        from pyd_exec_native import container

        exec_id = str(req["exec_id"])
        if not exec_id:
            raise RequestError("invalid", "exec_id must not be empty")
        if self.init.status != "running":
            raise RequestError("conflict", f"container {self._cid()} is not running")
        if self.cgroup.frozen():
            raise RequestError("conflict", f"container {self._cid()} is paused, unpause the container before exec")
        if exec_id in self.execs:
            raise RequestError("conflict", f"exec instance {exec_id} already exists")
        if not req.get("args"):
            raise RequestError("invalid", "no command given for exec")
        proc = Proc(exec_id, bool(req.get("tty")), bool(req.get("open_stdin")), True, bool(req.get("detach")))
        proc.console_size = tuple(req.get("console_size") or (0, 0))  # type: ignore[assignment]
        self.execs[exec_id] = proc
        procs = self._procs_files()
        init_pid = self.init.pid
        try:
            self._fork_helper(
                proc,
                lambda ctl, stdio: container.run_exec(self.cfg, self.spec, req, init_pid, procs, ctl, stdio),
                discard=proc.detach,
            )
        except OSError as exc:  # ENOMEM: the pid namespace's init is gone
            del self.execs[exec_id]
            raise RequestError("conflict", f"container {self._cid()} is not running ({exc.strerror})") from None
        c.mode = "waiting"
        proc.ready_waiters.append(c)

    def _attach(self, c: Client, req: dict[str, Any]) -> None:
        proc = self._proc(req.get("exec_id", ""))
        self._reply(c, {"ok": True, "tty": proc.tty}, close=False)
        c.proc = proc
        if proc.status == "stopped" and not proc.outs:
            self._finish_client(c)
            return
        c.mode = "stream"
        c.stdin = bool(req.get("stdin")) and proc.open_stdin
        proc.clients.append(c)
        if proc.exec_id and proc.status == "created":
            self._go(proc)

    # -- state ----------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        frozen = self.init.status == "running" and self.cgroup.frozen()
        return {
            "id": self._cid(),
            "shim_pid": os.getpid(),
            **self.init.state(frozen),
            "pid_start": self.init.pid_start,
            "execs": {k: p.state() for k, p in self.execs.items()},
            "cgroup": self.cgroup.to_dict(),
        }

    def _write_state(self) -> None:
        try:
            bundle.write_json(os.path.join(self.bundle_dir, bundle.STATE), self._state())
        except OSError as exc:
            print(f"shim: cannot write state: {exc}", file=sys.stderr)


def _redirect_stdio(bundle_dir: str) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open(os.path.join(bundle_dir, bundle.SHIM_LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log, 2)
    for fd in (null, log):
        if fd > 2:
            os.close(fd)


def run(bundle_dir: str, report_fd: int) -> NoReturn:
    """Become the shim of ``bundle_dir``; ``report_fd`` is a SOCK_SEQPACKET socket on which the
    driver hears ``{"shim_pid": N}`` and then the outcome of the create. Never returns."""
    report = socket.socket(fileno=report_fd)
    try:
        _redirect_stdio(bundle_dir)
        from pyd_exec_native import linux

        keep = {report.fileno()}
        lo = 3
        for k in sorted(keep):
            if k > lo:
                linux.close_range(lo, k - 1)
            lo = k + 1
        linux.close_range(lo)
        os.chdir(bundle_dir)
        os.umask(0o022)
        report.send(json.dumps({"shim_pid": os.getpid()}).encode())
        shim = Shim(bundle_dir, report)
    except BaseException as exc:  # noqa: BLE001
        try:
            report.send(json.dumps({"ok": False, "error": f"shim: {exc}", "kind": "internal"}).encode())
        except Exception:  # noqa: BLE001
            pass
        os._exit(1)
    shim.run()


def main(argv: list[str]) -> None:
    """``python -m pyd_exec_native.shim BUNDLE REPORT_FD``: detach (fork, the parent exits at
    once so the caller can reap it) and run the shim in the child."""
    bundle_dir, report_fd = argv[1], int(argv[2])
    if os.fork() != 0:
        os._exit(0)
    try:
        os.setsid()
    except OSError:
        pass
    run(bundle_dir, report_fd)


if __name__ == "__main__":
    main(sys.argv)
