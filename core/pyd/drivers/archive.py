"""Layer tar streams: safe application onto a directory, and production from a tree or changes.

Part of the plugin API: graph drivers use it so that every driver applies layers with the same,
safe semantics. Layer tars are uncompressed and follow Docker's conventions: ``DIR/.wh.NAME``
deletes ``NAME`` of a lower layer, ``DIR/.wh..wh..opq`` makes ``DIR`` opaque (the lower layers'
content of ``DIR`` is hidden), and PAX ``SCHILY.xattr.*`` records carry extended attributes.

Applying a layer is a security boundary. ``apply_layer``:

* refuses absolute member names and any ``..`` component (``InvalidParameter`` naming the member);
* resolves each parent directory from the root one component at a time with
  ``openat(O_NOFOLLOW)``, so no symlink is ever followed. A parent that this tar itself made a
  symlink (or another non-directory) is refused; one left by a lower layer is replaced by a
  directory, which is what overlayfs shows when an upper directory covers a lower non-directory;
* removes whatever is at a path before writing, and creates with ``O_CREAT|O_EXCL|O_NOFOLLOW``;
* accepts symlinks whose target stays inside the root (absolute targets are relative to it, as
  in a container) and hardlinks whose target resolves inside the root through directories only;
* refuses device nodes unless ``allow_devices``; sets ownership, then modes exactly as in the tar
  (setuid/setgid only when the tar has them), xattrs and times;
* never writes ``trusted.overlay.*`` xattrs taken from a tar: they are overlayfs's own metadata.

Whiteouts are delegated to a ``WhiteoutHandler`` so each driver keeps its own on-disk format:
``NaiveWhiteouts`` (full-tree drivers such as vfs) deletes for real; overlay records 0:0 char
devices and the ``trusted.overlay.opaque`` xattr.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import posixpath
import shutil
import stat
import struct
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator, Protocol

from pyd.drivers.graph import Change, ChangeKind
from pyd.errors import InvalidParameter

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
PAX_XATTR = "SCHILY.xattr."
OVERLAY_XATTR = "trusted.overlay."

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_BUF = 1 << 20
_CACHE = 64  # open directory fds kept while applying (tars are mostly sorted)


# ---------------------------------------------------------------------------------------------
# Whiteout handling (apply side) and whiteout formats (produce side)
# ---------------------------------------------------------------------------------------------


class WhiteoutHandler(Protocol):
    """How a driver records deletions while a layer is applied."""

    def whiteout(self, dir_fd: int, name: str, path: str, uid: int, gid: int) -> None:
        """``name`` (``path`` from the root) in the directory ``dir_fd`` is deleted by this layer;
        whatever was there has already been removed. Overlay creates a 0:0 char device where it
        hides a lower entry; full-tree drivers do nothing."""
        ...

    def opaque(self, dir_fd: int, path: str, keep: Callable[[str], bool]) -> None:
        """The directory ``path`` (open as ``dir_fd``) is opaque. ``keep(relpath)`` is true for
        entries this layer wrote (or that contain such entries); the rest came from lower layers."""
        ...


class NaiveWhiteouts:
    """Whiteouts for drivers whose layer directory holds the full tree (vfs): a deletion is the
    removal itself; an opaque directory loses every entry that this layer did not write."""

    def whiteout(self, dir_fd: int, name: str, path: str, uid: int, gid: int) -> None:
        pass

    def opaque(self, dir_fd: int, path: str, keep: Callable[[str], bool]) -> None:
        clear_dir(dir_fd, path, keep)


class WhiteoutFormat(Protocol):
    """How a driver's layer directory marks deletions, for ``layer_tar``."""

    def is_whiteout(self, st: os.stat_result) -> bool:
        ...

    def is_opaque(self, dir_fd: int) -> bool:
        ...


