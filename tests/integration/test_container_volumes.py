"""Container mounts end to end (issue 6, "Done when"): ``-v``, ``--mount``, ``--volumes-from``,
``--tmpfs``, image ``VOLUME``s, copy-up, propagation, ``rm -v``, in-use volumes, bad input, and
the docker SDK and CLI, against a real daemon with the native exec driver and the ``local``
volume driver.

Every mount a test makes on the host is undone in a ``finally``; the module's daemon fixture
checks at the end that no mount is left under its roots or the tests' directories.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from pyd.registry import Kind, installed_names
from pyd.testing.daemon import DaemonProcess
from pyd.testing.images import LayerEntry, busybox_entries, busybox_rootfs_tar, layer_tar
from pyd.testing.volume import disk_state, force_unmount, mounts_under

pytestmark = pytest.mark.integration

DRIVER = os.environ.get("PYD_TEST_STORAGE_DRIVER") or "overlay2"
DOCKER = "/usr/local/bin/docker"
IMAGE = "voltest:1"  # busybox + /srv/content (a VOLUME) with owners and modes to copy up
MS_SHARED, MS_REC = 1 << 20, 0x4000


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    if _libc().mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                     data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def umount(target: str) -> None:
    if _libc().umount2(target.encode(), 2) != 0:  # MNT_DETACH
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def pyd(d: DaemonProcess, *args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYD_HOST"}
    return subprocess.run([sys.executable, "-m", "pyd.cli.main", "-H", d.host, *args],
                          input=stdin, capture_output=True, text=True, timeout=timeout, env=env)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def run(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return pyd(d, "run", *args)


def inspect(d: DaemonProcess, ref: str) -> dict[str, Any]:
    return json.loads(ok(pyd(d, "inspect", ref)))[0]


def volume_path(d: DaemonProcess, name: str) -> Path:
    return d.data_root / "volumes" / name / "_data"


def volume_names(d: DaemonProcess) -> set[str]:
    return set(ok(pyd(d, "volume", "ls", "-q")).split())


def test_image_entries() -> list[LayerEntry]:
    return busybox_entries() + [
        LayerEntry("srv", "dir"),
        LayerEntry("srv/content", "dir", mode=0o750, uid=1000, gid=1000),
        LayerEntry("srv/content/hello.txt", "file", b"from the image\n", mode=0o640, uid=1000, gid=1000),
        LayerEntry("srv/content/sub", "dir", mode=0o711, uid=2, gid=3),
        LayerEntry("srv/content/sub/tool", "file", b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0),
        LayerEntry("srv/content/link", "symlink", target="hello.txt"),
    ]


test_image_entries.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for kind, name in ((Kind.GRAPHDRIVER, DRIVER), (Kind.EXEC, "native"), (Kind.VOLUME, "local")):
        if name not in installed_names(kind):
            pytest.skip(f"{kind.value} driver {name} is not installed")
    root = tmp_path_factory.mktemp(f"ctr-volumes-{DRIVER}")
    d = DaemonProcess(root, storage_driver=DRIVER, flags=["--log-driver", "json-file"])
    d.start()
    try:
        ok(pyd(d, "import", str(busybox_rootfs_tar(root / "busybox.tar")), "busybox:latest"))
        tar = root / "voltest.tar"
        tar.write_bytes(layer_tar(test_image_entries()))
        ok(pyd(d, "import", "--change", "VOLUME /srv/content", str(tar), IMAGE))
        yield d
    finally:
        try:
            for c in d.get_json("/containers/json?all=1"):
                d.request("DELETE", f"/containers/{c['Id']}?force=1&v=1")
        except Exception:
            pass
        d.cleanup()
        left = mounts_under(root) + mounts_under(d.exec_root)
        force_unmount(left)
        assert left == [], f"mounts left behind: {left}"


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with shared propagation, as a bind source (unmounted afterwards)."""
    src = tmp_path / "shared"
    src.mkdir()
    mount("tmpfs", str(src), "tmpfs", 0, "size=1m")
    try:
        mount("", str(src), "", MS_SHARED)
        yield src
    finally:
        for p in sorted(mounts_under(src), key=len, reverse=True):
            umount(p)


