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
import zlib
from operator import itemgetter as _item
from typing import Any, BinaryIO, Protocol

from pyd.errors import InvalidParameter

from .paths import BUF


class TarRecorder(Protocol):
    """Told every byte of a layer stream, in stream order, as ``apply_layer`` consumes it.

    What lets an image store give back the layer's tar byte for byte without keeping a copy
    (moby's tar-split): ``raw`` gets the bytes that are not regular-file content (headers,
    extension records, padding, the end-of-archive blocks and whatever follows them), in
    batches; ``content`` stands for the next ``size`` bytes, a regular file's data, written
    to the layer at ``path`` (normalised) and with CRC-32 ``crc``, and takes the raw bytes
    just before it as ``before`` (one call per file). Byte arguments are valid only during
    the call. ``replaced`` says that what this layer wrote at ``path`` (with all below it)
    was removed by a later member: content recorded there cannot be read back. Called in
    the thread that applies the layer; must not block for long.
    """

    def raw(self, data: bytes | bytearray | memoryview) -> None: ...

    def content(self, path: str, size: int, crc: int, before: bytes | bytearray = b"") -> None: ...

    def replaced(self, path: str) -> None: ...


def recording_of(stream: BinaryIO) -> tuple[BinaryIO, TarRecorder] | None:
    """``(raw stream, recorder)`` if ``stream`` asks its reader to record it (it has a
    ``claim_recording()`` method that returns them), else None. After a successful claim the
    raw stream is read instead, and the recording is done in the same pass as the parse."""
    claim = getattr(stream, "claim_recording", None)
    return claim() if callable(claim) else None


class Source:
    """Forward-only reader over the layer stream for tarfile: a large buffer, and file data
    copied with copy_file_range when the stream is a regular file (no pass through Python).

    With a ``recorder``, every byte is reported to it exactly once, in order (skipped bytes
    are read, never seeked over, and file data passes through here to get its CRC)."""

    def __init__(self, stream: BinaryIO, recorder: TarRecorder | None = None) -> None:
        self._stream, self._fd, self._raw = stream, -1, 0
        # Recording: bytes up to _rec_pos are reported or in _seg, raw bytes not yet handed
        # over (one call per file instead of one per header and padding).
        self._rec, self._rec_pos, self._seg = recorder, 0, bytearray()
        try:
            if recorder is None and stream.seekable() and stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                self._fd, self._raw = stream.fileno(), stream.tell()
        except (AttributeError, OSError, ValueError):
            pass
        self._buf, self._i = b"", 0
        if recorder is not None:
            self.copy_to = self._copy_recorded  # type: ignore[method-assign]

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
            if self._rec is not None:
                self._record(out)
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
        out = b"".join(parts)
        if self._rec is not None:
            self._record(out)
        return out

    def unread(self, data: bytes) -> None:
        """Put ``data``, the bytes just read, back in front of the stream."""
        self._buf = data + self._buf[self._i :]
        self._i = 0

    def _record(self, out: bytes) -> None:
        """Record what ``read`` just returned as raw bytes, less what was recorded before
        (tarfile's parser re-reads a header after the fast parser gave up on it)."""
        end = self._raw - (len(self._buf) - self._i)
        if end > self._rec_pos:
            start = end - len(out)
            self._seg += out if start >= self._rec_pos else memoryview(out)[self._rec_pos - start :]
            self._rec_pos = end
            if len(self._seg) >= BUF:
                self.flush_record()

    def flush_record(self) -> None:
        """Hand the raw bytes gathered so far to the recorder."""
        if self._seg:
            self._rec.raw(self._seg)  # type: ignore[union-attr]
            self._seg.clear()

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
        if self._rec is not None:  # every skipped byte is reported
            while skip > 0:
                got = len(self.read(min(skip, BUF)))
                if not got:
                    break
                skip -= got
            return self.tell()
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

    def copy_to(self, fd: int, n: int, member: str, skip: int = 0, path: str = "") -> None:
        """Write the next ``n`` bytes to ``fd``, then skip ``skip`` bytes (tar padding).
        ``path`` is where the data lands in the layer, for the recorder. (A recording
        source has ``_copy_recorded`` in its place.)"""
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

    def _copy_recorded(self, fd: int, n: int, member: str, skip: int, path: str) -> None:
        rec, seg = self._rec, self._seg
        assert rec is not None
        i, buf = self._i, self._buf
        if len(buf) - i >= n + skip:  # the common case: a small file and its padding at hand
            data = memoryview(buf)[i : i + n]
            done = os.write(fd, data)
            if done != n:  # a short write (rare): the rest
                write_all(fd, data[done:])
            rec.content(path or member, n, zlib.crc32(data), seg)
            seg.clear()
            self._rec_pos += n + skip
            if skip:
                seg += memoryview(buf)[i + n : i + n + skip]
            self._i = i + n + skip
            return
        if seg:
            rec.raw(seg)
            seg.clear()
        crc, size = 0, n
        while n > 0:
            avail = len(self._buf) - self._i
            if not avail:
                chunk = self._fill(BUF if n < BUF else min(n, 8 * BUF))
                if not chunk:
                    raise InvalidParameter(f'layer tar stream ends inside member "{member}"')
                self._buf, self._i, avail = chunk, 0, len(chunk)
            take = min(avail, n)
            data = memoryview(self._buf)[self._i : self._i + take]
            crc = zlib.crc32(data, crc)
            write_all(fd, data)
            self._i += take
            n -= take
        rec.content(path or member, size, crc)
        self._rec_pos += size
        if skip:
            self.read(skip)

    def drain(self) -> None:
        """Consume the rest of the stream (trailing padding), so a hashing reader sees it all."""
        if self._rec is not None:
            while self.read(BUF):
                pass
            self.flush_record()
            return
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
# name, mode+uid+gid (memoised together), size, mtime, chksum, type, linkname, magic, (version,
# uname, gname: skipped), devmajor, devminor, prefix
_HEADER = struct.Struct("100s24s12s12s8sc100s6s66x8s8s155s12x")
ZERO_BLOCK = bytes(512)
_adler32 = zlib.adler32
_NO_PAX: dict[str, str] = {}  # shared, never written to


