"""What is specific to overlay2: on-disk layout, short links and deep chains, native diff
format, read-only image layers, redundant whiteouts, host checks."""

from __future__ import annotations

import errno
import io
import os
import stat
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from pyd.drivers.graph import ChangeKind, CreateRequest
from pyd.errors import InvalidOption, InvalidParameter, NotSupported
from pyd.registry import Kind, PluginRegistry
from pyd.testing.graphdriver import LayerTar, mounts_under, snapshot

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts need root"),
]


def init(home: Path, options: dict[str, str] | None = None) -> Any:
    try:
        return PluginRegistry().init_driver(Kind.GRAPHDRIVER, "overlay2", home=home, options=options or {})
    except NotSupported as exc:
        pytest.skip(str(exc))


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    d = init(tmp_path / "overlay2")
    yield d
    d.cleanup()
    assert not mounts_under(tmp_path)


def layer(driver: Any, parent: str | None = None, tar: LayerTar | None = None, rw: bool = False) -> str:
    lid = uuid.uuid4().hex
    (driver.create_rw if rw else driver.create)(CreateRequest(lid, parent))
    if tar is not None:
        driver.apply_diff(lid, parent, tar.stream())
    return lid


def test_layout_and_short_links(driver: Any) -> None:
    home = Path(driver.home)
    base = layer(driver)
    child = layer(driver, base)
    rw = layer(driver, child, rw=True)
    links = {lid: (home / lid / "link").read_text() for lid in (base, child, rw)}
    for lid, link in links.items():
        assert len(link) == 26 and link.isalnum()
        assert os.readlink(home / "l" / link) == f"../{lid}/diff"
    assert not (home / base / "lower").exists() and not (home / base / "work").exists()
    assert (home / child / "lower").read_text() == f"l/{links[base]}"
    assert (home / rw / "lower").read_text() == f"l/{links[child]}:l/{links[base]}"
    assert {p.name for p in (home / rw).iterdir()} >= {"diff", "link", "lower", "work", "merged"}
    driver.remove(rw)
    assert not (home / "l" / links[rw]).exists()


def test_metadata(driver: Any) -> None:
    base = layer(driver)
    child = layer(driver, base)
    rw = layer(driver, child, rw=True)
    home = driver.home
    assert driver.metadata(rw) == {
        "LowerDir": f"{home}/{child}/diff:{home}/{base}/diff",
        "UpperDir": f"{home}/{rw}/diff",
        "WorkDir": f"{home}/{rw}/work",
        "MergedDir": f"{home}/{rw}/merged",
    }
    assert "LowerDir" not in driver.metadata(base)
    status = dict(driver.status())
    assert status["Supports d_type"] == "true" and status["Native Overlay Diff"] == "true"
    assert status["Backing Filesystem"]


def test_deep_chain_mounts_with_relative_paths(driver: Any) -> None:
    """120 lower dirs do not fit a page as absolute paths; the driver mounts relative ones."""
    parent = None
    for i in range(120):
        parent = layer(driver, parent, LayerTar().file(f"f{i:03d}", str(i).encode()))
    assert 120 * len(f"{driver.home}/l/{'X' * 26}:") > os.sysconf("SC_PAGESIZE")
    rw = layer(driver, parent, rw=True)
    root = driver.get(rw)
    try:
        assert len(os.listdir(root)) == 120
        assert Path(root, "f000").read_text() == "0" and Path(root, "f119").read_text() == "119"
    finally:
        driver.put(rw)
    top = parent
    for _ in range(9):  # the last of these has 128 lower layers: the most allowed
        top = layer(driver, top)
    with pytest.raises(InvalidParameter, match="at most 128"):
        layer(driver, top)


def test_native_diff_uses_overlay_whiteouts(driver: Any) -> None:
    base = layer(driver, None, LayerTar().dir("d").file("d/x", b"x").file("gone", b"g").dir("o").file("o/old", b"o"))
    l1 = layer(driver, base, LayerTar().whiteout("gone").dir("o").opaque("o").file("o/new", b"n"))
    diff = Path(driver.home, l1, "diff")
    st = os.lstat(diff / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(diff / "o", "trusted.overlay.opaque") == b"y"
    with driver.diff(l1, base) as s:
        data = s.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert sorted(members) == [".wh.gone", "o", "o/.wh..wh..opq", "o/new"]
    assert all(m.isreg() or m.isdir() for m in members.values())
    assert "SCHILY.xattr.trusted.overlay.opaque" not in members["o"].pax_headers
    got = {(c.path, c.kind) for c in driver.changes(l1, base)}
    assert got == {("/gone", ChangeKind.DELETE), ("/o", ChangeKind.MODIFY), ("/o/new", ChangeKind.ADD),
                   ("/o/old", ChangeKind.DELETE)}
    assert driver.diff_size(l1, base) == 1


def test_only_whiteouts_that_hide_something_are_recorded(driver: Any) -> None:
    base = layer(driver, None, LayerTar().file(".wh.nothing-below").dir("a").file("a/x", b"x").dir("a/b")
                 .file("a/b/y", b"y"))
    assert os.listdir(Path(driver.home, base, "diff")) == ["a"]
    l1 = layer(driver, base, LayerTar().whiteout("a/b/y").dir("a").opaque("a").dir("a/b").whiteout("a/b/y")
               .whiteout("a/x").whiteout("zz"))
    assert not (Path(driver.home, l1, "diff") / "zz").exists()
    rw = layer(driver, l1, rw=True)
    root = driver.get(rw)
    try:
        listed = sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))
        assert listed == ["a", "a/b"], "a whiteout shows up in a listing"
    finally:
        driver.put(rw)