def remove_entry(dir_fd: int, name: str) -> None:
    """Remove ``name`` (any type; directories recursively, symlink-safe) from ``dir_fd``."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except IsADirectoryError:
        shutil.rmtree(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def clear_dir(dir_fd: int, path: str, keep: Callable[[str], bool]) -> None:
    """Remove every entry below ``dir_fd`` whose relative path ``keep`` rejects, recursively."""
    for name in os.listdir(dir_fd):
        child = f"{path}/{name}" if path else name
        if not keep(child):
            remove_entry(dir_fd, name)
            continue
        try:
            sub = os.open(name, _O_DIR, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                continue
            raise
        try:
            clear_dir(sub, child, keep)
        finally:
            os.close(sub)


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------


def split_member(name: str, what: str = "layer member") -> list[str]:
    """The components of a tar member name; refuses absolute paths and ``..``."""
    if name.startswith("/"):
        raise InvalidParameter(
            f'{what} "{name}" is an absolute path; paths in a layer must be relative to its root'
        )
    parts = name.split("/")
    if "" in parts or "." in parts:
        parts = [p for p in parts if p and p != "."]
    if ".." in parts:
        raise InvalidParameter(f'{what} "{name}" contains "..", which would leave the layer root')
    return parts


class _DirCache:
    """Open directory fds by relative path, LRU-bounded. ``walk`` opens the missing components
    with ``open_child`` and caches only the final directory, so an fd in use by the caller is
    never the one evicted (the cache holds more than two entries)."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.fds: OrderedDict[str, int] = OrderedDict()
        # Cached directory fds without the setgid bit (new files there get the creator's gid).
        self.plain: set[int] = set()
        self._note(root_fd)

    def _note(self, fd: int) -> None:
        if os.fstat(fd).st_mode & stat.S_ISGID:
            self.plain.discard(fd)
        else:
            self.plain.add(fd)

    def _close(self, fd: int) -> None:
        self.plain.discard(fd)
        os.close(fd)

    def put(self, key: str, fd: int) -> None:
        old = self.fds.pop(key, None)
        if old is not None and old != fd:
            self._close(old)
        self.fds[key] = fd
        self._note(fd)
        while len(self.fds) > _CACHE:
            self._close(self.fds.popitem(last=False)[1])

    def forget(self, rel: str, *, include_self: bool = True) -> None:
        prefix = rel + "/" if rel else ""
        for key in [k for k in self.fds if k.startswith(prefix) or (include_self and k == rel)]:
            self._close(self.fds.pop(key))

    def close(self) -> None:
        for fd in self.fds.values():
            self._close(fd)
        self.fds.clear()
        self.plain.clear()

    def walk(self, parts: list[str], open_child: Callable[[int, str, str], int]) -> int:
        if not parts:
            return self.root_fd
        key = "/".join(parts)
        fd = self.fds.get(key)
        if fd is not None:
            self.fds.move_to_end(key)
            return fd
        start, cur = 0, self.root_fd
        for i in range(len(parts) - 1, 0, -1):
            cached = self.fds.get("/".join(parts[:i]))
            if cached is not None:
                self.fds.move_to_end("/".join(parts[:i]))
                start, cur = i, cached
                break
        opened: list[int] = []
        try:
            for j in range(start, len(parts)):
                cur = open_child(cur, parts[j], "/".join(parts[: j + 1]))
                opened.append(cur)
        except BaseException:
            for o in opened:
                os.close(o)
            raise
        for o in opened[:-1]:
            os.close(o)
        self.put(key, cur)
        return cur


def _open_existing_dir(parent: int, name: str, rel: str) -> int:
    try:
        return os.open(name, _O_DIR, dir_fd=parent)
    except FileNotFoundError:
        raise InvalidParameter(f'"{rel}" does not exist in the layer') from None
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise InvalidParameter(f'"{rel}" is a symlink or not a directory; refusing to follow it') from None
        raise


# ---------------------------------------------------------------------------------------------
# Applying a layer
# ---------------------------------------------------------------------------------------------