class Member(tuple):  # type: ignore[type-arg]
    """What the applier needs of a tar header (lighter than ``tarfile.TarInfo``).

    A tuple with named fields, made by ``_member(Member, (...))`` without a Python-level
    constructor: one per member of a 20k-file layer adds up."""

    __slots__ = ()
    name: str = property(_item(0))  # type: ignore[assignment]
    type: bytes = property(_item(1))  # type: ignore[assignment]
    mode: int = property(_item(2))  # type: ignore[assignment]
    uid: int = property(_item(3))  # type: ignore[assignment]
    gid: int = property(_item(4))  # type: ignore[assignment]
    size: int = property(_item(5))  # type: ignore[assignment]
    mtime: float = property(_item(6))  # type: ignore[assignment]
    linkname: str = property(_item(7))  # type: ignore[assignment]
    devmajor: int = property(_item(8))  # type: ignore[assignment]
    devminor: int = property(_item(9))  # type: ignore[assignment]
    pax_headers: dict[str, str] = property(_item(10))  # type: ignore[assignment]
    tarinfo: tarfile.TarInfo | None = property(_item(11))  # type: ignore[assignment]

    @classmethod
    def of(cls, ti: tarfile.TarInfo) -> Member:
        t = T_REG if ti.type == tarfile.GNUTYPE_SPARSE else ti.type
        return _member(cls, (ti.name, t, ti.mode, ti.uid, ti.gid, ti.size, ti.mtime, ti.linkname, ti.devmajor,
                             ti.devminor, ti.pax_headers, ti if ti.sparse is not None else None))


_member = tuple.__new__


