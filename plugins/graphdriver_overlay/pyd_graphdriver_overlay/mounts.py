"""System calls the overlay2 driver needs, through libc (no shelling out to mount(8)).

``Syscalls`` is created by the driver (no libc handle at import time). Mount data longer than a
page cannot be passed to mount(2); moby then mounts with paths relative to its home from a
re-executed child. Here the mount runs in a short-lived thread that first unshares its
filesystem context (``unshare(CLONE_FS)``), so its ``chdir`` affects nobody else in the daemon.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from pathlib import Path

MS_RDONLY = 0x1
MNT_DETACH = 0x2
CLONE_FS = 0x200
DT_UNKNOWN = 0

# statfs f_type -> the name moby's /info shows as "Backing Filesystem".
FS_NAMES = {
    0xEF53: "extfs",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x794C7630: "overlayfs",
    0x2FC12FC1: "zfs",
    0x6969: "nfs",
    0x65735546: "fuse",
    0x73717368: "squashfs",
    0xF2F52010: "f2fs",
    0x858458F6: "ramfs",
    0x52654973: "reiserfs",
    0x5346544E: "ntfs",
    0x4D44: "msdos",
}


class _Dirent64(ctypes.Structure):
    _fields_ = [
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    ]


class Syscalls:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        libc.unshare.argtypes = [ctypes.c_int]
        libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        libc.opendir.restype = ctypes.c_void_p
        libc.opendir.argtypes = [ctypes.c_char_p]
        libc.readdir64.restype = ctypes.POINTER(_Dirent64)
        libc.readdir64.argtypes = [ctypes.c_void_p]
        libc.closedir.argtypes = [ctypes.c_void_p]
        self._libc = libc

    @staticmethod
    def _fail(what: str) -> OSError:
        err = ctypes.get_errno()
        return OSError(err, f"{what}: {os.strerror(err)}")

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str) -> None:
        rc = self._libc.mount(
            os.fsencode(source), os.fsencode(target), os.fsencode(fstype), flags, os.fsencode(data)
        )
        if rc != 0:
            raise self._fail(f"mount {fstype} on {target}")

    def mount_from(self, cwd: str, source: str, target: str, fstype: str, flags: int, data: str) -> None:
        """``mount`` with relative paths in ``data`` resolved against ``cwd``."""
        box: dict[str, BaseException] = {}

        def run() -> None:
            try:
                if self._libc.unshare(CLONE_FS) != 0:
                    raise self._fail("unshare(CLONE_FS)")
                os.chdir(cwd)
                self.mount(source, target, fstype, flags, data)
            except BaseException as exc:  # handed to the caller
                box["exc"] = exc

        t = threading.Thread(target=run, name="pyd-overlay-mount")
        t.start()
        t.join()
        if "exc" in box:
            raise box["exc"]

    def umount(self, target: str, flags: int = 0) -> None:
        if self._libc.umount2(os.fsencode(target), flags) != 0:
            raise self._fail(f"umount {target}")

    def fs_type(self, path: str) -> int:
        buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
        if self._libc.statfs(os.fsencode(path), buf) != 0:
            raise self._fail(f"statfs {path}")
        return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF

    def supports_d_type(self, directory: str) -> bool:
        """Whether readdir in ``directory`` reports file types (overlayfs needs it)."""
        probe = Path(directory, "d_type-probe")
        probe.write_bytes(b"")
        try:
            dirp = self._libc.opendir(os.fsencode(directory))
            if not dirp:
                raise self._fail(f"opendir {directory}")
            try:
                while True:
                    ent = self._libc.readdir64(dirp)
                    if not ent:
                        return False
                    if ent.contents.d_name == b"d_type-probe":
                        return ent.contents.d_type != DT_UNKNOWN
            finally:
                self._libc.closedir(dirp)
        finally:
            probe.unlink()


def is_mountpoint(path: str) -> bool:
    """True if ``path`` is on another device than its parent (cheaper than reading mountinfo)."""
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev
    except FileNotFoundError:
        return False
