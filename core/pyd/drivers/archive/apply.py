"""Applying a layer tar onto a directory: the security boundary (see the package docstring)."""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
import tarfile
import zlib
from typing import Any, BinaryIO, Callable, Protocol

from pyd.errors import InvalidParameter

from .paths import (
    BUF, O_DIR, O_NEW, OVERLAY_XATTR, PAX_XATTR, WHITEOUT_META_PREFIX, WHITEOUT_OPAQUE, WHITEOUT_PREFIX,
    DirCache, clear_dir, open_existing_dir, remove_entry, split_member,
)
from .tarread import (
    FILE_TYPES, T_BLK, T_CHR, T_DIR, T_FIFO, T_LNK, T_SYM, ZERO_BLOCK, Member, Source, TarContext, TarRecorder,
    fast_header, header_block, recording_of, slow_header, write_all,
)

log = logging.getLogger(__name__)


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


def _ns(t: float | int) -> int:
    return t * 1_000_000_000 if isinstance(t, int) else int(round(t * 1_000_000_000))


def _times(m: Member) -> tuple[int, int]:
    mtime = _ns(m.mtime)
    if not m.pax_headers:
        return mtime, mtime
    atime = m.pax_headers.get("atime")
    try:
        return (_ns(float(atime)) if atime else mtime), mtime
    except ValueError:
        return mtime, mtime


def _xattrs(m: Member) -> list[tuple[str, bytes]]:
    out = []
    for key, value in m.pax_headers.items():
        if key.startswith(PAX_XATTR):
            name = key[len(PAX_XATTR) :]
            if name.startswith(OVERLAY_XATTR):
                log.debug("dropping %s xattr of layer member %s", name, m.name)
                continue
            out.append((name, value.encode("utf-8", "surrogateescape")))
    return out


def _setxattrs(target: int | str, m: Member) -> None:
    for name, value in _xattrs(m):
        try:
            os.setxattr(target, name, value)
        except OSError as exc:  # not every filesystem takes every namespace (moby ignores these too)
            if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                raise
            log.debug("xattr %s of %s not set: %s", name, m.name, exc)


MAX_SYMLINK_HOPS = 40  # as the kernel's limit on nested symlinks