# -- named volumes: persistence ----------------------------------------------------------------------


def test_named_volume_outlives_its_container_and_a_daemon_restart(daemon: DaemonProcess) -> None:
    out = ok(run(daemon, "--name", "writer", "-v", "keep:/data", "busybox",
                 "sh", "-c", "echo kept > /data/f; cat /data/f"))
    assert out == "kept\n"
    mounts = inspect(daemon, "writer")["Mounts"]
    assert mounts == [{"Type": "volume", "Name": "keep", "Source": str(volume_path(daemon, "keep")),
                       "Destination": "/data", "Driver": "local", "Mode": "z", "RW": True, "Propagation": ""}]
    ok(pyd(daemon, "rm", "writer"))
    assert "keep" in volume_names(daemon)
    daemon.stop()
    daemon.start()
    # a second container sees the data, and can add to it
    assert ok(run(daemon, "--rm", "-v", "keep:/data", "busybox", "sh", "-c", "cat /data/f; echo more >> /data/f")) == "kept\n"
    assert (volume_path(daemon, "keep") / "f").read_text() == "kept\nmore\n"
    ok(pyd(daemon, "volume", "rm", "keep"))


def test_live_restore_keeps_volume_mounts_of_running_containers(pyd_daemon: Any, tmp_path: Path) -> None:
    if DRIVER not in installed_names(Kind.GRAPHDRIVER) or "native" not in installed_names(Kind.EXEC):
        pytest.skip("needs the storage and exec drivers")
    d = pyd_daemon(config={"live-restore": True}, flags=["--log-driver", "none"], storage_driver=DRIVER)
    ok(pyd(d, "import", str(busybox_rootfs_tar(tmp_path / "bb.tar")), "busybox:latest"))
    ok(pyd(d, "volume", "create", "-o", "type=tmpfs", "-o", "device=tmpfs", "-o", "o=size=1m", "scratch"))
    cid = ok(run(d, "-d", "-v", "scratch:/s", "busybox", "sh", "-c", "echo live > /s/f; sleep 300")).strip()
    vpath = str(volume_path(d, "scratch"))
    try:
        _wait(lambda: os.path.exists(os.path.join(vpath, "f")), what="the container's write")
        d.stop()
        assert mounts_under(vpath) == [vpath]  # the running container still holds it
        d.start()
        assert ok(pyd(d, "exec", cid, "cat", "/s/f")) == "live\n"
        refused = pyd(d, "volume", "rm", "scratch")
        assert refused.returncode == 1 and "volume is in use" in refused.stderr
        ok(pyd(d, "rm", "-f", cid))
        # the last user is gone: the tmpfs is unmounted, and the volume can go
        _wait(lambda: mounts_under(vpath) == [], what="the volume's unmount")
        ok(pyd(d, "volume", "rm", "scratch"))
    finally:
        pyd(d, "rm", "-f", cid)
        d.cleanup()
        force_unmount(mounts_under(d.root))


# -- read-only --------------------------------------------------------------------------------------


