"""local: the shared volume driver suite, plus tmpfs, bind and device volumes and recovery."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from pyd.errors import Conflict, InvalidOption, PydError
from pyd.testing.volume import VolumeDriverSuite, disk_state, force_unmount, mounts_under

TMPFS = {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}
VALID_KEYS = "valid keys: device, o, size, type"


class TestLocalConformance(VolumeDriverSuite):
    driver_name = "local"
    persistent_options: dict[str, str] = {}
    mount_options = TMPFS
    bad_options = [
        {"no-such-key": "1"},
        {"type": "tmpfs"},  # type needs device
        {"o": "size=1m"},  # o needs device
        {"device": "tmpfs"},  # device needs type
        {"type": "tmpfs", "device": "tmpfs", "o": "size=ten"},  # refused by the kernel
        {"type": "nosuchfs", "device": "/dev/null"},
        {"type": "nfs", "device": ":/export", "o": "addr=127.0.0.1"},
        {"type": "none", "device": "/no/such/dir", "o": "bind"},
        {"type": "none", "device": "/tmp"},  # none without bind
        {"type": "ext4", "device": "/etc/passwd"},  # not a block device
        {"type": "tmpfs", "device": "tmpfs", "o": "size=1m,noauto"},  # mount(8)-only word
        {"size": "10m"},  # needs quotas
        {"size": "ten"},
    ]


def run(home: Path) -> Any:
    from pyd.registry import Kind, PluginRegistry

    return PluginRegistry().init_driver(Kind.VOLUME, "local", home=home)


def _mountinfo(path: str) -> list[str] | None:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        rows = [line.split() for line in f if line.split()[4] == path]
    return rows[-1] if rows else None  # the top of the stack is what a lookup sees


def mount_entry(path: str) -> tuple[str, str, str] | None:
    """(fstype, source, super options) of the mount at ``path``, or None."""
    row = _mountinfo(path)
    if row is None:
        return None
    post = row[row.index("-") + 1 :]
    return post[0], post[1], post[2]


def mount_opts(path: str) -> list[str]:
    """The per-mount options (ro, nosuid, noatime...) of the mount at ``path``."""
    row = _mountinfo(path)
    return row[5].split(",") if row else []


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """The driver's home; after the test no mount may be left under ``tmp_path``."""
    home = tmp_path / "volumes"
    home.mkdir()
    yield home
    left = mounts_under(tmp_path)
    force_unmount(left)
    assert not left, f"mounts left behind: {left}"


@pytest.fixture
def root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mounts)")


def needs_root(test: Any) -> Any:
    return pytest.mark.integration(pytest.mark.usefixtures("root")(test))


@pytest.fixture
def driver(home: Path) -> Any:
    return run(home)


def ref() -> str:
    return uuid.uuid4().hex * 2


# -- layout and records -------------------------------------------------------------------


def test_layout_is_dockers_and_metadata_is_complete(driver: Any, home: Path) -> None:
    info = driver.create("web-data", {}, {"a": "1"})
    assert info.mountpoint == str(home / "web-data" / "_data")
    assert sorted(os.listdir(home)) == ["web-data"]  # no temp files left
    assert sorted(os.listdir(home / "web-data")) == ["_data", "volume.json"]
    meta = json.loads((home / "web-data" / "volume.json").read_text())
    assert meta == {"name": "web-data", "created_at": info.created_at, "labels": {"a": "1"}, "options": {}}
    assert info.scope == "local" and dict(info.status) == {}


def test_get_missing_is_dockers_message(driver: Any) -> None:
    from pyd.errors import NotFound

    with pytest.raises(NotFound, match=r"^get nosuch: no such volume$"):
        driver.get("nosuch")


def test_foreign_directories_in_home_are_not_volumes(driver: Any, home: Path) -> None:
    (home / "stray").mkdir()
    (home / "metadata.db").write_text("the core's, not ours")
    assert driver.list() == []
    with pytest.raises(Conflict, match="stray"):
        driver.create("stray", {}, {})
    assert os.listdir(home / "stray") == []


