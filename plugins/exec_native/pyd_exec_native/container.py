"""The processes the shim forks, from fork to ``execve``: the container's init and exec processes.

The shim enters the container's new pid namespace itself (``unshare(CLONE_NEWPID)`` only
changes where its *children* go), so both are forked straight into it:

* init (``run_init``, pid 1) joins the cgroup the shim made (on v2 the shim moves it while it
  works), creates the other namespaces, builds the filesystem and pivots into it (``rootfs``), sets the
  hostname, closes every fd the container must not see, ``chdir``\ s into the working directory
  (only now, inside the new root), drops privileges, loads the seccomp filter, says "ready"
  and waits for the shim's "go" (``start``) before it looks up the program and execs it;
* an exec process (``run_exec``) joins the container's cgroup and namespaces and then does what
  init does after its pivot. It is a host Python binary, so it is non-dumpable from birth: root
  in the container cannot open it through ``/proc/PID/exe`` and overwrite it (CVE-2019-5736).

Nothing is imported once a process stands in the container's filesystem: ``_seal_imports``
empties ``sys.path``, so a module the container planted can never be loaded by these
privileged processes. Errors go to the shim as ``{"error": ..., "kind": ..., "code": ...}`` on
the control socket (``SOCK_SEQPACKET``), whose end is close-on-exec: EOF after "go" means the
exec succeeded.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import resource
import signal
import socket
import stat
import struct
import sys
import termios
from typing import TYPE_CHECKING, Any, NoReturn

import prctl

from pyd_exec_native import capabilities, linux, rlimits, rootfs
from pyd_exec_native.rootfs import SetupError

from pyd.types import User

if TYPE_CHECKING:
    from pyd.types import ProcessSpec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NS_ORDER = ("ipc", "uts", "net", "pid", "cgroup", "mnt")  # mnt last: it changes our root

class ExecError(Exception):
    """The program cannot be run: ``code`` is 127 (not found) or 126 (cannot invoke)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- messages to the shim ----------------------------------------------------------------------


