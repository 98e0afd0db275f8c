"""Images end to end: the ``pyd`` CLI and the docker SDK against a real daemon, per storage
driver (``overlay2`` and ``vfs``; only ``$PYD_TEST_STORAGE_DRIVER`` when tox sets it).

Covers the issue's "done when": import + ``images`` size, ``save | load`` round trip to the
same ID, ``rmi`` freeing the layers on disk, malicious layers refused with nothing written
outside the data-root, wrong digests refused, Docker-format archives loading, the docker SDK,
and a daemon killed in the middle of an upload leaving no image.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from pyd.engine.layers import chain_ids
from pyd.registry import Kind, installed_names
from pyd.testing.daemon import DaemonProcess
from pyd.testing.images import (
    LayerEntry,
    busybox_entries,
    busybox_rootfs_tar,
    default_layers,
    layer_tar,
    layered_image_archive,
    tree_size,
)

pytestmark = pytest.mark.integration

FLAGS = ["--log-driver", "none"]


def _drivers() -> list[str]:
    chosen = os.environ.get("PYD_TEST_STORAGE_DRIVER")
    return [chosen] if chosen else ["overlay2", "vfs"]


def pyd_cli(host: str, *args: str, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "PYD_HOST"}
    return subprocess.run([sys.executable, "-m", "pyd.cli.main", "-H", host, *args],
                          input=stdin, capture_output=True, timeout=timeout, env=env)


def ok(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def _unmount_below(path: Path) -> None:
    """Remove mounts a killed daemon left under ``path`` (deepest first)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(str(path))), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


@pytest.fixture(scope="module", params=_drivers())
def daemon(request, tmp_path_factory) -> Iterator[DaemonProcess]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = request.param
    if name not in installed_names(Kind.GRAPHDRIVER):
        pytest.skip(f"storage driver plugin {name} is not installed")
    root = tmp_path_factory.mktemp(f"images-{name}")
    d = DaemonProcess(root, flags=FLAGS, storage_driver=name)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()
        _unmount_below(d.data_root)


@pytest.fixture(scope="module")
def rootfs_tar(tmp_path_factory) -> Path:
    return busybox_rootfs_tar(tmp_path_factory.mktemp("rootfs") / "busybox-rootfs.tar")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def image_root(d: DaemonProcess) -> Path:
    return d.data_root / "image" / d.storage_driver


def layer_dirs(d: DaemonProcess, cache_id: str) -> list[Path]:
    """Directories of the driver home named after a layer's cache ID (any driver layout)."""
    home = d.data_root / d.storage_driver
    hits = []
    for top in [home, *[p for p in home.iterdir() if p.is_dir()]]:
        if (top / cache_id).exists():
            hits.append(top / cache_id)
    return hits


def chain_meta(d: DaemonProcess, chain: str) -> Path:
    return image_root(d) / "layerdb" / "sha256" / chain.split(":", 1)[1]


def inspect(d: DaemonProcess, name: str) -> dict:
    return d.get_json(f"/images/{name}/json")


def no_leftovers(d: DaemonProcess) -> None:
    assert list((image_root(d) / "tmp").iterdir()) == []
    assert list((image_root(d) / "layerdb" / "tmp").iterdir()) == []


# -- the done-when ----------------------------------------------------------------------------------


def test_import_then_images_shows_it_with_its_size(daemon, rootfs_tar):
    name = unique("busybox")
    out = ok(pyd_cli(daemon.host, "import", str(rootfs_tar), f"{name}:latest"))
    image_id = out.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    rows = ok(pyd_cli(daemon.host, "images", "--format", "{{.Repository}}|{{.Tag}}|{{.ID}}|{{.Size}}", name))
    [row] = rows.splitlines()
    repo, tag, short, size = row.split("|")
    assert (repo, tag, short) == (name, "latest", image_id[7:19])
    entries = busybox_entries()
    content = tree_size(entries)
    links = sum(len(e.target) for e in entries if e.kind == "symlink")
    api_size = inspect(daemon, name)["Size"]
    assert content <= api_size <= content + links
    assert size == f"{api_size / 1e6:.3g}MB"
    table = ok(pyd_cli(daemon.host, "images", name)).splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert inspect(daemon, name)["Comment"] == "Imported from -"


