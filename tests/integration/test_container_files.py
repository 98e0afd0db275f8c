"""A container's filesystem over the real socket: ``pyd commit``, ``pyd diff``, ``pyd cp`` and
``pyd export`` (issues 3 and 4), with the pyd CLI, the docker SDK and (when installed) the
docker CLI against a real daemon with the native exec driver.

The storage driver is ``$PYD_TEST_STORAGE_DRIVER`` (tox sets overlay2, then vfs), overlay2 by
default. The last test stops the daemon and checks that no mount is left under its roots.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import secrets
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from pyd.registry import Kind, installed_names
from pyd.testing.daemon import DaemonProcess
from pyd.testing.images import busybox_rootfs_tar

pytestmark = pytest.mark.integration

DRIVER = os.environ.get("PYD_TEST_STORAGE_DRIVER") or "overlay2"
DOCKER = "/usr/local/bin/docker"


def pyd(host: str, *args: str, stdin: bytes | None = None, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "PYD_HOST"}
    kw.setdefault("capture_output", True)
    return subprocess.run([sys.executable, "-m", "pyd.cli.main", "-H", host, *args],
                          input=stdin, timeout=timeout, env=env, **kw)


def ok(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode())
    return proc.stdout.decode(errors="replace")


def failed(proc: subprocess.CompletedProcess[bytes], text: str) -> None:
    assert proc.returncode != 0 and text in proc.stderr.decode(), (proc.returncode, proc.stderr.decode())


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for kind, name in ((Kind.GRAPHDRIVER, DRIVER), (Kind.EXEC, "native")):
        if name not in installed_names(kind):
            pytest.skip(f"{kind.value} driver {name} is not installed")
    root = tmp_path_factory.mktemp(f"files-{DRIVER}")
    d = DaemonProcess(root, storage_driver=DRIVER)
    d.start()
    try:
        ok(pyd(d.host, "import", str(busybox_rootfs_tar(root / "busybox.tar")), "busybox:latest"))
        yield d
    finally:
        d.cleanup()


def name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def sleeper(d: DaemonProcess, script: str = "", *extra: str) -> str:
    """A running container that first runs ``script``; returns its ID once the script is done."""
    cmd = f"{script}; touch /.ready; sleep 300" if script else "touch /.ready; sleep 300"
    cid = ok(pyd(d.host, "run", "-d", *extra, "busybox", "sh", "-c", cmd)).strip()
    deadline = time.monotonic() + 10
    while pyd(d.host, "exec", cid, "test", "-e", "/.ready").returncode != 0:
        assert time.monotonic() < deadline, "the container's script did not finish"
        time.sleep(0.1)
    return cid


def exec_out(d: DaemonProcess, cid: str, *cmd: str) -> str:
    return ok(pyd(d.host, "exec", cid, *cmd))


def inspect(d: DaemonProcess, ref: str) -> dict[str, Any]:
    return json.loads(ok(pyd(d.host, "inspect", ref)))[0]


def events(d: DaemonProcess, since: float) -> list[dict[str, Any]]:
    until = time.time() + 0.5
    status, _, body = d.request("GET", f"/events?since={since:.3f}&until={until:.3f}")
    assert status == 200
    return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


def tar_of(members: dict[str, Any]) -> bytes:
    """A tar from {name: bytes (file) | None (dir) | ("link", target)}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for path, value in members.items():
            ti = tarfile.TarInfo(path)
            if value is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            elif isinstance(value, tuple):
                ti.type, ti.linkname = tarfile.SYMTYPE, value[1]
                tf.addfile(ti)
            else:
                ti.size, ti.mode = len(value), 0o644
                tf.addfile(ti, io.BytesIO(value))
    return buf.getvalue()


def tar_names(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name.rstrip("/"): m for m in tf.getmembers()}


# -- the commit's layer filter and config merge (no daemon needed) -----------------------------------


def _filtered(data: bytes) -> tuple[list[str], int]:
    from pyd.engine.container_commit import LayerFilter

    filt = LayerFilter(io.BytesIO(data))
    out = b"".join(filt.chunks())
    assert filt.ended
    return list(tar_names(out)), filt.kept


