"""Named network namespaces (a namespace bind-mounted on a file), made without forking.

``unshare(CLONE_NEWNET)`` runs in a short-lived helper thread: namespaces are per thread for
this purpose, so the daemon's own threads stay where they are and no child process is
needed (forking a multi-threaded daemon is unsafe).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from pathlib import Path

_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MNT_DETACH = 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    out, i = [], 0
    while i < len(field):
        octal = field[i + 1 : i + 4]
        if field[i] == "\\" and len(octal) == 3 and octal.isdigit():
            out.append(chr(int(octal, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point (our netns files are nothing else)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split(" ", 5)
            if len(parts) > 4 and _unescape(parts[4]) == target:
                return True
    return False


def create(path: Path) -> bool:
    """Make a new network namespace and bind-mount it on ``path``; False if one is there."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() and is_mounted(path):
        return False
    path.touch(mode=0o444)
    err: list[BaseException] = []

    def run() -> None:
        libc = _libc()
        try:
            if libc.unshare(_CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"unshare(CLONE_NEWNET): {os.strerror(e)}")
            src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            if libc.mount(src, os.fsencode(path), None, _MS_BIND, None) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"bind-mounting a network namespace on {path}: {os.strerror(e)}")
        except BaseException as exc:
            err.append(exc)
        # The thread ends here; its new namespace lives on through the bind mount.

    t = threading.Thread(target=run, name=f"netns-create:{path.name}", daemon=True)
    t.start()
    t.join()
    if err:
        try:
            path.unlink()
        except OSError:
            pass
        raise err[0]
    return True


def remove(path: Path) -> None:
    """Unmount and delete ``path``. The kernel frees the namespace (and every interface in
    it) once nothing else holds it. Missing: no-op."""
    libc = _libc()
    for _ in range(8):  # stacked mounts from retried creates
        if not (path.exists() and is_mounted(path)):
            break
        if libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
            e = ctypes.get_errno()
            if e in (errno.EINVAL, errno.ENOENT):
                break
            raise OSError(e, f"unmounting network namespace {path}: {os.strerror(e)}")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
