"""The fork server: a single-threaded helper that forks shims with everything already imported.

A fresh interpreter per container would pay Python's start-up and the shim's imports (about
40 ms here) on every ``create``; the daemon itself must never fork (it is multi-threaded).
So each driver instance starts this helper once (``python -I -m pyd_exec_native.forkserver``),
with a ``SOCK_SEQPACKET`` socket as its stdin. Each message on it is a bundle directory path
with one fd attached (the driver's report socket for that container); the helper forks and the child starts a
new session and becomes the shim (``shim.run``). The helper ignores SIGCHLD, so the kernel
reaps shims that end while it lives; when it exits they are reparented to init (or a
subreaper). Either way they survive both this helper and the daemon. EOF on stdin (the driver closed it, or the daemon
died) ends the helper; running shims are unaffected.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys

# Import everything a shim and its children need now, once, instead of in every shim.
import prctl  # noqa: F401
import pyd.drivers.execdriver  # noqa: F401 - the log format the shim writes
from pyd_exec_native import cgroups, container, devices, linux, rootfs, shim  # noqa: F401


def serve(ctl: socket.socket) -> None:
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(ctl, 4096, 1, socket.MSG_CMSG_CLOEXEC)
        except InterruptedError:
            continue
        if not msg:
            return
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        bundle_dir, report = os.fsdecode(msg), fds[0]
        if os.fork() == 0:
            try:
                ctl.close()
                os.setsid()
                shim.run(bundle_dir, report)
            finally:
                os._exit(1)
        os.close(report)


def main() -> None:
    # Shims are our children only until we exit; ignoring SIGCHLD lets the kernel reap them
    # (the shim sets its own handler at once).
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    ctl = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)
    # Every object made so far (the imported modules) goes to the permanent generation: a
    # collection in a shim never walks them, so it does not touch (copy-on-write) their pages.
    gc.freeze()
    serve(ctl)
    sys.exit(0)


if __name__ == "__main__":
    main()