class _Source:
    """Forward-only reader over the layer stream for tarfile: a large buffer, and file data
    copied with copy_file_range when the stream is a regular file (no pass through Python)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream, self._fd, self._raw = stream, -1, 0
        try:
            if stream.seekable() and stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                self._fd, self._raw = stream.fileno(), stream.tell()
        except (AttributeError, OSError, ValueError):
            pass
        self._buf, self._i = b"", 0

    def tell(self) -> int:
        return self._raw - (len(self._buf) - self._i)

    def seekable(self) -> bool:
        return False  # forward-only; tarfile only needs forward seeks

    def _fill(self, n: int) -> bytes:
        data = os.pread(self._fd, n, self._raw) if self._fd >= 0 else self._stream.read(n)
        self._raw += len(data)
        return data

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            raise io.UnsupportedOperation("unsized read of a layer stream")
        avail = len(self._buf) - self._i
        if n <= avail:
            out = self._buf[self._i : self._i + n]
            self._i += n
            return out
        parts = [self._buf[self._i :]] if avail else []
        need = n - avail
        self._buf, self._i = b"", 0
        while need > 0:
            chunk = self._fill(max(need, _BUF))
            if not chunk:
                break
            if len(chunk) > need:
                parts.append(chunk[:need])
                self._buf, self._i, need = chunk, need, 0
            else:
                parts.append(chunk)
                need -= len(chunk)
        return b"".join(parts)

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET:
            raise io.UnsupportedOperation("layer streams seek from the start only")
        cur = self.tell()
        if pos < cur:
            if cur - pos > self._i:
                raise io.UnsupportedOperation("layer streams cannot seek backwards")
            self._i -= cur - pos
            return pos
        skip, avail = pos - cur, len(self._buf) - self._i
        if skip <= avail:
            self._i += skip
            return pos
        skip -= avail
        self._buf, self._i = b"", 0
        if self._fd >= 0:
            self._raw += skip
        while self._fd < 0 and skip > 0:
            chunk = self._fill(min(skip, _BUF))
            if not chunk:
                break
            skip -= len(chunk)
        return self.tell()

    def copy_to(self, fd: int, n: int, member: str, skip: int = 0) -> None:
        """Write the next ``n`` bytes to ``fd``, then skip ``skip`` bytes (tar padding)."""
        avail = len(self._buf) - self._i
        if avail >= n + skip:  # the common case: a small file inside the buffer
            if n:
                _write_all(fd, memoryview(self._buf)[self._i : self._i + n])
            self._i += n + skip
            return
        if avail:
            take = min(avail, n)
            _write_all(fd, memoryview(self._buf)[self._i : self._i + take])
            self._i += take
            n -= take
        if n >= _BUF and self._fd >= 0:
            try:
                while n > 0:
                    done = os.copy_file_range(self._fd, fd, n, self._raw)
                    if done == 0:
                        break
                    self._raw += done
                    n -= done
            except OSError as exc:  # e.g. an old kernel or a filesystem that refuses: copy below
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
        while n > 0:
            chunk = self._fill(_BUF if n < _BUF else min(n, 8 * _BUF))
            if not chunk:
                raise InvalidParameter(f'layer tar stream ends inside member "{member}"')
            take = min(len(chunk), n)
            _write_all(fd, memoryview(chunk)[:take])
            n -= take
            if take < len(chunk):
                self._buf, self._i = chunk, take
        if skip:
            self.seek(self.tell() + skip)

    def drain(self) -> None:
        """Consume the rest of the stream (trailing padding), so a hashing reader sees it all."""
        self._buf, self._i = b"", 0
        if self._fd >= 0:
            self._stream.seek(0, os.SEEK_END)
            return
        while self._stream.read(_BUF):
            pass


def _umask() -> int:
    """The process umask, read without setting it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777  # unknown: every file gets an explicit chmod


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _ns(t: float | int) -> int:
    return t * 1_000_000_000 if isinstance(t, int) else int(round(t * 1_000_000_000))


def _times(m: _Member) -> tuple[int, int]:
    mtime = _ns(m.mtime)
    if not m.pax_headers:
        return mtime, mtime
    atime = m.pax_headers.get("atime")
    try:
        return (_ns(float(atime)) if atime else mtime), mtime
    except ValueError:
        return mtime, mtime


def _xattrs(m: _Member) -> list[tuple[str, bytes]]:
    out = []
    for key, value in m.pax_headers.items():
        if key.startswith(PAX_XATTR):
            name = key[len(PAX_XATTR) :]
            if name.startswith(OVERLAY_XATTR):
                log.debug("dropping %s xattr of layer member %s", name, m.name)
                continue
            out.append((name, value.encode("utf-8", "surrogateescape")))
    return out


def _setxattrs(target: int | str, m: _Member) -> None:
    for name, value in _xattrs(m):
        try:
            os.setxattr(target, name, value)
        except OSError as exc:  # not every filesystem takes every namespace (moby ignores these too)
            if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                raise
            log.debug("xattr %s of %s not set: %s", name, m.name, exc)


# Member types
_REG, _AREG, _CONT = b"0", b"\0", b"7"
_FILE_TYPES = (_REG, _AREG, _CONT)
_DIR, _SYM, _LNK, _CHR, _BLK, _FIFO = b"5", b"2", b"1", b"3", b"4", b"6"
_FAST_TYPES = frozenset((*_FILE_TYPES, _DIR, _SYM, _LNK, _CHR, _BLK, _FIFO))
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_ZERO_BLOCK = bytes(512)
_NO_PAX: dict[str, str] = {}  # shared, never written to