def test_layer_filter_drops_only_the_generated_mount_points():
    long_name = "deep/" + "d" * 120 + "/file"  # a PAX path record
    data = tar_of({"etc": None, "etc/hosts": b"", "etc/hostname": b"", "etc/resolv.conf": b"",
                   "hello": b"hi\n", long_name: b"long"})
    names, kept = _filtered(data)
    assert names == ["hello", long_name] and kept == 2  # /etc changed only by the mount points
    names, kept = _filtered(tar_of({"etc": None, "etc/hosts": b"", "etc/passwd": b"root\n", "etc/.wh.group": b""}))
    assert names == ["etc", "etc/passwd", "etc/.wh.group"] and kept == 3
    assert _filtered(tar_of({"etc": None, "etc/hosts": b""})) == ([], 0)  # nothing else: an empty layer


def test_commit_config_merges_like_moby():
    from pyd.engine.container_commit import CommitRequest, new_config

    container = {"Cmd": ["sleep", "1"], "Env": ["A=1", "B=2"], "Labels": {"l": "c"}, "WorkingDir": "/w",
                 "ExposedPorts": {"80/tcp": {}}, "User": "nobody", "Image": "busybox"}
    cfg = new_config(CommitRequest("c", changes=('CMD ["cat","/x"]', "ENV B=3", "EXPOSE 81", "LABEL m=n")), container)
    assert cfg["Cmd"] == ["cat", "/x"] and cfg["Env"] == ["A=1", "B=3"] and cfg["User"] == "nobody"
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "81/tcp": {}} and cfg["Labels"] == {"l": "c", "m": "n"}
    # docker-py's body: a config to start from; what it leaves unset comes from the container
    cfg = new_config(CommitRequest("c", config={"Entrypoint": ["/bin/sh"]}), container)
    assert cfg["Entrypoint"] == ["/bin/sh"] and cfg["Cmd"] is None and cfg["WorkingDir"] == "/w"
    with pytest.raises(Exception, match="run is not a valid change command"):
        new_config(CommitRequest("c", changes=("RUN true",)), container)


# -- commit -------------------------------------------------------------------------------------------


def test_commit_makes_an_image_with_the_containers_files(daemon):
    cid = sleeper(daemon, "echo hello-commit > /hello; rm /etc/group", "-l", "team=files")
    since = time.time() - 0.1
    image = name("committed")
    image_id = ok(pyd(daemon.host, "commit", "-m", "my message", "-a", "Jane <jane@example.com>",
                      "-c", 'CMD ["cat","/hello"]', "-c", "ENV FOO=bar", cid, f"{image}:v1")).strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", image_id)
    # the container was paused for the commit, then resumed
    assert inspect(daemon, cid)["State"]["Status"] == "running"
    seen = [e.get("Action") for e in events(daemon, since)
            if e.get("id") == cid and e.get("Action") in ("pause", "unpause", "commit")]
    assert seen == ["pause", "unpause", "commit"]
    commit_event = [e for e in events(daemon, since) if e.get("Action") == "commit"][0]
    assert commit_event["Actor"]["Attributes"]["imageID"] == image_id
    assert commit_event["Actor"]["Attributes"]["imageRef"] == f"{image}:v1"
    # a new container of the image sees /hello; the change set its command and environment
    assert ok(pyd(daemon.host, "run", "--rm", f"{image}:v1")) == "hello-commit\n"
    assert ok(pyd(daemon.host, "run", "--rm", f"{image}:v1", "sh", "-c", "echo $FOO")) == "bar\n"
    gone = pyd(daemon.host, "run", "--rm", f"{image}:v1", "cat", "/etc/group")
    assert gone.returncode == 1 and b"No such file" in gone.stderr  # deleted in the container
    # the generated /etc files are mount points of the container, not content of the image
    assert ok(pyd(daemon.host, "run", "--rm", f"{image}:v1", "cat", "/etc/hostname")).strip() != cid[:12]

    info = json.loads(ok(pyd(daemon.host, "image", "inspect", f"{image}:v1")))[0]
    base = json.loads(ok(pyd(daemon.host, "image", "inspect", "busybox")))[0]
    assert info["Id"] == image_id and info["Parent"] == base["Id"]
    assert info["RootFS"]["Layers"][:-1] == base["RootFS"]["Layers"] and len(info["RootFS"]["Layers"]) == 2
    assert (info["Comment"], info["Author"], info["Container"]) == ("my message", "Jane <jane@example.com>", cid)
    assert info["Config"]["Cmd"] == ["cat", "/hello"] and "FOO=bar" in info["Config"]["Env"]
    assert info["Config"]["Labels"] == {"team": "files"}  # inherited from the container
    assert info["ContainerConfig"]["Cmd"][-1].startswith("echo hello-commit")

    # history: the new layer on top of the imported one
    rows = ok(pyd(daemon.host, "history", "--no-trunc", "--format", "{{.ID}}|{{.CreatedBy}}|{{.Size}}|{{.Comment}}",
                  f"{image}:v1")).splitlines()
    assert len(rows) == 2
    top, below = (r.split("|") for r in rows)
    assert top[0] == image_id and "echo hello-commit" in top[1] and top[2] != "0B" and top[3] == "my message"
    assert below[0] == base["Id"] and below[3] == "Imported from -"
    ok(pyd(daemon.host, "rm", "-f", cid))
    ok(pyd(daemon.host, "rmi", f"{image}:v1"))


