"""Sandboxes: one network namespace per container, bind-mounted on a file.

``create_netns(path)`` makes a new network namespace in a short-lived helper thread (the
thread ``unshare(CLONE_NEWNET)``s, brings ``lo`` up and bind-mounts
``/proc/thread-self/ns/net`` on ``path``), so the daemon never forks and its own threads
never change namespace. The bind mount keeps the namespace alive after the thread ends;
drivers and the exec driver reach it through the path (``JoinRequest.netns_path``,
``ProcessSpec.namespaces["net"]``). ``remove_netns`` unmounts (lazily: a process still inside
keeps the namespace until it exits) and deletes the file.

All functions block (a thread join, a few syscalls); call them from a worker thread.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2
NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: its CLONE_NEW* type
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def link_up(name: str = "lo") -> None:
    """Set ``name`` up in the calling thread's network namespace (ioctl, no netlink)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH22x", name.encode(), 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifreq))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | IFF_UP))


def is_netns(path: str) -> bool:
    """True if ``path`` is (a bind mount of) a network namespace."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def create_netns(path: str) -> None:
    """Make a new network namespace with ``lo`` up and bind-mount it on ``path``.

    Idempotent: an existing namespace at ``path`` is kept. A failure leaves no file or mount.
    """
    if is_netns(path):
        return
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444)
    os.close(fd)
    box: dict[str, BaseException] = {}

    def run() -> None:
        # This thread only: unshare(CLONE_NEWNET) moves the calling thread, not the process.
        # The thread ends right after, so nothing else ever runs in the new namespace.
        try:
            libc = _libc()
            _check(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            link_up("lo")
            _check(
                libc.mount(b"/proc/thread-self/ns/net", os.fsencode(path), None, MS_BIND, None),
                f"bind-mount of the new network namespace on {path}",
            )
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="pyd-netns-create", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise box["error"]


def remove_netns(path: str) -> None:
    """Unmount and delete the namespace file at ``path``; missing is not an error."""
    libc = _libc()
    # A file may carry several stacked mounts after a crash and retry: unmount them all.
    for _ in range(8):
        if libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more) / gone
                break
            raise OSError(err, f"umount {path}: {os.strerror(err)}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