def send(ctl: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(msg).encode()
    if fds:
        socket.send_fds(ctl, [data], fds)
    else:
        ctl.send(data)


def _report(ctl: socket.socket, exc: BaseException) -> int:
    """Tell the shim why this process gives up; returns the exit code to use."""
    if isinstance(exc, ExecError):
        msg: dict[str, Any] = {"error": str(exc), "kind": "invalid", "code": exc.code}
    elif isinstance(exc, SetupError):
        msg = {"error": str(exc), "kind": "invalid"}
    elif isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        msg = {"error": f"{text}: {exc.filename}" if exc.filename else text, "kind": "internal"}
    else:
        # no traceback: formatting one would read source files through the container's root
        msg = {"error": f"{type(exc).__name__}: {exc}", "kind": "internal"}
    try:
        send(ctl, msg)
    except OSError:
        pass
    return int(msg.get("code", 1))


def _write_file(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _wait_go(ctl: socket.socket) -> None:
    if ctl.recv(16) != b"go":
        os._exit(1)  # the shim went away or aborted the start


# -- pieces shared by init and exec --------------------------------------------------------------


def reset_signals() -> None:
    """Default dispositions and an empty mask: handlers and ignores of the shim (Python ignores
    SIGPIPE and SIGXFSZ) must not leak into the container's program."""
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _seal_imports() -> None:
    sys.path.clear()
    sys.path_hooks.clear()
    sys.path_importer_cache.clear()


def _close_fds(keep: set[int]) -> None:
    """Close every fd above 2 but ``keep`` (so nothing of the host reaches the container)."""
    lo = 3
    try:
        for k in sorted(k for k in keep if k >= 3):
            if k > lo:
                linux.close_range(lo, k - 1)
            lo = k + 1
        linux.close_range(lo)
        return
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _setup_stdio(stdio: list[int] | None) -> None:
    if stdio is None:
        return
    for target, fd in enumerate(stdio):
        if fd != target:
            os.dup2(fd, target, inheritable=True)
    for fd in set(stdio):
        if fd > 2:
            os.close(fd)


def _take_tty(slave: int) -> None:
    for target in (0, 1, 2):
        os.dup2(slave, target, inheritable=True)
    if slave > 2:
        os.close(slave)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _chdir(cwd: str, create: bool) -> None:
    if not cwd.startswith("/"):
        raise SetupError(f'working directory "{cwd}" must be an absolute path')
    if create:
        try:
            os.makedirs(cwd, 0o755, exist_ok=True)
        except OSError as exc:
            raise SetupError(f'cannot create working directory "{cwd}": {exc.strerror}') from None
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise SetupError(f'cannot enter working directory "{cwd}": {exc.strerror}') from None
    here = os.getcwd()
    # A path through a host fd (/proc/self/fd/N) would land outside the root (CVE-2024-21626).
    if not here.startswith("/") or here.startswith("(unreachable)"):
        raise SetupError(f'working directory "{cwd}" is outside the container')


def drop_privileges(caps: list[int], user: User, no_new_privs: bool, seccomp: bytes | None) -> None:
    """Capabilities to exactly ``caps`` (bounding, permitted, effective; inheritable and ambient
    empty, as Docker does), then user and groups, no_new_privs, and the seccomp filter."""
    keep = set(caps)
    last = capabilities.last_cap()
    if seccomp and not no_new_privs:
        # Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: do it while we have it.
        linux.load_seccomp_filter(seccomp)
    for cap in range(last + 1):
        if cap not in keep:
            prctl.capbset_drop(cap)
    linux.clear_ambient_caps()
    prctl.set_keepcaps(True)
    os.setgroups(list(user.additional_gids))
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    prctl.set_keepcaps(False)
    drop = [c for c in range(last + 1) if c not in keep]
    want = sorted(keep)
    prctl.set_caps(
        (want, prctl.CAP_PERMITTED, True),
        (want, prctl.CAP_EFFECTIVE, True),
        (drop, prctl.CAP_EFFECTIVE, False),
        (drop, prctl.CAP_PERMITTED, False),
        (list(range(last + 1)), prctl.CAP_INHERITABLE, False),
    )
    if no_new_privs:
        prctl.set_no_new_privs(True)
        if seccomp:
            linux.load_seccomp_filter(seccomp)


def find_program(name: str, env: dict[str, str]) -> str:
    if not name:
        raise ExecError(127, 'exec: "": executable file not found in $PATH')
    explicit = "/" in name
    candidates = [name] if explicit else [os.path.join(d or ".", name) for d in env.get("PATH", DEFAULT_PATH).split(":")]
    denied = False
    for cand in candidates:
        try:
            st = os.stat(cand)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if explicit:
                raise ExecError(126, f'exec: "{name}": is a directory')
            continue
        if os.access(cand, os.X_OK):
            return cand
        denied = True
    if denied:
        raise ExecError(126, f'exec: "{name}": permission denied')
    if explicit:
        raise ExecError(127, f'exec: "{name}": stat {name}: no such file or directory')
    raise ExecError(127, f'exec: "{name}": executable file not found in $PATH')


def exec_program(args: list[str], env_list: list[str]) -> NoReturn:
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env_list)
    path = find_program(args[0] if args else "", env)
    try:
        os.execve(path, args, env)
    except OSError as exc:
        code = 127 if exc.errno == errno.ENOENT else 126
        raise ExecError(code, f'exec: "{args[0]}": {exc.strerror.lower() if exc.strerror else exc}') from None


# -- init ----------------------------------------------------------------------------------------


def _expect(ctl: socket.socket, word: bytes) -> None:
    if ctl.recv(16) != word:
        os._exit(1)  # the shim went away or aborted the create


def run_init(
    cfg: dict[str, Any], spec: ProcessSpec, ctl: socket.socket, stdio: list[int] | None, join_files: list[str]
) -> NoReturn:
    """The container's init, forked by the shim into the container's pid namespace (pid 1);
    never returns. ``stdio`` is (stdin, stdout, stderr), or None for a tty.

    With ``join_files`` (cgroup v1: the cgroup's ``tasks`` files) init moves itself into the
    cgroup first thing, which takes no global lock. Without (v2), the shim moves it while it
    builds the filesystem (the migration waits for an RCU grace period, ~10 ms); "joined" on
    the control socket says it is done, and is awaited before the cgroup namespace is made.
    """
    code = 1
    try:
        for path in join_files:
            _write_file(path, "0")  # "0": the writer itself, whatever pid namespace it sees
        reset_signals()
        prctl.set_dumpable(False)  # inherited from the shim already; never rely on it
        os.setsid()
        _setup_stdio(stdio)
        joins = {n: os.open(p, os.O_RDONLY | os.O_CLOEXEC) for n, p in spec.namespaces.items() if p and n != "pid"}
        for name in NS_ORDER:
            if name in joins:
                linux.setns(joins.pop(name), linux.CLONE_FLAGS[name])
        new = {n for n, p in spec.namespaces.items() if p is None and n != "pid"}
        flags = 0
        for name in new - {"cgroup"}:
            flags |= linux.CLONE_FLAGS[name]
        linux.unshare(flags)
        if spec.oom_score_adj:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(spec.oom_score_adj))
        for name, (soft, hard) in spec.rlimits.items():
            resource.setrlimit(rlimits.number(name), (soft, hard))

        def joined() -> None:
            if not join_files:
                _expect(ctl, b"joined")
            if "cgroup" in new:  # its root is the cgroup we are in now: the container's
                linux.unshare(linux.CLONE_FLAGS["cgroup"])

        console = rootfs.setup(cfg, spec, tty=stdio is None, before_cgroupfs=joined)
        _seal_imports()
        master = -1
        if console is not None:
            master, slave = console
            _take_tty(slave)
        if spec.hostname:
            socket.sethostname(spec.hostname)
        if spec.domainname:
            linux.setdomainname(spec.domainname)
        _close_fds({ctl.fileno(), master})
        os.umask(0o022)
        _chdir(spec.cwd or "/", create=True)
        drop_privileges(cfg["capabilities"], spec.user, spec.no_new_privileges, spec.seccomp_filter)
        send(ctl, {"ready": True}, [master] if master >= 0 else None)
        if master >= 0:
            os.close(master)
        _wait_go(ctl)
        exec_program(spec.args, spec.env)
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the shim
        code = _report(ctl, exc)
    os._exit(code)