def test_commit_of_an_unchanged_container_adds_no_layer(daemon):
    cid = ok(pyd(daemon.host, "create", "busybox", "echo", "from-create")).strip()
    image = name("empty")
    image_id = ok(pyd(daemon.host, "commit", "--pause=false", cid, image)).strip()
    info = json.loads(ok(pyd(daemon.host, "image", "inspect", image)))[0]
    base = json.loads(ok(pyd(daemon.host, "image", "inspect", "busybox")))[0]
    assert info["Id"] == image_id and info["RootFS"]["Layers"] == base["RootFS"]["Layers"]
    assert info["Config"]["Cmd"] == ["echo", "from-create"]
    history = daemon.get_json(f"/images/{image}/history")
    assert [h["Id"] for h in history] == [image_id, base["Id"]] and history[0]["Size"] == 0
    assert ok(pyd(daemon.host, "run", "--rm", image)) == "from-create\n"
    ok(pyd(daemon.host, "rm", cid))
    ok(pyd(daemon.host, "rmi", image))


def test_commit_errors_change_nothing(daemon):
    cid = sleeper(daemon)
    failed(pyd(daemon.host, "commit", "-c", "RUN echo no", cid, name("bad")), "run is not a valid change command")
    failed(pyd(daemon.host, "commit", cid, "Bad:Name"), "")
    failed(pyd(daemon.host, "commit", "no-such-container-x", "img"), "No such container: no-such-container-x")
    assert inspect(daemon, cid)["State"]["Status"] == "running"  # never paused
    # a container paused by the user stays paused across a commit
    ok(pyd(daemon.host, "pause", cid))
    image = name("frompaused")
    ok(pyd(daemon.host, "commit", cid, image))
    assert inspect(daemon, cid)["State"]["Status"] == "paused"
    ok(pyd(daemon.host, "unpause", cid))
    ok(pyd(daemon.host, "rm", "-f", cid))
    ok(pyd(daemon.host, "rmi", image))


def test_rmi_of_a_committed_image_in_use_is_refused(daemon):
    src = sleeper(daemon, "echo x > /x")
    image = name("inuse")
    image_id = ok(pyd(daemon.host, "commit", src, f"{image}:v1")).strip()
    user = ok(pyd(daemon.host, "run", "-d", f"{image}:v1", "sleep", "300")).strip()
    refused = pyd(daemon.host, "rmi", f"{image}:v1")
    failed(refused, f'conflict: unable to remove repository reference "{image}:v1" (must force) - '
                    f"container {user[:12]} is using its referenced image {image_id[7:19]}")
    status, _, body = daemon.request("DELETE", f"/v1.41/images/{image}:v1")
    assert status == 409 and json.loads(body)["message"].startswith("conflict: unable to remove")
    ok(pyd(daemon.host, "rm", "-f", user, src))
    ok(pyd(daemon.host, "rmi", f"{image}:v1"))


# -- diff -----------------------------------------------------------------------------------------------


def test_diff_lists_added_changed_and_deleted_paths(daemon):
    script = "rm /etc/group; echo more >> /etc/passwd; mkdir -p /new/sub; echo f > /new/sub/f; touch /tmp/t"
    cid = sleeper(daemon, script)
    lines = ok(pyd(daemon.host, "diff", cid)).splitlines()
    expected = {"C /etc", "D /etc/group", "C /etc/passwd", "A /new", "A /new/sub", "A /new/sub/f",
                "C /tmp", "A /tmp/t", "A /.ready"}
    assert set(lines) == expected and len(lines) == len(expected)
    # the same after the container stopped (its filesystem is mounted for the request)
    ok(pyd(daemon.host, "kill", cid))
    assert set(ok(pyd(daemon.host, "diff", cid)).splitlines()) == expected
    ok(pyd(daemon.host, "rm", cid))
    failed(pyd(daemon.host, "diff", "no-such-container-y"), "No such container")