def test_ro_and_readonly_block_writes(daemon: DaemonProcess, tmp_path: Path) -> None:
    host = tmp_path / "hostdir"
    host.mkdir()
    (host / "in.txt").write_text("host\n")
    ok(run(daemon, "--rm", "-v", "rovol:/data", "busybox", "sh", "-c", "echo v > /data/f"))
    cases = [
        ["-v", "rovol:/data:ro"],
        ["--mount", "type=volume,source=rovol,target=/data,readonly"],
        ["-v", f"{host}:/data:ro"],
        ["--mount", f"type=bind,src={host},dst=/data,ro=true"],
    ]
    for flags in cases:
        proc = run(daemon, "--rm", *flags, "busybox", "sh", "-c", "ls /data >/dev/null && echo x > /data/new")
        assert proc.returncode != 0 and "Read-only file system" in proc.stderr, (flags, proc.stderr)
    assert not (volume_path(daemon, "rovol") / "new").exists() and not (host / "new").exists()
    # rw is the default, and a bind shows the host's files
    assert ok(run(daemon, "--rm", "-v", f"{host}:/data", "busybox", "sh", "-c", "cat /data/in.txt; echo c > /data/new")) == "host\n"
    assert (host / "new").read_text() == "c\n"
    cid = ok(run(daemon, "-d", "--mount", "type=volume,source=rovol,target=/data,readonly", "-v", f"{host}:/h:ro",
                 "busybox", "true")).strip()
    doc = inspect(daemon, cid)
    assert doc["HostConfig"]["Mounts"] == [{"Type": "volume", "Source": "rovol", "Target": "/data", "ReadOnly": True}]
    assert doc["HostConfig"]["Binds"] == [f"{host}:/h:ro"]
    assert doc["Mounts"] == [
        {"Type": "bind", "Source": str(host), "Destination": "/h", "Mode": "ro", "RW": False, "Propagation": "rprivate"},
        {"Type": "volume", "Name": "rovol", "Source": str(volume_path(daemon, "rovol")), "Destination": "/data",
         "Driver": "local", "Mode": "", "RW": False, "Propagation": ""},
    ]
    ok(pyd(daemon, "rm", "-f", cid))
    ok(pyd(daemon, "volume", "rm", "rovol"))


def test_missing_host_dir_of_v_is_created(daemon: DaemonProcess, tmp_path: Path) -> None:
    missing = tmp_path / "made" / "by" / "v"
    ok(run(daemon, "--rm", "-v", f"{missing}:/x", "busybox", "touch", "/x/ok"))
    assert (missing / "ok").exists() and stat.S_IMODE(missing.stat().st_mode) == 0o755


# -- copy-up --------------------------------------------------------------------------------------


def _tree(path: Path) -> dict[str, tuple[int, int, int, str]]:
    """relative path -> (mode, uid, gid, content or link target)."""
    out = {}
    for p in sorted([path, *path.rglob("*")]):
        st = p.lstat()
        if p.is_symlink():
            what = "-> " + os.readlink(p)
        elif p.is_dir():
            what = "dir"
        else:
            what = p.read_text()
        out[str(p.relative_to(path))] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, what)
    return out


def test_copy_up_fills_a_new_volume_with_owners_and_modes_and_nocopy_does_not(daemon: DaemonProcess) -> None:
    expected = {
        ".": (0o750, 1000, 1000, "dir"),
        "hello.txt": (0o640, 1000, 1000, "from the image\n"),
        "link": (0o777, 0, 0, "-> hello.txt"),
        "sub": (0o711, 2, 3, "dir"),
        "sub/tool": (0o4755, 0, 0, "#!/bin/sh\n"),
    }
    ok(run(daemon, "--rm", "-v", "cu-named:/srv/content", IMAGE, "true"))
    assert _tree(volume_path(daemon, "cu-named")) == expected
    # the container sees the image's files through the volume
    assert ok(run(daemon, "--rm", "-v", "cu-named:/srv/content", IMAGE, "cat", "/srv/content/link")) == "from the image\n"
    # a volume with data is never overwritten
    (volume_path(daemon, "cu-named") / "hello.txt").write_text("changed\n")
    ok(run(daemon, "--rm", "-v", "cu-named:/srv/content", IMAGE, "true"))
    assert (volume_path(daemon, "cu-named") / "hello.txt").read_text() == "changed\n"
    # nocopy, in both syntaxes: the new volume stays empty
    ok(run(daemon, "--rm", "-v", "cu-nocopy:/srv/content:nocopy", IMAGE, "true"))
    ok(run(daemon, "--rm", "--mount", "type=volume,src=cu-nocopy2,dst=/srv/content,volume-nocopy", IMAGE, "true"))
    for name in ("cu-nocopy", "cu-nocopy2"):
        assert list(volume_path(daemon, name).iterdir()) == []
    # an anonymous volume from the image's VOLUME is filled too, and `--rm` removes it
    cid = ok(run(daemon, "-d", IMAGE, "cat", "/srv/content/hello.txt")).strip()
    ok(pyd(daemon, "wait", cid))
    (m,) = inspect(daemon, cid)["Mounts"]
    assert len(m["Name"]) == 64 and m["Destination"] == "/srv/content" and m["RW"] and m["Mode"] == ""
    assert _tree(Path(m["Source"])) == expected
    assert ok(pyd(daemon, "logs", cid)) == "from the image\n"
    ok(pyd(daemon, "rm", "-v", cid))
    assert m["Name"] not in volume_names(daemon)
    for name in ("cu-named", "cu-nocopy", "cu-nocopy2"):
        ok(pyd(daemon, "volume", "rm", name))


