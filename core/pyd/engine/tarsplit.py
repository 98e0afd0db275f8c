"""Byte-exact layer tars without keeping a copy: record the tar's framing, not its content.

An image config names its layers by diff ID, the sha256 of the *uncompressed tar exactly as
it was imported*. ``save`` must reproduce those bytes, or the archive would fail its own
digest check on ``load``. Like moby's tar-split, we record, while a layer streams into the
graph driver, every byte that is not regular-file content (headers, PAX/GNU records,
padding, the end-of-archive blocks) and, for each regular file, its path, size and CRC-32.
Reassembly reads the file contents back from the layer's mounted tree.

``TarSplitRecorder`` is told those bytes by ``pyd.drivers.archive.apply_layer`` in the pass
that applies the layer (the tar is parsed once, the CRCs are taken on data already in
memory); ``TarSplitWriter`` parses the raw stream itself, for a driver that reads the
layer without ``apply_layer``. Both write records of the same format.

Format (zlib-compressed): ``b"PYDTS1\\n"`` then records ``b"S" u32 len bytes`` (raw bytes)
and ``b"F" u16 len path u64 size u32 crc`` (file content), ending with ``b"E" u64 total``.
"""

from __future__ import annotations

import os
import posixpath
import queue
import stat
import struct
import threading
import zlib
from typing import BinaryIO, Iterator

from pyd.engine.rootfs_path import open_in_root
from pyd.errors import PydError

MAGIC = b"PYDTS1\n"
_ZERO_BLOCK = bytes(512)
_FLUSH_AT = 1 << 20
# Entry types that carry no content whatever their size field says (as Go's and Python's
# tar readers treat them); their payload is never skipped.
_HEADER_ONLY = frozenset(b"123456")
_REGULAR = frozenset(b"07\0")
_REGULAR_TYPES = frozenset((b"0", b"7", b"\0"))
_META = frozenset(b"xgLK")

_H, _FILE, _META_DATA, _INLINE, _PAD, _TRAILER = range(6)
_SEG = struct.Struct(">cI").pack
_FILE_HEAD = struct.Struct(">cH").pack
_QI = struct.Struct(">QI").pack


