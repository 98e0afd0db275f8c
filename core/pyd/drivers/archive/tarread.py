"""Reading layer tar streams: a forward-only buffered source and a fast header parser.

Plain ustar/GNU/v7 headers of the common member types are parsed here (tarfile's pure-Python
parser alone costs about as much as GNU tar's whole extraction); PAX and GNU extension headers,
base-256 numbers and sparse files go through ``tarfile.TarInfo.fromtarfile``. tarfile never
extracts anything.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import tarfile
from typing import BinaryIO, Iterator

from pyd.errors import InvalidParameter

from .paths import BUF


class Source:
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
            chunk = self._fill(max(need, BUF))
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
            chunk = self._fill(min(skip, BUF))
            if not chunk:
                break
            skip -= len(chunk)
        return self.tell()

    def copy_to(self, fd: int, n: int, member: str, skip: int = 0) -> None:
        """Write the next ``n`` bytes to ``fd``, then skip ``skip`` bytes (tar padding)."""
        avail = len(self._buf) - self._i
        if avail >= n + skip:  # the common case: a small file inside the buffer
            if n:
                write_all(fd, memoryview(self._buf)[self._i : self._i + n])
            self._i += n + skip
            return
        if avail:
            take = min(avail, n)
            write_all(fd, memoryview(self._buf)[self._i : self._i + take])
            self._i += take
            n -= take
        if n >= BUF and self._fd >= 0:
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
            chunk = self._fill(BUF if n < BUF else min(n, 8 * BUF))
            if not chunk:
                raise InvalidParameter(f'layer tar stream ends inside member "{member}"')
            take = min(len(chunk), n)
            write_all(fd, memoryview(chunk)[:take])
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
        while self._stream.read(BUF):
            pass


def write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


# Member types
T_REG, T_AREG, T_CONT = b"0", b"\0", b"7"
FILE_TYPES = (T_REG, T_AREG, T_CONT)
T_DIR, T_SYM, T_LNK, T_CHR, T_BLK, T_FIFO = b"5", b"2", b"1", b"3", b"4", b"6"
FAST_TYPES = frozenset((*FILE_TYPES, T_DIR, T_SYM, T_LNK, T_CHR, T_BLK, T_FIFO))
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_ZERO_BLOCK = bytes(512)
_NO_PAX: dict[str, str] = {}  # shared, never written to


class Member:
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
    def of(cls, ti: tarfile.TarInfo) -> Member:
        t = T_REG if ti.type == tarfile.GNUTYPE_SPARSE else ti.type
        return cls(ti.name, t, ti.mode, ti.uid, ti.gid, ti.size, ti.mtime, ti.linkname, ti.devmajor,
                   ti.devminor, ti.pax_headers, ti if ti.sparse is not None else None)


def _octal(field: bytes) -> int:
    # int() takes the spaces tar writers pad with, not NULs; NUL-then-garbage fields fail here
    # (ValueError) and go to tarfile's parser.
    return int(field.replace(b"\0", b"") or b"0", 8)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _fast_header(block: bytes, seen: dict[bytes, int]) -> Member | None:
    """Parse a plain ustar/GNU/v7 header; None for anything tarfile must handle (PAX and GNU
    extension headers, base-256 numbers, unknown types, a checksum it should judge). ``seen``
    memoises numeric fields, which repeat from member to member (modes, owners, times)."""
    (name, mode, uid, gid, size, mtime, chksum, type_, linkname, magic, _version, _uname, _gname,
     devmajor, devminor, prefix) = _HEADER.unpack(block)
    if type_ not in FAST_TYPES or (block[124] | block[108] | block[116] | block[136]) & 0x80:
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
        if type_ == T_AREG and text.endswith("/"):
            type_ = T_DIR
        if type_ == T_DIR:
            text = text.rstrip("/")
        dev = (_octal(devmajor), _octal(devminor)) if type_ in (T_CHR, T_BLK) else (0, 0)
        return Member(text, type_, mode_i, uid_i, gid_i, _octal(size), mtime_i,
                       _text(linkname) if linkname[0] else "", dev[0], dev[1], _NO_PAX)
    except ValueError:
        return None


class TarContext:
    """The attributes tarfile's header parser uses from a TarFile (for the slow path)."""

    def __init__(self, src: Source) -> None:
        self.fileobj, self.encoding, self.errors = src, "utf-8", "surrogateescape"
        self.pax_headers: dict[str, str] = {}
        self.offset = 0


def read_members(src: Source) -> Iterator[tuple[Member, int]]:
    """The members of the tar stream with the padding after their data; ``src`` is at the
    member's data when it is yielded, and must be left there or at the end of data+padding."""
    ctx = TarContext(src)
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
            if m.type in FILE_TYPES:
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
            m, end = Member.of(ti), ctx.offset
            pad = end - src.tell() - m.size if m.type in FILE_TYPES and m.tarinfo is None else 0
        yield m, pad
        if src.tell() != end:
            src.seek(end)
