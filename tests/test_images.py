"""The image service over a real layer store: import, load/save, tag, delete, prune, list.

Runs against ``testcopy`` and, when installed, the ``vfs`` and ``overlay2`` plugins.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from pyd.engine.images import ImageService
from pyd.engine.layers import LayerStore
from pyd.errors import Conflict, InvalidParameter, NotFound
from pyd.testing.images import (
    LayerEntry,
    apply_model,
    busybox_entries,
    default_layers,
    layer_tar,
    layered_image_archive,
    read_tree,
    tree_size,
)


@pytest.fixture
def driver(pyd_image_graph_driver):
    return pyd_image_graph_driver


def make_service(driver, root: Path, **kwargs) -> ImageService:
    root = root / "image" / driver.name
    return ImageService(LayerStore(driver, root), root, **kwargs)


@pytest.fixture
def svc(driver, tmp_path):
    return make_service(driver, tmp_path)


@pytest.fixture(scope="module")
def busybox_tar() -> bytes:
    return layer_tar(busybox_entries(), prefix="./", root_dir=True)


def _tree(svc: ImageService, image_id: str) -> dict:
    img = svc.get_by_id(image_id)
    layer = svc.layers.lookup(img.top_chain)
    root = svc.layers.driver.get(layer.cache_id)
    try:
        return read_tree(root)
    finally:
        svc.layers.driver.put(layer.cache_id)


def _save(svc: ImageService, names: list[str]) -> bytes:
    return b"".join(svc.save(svc.save_plan(names)))


# -- import -----------------------------------------------------------------------------------


def test_import_then_list_and_inspect(svc, busybox_tar):
    img = svc.import_rootfs(io.BytesIO(busybox_tar), "busybox")
    [summary] = svc.list_images()
    assert summary["RepoTags"] == ["busybox:latest"]
    assert summary["Id"] == img.id == "sha256:" + hashlib.sha256(img.raw).hexdigest()
    assert summary["Size"] == summary["VirtualSize"] >= tree_size(busybox_entries())
    assert summary["Containers"] == -1 and summary["SharedSize"] == -1
    doc = svc.inspect("busybox")
    assert doc["Comment"] == "Imported from -"
    assert doc["RepoTags"] == ["busybox:latest"] and doc["RepoDigests"] == []
    assert doc["RootFS"] == {"Type": "layers", "Layers": ["sha256:" + hashlib.sha256(busybox_tar).hexdigest()]}
    assert doc["Os"] == "linux" and doc["Architecture"]
    assert len(doc["ContainerConfig"]) == 17 and doc["ContainerConfig"]["Labels"] is None
    assert doc["Config"]["Cmd"] is None
    assert doc["GraphDriver"]["Name"] == svc.layers.driver_name
    assert doc["Created"].endswith("Z") and doc["Metadata"]["LastTagTime"] != "0001-01-01T00:00:00Z"
    assert svc.inspect(img.id[7:19])["Id"] == img.id  # short ID
    assert svc.inspect(img.id)["Id"] == img.id
    assert svc.inspect("docker.io/library/busybox:latest")["Id"] == img.id
    tree = _tree(svc, img.id)
    assert tree["bin/sh"] == ("symlink", "busybox")
    assert tree["etc/passwd"][1].startswith(b"root:x:0:0")


def test_import_applies_changes(svc, busybox_tar):
    img = svc.import_rootfs(
        io.BytesIO(busybox_tar),
        "changed:v1",
        changes=[
            'CMD ["sh", "-c", "echo hi"]',
            "ENV A=1 B=\"two words\"",
            "ENV C $A-x",
            "WORKDIR /srv",
            "WORKDIR app",
            "USER nobody",
            'LABEL com.example.k="v 1" other=2',
            "EXPOSE 80 53/udp 8000-8001",
            'VOLUME ["/data"]',
            "STOPSIGNAL SIGINT",
        ],
        message="custom message",
    )
    cfg = svc.inspect("changed:v1")["Config"]
    assert cfg["Cmd"] == ["sh", "-c", "echo hi"]
    assert cfg["Env"] == ["A=1", "B=two words", "C=1-x"]
    assert cfg["WorkingDir"] == "/srv/app"
    assert cfg["User"] == "nobody"
    assert cfg["Labels"] == {"com.example.k": "v 1", "other": "2"}
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}}
    assert cfg["Volumes"] == {"/data": {}}
    assert cfg["StopSignal"] == "SIGINT"
    assert list(cfg)[:6] == ["Hostname", "Domainname", "User", "AttachStdin", "AttachStdout", "AttachStderr"]
    assert svc.inspect(img.id)["Comment"] == "custom message"
    assert svc.history("changed:v1")[0]["Comment"] == "custom message"


@pytest.mark.parametrize(
    "repo, changes, fragment",
    [
        ("Bad", [], "must be lowercase"),
        ("ok", ["RUN echo"], "run is not a valid change command"),
        ("ok", ["STOPSIGNAL NOPE"], "Invalid signal"),
        ("ok", ["EXPOSE 80/foo"], "invalid proto"),
    ],
)
def test_bad_import_arguments_fail_before_reading(svc, repo, changes, fragment):
    class Untouchable(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, b):
            raise AssertionError("the upload was read although the arguments were invalid")

    with pytest.raises(InvalidParameter, match=fragment):
        svc.import_rootfs(Untouchable(), repo, changes=changes)
    assert svc.list_images() == []


def test_import_of_a_malicious_tar_fails_cleanly(svc, tmp_path):
    victim = tmp_path / "escaped"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        link = tarfile.TarInfo("evil")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
        tf.addfile(link)
        f = tarfile.TarInfo("evil/escaped")
        f.size = 3
        tf.addfile(f, io.BytesIO(b"bad"))
    with pytest.raises(InvalidParameter):
        svc.import_rootfs(io.BytesIO(buf.getvalue()), "evil:1")
    assert not victim.exists()
    assert svc.list_images(all=True) == [] and svc.layers.all() == []


# -- save / load -----------------------------------------------------------------------------


def test_save_then_load_round_trips_to_the_same_image(driver, tmp_path, busybox_tar):
    a = make_service(driver, tmp_path / "a")
    img = a.import_rootfs(io.BytesIO(busybox_tar), "busybox", changes=["CMD sh"])
    a.tag("busybox", "other/name", "v2")
    data = _save(a, ["busybox"])
    assert data == _save(a, ["busybox"])  # deterministic
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = tf.getnames()
        manifest = json.loads(tf.extractfile("manifest.json").read())
        repositories = json.loads(tf.extractfile("repositories").read())
    assert manifest[0]["Config"] == img.id[7:] + ".json"
    assert manifest[0]["RepoTags"] == ["busybox:latest"]
    assert manifest[0]["Layers"][0].endswith("/layer.tar") and manifest[0]["Layers"][0] in names
    assert list(repositories) == ["busybox"]
    b = make_service(driver, tmp_path / "b")
    lines = b.load(io.BytesIO(data))
    assert lines == ["Loaded image: busybox:latest"]
    assert b.inspect("busybox")["Id"] == img.id
    assert _tree(b, img.id) == _tree(a, img.id)
    # an ID saves the image without names
    both = _save(a, [img.id, "other/name:v2"])
    c = make_service(driver, tmp_path / "c")
    assert c.load(io.BytesIO(both)) == ["Loaded image: other/name:v2"]


def test_layered_fixture_archive_loads(svc, tmp_path):
    info = layered_image_archive(tmp_path / "l.tar", labels={"k": "v"})
    messages = []
    lines = svc.load(open(info.path, "rb"), quiet=False, emit=messages.append)
    assert lines == ["Loaded image: layered:latest"]
    assert any(m.get("status") == "Loading layer" and m["progressDetail"]["total"] > 0 for m in messages)
    assert messages[-1] == {"stream": "Loaded image: layered:latest\n"}
    doc = svc.inspect("layered")
    assert doc["Id"] == info.image_id
    assert doc["RootFS"]["Layers"] == info.diff_ids
    assert doc["Config"]["Labels"] == {"k": "v"}
    assert _tree(svc, info.image_id) == apply_model(default_layers())
    hist = svc.history("layered")
    assert [h["CreatedBy"] for h in hist] == [f"/bin/sh -c #(nop) layer {i}" for i in (2, 1, 0)]
    assert hist[0]["Id"] == info.image_id and hist[0]["Tags"] == ["layered:latest"]
    assert hist[-1]["Size"] >= tree_size(busybox_entries())
    # saving it again yields the fixture's exact layer bytes (same diff IDs) and loads anew
    again = make_service(svc.layers.driver, tmp_path / "again")
    again.load(io.BytesIO(_save(svc, ["layered:latest"])))
    assert again.inspect("layered")["Id"] == info.image_id
    # a second load of the same archive reuses every layer
    assert svc.load(open(info.path, "rb")) == ["Loaded image: layered:latest"]


def _no_leftovers(svc: ImageService) -> None:
    assert svc.list_images(all=True) == []
    assert svc.layers.all() == []
    assert list(svc.tmp.iterdir()) == []
    assert list((svc.layers.root / "tmp").iterdir()) == []


def test_load_refuses_a_wrong_layer_digest(svc, tmp_path):
    info = layered_image_archive(tmp_path / "bad.tar", corrupt_layer=1)
    with pytest.raises(InvalidParameter, match="invalid diffID for layer 1"):
        svc.load(open(info.path, "rb"))
    _no_leftovers(svc)


def _rewrite(src: Path, dst: Path, edit) -> None:
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None
            m, data = edit(m, data)
            if m is not None:
                tout.addfile(m, io.BytesIO(data) if data is not None else None)


@pytest.mark.parametrize("case", ["config-digest", "dotdot", "absolute", "symlink-out", "missing"])
def test_load_refuses_archives_that_lie_or_point_outside(svc, tmp_path, case):
    info = layered_image_archive(tmp_path / "src.tar", layers=default_layers()[:1])
    bad = tmp_path / "bad.tar"

    def edit(m, data):
        if m.name == "manifest.json":
            man = json.loads(data)
            if case == "dotdot":
                man[0]["Layers"] = ["../../../etc/passwd"]
            elif case == "absolute":
                man[0]["Layers"] = ["/etc/passwd"]
            elif case == "missing":
                man[0]["Layers"] = ["nope/layer.tar"]
            data = json.dumps(man).encode()
            m.size = len(data)
        elif case == "config-digest" and m.name.endswith(".json") and "/" not in m.name:
            data = data.replace(b'"os":"linux"', b'"os":"linux" ')
            m.size = len(data)
        elif case == "symlink-out" and m.name.endswith("/layer.tar"):
            m.type, m.linkname, m.size, data = tarfile.SYMTYPE, "../../../../etc/passwd", 0, None
        return m, data

    _rewrite(info.path, bad, edit)
    with pytest.raises(InvalidParameter) as exc:
        svc.load(open(bad, "rb"))
    assert "invalid archive" in str(exc.value)
    _no_leftovers(svc)


def test_shared_layer_symlink_inside_the_archive_loads(svc, tmp_path):
    # docker save writes a layer shared by two images once and symlinks the second copy.
    info = layered_image_archive(tmp_path / "src.tar", layers=default_layers()[:1])
    blob_path = None
    dst = tmp_path / "linked.tar"
    with tarfile.open(info.path) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None
            if m.name.endswith("/layer.tar"):
                blob_path = m.name
                m.name = "shared/layer.tar"
                tout.addfile(m, io.BytesIO(data))
                link = tarfile.TarInfo(blob_path)
                link.type, link.linkname = tarfile.SYMTYPE, "../shared/layer.tar"
                tout.addfile(link)
                continue
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
    assert svc.load(open(dst, "rb")) == ["Loaded image: layered:latest"]


def test_interrupted_load_leaves_no_image(svc, tmp_path):
    info = layered_image_archive(tmp_path / "l.tar")
    data = info.path.read_bytes()
    cut = data.index(b"ustar", len(data) // 2)  # inside a later member
    with pytest.raises(InvalidParameter):
        svc.load(io.BytesIO(data[:cut]))
    _no_leftovers(svc)


def test_oci_layout_archive_loads(svc, tmp_path):
    blob = layer_tar(busybox_entries())
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(blob).hexdigest()]}}).encode()
    cd, ld = hashlib.sha256(config).hexdigest(), hashlib.sha256(blob).hexdigest()
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": f"sha256:{cd}"},
                           "layers": [{"digest": f"sha256:{ld}"}]}).encode()
    md = hashlib.sha256(manifest).hexdigest()
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"digest": f"sha256:{md}", "annotations": {"io.containerd.image.name": "docker.io/library/oci:1"}}]}).encode()
    path = tmp_path / "oci.tar"
    with tarfile.open(path, "w") as tf:
        for name, data in ((f"blobs/sha256/{cd}", config), (f"blobs/sha256/{ld}", blob),
                           (f"blobs/sha256/{md}", manifest), ("index.json", index), ("oci-layout", b"{}")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    assert svc.load(open(path, "rb")) == ["Loaded image: oci:1"]
    assert svc.inspect("oci:1")["Id"] == f"sha256:{cd}"


# -- tag / delete / prune ----------------------------------------------------------------------


def test_rmi_untags_first_and_frees_layers_with_the_last_name(svc, driver, busybox_tar):
    img = svc.import_rootfs(io.BytesIO(busybox_tar), "busybox:latest")
    svc.tag(img.id, "docker.io/library/trace-bb", "v1")
    layer = svc.layers.lookup(img.top_chain)
    assert svc.delete("trace-bb:v1") == [{"Untagged": "trace-bb:v1"}]
    assert driver.exists(layer.cache_id)
    records = svc.delete("busybox")
    assert records == [{"Untagged": "busybox:latest"}, {"Deleted": img.id}, {"Deleted": layer.chain_id}]
    assert not driver.exists(layer.cache_id)
    _no_leftovers(svc)
    with pytest.raises(NotFound, match="No such image: busybox:latest"):
        svc.delete("busybox")
    with pytest.raises(NotFound, match="No such image: busybox:latest"):
        svc.inspect("busybox")


def test_rmi_by_id_with_names_in_several_repositories_must_be_forced(svc, busybox_tar):
    img = svc.import_rootfs(io.BytesIO(busybox_tar), "one:1")
    svc.tag("one:1", "two", "2")
    with pytest.raises(Conflict, match=r"unable to delete [0-9a-f]{12} \(must be forced\) - image is referenced in multiple repositories"):
        svc.delete(img.id[7:19])
    records = svc.delete(img.id[7:19], force=True)
    assert {"Untagged": "one:1"} in records and {"Untagged": "two:2"} in records
    assert {"Deleted": img.id} in records


def test_rmi_respects_containers_using_the_image(driver, tmp_path, busybox_tar):
    users: dict[str, list[tuple[str, bool]]] = {}
    svc = make_service(driver, tmp_path, containers_using=lambda i: users.get(i, []))
    img = svc.import_rootfs(io.BytesIO(busybox_tar), "trace-build:v1")
    users[img.id] = [("0a2c9c9bd2a7" + "0" * 52, False)]
    with pytest.raises(Conflict) as exc:
        svc.delete("trace-build:v1")
    assert str(exc.value) == (
        'conflict: unable to remove repository reference "trace-build:v1" (must force) - '
        f"container 0a2c9c9bd2a7 is using its referenced image {img.id[7:19]}"
    )
    # forced, as dockerd: the image goes although a stopped container uses it
    records = svc.delete("trace-build:v1", force=True)
    assert records[:2] == [{"Untagged": "trace-build:v1"}, {"Deleted": img.id}]
    img = svc.import_rootfs(io.BytesIO(busybox_tar), "trace-run:v1")
    users[img.id] = [("f" * 64, True)]
    with pytest.raises(Conflict, match=r"unable to delete [0-9a-f]{12} \(cannot be forced\) - image is being used by running container ffffffffffff"):
        svc.delete(img.id, force=True)
    # by name, forced: only the name goes; the running container keeps its image
    assert svc.delete("trace-run:v1", force=True) == [{"Untagged": "trace-run:v1"}]
    assert svc.get_by_id(img.id) is not None


def test_dangling_images_filters_and_prune(svc, busybox_tar):
    tagged = svc.import_rootfs(io.BytesIO(busybox_tar), "keep:1", changes=["LABEL team=a"])
    small = layer_tar([LayerEntry("only", "file", b"x" * 1000)])
    dangling = svc.import_rootfs(io.BytesIO(small), "", changes=["LABEL team=b"])
    rows = svc.list_images()
    assert {r["Id"]: r["RepoTags"] for r in rows} == {tagged.id: ["keep:1"], dangling.id: ["<none>:<none>"]}
    assert [r["Id"] for r in rows] == [dangling.id, tagged.id]  # newest first
    assert [r["Id"] for r in svc.list_images(filters={"dangling": ["true"]})] == [dangling.id]
    assert [r["Id"] for r in svc.list_images(filters={"dangling": ["false"]})] == [tagged.id]
    assert [r["Id"] for r in svc.list_images(filters={"label": ["team=b"]})] == [dangling.id]
    assert [r["Id"] for r in svc.list_images(filters={"label": ["team"]})] == [dangling.id, tagged.id]
    assert [r["Id"] for r in svc.list_images(filters={"reference": ["ke*"]})] == [tagged.id]
    assert [r["Id"] for r in svc.list_images(filters={"before": [dangling.id]})] == [tagged.id]
    assert [r["Id"] for r in svc.list_images(filters={"since": ["keep:1"]})] == [dangling.id]
    with pytest.raises(InvalidParameter, match="Invalid filter 'nope'"):
        svc.list_images(filters={"nope": ["1"]})
    with pytest.raises(InvalidParameter, match="Invalid filter 'dangling=maybe'"):
        svc.list_images(filters={"dangling": ["maybe"]})
    report = svc.prune()
    assert report["ImagesDeleted"][0] == {"Deleted": dangling.id}
    assert report["SpaceReclaimed"] >= 1000
    assert [r["Id"] for r in svc.list_images()] == [tagged.id]
    assert svc.prune() == {"ImagesDeleted": None, "SpaceReclaimed": 0}
    report = svc.prune({"dangling": ["false"]})
    assert {"Untagged": "keep:1"} in report["ImagesDeleted"]
    _no_leftovers(svc)


def test_df_counts_shared_layers(svc, tmp_path):
    base = default_layers()[:1]
    layered_image_archive(tmp_path / "a.tar", layers=base, repo_tags=["a:1"])
    svc.load(open(tmp_path / "a.tar", "rb"))
    layered_image_archive(tmp_path / "b.tar", layers=base + [[LayerEntry("x", "file", b"x" * 10)]],
                          repo_tags=["b:1"])
    svc.load(open(tmp_path / "b.tar", "rb"))
    df = svc.df()
    sizes = {tuple(i["RepoTags"]): i for i in df["Images"]}
    a, b = sizes[("a:1",)], sizes[("b:1",)]
    assert a["SharedSize"] == a["Size"] and b["SharedSize"] == a["Size"]
    assert b["Size"] == a["Size"] + 10
    assert df["LayersSize"] == b["Size"]
    assert a["Containers"] == 0


def test_restart_restores_images_and_collects_orphan_layers(driver, tmp_path, busybox_tar):
    svc = make_service(driver, tmp_path)
    img = svc.import_rootfs(io.BytesIO(busybox_tar), "busybox")
    # a layer committed by a load that died before its image was written
    orphan = svc.layers.register(io.BytesIO(layer_tar([LayerEntry("o", "file", b"o")])))
    again = make_service(driver, tmp_path)
    assert again.inspect("busybox")["Id"] == img.id
    assert again.layers.exists(img.top_chain)
    assert not again.layers.exists(orphan.chain_id)
    assert not driver.exists(orphan.cache_id)
    assert again.count() == 1