# -- tmpfs ------------------------------------------------------------------------------------------


def test_tmpfs_mounts_have_the_given_size_and_mode(daemon: DaemonProcess) -> None:
    out = ok(run(daemon, "--rm", "--mount", "type=tmpfs,destination=/t,tmpfs-size=1m,tmpfs-mode=1770",
                 "--tmpfs", "/t2:size=2m", "busybox", "sh", "-c",
                 "df -k /t /t2 | tail -n 2; stat -c %a /t; grep ' /t' /proc/mounts"))
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["tmpfs", "1024"] and lines[1].split()[:2] == ["tmpfs", "2048"]
    assert lines[2] == "1770"
    assert any(" /t tmpfs " in line and "size=1024k" in line and "mode=1770" in line for line in lines[3:])
    # a local volume of type tmpfs: mounted for the container, gone with its last user
    ok(pyd(daemon, "volume", "create", "-o", "type=tmpfs", "-o", "device=tmpfs", "-o", "o=size=3m", "tmpvol"))
    out = ok(run(daemon, "--rm", "-v", "tmpvol:/v", "busybox", "sh", "-c", "df -k /v | tail -n 1; grep ' /v ' /proc/mounts"))
    assert out.split()[:2] == ["tmpfs", "3072"] and "size=3072k" in out
    assert mounts_under(volume_path(daemon, "tmpvol")) == []
    ok(pyd(daemon, "volume", "rm", "tmpvol"))
    bad = run(daemon, "--rm", "--mount", "type=tmpfs,src=x,dst=/t", "busybox", "true")
    assert bad.returncode == 125 and 'invalid mount config for type "tmpfs": field Source must not be specified' in bad.stderr


# -- propagation ------------------------------------------------------------------------------------


def test_rshared_bind_sees_mounts_made_on_the_host_later(daemon: DaemonProcess, shared_dir: Path) -> None:
    shared = ok(run(daemon, "-d", "--mount", f"type=bind,source={shared_dir},target=/m,bind-propagation=rshared",
                    "busybox", "sleep", "300")).strip()
    private = ok(run(daemon, "-d", "-v", f"{shared_dir}:/m", "busybox", "sleep", "300")).strip()
    sub = shared_dir / "sub"
    try:
        assert inspect(daemon, shared)["Mounts"][0]["Propagation"] == "rshared"
        sub.mkdir()
        mount("tmpfs", str(sub), "tmpfs", 0, "size=64k")
        (sub / "hello").write_text("from the host\n")
        assert ok(pyd(daemon, "exec", shared, "cat", "/m/sub/hello")) == "from the host\n"
        # the default (rprivate) does not receive it
        assert pyd(daemon, "exec", private, "cat", "/m/sub/hello").returncode != 0
        umount(str(sub))
        assert pyd(daemon, "exec", shared, "cat", "/m/sub/hello").returncode != 0  # unmounts propagate too
    finally:
        if mounts_under(sub):
            umount(str(sub))
        ok(pyd(daemon, "rm", "-f", shared, private))


def test_shared_propagation_needs_a_shared_source(daemon: DaemonProcess, tmp_path: Path) -> None:
    proc = run(daemon, "--rm", "--mount", f"type=bind,source={tmp_path},target=/m,bind-propagation=rshared", "busybox", "true")
    assert proc.returncode == 125 and "is not a shared mount" in proc.stderr and str(tmp_path) in proc.stderr


