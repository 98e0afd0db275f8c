"""Producing Docker-format layer tars from a tree or a change list, and streaming them."""

from __future__ import annotations

import errno
import io
import logging
import os
import posixpath
import stat
import tarfile
import threading
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator, Protocol

from pyd.drivers.graph import Change, ChangeKind
from pyd.errors import InvalidParameter

from .paths import BUF, O_DIR, O_READ, OVERLAY_XATTR, PAX_XATTR, WHITEOUT_OPAQUE, WHITEOUT_PREFIX, DirCache, open_existing_dir

log = logging.getLogger(__name__)


class WhiteoutFormat(Protocol):
    """How a driver's layer directory marks deletions, for ``layer_tar``."""

    def is_whiteout(self, st: os.stat_result) -> bool:
        ...

    def is_opaque(self, dir_fd: int) -> bool:
        ...


@dataclass
class Entry:
    """One entry of ``iter_tree``: ``path`` relative to the root; ``parent_fd`` and ``name``
    locate it without following links; ``fd`` is an open fd of the entry if it is a directory
    (valid until the iteration moves on)."""

    path: str
    name: str
    parent_fd: int
    st: os.stat_result
    fd: int | None = None


def walk_fd(dir_fd: int, rel: str) -> Iterator[Entry]:
    """``iter_tree`` below an open directory fd; paths are prefixed with ``rel``."""
    for name in sorted(os.listdir(dir_fd)):
        path = f"{rel}/{name}" if rel else name
        try:
            st = os.lstat(name, dir_fd=dir_fd)
            if not stat.S_ISDIR(st.st_mode):
                yield Entry(path, name, dir_fd, st)
                continue
            fd = os.open(name, O_DIR, dir_fd=dir_fd)
        except OSError as exc:  # changed under us (a running container): skip it
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                continue
            raise
        try:
            yield Entry(path, name, dir_fd, os.fstat(fd), fd)
            yield from walk_fd(fd, path)
        finally:
            os.close(fd)


def iter_tree(root: str) -> Iterator[Entry]:
    """Every entry below ``root`` in sorted pre-order, never following symlinks."""
    fd = os.open(root, O_DIR)
    try:
        yield from walk_fd(fd, "")
    finally:
        os.close(fd)


def proc_path(parent_fd: int, name: str) -> str:
    return f"/proc/self/fd/{parent_fd}/{name}"


def read_xattrs(target: int | str) -> dict[str, bytes]:
    """All xattrs except overlayfs's own (``target``: an fd or a path, links not followed)."""
    try:
        names = os.listxattr(target, follow_symlinks=False) if isinstance(target, str) else os.listxattr(target)
        out = {}
        for n in names:
            if not n.startswith(OVERLAY_XATTR):
                out[n] = (
                    os.getxattr(target, n, follow_symlinks=False)
                    if isinstance(target, str)
                    else os.getxattr(target, n)
                )
        return out
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA):
            return {}
        raise


class TarWriter:
    """Docker-format layer tar writer: PAX, whole-second mtimes (as moby, for reproducible
    diffs), hardlinks within the stream, xattrs as SCHILY.xattr records, sockets skipped."""

    def __init__(self, out: BinaryIO) -> None:
        self.tf = tarfile.open(
            fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
            errors="surrogateescape", bufsize=1 << 16,
        )
        self.links: dict[tuple[int, int], str] = {}

    def close(self) -> None:
        self.tf.close()

    def _info(self, path: str, st: os.stat_result) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(path)
        ti.mode, ti.uid, ti.gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
        ti.mtime = st.st_mtime_ns // 1_000_000_000
        ti.uname = ti.gname = ""
        return ti

    def whiteout(self, path: str, uid: int = 0, gid: int = 0, mtime: int = 0, mode: int = 0o600) -> None:
        ti = tarfile.TarInfo(path)
        ti.mode, ti.uid, ti.gid, ti.mtime, ti.uname, ti.gname = mode, uid, gid, mtime, "", ""
        self.tf.addfile(ti)

    def add(self, e: Entry, fd: int | None = None) -> None:
        st, ti = e.st, self._info(e.path, e.st)
        mode = st.st_mode
        xattr_src: int | str = e.fd if e.fd is not None else proc_path(e.parent_fd, e.name)
        if stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                ti.type, ti.linkname = tarfile.LNKTYPE, self.links[key]
                self.tf.addfile(ti)
                return
            rfd = os.open(e.name, O_READ, dir_fd=e.parent_fd)
            with open(rfd, "rb", buffering=0) as f:
                fst = os.fstat(rfd)
                if not stat.S_ISREG(fst.st_mode):
                    return  # replaced under us
                ti.size = fst.st_size
                self._pax_xattrs(ti, read_xattrs(rfd))
                self.tf.addfile(ti, f)
            if st.st_nlink > 1:
                self.links[key] = e.path
            return
        if stat.S_ISDIR(mode):
            ti.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(mode):
            ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(e.name, dir_fd=e.parent_fd)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
        else:
            return  # sockets are not part of layers
        self._pax_xattrs(ti, read_xattrs(xattr_src))
        self.tf.addfile(ti)

    @staticmethod
    def _pax_xattrs(ti: tarfile.TarInfo, xattrs: dict[str, bytes]) -> None:
        for k, v in sorted(xattrs.items()):
            ti.pax_headers[PAX_XATTR + k] = v.decode("utf-8", "surrogateescape")


