"""pyd.drivers.archive on plain directories: tar parsing paths, safety, differ and producers."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
import threading
import zlib
from pathlib import Path

import pytest

from pyd.drivers.archive import (
    apply_layer,
    changes_size,
    changes_tar,
    diff_dirs,
    iter_tree,
    layer_tar,
    tar_stream,
    tree_size,
)
from pyd.drivers.graph import Change, ChangeKind
from pyd.errors import InvalidParameter
from pyd.testing.graphdriver import LayerTar, snapshot

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ownership, mknod)")


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getnames()


def test_empty_stream_and_end_blocks_only(tmp_path: Path) -> None:
    assert apply_layer(str(tmp_path), io.BytesIO(b"")) == 0
    assert apply_layer(str(tmp_path), io.BytesIO(bytes(10240))) == 0
    assert list(tmp_path.iterdir()) == []


def test_garbage_and_truncation_are_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter):
        apply_layer(str(tmp_path), io.BytesIO(b"this is not a tar archive" * 40))
    data = LayerTar().file("big", b"x" * 5000).stream().getvalue()
    with pytest.raises(InvalidParameter, match="ends inside"):
        apply_layer(str(tmp_path), io.BytesIO(data[:2048]))
    with pytest.raises(InvalidParameter, match="inside a header"):
        apply_layer(str(tmp_path), io.BytesIO(data[:300]))


@root_only
def test_formats_gnu_pax_longnames_and_xattrs(tmp_path: Path) -> None:
    """Plain ustar headers take the fast path; PAX, GNU long names and base-256 fields go
    through tarfile's parser. Both must give the same result."""
    long = "d/" + "n" * 150 + "/" + "f" * 120
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            for name, data, uid in (("a", b"A", 0), ("ünï", b"U", 0), ("big-uid", b"B", 3_000_000)):
                if fmt == tarfile.USTAR_FORMAT and uid > 0o7777777:
                    continue
                ti = tarfile.TarInfo(name)
                ti.size, ti.uid, ti.mtime = len(data), uid, 1_650_000_000
                tf.addfile(ti, io.BytesIO(data))
            if fmt != tarfile.USTAR_FORMAT:
                ti = tarfile.TarInfo(long)
                ti.size = 3
                tf.addfile(ti, io.BytesIO(b"LLL"))
        dest = tmp_path / str(fmt)
        dest.mkdir()
        buf.seek(0)
        assert apply_layer(str(dest), buf) >= 2
        assert (dest / "a").read_bytes() == b"A"
        assert (dest / "ünï").read_bytes() == b"U"
        assert (dest / "a").stat().st_mtime == 1_650_000_000
        if fmt != tarfile.USTAR_FORMAT:
            assert (dest / long).read_bytes() == b"LLL"
            assert (dest / "big-uid").stat().st_uid == 3_000_000
    xdest = tmp_path / "x"
    xdest.mkdir()
    apply_layer(str(xdest), LayerTar().file("f", b"1", xattrs={"user.k": b"\xff\x00bin",
                                                              "trusted.overlay.opaque": b"y"}).stream())
    assert os.getxattr(xdest / "f", "user.k") == b"\xff\x00bin"
    assert "trusted.overlay.opaque" not in os.listxattr(xdest / "f"), "overlayfs metadata taken from a tar"