class _Member:
    """What the applier needs of a tar header (lighter than ``tarfile.TarInfo``)."""

    __slots__ = ("name", "type", "mode", "uid", "gid", "size", "mtime", "linkname", "devmajor",
                 "devminor", "pax_headers", "tarinfo")

    def __init__(self, name: str, type_: bytes, mode: int, uid: int, gid: int, size: int, mtime: float,
                 linkname: str, devmajor: int, devminor: int, pax_headers: dict[str, str],
                 tarinfo: tarfile.TarInfo | None = None) -> None:
        self.name, self.type, self.mode, self.uid, self.gid = name, type_, mode, uid, gid
        self.size, self.mtime, self.linkname = size, mtime, linkname
        self.devmajor, self.devminor, self.pax_headers, self.tarinfo = devmajor, devminor, pax_headers, tarinfo

    @classmethod
    def of(cls, ti: tarfile.TarInfo) -> _Member:
        t = _REG if ti.type == tarfile.GNUTYPE_SPARSE else ti.type
        return cls(ti.name, t, ti.mode, ti.uid, ti.gid, ti.size, ti.mtime, ti.linkname, ti.devmajor,
                   ti.devminor, ti.pax_headers, ti if ti.sparse is not None else None)


def _octal(field: bytes) -> int:
    # int() takes the spaces tar writers pad with, not NULs; NUL-then-garbage fields fail here
    # (ValueError) and go to tarfile's parser.
    return int(field.replace(b"\0", b"") or b"0", 8)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _fast_header(block: bytes, seen: dict[bytes, int]) -> _Member | None:
    """Parse a plain ustar/GNU/v7 header; None for anything tarfile must handle (PAX and GNU
    extension headers, base-256 numbers, unknown types, a checksum it should judge). ``seen``
    memoises numeric fields, which repeat from member to member (modes, owners, times)."""
    (name, mode, uid, gid, size, mtime, chksum, type_, linkname, magic, _version, _uname, _gname,
     devmajor, devminor, prefix) = _HEADER.unpack(block)
    if type_ not in _FAST_TYPES or (block[124] | block[108] | block[116] | block[136]) & 0x80:
        return None
    try:
        if _octal(chksum) != sum(block) - sum(chksum) + 256:
            return None
        if len(seen) > 4096:
            seen.clear()
        mode_i = seen.get(mode)
        if mode_i is None:
            mode_i = seen[mode] = _octal(mode)
        uid_i = seen.get(uid)
        if uid_i is None:
            uid_i = seen[uid] = _octal(uid)
        gid_i = seen.get(gid)
        if gid_i is None:
            gid_i = seen[gid] = _octal(gid)
        mtime_i = seen.get(mtime)
        if mtime_i is None:
            mtime_i = seen[mtime] = _octal(mtime)
        text = _text(name)
        if magic == b"ustar\0" and prefix[0]:
            text = _text(prefix) + "/" + text
        if type_ == _AREG and text.endswith("/"):
            type_ = _DIR
        if type_ == _DIR:
            text = text.rstrip("/")
        dev = (_octal(devmajor), _octal(devminor)) if type_ in (_CHR, _BLK) else (0, 0)
        return _Member(text, type_, mode_i, uid_i, gid_i, _octal(size), mtime_i,
                       _text(linkname) if linkname[0] else "", dev[0], dev[1], _NO_PAX)
    except ValueError:
        return None


class _TarContext:
    """The attributes tarfile's header parser uses from a TarFile (for the slow path)."""

    def __init__(self, src: _Source) -> None:
        self.fileobj, self.encoding, self.errors = src, "utf-8", "surrogateescape"
        self.pax_headers: dict[str, str] = {}
        self.offset = 0


def _members(src: _Source) -> Iterator[tuple[_Member, int]]:
    """The members of the tar stream with the padding after their data; ``src`` is at the
    member's data when it is yielded, and must be left there or at the end of data+padding."""
    ctx = _TarContext(src)
    seen: dict[bytes, int] = {}
    while True:
        block = src.read(512)
        if len(block) < 512:
            if block:
                raise InvalidParameter("layer tar stream ends inside a header")
            return  # no end-of-archive blocks: accepted, as tarfile does
        if block == _ZERO_BLOCK:
            return
        m = _fast_header(block, seen)
        if m is not None:
            if m.type in _FILE_TYPES:
                pad = -m.size % 512
                end = src.tell() + m.size + pad
            else:
                pad, end = 0, src.tell()
        else:
            start = src.tell() - 512
            src.seek(start)
            try:
                ti = tarfile.TarInfo.fromtarfile(ctx)  # type: ignore[arg-type]
            except tarfile.EOFHeaderError:
                return
            except tarfile.HeaderError as exc:
                raise InvalidParameter(f"layer is not a valid tar stream (at byte {start}): {exc}") from None
            m, end = _Member.of(ti), ctx.offset
            pad = end - src.tell() - m.size if m.type in _FILE_TYPES and m.tarinfo is None else 0
        yield m, pad
        if src.tell() != end:
            src.seek(end)