# -- volumes-from ---------------------------------------------------------------------------------------


def test_volumes_from_shares_volumes_with_the_same_mode(daemon: DaemonProcess, tmp_path: Path) -> None:
    host = tmp_path / "h"
    host.mkdir()
    ok(run(daemon, "--name", "vf-src", "-v", "vf-data:/data", "-v", "/anon", "-v", f"{host}:/h:ro",
           "busybox", "sh", "-c", "echo src > /data/f; echo a > /anon/f"))
    src_mounts = {m["Destination"]: m for m in inspect(daemon, "vf-src")["Mounts"]}
    out = ok(run(daemon, "--name", "vf-rw", "--volumes-from", "vf-src", "busybox", "sh", "-c",
                 "cat /data/f /anon/f; echo rw >> /data/f; touch /h/x 2>&1 || echo h-ro"))
    assert out.splitlines() == ["src", "a", "touch: /h/x: Read-only file system", "h-ro"]
    got = {m["Destination"]: m for m in inspect(daemon, "vf-rw")["Mounts"]}
    assert got == src_mounts and not got["/h"]["RW"] and got["/data"]["RW"]
    proc = run(daemon, "--name", "vf-ro", "--volumes-from", "vf-src:ro", "busybox", "sh", "-c", "cat /data/f; echo x >> /data/f")
    assert proc.stdout == "src\nrw\n" and "Read-only file system" in proc.stderr
    assert all(not m["RW"] for m in inspect(daemon, "vf-ro")["Mounts"])
    # the anonymous volume is shared: rm -v of its first user keeps it while another uses it
    anon = src_mounts["/anon"]["Name"]
    ok(pyd(daemon, "rm", "-v", "vf-src"))
    assert anon in volume_names(daemon)
    missing = run(daemon, "--rm", "--volumes-from", "no-such-ctr", "busybox", "true")
    assert missing.returncode == 125 and "No such container: no-such-ctr" in missing.stderr
    ok(pyd(daemon, "rm", "-v", "vf-rw", "vf-ro"))
    assert anon not in volume_names(daemon)
    ok(pyd(daemon, "volume", "rm", "vf-data"))


# -- in use, rm -v -----------------------------------------------------------------------------------


def test_volume_in_use_is_refused_and_nothing_is_lost(daemon: DaemonProcess) -> None:
    running = ok(run(daemon, "-d", "-v", "busy:/data", "busybox", "sh", "-c", "echo precious > /data/f; sleep 300")).strip()
    _wait(lambda: (volume_path(daemon, "busy") / "f").exists(), what="the write")
    for args in (["volume", "rm", "busy"], ["volume", "rm", "-f", "busy"]):
        proc = pyd(daemon, *args)
        assert proc.returncode == 1 and f"remove busy: volume is in use - [{running}]" in proc.stderr
    ok(pyd(daemon, "volume", "prune", "-f"))
    status, _, _ = daemon.request("DELETE", "/volumes/busy")
    assert status == 409
    # a stopped container still uses it (Docker's rule); its data is intact
    ok(pyd(daemon, "stop", "-t", "0", running))
    assert pyd(daemon, "volume", "rm", "busy").returncode == 1
    assert (volume_path(daemon, "busy") / "f").read_text() == "precious\n"
    assert ok(pyd(daemon, "ps", "-aq", "--no-trunc", "--filter", "volume=busy")).split() == [running]
    ok(pyd(daemon, "rm", running))
    ok(pyd(daemon, "volume", "rm", "busy"))


