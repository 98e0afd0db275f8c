"""The log files of one container: writing with rotation, reading with tail/since/until/follow.

Files: ``<id>-json.log`` (current), ``<id>-json.log.1`` ... ``.N-1`` (rotated, oldest has the
highest number), ``.k.gz`` when compressed. Rotation happens before a write once the current
file has reached ``max-size`` (so a file may exceed it by one entry, as in Docker).

Coordination: writers and readers of one path in this process share a ``Shared`` record (a
lock held while writing, rotating, and while a reader opens its set of files; a condition that
wakes followers; a rotation counter that lets a follower find every file rotated past it).
Across processes only the files are shared: a follower polls, and learns that the container's
writer is gone from a lock: every open writer holds a shared ``flock`` on the log directory.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import itertools
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import IO, Iterable, Iterator

from pyd.drivers.log import LogMessage, ReadConfig

from .jsonlog import Entry, decode_entry, encode_entry
from .options import JsonFileOptions

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # how often a follower re-checks files written by another process
_BLOCK = 1 << 16


class Shared:
    """In-process state of one log path, shared by its writers and readers."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.cond = threading.Condition(threading.Lock())
        self.seq = 0  # bumped on every write and close: followers wait for a change
        self.rotations = 0

    def notify(self) -> None:
        with self.cond:
            self.seq += 1
            self.cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        with self.cond:
            if self.seq == seen:
                self.cond.wait(timeout)


def rotated_files(path: Path) -> list[tuple[int, Path]]:
    """The rotated files of ``path`` that exist, as (number, path), oldest (highest) first."""
    found: dict[int, Path] = {}
    prefix = path.name + "."
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    for name in names:
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        num = rest[:-3] if rest.endswith(".gz") else rest
        if num.isdigit() and int(num) > 0:
            found[int(num)] = path.parent / name
    return sorted(found.items(), reverse=True)


def _open_existing(path: Path) -> IO[bytes] | None:
    try:
        f: IO[bytes] = open(path, "rb")
    except FileNotFoundError:
        return None
    if path.name.endswith(".gz"):
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    return f


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class JsonFileWriter:
    """``pyd.drivers.log.LogWriter`` for one container."""

    def __init__(self, path: Path, opts: JsonFileOptions, attrs: str, shared: Shared) -> None:
        self.path, self.opts, self.attrs, self.shared = path, opts, attrs, shared
        path.parent.mkdir(parents=True, exist_ok=True)
        # Held for as long as this writer is open: followers in any process see it.
        self._dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._closed = False
        try:
            fcntl.flock(self._dir_fd, fcntl.LOCK_SH)
            with shared.lock:
                self._fd = self._open_current()
                self._rotations = shared.rotations
        except BaseException:
            os.close(self._dir_fd)
            raise

    def _open_current(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        size = os.fstat(fd).st_size
        if size:
            rfd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                last = os.pread(rfd, 1, size - 1)
            finally:
                os.close(rfd)
            if last != b"\n":
                # A crash cut the last entry short: end it so the next entry starts on its own
                # line (readers skip the broken one).
                _write_all(fd, b"\n")
        return fd

    def log(self, msg: LogMessage) -> None:
        line = msg.line
        if not msg.partial and not line.endswith(b"\n"):
            line += b"\n"  # Docker ends every complete message with a newline
        data = encode_entry(line, msg.stream, msg.time_nano, self.attrs)
        with self.shared.lock:
            if self._closed:
                raise ValueError(f"log writer for {self.path} is closed")
            if self._rotations != self.shared.rotations:  # another writer rotated the file
                os.close(self._fd)
                self._fd = self._open_current()
                self._rotations = self.shared.rotations
            if self.opts.max_size > 0 and os.fstat(self._fd).st_size >= self.opts.max_size:
                self._rotate()
            _write_all(self._fd, data)
        self.shared.notify()

    def _rotate(self) -> None:
        """Called with ``shared.lock`` held."""
        path, keep = self.path, self.opts.max_file - 1
        os.close(self._fd)
        if keep < 1:
            # Docker truncates; a new file (new inode) lets followers notice the switch.
            os.unlink(path)
        else:
            for num in range(keep, 0, -1):
                for suffix in ("", ".gz"):
                    src = Path(f"{path}.{num}{suffix}")
                    if not src.exists():
                        continue
                    if num == keep:
                        src.unlink()
                    else:
                        os.replace(src, f"{path}.{num + 1}{suffix}")
            if self.opts.compress:
                self._compress(path, Path(f"{path}.1.gz"))
            else:
                os.replace(path, f"{path}.1")
        self.shared.rotations += 1
        self._rotations = self.shared.rotations
        self._fd = self._open_current()

    @staticmethod
    def _compress(src: Path, dst: Path) -> None:
        tmp = dst.with_name(dst.name + ".tmp")
        with open(src, "rb") as fin, open(tmp, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6) as gz:
                shutil.copyfileobj(fin, gz, _BLOCK)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, dst)
        os.unlink(src)

    def close(self) -> None:
        with self.shared.lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._fd)
            os.close(self._dir_fd)  # releases the flock: followers end
        self.shared.notify()