# -- cp ---------------------------------------------------------------------------------------------------


def test_cp_files_and_directories_in_and_out(daemon, tmp_path):
    cid = sleeper(daemon, "mkdir -p /data/sub; echo one > /data/a; echo two > /data/sub/b; ln -s a /data/link")
    host = daemon.host
    # a file into a path that does not exist yet, and into an existing directory
    src = tmp_path / "in.txt"
    src.write_text("hello in\n")
    ok(pyd(host, "cp", str(src), f"{cid}:/tmp/renamed.txt"))
    ok(pyd(host, "cp", str(src), f"{cid}:/tmp"))
    assert exec_out(daemon, cid, "cat", "/tmp/renamed.txt", "/tmp/in.txt") == "hello in\nhello in\n"
    assert exec_out(daemon, cid, "stat", "-c", "%u:%g %a", "/tmp/in.txt") == "0:0 644\n"
    # a directory tree in: under its own name into an existing directory, renamed into a new path,
    # and its contents only with DIR/.
    tree = tmp_path / "tree"
    (tree / "deep").mkdir(parents=True)
    (tree / "deep" / "f").write_text("deep\n")
    (tree / "top").write_text("top\n")
    os.symlink("top", tree / "toplink")
    ok(pyd(host, "cp", str(tree), f"{cid}:/tmp"))
    ok(pyd(host, "cp", str(tree), f"{cid}:/newtree"))
    ok(pyd(host, "cp", f"{tree}/.", f"{cid}:/data"))
    assert exec_out(daemon, cid, "cat", "/tmp/tree/deep/f", "/newtree/top", "/data/deep/f", "/data/top") == "deep\ntop\ndeep\ntop\n"
    assert exec_out(daemon, cid, "readlink", "/newtree/toplink") == "top\n"
    # -a keeps the local owner; without it files belong to the container's root
    owned = tmp_path / "owned"
    owned.write_text("x")
    os.chown(owned, 1234, 1235)
    ok(pyd(host, "cp", "-a", str(owned), f"{cid}:/tmp/owned"))
    assert exec_out(daemon, cid, "stat", "-c", "%u:%g", "/tmp/owned") == "1234:1235\n"

    # out: a file to a new path and into an existing directory; a directory; DIR/.
    out = tmp_path / "out"
    out.mkdir()
    ok(pyd(host, "cp", f"{cid}:/data/a", str(out / "a-copy")))
    ok(pyd(host, "cp", f"{cid}:/data/sub/b", str(out)))
    ok(pyd(host, "cp", f"{cid}:/data", str(out)))
    ok(pyd(host, "cp", f"{cid}:/data", str(out / "renamed")))
    (out / "contents").mkdir()
    ok(pyd(host, "cp", f"{cid}:/data/sub/.", str(out / "contents")))
    assert (out / "a-copy").read_text() == "one\n" and (out / "b").read_text() == "two\n"
    assert (out / "data" / "sub" / "b").read_text() == "two\n" and (out / "renamed" / "a").read_text() == "one\n"
    assert os.readlink(out / "data" / "link") == "a"  # links are copied as links
    assert os.listdir(out / "contents") == ["b"]
    # -L follows a symlink at the source: the file's content under the link's name
    ok(pyd(host, "cp", "-L", f"{cid}:/data/link", str(out / "followed")))
    assert not (out / "followed").is_symlink() and (out / "followed").read_text() == "one\n"
    ok(pyd(host, "cp", f"{cid}:/data/link", str(out / "notfollowed")))
    assert os.readlink(out / "notfollowed") == "a"

    # errors as docker reports them
    failed(pyd(host, "cp", f"{cid}:/nope", str(out)), f"Could not find the file /nope in container {cid}")
    failed(pyd(host, "cp", str(src), f"{cid}:/no/such/dir/x"), "Could not find the file")
    failed(pyd(host, "cp", f"{cid}:/data", str(out / "a-copy")), "cannot copy a directory to a file")
    failed(pyd(host, "cp", str(src), str(out)), "must specify at least one container source")
    failed(pyd(host, "cp", f"{cid}:/a", f"{cid}:/b"), "copying between containers is not supported")
    ok(pyd(host, "rm", "-f", cid))