def test_sparse_member(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.seek(1 << 20)
        f.write(b"end")
    subprocess.run(["tar", "--sparse", "-C", str(src), "-cf", str(tmp_path / "s.tar"), "sparse"], check=True)
    dest = tmp_path / "dest"
    dest.mkdir()
    with open(tmp_path / "s.tar", "rb") as f:
        apply_layer(str(dest), f)
    data = (dest / "sparse").read_bytes()
    assert len(data) == (1 << 20) + 3 and data.endswith(b"end") and not data[:-3].strip(b"\0")


def test_stream_from_pipe_is_consumed_to_the_end(tmp_path: Path) -> None:
    data = LayerTar().dir("d").file("d/f", os.urandom(3 << 20)).file("g", b"g").stream().getvalue()
    data += bytes(20480)  # record padding after the end-of-archive blocks
    r, w = os.pipe()
    t = threading.Thread(target=lambda: (os.write(w, data), os.close(w)))
    t.start()
    with open(r, "rb") as f:
        assert apply_layer(str(tmp_path), f) == (3 << 20) + 1
        assert f.read() == b"", "the rest of the stream was not consumed"
    t.join()
    assert (tmp_path / "g").read_bytes() == b"g"


def test_regular_file_stream_uses_its_own_position(tmp_path: Path) -> None:
    payload = os.urandom(2 << 20)
    tar = tmp_path / "t.tar"
    tar.write_bytes(b"JUNK" + LayerTar().file("f", payload).stream().getvalue())
    dest = tmp_path / "d"
    dest.mkdir()
    with open(tar, "rb") as f:
        f.read(4)
        assert apply_layer(str(dest), f) == len(payload)
        assert f.tell() == tar.stat().st_size
    assert (dest / "f").read_bytes() == payload


@root_only
def test_metadata_is_exactly_as_in_the_tar(tmp_path: Path) -> None:
    t = LayerTar().dir("d", mode=0o2750, gid=5).file("d/s", b"s", mode=0o4711, uid=7, gid=8)
    t.file("plain", b"p", mode=0o640).fifo("fifo", 0o604).symlink("ln", "/d/s", uid=3, gid=4)
    old = os.umask(0o077)  # the result must not depend on the daemon's umask
    try:
        apply_layer(str(tmp_path), t.stream())
    finally:
        os.umask(old)
    st = os.lstat(tmp_path / "d/s")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4711, 7, 8)
    st = os.lstat(tmp_path / "d")
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o2750, 5)
    assert stat.S_IMODE(os.lstat(tmp_path / "plain").st_mode) == 0o640
    assert stat.S_IMODE(os.lstat(tmp_path / "fifo").st_mode) == 0o604
    st = os.lstat(tmp_path / "ln")
    assert (st.st_uid, st.st_gid, os.readlink(tmp_path / "ln")) == (3, 4, "/d/s")
    assert os.lstat(tmp_path / "d").st_mtime == 1_600_000_000  # set after its content


@root_only
def test_new_file_in_setgid_dir_gets_the_tar_group(tmp_path: Path) -> None:
    apply_layer(str(tmp_path), LayerTar().dir("g", mode=0o2775, gid=50).file("g/f", b"x").stream())
    assert os.lstat(tmp_path / "g/f").st_gid == 0


def test_existing_entries_are_replaced_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "t").write_text("keep")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside / "t", root / "f")  # as a lower layer could have left it
    os.mkdir(root / "dir")
    (root / "dir/old").write_text("old")
    apply_layer(str(root), LayerTar().file("f", b"new").file("dir", b"now a file").stream())
    assert (outside / "t").read_text() == "keep"
    assert not (root / "f").is_symlink() and (root / "f").read_bytes() == b"new"
    assert (root / "dir").read_bytes() == b"now a file"


def test_whiteouts_and_opaque_with_naive_handler(tmp_path: Path) -> None:
    apply_layer(str(tmp_path), LayerTar().dir("a").file("a/x", b"x").dir("o").file("o/old", b"o")
                .dir("o/sub").file("o/sub/deep", b"d").file("keep", b"k").stream())
    # the opaque marker comes after an entry of the same layer: it must survive
    apply_layer(str(tmp_path), LayerTar().dir("o").dir("o/sub").file("o/sub/new", b"n").opaque("o")
                .whiteout("a").stream())
    assert snapshot(tmp_path).keys() == {"keep", "o", "o/sub", "o/sub/new"}


def test_whiteout_then_same_name_directory_hides_old_content(tmp_path: Path) -> None:
    apply_layer(str(tmp_path), LayerTar().dir("a").file("a/old", b"o").stream())
    apply_layer(str(tmp_path), LayerTar().whiteout("a").dir("a").file("a/new", b"n").stream())
    assert sorted(os.listdir(tmp_path / "a")) == ["new"]


def test_layer_tar_and_changes_tar_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    apply_layer(str(src.mkdir() or src), LayerTar().dir("d").file("d/f", b"data").symlink("l", "d/f")
                .hardlink("h", "d/f").file("e", b"").stream())
    out = io.BytesIO()
    layer_tar(str(src), out)
    assert names(out.getvalue()) == ["d", "d/f", "e", "h", "l"]
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        assert tf.getmember("h").islnk() and tf.getmember("h").linkname == "d/f"
    copy = tmp_path / "copy"
    copy.mkdir()
    apply_layer(str(copy), io.BytesIO(out.getvalue()))
    assert snapshot(copy) == snapshot(src)
    assert os.stat(copy / "h").st_ino == os.stat(copy / "d/f").st_ino
    changes = [Change("/d", ChangeKind.MODIFY), Change("/d/f", ChangeKind.ADD), Change("/gone", ChangeKind.DELETE)]
    out = io.BytesIO()
    changes_tar(str(src), changes, out)
    assert names(out.getvalue()) == ["d", "d/f", ".wh.gone"]
    assert changes_size(str(src), changes) == 4 and tree_size(str(src)) == 4