def test_unknown_option_message_names_flag_driver_and_keys(driver: Any) -> None:
    with pytest.raises(InvalidOption) as err:
        driver.parse_options({"sise": "10m"})
    assert str(err.value) == f'invalid -o for volume driver "local": unknown option "sise"; {VALID_KEYS}'


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"type": "tmpfs"}, ['type="tmpfs"', '"device"', "device=tmpfs"]),
        ({"type": "nfs", "device": ":/x", "o": "addr=10.0.0.1"}, ["network filesystem", "o=bind"]),
        ({"type": "none", "device": "/no/such/dir", "o": "bind"}, ["/no/such/dir", "existing directory"]),
        ({"type": "none", "device": "relative", "o": "bind"}, ["relative", "absolute"]),
        ({"type": "ext4", "device": "/etc/passwd"}, ["/etc/passwd", "not a block device", "losetup"]),
        ({"type": "tmpfs", "device": "tmpfs", "o": "loop"}, ['"loop"', "losetup"]),
        ({"type": "ext4", "device": "/tmp", "o": "bind"}, ["bind", "type=none"]),
        ({"type": "none", "device": "/tmp", "o": "bind,size=1m"}, ['"size=1m"', "bind"]),
        ({"size": "10m"}, ['size="10m"', "quota", "type=tmpfs"]),
        ({"type": "nosuchfs", "device": "/dev/null"}, ['type="nosuchfs"', "/proc/filesystems"]),
    ],
)
def test_bad_options_say_what_is_wrong(driver: Any, raw: dict[str, str], words: list[str]) -> None:
    with pytest.raises(InvalidOption) as err:
        driver.parse_options(raw)
    msg = str(err.value)
    assert msg.startswith('invalid -o for volume driver "local": ') and msg.endswith(VALID_KEYS), msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


@needs_root
def test_kernel_refuses_bad_tmpfs_options_at_create(driver: Any, home: Path) -> None:
    with pytest.raises(InvalidOption, match=r'o="size=ten".*type=tmpfs.*Invalid argument'):
        driver.create("v1", {"type": "tmpfs", "device": "tmpfs", "o": "size=ten"}, {})
    assert disk_state(home) == [] and not mounts_under(str(home))


# -- tmpfs --------------------------------------------------------------------------------


@needs_root
def test_tmpfs_volume_is_a_tmpfs_of_that_size_mounted_only_while_used(driver: Any, home: Path) -> None:
    driver.create("tmp1", {"type": "tmpfs", "device": "tmpfs", "o": "size=1m,uid=1000,mode=0750"}, {})
    path = str(home / "tmp1" / "_data")
    assert mount_entry(path) is None, "mounted at create"
    a, b = ref(), ref()
    assert driver.mount("tmp1", a) == path
    fstype, source, sopts = mount_entry(path)
    assert (fstype, source) == ("tmpfs", "tmpfs")
    assert "size=1024k" in sopts.split(","), sopts
    st = os.statvfs(path)
    assert st.f_blocks * st.f_frsize == 1024 * 1024
    assert (os.stat(path).st_uid, os.stat(path).st_mode & 0o777) == (1000, 0o750)
    Path(path, "x").write_text("in memory")
    driver.mount("tmp1", b)
    driver.unmount("tmp1", a)
    assert mount_entry(path) is not None and Path(path, "x").read_text() == "in memory"
    driver.unmount("tmp1", b)
    assert mount_entry(path) is None, "still mounted after the last unmount"
    assert os.listdir(path) == []  # a tmpfs keeps nothing once unmounted
    driver.mount("tmp1", a)
    try:
        with pytest.raises(OSError, match="No space left"):  # 1 MiB is all it holds
            Path(path, "big").write_bytes(b"\0" * (2 * 1024 * 1024))
    finally:
        driver.unmount("tmp1", a)
    driver.remove("tmp1")


@needs_root
def test_ro_tmpfs_volume(driver: Any, home: Path) -> None:
    driver.create("rotmp", {"type": "tmpfs", "device": "tmpfs", "o": "ro,size=64k"}, {})
    r = ref()
    path = driver.mount("rotmp", r)
    try:
        with pytest.raises(OSError, match="Read-only"):
            Path(path, "x").write_text("no")
    finally:
        driver.unmount("rotmp", r)
    driver.remove("rotmp")


# -- bind -----------------------------------------------------------------------------------


