"""Test images made from Debian's ``busybox-static``, and docker-archives built from them.

* ``busybox_rootfs(dir)``: a minimal root filesystem: ``/bin/busybox`` plus a symlink in
  ``/bin`` for every applet ``busybox --list`` prints, ``/etc/passwd`` (root, nobody, user
  1000), ``/etc/group``, ``/tmp`` (1777), ``/root``, ``/home/user``, and empty ``/dev``,
  ``/proc``, ``/sys``.
* ``busybox_rootfs_tar(path)``: the same tree as a tarball (``./bin/busybox``, ...), what
  ``pyd import`` takes. Deterministic: the same busybox gives the same bytes.
* ``layer_tar(entries)``: a layer tar from ``LayerEntry`` values (files, dirs, symlinks,
  hardlinks, whiteouts, opaque markers).
* ``layered_image_archive(path, layers=...)``: a docker-archive in the format ``docker save``
  writes (``manifest.json``, ``repositories``, ``<v1 id>/{VERSION,json,layer.tar}``,
  ``<config id>.json``), loadable by ``pyd load`` and ``docker load``; the default layers are
  busybox, then additions, then deletions through whiteouts and an opaque directory.
* ``CopyGraphDriver``: a minimal graph driver (every layer a full copy of its parent) built on
  ``pyd.drivers.archive``, for unit tests of code above the driver.

Fixtures (registered by the ``pyd`` pytest plugin): ``pyd_test_images``, a ``TestImages``
bound to a temporary directory; ``pyd_image_graph_driver``, parametrised over
``testcopy`` and the installed ``vfs`` / ``overlay2`` plugins (skipped when missing or not
root), each with its own home and cleaned up afterwards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping, Sequence

import pytest

from pyd.drivers import archive
from pyd.drivers.graph import Change, CreateRequest
from pyd.errors import Conflict, InvalidOption, NotFound

BUSYBOX = "/bin/busybox"
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    "user:x:1000:1000:user:/home/user:/bin/sh\n"
)
GROUP = "root:x:0:\nnobody:x:65534:\nuser:x:1000:\n"
MTIME = 1_700_000_000  # fixed, so that the tars are reproducible


@dataclass
class LayerEntry:
    """One member of a test layer: ``kind`` is file, dir, symlink, hardlink, whiteout
    (deletes ``path`` of a lower layer) or opaque (``path`` is the directory made opaque)."""

    path: str
    kind: str = "file"
    data: bytes = b""
    target: str = ""  # symlink target, or hardlink target path
    mode: int | None = None
    uid: int = 0
    gid: int = 0


def busybox_applets(busybox: str = BUSYBOX) -> list[str]:
    """The applet names the busybox binary provides (``busybox --list``)."""
    if not os.path.exists(busybox):
        pytest.skip(f"{busybox} is missing: install Debian's busybox-static")
    out = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout
    return sorted({a.strip() for a in out.split() if a.strip() and a.strip() != "busybox" and "/" not in a})


def busybox_entries(busybox: str = BUSYBOX) -> list[LayerEntry]:
    """The busybox root filesystem as layer entries (directories first, sorted)."""
    with open(busybox, "rb") as f:
        binary = f.read()
    entries = [
        LayerEntry("bin", "dir"),
        LayerEntry("dev", "dir"),
        LayerEntry("etc", "dir"),
        LayerEntry("home", "dir"),
        LayerEntry("home/user", "dir", mode=0o755, uid=1000, gid=1000),
        LayerEntry("proc", "dir"),
        LayerEntry("root", "dir", mode=0o700),
        LayerEntry("sys", "dir"),
        LayerEntry("tmp", "dir", mode=0o1777),
        LayerEntry("bin/busybox", "file", binary, mode=0o755),
    ]
    entries += [LayerEntry(f"bin/{a}", "symlink", target="busybox") for a in busybox_applets(busybox)]
    entries += [
        LayerEntry("etc/group", "file", GROUP.encode(), mode=0o644),
        LayerEntry("etc/passwd", "file", PASSWD.encode(), mode=0o644),
    ]
    return entries


def _tarinfo(e: LayerEntry, prefix: str) -> tarfile.TarInfo:
    path = e.path.strip("/")
    if e.kind == "whiteout":
        d, base = os.path.split(path)
        path = os.path.join(d, archive.WHITEOUT_PREFIX + base)
    elif e.kind == "opaque":
        path = os.path.join(path, archive.WHITEOUT_OPAQUE)
    ti = tarfile.TarInfo(prefix + path)
    ti.mtime = MTIME
    ti.uid, ti.gid = e.uid, e.gid
    ti.uname = ti.gname = ""
    if e.kind == "dir":
        ti.type, ti.mode = tarfile.DIRTYPE, e.mode if e.mode is not None else 0o755
    elif e.kind == "symlink":
        ti.type, ti.mode, ti.linkname = tarfile.SYMTYPE, 0o777, e.target
    elif e.kind == "hardlink":
        ti.type, ti.mode, ti.linkname = tarfile.LNKTYPE, e.mode or 0o644, prefix + e.target.strip("/")
    elif e.kind in ("file", "whiteout", "opaque"):
        ti.type = tarfile.REGTYPE
        ti.mode = e.mode if e.mode is not None else 0o644
        ti.size = len(e.data) if e.kind == "file" else 0
    else:
        raise ValueError(f"unknown layer entry kind {e.kind!r}")
    return ti


def layer_tar(entries: Iterable[LayerEntry], *, prefix: str = "", root_dir: bool = False) -> bytes:
    """The bytes of an uncompressed layer tar holding ``entries`` in order.

    ``prefix="./"`` and ``root_dir=True`` give the ``./``, ``./etc/...`` member names that
    ``tar -C rootfs -cf - .`` produces (what ``docker import`` usually receives).
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        if root_dir:
            ti = tarfile.TarInfo(prefix or ".")
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, MTIME
            tf.addfile(ti)
        for e in entries:
            ti = _tarinfo(e, prefix)
            tf.addfile(ti, io.BytesIO(e.data) if e.kind == "file" else None)
    return buf.getvalue()


