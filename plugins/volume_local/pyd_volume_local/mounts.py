"""The system side of the local driver: mount(2)/umount2(2) through libc, and reading
/proc/self/mountinfo and /proc/filesystems. No shelling out to mount(8).

``Syscalls`` is made by the driver (no libc handle at import time).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from pyd.drivers.mounts import mount_points

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MNT_DETACH = 0x2


class Syscalls:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        self._libc = libc

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str = "") -> None:
        rc = self._libc.mount(
            os.fsencode(source) if source else None,
            os.fsencode(target),
            os.fsencode(fstype) if fstype else None,
            flags,
            os.fsencode(data) if data else None,
        )
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def umount(self, target: str, flags: int = MNT_DETACH) -> None:
        if self._libc.umount2(os.fsencode(target), flags) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


def is_mounted(path: str) -> bool:
    return path.rstrip("/") in mount_points()


def kernel_filesystems() -> dict[str, bool]:
    """Filesystem types the running kernel knows: ``{type: needs_a_device}``."""
    out: dict[str, bool] = {}
    with open("/proc/filesystems", encoding="ascii") as f:
        for line in f:
            flag, _, fstype = line.rstrip("\n").rpartition("\t")
            out[fstype] = flag != "nodev"
    return out


def kernel_may_load(fstype: str) -> bool:
    """Whether a filesystem missing from /proc/filesystems may still appear on first mount
    (the kernel loads fs modules on demand). Without module support it cannot; when the
    module lists cannot be read, assume it can (refusing a working type is worse)."""
    if not os.path.exists("/proc/modules"):
        return False
    base = f"/lib/modules/{os.uname().release}"
    found_lists = False
    for listing in ("modules.dep", "modules.builtin"):
        try:
            with open(os.path.join(base, listing), encoding="utf-8", errors="replace") as f:
                found_lists = True
                for line in f:
                    path = line.split(":", 1)[0]
                    if "/fs/" in path and os.path.basename(path).split(".ko")[0] == fstype:
                        return True
        except OSError:
            continue
    return not found_lists
