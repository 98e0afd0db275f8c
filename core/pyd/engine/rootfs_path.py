"""Race-safe access to paths inside a container's root filesystem from the host.

Every host-side read or write into a container's rootfs (the ``--user`` lookup in
``/etc/passwd``, creating the working directory, ``cp``) must resolve the path *inside* the
rootfs: a symlink in the image such as ``/etc/passwd -> /../../host/etc/shadow`` must not lead
out of it, and a container that swaps a directory for a symlink while we resolve must not win
the race (the CVE-2018-15664 class). Linux's ``openat2(2)`` with ``RESOLVE_IN_ROOT`` does the
resolution in the kernel, treating the rootfs as ``/`` for every component and every symlink,
atomically. It exists since Linux 5.6; on older kernels we walk component by component with
``O_NOFOLLOW`` and resolve symlinks ourselves, relative to the rootfs.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections import deque

_SYS_OPENAT2 = 437  # same number on every architecture (new syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _openat2(dirfd: int, path: str, flags: int, mode: int) -> int:
    # openat2 refuses a mode without O_CREAT/O_TMPFILE (EINVAL), unlike openat
    # (O_TMPFILE includes the O_DIRECTORY bit, so test it as a whole)
    mode = mode if flags & os.O_CREAT or flags & os.O_TMPFILE == os.O_TMPFILE else 0
    how = _OpenHow(flags | os.O_CLOEXEC, mode, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    while True:
        fd = libc.syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err in (errno.EINTR, errno.EAGAIN):
            continue
        raise OSError(err, os.strerror(err), path)


def _walk_open(rootfd: int, path: str, flags: int, mode: int, depth: int = 0) -> int:
    """Fallback for kernels without openat2: resolve ``path`` one component at a time."""
    if depth > 40:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    stack: list[str] = []
    i = 0
    while i < len(parts):
        name = parts[i]
        if name == "..":
            if stack:
                stack.pop()
            i += 1
            continue
        cur = os.open("/".join(stack) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=rootfd)
        try:
            try:
                st = os.stat(name, dir_fd=cur, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=cur)
                base = [] if target.startswith("/") else list(stack)
                rest = "/".join(base + [target] + parts[i + 1 :])
                return _walk_open(rootfd, rest, flags, mode, depth + 1)
            if i == len(parts) - 1:
                return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=cur)
        finally:
            os.close(cur)
        stack.append(name)
        i += 1
    return os.open("/".join(stack) or ".", flags | os.O_CLOEXEC, mode, dir_fd=rootfd)


def open_in_root(root: str, path: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """Open ``path`` as seen from inside ``root`` and return the fd; never escapes ``root``."""
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            return _openat2(rootfd, path.lstrip("/") or ".", flags, mode)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
        return _walk_open(rootfd, path, flags, mode)
    finally:
        os.close(rootfd)


def read_in_root(root: str, path: str, limit: int = 4 << 20) -> bytes | None:
    """The content of the regular file ``path`` inside ``root``, or None if it does not exist."""
    try:
        fd = open_in_root(root, path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(limit)


def mkdir_all_in_root(root: str, path: str, uid: int = 0, gid: int = 0, mode: int = 0o755) -> None:
    """``mkdir -p`` of ``path`` inside ``root``; new directories get ``uid:gid``.

    Symlinks on the way are followed as the container would see them (``/work -> /srv``
    creates ``/srv/...`` in the rootfs), each step relative to a parent opened with in-root
    resolution, so a link planted by the container cannot redirect a creation to the host.
    """
    parts = deque(p for p in path.split("/") if p not in ("", "."))
    done: list[str] = []  # resolved components so far (no links among them)
    hops = 0
    while parts:
        name = parts.popleft()
        if name == "..":
            if done:
                done.pop()
            continue
        pfd = open_in_root(root, "/" + "/".join(done), os.O_PATH | os.O_DIRECTORY)
        try:
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                os.mkdir(name, mode, dir_fd=pfd)
                os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
                done.append(name)
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > 40:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                target = os.readlink(name, dir_fd=pfd)
                if target.startswith("/"):
                    done = []
                parts.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            done.append(name)
        finally:
            os.close(pfd)
