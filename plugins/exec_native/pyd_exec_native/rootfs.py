"""Building the container's filesystem view, inside its new mount namespace, before exec.

Runs in the container's init process (pid 1 of its pid namespace) while it is still a copy of
the shim: mounts /proc, /sys, /dev (tmpfs with the standard nodes), /dev/pts, /dev/shm,
/dev/mqueue, the spec's mounts, masked and read-only paths, then ``pivot_root``.

Every mount target is a path *inside* the rootfs, which the image (or a container sharing a
volume) controls. Targets are therefore resolved as if the rootfs were ``/`` (symlinks cannot
lead out of it), created there, opened with ``openat2(RESOLVE_IN_ROOT)`` and mounted on through
``/proc/self/fd/N``, so what is mounted on is exactly the inode that was checked (the
CVE-2018-15664 class of races).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from pyd_exec_native import linux
from pyd_exec_native.linux import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_STRICTATIME,
)

# mount(8) option words -> (flags to set, flags to clear)
_FLAG_WORDS: dict[str, tuple[int, int]] = {
    "ro": (MS_RDONLY, 0),
    "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0),
    "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0),
    "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0),
    "exec": (0, MS_NOEXEC),
    "sync": (linux.MS_SYNCHRONOUS, 0),
    "async": (0, linux.MS_SYNCHRONOUS),
    "dirsync": (linux.MS_DIRSYNC, 0),
    "noatime": (linux.MS_NOATIME, 0),
    "atime": (0, linux.MS_NOATIME),
    "nodiratime": (linux.MS_NODIRATIME, 0),
    "diratime": (0, linux.MS_NODIRATIME),
    "relatime": (linux.MS_RELATIME, 0),
    "norelatime": (0, linux.MS_RELATIME),
    "strictatime": (MS_STRICTATIME, 0),
    "bind": (MS_BIND, 0),
    "rbind": (MS_BIND | MS_REC, 0),
}
_PROPAGATION: dict[str, int] = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": linux.MS_SHARED,
    "rshared": linux.MS_SHARED | MS_REC,
    "slave": linux.MS_SLAVE,
    "rslave": linux.MS_SLAVE | MS_REC,
    "unbindable": linux.MS_UNBINDABLE,
    "runbindable": linux.MS_UNBINDABLE | MS_REC,
}
# statvfs f_flag bits -> mount flags, to keep them on a read-only remount
_ST_TO_MS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC))

DEV_NODES: tuple[tuple[str, int, int], ...] = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
DEV_LINKS: tuple[tuple[str, str], ...] = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)

if TYPE_CHECKING:
    from pyd.types import DeviceSpec, MountSpec, ProcessSpec

TIOCSPTLCK = 0x40045431
TIOCGPTN = 0x80045430
TIOCGPTPEER = 0x5441


class SetupError(Exception):
    """A problem with the container's configuration (reported to the user as 400)."""


def parse_options(options: list[str]) -> tuple[int, int, str]:
    """mount(8) words -> (flags, propagation flags, data string for the filesystem)."""
    flags, prop, data = 0, 0, []
    for opt in options:
        if opt in _FLAG_WORDS:
            on, off = _FLAG_WORDS[opt]
            flags = (flags | on) & ~off
        elif opt in _PROPAGATION:
            prop = _PROPAGATION[opt]
        elif opt:
            data.append(opt)
    return flags, prop, ",".join(data)


# -- path resolution inside the rootfs ---------------------------------------------------------