def test_image_layers_mount_read_only(driver: Any) -> None:
    base = layer(driver, None, LayerTar().file("a", b"a"))
    l1 = layer(driver, base, LayerTar().file("b", b"b"))
    root = driver.get(l1)
    try:
        assert sorted(os.listdir(root)) == ["a", "b"]
        with pytest.raises(OSError) as err:
            Path(root, "c").write_bytes(b"c")
        assert err.value.errno == errno.EROFS
    finally:
        driver.put(l1)


def test_a_restarted_driver_reuses_and_removes_stale_mounts(driver: Any, tmp_path: Path) -> None:
    base = layer(driver, None, LayerTar().file("a", b"a"))
    rw = layer(driver, base, rw=True)
    merged = driver.get(rw)
    again = init(tmp_path / "overlay2")  # a new daemon on the same home, knowing no references
    assert again.get(rw) == merged
    assert mounts_under(merged) == [merged], "mounted twice"
    again.put(rw)
    assert mounts_under(merged) == []
    driver.get(rw)  # the old instance still counts one reference: it mounts again
    fresh = init(tmp_path / "overlay2")
    fresh.remove(rw)  # stale mount, no references in this instance: unmounted and removed
    assert not fresh.exists(rw) and not mounts_under(tmp_path)


def test_naive_diff_against_an_older_ancestor(driver: Any) -> None:
    base = layer(driver, None, LayerTar().file("a", b"a").file("k", b"k"))
    l1 = layer(driver, base, LayerTar().file("b", b"b"))
    l2 = layer(driver, l1, LayerTar().whiteout("a"))
    assert {(c.path, c.kind) for c in driver.changes(l2, base)} == {("/a", ChangeKind.DELETE), ("/b", ChangeKind.ADD)}
    with driver.diff(l2, base) as s:
        data = s.read()
    copy = layer(driver, base)
    driver.apply_diff(copy, base, io.BytesIO(data))
    views = []
    for lid in (l2, copy):
        root = driver.get(lid)
        views.append(snapshot(root))
        driver.put(lid)
    assert views[0] == views[1]
    assert driver.diff_size(l2, base) == 1
    assert not mounts_under(driver.home)


def test_options_list_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(InvalidOption, match="valid keys: overlay2.override_kernel_check, overlay2.size"):
        init(tmp_path / "h", {"overlay2.mountopt": "nodev"})
    with pytest.raises(InvalidOption, match="project quotas"):
        init(tmp_path / "h", {"overlay2.size": "20G"})
    d = init(tmp_path / "h", {"overlay2.override_kernel_check": "1"})
    with pytest.raises(InvalidOption, match=r'unknown option "overlay2.size"; valid keys: size'):
        d.parse_layer_options({"overlay2.size": "1G"})
    with pytest.raises(InvalidOption, match="project quotas"):
        d.create_rw(CreateRequest(uuid.uuid4().hex, None, storage_opts={"size": "1G"}))


def test_refuses_a_home_on_overlayfs(tmp_path: Path) -> None:
    for d in ("lower", "upper", "work", "merged"):
        (tmp_path / d).mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={tmp_path}/lower,upperdir={tmp_path}/upper,workdir={tmp_path}/work",
                    str(tmp_path / "merged")], check=True)
    try:
        try:
            d = PluginRegistry().init_driver(Kind.GRAPHDRIVER, "overlay2", home=tmp_path / "merged/home", options={})
        except NotSupported as exc:
            assert "overlay" in str(exc) and "vfs" in str(exc)
        else:  # this kernel nests overlayfs as upper: then the driver must work there
            lid = uuid.uuid4().hex
            d.create(CreateRequest(lid))
            d.create_rw(CreateRequest(lid + "rw", lid))
            assert os.path.isdir(d.get(lid + "rw"))
            d.put(lid + "rw")
            d.cleanup()
        assert not mounts_under(tmp_path / "merged/home")
    finally:
        subprocess.run(["umount", str(tmp_path / "merged")], check=True)