def _octal(field: bytes) -> int:
    # int() takes the spaces tar writers pad with, not NULs; NUL-then-garbage fields fail here
    # (ValueError) and go to tarfile's parser.
    return int(field.replace(b"\0", b"") or b"0", 8)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def fast_header(block: bytes, seen: dict[bytes, Any]) -> Member | None:
    """Parse a plain ustar/GNU/v7 header; None for anything tarfile must handle (PAX and GNU
    extension headers, base-256 numbers, unknown types, a checksum it should judge). ``seen``
    memoises numeric fields, which repeat from member to member (modes, owners, times)."""
    name, owner, size, mtime, chksum, type_, linkname, magic, devmajor, devminor, prefix = _HEADER.unpack(block)
    if type_ not in FAST_TYPES:  # (base-256 numbers fail int() below: tarfile's)
        return None
    try:
        # The header's byte sum with the checksum field as spaces; adler32's low half is
        # 1 + the byte sum mod 65521, exact for 256 bytes (sum() of 512 bytes costs 4x more).
        if int(chksum.replace(b"\0", b"") or b"0", 8) != (
            (_adler32(block[:256]) & 0xFFFF) + (_adler32(block[256:]) & 0xFFFF) + 254 - sum(chksum)
        ):
            return None
        ids = seen.get(owner)
        if ids is None:
            if len(seen) > 4096:
                seen.clear()
            ids = seen[owner] = (_octal(owner[:8]), _octal(owner[8:16]), _octal(owner[16:]))
        mtime_i = seen.get(mtime)
        if mtime_i is None:
            mtime_i = seen[mtime] = _octal(mtime)
        text = name.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if prefix[0] and magic == b"ustar\0":
            text = _text(prefix) + "/" + text
        if type_ == T_DIR or (type_ == T_AREG and text.endswith("/")):
            type_, text = T_DIR, text.rstrip("/")
        elif type_ in (T_CHR, T_BLK):
            return _member(Member, (text, type_, ids[0], ids[1], ids[2], _octal(size), mtime_i, "",
                                    _octal(devmajor), _octal(devminor), _NO_PAX, None))
        return _member(Member, (text, type_, ids[0], ids[1], ids[2], int(size.replace(b"\0", b"") or b"0", 8),
                                mtime_i, _text(linkname) if linkname[0] else "", 0, 0, _NO_PAX, None))
    except ValueError:
        return None


class TarContext:
    """The attributes tarfile's header parser uses from a TarFile (for the slow path)."""

    def __init__(self, src: Source) -> None:
        self.fileobj, self.encoding, self.errors = src, "utf-8", "surrogateescape"
        self.pax_headers: dict[str, str] = {}
        self.offset = 0


def header_block(src: Source) -> bytes:
    """The next 512-byte block (shorter at the end of the stream), recorded as raw bytes."""
    buf, i = src._buf, src._i
    if len(buf) - i >= 512 and (src._rec is None or src._rec_pos == src._raw - len(buf) + i):
        block = buf[i : i + 512]  # the usual case: the header is at hand (and new)
        src._i = i + 512
        if src._rec is not None:
            src._seg += block
            src._rec_pos += 512
        return block
    return src.read(512)


def slow_header(src: Source, ctx: TarContext, block: bytes) -> tuple[Member, int, int] | None:
    """The member whose header ``block`` (just read) the fast parser declined, parsed by
    tarfile: ``(member, padding after its data, stream offset after it)``, None at the end."""
    start = src.tell() - 512
    src.unread(block)  # (a seek back could fall before the buffer's start)
    try:
        ti = tarfile.TarInfo.fromtarfile(ctx)  # type: ignore[arg-type]
    except tarfile.EOFHeaderError:
        return None
    except tarfile.HeaderError as exc:
        raise InvalidParameter(f"layer is not a valid tar stream (at byte {start}): {exc}") from None
    m, end = Member.of(ti), ctx.offset
    if m.size < 0 or end < src.tell():  # int() takes a sign, and tarfile then loops: refused
        raise InvalidParameter(f'layer member "{m.name}" has a negative size')
    pad = end - src.tell() - m.size if m.type in FILE_TYPES and m.tarinfo is None else 0
    return m, pad, end