def test_rm_v_removes_anonymous_volumes_only(daemon: DaemonProcess) -> None:
    cid = ok(run(daemon, "-d", "-v", "/anon", "-v", "named-kept:/n",
                 "--mount", "type=volume,target=/anon2", "busybox", "true")).strip()
    ok(pyd(daemon, "wait", cid))
    vols = {m["Destination"]: m["Name"] for m in inspect(daemon, cid)["Mounts"]}
    assert set(vols) == {"/anon", "/n", "/anon2"} and vols["/n"] == "named-kept"
    assert len(vols["/anon"]) == 64 and len(vols["/anon2"]) == 64
    ok(pyd(daemon, "rm", "-v", cid))
    left = volume_names(daemon)
    assert "named-kept" in left and vols["/anon"] not in left and vols["/anon2"] not in left
    # without -v anonymous volumes stay (dangling)
    cid = ok(run(daemon, "-d", "-v", "/anon", "busybox", "true")).strip()
    ok(pyd(daemon, "wait", cid))
    anon = inspect(daemon, cid)["Mounts"][0]["Name"]
    ok(pyd(daemon, "rm", cid))
    assert anon in ok(pyd(daemon, "volume", "ls", "-q", "--filter", "dangling=true")).split()
    # run --rm removes its anonymous volumes in the daemon
    out = ok(run(daemon, "--rm", "-v", "/scratch", "-v", "named-kept:/n", "busybox", "sh", "-c", "ls -d /scratch"))
    assert out == "/scratch\n"
    assert volume_names(daemon) == left | {anon}
    ok(pyd(daemon, "volume", "rm", anon, "named-kept"))


# -- bad input ---------------------------------------------------------------------------------------


def _state(d: DaemonProcess) -> tuple[list[str], list[str], set[str]]:
    containers = sorted(c["Id"] for c in d.get_json("/containers/json?all=1"))
    return containers, disk_state(d.data_root / "volumes"), volume_names(d)


def test_bad_input_is_a_clear_error_and_creates_nothing(daemon: DaemonProcess, tmp_path: Path) -> None:
    before = _state(daemon)
    cases = [
        (["--mount", "type=bind,source=relative/dir,target=/x"],
         """invalid mount config for type "bind": invalid mount path: 'relative/dir' mount path must be absolute"""),
        (["--mount", f"type=bind,source={tmp_path}/nope,target=/x"],
         f'invalid mount config for type "bind": bind source path does not exist: {tmp_path}/nope'),
        (["-v", "bad-new-a:/a", "--mount", "type=volume,source=bad-new-b,target=/x,volume-opt=sise=1m"],
         'invalid -o for volume driver "local": unknown option "sise"; valid keys: device, o, size, type'),
        (["--volume-driver", "no-such-driver", "-v", "bad-new-c:/x"],
         'create bad-new-c: volume driver "no-such-driver" is not installed; available volume drivers: local'),
        (["--mount", "type=volume,source=bad-new-d,target=/x,volume-driver=nope"],
         'volume driver "nope" is not installed'),
        (["-v", "bad-new-e:/x", "-v", "bad-new-f:/x/"], "Duplicate mount point: /x"),
        (["-v", "bad-new-g:/x:rw,ro"], "invalid mode: rw,ro"),
        (["-v", "bad-new-h:relative"], "invalid volume specification: 'bad-new-h:relative'"),
        (["-v", "bad name:/x"], '"bad name" includes invalid characters for a local volume name'),
        (["--mount", "type=nfs,target=/x"], 'invalid mount config for type "nfs": mount type unknown'),
        (["--mount", "type=volume,target=/x,readonly"], "must not set ReadOnly mode when using anonymous volumes"),
        (["--mount", "type=bind,source=/tmp,target=/x,bind-propagation=sideways"], "invalid propagation mode: sideways"),
        (["--mount", "source=x"], 'invalid argument "source=x" for "--mount" flag: target is required'),
        (["--mount", "type=tmpfs,target=/x,volume-nocopy"], "cannot mix 'volume-*' options with mount type 'tmpfs'"),
        (["--volumes-from", "nobody:rx"], "invalid mode: rx"),
    ]
    for flags, message in cases:
        proc = run(daemon, "--name", "bad-input", *flags, "busybox", "true")
        assert proc.returncode == 125, (flags, proc.stdout, proc.stderr)
        assert message in proc.stderr, (flags, proc.stderr)
        assert _state(daemon) == before, flags
    # over the API: 400 with the message, for the docker SDK's shapes too
    for hc in ({"Mounts": [{"Type": "bind", "Source": "rel", "Target": "/x"}]},
               {"Binds": ["/a:/b:/c:/d"]},
               {"Mounts": [{"Type": "volume", "Source": "bad-new-i", "Target": "/x",
                            "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": {"bogus": "1"}}}}]}):
        status, _, body = daemon.request("POST", "/containers/create", {"Image": "busybox", "Cmd": ["true"], "HostConfig": hc})
        assert status == 400 and json.loads(body)["message"], (hc, status, body)
    assert _state(daemon) == before