def busybox_rootfs_tar(path: str | os.PathLike[str], busybox: str = BUSYBOX) -> Path:
    """Write the busybox rootfs tarball to ``path`` (members ``./``, ``./bin/busybox``, ...)."""
    out = Path(path)
    out.write_bytes(layer_tar(busybox_entries(busybox), prefix="./", root_dir=True))
    return out


def busybox_rootfs(dest: str | os.PathLike[str], busybox: str = BUSYBOX) -> Path:
    """Create the busybox root filesystem in the directory ``dest`` (made if missing)."""
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    for e in busybox_entries(busybox):
        p = root / e.path
        if e.kind == "dir":
            p.mkdir(exist_ok=True)
            os.chmod(p, e.mode if e.mode is not None else 0o755)
        elif e.kind == "file":
            if e.path == "bin/busybox":
                shutil.copyfile(busybox, p)
            else:
                p.write_bytes(e.data)
            os.chmod(p, e.mode if e.mode is not None else 0o644)
        elif e.kind == "symlink":
            if not p.is_symlink():
                os.symlink(e.target, p)
        os.lchown(p, e.uid, e.gid)
    return root


def tree_size(entries: Iterable[LayerEntry]) -> int:
    """The bytes of regular-file content in ``entries`` (what a layer's size counts)."""
    return sum(len(e.data) for e in entries if e.kind == "file")


# -- docker-archive -------------------------------------------------------------------------


