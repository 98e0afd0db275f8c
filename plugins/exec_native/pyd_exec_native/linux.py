"""Thin ctypes wrappers for the Linux calls Python 3.11's ``os`` lacks.

mount, umount2, pivot_root, unshare, setns, setdomainname, openat2, close_range, bpf and
loading a seccomp BPF program. Each raises ``OSError`` with the errno and the call's name.
Only the shim and the processes it forks use this module (never the daemon's threads).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from functools import cache

# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 0x2

# clone(2) namespace flags, keyed by the names used in ProcessSpec.namespaces
CLONE_FLAGS = {
    "mnt": 0x00020000,
    "cgroup": 0x02000000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "user": 0x10000000,
    "pid": 0x20000000,
    "net": 0x40000000,
}

# openat2(2) resolve flags
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

_SYSCALLS = {
    # name: (x86_64, aarch64); the newer calls share one number on every architecture
    "pivot_root": (155, 41),
    "bpf": (321, 280),
    "close_range": (436, 436),
    "openat2": (437, 437),
}

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CLOSE_RANGE_CLOEXEC = 1 << 2


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _nr(name: str) -> int:
    machine = platform.machine()
    idx = {"x86_64": 0, "aarch64": 1}.get(machine)
    if idx is None:
        raise OSError(errno.ENOSYS, f"{name}: unsupported architecture {machine}")
    return _SYSCALLS[name][idx]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _b(s: str | bytes | None) -> bytes | None:
    if s is None:
        return None
    return s.encode() if isinstance(s, str) else s


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(
        _libc().mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
        f"mount {source or fstype or ''} on {target}",
    )


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc().umount2(_b(target), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc().syscall(_nr("pivot_root"), _b(new_root), _b(put_old)), "pivot_root")


def unshare(flags: int) -> None:
    _check(_libc().unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc().setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc().setdomainname(raw, ctypes.c_size_t(len(raw))), "setdomainname")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2); raises OSError(ENOSYS) on kernels before 5.6."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    ret = _libc().syscall(
        _nr("openat2"), ctypes.c_int(dirfd), _b(path), ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))
    )
    return _check(ret, f"openat2 {path}")


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    _check(
        _libc().syscall(_nr("close_range"), ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags)),
        "close_range",
    )


def clear_ambient_caps() -> None:
    _check(_libc().prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(PR_CAP_AMBIENT)")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_seccomp_filter(bpf: bytes) -> None:
    """Install a classic BPF program (an array of 8-byte ``struct sock_filter``) with
    ``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)``. Needs no_new_privs or CAP_SYS_ADMIN."""
    if not bpf or len(bpf) % 8:
        raise ValueError(f"seccomp filter must be a non-empty multiple of 8 bytes, got {len(bpf)}")
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(_libc().prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "prctl(PR_SET_SECCOMP)")


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    return _check(
        _libc().syscall(_nr("bpf"), ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr))),
        f"bpf({cmd})",
    )