class _Applier:
    def __init__(self, root: str, handler: WhiteoutHandler, allow_devices: bool, resolve: bool = False,
                 recorder: TarRecorder | None = None) -> None:
        self.rec = recorder
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.dirs = DirCache(self.root_fd)
        self.handler, self.allow_devices, self.resolve = handler, allow_devices, resolve
        self.written: set[str] = set()  # paths this layer wrote, and their ancestors
        self.whited: set[str] = set()  # paths this layer whited out (and not rewritten since)
        self.dir_times: list[tuple[str, int, int]] = []
        self._last_dir: list[str] | None = None  # the last directory looked up, while valid
        self._last_key = ""
        self._prefix: str | None = None
        self._last_fd = -1
        self._last_gen = -1
        self._ns: dict[float, tuple[int, int]] = {}  # mtime -> (atime, mtime) in ns
        self.size = 0
        self.member = ""
        # Permission bits that survive the umask when a file is created with its final mode;
        # chmod is needed only when the tar's mode has others (or setuid/setgid/sticky).
        self.kept_bits = 0o777 & ~_umask()
        # New files of root in a non-setgid directory are already owned 0:0: no chown needed.
        self.root = os.geteuid() == 0 and os.getegid() == 0

    def close(self) -> None:
        self.dirs.close()
        os.close(self.root_fd)

    def keep(self, rel: str) -> bool:
        return rel in self.written

    def _wrote(self, rel: str) -> None:
        if self.whited:
            self.whited.discard(rel)
        written = self.written
        written.add(rel)
        while (i := rel.rfind("/")) > 0:
            rel = rel[:i]
            if rel in written:
                break
            written.add(rel)

    def _removed(self, rel: str) -> None:
        self.dirs.forget(rel)
        if rel in self.written:
            if self.rec is not None:
                self.rec.replaced(rel)
            prefix = rel + "/"
            self.written = {p for p in self.written if not p.startswith(prefix)}
            self.written.discard(rel)

    # -- directories --------------------------------------------------------------------------

    def _child_dir(self, parent: int, name: str, rel: str) -> int:
        try:
            return os.open(name, O_DIR, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            if self.resolve or rel in self.written:
                kind = "a symlink" if stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode) else "not a directory"
                raise InvalidParameter(
                    f'layer member "{self.member}" would be written through "{rel}", which is '
                    f"{kind} in this layer; refusing to write through it"
                ) from None
            # A lower layer's symlink or file (or this layer's whiteout) becomes a directory.
            remove_entry(parent, name)
            self._removed(rel)
        os.mkdir(name, 0o755, dir_fd=parent)
        fd = os.open(name, O_DIR, dir_fd=parent)
        os.fchmod(fd, 0o755)
        was_whited = rel in self.whited
        self._wrote(rel)
        if was_whited:  # lower content was deleted by this layer: keep it hidden
            self.handler.opaque(fd, rel, self.keep)
        return fd

    def _dirfd(self, parts: list[str]) -> int:
        # Members come sorted: most are in the directory of the one before. (Still marked
        # as used: the cache evicts the least recently used, and callers hold two fds.)
        dirs = self.dirs
        if parts == self._last_dir and dirs.generation == self._last_gen:
            if parts:
                dirs.fds.move_to_end(self._last_key)
            return self._last_fd
        fd = dirs.walk(parts, self._child_dir)
        key = "/".join(parts)
        self._last_dir, self._last_key, self._last_fd, self._last_gen = parts, key, fd, dirs.generation
        # What a member name in this directory starts with, if it is in normal form (no
        # "./", "//"); resolving members (pyd cp) take the long way.
        self._prefix = None if self.resolve else (key + "/" if key else "")
        return fd

    def _resolve(self, parts: list[str]) -> list[str]:
        """The real path of the directory ``parts`` inside the root, following symlinks the way
        a chroot would: absolute targets start at the root and ``..`` stops there. Each step is
        an lstat through directory fds opened with O_NOFOLLOW; nothing leaves the root."""
        real: list[str] = []
        todo = list(parts)
        hops = 0
        while todo:
            c = todo.pop(0)
            if c in ("", "."):
                continue
            if c == "..":
                if real:
                    real.pop()
                continue
            try:
                st = os.lstat(c, dir_fd=self.dirs.walk(real, open_existing_dir))
            except (FileNotFoundError, InvalidParameter):  # missing here or above: made later
                st = None
            if st is None or stat.S_ISDIR(st.st_mode):
                real.append(c)
                continue
            if not stat.S_ISLNK(st.st_mode):
                path = "/".join(real + [c])
                raise InvalidParameter(f'layer member "{self.member}" needs "{path}" to be a directory')
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise InvalidParameter(f'layer member "{self.member}": too many levels of symbolic links')
            target = os.readlink(c, dir_fd=self.dirs.walk(real, open_existing_dir))
            if target.startswith("/"):
                real = []
            todo = target.split("/") + todo
        return real

    # -- members ------------------------------------------------------------------------------

    def apply(self, src: Source, m: Member, pad: int = 0) -> None:
        name = self.member = m.name
        if m.type in FILE_TYPES and self.dirs.generation == self._last_gen:
            # The usual member: a file next to the one before. Its directory was checked and
            # opened then; only the base name needs a look.
            head, sep, base = name.rpartition("/")
            if head + sep == self._prefix and base and base != "." and base != ".." and base[:4] != ".wh.":
                self._file(src, m, self._last_fd, base, name, pad)
                if self.whited:
                    self.whited.discard(name)
                self.written.add(name)
                if head and head not in self.written:
                    self._wrote(head)
                return
        parts = name.split("/")
        if name[:1] == "/" or "" in parts or "." in parts or ".." in parts:
            parts = split_member(name)  # refuses or normalises
            name = "/".join(parts)
        if self.resolve and len(parts) > 1:
            parts = self._resolve(parts[:-1]) + parts[-1:]
            name = "/".join(parts)
        if not parts:
            if m.type != T_DIR:
                raise InvalidParameter(f'layer member "{m.name}" names the layer root but is not a directory')
            self._meta_fd(self.root_fd, m)
            self.dirs.note(self.root_fd)
            self.dir_times.append(("", *_times(m)))
            return
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, m)
            return
        pfd = self._dirfd(parts[:-1])
        rel = name
        t = m.type
        if t in FILE_TYPES:
            self._file(src, m, pfd, base, rel, pad)
        elif t == T_DIR:
            self._dir(m, pfd, base, rel)
        elif t == T_SYM:
            self._symlink(m, pfd, base, rel)
        elif t == T_LNK:
            self._hardlink(m, pfd, base, rel)
        elif t in (T_CHR, T_BLK, T_FIFO):
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

    def _meta_fd(self, fd: int, m: Member) -> None:
        os.fchown(fd, m.uid, m.gid)  # before chmod: chown clears setuid/setgid
        os.fchmod(fd, m.mode & 0o7777)
        _setxattrs(fd, m)

    def _file(self, src: Source, m: Member, pfd: int, base: str, rel: str, pad: int) -> None:
        mode = m.mode & 0o7777
        try:
            fd = os.open(base, O_NEW, mode & 0o777, dir_fd=pfd)
        except FileExistsError:
            remove_entry(pfd, base)
            self._removed(rel)
            fd = os.open(base, O_NEW, mode & 0o777, dir_fd=pfd)
        size = m.size
        try:
            if m.tarinfo is not None:  # rare: let tarfile expand a sparse map
                data = tarfile.ExFileObject(TarContext(src), m.tarinfo)  # type: ignore[arg-type]
                while chunk := data.read(BUF):
                    write_all(fd, memoryview(chunk))
            elif size:
                src.copy_to(fd, size, rel, pad, rel)
            if m.uid or m.gid or not self.root or pfd not in self.dirs.plain:
                os.fchown(fd, m.uid, m.gid)  # else it is already 0:0 (root, parent not setgid)
            if mode & self.kept_bits != mode:  # the umask took bits, or setuid/setgid/sticky: set exactly
                os.fchmod(fd, mode)
            if m.pax_headers:
                _setxattrs(fd, m)
                times = _times(m)
            else:
                times = self._ns.get(m.mtime) or self._times_of(m)
            os.utime(fd, ns=times)
        finally:
            os.close(fd)
        self.size += size

    def _times_of(self, m: Member) -> tuple[int, int]:
        """(atime, mtime) in ns of a member without PAX times, memoised by mtime."""
        if len(self._ns) > 4096:
            self._ns.clear()
        times = self._ns[m.mtime] = _times(m)
        return times

    def _dir(self, m: Member, pfd: int, base: str, rel: str) -> None:
        was_whited = rel in self.whited
        try:
            os.mkdir(base, 0o700, dir_fd=pfd)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(base, dir_fd=pfd).st_mode):
                remove_entry(pfd, base)
                self._removed(rel)
                os.mkdir(base, 0o700, dir_fd=pfd)
        fd = os.open(base, O_DIR, dir_fd=pfd)
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

    def _symlink(self, m: Member, pfd: int, base: str, rel: str) -> None:
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

    def _hardlink(self, m: Member, pfd: int, base: str, rel: str) -> None:
        what = f'hardlink target of layer member "{m.name}"'
        tparts = split_member(m.linkname, what)
        trel = "/".join(tparts)
        if not tparts or trel == rel:
            raise InvalidParameter(f'{what} "{m.linkname}" is not a file in the layer')
        try:
            tfd = self.dirs.walk(tparts[:-1], open_existing_dir)
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

    def _special(self, m: Member, pfd: int, base: str, rel: str) -> None:
        if m.type == T_FIFO:
            kind, dev = stat.S_IFIFO, 0
        else:
            label = "character" if m.type == T_CHR else "block"
            if not self.allow_devices:
                raise InvalidParameter(
                    f'layer member "{m.name}" is a {label} device ({m.devmajor}:{m.devminor}); '
                    "device nodes are not allowed in layers by this storage driver"
                )
            kind = stat.S_IFCHR if m.type == T_CHR else stat.S_IFBLK
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

    def _whiteout(self, parts: list[str], m: Member) -> None:
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

    def run(self, src: Source) -> None:
        """Apply every member of ``src``, front to back.

        The bulk of a layer is done inline here (at 20k members a layer, Python calls and
        look-ups are most of the cost): a regular file with a plain header, its data in the
        buffer, in the directory of the member before. Anything else (extension headers,
        other types, a name already taken) goes through ``apply``."""
        ctx = TarContext(src)
        seen: dict[bytes, Any] = {}
        rec, written, dirs = self.rec, self.written, self.dirs
        plain, kept, as_root, times = dirs.plain, self.kept_bits, self.root, self._ns
        o_open, o_write, o_utime, o_close, crc32 = os.open, os.write, os.utime, os.close, zlib.crc32
        while True:
            buf, i = src._buf, src._i
            if len(buf) - i >= 512 and (rec is None or src._rec_pos == src._raw - len(buf) + i):
                block = buf[i : i + 512]  # (header_block, inline)
                src._i = i = i + 512
                if rec is not None:
                    src._seg += block
                    src._rec_pos += 512
            else:
                block = header_block(src)
                buf, i = src._buf, src._i
            if len(block) < 512:
                if block:
                    raise InvalidParameter("layer tar stream ends inside a header")
                return  # no end-of-archive blocks: accepted, as tarfile does
            if block == ZERO_BLOCK:
                return
            m = fast_header(block, seen)
            if m is None:
                got = slow_header(src, ctx, block)
                if got is None:
                    return
                m, pad, end = got
            elif m[1] not in FILE_TYPES:
                pad, end = 0, src.tell()  # no data, whatever the size field says
            else:
                size = m[5]
                if size < 0:  # int() takes a sign
                    raise InvalidParameter(f'layer member "{m[0]}" has a negative size')
                pad = -size % 512
                end = src._raw - len(buf) + i + size + pad
                name = m[0]
                head, sep, base = name.rpartition("/")
                if (dirs.generation == self._last_gen and head + sep == self._prefix and len(buf) - i >= size + pad
                        and base and base != "." and base != ".." and base[:4] != ".wh."):
                    pfd, mode = self._last_fd, m[2] & 0o7777
                    try:
                        fd = o_open(base, O_NEW, mode & 0o777, dir_fd=pfd)
                    except FileExistsError:  # replaced: the general path
                        fd = -1
                    if fd >= 0:
                        try:
                            if size:
                                data = memoryview(buf)[i : i + size]
                                done = o_write(fd, data)
                                if done != size:
                                    write_all(fd, data[done:])
                                if rec is not None:
                                    seg = src._seg
                                    rec.content(name, size, crc32(data), seg)
                                    seg.clear()
                                    src._rec_pos += size + pad
                                    if pad:
                                        seg += memoryview(buf)[i + size : i + size + pad]
                                src._i = i + size + pad
                            if m[3] or m[4] or not as_root or pfd not in plain:
                                os.fchown(fd, m[3], m[4])  # else it is already 0:0 (see _file)
                            if mode & kept != mode:
                                os.fchmod(fd, mode)
                            o_utime(fd, ns=times.get(m[6]) or self._times_of(m))
                        finally:
                            o_close(fd)
                        self.size += size
                        if self.whited:
                            self.whited.discard(name)
                        written.add(name)
                        if head and head not in written:
                            self._wrote(head)
                        continue
            self.apply(src, m, pad)
            if src.tell() != end:
                src.seek(end)

    def finish(self) -> None:
        for rel, atime, mtime in reversed(self.dir_times):
            parts = rel.split("/") if rel else []
            try:
                if not parts:
                    os.utime(self.root_fd, ns=(atime, mtime))
                    continue
                pfd = self.dirs.walk(parts[:-1], open_existing_dir)
                os.utime(parts[-1], ns=(atime, mtime), dir_fd=pfd, follow_symlinks=False)
            except (InvalidParameter, FileNotFoundError):
                continue  # removed or replaced later in the same layer