def test_diff_dirs(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    t = LayerTar().dir("etc").file("etc/passwd", b"root").file("etc/same", b"s").dir("gone")
    t.file("gone/x", b"x").symlink("ln", "etc/passwd").file("t", b"t")
    for d in (lower, upper):
        d.mkdir()
        apply_layer(str(d), LayerTar().dir("etc").file("etc/passwd", b"root").file("etc/same", b"s")
                    .dir("gone").file("gone/x", b"x").symlink("ln", "etc/passwd").file("t", b"t").stream())
    assert diff_dirs(str(lower), str(upper)) == []
    apply_layer(str(upper), LayerTar().file("etc/passwd", b"ROOT").whiteout("gone").symlink("ln", "t")
                .dir("t").file("t/n", b"n").dir("new").file("new/f", b"f").stream())
    got = [(c.path, c.kind) for c in diff_dirs(str(lower), str(upper))]
    assert got == [
        ("/etc", ChangeKind.MODIFY),
        ("/etc/passwd", ChangeKind.MODIFY),  # same size and mtime: found by content
        ("/gone", ChangeKind.DELETE),
        ("/ln", ChangeKind.MODIFY),
        ("/new", ChangeKind.ADD),
        ("/new/f", ChangeKind.ADD),
        ("/t", ChangeKind.MODIFY),
        ("/t/n", ChangeKind.ADD),
    ]
    # without content comparison, a same-size same-mtime edit is invisible (moby's behaviour)
    assert ("/etc/passwd", ChangeKind.MODIFY) not in [
        (c.path, c.kind) for c in diff_dirs(str(lower), str(upper), compare_content=False)
    ]
    assert [c.kind for c in diff_dirs(None, str(lower))] == [ChangeKind.ADD] * 7


def test_iter_tree_never_follows_symlinks(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    os.symlink("/", tmp_path / "d/root")
    assert [e.path for e in iter_tree(str(tmp_path))] == ["d", "d/root"]


def test_tar_stream_passes_errors_to_the_reader_and_stops_on_close() -> None:
    def boom(out: io.BufferedWriter) -> None:
        out.write(b"partial")
        raise InvalidParameter("layer vanished")

    released = threading.Event()
    with pytest.raises(InvalidParameter, match="vanished"):
        with tar_stream(boom, on_close=released.set) as s:
            s.read()
    assert released.wait(5)

    def endless(out: io.BufferedWriter) -> None:
        while True:
            out.write(b"x" * 65536)

    done = threading.Event()
    s = tar_stream(endless, on_close=done.set)
    assert s.read(10) == b"x" * 10
    s.close()
    assert done.wait(5), "the producer did not stop when the reader closed"


def test_resolve_symlinks_follows_inside_the_root_only(tmp_path: Path) -> None:
    """``resolve_symlinks`` (pyd cp into a container): parents that are symlinks are followed
    as in a chroot, never out of the root."""
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    for d in ("usr/lib", "etc", "tmp"):
        (root / d).mkdir(parents=True)
    os.symlink("usr/lib", root / "lib")
    os.symlink("/etc", root / "etc2")  # absolute: the container's /etc
    os.symlink("../../../../../../../" + str(outside).lstrip("/"), root / "up")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    (root / "file").write_text("f")
    os.symlink("file", root / "tofile")
    t = LayerTar().file("lib/x", b"x").file("etc2/passwd", b"p").file("up/pwned", b"!")
    t.symlink("evil", str(outside)).file("evil/deep", b"d")
    apply_layer(str(root), t.stream(), resolve_symlinks=True)
    assert os.listdir(outside) == []
    assert (root / "usr/lib/x").read_bytes() == b"x" and (root / "lib").is_symlink()
    assert (root / "etc/passwd").read_bytes() == b"p"
    inside = root / str(outside).lstrip("/")  # where both links land: ".." stops at the root
    assert (inside / "pwned").read_bytes() == b"!" and (inside / "deep").read_bytes() == b"d"
    with pytest.raises(InvalidParameter, match=r'contains ".."'):
        apply_layer(str(root), LayerTar().file("etc2/../usr/lib/y", b"y").stream(), resolve_symlinks=True)
    with pytest.raises(InvalidParameter, match="too many levels"):
        apply_layer(str(root), LayerTar().file("loop1/x", b"x").stream(), resolve_symlinks=True)
    with pytest.raises(InvalidParameter, match="to be a directory"):
        apply_layer(str(root), LayerTar().file("tofile/x", b"x").stream(), resolve_symlinks=True)


# -- streams that arrive in pieces, and recording ----------------------------------------------


class _Trickle(io.RawIOBase):
    """A stream whose reads return at most ``step`` bytes (an upload's pieces)."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def, override]
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


class _Recorder:
    """A TarRecorder that keeps what it is told."""

    def __init__(self) -> None:
        self.parts: list[bytes | tuple[str, int, int]] = []
        self.lost: list[str] = []

    def raw(self, data) -> None:  # type: ignore[no-untyped-def]
        self.parts.append(bytes(data))

    def content(self, path: str, size: int, crc: int, before: bytes = b"") -> None:
        if before:
            self.parts.append(bytes(before))
        self.parts.append((path, size, crc))

    def replaced(self, path: str) -> None:
        self.lost.append(path)


class _Claimable(io.RawIOBase):
    """A stream asking its reader to record it (as the image store's layer input does)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.recorder, self.claimed = inner, _Recorder(), False

    def readable(self) -> bool:
        return True

    def claim_recording(self):  # type: ignore[no-untyped-def]
        self.claimed = True
        return self.inner, self.recorder


def _tricky_tars() -> list[bytes]:
    """PAX and GNU extension headers, long names, xattrs, empty and large files, links."""
    long = "d/" + "n" * 150 + "/" + "f" * 120
    pax = (LayerTar().dir("d").dir("d/" + "n" * 150).file(long, b"long name")
           .file("x", b"with xattr", xattrs={"user.k": b"v"}).file("empty")
           .file("big", os.urandom(3 << 20 | 123)).hardlink("hl", "big").symlink("sl", "x")
           .stream().getvalue())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in (("g" * 200, b"gnu long"), ("short", b"s" * 700)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return [pax + bytes(4096), buf.getvalue()]


def _rebuild(rec: _Recorder, root: Path) -> bytes:
    out = []
    for part in rec.parts:
        if isinstance(part, bytes):
            out.append(part)
        else:
            path, size, crc = part
            data = (root / path).read_bytes()
            assert len(data) == size and zlib.crc32(data) == crc, path
            out.append(data)
    return b"".join(out)


@pytest.mark.parametrize("step", [100, 511, 513, 1000, 70_000, 1 << 22])
def test_headers_across_read_boundaries_and_recording(tmp_path: Path, step: int) -> None:
    """A stream that arrives in pieces parses as a whole one (an extension header may
    straddle two reads), and a recorded apply reports every byte once, in order: the raw
    bytes and the files' contents give back the tar exactly."""
    for i, data in enumerate(_tricky_tars()):
        plain = tmp_path / f"plain{i}"
        plain.mkdir()
        apply_layer(str(plain), io.BytesIO(data))
        dest = tmp_path / f"rec{i}"
        dest.mkdir()
        stream = _Claimable(_Trickle(data, step))
        apply_layer(str(dest), stream)
        assert stream.claimed
        assert snapshot(str(dest)) == snapshot(str(plain))
        assert _rebuild(stream.recorder, dest) == data
        assert stream.recorder.lost == []


def test_recording_notes_content_a_later_member_replaces(tmp_path: Path) -> None:
    cases = {
        "written twice": LayerTar().file("f", b"first").file("f", b"second"),
        "whited out": LayerTar().dir("d").file("d/f", b"x").whiteout("d/f"),
        "directory whited out": LayerTar().dir("d").file("d/f", b"x").whiteout("d"),
        "replaced by a link": LayerTar().file("f", b"x").file("g", b"y").hardlink("f", "g"),
    }
    for what, tar in cases.items():
        dest = tmp_path / what.replace(" ", "-")
        dest.mkdir()
        stream = _Claimable(io.BytesIO(tar.stream().getvalue()))
        apply_layer(str(dest), stream)
        assert stream.recorder.lost, what
    dest = tmp_path / "clean"
    dest.mkdir()
    stream = _Claimable(io.BytesIO(LayerTar().dir("d").file("d/f", b"x").dir("d").file("g").stream().getvalue()))
    apply_layer(str(dest), stream)
    assert stream.recorder.lost == []


def test_negative_size_is_refused_not_looped_on(tmp_path: Path) -> None:
    """int() and tarfile take a sign in a numeric field: a member with size -512 would make
    the reader step back onto its own header forever."""
    for fmt in (tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT):
        ti = tarfile.TarInfo("a" * (120 if fmt == tarfile.PAX_FORMAT else 1))
        ti.size = 5
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            tf.addfile(ti, io.BytesIO(b"hello"))
        blob = bytearray(buf.getvalue())
        at = blob.rfind(b"00000000005\0", 0, len(blob) - 1024)  # the member's size field
        blob[at : at + 12] = b"-0000001000\0"
        head = at - 124
        blob[head + 148 : head + 156] = b"        "
        blob[head + 148 : head + 156] = b"%06o\0 " % sum(blob[head : head + 512])
        with pytest.raises(InvalidParameter, match="negative size"):
            apply_layer(str(tmp_path), io.BytesIO(bytes(blob)))