def default_layers(busybox: str = BUSYBOX) -> list[list[LayerEntry]]:
    """busybox; then additions (a file, a directory tree, a hardlink, a changed passwd); then
    deletions: a whiteout of a file and of a directory, and an opaque directory refilled."""
    base = busybox_entries(busybox)
    add = [
        LayerEntry("etc/motd", "file", b"hello from layer 2\n"),
        LayerEntry("etc/passwd", "file", (PASSWD + "extra:x:1001:1001::/:/bin/sh\n").encode()),
        LayerEntry("data", "dir"),
        LayerEntry("data/a", "file", b"a\n"),
        LayerEntry("data/sub", "dir"),
        LayerEntry("data/sub/b", "file", b"b\n"),
        LayerEntry("opt", "dir"),
        LayerEntry("opt/app", "dir"),
        LayerEntry("opt/app/run.sh", "file", b"#!/bin/sh\necho run\n", mode=0o755),
        LayerEntry("opt/app/run-link", "hardlink", target="opt/app/run.sh", mode=0o755),
    ]
    delete = [
        LayerEntry("etc/motd", "whiteout"),
        LayerEntry("opt/app", "whiteout"),
        LayerEntry("data", "dir"),
        LayerEntry("data", "opaque"),
        LayerEntry("data/c", "file", b"c\n"),
    ]
    return [base, add, delete]


def apply_model(layers: Sequence[Sequence[LayerEntry]]) -> dict[str, tuple[str, bytes | str]]:
    """The expected tree after applying ``layers`` in order: path -> (kind, content/target).

    A reference model of Docker's layer semantics for tests (whiteouts, opaque dirs).
    """
    tree: dict[str, tuple[str, bytes | str]] = {}
    for layer in layers:
        opaque = {e.path.strip("/") for e in layer if e.kind == "opaque"}
        for d in opaque:  # opaque hides lower content (same-layer content is added below)
            for p in [p for p in tree if p.startswith(d + "/")]:
                del tree[p]
        for e in layer:
            p = e.path.strip("/")
            if e.kind == "whiteout":
                for q in [q for q in tree if q == p or q.startswith(p + "/")]:
                    del tree[q]
            elif e.kind == "opaque":
                continue
            elif e.kind == "dir":
                tree[p] = ("dir", "")
            elif e.kind == "symlink":
                tree[p] = ("symlink", e.target)
            elif e.kind == "hardlink":
                tree[p] = ("file", tree[e.target.strip("/")][1])
            else:
                tree[p] = ("file", e.data)
    return tree


