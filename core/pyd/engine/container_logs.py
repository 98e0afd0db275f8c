"""The log pipeline: the shim's output file -> the container's log driver (and the local cache).

The shim owns the container's stdio and appends every line to ``<container dir>/stdio.log`` in
the exec log format (``pyd.drivers.execdriver``: JSON lines, rotated to ``stdio.log.1`` at
16 MiB), so the container never waits for the daemon. One pipeline per container tails that
file and hands each message to the log driver's writer:

* ``mode=blocking`` (default): the pipeline waits for the driver; nothing is dropped (the
  file absorbs the backlog).
* ``mode=non-blocking``: messages queue up to ``max-buffer-size`` bytes and a second thread
  drains the queue into the driver; when the queue is full a message is dropped and counted
  (daemon log, and ``PydLogDropped`` in ``inspect``).

Where it got to -- the file's inode and the offset after the last message delivered (or
dropped) -- is written to ``log-offset`` after each batch. A daemon restart resumes exactly
there, in ``stdio.log`` or, if it was rotated meanwhile, in ``stdio.log.1`` first: nothing is
lost, and at most the last batch repeats after a crash between delivery and that write.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections import deque
from typing import Iterable

from pyd.drivers.execdriver import decode_log_record
from pyd.drivers.log import LogMessage, LogWriter
from pyd.engine.file_watch import FileWatcher
from pyd.engine.store import atomic_write

log = logging.getLogger(__name__)

OFFSET_FILE = "log-offset"
_READ = 256 * 1024
_IDLE_WAIT = 0.25  # seconds between checks when a wake-up was missed


def decode(buf: bytes) -> tuple[list[tuple[LogMessage, int]], int]:
    """Complete lines of ``buf`` -> (messages with the offset after each, bytes consumed).

    A last line without its newline is still being written and stays in the buffer; a line
    that is not a record is skipped (and counted as consumed)."""
    out: list[tuple[LogMessage, int]] = []
    pos = 0
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return out, pos
        line = buf[pos:nl]
        pos = nl + 1
        if not line.strip():
            continue
        try:
            out.append((decode_log_record(line), pos))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("skipping a malformed line in a container's output file: %s", exc)


def read_position(container_dir: str) -> tuple[int, int]:
    """(inode, offset) saved by the pipeline; (0, 0) when there is none."""
    try:
        with open(os.path.join(container_dir, OFFSET_FILE)) as f:
            ino, _, off = f.read().strip().partition(":")
            return int(ino or 0), int(off or 0)
    except (OSError, ValueError):
        return 0, 0


def unread_output(source: str, container_dir: str) -> bool:
    """True if ``source`` (or its rotated file) holds output the pipeline has not delivered."""
    ino, off = read_position(container_dir)
    files = []
    for path in (source + ".1", source):
        try:
            files.append(os.stat(path))
        except FileNotFoundError:
            continue
    for i, st in enumerate(files):
        if ino and st.st_ino == ino:
            return st.st_size > off or any(f.st_size > 0 for f in files[i + 1 :])
    # the saved file is gone (or there is none yet): the current file is read from its start
    return bool(files) and files[-1].st_size > 0


class LogPipeline:
    """Tails one container's output file into its writers. Runs in its own thread(s)."""

    def __init__(
        self,
        *,
        container_id: str,
        container_dir: str,
        source: str,
        writers: Iterable[LogWriter],
        watcher: FileWatcher,
        mode: str = "blocking",
        max_buffer: int = 1 << 20,
    ) -> None:
        self.container_id = container_id
        self.dir = container_dir
        self.source = source
        self.writers = list(writers)
        self.watcher = watcher
        self.mode = mode
        self.max_buffer = max_buffer
        self.ino, self.offset = read_position(container_dir)
        self.dropped = 0
        self.closed = threading.Event()  # every message delivered and the writers closed
        self._wake = threading.Event()
        self._finishing = threading.Event()  # the container's output ended: drain and close
        self._stopping = threading.Event()  # the daemon stops: persist and leave the log open
        self._cond = threading.Condition()
        self._queue: deque[tuple[LogMessage, int, int]] = deque()
        self._queued_bytes = 0
        self._reader_done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pyd-log-{container_id[:12]}", daemon=True)
        self._drainer: threading.Thread | None = None

    # -- control (any thread) ----------------------------------------------------------------

    def start(self) -> None:
        if self.mode == "non-blocking":
            self._drainer = threading.Thread(target=self._drain, name=f"pyd-logq-{self.container_id[:12]}", daemon=True)
            self._drainer.start()
        self._thread.start()

    def finish(self) -> None:
        """The container's output has ended: deliver the rest, then close the writers."""
        self._finishing.set()
        self._wake.set()

    def stop(self) -> None:
        """Daemon shutdown: persist the position and stop without closing the log."""
        self._stopping.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if self._drainer is not None:
            self._drainer.join(timeout)

    def sync(self, timeout: float = 2.0) -> None:
        """Block until what the shim had written when called has reached the writers."""
        try:
            st = os.stat(self.source)
        except OSError:
            return
        self._wake.set()
        with self._cond:
            self._cond.wait_for(
                lambda: (self.ino == st.st_ino and self.offset >= st.st_size)
                or self.closed.is_set()
                or self._stopping.is_set(),
                timeout,
            )

    # -- the reader -----------------------------------------------------------------------------

    def _open_start(self) -> tuple[int, int] | None:
        """(fd, offset) to begin at: the saved file (rotated or not) or the current one."""
        for path in (self.source + ".1", self.source):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            ino = os.fstat(fd).st_ino
            if self.ino and ino == self.ino:
                return fd, self.offset
            os.close(fd)
        try:
            fd = os.open(self.source, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        return fd, 0

    def _run(self) -> None:
        wd = self.watcher.watch(os.path.dirname(self.source) or ".", self._wake)
        fd = -1
        try:
            while fd < 0:
                opened = self._open_start()
                if opened is not None:
                    fd, off = opened
                    break
                if self._stopping.is_set() or self._finishing.is_set():
                    return
                self._wake.wait(_IDLE_WAIT)
                self._wake.clear()
            self._tail(fd, off)
        except Exception:
            log.exception("log pipeline of container %s failed", self.container_id[:12])
        finally:
            self.watcher.unwatch(wd)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._end()

    def _tail(self, fd: int, pos: int) -> None:
        ino = os.fstat(fd).st_ino
        pending = b""
        read_pos = pos
        while True:
            self._wake.clear()
            got = False
            while not self._stopping.is_set():
                chunk = os.pread(fd, _READ, read_pos)
                if not chunk:
                    break
                got = True
                read_pos += len(chunk)
                pending += chunk
                msgs, used = decode(pending)
                if msgs:
                    self._deliver([(m, ino, pos + end) for m, end in msgs])
                pending = pending[used:]
                pos += used
            if self._stopping.is_set():
                return
            # rotated? finish this file (done: at EOF) and move to the new one
            try:
                cur = os.stat(self.source).st_ino
            except FileNotFoundError:
                cur = ino
            if cur != ino:
                os.close(fd)
                fd = os.open(self.source, os.O_RDONLY | os.O_CLOEXEC)
                ino, pos, read_pos, pending = os.fstat(fd).st_ino, 0, 0, b""
                self._advance(ino, 0)
                continue
            if not got and self._finishing.is_set():
                # one more look: the shim writes its last output before it reports the exit
                if os.pread(fd, 1, read_pos):
                    continue
                if pending:  # a last line the shim never finished: deliver it as partial
                    self._deliver([(LogMessage(pending, "stdout", 0, True), ino, pos + len(pending))])
                return
            self._wake.wait(_IDLE_WAIT)

    def _deliver(self, batch: list[tuple[LogMessage, int, int]]) -> None:
        if self.mode == "non-blocking":
            with self._cond:
                for msg, ino, end in batch:
                    size = len(msg.line)
                    if self._queued_bytes + size > self.max_buffer:
                        self.dropped += 1
                        if self.dropped == 1 or self.dropped % 1000 == 0:
                            log.warning(
                                "container %s: log buffer full, %d messages dropped (mode=non-blocking, max-buffer-size=%d)",
                                self.container_id[:12], self.dropped, self.max_buffer,
                            )
                        # an empty placeholder keeps the saved position moving past it
                        self._queue.append((LogMessage(b"", msg.stream, msg.time_nano), ino, end))
                        continue
                    self._queue.append((msg, ino, end))
                    self._queued_bytes += size
                self._cond.notify_all()
            return
        for msg, _ino, _end in batch:
            self._write(msg)
        self._advance(batch[-1][1], batch[-1][2])

    def _write(self, msg: LogMessage) -> None:
        for w in self.writers:
            try:
                w.log(msg)
            except Exception:
                log.exception("the log driver failed to write a message of container %s", self.container_id[:12])

    def _advance(self, ino: int, offset: int) -> None:
        with self._cond:
            self.ino, self.offset = ino, offset
            self._cond.notify_all()
        try:
            atomic_write(os.path.join(self.dir, OFFSET_FILE), f"{ino}:{offset}".encode(), 0o600)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # the container directory is gone (removal)
                log.warning("cannot save the log position of %s: %s", self.container_id[:12], exc)

    # -- non-blocking mode --------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping.is_set() and not self._reader_done.is_set():
                    self._cond.wait(0.5)
                if not self._queue:
                    return
                items = list(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
            for msg, _ino, _end in items:
                if msg.line:
                    self._write(msg)
            self._advance(items[-1][1], items[-1][2])

    def _end(self) -> None:
        self._reader_done.set()
        if self._drainer is not None:
            with self._cond:
                self._cond.notify_all()
            self._drainer.join()
        if self._stopping.is_set() and not self._finishing.is_set():
            with self._cond:
                self._cond.notify_all()
            return
        for w in self.writers:
            try:
                w.close()
            except Exception:
                log.exception("closing the log writer of container %s failed", self.container_id[:12])
        self.closed.set()
        with self._cond:
            self._cond.notify_all()