def test_save_pipe_load_round_trips_to_the_same_id(daemon, rootfs_tar):
    name = unique("roundtrip")
    image_id = ok(pyd_cli(daemon.host, "import", "-c", "CMD [\"sh\"]", str(rootfs_tar), name)).strip()
    saved = pyd_cli(daemon.host, "save", name)
    assert saved.returncode == 0 and saved.stdout[:512].count(b"\0") > 0  # a tar, not text
    ok(pyd_cli(daemon.host, "rmi", name))
    assert daemon.request("GET", f"/images/{name}/json")[0] == 404
    out = ok(pyd_cli(daemon.host, "load", stdin=saved.stdout))
    assert out == f"Loaded image: {name}:latest\n"
    assert inspect(daemon, name)["Id"] == image_id
    assert inspect(daemon, name)["Config"]["Cmd"] == ["sh"]
    # the same through a real shell pipe
    cli = f"{sys.executable} -m pyd.cli.main -H {daemon.host}"
    pipe = subprocess.run(f"{cli} save {name} | {cli} load", shell=True, capture_output=True, timeout=120)
    assert pipe.returncode == 0 and pipe.stdout.decode() == f"Loaded image: {name}:latest\n"
    assert inspect(daemon, name)["Id"] == image_id
    no_leftovers(daemon)


def test_rmi_frees_the_layers_on_disk(daemon):
    name = unique("freed")
    blob = layer_tar([LayerEntry("only-here", "file", uuid.uuid4().bytes * 1000)])
    image_id = ok(pyd_cli(daemon.host, "import", "-", name, stdin=blob)).strip()
    chain = inspect(daemon, name)["RootFS"]["Layers"][0]  # a base layer: chain ID == diff ID
    meta = chain_meta(daemon, chain)
    cache_id = (meta / "cache-id").read_text()
    assert layer_dirs(daemon, cache_id), "the layer's directory should exist before rmi"
    ok(pyd_cli(daemon.host, "tag", name, f"{name}-alias:v1"))
    assert ok(pyd_cli(daemon.host, "rmi", f"{name}-alias:v1")) == f"Untagged: {name}-alias:v1\n"
    assert layer_dirs(daemon, cache_id)
    out = ok(pyd_cli(daemon.host, "rmi", name)).splitlines()
    assert out == [f"Untagged: {name}:latest", f"Deleted: {image_id}", f"Deleted: {chain}"]
    assert layer_dirs(daemon, cache_id) == []
    assert not meta.exists()
    assert not (image_root(daemon) / "imagedb" / "content" / "sha256" / image_id[7:]).exists()
    no_leftovers(daemon)


# -- refusing bad input --------------------------------------------------------------------------


