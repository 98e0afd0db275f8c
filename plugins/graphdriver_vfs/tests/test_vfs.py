"""What is specific to vfs: full copies, the copy-time stamp of the differ, its options."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from pyd.drivers.graph import ChangeKind, CreateRequest
from pyd.errors import InvalidOption, InvalidParameter
from pyd.registry import Kind, PluginRegistry
from pyd.testing.graphdriver import LayerTar, snapshot

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="layers set ownership: needs root"),
]


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    d = PluginRegistry().init_driver(Kind.GRAPHDRIVER, "vfs", home=tmp_path / "vfs", options={})
    yield d
    d.cleanup()


def layer(driver: Any, parent: str | None = None, tar: LayerTar | None = None, rw: bool = False) -> str:
    lid = uuid.uuid4().hex
    (driver.create_rw if rw else driver.create)(CreateRequest(lid, parent))
    if tar is not None:
        driver.apply_diff(lid, parent, tar.stream())
    return lid


def test_child_is_a_full_independent_copy(driver: Any) -> None:
    t = LayerTar().dir("d", mode=0o2750, gid=3).file("d/suid", b"s", mode=0o4755, uid=5)
    t.file("d/x", b"x", xattrs={"user.note": b"hi"}).hardlink("d/x2", "d/x").symlink("ln", "d/x")
    t.fifo("pipe", 0o600).file("empty", b"")
    base = layer(driver, None, t)
    child = layer(driver, base)
    bdir, cdir = driver.get(base), driver.get(child)
    try:
        assert snapshot(cdir) == snapshot(bdir)
        assert os.stat(f"{cdir}/d/x").st_ino == os.stat(f"{cdir}/d/x2").st_ino, "hardlink split"
        assert os.stat(f"{cdir}/d/x").st_ino != os.stat(f"{bdir}/d/x").st_ino, "not a copy"
        assert os.stat(f"{cdir}/d").st_mtime == os.stat(f"{bdir}/d").st_mtime
        Path(cdir, "d/x").write_bytes(b"changed")
        assert Path(bdir, "d/x").read_bytes() == b"x"
    finally:
        driver.put(base)
        driver.put(child)


def test_same_size_same_mtime_edit_is_a_change(driver: Any) -> None:
    base = layer(driver, None, LayerTar().file("a", b"aaaa").file("b", b"bbbb"))
    rw = layer(driver, base, rw=True)
    root = driver.get(rw)
    try:
        st = os.stat(f"{root}/a")
        Path(root, "a").write_bytes(b"AAAA")
        os.utime(f"{root}/a", ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        driver.put(rw)
    assert [(c.path, c.kind) for c in driver.changes(rw, base)] == [("/a", ChangeKind.MODIFY)]
    assert driver.diff_size(rw, base) == 4


def test_changes_against_an_older_ancestor(driver: Any) -> None:
    base = layer(driver, None, LayerTar().file("a", b"a"))
    l1 = layer(driver, base, LayerTar().file("b", b"b"))
    l2 = layer(driver, l1, LayerTar().file("c", b"c").whiteout("a"))
    got = {(c.path, c.kind) for c in driver.changes(l2, base)}
    assert got == {("/a", ChangeKind.DELETE), ("/b", ChangeKind.ADD), ("/c", ChangeKind.ADD)}


def test_options(driver: Any, tmp_path: Path) -> None:
    with pytest.raises(InvalidOption, match=r'unknown option "colour"; valid keys: size'):
        driver.parse_layer_options({"colour": "red"})
    with pytest.raises(InvalidOption, match="project quotas"):
        driver.parse_layer_options({"size": "10G"})
    with pytest.raises(InvalidOption, match="not a size"):
        driver.parse_layer_options({"size": "big"})
    lid = uuid.uuid4().hex
    with pytest.raises(InvalidOption):
        driver.create_rw(CreateRequest(lid, None, storage_opts={"size": "1G"}))
    assert not driver.exists(lid)
    assert driver.parse_layer_options({}) == {}


def test_failed_create_leaves_nothing(driver: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyd_graphdriver_vfs.driver as vfs_driver

    base = layer(driver, None, LayerTar().file("a", b"a"))

    def broken(src: str, dst: str) -> bool:
        Path(dst, "half").write_bytes(b"")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vfs_driver, "copy_tree", broken)
    lid = uuid.uuid4().hex
    with pytest.raises(OSError):
        driver.create(CreateRequest(lid, base))
    assert not driver.exists(lid)
    assert sorted(os.listdir(Path(driver.home, "dir"))) == [base]
    assert sorted(os.listdir(Path(driver.home, "meta"))) == [base]


def test_wrong_parent_and_bad_ids(driver: Any) -> None:
    base = layer(driver)
    other = layer(driver)
    child = layer(driver, base)
    with pytest.raises(InvalidParameter, match="its parent is"):
        driver.apply_diff(child, other, LayerTar().stream())
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(InvalidParameter):
            driver.create(CreateRequest(bad))
        assert not driver.exists(bad)


def test_status_and_metadata(driver: Any) -> None:
    base = layer(driver)
    assert dict(driver.status())["Backing Filesystem"]
    assert driver.metadata(base) == {"Dir": os.path.join(driver.home, "dir", base)}
    assert stat.S_IMODE(os.stat(driver.metadata(base)["Dir"]).st_mode) == 0o755