class _Applier:
    def __init__(self, root: str, handler: WhiteoutHandler, allow_devices: bool) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.dirs = _DirCache(self.root_fd)
        self.handler, self.allow_devices = handler, allow_devices
        self.written: set[str] = set()  # paths this layer wrote, and their ancestors
        self.whited: set[str] = set()  # paths this layer whited out (and not rewritten since)
        self.dir_times: list[tuple[str, int, int]] = []
        self.size = 0
        self.member = ""
        self.umask = 0o777 & ~_umask()
        self.root = os.geteuid() == 0 and os.getegid() == 0

    def close(self) -> None:
        self.dirs.close()
        os.close(self.root_fd)

    def keep(self, rel: str) -> bool:
        return rel in self.written

    def _wrote(self, rel: str) -> None:
        self.whited.discard(rel)
        self.written.add(rel)
        while (i := rel.rfind("/")) > 0:
            rel = rel[:i]
            if rel in self.written:
                break
            self.written.add(rel)

    def _removed(self, rel: str) -> None:
        self.dirs.forget(rel)
        if rel in self.written:
            prefix = rel + "/"
            self.written = {p for p in self.written if not p.startswith(prefix)}
            self.written.discard(rel)

    # -- directories --------------------------------------------------------------------------

    def _child_dir(self, parent: int, name: str, rel: str) -> int:
        try:
            return os.open(name, _O_DIR, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            if rel in self.written:
                kind = "a symlink" if stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode) else "not a directory"
                raise InvalidParameter(
                    f'layer member "{self.member}" would be written through "{rel}", which is '
                    f"{kind} in this layer; refusing to write through it"
                ) from None
            # A lower layer's symlink or file (or this layer's whiteout) becomes a directory.
            remove_entry(parent, name)
            self._removed(rel)
        os.mkdir(name, 0o755, dir_fd=parent)
        fd = os.open(name, _O_DIR, dir_fd=parent)
        os.fchmod(fd, 0o755)
        was_whited = rel in self.whited
        self._wrote(rel)
        if was_whited:  # lower content was deleted by this layer: keep it hidden
            self.handler.opaque(fd, rel, self.keep)
        return fd

    def _dirfd(self, parts: list[str]) -> int:
        return self.dirs.walk(parts, self._child_dir)

    # -- members ------------------------------------------------------------------------------

    def apply(self, src: _Source, m: _Member, pad: int = 0) -> None:
        self.member = m.name
        parts = split_member(m.name)
        if not parts:
            if m.type != _DIR:
                raise InvalidParameter(f'layer member "{m.name}" names the layer root but is not a directory')
            self._meta_fd(self.root_fd, m)
            self.dirs._note(self.root_fd)
            self.dir_times.append(("", *_times(m)))
            return
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, m)
            return
        pfd = self._dirfd(parts[:-1])
        rel = "/".join(parts)
        t = m.type
        if t in _FILE_TYPES:
            self._file(src, m, pfd, base, rel, pad)
        elif t == _DIR:
            self._dir(m, pfd, base, rel)
        elif t == _SYM:
            self._symlink(m, pfd, base, rel)
        elif t == _LNK:
            self._hardlink(m, pfd, base, rel)
        elif t in (_CHR, _BLK, _FIFO):
            self._special(m, pfd, base, rel)
        else:
            raise InvalidParameter(f'layer member "{m.name}" has unsupported tar type {m.type.decode(errors="replace")!r}')
        self._wrote(rel)

    def _replace(self, pfd: int, base: str, rel: str, make: Callable[[], int | None]) -> int | None:
        """Create with ``make``; if something is in the way, remove it (never follow it) and retry."""
        try:
            return make()
        except FileExistsError:
            remove_entry(pfd, base)
            self._removed(rel)
            return make()

    def _meta_fd(self, fd: int, m: _Member) -> None:
        os.fchown(fd, m.uid, m.gid)  # before chmod: chown clears setuid/setgid
        os.fchmod(fd, m.mode & 0o7777)
        _setxattrs(fd, m)

    def _file(self, src: _Source, m: _Member, pfd: int, base: str, rel: str, pad: int) -> None:
        mode = m.mode & 0o7777
        try:
            fd = os.open(base, _O_NEW, mode & 0o777, dir_fd=pfd)
        except FileExistsError:
            remove_entry(pfd, base)
            self._removed(rel)
            fd = os.open(base, _O_NEW, mode & 0o777, dir_fd=pfd)
        try:
            if m.tarinfo is not None:  # rare: let tarfile expand a sparse map
                data = tarfile.ExFileObject(_TarContext(src), m.tarinfo)  # type: ignore[arg-type]
                while chunk := data.read(_BUF):
                    _write_all(fd, memoryview(chunk))
            elif m.size:
                src.copy_to(fd, m.size, m.name, pad)
            if m.uid or m.gid or not self.root or pfd not in self.dirs.plain:
                os.fchown(fd, m.uid, m.gid)  # else it is already 0:0 (root, parent not setgid)
            if mode != mode & self.umask:  # the umask took bits, or setuid/setgid/sticky: set exactly
                os.fchmod(fd, mode)
            if m.pax_headers:
                _setxattrs(fd, m)
            os.utime(fd, ns=_times(m))
        finally:
            os.close(fd)
        self.size += m.size

    def _dir(self, m: _Member, pfd: int, base: str, rel: str) -> None:
        was_whited = rel in self.whited
        try:
            os.mkdir(base, 0o700, dir_fd=pfd)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(base, dir_fd=pfd).st_mode):
                remove_entry(pfd, base)
                self._removed(rel)
                os.mkdir(base, 0o700, dir_fd=pfd)
        fd = os.open(base, _O_DIR, dir_fd=pfd)
        try:
            self._meta_fd(fd, m)
        except BaseException:
            os.close(fd)
            raise
        self.dirs.put(rel, fd)
        self.dir_times.append((rel, *_times(m)))  # set at the end: entries inside change mtime
        if was_whited:
            self.whited.discard(rel)
            self.handler.opaque(fd, rel, self.keep)
            self.dirs.forget(rel, include_self=False)

    def _symlink(self, m: _Member, pfd: int, base: str, rel: str) -> None:
        target = m.linkname
        if not target:
            raise InvalidParameter(f'layer member "{m.name}" is a symlink with an empty target')
        if not target.startswith("/"):
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
            if resolved == ".." or resolved.startswith("../"):
                raise InvalidParameter(
                    f'layer member "{m.name}" is a symlink to "{target}", which points outside the layer root'
                )
        self._replace(pfd, base, rel, lambda: os.symlink(target, base, dir_fd=pfd))
        os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        os.utime(base, ns=_times(m), dir_fd=pfd, follow_symlinks=False)

    def _hardlink(self, m: _Member, pfd: int, base: str, rel: str) -> None:
        what = f'hardlink target of layer member "{m.name}"'
        tparts = split_member(m.linkname, what)
        trel = "/".join(tparts)
        if not tparts or trel == rel:
            raise InvalidParameter(f'{what} "{m.linkname}" is not a file in the layer')
        try:
            tfd = self.dirs.walk(tparts[:-1], _open_existing_dir)
            st = os.lstat(tparts[-1], dir_fd=tfd)
        except InvalidParameter as exc:
            raise InvalidParameter(f'{what} "{m.linkname}": {exc}') from None
        except FileNotFoundError:
            raise InvalidParameter(f'{what} "{m.linkname}" does not exist in the layer') from None
        if stat.S_ISDIR(st.st_mode):
            raise InvalidParameter(f'{what} "{m.linkname}" is a directory')
        if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and (
            not self.allow_devices or trel in self.whited
        ):
            raise InvalidParameter(f'{what} "{m.linkname}" is a device node')
        # pfd is still open: the cache evicts its least recently used entry, never the last two.
        self._replace(
            pfd,
            base,
            rel,
            lambda: os.link(tparts[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False),
        )

    def _special(self, m: _Member, pfd: int, base: str, rel: str) -> None:
        if m.type == _FIFO:
            kind, dev = stat.S_IFIFO, 0
        else:
            label = "character" if m.type == _CHR else "block"
            if not self.allow_devices:
                raise InvalidParameter(
                    f'layer member "{m.name}" is a {label} device ({m.devmajor}:{m.devminor}); '
                    "device nodes are not allowed in layers by this storage driver"
                )
            kind = stat.S_IFCHR if m.type == _CHR else stat.S_IFBLK
            dev = os.makedev(m.devmajor, m.devminor)
        self._replace(pfd, base, rel, lambda: os.mknod(base, kind | 0o600, dev, dir_fd=pfd))
        os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        # fifos and devices cannot be opened for fchmod; an O_PATH fd pins the inode instead.
        fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            os.chmod(f"/proc/self/fd/{fd}", m.mode & 0o7777)
            _setxattrs(f"/proc/self/fd/{fd}", m)
        finally:
            os.close(fd)
        os.utime(base, ns=_times(m), dir_fd=pfd, follow_symlinks=False)

    def _whiteout(self, parts: list[str], m: _Member) -> None:
        base = parts[-1]
        if base == WHITEOUT_OPAQUE:
            dfd = self._dirfd(parts[:-1])
            path = "/".join(parts[:-1])
            self.handler.opaque(dfd, path, self.keep)
            self.dirs.forget(path, include_self=False)
            return
        if base.startswith(WHITEOUT_META_PREFIX):  # aufs bookkeeping (.wh..wh.plnk ...): ignored
            return
        name = base[len(WHITEOUT_PREFIX) :]
        if name in ("", ".", ".."):
            raise InvalidParameter(f'layer member "{m.name}" is a whiteout of "{name}", which is not a file name')
        pfd = self._dirfd(parts[:-1])
        rel = "/".join(parts[:-1] + [name])
        remove_entry(pfd, name)
        self._removed(rel)
        self.handler.whiteout(pfd, name, rel, m.uid, m.gid)
        self.whited.add(rel)

    def finish(self) -> None:
        for rel, atime, mtime in reversed(self.dir_times):
            parts = rel.split("/") if rel else []
            try:
                if not parts:
                    os.utime(self.root_fd, ns=(atime, mtime))
                    continue
                pfd = self.dirs.walk(parts[:-1], _open_existing_dir)
                os.utime(parts[-1], ns=(atime, mtime), dir_fd=pfd, follow_symlinks=False)
            except (InvalidParameter, FileNotFoundError):
                continue  # removed or replaced later in the same layer


def apply_layer(
    root: str,
    stream: BinaryIO,
    *,
    whiteouts: WhiteoutHandler | None = None,
    allow_devices: bool = False,
) -> int:
    """Apply the uncompressed layer tar ``stream`` onto the directory ``root``.

    Returns the bytes of file content applied (the sum of regular members' sizes). Raises
    ``InvalidParameter`` naming the member for anything that would escape ``root`` or that the
    driver does not allow; on error ``root`` is left partly applied (drivers discard the layer).
    Reads the stream once, front to back, and consumes it to the end.
    """
    src = _Source(stream)
    ap = _Applier(root, whiteouts or NaiveWhiteouts(), allow_devices)
    try:
        for m, pad in _members(src):
            ap.apply(src, m, pad)
        ap.finish()
    finally:
        ap.close()
    src.drain()
    return ap.size


# ---------------------------------------------------------------------------------------------
# Walking trees and producing tars
# ---------------------------------------------------------------------------------------------


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


def _walk(dir_fd: int, rel: str) -> Iterator[Entry]:
    for name in sorted(os.listdir(dir_fd)):
        path = f"{rel}/{name}" if rel else name
        try:
            st = os.lstat(name, dir_fd=dir_fd)
            if not stat.S_ISDIR(st.st_mode):
                yield Entry(path, name, dir_fd, st)
                continue
            fd = os.open(name, _O_DIR, dir_fd=dir_fd)
        except OSError as exc:  # changed under us (a running container): skip it
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                continue
            raise
        try:
            yield Entry(path, name, dir_fd, os.fstat(fd), fd)
            yield from _walk(fd, path)
        finally:
            os.close(fd)


def iter_tree(root: str) -> Iterator[Entry]:
    """Every entry below ``root`` in sorted pre-order, never following symlinks."""
    fd = os.open(root, _O_DIR)
    try:
        yield from _walk(fd, "")
    finally:
        os.close(fd)


def _proc(parent_fd: int, name: str) -> str:
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


class _TarWriter:
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
        xattr_src: int | str = e.fd if e.fd is not None else _proc(e.parent_fd, e.name)
        if stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                ti.type, ti.linkname = tarfile.LNKTYPE, self.links[key]
                self.tf.addfile(ti)
                return
            rfd = os.open(e.name, _O_READ, dir_fd=e.parent_fd)
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
    w = _TarWriter(out)
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
        self._cache = _DirCache(os.open(root, _O_DIR))

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
            pfd = self._cache.walk(parts[:-1], _open_existing_dir)
            return Entry("/".join(parts), parts[-1], pfd, os.lstat(parts[-1], dir_fd=pfd))
        except (InvalidParameter, FileNotFoundError):
            return None

    def listdir(self, path: str) -> list[str]:
        parts = [p for p in path.split("/") if p]
        try:
            return os.listdir(self._cache.walk(parts, _open_existing_dir))
        except InvalidParameter:
            return []


def changes_tar(root: str, changes: Iterable[Change], out: BinaryIO) -> None:
    """Write the layer tar for ``changes`` taken from the tree at ``root`` (Docker's
    ExportChanges): deletions become ``.wh.NAME``, additions and modifications their entry."""
    w = _TarWriter(out)
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
                e.fd = os.open(e.name, _O_DIR, dir_fd=e.parent_fd)
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


# ---------------------------------------------------------------------------------------------
# Naive differ
# ---------------------------------------------------------------------------------------------


def _same_mtime(a: int, b: int) -> bool:
    # Layer tars carry whole seconds: a truncated time equals the precise one (as moby compares).
    return a == b or (a // 10**9 == b // 10**9 and (a % 10**9 == 0 or b % 10**9 == 0))


def _same_content(lfd: int, ufd: int, name: str) -> bool:
    a = os.open(name, _O_READ, dir_fd=lfd)
    try:
        b = os.open(name, _O_READ, dir_fd=ufd)
        try:
            while True:
                x, y = os.read(a, _BUF), os.read(b, _BUF)
                if x != y:
                    return False
                if not x:
                    return True
        finally:
            os.close(b)
    finally:
        os.close(a)


ContentCheck = Callable[[os.stat_result], bool]


def _differs(lfd: int, ufd: int, name: str, lst: os.stat_result, ust: os.stat_result, content: ContentCheck) -> bool:
    if (lst.st_mode, lst.st_uid, lst.st_gid) != (ust.st_mode, ust.st_uid, ust.st_gid):
        return True
    if not stat.S_ISDIR(ust.st_mode):
        if lst.st_rdev != ust.st_rdev or lst.st_size != ust.st_size:
            return True
        if not _same_mtime(lst.st_mtime_ns, ust.st_mtime_ns):
            return True
        if stat.S_ISLNK(ust.st_mode) and os.readlink(name, dir_fd=lfd) != os.readlink(name, dir_fd=ufd):
            return True
    if read_xattrs(_proc(lfd, name)) != read_xattrs(_proc(ufd, name)):
        return True
    return stat.S_ISREG(ust.st_mode) and content(ust) and not _same_content(lfd, ufd, name)


def _all_added(fd: int, rel: str, out: list[Change]) -> None:
    for e in _walk(fd, rel):
        out.append(Change("/" + e.path, ChangeKind.ADD))


def _diff(lfd: int | None, ufd: int, rel: str, out: list[Change], content: ContentCheck) -> bool:
    unames = os.listdir(ufd)
    lnames = set(os.listdir(lfd)) if lfd is not None else set()
    changed = False
    for name in lnames.difference(unames):
        out.append(Change(f"/{rel}/{name}" if rel else f"/{name}", ChangeKind.DELETE))
        changed = True
    for name in unames:
        path = f"{rel}/{name}" if rel else name
        ust = os.lstat(name, dir_fd=ufd)
        lst = os.lstat(name, dir_fd=lfd) if lfd is not None and name in lnames else None
        is_dir = stat.S_ISDIR(ust.st_mode)
        if lst is None or not _differs(lfd, ufd, name, lst, ust, content):  # type: ignore[arg-type]
            modified = False
        else:
            modified = True
            out.append(Change("/" + path, ChangeKind.MODIFY))
        if lst is None:
            out.append(Change("/" + path, ChangeKind.ADD))
        changed = changed or lst is None or modified
        if not is_dir:
            continue
        sub = os.open(name, _O_DIR, dir_fd=ufd)
        try:
            if lst is None or not stat.S_ISDIR(lst.st_mode):
                _all_added(sub, path, out)  # everything below a new directory is new
                continue
            lsub = os.open(name, _O_DIR, dir_fd=lfd)  # type: ignore[arg-type]
            try:
                if _diff(lsub, sub, path, out, content) and not modified:
                    # Docker lists a directory with changed children as modified.
                    out.append(Change("/" + path, ChangeKind.MODIFY))
                    changed = True
            finally:
                os.close(lsub)
        finally:
            os.close(sub)
    return changed


def diff_dirs(lower: str | None, upper: str, *, compare_content: ContentCheck | bool = True) -> list[Change]:
    """Docker's naive differ: what changed from the tree ``lower`` (None: empty) to ``upper``.

    A non-directory is modified if its type, mode, owner, device, size, mtime, link target or
    xattrs differ, or -- where ``compare_content`` says so for its stat -- its content; a
    directory if its mode, owner or xattrs differ, or anything below it changed. Deletions are
    reported for the topmost deleted path only; additions for every path. Sorted by path.
    """
    content: ContentCheck = (
        compare_content if callable(compare_content) else (lambda _st, _c=bool(compare_content): _c)
    )
    out: list[Change] = []
    ufd = os.open(upper, _O_DIR)
    try:
        lfd = os.open(lower, _O_DIR) if lower else None
        try:
            _diff(lfd, ufd, "", out, content)
        finally:
            if lfd is not None:
                os.close(lfd)
    finally:
        os.close(ufd)
    out.sort(key=lambda c: c.path)
    return out


# ---------------------------------------------------------------------------------------------
# Streaming a produced tar to a reader
# ---------------------------------------------------------------------------------------------


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
            out = open(wfd, "wb", buffering=_BUF)
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
    return io.BufferedReader(_PipeReader(rfd, thread, box), buffer_size=_BUF)  # type: ignore[return-value]
