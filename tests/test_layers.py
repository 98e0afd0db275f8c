"""The layer store over a graph driver: diff IDs, chain IDs, stage-then-commit, refcounts,
byte-exact tar reproduction, read-write layers.

Runs against ``testcopy`` (a minimal full-copy driver from ``pyd.testing.images``) and, when
their plugins are installed, the real ``vfs`` and ``overlay2`` drivers loaded through their
entry points.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from pyd.engine.layers import LayerStore, chain_id, chain_ids
from pyd.engine.tarsplit import LayerNotReproducible
from pyd.errors import InvalidParameter, NotFound
from pyd.testing.images import (
    LayerEntry,
    apply_model,
    busybox_entries,
    default_layers,
    layer_tar,
    read_tree,
    tree_size,
)

@pytest.fixture
def driver(pyd_image_graph_driver):
    return pyd_image_graph_driver


@pytest.fixture
def store(driver, tmp_path):
    return LayerStore(driver, tmp_path / "image" / driver.name)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _meta_dir(store: LayerStore, chain: str) -> Path:
    return store.root / "sha256" / chain.split(":", 1)[1]


def _reassembled(store: LayerStore, chain: str) -> bytes:
    return b"".join(store.tar_stream(chain))


def test_register_records_diff_id_size_and_metadata(store, driver):
    entries = busybox_entries()
    blob = layer_tar(entries, prefix="./", root_dir=True)
    layer = store.register(io.BytesIO(blob))
    assert layer.diff_id == _sha(blob)
    assert layer.chain_id == layer.diff_id  # a base layer's chain ID is its diff ID
    assert layer.size >= tree_size(entries)
    meta = _meta_dir(store, layer.chain_id)
    assert (meta / "diff").read_text() == layer.diff_id
    assert (meta / "cache-id").read_text() == layer.cache_id
    assert int((meta / "size").read_text()) == layer.size
    assert not (meta / "parent").exists()
    assert driver.exists(layer.cache_id)
    assert list((store.root / "tmp").iterdir()) == []


def test_compressed_input_gets_the_uncompressed_diff_id(store):
    blob = layer_tar([LayerEntry("a", "file", b"x" * 5000)])
    layer = store.register(io.BytesIO(gzip.compress(blob)))
    assert layer.diff_id == _sha(blob)
    assert _reassembled(store, layer.chain_id) == blob


def test_chain_ids_and_tree_of_a_layer_stack(store, driver):
    layers = default_layers()
    blobs = [layer_tar(layer) for layer in layers]
    parent = None
    got = []
    for blob in blobs:
        layer = store.register(io.BytesIO(blob), parent)
        got.append(layer)
        parent = layer.chain_id
    diff_ids = [_sha(b) for b in blobs]
    assert [l.chain_id for l in got] == chain_ids(diff_ids)
    assert got[1].chain_id == chain_id(diff_ids[0], diff_ids[1])
    assert got[2].parent == got[1].chain_id
    root = driver.get(got[-1].cache_id)
    try:
        assert read_tree(root) == apply_model(layers)
    finally:
        driver.put(got[-1].cache_id)
    assert store.size(got[-1].chain_id) == sum(l.size for l in got)


def test_tar_stream_reproduces_the_imported_bytes(store):
    long_dir = "d" * 120
    entries = busybox_entries()[:12] + [
        LayerEntry(long_dir, "dir"),
        LayerEntry(f"{long_dir}/{'f' * 150}", "file", b"long name\n"),  # PAX path record
        LayerEntry("empty", "file", b""),
        LayerEntry("big", "file", os.urandom(3 << 20)),
        LayerEntry("hl", "hardlink", target="big"),
        LayerEntry("ünïcode", "file", b"utf-8 name\n"),
    ]
    blob = layer_tar(entries) + bytes(4096)  # extra trailing zeros are part of the digest
    base = store.register(io.BytesIO(blob))
    out = _reassembled(store, base.chain_id)
    assert out == blob
    assert store.tar_size(base.chain_id) == len(blob)
    top_blob = layer_tar(default_layers()[1])
    top = store.register(io.BytesIO(top_blob), base.chain_id)
    assert _sha(_reassembled(store, top.chain_id)) == top.diff_id


def test_gnu_format_tar_round_trips(store):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in (("x" * 200, b"gnu long name"), ("short", b"s" * 700)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    blob = buf.getvalue()
    layer = store.register(io.BytesIO(blob))
    assert _reassembled(store, layer.chain_id) == blob


def test_same_layer_twice_is_stored_once_and_freed_with_the_last_reference(store, driver):
    blob = layer_tar([LayerEntry("f", "file", b"same")])
    a = store.register(io.BytesIO(blob))
    b = store.register(io.BytesIO(blob))
    assert a == b
    assert store.refcount(a.chain_id) == 2
    assert store.release(a.chain_id) == []
    assert driver.exists(a.cache_id)
    removed = store.release(a.chain_id)
    assert [l.chain_id for l in removed] == [a.chain_id]
    assert not driver.exists(a.cache_id)
    assert not _meta_dir(store, a.chain_id).exists()
    assert list((store.root / "tmp").iterdir()) == []


def test_release_cascades_to_parents_nobody_else_holds(store, driver):
    base = store.register(io.BytesIO(layer_tar([LayerEntry("a", "file", b"a")])))
    top = store.register(io.BytesIO(layer_tar([LayerEntry("b", "file", b"b")])), base.chain_id)
    store.release(base.chain_id)  # the child still holds it
    assert store.exists(base.chain_id)
    removed = store.release(top.chain_id)
    assert [l.chain_id for l in removed] == [top.chain_id, base.chain_id]
    assert not driver.exists(base.cache_id) and not driver.exists(top.cache_id)


def test_malicious_layer_is_refused_and_leaves_nothing(store, driver, tmp_path):
    victim = tmp_path / "outside"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("../../../../../../../../" + str(victim).lstrip("/"))
        ti.size = 4
        tf.addfile(ti, io.BytesIO(b"evil"))
    with pytest.raises(InvalidParameter):
        store.register(io.BytesIO(buf.getvalue()))
    assert not victim.exists()
    assert store.all() == []
    assert list((store.root / "tmp").iterdir()) == []
    assert list((store.root / "sha256").iterdir()) == []


def test_failed_read_mid_stream_rolls_back_and_keeps_the_parent(store, driver):
    base = store.register(io.BytesIO(layer_tar([LayerEntry("a", "file", b"a")])))
    created = []

    class Broken(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data, self.pos = data, 0

        def readable(self) -> bool:
            return True

        def readinto(self, b):
            if self.pos > 2048:
                raise ConnectionResetError("client went away")
            n = min(len(b), 1024, len(self.data) - self.pos)
            b[:n] = self.data[self.pos : self.pos + n]
            self.pos += n
            return n

    blob = layer_tar([LayerEntry("big", "file", b"z" * 100_000)])
    with pytest.raises(ConnectionResetError):
        store.register(io.BufferedReader(Broken(blob), 1024), base.chain_id)
    created = [c for c in store.all() if c.chain_id != base.chain_id]
    assert created == []
    assert store.refcount(base.chain_id) == 1
    assert list((store.root / "tmp").iterdir()) == []


def test_startup_removes_leftovers_of_an_interrupted_register(driver, tmp_path):
    root = tmp_path / "image" / driver.name
    store = LayerStore(driver, root)
    # What a daemon killed inside apply_diff leaves: a staging dir naming a driver layer.
    from pyd.drivers.graph import CreateRequest

    staging = store._stage(["ab" * 32])
    driver.create(CreateRequest(layer_id="ab" * 32))
    (staging / "tar-split").write_bytes(b"partial")
    again = LayerStore(driver, root)
    assert list((again.root / "tmp").iterdir()) == []
    assert not driver.exists("ab" * 32)


def test_gc_removes_layers_nobody_took_after_restart(driver, tmp_path):
    root = tmp_path / "image" / driver.name
    store = LayerStore(driver, root)
    keep = store.register(io.BytesIO(layer_tar([LayerEntry("k", "file", b"k")])))
    orphan = store.register(io.BytesIO(layer_tar([LayerEntry("o", "file", b"o")])), keep.chain_id)
    again = LayerStore(driver, root)
    assert again.exists(orphan.chain_id)
    again.get(keep.chain_id)  # what an image restoring itself does
    removed = again.gc()
    assert [l.chain_id for l in removed] == [orphan.chain_id]
    assert again.exists(keep.chain_id)
    assert not driver.exists(orphan.cache_id)
    assert again.tar_size(keep.chain_id) > 0


def test_layer_that_writes_a_path_twice_is_not_exported_wrongly(store):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for data in (b"first", b"second"):
            ti = tarfile.TarInfo("dup")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    layer = store.register(io.BytesIO(buf.getvalue()))
    with pytest.raises(LayerNotReproducible):
        store.tar_size(layer.chain_id)


def test_read_write_layer_lifecycle(store, driver, tmp_path):
    image = store.register(io.BytesIO(layer_tar(busybox_entries()[:12])))
    seen = []

    def init(root: str) -> None:
        seen.append(root)
        Path(root, "etc", "hostname").write_text("")

    cid = "c" * 64
    rw = store.create_rw(cid, image.chain_id, init=init)
    assert seen and rw.init_id and rw.parent == image.chain_id
    assert store.refcount(image.chain_id) == 2
    root = store.mount(cid)
    try:
        Path(root, "hello").write_text("hi\n")
        assert Path(root, "etc", "hostname").exists()
        assert Path(root, "bin", "busybox").exists()
    finally:
        store.unmount(cid)
    paths = {c.path for c in store.rw_changes(cid)}
    assert "/hello" in paths and "/etc/hostname" not in paths
    # Survives a restart and still holds the image layer after gc.
    again = LayerStore(driver, store.root.parent)
    assert again.get_rw(cid) == rw
    again.gc()
    assert again.exists(image.chain_id)
    again.remove_rw(cid)
    with pytest.raises(NotFound):
        again.get_rw(cid)
    assert not driver.exists(rw.mount_id) and not driver.exists(rw.init_id)
    # Nothing but the container held the image layer in this store: it went with it.
    assert not again.exists(image.chain_id)


class _SelfReadingDriver:
    """The store's driver, but its apply_diff reads the layer stream through a wrapper of its
    own (as a third-party driver that does not use apply_layer would): the tar-split record
    must then come from the store's own parse."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self._inner = inner

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._inner, name)

    def apply_diff(self, layer_id: str, parent: str | None, diff) -> int:  # type: ignore[no-untyped-def]
        return self._inner.apply_diff(layer_id, parent, io.BufferedReader(diff, 4096))