def writer_alive(log_dir: Path) -> bool:
    """Whether some process holds a writer open on ``log_dir`` (see ``JsonFileWriter``)."""
    try:
        fd = os.open(log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)  # also drops the probe's lock
    return False


# -- reading ---------------------------------------------------------------------------------


def _message(entry: Entry) -> LogMessage:
    return LogMessage(
        line=entry.line,
        stream=entry.stream,
        time_nano=entry.time_nano,
        partial=not entry.line.endswith(b"\n"),
    )


def _decode(raw: bytes, where: Path) -> LogMessage | None:
    try:
        return _message(decode_entry(raw))
    except ValueError:
        log.warning("skipping a damaged entry in %s", where, extra={"driver": "log:json-file"})
        return None


def _forward(f: IO[bytes], where: Path) -> Iterator[LogMessage]:
    for raw in f:
        if raw.strip():
            msg = _decode(raw, where)
            if msg is not None:
                yield msg


def _forward_fd(fd: int, start: int, end: int, where: Path) -> Iterator[LogMessage]:
    """Complete lines of ``fd`` between ``start`` and ``end`` (``end`` follows a newline)."""
    pos, pending = start, b""
    while pos < end:
        chunk = os.pread(fd, min(_BLOCK, end - pos), pos)
        if not chunk:
            break
        pos += len(chunk)
        *lines, pending = (pending + chunk).split(b"\n")
        for raw in lines:
            if raw:
                msg = _decode(raw, where)
                if msg is not None:
                    yield msg


def _backward_fd(fd: int, end: int, where: Path) -> Iterator[LogMessage]:
    """Messages of ``fd`` before ``end``, newest first, reading blocks from the end."""
    pos, head = end, b""
    while pos > 0:
        n = min(_BLOCK, pos)
        pos -= n
        lines = (os.pread(fd, n, pos) + head).split(b"\n")
        head = lines[0]
        for raw in reversed(lines[1:]):
            if raw:
                msg = _decode(raw, where)
                if msg is not None:
                    yield msg
    if head:
        msg = _decode(head, where)
        if msg is not None:
            yield msg


def _line_boundary(fd: int, size: int) -> int:
    """The offset just after the last newline before ``size`` (0 if none)."""
    pos = size
    while pos > 0:
        n = min(_BLOCK, pos)
        chunk = os.pread(fd, n, pos - n)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return pos - n + i + 1
        pos -= n
    return 0


class _Window:
    """Applies ``since``/``until`` (inclusive) to messages in time order."""

    def __init__(self, cfg: ReadConfig) -> None:
        self.since, self.until = cfg.since_nano, cfg.until_nano
        self.done = False

    def filter(self, msgs: Iterable[LogMessage]) -> Iterator[LogMessage]:
        for msg in msgs:
            if self.until and msg.time_nano > self.until:
                self.done = True
                return
            if msg.time_nano >= self.since:
                yield msg