def read_tree(root: str | os.PathLike[str]) -> dict[str, tuple[str, bytes | str]]:
    """A directory tree in ``apply_model``'s shape (overlay whiteouts must not be present)."""
    out: dict[str, tuple[str, bytes | str]] = {}
    base = Path(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(base))
            if p.is_symlink():
                out[rel] = ("symlink", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", "")
            else:
                out[rel] = ("file", p.read_bytes())
    return out


@dataclass
class ArchiveInfo:
    """What ``layered_image_archive`` wrote."""

    path: Path
    image_id: str  # sha256:<config digest>
    diff_ids: list[str]
    repo_tags: list[str]
    layers: list[list[LayerEntry]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def layered_image_archive(
    path: str | os.PathLike[str],
    layers: Sequence[Sequence[LayerEntry]] | None = None,
    *,
    repo_tags: Sequence[str] = ("layered:latest",),
    cmd: Sequence[str] = ("/bin/sh",),
    labels: Mapping[str, str] | None = None,
    corrupt_layer: int | None = None,
    layer_paths: Sequence[str] | None = None,
) -> ArchiveInfo:
    """Write a docker-archive of an image made of ``layers`` (default: ``default_layers()``).

    ``corrupt_layer=i`` stores layer ``i`` with one byte changed after its diff ID was
    computed (an archive ``load`` must refuse). ``layer_paths`` overrides the manifest's
    layer paths (e.g. to point outside the archive).
    """
    layers = [list(layer) for layer in (layers if layers is not None else default_layers())]
    blobs = [layer_tar(layer) for layer in layers]
    diff_ids = ["sha256:" + hashlib.sha256(b).hexdigest() for b in blobs]
    created = "2024-01-02T03:04:05.123456789Z"
    config: dict[str, Any] = {
        "architecture": "amd64",
        "config": {
            "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False,
            "AttachStdout": False, "AttachStderr": False, "Tty": False, "OpenStdin": False,
            "StdinOnce": False, "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": list(cmd), "Image": "", "Volumes": None, "WorkingDir": "", "Entrypoint": None,
            "OnBuild": None, "Labels": dict(labels) if labels else None,
        },
        "created": created,
        "docker_version": "20.10.24+dfsg1",
        "history": [{"created": created, "created_by": f"/bin/sh -c #(nop) layer {i}"} for i in range(len(layers))],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    raw = json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
    config_hex = hashlib.sha256(raw).hexdigest()
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    paths = []
    parent = ""
    for i, blob in enumerate(blobs):
        v1 = hashlib.sha256(f"{parent} {diff_ids[i]}".encode()).hexdigest()
        v1_json = {"id": v1, "created": "1970-01-01T00:00:00Z", "os": "linux"}
        if parent:
            v1_json["parent"] = parent
        if corrupt_layer == i:  # flip a bit of file content: still a valid tar, wrong digest
            with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
                member = next(m for m in tf.getmembers() if m.isfile() and m.size > 0)
            blob = bytearray(blob)
            blob[member.offset_data] ^= 0x01
            blob = bytes(blob)
        members.append((_dir_info(v1), None))
        members.append((_file_info(f"{v1}/VERSION", 3), b"1.0"))
        j = json.dumps(v1_json).encode()
        members.append((_file_info(f"{v1}/json", len(j)), j))
        members.append((_file_info(f"{v1}/layer.tar", len(blob)), blob))
        paths.append(f"{v1}/layer.tar")
        parent = v1
    members.append((_file_info(f"{config_hex}.json", len(raw)), raw))
    manifest = [{"Config": f"{config_hex}.json", "RepoTags": list(repo_tags) or None,
                 "Layers": list(layer_paths) if layer_paths is not None else paths}]
    m = json.dumps(manifest).encode()
    members.append((_file_info("manifest.json", len(m)), m))
    repos: dict[str, dict[str, str]] = {}
    for t in repo_tags:
        name, _, tag = t.rpartition(":")
        repos.setdefault(name, {})[tag] = parent
    r = json.dumps(repos).encode()
    members.append((_file_info("repositories", len(r)), r))
    out = Path(path)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in sorted(members, key=lambda m: m[0].name):
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return ArchiveInfo(out, f"sha256:{config_hex}", diff_ids, list(repo_tags), layers, config)


def _dir_info(name: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, MTIME
    return ti


def _file_info(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = size, 0o644, MTIME
    return ti


# -- a minimal graph driver -------------------------------------------------------------------


class CopyGraphDriver:
    """Every layer a full copy of its parent, applied with ``pyd.drivers.archive`` (a tiny
    vfs). For unit tests of the layer and image stores; not a plugin."""

    name = "testcopy"

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.home = Path(home)
        (self.home / "dir").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._mounts: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []

    def _dir(self, layer_id: str) -> Path:
        return self.home / "dir" / layer_id

    def parse_layer_options(self, raw: Mapping[str, str]) -> Mapping[str, str]:
        if raw:
            raise InvalidOption(f'storage driver "{self.name}" has no per-container options')
        return {}

    def create(self, req: CreateRequest) -> None:
        self.calls.append(("create", req.layer_id))
        d = self._dir(req.layer_id)
        if d.exists():
            raise Conflict(f"layer {req.layer_id} exists")
        if req.parent is not None:
            if not self._dir(req.parent).is_dir():
                raise NotFound(f"parent layer {req.parent} does not exist")
            shutil.copytree(self._dir(req.parent), d, symlinks=True)
        else:
            d.mkdir(mode=0o755)

    create_rw = create

    def remove(self, layer_id: str) -> None:
        self.calls.append(("remove", layer_id))
        with self._lock:
            if self._mounts.get(layer_id):
                raise Conflict(f"layer {layer_id} is in use")
        shutil.rmtree(self._dir(layer_id), ignore_errors=True)

    def get(self, layer_id: str, mount_label: str = "") -> str:
        if not self._dir(layer_id).is_dir():
            raise NotFound(f"layer {layer_id} does not exist")
        with self._lock:
            self._mounts[layer_id] = self._mounts.get(layer_id, 0) + 1
        return str(self._dir(layer_id))

    def put(self, layer_id: str) -> None:
        with self._lock:
            self._mounts[layer_id] = max(0, self._mounts.get(layer_id, 0) - 1)

    def exists(self, layer_id: str) -> bool:
        return self._dir(layer_id).is_dir()

    def status(self) -> list[tuple[str, str]]:
        return [("Layers", str(len(list((self.home / "dir").iterdir()))))]

    def metadata(self, layer_id: str) -> dict[str, str]:
        return {"Dir": str(self._dir(layer_id))}

    def cleanup(self) -> None:
        pass

    def changes(self, layer_id: str, parent: str | None) -> list[Change]:
        return archive.diff_dirs(str(self._dir(parent)) if parent else None, str(self._dir(layer_id)))

    def diff(self, layer_id: str, parent: str | None) -> BinaryIO:
        root = str(self._dir(layer_id))
        changes = self.changes(layer_id, parent)
        return archive.tar_stream(lambda out: archive.changes_tar(root, changes, out))

    def apply_diff(self, layer_id: str, parent: str | None, diff: BinaryIO) -> int:
        self.calls.append(("apply_diff", layer_id))
        return archive.apply_layer(str(self._dir(layer_id)), diff)

    def diff_size(self, layer_id: str, parent: str | None) -> int:
        return archive.changes_size(str(self._dir(layer_id)), self.changes(layer_id, parent))


# -- pytest fixture ---------------------------------------------------------------------------


class TestImages:
    """The fixtures' helpers bound to a directory (``pyd_test_images``)."""

    __test__ = False  # not a test class

    def __init__(self, root: Path) -> None:
        self.root = root

    def busybox_tar(self, name: str = "busybox-rootfs.tar") -> Path:
        return busybox_rootfs_tar(self.root / name)

    def busybox_rootfs(self, name: str = "rootfs") -> Path:
        return busybox_rootfs(self.root / name)

    def layered_archive(self, name: str = "layered.tar", **kwargs: Any) -> ArchiveInfo:
        return layered_image_archive(self.root / name, **kwargs)


IMAGE_TEST_DRIVERS = ("testcopy", "vfs", "overlay2")


@pytest.fixture(params=IMAGE_TEST_DRIVERS)
def pyd_image_graph_driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A graph driver for service-level tests of the layer and image stores."""
    name = request.param
    if name == "testcopy":
        yield CopyGraphDriver(tmp_path / "graph")
        return
    from pyd.registry import Kind, PluginRegistry, installed_names

    if os.geteuid() != 0:
        pytest.skip(f"graph driver {name} needs root")
    if name not in installed_names(Kind.GRAPHDRIVER):
        pytest.skip(f"graph driver plugin {name!r} is not installed")
    home = tmp_path / name
    home.mkdir()
    drv = PluginRegistry().init_driver(Kind.GRAPHDRIVER, name, home=home, options={})
    try:
        yield drv
    finally:
        drv.cleanup()


@pytest.fixture
def pyd_test_images(tmp_path: Path) -> Iterator[TestImages]:
    """Helpers that write busybox rootfs tarballs and docker-archives under ``tmp_path``."""
    root = tmp_path / "test-images"
    root.mkdir()
    yield TestImages(root)