def _malicious_tars(victim: Path) -> dict[str, bytes]:
    out = {}
    for case in ("traversal", "symlink", "hardlink"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            if case == "traversal":
                ti = tarfile.TarInfo("../" * 30 + str(victim).lstrip("/"))
                ti.size = 4
                tf.addfile(ti, io.BytesIO(b"evil"))
            elif case == "symlink":
                link = tarfile.TarInfo("escape")
                link.type, link.linkname = tarfile.SYMTYPE, "../" * 30 + str(victim.parent).lstrip("/")
                tf.addfile(link)
                ti = tarfile.TarInfo(f"escape/{victim.name}")
                ti.size = 4
                tf.addfile(ti, io.BytesIO(b"evil"))
            else:
                victim.parent.mkdir(parents=True, exist_ok=True)
                (victim.parent / "target").write_bytes(b"host file")
                hl = tarfile.TarInfo("stolen")
                hl.type, hl.linkname = tarfile.LNKTYPE, "../" * 30 + str(victim.parent / "target").lstrip("/")
                tf.addfile(hl)
                ti = tarfile.TarInfo("stolen")
                ti.size = 4
                tf.addfile(ti, io.BytesIO(b"evil"))
        out[case] = buf.getvalue()
    return out


@pytest.mark.parametrize("case", ["traversal", "symlink", "hardlink"])
def test_malicious_import_fails_and_writes_nothing_outside(daemon, tmp_path, case):
    victim = tmp_path / "outside" / "victim"
    blob = _malicious_tars(victim)[case]
    name = unique(f"evil-{case}")
    before = daemon.get_json("/images/json?all=1")
    proc = pyd_cli(daemon.host, "import", "-", name, stdin=blob)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert err.startswith("Error response from daemon: ") and ("escape" in err or "stolen" in err or "outside" in err), err
    assert not victim.exists()
    if case == "hardlink":
        assert (victim.parent / "target").read_bytes() == b"host file"
    assert daemon.get_json("/images/json?all=1") == before
    no_leftovers(daemon)


def test_malicious_layer_in_a_load_fails_and_writes_nothing_outside(daemon, tmp_path):
    victim = tmp_path / "outside-load" / "victim"
    evil = [LayerEntry("escape", "symlink", target="../" * 30 + str(victim.parent).lstrip("/")),
            LayerEntry(f"escape/{victim.name}", "file", b"evil")]
    name = unique("evil-load")
    info = layered_image_archive(tmp_path / "evil.tar", layers=[default_layers()[0], evil],
                                 repo_tags=[f"{name}:latest"])
    proc = pyd_cli(daemon.host, "load", "-i", str(info.path))
    assert proc.returncode != 0 and b"escape" in proc.stderr, proc.stderr
    assert not victim.exists()
    assert daemon.request("GET", f"/images/{name}/json")[0] == 404
    assert not chain_meta(daemon, chain_ids(info.diff_ids)[1]).exists()
    no_leftovers(daemon)


def test_archive_with_a_wrong_layer_digest_is_refused(daemon, tmp_path):
    name = unique("corrupt")
    info = layered_image_archive(tmp_path / "bad.tar", repo_tags=[f"{name}:latest"], corrupt_layer=2)
    proc = pyd_cli(daemon.host, "load", "-i", str(info.path))
    assert proc.returncode == 1
    assert b"invalid diffID for layer 2" in proc.stderr
    assert daemon.request("GET", f"/images/{name}/json")[0] == 404
    assert daemon.request("GET", f"/images/{info.image_id}/json")[0] == 404
    no_leftovers(daemon)


def test_docker_format_archive_loads(daemon, tmp_path):
    name = unique("layered")
    info = layered_image_archive(tmp_path / "fixture.tar", repo_tags=[f"{name}:v1"], labels={"k": "v"})
    out = ok(pyd_cli(daemon.host, "load", "-i", str(info.path)))
    assert out == f"Loaded image: {name}:v1\n"
    doc = inspect(daemon, f"{name}:v1")
    assert doc["Id"] == info.image_id
    assert doc["RootFS"]["Layers"] == info.diff_ids
    hist = ok(pyd_cli(daemon.host, "history", "--no-trunc", "--format", "{{.ID}} {{.CreatedBy}}", f"{name}:v1"))
    assert hist.splitlines() == [f"{info.image_id} /bin/sh -c #(nop) layer 2",
                                 "<missing> /bin/sh -c #(nop) layer 1",
                                 "<missing> /bin/sh -c #(nop) layer 0"]
    listed = ok(pyd_cli(daemon.host, "images", "--filter", "label=k=v", "--format", "{{.Repository}}:{{.Tag}}"))
    assert f"{name}:v1" in listed.splitlines()


def test_save_refuses_a_terminal_and_missing_images(daemon):
    proc = pyd_cli(daemon.host, "save", "no-such-image:v9")
    assert proc.returncode == 1
    assert proc.stderr.decode() == "Error response from daemon: No such image: no-such-image:v9\n"
    status, _, body = daemon.request("GET", "/images/no-such-image:v9/json")
    assert status == 404
    assert json.loads(body) == {"message": "no such image: no-such-image:v9: No such image: no-such-image:v9"}


# -- the docker SDK -----------------------------------------------------------------------------------


def test_docker_sdk_load_save_list_tag_remove(daemon, tmp_path):
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=daemon.base_url)
    try:
        name = unique("sdk")
        info = layered_image_archive(tmp_path / "sdk.tar", repo_tags=[f"{name}:1"])
        [img] = client.images.load(info.path.read_bytes())
        assert img.id == info.image_id and img.tags == [f"{name}:1"]
        assert img.tag(f"{name}-copy", "2") is True
        assert {f"{name}:1", f"{name}-copy:2"} <= {t for i in client.images.list() for t in i.tags}
        assert [i.id for i in client.images.list(name=name)] == [info.image_id]
        got = client.images.get(f"{name}:1")
        assert got.tags == sorted([f"{name}:1", f"{name}-copy:2"])  # Docker's order
        data = b"".join(got.save(named=True))  # the SDK saves under the first tag
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            manifest = json.loads(tf.extractfile("manifest.json").read())
        assert manifest[0]["RepoTags"] == [got.tags[0]]
        client.images.remove(f"{name}-copy:2")
        client.images.remove(f"{name}:1")
        assert info.image_id not in {i.id for i in client.images.list(all=True)}
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(f"{name}:1")
        [again] = client.images.load(data)
        assert again.id == info.image_id and again.tags == [got.tags[0]]
        client.images.remove(again.id)
    finally:
        client.close()


# -- crash safety ----------------------------------------------------------------------------------