def test_cp_tar_streams_on_stdin_and_stdout(daemon, tmp_path):
    cid = sleeper(daemon, "mkdir /data; echo one > /data/a")
    host = daemon.host
    ok(pyd(host, "cp", "-", f"{cid}:/data", stdin=tar_of({"piped": None, "piped/f": b"from stdin\n", "g": b"g\n"})))
    assert exec_out(daemon, cid, "cat", "/data/piped/f", "/data/g") == "from stdin\ng\n"
    failed(pyd(host, "cp", "-", f"{cid}:/data/a", stdin=tar_of({"x": b"x"})), "must be a directory")
    # a directory to stdout: a tar whose top entry is the directory's name
    members = tar_names(pyd(host, "cp", f"{cid}:/data", "-").stdout)
    assert {"data", "data/a", "data/piped", "data/piped/f", "data/g"} <= set(members)
    data = pyd(host, "cp", f"{cid}:/data/a", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert [m.name for m in tf.getmembers()] == ["a"] and tf.extractfile("a").read() == b"one\n"  # type: ignore[union-attr]
    ok(pyd(host, "rm", "-f", cid))


def test_cp_through_symlinks_never_leaves_the_rootfs(daemon, tmp_path):
    probe = f"pyd-cp-probe-{secrets.token_hex(4)}"
    host_dir = tmp_path / "hostdir"
    host_dir.mkdir()
    cid = sleeper(daemon, f"ln -s / /escape; ln -s ../../../../../../.. /up; ln -s {host_dir} /abs; "
                          "mkdir /data; ln -s /etc /data/etclink")
    host = daemon.host
    src = tmp_path / f"{probe}-0"
    src.write_text("contained\n")
    # into a path below a symlink to /, a relative symlink climbing out, and an absolute
    # symlink naming a real host directory: every one resolves inside the container
    ok(pyd(host, "cp", str(src), f"{cid}:/escape/{probe}-1"))
    ok(pyd(host, "cp", str(src), f"{cid}:/up/tmp/{probe}-2"))
    made = pyd(host, "cp", str(src), f"{cid}:/abs/{probe}-3")
    ok(pyd(host, "cp", str(src), f"{cid}:/escape"))  # the destination itself a symlink
    ok(pyd(host, "cp", "-", f"{cid}:/up", stdin=tar_of({f"{probe}-4": b"tar\n"})))
    evil = pyd(host, "cp", "-", f"{cid}:/tmp", stdin=tar_of({"evil": ("link", "/"), f"evil/{probe}-5": b"x"}))
    assert not Path(f"/{probe}-1").exists() and not Path(f"/tmp/{probe}-2").exists()
    assert not Path(f"/{probe}-4").exists() and not Path(f"/{probe}-5").exists() and not Path(f"/tmp/{probe}-5").exists()
    assert not Path(f"/{probe}-0").exists() and list(host_dir.iterdir()) == []
    assert exec_out(daemon, cid, "cat", f"/{probe}-1", f"/tmp/{probe}-2", f"/{probe}-0", f"/{probe}-4") == "contained\n" * 3 + "tar\n"
    if made.returncode == 0:  # /abs -> hostdir is a missing path inside the container
        assert exec_out(daemon, cid, "cat", f"{host_dir}/{probe}-3") == "contained\n"
    if evil.returncode == 0:  # the tar's own link to "/" is resolved inside the container too
        assert exec_out(daemon, cid, "sh", "-c", f"cat /{probe}-5 2>/dev/null || cat /tmp/{probe}-5") == "x"
    # the container's root itself (a "//" in the daemon once meant the host's root)
    ok(pyd(host, "cp", "-", f"{cid}:/", stdin=tar_of({f"{probe}-6": b"root\n"})))
    ok(pyd(host, "cp", "-", f"{cid}:/bin/..", stdin=tar_of({f"{probe}-7": b"root\n"})))
    assert not Path(f"/{probe}-6").exists() and not Path(f"/{probe}-7").exists()
    assert exec_out(daemon, cid, "cat", f"/{probe}-6", f"/{probe}-7") == "root\n" * 2
    whole = tar_names(pyd(host, "cp", f"{cid}:/", "-").stdout)
    assert "bin/busybox" in whole and f"{probe}-6" in whole and "work" not in whole and "usr" not in whole
    # out through symlinks: the container's files, never the host's
    out = tmp_path / "passwd"
    ok(pyd(host, "cp", f"{cid}:/escape/etc/passwd", str(out)))
    assert out.read_text() == exec_out(daemon, cid, "cat", "/etc/passwd")
    # a symlink in the copied tree pointing at a host path is recreated as a link, not followed
    target = tmp_path / "victim"
    target.mkdir()
    ok(pyd(host, "cp", f"{cid}:/data", str(tmp_path / "copy")))
    assert os.readlink(tmp_path / "copy" / "etclink") == "/etc" and list(target.iterdir()) == []
    ok(pyd(host, "rm", "-f", cid))


# -- export ----------------------------------------------------------------------------------------------


def test_export_writes_the_containers_filesystem(daemon, tmp_path):
    cid = sleeper(daemon, "echo exported > /hello; rm /etc/group")
    data = pyd(daemon.host, "export", cid).stdout
    members = tar_names(data)
    assert {"bin/busybox", "etc/passwd", "hello"} <= set(members) and "etc/group" not in members
    assert not any(n.startswith("/") or n.startswith("./") for n in members)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert tf.extractfile("hello").read() == b"exported\n"  # type: ignore[union-attr]
    target = tmp_path / "fs.tar"
    ok(pyd(daemon.host, "export", "-o", str(target), cid))
    assert "hello" in tar_names(target.read_bytes())
    # like docker, no tar on a terminal
    master, slave = pty.openpty()
    try:
        proc = pyd(daemon.host, "export", cid, stdout=slave, stderr=subprocess.PIPE, capture_output=False)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode != 0 and b"cowardly refusing to save to a terminal" in proc.stderr
    ok(pyd(daemon.host, "rm", "-f", cid))


# -- the docker SDK and the docker CLI ----------------------------------------------------------------


def test_docker_sdk_commit_diff_archive_export(daemon):
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=daemon.base_url, timeout=60)
    cid = sleeper(daemon, "echo sdk > /hello")
    repo = name("sdkimg")
    try:
        c = client.containers.get(cid)
        img = c.commit(repository=repo, tag="1", message="from sdk", author="sdk",
                       changes='CMD ["cat","/hello"]')
        assert f"{repo}:1" in img.tags and img.attrs["Comment"] == "from sdk"
        assert client.containers.run(f"{repo}:1", remove=True) == b"sdk\n"
        assert {"Path": "/hello", "Kind": 1} in c.diff()
        chunks, stat = c.get_archive("/hello")
        assert stat["name"] == "hello" and stat["size"] == 4
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tf:
            assert tf.extractfile("hello").read() == b"sdk\n"  # type: ignore[union-attr]
        assert c.put_archive("/tmp", tar_of({"put.txt": b"put\n"})) is True
        assert c.exec_run(["cat", "/tmp/put.txt"]).output == b"put\n"
        assert "hello" in tar_names(b"".join(c.export()))
        with pytest.raises(docker.errors.NotFound):
            c.get_archive("/no/such/file")
    finally:
        client.close()
        ok(pyd(daemon.host, "rm", "-f", cid))
        pyd(daemon.host, "rmi", f"{repo}:1")