def apply_layer(
    root: str,
    stream: BinaryIO,
    *,
    whiteouts: WhiteoutHandler | None = None,
    allow_devices: bool = False,
    resolve_symlinks: bool = False,
) -> int:
    """Apply the uncompressed layer tar ``stream`` onto the directory ``root``.

    Returns the bytes of file content applied (the sum of regular members' sizes). Raises
    ``InvalidParameter`` naming the member for anything that would escape ``root`` or that the
    driver does not allow; on error ``root`` is left partly applied (drivers discard the layer).
    Reads the stream once, front to back, and consumes it to the end.

    ``resolve_symlinks`` is for copying into a live tree (``pyd cp``): a parent directory that
    is a symlink is then followed as inside a chroot (confined to ``root``) instead of refused
    (made by this tar) or replaced by a directory (left by a lower layer). The member itself is
    still replaced, never written through, and hardlink targets never go through symlinks.

    A ``stream`` that asks to be recorded (see ``recording_of``: the image store's layer
    input does, to reproduce the tar on ``save``) is reported byte by byte to its recorder
    in this same pass; nothing is parsed twice.
    """
    recorder = None
    claimed = recording_of(stream)
    if claimed is not None:
        stream, recorder = claimed
    src = Source(stream, recorder)
    ap = _Applier(root, whiteouts or NaiveWhiteouts(), allow_devices, resolve_symlinks, recorder)
    try:
        ap.run(src)
        ap.finish()
    finally:
        ap.close()
    src.drain()
    return ap.size