def layer_tar(root: str, out: BinaryIO, *, whiteout_format: WhiteoutFormat | None = None) -> None:
    """Write the whole tree below ``root`` as a layer tar. With ``whiteout_format`` (a driver's
    native diff), its whiteouts become ``.wh.NAME`` and opaque directories get ``.wh..wh..opq``."""
    w = TarWriter(out)
    for e in iter_tree(root):
        if whiteout_format is not None and whiteout_format.is_whiteout(e.st):
            d, base = posixpath.split(e.path)
            w.whiteout(posixpath.join(d, WHITEOUT_PREFIX + base), e.st.st_uid, e.st.st_gid,
                       e.st.st_mtime_ns // 1_000_000_000)
            continue
        w.add(e)
        if e.fd is not None and whiteout_format is not None and whiteout_format.is_opaque(e.fd):
            w.whiteout(f"{e.path}/{WHITEOUT_OPAQUE}", e.st.st_uid, e.st.st_gid,
                       e.st.st_mtime_ns // 1_000_000_000, e.st.st_mode & 0o777)
    w.close()


class TreeReader:
    """Look up paths below a root without following any symlink (for differs and changes)."""

    def __init__(self, root: str) -> None:
        self._cache = DirCache(os.open(root, O_DIR))

    def __enter__(self) -> TreeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._cache.close()
        os.close(self._cache.root_fd)

    def entry(self, path: str) -> Entry | None:
        """The entry at ``path`` ("/etc/passwd" or "etc/passwd"), or None if it does not exist
        or is reached only through a symlink. A directory's ``fd`` is not set."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return None
        try:
            pfd = self._cache.walk(parts[:-1], open_existing_dir)
            return Entry("/".join(parts), parts[-1], pfd, os.lstat(parts[-1], dir_fd=pfd))
        except (InvalidParameter, FileNotFoundError):
            return None

    def listdir(self, path: str) -> list[str]:
        parts = [p for p in path.split("/") if p]
        try:
            return os.listdir(self._cache.walk(parts, open_existing_dir))
        except InvalidParameter:
            return []


def changes_tar(root: str, changes: Iterable[Change], out: BinaryIO) -> None:
    """Write the layer tar for ``changes`` taken from the tree at ``root`` (Docker's
    ExportChanges): deletions become ``.wh.NAME``, additions and modifications their entry."""
    w = TarWriter(out)
    with TreeReader(root) as tree:
        for ch in sorted(changes, key=lambda c: c.path):
            rel = ch.path.strip("/")
            if ch.kind == ChangeKind.DELETE:
                d, base = posixpath.split(rel)
                w.whiteout(posixpath.join(d, WHITEOUT_PREFIX + base))
                continue
            e = tree.entry(rel)
            if e is None:
                continue  # gone since the changes were computed
            if stat.S_ISDIR(e.st.st_mode):
                e.fd = os.open(e.name, O_DIR, dir_fd=e.parent_fd)
                try:
                    w.add(e)
                finally:
                    os.close(e.fd)
            else:
                w.add(e)
    w.close()


def changes_size(root: str, changes: Iterable[Change]) -> int:
    """Bytes of regular files added or modified by ``changes`` (hardlinks counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    with TreeReader(root) as tree:
        for ch in changes:
            if ch.kind == ChangeKind.DELETE:
                continue
            e = tree.entry(ch.path)
            if e is not None and stat.S_ISREG(e.st.st_mode) and (e.st.st_dev, e.st.st_ino) not in seen:
                seen.add((e.st.st_dev, e.st.st_ino))
                total += e.st.st_size
    return total


def tree_size(root: str) -> int:
    """Bytes of regular files below ``root`` (hardlinks counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for e in iter_tree(root):
        if stat.S_ISREG(e.st.st_mode) and (e.st.st_dev, e.st.st_ino) not in seen:
            seen.add((e.st.st_dev, e.st.st_ino))
            total += e.st.st_size
    return total


class _PipeReader(io.RawIOBase):
    def __init__(self, fd: int, thread: threading.Thread, box: dict[str, BaseException]) -> None:
        self._fd, self._thread, self._box = fd, thread, box

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = os.read(self._fd, len(b))
        if not data:
            self._thread.join()
            if "exc" in self._box:
                raise self._box.pop("exc")
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)  # a writer still running gets EPIPE and stops
            self._thread.join()
        super().close()


def tar_stream(produce: Callable[[BinaryIO], None], *, on_close: Callable[[], None] | None = None) -> BinaryIO:
    """Run ``produce(out)`` in a thread writing into a pipe; return the reading end.

    Nothing is buffered beyond the pipe. An exception in ``produce`` is raised to the reader at
    the end of the stream; ``on_close`` runs in the thread when production ends (e.g. to
    release mounts the producer read from).
    """
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    box: dict[str, BaseException] = {}

    def run() -> None:
        try:
            out = open(wfd, "wb", buffering=BUF)
            try:
                produce(out)
            finally:
                try:
                    out.close()
                except BrokenPipeError:
                    pass
        except BrokenPipeError:
            pass  # the reader closed early
        except BaseException as exc:  # handed to the reader
            box["exc"] = exc
        finally:
            if on_close is not None:
                try:
                    on_close()
                except Exception:
                    log.exception("releasing after a layer tar stream failed")

    thread = threading.Thread(target=run, name="pyd-layer-tar", daemon=True)
    thread.start()
    return io.BufferedReader(_PipeReader(rfd, thread, box), buffer_size=BUF)  # type: ignore[return-value]