def _components(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def resolve_in_root(root: str, path: str) -> str:
    """Host path of ``path`` as seen with ``root`` as ``/``: symlinks (absolute or relative)
    and ``..`` are followed but never above ``root``. Missing parts are kept as they are."""
    parts = _components(path)
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        host = os.path.join(root, *done, part)
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 40:
                raise SetupError(f"too many levels of symbolic links in {path}")
            target = os.readlink(host)
            if target.startswith("/"):
                done = []
            parts = _components(target) + parts
            continue
        done.append(part)
    return os.path.join(root, *done)


def open_in_root(rootfd: int, root: str, path: str, flags: int = os.O_PATH) -> int:
    """Open ``path`` inside the rootfs, never leaving it (``openat2`` with RESOLVE_IN_ROOT;
    on older kernels a no-follow open of the resolved path, checked afterwards)."""
    rel = os.path.relpath(resolve_in_root(root, path), root)
    try:
        return linux.openat2(rootfd, rel, flags, linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS)
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
    fd = os.open(os.path.join(root, rel), flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    real = os.readlink(f"/proc/self/fd/{fd}")
    if real != root and not real.startswith(root.rstrip("/") + "/"):
        os.close(fd)
        raise SetupError(f"{path} resolves outside the container's root filesystem")
    return fd


def make_target(rootfd: int, root: str, path: str, is_dir: bool = True, mode: int = 0o755) -> int:
    """Create ``path`` (a directory, or an empty file for ``is_dir=False``) inside the rootfs
    if it is missing and return an ``O_PATH`` fd of it."""
    host = resolve_in_root(root, path)
    parent = os.path.dirname(host) if not is_dir else host
    os.makedirs(parent, mode=0o755, exist_ok=True)
    if not is_dir and not os.path.lexists(host):
        try:
            os.close(os.open(host, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
        except FileExistsError:
            pass
    return open_in_root(rootfd, root, path)


def _fdpath(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def mount_at(
    rootfd: int,
    root: str,
    dest: str,
    source: str | None,
    fstype: str | None,
    flags: int = 0,
    data: str = "",
    is_dir: bool = True,
) -> None:
    fd = make_target(rootfd, root, dest, is_dir=is_dir)
    try:
        linux.mount(source, _fdpath(fd), fstype, flags, data or None)
    finally:
        os.close(fd)
    if flags & MS_BIND and flags & MS_RDONLY:
        # A bind mount ignores MS_RDONLY until it is remounted; reopen the path to reach the
        # new mount (the fd above still points at what lies under it).
        fd = open_in_root(rootfd, root, dest)
        try:
            remount_readonly(_fdpath(fd), flags)
        finally:
            os.close(fd)


def remount_readonly(target: str, extra: int = 0) -> None:
    keep = 0
    try:
        st = os.statvfs(target)
        keep = sum(ms for stf, ms in _ST_TO_MS if st.f_flag & stf)
    except OSError:
        pass
    linux.mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | keep | (extra & (MS_NOSUID | MS_NODEV | MS_NOEXEC)))


# -- the container's filesystem ----------------------------------------------------------------


def _sorted_mounts(mounts: Iterable[MountSpec]) -> Iterator[MountSpec]:
    # parents before children, as Docker sorts by the number of path components
    return iter(sorted(mounts, key=lambda m: len(_components(m.destination))))


def setup(
    cfg: dict[str, Any], s: ProcessSpec, tty: bool, before_cgroupfs: Callable[[], None] = lambda: None
) -> tuple[int, int] | None:
    """Build the filesystem and pivot into it. Returns (pty master, pty slave) when ``tty``.

    ``before_cgroupfs`` runs after everything else is mounted, just before /sys/fs/cgroup
    (which must show the container's own cgroup, so the process must be in it by then).

    ``cfg`` is the bundle config (for the cgroup layout to show under /sys/fs/cgroup).
    """
    root = os.path.realpath(s.rootfs)
    privileged: bool = s.privileged
    namespaces = s.namespaces
    if not os.path.isdir(root):
        raise SetupError(f"root filesystem {s.rootfs} is not a directory")
    # rprivate by default; rslave when a bind asks for shared/slave propagation (host mounts
    # then reach it). Never shared: the container's own mounts must not reach the host.
    root_prop = s.rootfs_propagation or "rprivate"
    if root_prop not in ("private", "rprivate", "slave", "rslave"):
        raise SetupError(f'rootfs propagation "{root_prop}" is not supported; use rprivate or rslave')
    linux.mount(None, "/", None, MS_REC | _PROPAGATION[root_prop])
    # pivot_root needs the new root to be a mount point
    linux.mount(root, root, None, MS_BIND | MS_REC)
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        mount_at(rootfd, root, "/proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        mount_at(rootfd, root, "/dev", "tmpfs", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k")
        # the image may make /dev or /proc a symlink: use where the mounts really went
        _populate_dev(resolve_in_root(root, "/dev"), s.devices)
        mount_at(
            rootfd, root, "/dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        )  # fmt: skip
        mount_at(rootfd, root, "/dev/shm", "shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
        if "ipc" in namespaces and namespaces["ipc"] is None:
            mount_at(rootfd, root, "/dev/mqueue", "mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        sys_flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | (0 if privileged else MS_RDONLY)
        if "net" in namespaces:
            mount_at(rootfd, root, "/sys", "sysfs", "sysfs", sys_flags)
        else:  # sysfs of the host's network namespace: bind it (as runc does)
            mount_at(rootfd, root, "/sys", "/sys", None, MS_BIND | MS_REC | (sys_flags & MS_RDONLY))
        for m in _sorted_mounts(s.mounts):
            _user_mount(rootfd, root, m)
        console = None
        if tty:
            console = _open_console(rootfd, root)
        proc = resolve_in_root(root, "/proc")
        for key, value in s.sysctls.items():
            _write_sysctl(proc, key, value)
        for path in s.masked_paths:
            _mask(rootfd, root, path)
        for path in s.readonly_paths:
            _readonly(rootfd, root, path)
        before_cgroupfs()
        if namespaces.get("cgroup", "host") is None:
            _mount_cgroupfs(rootfd, root, cfg, privileged)
        os.fchdir(rootfd)
    finally:
        os.close(rootfd)
    # pivot_root(".", ".") stacks the old root under the new one; unmount it lazily.
    linux.pivot_root(".", ".")
    linux.umount2(".", linux.MNT_DETACH)
    os.chdir("/")
    if s.readonly_rootfs:
        remount_readonly("/")
    return console


def _populate_dev(dev: str, extra: list[DeviceSpec]) -> None:
    """Fill ``dev`` (the host path of the container's fresh /dev tmpfs: nothing in it yet
    that the image controls)."""
    old = os.umask(0)
    try:
        for name, major, minor in DEV_NODES:
            os.mknod(os.path.join(dev, name), 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        for name, target in DEV_LINKS:
            os.symlink(target, os.path.join(dev, name))
        os.mkdir(os.path.join(dev, "pts"), 0o755)
        os.mkdir(os.path.join(dev, "shm"), 0o1777)
        os.mkdir(os.path.join(dev, "mqueue"), 0o755)
        for d in extra:
            rel = os.path.normpath("/" + d.path).lstrip("/")
            if not rel.startswith("dev/"):
                raise SetupError(f"device {d.path} must be under /dev")
            host = os.path.join(dev, rel[4:])
            os.makedirs(os.path.dirname(host), 0o755, exist_ok=True)
            kind = stat.S_IFBLK if d.type == "b" else stat.S_IFCHR
            os.mknod(host, (d.mode & 0o7777) | kind, os.makedev(d.major, d.minor))
            os.chown(host, d.uid, d.gid, follow_symlinks=False)
    finally:
        os.umask(old)


def _mount_cgroupfs(rootfd: int, root: str, cfg: dict[str, Any], privileged: bool) -> None:
    """/sys/fs/cgroup: with a cgroup namespace the container sees its own cgroup as the root."""
    layout = cfg.get("cgroup_layout") or {}
    if not os.path.isdir(resolve_in_root(root, "/sys/fs/cgroup")):
        return
    ro = 0 if privileged else MS_RDONLY
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if layout.get("version") == 2:
        mount_at(rootfd, root, "/sys/fs/cgroup", "cgroup2", "cgroup2", flags | ro)
        return
    mount_at(rootfd, root, "/sys/fs/cgroup", "tmpfs", "tmpfs", flags, "mode=755")
    seen: dict[str, list[str]] = {}
    for controller, mnt in (layout.get("mounts") or {}).items():
        seen.setdefault(mnt, []).append(controller)
    for mnt, controllers in sorted(seen.items()):
        name = os.path.basename(mnt)
        mount_at(rootfd, root, f"/sys/fs/cgroup/{name}", "cgroup", "cgroup", flags | ro, ",".join(sorted(controllers)))
    fd = open_in_root(rootfd, root, "/sys/fs/cgroup")
    try:
        if not privileged:
            remount_readonly(_fdpath(fd), flags)
    finally:
        os.close(fd)


def _user_mount(rootfd: int, root: str, m: MountSpec) -> None:
    dest: str = m.destination
    if not dest.startswith("/"):
        raise SetupError(f'mount destination "{dest}" must be an absolute path')
    flags, prop, data = parse_options(list(m.options))
    mtype: str = m.type or "bind"
    source: str = m.source
    if mtype == "bind" or flags & MS_BIND:
        if not os.path.exists(source):
            raise SetupError(f'bind source path does not exist: "{source}" (for mount on {dest})')
        flags |= MS_BIND
        if "bind" not in m.options:
            flags |= MS_REC  # Docker binds recursively unless told otherwise
        mount_at(rootfd, root, dest, source, None, flags, "", is_dir=os.path.isdir(source))
    else:
        mount_at(rootfd, root, dest, source or mtype, mtype, flags, data)
    if prop:
        fd = open_in_root(rootfd, root, dest)
        try:
            linux.mount(None, _fdpath(fd), None, prop)
        finally:
            os.close(fd)


def _open_console(rootfd: int, root: str) -> tuple[int, int]:
    """A pty from the container's own devpts; its slave is also bind-mounted on /dev/console."""
    master = os.open(os.path.join(resolve_in_root(root, "/dev/pts"), "ptmx"), os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    mount_at(rootfd, root, "/dev/console", _fdpath(slave), None, MS_BIND, is_dir=False)
    return master, slave


def _write_sysctl(proc: str, key: str, value: str) -> None:
    rel = key.replace(".", "/")
    if not key or ".." in key.split(".") or rel.startswith("/"):
        raise SetupError(f'invalid sysctl "{key}"')
    try:
        with open(os.path.join(proc, "sys", rel), "w") as f:
            f.write(value)
    except OSError as exc:
        raise SetupError(f'cannot set sysctl {key}={value}: {exc.strerror}') from None


def _mask(rootfd: int, root: str, path: str) -> None:
    try:
        fd = open_in_root(rootfd, root, path)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        target = _fdpath(fd)
        if os.path.isdir(target):
            linux.mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        else:
            linux.mount("/dev/null", target, None, MS_BIND)
    finally:
        os.close(fd)


def _readonly(rootfd: int, root: str, path: str) -> None:
    try:
        fd = open_in_root(rootfd, root, path)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        target = _fdpath(fd)
        linux.mount(target, target, None, MS_BIND | MS_REC)
    finally:
        os.close(fd)
    # reopen: the fd still points at the inode under the new bind mount's mount point
    fd = open_in_root(rootfd, root, path)
    try:
        remount_readonly(_fdpath(fd))
    finally:
        os.close(fd)
