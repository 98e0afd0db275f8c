"""Conformance suite for graph (storage) drivers, modelled on moby's ``graphtest``.

Subclass ``GraphDriverSuite`` in your plugin's tests::

    from pyd.testing.graphdriver import GraphDriverSuite

    class TestMyDriver(GraphDriverSuite):
        driver_name = "mydriver"                       # the entry-point name
        good_options = {"mydriver.flag": "true"}       # daemon-wide options that must be accepted
        bad_options = [{"no-such-key": "1"}]           # each must fail with InvalidOption

The driver is loaded through its real entry point (``PluginRegistry().init_driver``) with a
temporary home. A driver that raises ``NotSupported`` on this host is skipped with its reason.
The tests need root (ownership, device checks, mounts) and are marked ``integration``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import tarfile
import threading
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import pytest

from pyd.drivers.graph import ChangeKind, CreateRequest, LayerCapacity
from pyd.drivers.mounts import mounts_under as _mounts_under
from pyd.errors import Conflict, InvalidOption, InvalidParameter, NotFound, NotSupported
from pyd.registry import Kind, PluginRegistry

MTIME = 1_600_000_000


class LayerTar:
    """Builds a layer tar in memory (Docker's format, PAX headers) for tests."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._tf = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.PAX_FORMAT)

    def _add(self, name: str, type_: bytes, *, mode: int = 0o644, uid: int = 0, gid: int = 0,
             mtime: int = MTIME, data: bytes | None = None, linkname: str = "",
             xattrs: Mapping[str, bytes] | None = None, dev: tuple[int, int] = (0, 0)) -> LayerTar:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime, ti.linkname = type_, mode, uid, gid, mtime, linkname
        ti.devmajor, ti.devminor = dev
        for k, v in (xattrs or {}).items():
            ti.pax_headers["SCHILY.xattr." + k] = v.decode("utf-8", "surrogateescape")
        if data is not None:
            ti.size = len(data)
        self._tf.addfile(ti, io.BytesIO(data) if data is not None else None)
        return self

    def dir(self, name: str, mode: int = 0o755, **kw: Any) -> LayerTar:
        return self._add(name, tarfile.DIRTYPE, mode=mode, **kw)

    def file(self, name: str, data: bytes = b"", mode: int = 0o644, **kw: Any) -> LayerTar:
        return self._add(name, tarfile.REGTYPE, mode=mode, data=data, **kw)

    def symlink(self, name: str, target: str, **kw: Any) -> LayerTar:
        return self._add(name, tarfile.SYMTYPE, mode=0o777, linkname=target, **kw)

    def hardlink(self, name: str, target: str, **kw: Any) -> LayerTar:
        return self._add(name, tarfile.LNKTYPE, linkname=target, **kw)

    def device(self, name: str, kind: str = "c", major: int = 1, minor: int = 3) -> LayerTar:
        return self._add(name, tarfile.CHRTYPE if kind == "c" else tarfile.BLKTYPE, dev=(major, minor))

    def fifo(self, name: str, mode: int = 0o644) -> LayerTar:
        return self._add(name, tarfile.FIFOTYPE, mode=mode)

    def whiteout(self, path: str) -> LayerTar:
        d, _, base = path.rpartition("/")
        return self.file(f"{d}/.wh.{base}" if d else f".wh.{base}", mode=0o600)

    def opaque(self, directory: str) -> LayerTar:
        return self.file(f"{directory}/.wh..wh..opq", mode=0o600)

    def stream(self) -> io.BytesIO:
        self._tf.close()
        return io.BytesIO(self._buf.getvalue())


def snapshot(root: str | Path, *, mtimes: bool = True) -> dict[str, tuple]:
    """A comparable picture of the tree at ``root`` (symlinks not followed; ``user.`` xattrs)."""
    out: dict[str, tuple] = {}
    root = str(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", owner, os.readlink(p))
                continue
            xattrs = tuple(sorted((k, os.getxattr(p, k)) for k in os.listxattr(p) if k.startswith("user.")))
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", oct(mode), owner, xattrs)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()[:16]
                out[rel] = ("file", oct(mode), owner, digest, st.st_mtime_ns // 10**9 if mtimes else 0, xattrs)
            elif stat.S_ISFIFO(st.st_mode):
                out[rel] = ("fifo", oct(mode), owner)
            else:
                out[rel] = ("other", st.st_mode, st.st_rdev)
    return out


def mounts_under(path: str | Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    return _mounts_under(str(path))


@dataclass
class Sandbox:
    """``home`` lives inside ``sentinel``; ``outside`` (with ``victim``) must never change."""

    root: Path
    sentinel: Path
    home: Path
    outside: Path

    def outside_state(self) -> tuple:
        passwd = os.stat("/etc/passwd")
        return (
            snapshot(self.outside),
            sorted(p.name for p in self.root.iterdir()),
            (passwd.st_nlink, passwd.st_size, passwd.st_mtime_ns, passwd.st_mode),
            os.path.lexists("/pwned"),
        )


def malicious_layers(outside: Path) -> dict[str, LayerTar]:
    """Layer tars that try to write, link or delete outside the layer. Each must be refused."""
    up = "../" * 24
    out = str(outside).lstrip("/")
    return {
        "dotdot-path": LayerTar().file(f"{up}{out}/pwned", b"x"),
        "dotdot-inside-path": LayerTar().dir("a").file(f"a/../../{up}{out}/pwned", b"x"),
        "absolute-path": LayerTar().file(f"/{out}/pwned", b"x"),
        "symlink-absolute-then-write": LayerTar().symlink("evil", f"/{out}").file("evil/pwned", b"x"),
        "symlink-relative-escape": LayerTar().symlink("evil", f"{up}{out}").file("evil/pwned", b"x"),
        "symlink-root-then-write": LayerTar().symlink("evil", "/").file(f"evil/{out}/pwned", b"x"),
        "symlink-then-dir-entry": LayerTar().symlink("evil", f"/{out}").dir("evil/sub"),
        "hardlink-etc-passwd": LayerTar().hardlink("pw", "/etc/passwd"),
        "hardlink-dotdot-passwd": LayerTar().hardlink("pw", f"{up}etc/passwd"),
        "hardlink-through-symlink": LayerTar().symlink("etc", "/etc").hardlink("pw", "etc/passwd"),
        "hardlink-outside-victim": LayerTar().symlink("o", f"/{out}").hardlink("v", "o/victim"),
        "char-device": LayerTar().dir("dev").device("dev/null", "c", 1, 3),
        "block-device": LayerTar().dir("dev").device("dev/sda", "b", 8, 0),
        "whiteout-dotdot": LayerTar().file(f"{up}{out}/.wh.victim"),
        "whiteout-of-dotdot": LayerTar().dir("a").file("a/.wh..."),
        "whiteout-through-symlink": LayerTar().symlink("evil", f"/{out}").file("evil/.wh.victim"),
        "opaque-through-symlink": LayerTar().symlink("evil", f"/{out}").opaque("evil"),
    }


class GraphDriverSuite:
    driver_name: ClassVar[str] = ""
    good_options: ClassVar[Mapping[str, str]] = {}
    bad_options: ClassVar[Sequence[Mapping[str, str]]] = ({"no-such-option": "1"},)
    # Examples per property test; raise it for a longer soak.
    property_examples: ClassVar[int] = 25

    pytestmark = [pytest.mark.integration]

    # -- fixtures -------------------------------------------------------------------------

    @pytest.fixture
    def sandbox(self, tmp_path: Path) -> Sandbox:
        if os.geteuid() != 0:
            pytest.skip("the graph driver suite needs root")
        sentinel = tmp_path / "sentinel"
        home = sentinel / self.driver_name
        outside = tmp_path / "outside"
        home.mkdir(parents=True)
        outside.mkdir()
        (outside / "victim").write_text("keep me")
        return Sandbox(tmp_path, sentinel, home, outside)

    def _init(self, home: Path, options: Mapping[str, str]) -> Any:
        return PluginRegistry().init_driver(Kind.GRAPHDRIVER, self.driver_name, home=home, options=dict(options))

    @pytest.fixture
    def driver(self, sandbox: Sandbox) -> Iterator[Any]:
        try:
            d = self._init(sandbox.home, self.good_options)
        except NotSupported as exc:
            pytest.skip(f"{self.driver_name} is not usable here: {exc}")
        try:
            yield d
        finally:
            d.cleanup()
            left = mounts_under(sandbox.root)
            for point in left:  # keep the host clean even when the driver's cleanup is broken
                os.system(f"umount -l '{point}'")
            assert not left, f"cleanup() left mounts behind: {left}"

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def layer(driver: Any, parent: str | None = None, tar: LayerTar | None = None, *, rw: bool = False) -> str:
        layer_id = uuid.uuid4().hex
        (driver.create_rw if rw else driver.create)(CreateRequest(layer_id, parent))
        if tar is not None:
            driver.apply_diff(layer_id, parent, tar.stream())
        return layer_id

    @staticmethod
    @contextlib.contextmanager
    def mounted(driver: Any, layer_id: str) -> Iterator[str]:
        path = driver.get(layer_id)
        try:
            yield path
        finally:
            driver.put(layer_id)

    def view(self, driver: Any, layer_id: str, **kw: Any) -> dict[str, tuple]:
        with self.mounted(driver, layer_id) as path:
            return snapshot(path, **kw)

    # -- loading --------------------------------------------------------------------------

    def test_entry_point_resolves(self) -> None:
        eps = [ep for ep in metadata.entry_points(group=Kind.GRAPHDRIVER.group) if ep.name == self.driver_name]
        assert eps, f'no "{self.driver_name}" entry point in {Kind.GRAPHDRIVER.group}'
        module = PluginRegistry().load(Kind.GRAPHDRIVER, self.driver_name).module
        assert hasattr(module, "pyd_graphdriver_init")

    def test_init_hook_ignores_other_names(self, sandbox: Sandbox) -> None:
        module = PluginRegistry().load(Kind.GRAPHDRIVER, self.driver_name).module
        other = sandbox.root / "other"
        assert module.pyd_graphdriver_init(name=f"not-{self.driver_name}", home=other, options={}) is None
        assert module.pyd_graphdriver_init(name="", home=other, options={"x": "y"}) is None
        assert not other.exists(), "the init hook touched a home that is not its own"

    def test_good_options_accepted(self, driver: Any) -> None:
        assert driver.name == self.driver_name
        assert all(len(kv) == 2 for kv in driver.status())
        if isinstance(driver, LayerCapacity):
            assert driver.free_bytes() > 0

    def test_bad_options_rejected(self, sandbox: Sandbox) -> None:
        for bad in self.bad_options:
            with pytest.raises(InvalidOption) as err:
                self._init(sandbox.home, bad)
            assert next(iter(bad)) in str(err.value), f"the error does not name the option: {err.value}"
        assert not mounts_under(sandbox.root)

    # -- layers ---------------------------------------------------------------------------

    def test_create_empty(self, driver: Any) -> None:
        base = self.layer(driver)
        assert driver.exists(base)
        assert self.view(driver, base) == {}
        with pytest.raises(Conflict):
            driver.create(CreateRequest(base))
        with pytest.raises(NotFound):
            driver.create(CreateRequest(uuid.uuid4().hex, parent=uuid.uuid4().hex))
        driver.remove(base)
        assert not driver.exists(base)

    def test_create_chain(self, driver: Any) -> None:
        base = self.layer(driver, None, LayerTar().file("a", b"a"))
        l1 = self.layer(driver, base, LayerTar().file("b", b"b"))
        l2 = self.layer(driver, l1, LayerTar().dir("d").file("d/c", b"c"))
        rw = self.layer(driver, l2, rw=True)
        with self.mounted(driver, rw) as root:
            assert sorted(os.listdir(root)) == ["a", "b", "d"]
            Path(root, "new").write_bytes(b"container")
        assert "new" not in self.view(driver, l2)
        with self.mounted(driver, rw) as root:
            assert Path(root, "new").read_bytes() == b"container"
        for layer in (rw, l2, l1, base):
            driver.remove(layer)
            assert not driver.exists(layer)

    def _stack(self, driver: Any) -> tuple[list[str], dict[str, tuple]]:
        """base -> l1 -> l2 with adds, modifications, deletions and opaque dirs; expected view."""
        base = LayerTar().dir("etc").file("etc/passwd", b"root:x:0:0\n").file(
            "etc/shadow", b"root:*:1::\n", mode=0o640, gid=42)
        base.dir("bin").file("bin/tool", b"\x7fELF tool", mode=0o4755).symlink("bin/sh", "tool")
        base.hardlink("bin/tool2", "bin/tool").dir("del").file("del/a", b"a").file("del/b", b"b")
        base.dir("opq").file("opq/x", b"x").dir("opq/sub").file("opq/sub/y", b"y").fifo("fifo", 0o620)
        base.dir("usr").dir("usr/lib").file("usr/lib/libc.so", b"libc", xattrs={"user.pyd": b"base"})
        l1 = LayerTar().dir("etc").file("etc/passwd", b"root:x:0:0\nme:x:1000:1000\n", mode=0o600, uid=1000)
        l1.whiteout("etc/shadow").whiteout("del").dir("opq", mode=0o750).opaque("opq").file("opq/z", b"z")
        l1.dir("usr").dir("usr/lib").file("usr/lib/new", b"new", mode=0o2755, gid=7)
        l1.dir("bin").file("bin/sh", b"#!/bin/tool\n", mode=0o755)
        l2 = LayerTar().dir("del", mode=0o700).file("del/c", b"c").dir("usr").dir("usr/lib")
        l2.whiteout("usr/lib/libc.so")
        ids = [self.layer(driver, None, base)]
        ids.append(self.layer(driver, ids[-1], l1))
        ids.append(self.layer(driver, ids[-1], l2))
        r, u = (0, 0), (1000, 0)
        expected = {
            "bin": ("dir", "0o755", r, ()),
            "bin/sh": ("file", "0o755", r, _h(b"#!/bin/tool\n"), MTIME, ()),
            "bin/tool": ("file", "0o4755", r, _h(b"\x7fELF tool"), MTIME, ()),
            "bin/tool2": ("file", "0o4755", r, _h(b"\x7fELF tool"), MTIME, ()),
            "del": ("dir", "0o700", r, ()),
            "del/c": ("file", "0o644", r, _h(b"c"), MTIME, ()),
            "etc": ("dir", "0o755", r, ()),
            "etc/passwd": ("file", "0o600", u, _h(b"root:x:0:0\nme:x:1000:1000\n"), MTIME, ()),
            "fifo": ("fifo", "0o620", r),
            "opq": ("dir", "0o750", r, ()),
            "opq/z": ("file", "0o644", r, _h(b"z"), MTIME, ()),
            "usr": ("dir", "0o755", r, ()),
            "usr/lib": ("dir", "0o755", r, ()),
            "usr/lib/new": ("file", "0o2755", (0, 7), _h(b"new"), MTIME, ()),
        }
        return ids, expected

    def test_apply_diff_stack(self, driver: Any) -> None:
        ids, expected = self._stack(driver)
        rw = self.layer(driver, ids[-1], rw=True)
        assert self.view(driver, rw) == expected
        assert self.view(driver, ids[-1]) == expected
        base_view = self.view(driver, ids[0])
        assert base_view["usr/lib/libc.so"][-1] == (("user.pyd", b"base"),)
        assert base_view["bin/tool"][1] == "0o4755" and "del/a" in base_view

    def test_apply_diff_returns_size(self, driver: Any) -> None:
        base = self.layer(driver)
        n = driver.apply_diff(base, None, LayerTar().dir("d").file("d/a", b"x" * 1000).file("b", b"y" * 24).stream())
        assert n == 1024

    def test_diff_round_trip(self, driver: Any) -> None:
        ids, expected = self._stack(driver)
        for parent, layer in ((None, ids[0]), (ids[0], ids[1]), (ids[1], ids[2])):
            with driver.diff(layer, parent) as stream:
                data = stream.read()
            copy = self.layer(driver, parent)
            driver.apply_diff(copy, parent, io.BytesIO(data))
            assert self.view(driver, copy) == self.view(driver, layer)
        # A container's changes, committed: the diff of a rw layer recreates its view.
        rw = self.layer(driver, ids[-1], rw=True)
        with self.mounted(driver, rw) as root:
            Path(root, "etc/passwd").write_bytes(b"changed\n")
            Path(root, "etc/new").write_bytes(b"new\n")
            os.unlink(os.path.join(root, "bin/tool2"))
            import shutil

            shutil.rmtree(os.path.join(root, "opq"))
            os.makedirs(os.path.join(root, "opq/again"))
            os.symlink("/etc/passwd", os.path.join(root, "link"))
            want = snapshot(root, mtimes=False)
        with driver.diff(rw, ids[-1]) as stream:
            data = stream.read()
        commit = self.layer(driver, ids[-1])
        driver.apply_diff(commit, ids[-1], io.BytesIO(data))
        assert self.view(driver, commit, mtimes=False) == want

    def test_changes(self, driver: Any) -> None:
        base = self.layer(driver, None, LayerTar().dir("etc").file("etc/passwd", b"a").dir("del")
                          .file("del/a", b"a").file("del/b", b"b").file("keep", b"k"))
        rw = self.layer(driver, base, rw=True)
        with self.mounted(driver, rw) as root:
            Path(root, "etc/passwd").write_bytes(b"changed")
            Path(root, "new").write_bytes(b"n")
            os.unlink(os.path.join(root, "del/a"))
        changes = driver.changes(rw, base)
        assert [c.path for c in changes] == sorted(c.path for c in changes)
        assert {(c.path, c.kind) for c in changes} == {
            ("/etc", ChangeKind.MODIFY),
            ("/etc/passwd", ChangeKind.MODIFY),
            ("/new", ChangeKind.ADD),
            ("/del", ChangeKind.MODIFY),
            ("/del/a", ChangeKind.DELETE),
        }
        assert {(c.path, c.kind) for c in driver.changes(base, None)} == {
            ("/etc", ChangeKind.ADD), ("/etc/passwd", ChangeKind.ADD), ("/del", ChangeKind.ADD),
            ("/del/a", ChangeKind.ADD), ("/del/b", ChangeKind.ADD), ("/keep", ChangeKind.ADD),
        }

    def test_diff_size(self, driver: Any) -> None:
        base = self.layer(driver, None, LayerTar().file("a", b"a" * 100).file("b", b"b" * 200))
        l1 = self.layer(driver, base, LayerTar().file("a", b"A" * 300).file("c", b"c" * 50).whiteout("b"))
        assert driver.diff_size(base, None) == 300
        assert driver.diff_size(l1, base) == 350

    # -- references -----------------------------------------------------------------------

    def test_get_put_refcount(self, driver: Any, sandbox: Sandbox) -> None:
        base = self.layer(driver, None, LayerTar().file("a", b"a"))
        rw = self.layer(driver, base, rw=True)
        p1, p2 = driver.get(rw), driver.get(rw)
        assert p1 == p2
        was_mount = p1 in mounts_under(sandbox.home)
        driver.put(rw)
        assert Path(p1, "a").read_bytes() == b"a", "one put of two released the layer"
        assert (p1 in mounts_under(sandbox.home)) == was_mount
        with pytest.raises(Conflict):
            driver.remove(rw)
        assert driver.exists(rw)
        driver.put(rw)
        assert p1 not in mounts_under(sandbox.home)
        driver.remove(rw)
        assert not driver.exists(rw)

    def test_concurrent_get_put(self, driver: Any, sandbox: Sandbox) -> None:
        base = self.layer(driver, None, LayerTar().file("a", b"a"))
        l1 = self.layer(driver, base, LayerTar().file("b", b"b"))
        layers = [self.layer(driver, l1, rw=True) for _ in range(3)] + [l1]
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                for i in range(25):
                    layer = layers[(n + i) % len(layers)]
                    with self.mounted(driver, layer) as root:
                        assert Path(root, "a").read_bytes() == b"a"
                        assert Path(root, "b").read_bytes() == b"b"
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert not mounts_under(sandbox.home)
        for layer in layers + [base]:
            driver.remove(layer)

    def test_remove_mounted_refused(self, driver: Any) -> None:
        base = self.layer(driver, None, LayerTar().file("a", b"a"))
        for layer in (base, self.layer(driver, base, rw=True)):
            root = driver.get(layer)
            with pytest.raises(Conflict):
                driver.remove(layer)
            assert Path(root, "a").read_bytes() == b"a"
            driver.put(layer)
        driver.remove(layer)
        driver.remove(base)

    def test_remove_idempotent(self, driver: Any) -> None:
        base = self.layer(driver)
        driver.remove(base)
        driver.remove(base)
        driver.remove(uuid.uuid4().hex)
        assert not driver.exists(base)

    def test_cleanup_unmounts_everything(self, driver: Any, sandbox: Sandbox) -> None:
        base = self.layer(driver, None, LayerTar().file("a", b"a"))
        l1 = self.layer(driver, base, LayerTar().file("b", b"b"))
        rws = [self.layer(driver, l1, rw=True) for _ in range(2)]
        for layer in [l1, *rws, rws[0]]:
            driver.get(layer)
        driver.cleanup()
        assert not mounts_under(sandbox.home)

    # -- safety ---------------------------------------------------------------------------

    @pytest.mark.parametrize("case", sorted(malicious_layers(Path("/x"))))
    def test_malicious_layer_refused(self, driver: Any, sandbox: Sandbox, case: str) -> None:
        base = self.layer(driver, None, LayerTar().dir("etc").file("etc/hostname", b"box"))
        before = sandbox.outside_state()
        layer = self.layer(driver, base)
        with pytest.raises(InvalidParameter) as err:
            driver.apply_diff(layer, base, malicious_layers(sandbox.outside)[case].stream())
        assert str(err.value), "the error must say what was refused"
        assert sandbox.outside_state() == before, "something outside the driver's home changed"
        driver.remove(layer)

    def test_lower_symlink_is_not_followed(self, driver: Any, sandbox: Sandbox) -> None:
        """A symlink left by a lower layer is never written through by a later one."""
        out = str(sandbox.outside)
        base = self.layer(driver, None, LayerTar().symlink("evil", out).symlink("etc", "/etc"))
        before = sandbox.outside_state()
        layer = self.layer(driver, base)
        tar = LayerTar().file("evil/pwned", b"x").file("evil/.wh.victim").hardlink("pw", "etc/passwd")
        with contextlib.suppress(InvalidParameter):
            driver.apply_diff(layer, base, tar.stream())
        assert sandbox.outside_state() == before

    # -- property: random layer stacks against a reference model ----------------------------

    def test_random_layer_stacks_match_model(self, driver: Any) -> None:
        hypothesis = pytest.importorskip("hypothesis")

        @hypothesis.settings(
            max_examples=self.property_examples, deadline=None, database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(layer_stacks())
        def check(stack: Any) -> None:
            created: list[str] = []
            try:
                parent = None
                for tar in stack.tars():
                    parent = self.layer(driver, parent, tar)
                    created.append(parent)
                rw = self.layer(driver, parent, rw=True)
                created.append(rw)
                assert self.view(driver, rw, mtimes=False) == stack.expected()
                if len(created) > 2:  # the top layer's diff recreates it on the same parent
                    top, below = created[-2], created[-3]
                    with driver.diff(top, below) as s:
                        again = self.layer(driver, below)
                        created.append(again)
                        driver.apply_diff(again, below, io.BytesIO(s.read()))
                    assert self.view(driver, again, mtimes=False) == stack.expected()
            finally:
                for layer in reversed(created):
                    driver.remove(layer)

        check()


def _h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Reference model of a layer stack (pure Python), and a hypothesis strategy that draws stacks
# ---------------------------------------------------------------------------------------------

_NAMES = ("a", "b", "c")
_TARGETS = ("/a", "b", "/c/a", "a/b")  # symlink targets that stay inside the root


@dataclass
class Node:
    kind: str  # dir, file, symlink
    mode: int = 0o755
    data: bytes = b""
    target: str = ""


@dataclass
class LayerStack:
    """Layers as lists of (op, path, args), the tars they make and the tree they must give."""

    layers: list[list[tuple]]
    _tars: list[bytes] = field(repr=False)
    _tree: dict[str, Node] = field(repr=False)

    def tars(self) -> list[LayerTar]:
        out = []
        for data in self._tars:
            t = LayerTar()
            t.stream = lambda d=data: io.BytesIO(d)  # type: ignore[method-assign]
            out.append(t)
        return out

    def expected(self) -> dict[str, tuple]:
        out: dict[str, tuple] = {}
        for path, n in self._tree.items():
            if n.kind == "dir":
                out[path] = ("dir", oct(n.mode), (0, 0), ())
            elif n.kind == "file":
                out[path] = ("file", oct(n.mode), (0, 0), _h(n.data), 0, ())
            else:
                out[path] = ("symlink", (0, 0), n.target)
        return out

    def __repr__(self) -> str:
        return f"LayerStack({self.layers!r})"


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _drop(tree: dict[str, Node], path: str) -> None:
    tree.pop(path, None)
    for k in [k for k in tree if k.startswith(path + "/")]:
        del tree[k]


def apply_model(base: dict[str, Node], layer: dict[str, tuple]) -> dict[str, Node]:
    """The tree after a layer: opaque dirs lose their lower content, whiteouts delete, then
    entries are written in path order (a dir over a dir keeps its content, anything else replaces)."""
    tree = dict(base)
    for path, (kind, *_rest) in layer.items():
        if kind == "opaque":
            for k in [k for k in tree if k.startswith(path + "/")]:
                del tree[k]
    for path, (kind, *_rest) in layer.items():
        if kind == "whiteout":
            _drop(tree, path)
    for path in sorted(layer):
        kind, *args = layer[path]
        if kind in ("dir", "opaque"):
            if not (path in tree and tree[path].kind == "dir"):
                _drop(tree, path)
            tree[path] = Node("dir", mode=args[0])
        elif kind == "file":
            _drop(tree, path)
            tree[path] = Node("file", mode=args[1], data=args[0])
        elif kind == "symlink":
            _drop(tree, path)
            tree[path] = Node("symlink", mode=0o777, target=args[0])
    return tree


def layer_tar_of(layer: dict[str, tuple]) -> bytes:
    t = LayerTar()
    for path in sorted(layer):
        kind, *args = layer[path]
        if kind in ("dir", "opaque"):
            t.dir(path, mode=args[0])
            if kind == "opaque":
                t.opaque(path)
        elif kind == "file":
            t.file(path, args[0], mode=args[1])
        elif kind == "symlink":
            t.symlink(path, args[0])
        elif kind == "whiteout":
            t.whiteout(path)
    return t.stream().getvalue()


def layer_stacks(max_layers: int = 4, max_ops: int = 6) -> Any:
    """A hypothesis strategy of ``LayerStack``: adds of files, dirs and symlinks (inside the
    root), deletions, opaque dirs and type changes, with explicit parent dir entries as Docker's
    differs write them; never a write through a symlink."""
    from hypothesis import strategies as st

    modes = st.sampled_from([0o755, 0o750, 0o700])
    paths = st.lists(st.sampled_from(_NAMES), min_size=1, max_size=3).map("/".join)

    @st.composite
    def build(draw: Any) -> LayerStack:
        tree: dict[str, Node] = {}
        tars, described = [], []
        for _ in range(draw(st.integers(1, max_layers))):
            layer: dict[str, tuple] = {}
            ops = []
            for _ in range(draw(st.integers(1, max_ops))):
                op = draw(st.sampled_from(["file", "file", "dir", "symlink", "delete", "opaque"]))
                path = draw(paths)
                if op == "delete" or op == "opaque":
                    existing = sorted(p for p, n in tree.items() if op == "delete" or n.kind == "dir")
                    if not existing:
                        continue
                    path = draw(st.sampled_from(existing))
                blocked = any(layer.get(a, ("dir",))[0] not in ("dir", "opaque") for a in _ancestors(path))
                below = any(k.startswith(path + "/") for k in layer)
                if blocked or (path in layer and not (op == "opaque" and layer[path][0] == "dir")):
                    continue
                if below and op not in ("dir", "opaque"):
                    continue
                for a in _ancestors(path):  # explicit parents, keeping the mode they have
                    if a not in layer:
                        layer[a] = ("dir", tree[a].mode if a in tree and tree[a].kind == "dir" else 0o755)
                if op == "file":
                    entry: tuple = ("file", draw(st.binary(max_size=40)),
                                    draw(st.sampled_from([0o644, 0o600, 0o755, 0o4755])))
                elif op == "dir":
                    entry = ("dir", draw(modes))
                elif op == "symlink":
                    entry = ("symlink", draw(st.sampled_from(_TARGETS)))
                elif op == "opaque":
                    entry = ("opaque", draw(modes))
                else:
                    entry = ("whiteout",)
                layer[path] = entry
                ops.append((op, path, *entry[1:]))
            if not layer:
                continue
            tree = apply_model(tree, layer)
            tars.append(layer_tar_of(layer))
            described.append(ops)
        if not tars:
            layer = {"a": ("file", b"a", 0o644)}
            tree, tars, described = apply_model(tree, layer), [layer_tar_of(layer)], [[("file", "a", b"a", 0o644)]]
        return LayerStack(described, tars, tree)

    return build()


__all__ = [
    "GraphDriverSuite", "LayerStack", "LayerTar", "Sandbox", "apply_model", "layer_stacks",
    "malicious_layers", "mounts_under", "snapshot",
]