@needs_root
def test_bind_volume_shows_the_directory_and_remove_keeps_it(driver: Any, home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("from the host")
    driver.create("bindv", {"type": "none", "device": str(src), "o": "bind"}, {})
    r = ref()
    path = Path(driver.mount("bindv", r))
    assert (path / "hello.txt").read_text() == "from the host"
    (path / "written.txt").write_text("from the volume")
    assert (src / "written.txt").read_text() == "from the volume"
    with pytest.raises(Conflict):
        driver.remove("bindv")
    driver.unmount("bindv", r)
    assert os.listdir(path) == [] and mount_entry(str(path)) is None
    driver.remove("bindv")
    assert sorted(os.listdir(src)) == ["hello.txt", "written.txt"], "remove touched the bind source"


@needs_root
def test_read_only_bind_volume(driver: Any, tmp_path: Path) -> None:
    src = tmp_path / "ro-src"
    src.mkdir()
    (src / "f").write_text("keep")
    driver.create("robind", {"type": "none", "device": str(src), "o": "bind,ro"}, {})
    r = ref()
    path = Path(driver.mount("robind", r))
    try:
        assert (path / "f").read_text() == "keep"
        with pytest.raises(OSError, match="Read-only"):
            (path / "g").write_text("no")
        assert "ro" in mount_opts(str(path))
    finally:
        driver.unmount("robind", r)
    driver.remove("robind")


@needs_root
def test_failed_mount_leaves_no_ref(driver: Any, tmp_path: Path) -> None:
    src = tmp_path / "vanishing"
    src.mkdir()
    driver.create("gone", {"type": "none", "device": str(src), "o": "bind"}, {})
    src.rmdir()  # the source disappears after create
    with pytest.raises(PydError, match=r'mounting volume "gone".*No such file'):
        driver.mount("gone", ref())
    assert driver.refs("gone") == frozenset()
    driver.remove("gone")


# -- restart and recovery -------------------------------------------------------------------


@needs_root
def test_restart_keeps_a_used_tmpfs_mounted_and_its_data(driver: Any, home: Path) -> None:
    driver.create("live", TMPFS, {})
    r = ref()
    path = driver.mount("live", r)
    Path(path, "state").write_text("still here")
    again = run(home)  # daemon restart with the container running
    assert mount_entry(path) is not None
    assert Path(path, "state").read_text() == "still here"
    assert again.refs("live") == {r}
    again.unmount("live", r)
    assert mount_entry(path) is None
    again.remove("live")


def test_refs_of_an_earlier_boot_are_void(driver: Any, home: Path) -> None:
    driver.create("old", {}, {})
    driver.mount("old", ref())
    rec = json.loads((home / "old" / "refs.json").read_text())
    rec["boot_id"] = "an-earlier-boot"
    (home / "old" / "refs.json").write_text(json.dumps(rec))
    again = run(home)
    assert again.refs("old") == frozenset()
    again.remove("old")


@needs_root
def test_restart_undoes_a_mount_no_ref_holds_and_crash_leftovers(driver: Any, home: Path) -> None:
    driver.create("orphan", TMPFS, {})
    r = ref()
    path = driver.mount("orphan", r)
    (home / "orphan" / "refs.json").unlink()  # as if the daemon died mid-unmount
    (home / ".tmp-crashed").mkdir()
    (home / ".rm-crashed" / "half").mkdir(parents=True)
    run(home)
    assert mount_entry(path) is None
    assert sorted(os.listdir(home)) == ["orphan"]


# -- a device volume (ext4 on a loop device) ------------------------------------------------


@pytest.fixture
def loop_ext4(tmp_path: Path) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices)")
    if not (shutil.which("mkfs.ext4") and shutil.which("losetup")) or not os.path.exists("/dev/loop-control"):
        pytest.skip("needs mkfs.ext4, losetup and loop devices")
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(8 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
    attach = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True)
    if attach.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {attach.stderr.strip()}")
    dev = attach.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@needs_root
def test_ext4_device_volume_keeps_data_between_uses(driver: Any, home: Path, loop_ext4: str) -> None:
    driver.create("disk", {"type": "ext4", "device": loop_ext4, "o": "noatime"}, {})
    r = ref()
    path = driver.mount("disk", r)
    fstype, source, _ = mount_entry(path)
    assert (fstype, source) == ("ext4", loop_ext4)
    assert "noatime" in mount_opts(path)
    Path(path, "on-disk").write_text("persisted")
    driver.unmount("disk", r)
    assert mount_entry(path) is None and not os.path.exists(Path(path, "on-disk"))
    path = run(home).mount("disk", r)
    assert Path(path, "on-disk").read_text() == "persisted"
    driver.unmount("disk", r)
    driver.remove("disk")