def _parse_number(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        value = int.from_bytes(field[1:], "big")
        return -value if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip(b" \0")
    return int(text, 8) if text else 0


def _norm(path: bytes) -> bytes:
    # Fast path for the usual "./a/b" or "a/b/" (normpath is costly at 20k entries a layer).
    while path.startswith(b"./"):
        path = path[2:]
    path = path.strip(b"/")
    if b"//" in path or b"/./" in path or b"/.." in path or path.startswith(b".") or path.endswith(b"/."):
        path = posixpath.normpath(b"/" + path).lstrip(b"/")
    return path


class TarSplitRecorder:
    """Writes the split record of a tar whose bytes it is told of, in order: the
    ``pyd.drivers.archive.TarRecorder`` that ``apply_layer`` feeds while it parses the layer,
    so the tar is parsed once. Close it after the whole stream was reported.

    ``reproducible`` turns False when a file's content cannot be read back unchanged (the same
    tar writes the path twice or deletes it again); ``save`` then refuses that layer rather
    than emit wrong bytes. ``total`` is the length of the tar. Records are compressed and
    written by a thread of the recorder's own, off the applying thread (zlib releases the GIL).
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = _Deflater(out)
        self._pending = bytearray(MAGIC)  # records not yet compressed (batched: zlib per call is slow)
        self.total = 0
        self.reproducible = True

    def raw(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if n:
            pending = self._pending
            pending += _SEG(b"S", n)
            pending += data
            self.total += n
            if len(pending) >= _FLUSH_AT:
                self._flush()

    def content(self, path: str, size: int, crc: int, before: bytes | bytearray = b"") -> None:
        pending = self._pending
        if before:
            pending += _SEG(b"S", len(before))
            pending += before
            self.total += len(before)
        name = path.encode("utf-8", "surrogateescape")
        self.total += size
        if len(name) > 0xFFFF:  # cannot be recorded (nor, in practice, created)
            self.reproducible = False
            return
        pending += _FILE_HEAD(b"F", len(name))
        pending += name
        pending += _QI(size, crc)
        if len(pending) >= _FLUSH_AT:
            self._flush()

    def replaced(self, path: str) -> None:
        self.reproducible = False

    def _flush(self) -> None:
        self._out.write(self._pending)  # handed over, not copied: a new buffer takes its place
        self._pending = bytearray()

    def close(self) -> None:
        """Finish the record (the stream must have been reported to its end) and wait until
        it is written."""
        self._pending += b"E" + struct.pack(">Q", self.total)
        self._flush()
        self._out.close()

    def abort(self) -> None:
        """Stop the writer thread without finishing the record."""
        self._out.abort()


class _Deflater:
    """Compresses blocks and writes them to ``out`` on a thread, in order."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._q: queue.SimpleQueue[bytes | bytearray | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._aborted = False
        self._thread = threading.Thread(target=self._run, name="pyd-tarsplit", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        z = zlib.compressobj(1)
        try:
            while (block := self._q.get()) is not None:
                if not self._aborted:
                    self._out.write(z.compress(block))
            if not self._aborted:
                self._out.write(z.flush())
        except BaseException as exc:  # raised by close()
            self._error = exc
            while self._q.get() is not None:  # let writers finish
                pass

    def write(self, block: bytes | bytearray) -> None:
        self._q.put(block)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        if self._thread.is_alive():
            self._aborted = True
            self._q.put(None)
            self._thread.join()


class TarSplitWriter(TarSplitRecorder):
    """The recorder for a tar that nobody parses for it: fed the raw stream chunk by chunk
    (``feed``), it parses the tar framing itself. Used when a graph driver reads the layer
    stream without ``apply_layer``.

    Never raises on a malformed tar: it falls back to storing the rest of the stream raw
    (the graph driver's extractor is what rejects bad input).
    """

    def __init__(self, out: BinaryIO) -> None:
        super().__init__(out)
        self._seg = bytearray()  # raw bytes gathered into one S record per file
        self._files: set[str] = set()
        self._hdr = bytearray()
        self._state = _H
        self._remaining = 0
        self._pad = 0
        self._meta = bytearray()
        self._meta_type = 0
        self._pax_path: bytes | None = None
        self._pax_size: int | None = None
        self._long_name: bytes | None = None
        self._crc = 0
        self._path = ""
        self._size = 0

    def raw(self, data: bytes | bytearray | memoryview) -> None:
        self._seg += data
        if len(self._seg) >= _FLUSH_AT:
            self._flush_segment()

    def content(self, path: str, size: int, crc: int, before: bytes | bytearray = b"") -> None:
        if before:
            self._seg += before
        self._flush_segment()
        super().content(path, size, crc)

    def _flush_segment(self) -> None:
        if self._seg:
            super().raw(self._seg)
            self._seg.clear()

    def entry(self, path: str, type_: bytes) -> None:
        """Note entries that replace or delete file content written earlier in this tar.

        (An entry below a path this tar wrote as a file fails to apply anyway.)
        """
        files = self._files
        if path in files:
            self.reproducible = False
        slash = path.rfind("/")
        if path.startswith(".wh.", slash + 1):  # a whiteout (rare): what does it delete?
            target = path[: slash + 1] + path[slash + 5 :]
            if target in files or any(f.startswith(target + "/") for f in files):
                self.reproducible = False
        if type_ in _REGULAR_TYPES:
            files.add(path)

    # -- input --------------------------------------------------------------------------

    def feed(self, data: bytes | memoryview) -> None:
        mv = memoryview(data)
        n = len(mv)
        i = 0
        while i < n:
            st = self._state
            if st == _H:
                if not self._hdr and n - i >= 512:  # the usual case: a whole block at hand
                    block = bytes(mv[i : i + 512])
                    i += 512
                else:
                    take = min(512 - len(self._hdr), n - i)
                    self._hdr += mv[i : i + take]
                    i += take
                    if len(self._hdr) < 512:
                        continue
                    block = bytes(self._hdr)
                    self._hdr.clear()
                self.raw(block)
                try:
                    self._header(block)
                except (ValueError, IndexError):
                    self._state = _TRAILER
            elif st == _FILE:
                take = min(self._remaining, n - i)
                self._crc = zlib.crc32(mv[i : i + take], self._crc)
                i += take
                self._remaining -= take
                if self._remaining == 0:
                    self.content(self._path, self._size, self._crc)
                    self._state = _PAD if self._pad else _H
            elif st in (_META_DATA, _INLINE):
                take = min(self._remaining, n - i)
                part = mv[i : i + take]
                self.raw(part)
                if st == _META_DATA:
                    self._meta += part
                i += take
                self._remaining -= take
                if self._remaining == 0:
                    if st == _META_DATA:
                        try:
                            self._parse_meta()
                        except (ValueError, IndexError):
                            self._state = _TRAILER
                            continue
                    self._state = _PAD if self._pad else _H
            elif st == _PAD:
                take = min(self._pad, n - i)
                self.raw(mv[i : i + take])
                i += take
                self._pad -= take
                if self._pad == 0:
                    self._state = _H
            else:
                self.raw(mv[i:])
                i = n

    def _header(self, block: bytes) -> None:
        if block == _ZERO_BLOCK:
            self._state = _TRAILER  # end of archive: whatever follows is kept raw
            return
        typeflag = block[156]
        size = self._pax_size if self._pax_size is not None else _parse_number(block[124:136])
        if size < 0:
            raise ValueError("negative size")
        self._pad = (-size) % 512
        if typeflag in _META:
            self._meta_type = typeflag
            self._meta.clear()
            self._remaining = size
            self._state = _META_DATA if size else (_PAD if self._pad else _H)
            return
        path = _norm(self._pax_path or self._long_name or self._ustar_name(block)).decode("utf-8", "surrogateescape")
        self._pax_path = self._pax_size = self._long_name = None
        self.entry(path, bytes((typeflag,)))
        if typeflag in _HEADER_ONLY:
            self._pad = 0
            self._state = _H
        elif typeflag in _REGULAR and size > 0:
            self._path, self._size, self._crc, self._remaining = path, size, 0, size
            self._state = _FILE
        elif typeflag == ord("S"):
            self._state = _TRAILER  # old GNU sparse framing: keep the rest raw
        else:
            self._remaining = size
            self._state = _INLINE if size else _H

    @staticmethod
    def _ustar_name(block: bytes) -> bytes:
        name = block[0:100].split(b"\0", 1)[0]
        if block[257:263] == b"ustar\0":
            prefix = block[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        return name

    def _parse_meta(self) -> None:
        data = bytes(self._meta)
        if self._meta_type == ord("L"):
            self._long_name = data.split(b"\0", 1)[0]
        elif self._meta_type == ord("x"):
            pos = 0
            while pos < len(data):
                sp = data.index(b" ", pos)
                length = int(data[pos:sp])
                if length <= 0:
                    raise ValueError("bad pax record")
                record = data[sp + 1 : pos + length - 1]
                key, _, value = record.partition(b"=")
                if key == b"path":
                    self._pax_path = value
                elif key == b"size":
                    self._pax_size = int(value)
                elif key.startswith(b"GNU.sparse."):
                    raise ValueError("pax sparse file")
                pos += length

    def close(self) -> None:
        """Finish the record (the stream must have been fed to its end)."""
        if self._hdr:
            self.raw(bytes(self._hdr))
            self._hdr.clear()
        if self._state not in (_H, _TRAILER, _PAD):
            self.reproducible = False  # truncated inside a file
        self._flush_segment()
        super().close()


class LayerNotReproducible(PydError):
    """The stored layer content no longer matches the record of its tar."""


def read_total(path: str | os.PathLike[str]) -> int:
    """The size in bytes of the tar that ``path`` records."""
    data = _decompress(path)
    if len(data) < len(MAGIC) + 9 or data[-9:-8] != b"E":
        raise LayerNotReproducible(f"tar-split record {path} is incomplete")
    return struct.unpack(">Q", data[-8:])[0]


def _decompress(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as f:
        data = zlib.decompress(f.read())
    if not data.startswith(MAGIC):
        raise LayerNotReproducible(f"{path} is not a tar-split record")
    return data


def reassemble(path: str | os.PathLike[str], root: str, what: str, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Yield the original tar, reading file contents from the layer tree at ``root``.

    Each file is opened with in-root resolution and checked against its recorded size and
    CRC; a mismatch raises ``LayerNotReproducible`` naming ``what`` and the path.
    """
    data = _decompress(path)
    pos = len(MAGIC)
    end = len(data)
    while pos < end:
        kind = data[pos]
        pos += 1
        if kind == ord("S"):
            (length,) = struct.unpack_from(">I", data, pos)
            pos += 4
            yield data[pos : pos + length]
            pos += length
        elif kind == ord("F"):
            (plen,) = struct.unpack_from(">H", data, pos)
            pos += 2
            rel = data[pos : pos + plen].decode("utf-8", "surrogateescape")
            pos += plen
            size, crc = struct.unpack_from(">QI", data, pos)
            pos += 12
            yield from _read_file(root, rel, size, crc, what, chunk)
        elif kind == ord("E"):
            return
        else:
            raise LayerNotReproducible(f"tar-split record for {what} is corrupt")
    raise LayerNotReproducible(f"tar-split record for {what} is truncated")


def _read_file(root: str, rel: str, size: int, crc: int, what: str, chunk: int) -> Iterator[bytes]:
    try:
        fd = open_in_root(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise LayerNotReproducible(f"{what}: cannot read /{rel} back from the layer: {exc.strerror}") from exc
    with os.fdopen(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise LayerNotReproducible(f"{what}: /{rel} is no longer a regular file in the layer")
        left, got = size, 0
        while left:
            buf = f.read(min(chunk, left))
            if not buf:
                break
            got = zlib.crc32(buf, got)
            left -= len(buf)
            yield buf
        if left or got != crc:
            raise LayerNotReproducible(f"{what}: content of /{rel} differs from the imported layer")