# -- exec ----------------------------------------------------------------------------------------


def _container_namespaces(init_pid: int) -> list[tuple[str, int]]:
    """fds of the init's namespaces that differ from ours, in joining order (not pid: the
    shim's children are born in the container's pid namespace already)."""
    out = []
    try:
        for name in NS_ORDER:
            if name == "pid":
                continue
            theirs = f"/proc/{init_pid}/ns/{name}"
            if os.stat(theirs).st_ino != os.stat(f"/proc/self/ns/{name}").st_ino:
                out.append((name, os.open(theirs, os.O_RDONLY | os.O_CLOEXEC)))
    except FileNotFoundError:
        raise SetupError("the container is not running") from None
    return out


def run_exec(
    cfg: dict[str, Any],
    spec: ProcessSpec,
    req: dict[str, Any],
    init_pid: int,
    cgroup_procs: list[str],
    ctl: socket.socket,
    stdio: list[int] | None,
) -> NoReturn:
    """An exec process, forked by the shim; never returns.

    It is a copy of a host Python binary: non-dumpable from birth (the shim is, and fork
    keeps it), so root in the container cannot open ``/proc/PID/exe`` of it (CVE-2019-5736).
    It joins the cgroup ("0": the writer itself, whatever pid namespace it sees) and the
    namespaces, then does what init does after its pivot.
    """
    code = 1
    try:
        reset_signals()
        prctl.set_dumpable(False)
        namespaces = _container_namespaces(init_pid)
        for path in cgroup_procs:
            _write_file(path, "0")
        for name, fd in namespaces:
            linux.setns(fd, linux.CLONE_FLAGS[name])
            os.close(fd)
        _seal_imports()
        os.setsid()
        master = -1
        if stdio is None:
            master, slave = _open_pty_in_container()
            _take_tty(slave)
        else:
            _setup_stdio(stdio)
        _close_fds({ctl.fileno(), master})
        os.umask(0o022)
        _chdir(req.get("cwd") or spec.cwd or "/", create=False)
        user = User(**req["user"]) if req.get("user") else spec.user
        caps = cfg["privileged_capabilities"] if req.get("privileged") else cfg["capabilities"]
        drop_privileges(caps, user, spec.no_new_privileges, spec.seccomp_filter)
        send(ctl, {"ready": True}, [master] if master >= 0 else None)
        if master >= 0:
            os.close(master)
        _wait_go(ctl)
        exec_program(req["args"], req.get("env") or [])
    except BaseException as exc:  # noqa: BLE001
        code = _report(ctl, exc)
    os._exit(code)


def _open_pty_in_container() -> tuple[int, int]:
    fd = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(5, 2):
        os.close(fd)
        raise SetupError("/dev/ptmx in the container is not the pty multiplexer")
    os.set_blocking(fd, True)
    fcntl.ioctl(fd, rootfs.TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(fd, rootfs.TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    return fd, slave