def read_log(path: Path, shared: Shared, cfg: ReadConfig) -> Iterator[LogMessage]:
    """Yield the stored messages of ``path`` honouring ``cfg``; then follow if asked."""
    with shared.lock:  # one consistent set of files: no rotation while they are opened
        rotations = shared.rotations
        olds = [(p, _open_existing(p)) for _, p in rotated_files(path)]
        try:
            cur: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            cur = None
        end = _line_boundary(cur, os.fstat(cur).st_size) if cur is not None else 0
    window = _Window(cfg)
    try:
        if cfg.tail < 0:
            def stored() -> Iterator[LogMessage]:
                for p, f in olds:
                    if f is not None:
                        yield from _forward(f, p)
                if cur is not None:
                    yield from _forward_fd(cur, 0, end, path)

            yield from window.filter(stored())
        elif cfg.tail > 0:
            def newest_first() -> Iterator[LogMessage]:
                if cur is not None:
                    yield from _backward_fd(cur, end, path)
                for p, f in reversed(olds):  # rotated files are small: read each whole
                    if f is not None:
                        yield from reversed(list(_forward(f, p)))

            newest = list(itertools.islice(newest_first(), cfg.tail))
            yield from window.filter(reversed(newest))
        for _, f in olds:
            if f is not None:
                f.close()
        olds = []
        if cfg.follow and not window.done:
            yield from _follow(path, shared, cfg, window, cur, end, rotations)
            cur = None  # _follow closed it
    finally:
        for _, f in olds:
            if f is not None:
                f.close()
        if cur is not None:
            os.close(cur)


def _follow(
    path: Path,
    shared: Shared,
    cfg: ReadConfig,
    window: _Window,
    fd: int | None,
    pos: int,
    rotations: int,
) -> Iterator[LogMessage]:
    pending = b""
    final = False  # the writer is gone: one last read to the end, then stop
    try:
        while True:
            if cfg.cancel is not None and cfg.cancel.is_set():
                return
            seen = shared.seq
            if fd is not None:
                chunk = os.pread(fd, _BLOCK, pos)
                if chunk:
                    pos += len(chunk)
                    *lines, pending = (pending + chunk).split(b"\n")
                    msgs = (m for m in (_decode(r, path) for r in lines if r) if m is not None)
                    yield from window.filter(msgs)
                    if window.done:
                        return
                    continue
            if final:
                return
            # At the end of our file: was it rotated away (or created) meanwhile?
            with shared.lock:
                try:
                    st: os.stat_result | None = os.stat(path)
                except FileNotFoundError:
                    st = None
                switched = (fd is None) != (st is None) or (
                    fd is not None and st is not None and st.st_ino != os.fstat(fd).st_ino
                )
                if switched:
                    # In-process we know how many rotations passed; across processes assume one.
                    n = max(shared.rotations - rotations, 0 if fd is None else 1)
                    last_new = n if fd is None else n - 1
                    newer = [(p, _open_existing(p)) for num, p in rotated_files(path) if num <= last_new]
                    try:
                        new_fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        new_fd = None
                    rotations = shared.rotations
            if switched:
                if fd is not None:  # what was written to our file before it was rotated
                    start = pos - len(pending)
                    rest = list(_forward_fd(fd, start, os.fstat(fd).st_size, path))
                    os.close(fd)
                    yield from window.filter(rest)
                for p, f in newer:
                    if f is not None:
                        with f:
                            yield from window.filter(list(_forward(f, p)))
                fd, pos, pending = new_fd, 0, b""
                if window.done:
                    return
                continue
            if not writer_alive(path.parent):
                final = True
                continue
            if window.until and time.time_ns() > window.until:
                return
            shared.wait(seen, POLL_SECONDS)
    finally:
        if fd is not None:
            os.close(fd)