def test_daemon_killed_mid_upload_leaves_no_image(tmp_path, rootfs_tar, request):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    driver = _drivers()[0]
    if driver not in installed_names(Kind.GRAPHDRIVER):
        pytest.skip(f"storage driver plugin {driver} is not installed")
    d = DaemonProcess(tmp_path / "crash", flags=FLAGS, storage_driver=driver)
    request.addfinalizer(lambda: (d.cleanup(), _unmount_below(d.data_root)))
    d.start()
    name = unique("half")
    blob = rootfs_tar.read_bytes()
    sock = d.connect()
    try:
        sock.sendall(
            f"POST /v1.41/images/create?fromSrc=-&repo={name} HTTP/1.1\r\nHost: x\r\n"
            "Transfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n".encode()
        )
        half = blob[: len(blob) // 2]
        sock.sendall(b"%x\r\n%s\r\n" % (len(half), half))
        staging = image_root(d) / "layerdb" / "tmp"
        deadline = time.monotonic() + 20
        while not any(staging.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(staging.iterdir()), "the import did not start staging a layer"
        d.signal(signal.SIGKILL)
        d.proc.wait(10)
    finally:
        sock.close()
    _unmount_below(d.data_root)
    again = DaemonProcess(tmp_path / "crash", flags=FLAGS, storage_driver=driver)
    request.addfinalizer(lambda: (again.cleanup(), _unmount_below(again.data_root)))
    again.start()
    assert again.get_json("/images/json?all=1") == []
    assert list((image_root(again) / "layerdb" / "tmp").iterdir()) == []
    assert list((image_root(again) / "layerdb" / "sha256").iterdir()) == []
    # and the store still works
    out = ok(pyd_cli(again.host, "import", str(rootfs_tar), name))
    assert again.get_json(f"/images/{name}/json")["Id"] == out.strip()


# -- wire details ------------------------------------------------------------------------------------


def test_names_with_registry_port_and_slashes_route_from_the_right(daemon, rootfs_tar):
    base = unique("wire")
    ok(pyd_cli(daemon.host, "import", str(rootfs_tar), base))
    full = f"127.0.0.1:15000/trace/{base}:v1"
    status, headers, body = daemon.request(
        "POST", f"/v1.41/images/{base}/tag?repo=127.0.0.1%3A15000%2Ftrace%2F{base}&tag=v1")
    assert (status, body, headers.get("content-length")) == (201, b"", "0")
    doc = daemon.get_json(f"/v1.41/images/{full}/json")
    assert full in doc["RepoTags"]
    hist = daemon.get_json(f"/v1.41/images/{full}/history")
    assert hist[0]["Tags"] == sorted([f"{base}:latest", full])
    status, headers, body = daemon.request("GET", f"/v1.41/images/{full}/get")
    assert status == 200 and headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(body)) as tf:
        assert json.loads(tf.extractfile("manifest.json").read())[0]["RepoTags"] == [full]
    status, _, body = daemon.request("DELETE", f"/v1.41/images/{full}")
    assert (status, json.loads(body)) == (200, [{"Untagged": full}])
    status, _, body = daemon.request("GET", "/v1.41/images/Bad-Name/json")
    assert status == 400 and b"invalid reference format" in body


def test_import_reply_and_load_progress_shapes(daemon, tmp_path, rootfs_tar):
    name = unique("shape")
    status, headers, body = daemon.request(
        "POST", f"/v1.41/images/create?fromSrc=-&repo={name}%3Av1&changes=ENV+A%3D1",
        body=rootfs_tar.read_bytes(), headers={"Content-Type": "text/plain"})
    assert status == 200 and headers["content-type"] == "application/json"
    [line] = body.split(b"\r\n")[:-1]
    image_id = json.loads(line)["status"]
    assert inspect(daemon, f"{name}:v1")["Id"] == image_id
    assert inspect(daemon, f"{name}:v1")["Config"]["Env"] == ["A=1"]
    fresh = [LayerEntry("fresh", "file", uuid.uuid4().bytes * 64)]  # a layer the daemon lacks
    info = layered_image_archive(tmp_path / "p.tar", layers=default_layers()[:1] + [fresh],
                                 repo_tags=[f"{name}-p:1"])
    status, _, body = daemon.request("POST", "/v1.41/images/load?quiet=0", body=info.path.read_bytes(),
                                     headers={"Content-Type": "application/x-tar"})
    messages = [json.loads(x) for x in body.split(b"\r\n") if x]
    progress = [m for m in messages if m.get("status") == "Loading layer"]
    assert progress and all(set(m) == {"status", "progressDetail", "progress", "id"} for m in progress)
    assert messages[-1] == {"stream": f"Loaded image: {name}-p:1\n"}
    # errors before any output are plain HTTP errors
    status, _, body = daemon.request("POST", "/v1.41/images/load", body=b"not a tar at all" * 100)
    assert status == 400 and json.loads(body)["message"].startswith("invalid archive")