# -- the docker SDK and CLI -------------------------------------------------------------------------


def test_docker_sdk_run_with_volumes_and_mounts(daemon: DaemonProcess, tmp_path: Path) -> None:
    docker = pytest.importorskip("docker")
    from docker.types import Mount

    host = tmp_path / "sdk"
    host.mkdir()
    (host / "in").write_text("sdk-host\n")
    client = docker.DockerClient(base_url=daemon.base_url)
    try:
        out = client.containers.run(
            "busybox", ["sh", "-c", "cat /h/in; echo v > /v/f; df -k /t | tail -n 1; touch /h/x || true"],
            volumes={str(host): {"bind": "/h", "mode": "ro"}, "sdk-vol": {"bind": "/v", "mode": "rw"}},
            mounts=[Mount("/t", None, type="tmpfs", tmpfs_size="2m")], remove=True, stderr=True,
        ).decode()
        lines = out.splitlines()
        assert lines[0] == "sdk-host" and lines[1].split()[:2] == ["tmpfs", "2048"]
        assert not (host / "x").exists()
        c = client.containers.run("busybox", ["cat", "/v/f"], volumes=["sdk-vol:/v:ro"],
                                  mounts=[Mount("/m", "sdk-vol2", read_only=True, no_copy=True)], detach=True)
        assert c.wait()["StatusCode"] == 0 and c.logs() == b"v\n"
        mounts = {m["Destination"]: m for m in c.attrs["Mounts"]}
        assert mounts["/v"]["Name"] == "sdk-vol" and mounts["/v"]["Mode"] == "ro" and not mounts["/v"]["RW"]
        assert mounts["/m"]["Name"] == "sdk-vol2" and not mounts["/m"]["RW"]
        c.remove(v=True)
        assert {v.name for v in client.volumes.list()} >= {"sdk-vol", "sdk-vol2"}
        with pytest.raises(docker.errors.APIError) as err:
            client.containers.create("busybox", "true", mounts=[Mount("/x", "relative", type="bind")])
        assert err.value.status_code == 400
        for name in ("sdk-vol", "sdk-vol2"):
            client.volumes.get(name).remove()
    finally:
        client.close()


def test_docker_cli_mount_and_volume_flags(daemon: DaemonProcess) -> None:
    if not os.path.exists(DOCKER):
        pytest.skip("the docker CLI is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
    env["DOCKER_CONFIG"] = str(daemon.root / "docker-config")

    def docker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DOCKER, "-H", daemon.host, *args], capture_output=True, text=True, timeout=60, env=env)

    proc = docker("run", "--rm", "-v", "cli-vol:/data", "--mount", "type=tmpfs,dst=/scratch,tmpfs-size=1m",
                  "-v", "/anon", "busybox", "sh", "-c", "echo cli > /data/f; df -k /scratch | tail -n 1; ls -d /anon")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["tmpfs", "1024"] and lines[1] == "/anon"
    assert (volume_path(daemon, "cli-vol") / "f").read_text() == "cli\n"
    bad = docker("run", "--rm", "--mount", "type=bind,src=/no/such/dir,dst=/x", "busybox", "true")
    assert bad.returncode == 125 and "bind source path does not exist: /no/such/dir" in bad.stderr
    assert docker("volume", "rm", "cli-vol").returncode == 0


def _wait(cond: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
