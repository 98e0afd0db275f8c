"""One inotify instance shared by every log pipeline (per-user inotify instances are scarce).

``watch(path, event)`` sets ``event`` whenever the file is written or closed; pipelines wait
on their event instead of polling. Without inotify, ``available`` is False and they poll.
"""

from __future__ import annotations

import ctypes
import os
import threading


class FileWatcher:
    """``watch(path, event)``: set ``event`` whenever ``path`` (a file, or a directory's
    files) is written, closed, created or renamed into place."""

    IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100
    IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC)
        self._lock = threading.Lock()
        self._wds: dict[int, threading.Event] = {}
        self._closing = False
        self.available = self._fd >= 0
        if self.available:
            self._r, self._w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            self._thread = threading.Thread(target=self._run, name="pyd-log-watch", daemon=True)
            self._thread.start()

    def watch(self, path: str, event: threading.Event) -> int:
        if not self.available:
            return -1
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), self.IN_MODIFY | self.IN_CLOSE_WRITE | self.IN_MOVED_TO | self.IN_CREATE)
        if wd >= 0:
            with self._lock:
                self._wds[wd] = event
        return wd

    def unwatch(self, wd: int) -> None:
        if wd < 0 or not self.available:
            return
        with self._lock:
            self._wds.pop(wd, None)
        self._libc.inotify_rm_watch(self._fd, wd)

    def _run(self) -> None:
        import select
        import struct

        header = struct.Struct("iIII")
        while not self._closing:
            ready, _, _ = select.select([self._fd, self._r], [], [])
            if self._r in ready:
                return
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            pos = 0
            while pos + header.size <= len(data):
                wd, _mask, _cookie, length = header.unpack_from(data, pos)
                pos += header.size + length
                with self._lock:
                    ev = self._wds.get(wd)
                if ev is not None:
                    ev.set()

    def close(self) -> None:
        if not self.available or self._closing:
            return
        self._closing = True
        os.write(self._w, b"x")
        self._thread.join(timeout=2)
        os.close(self._fd)
        os.close(self._r)
        os.close(self._w)