def test_docker_cli_commit_diff_cp_export(daemon, tmp_path):
    if not os.path.exists(DOCKER):
        pytest.skip("the docker CLI is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}

    def docker(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([DOCKER, "-H", daemon.host, *args], capture_output=True, timeout=60, env=env)

    cid = sleeper(daemon, "echo cli > /hello")
    repo = name("cliimg")
    out = docker("commit", "-m", "cli commit", "-c", "ENV FOO=bar", cid, f"{repo}:v1")
    assert out.returncode == 0 and re.fullmatch(rb"sha256:[0-9a-f]{64}\n", out.stdout), out.stderr
    assert ok(pyd(daemon.host, "run", "--rm", f"{repo}:v1", "sh", "-c", "cat /hello; echo $FOO")) == "cli\nbar\n"
    assert "A /hello" in docker("diff", cid).stdout.decode().splitlines()
    assert docker("cp", f"{cid}:/hello", str(tmp_path / "h")).returncode == 0
    assert (tmp_path / "h").read_text() == "cli\n"
    assert "hello" in tar_names(docker("export", cid).stdout)
    ok(pyd(daemon.host, "rm", "-f", cid))
    ok(pyd(daemon.host, "rmi", f"{repo}:v1"))


# -- last: nothing left behind ------------------------------------------------------------------------


def test_zz_nothing_left_behind(daemon):
    roots = [str(daemon.data_root), str(daemon.exec_root)]
    leftovers = daemon.get_json("/containers/json?all=1")
    daemon.stop()
    assert leftovers == []
    with open("/proc/self/mountinfo") as f:
        assert [line.split()[4] for line in f if any(r in line for r in roots)] == []