def _tricky_blob() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("d" * 120 + "/" + "f" * 150, b"long"), ("x", b"x" * 5000), ("e", b"")):
            if "/" in name:
                ti = tarfile.TarInfo(name.split("/")[0])
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue() + bytes(2048)


def test_driver_reading_the_stream_itself_still_gets_an_exact_record(driver, tmp_path):
    store = LayerStore(_SelfReadingDriver(driver), tmp_path / "image" / "self")  # type: ignore[arg-type]
    blob = _tricky_blob()
    layer = store.register(io.BytesIO(blob))
    assert layer.diff_id == _sha(blob)
    assert _reassembled(store, layer.chain_id) == blob


class _Pieces(io.RawIOBase):
    """An upload that arrives in pieces of ``step`` bytes."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def, override]
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


@pytest.mark.parametrize("step", [333, 65536])
def test_upload_in_pieces_round_trips(store, step):
    blob = _tricky_blob()
    for data in (blob, gzip.compress(blob)):
        layer = store.register(_Pieces(data, step))  # type: ignore[arg-type]
        assert layer.diff_id == _sha(blob)
        assert _reassembled(store, layer.chain_id) == blob
        store.release(layer.chain_id)


def test_whiteout_of_a_file_the_layer_wrote_is_not_exported_wrongly(store):
    blob = layer_tar([LayerEntry("d", "dir"), LayerEntry("d/f", "file", b"gone"), LayerEntry("d/.wh.f", "file", b"")])
    layer = store.register(io.BytesIO(blob))
    with pytest.raises(LayerNotReproducible):
        store.tar_size(layer.chain_id)
