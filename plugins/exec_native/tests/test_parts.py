"""The native driver's parts: device rules and their eBPF form, path resolution inside a
rootfs, mount options, cgroup layouts (v1 and v2), bundle files, options and the log format."""

from __future__ import annotations

import os
import signal
import stat
import time
import uuid
from pathlib import Path

import pytest

from pyd.drivers.execdriver import decode_log_record, encode_log_record
from pyd.drivers.log import LogMessage
from pyd.errors import InvalidOption
from pyd.types import CgroupSpec, DeviceSpec, MountSpec, ProcessSpec, User
from pyd_exec_native import bundle, cgroups, devices, rootfs
from pyd_exec_native.driver import parse_options
from pyd_exec_native.rootfs import SetupError
from pyd_exec_native.shim import LogFile

# -- device rules ----------------------------------------------------------------------------------


def test_device_rules_parse() -> None:
    assert str(devices.parse_rule("c 1:3 rwm")) == "c 1:3 rwm"
    assert devices.parse_rule("b *:* m") == devices.Rule("b", -1, -1, "m")
    assert devices.parse_rule("a") == devices.Rule("a", -1, -1, "rwm")
    assert devices.parse_rule("c 136:* wr").access == "rw"
    for bad in ("x 1:3 rwm", "c 1 rwm", "c a:b rwm", "c 1:3 rwx", "c 1:3"):
        with pytest.raises(ValueError, match="device rule"):
            devices.parse_rule(bad)


def test_bpf_program_has_one_block_per_rule() -> None:
    rules = [devices.parse_rule(r) for r in devices.DEFAULT_RULES]
    prog = devices.bpf_program(rules)
    assert len(prog) % 8 == 0
    # every jump stays inside the program
    insns = [prog[i : i + 8] for i in range(0, len(prog), 8)]
    for pc, ins in enumerate(insns):
        if ins[0] == 0x55:  # JNE
            off = int.from_bytes(ins[2:4], "little", signed=True)
            assert 0 <= pc + 1 + off < len(insns)
    assert insns[-1][0] == 0x95  # ends in exit


UNIFIED = "/sys/fs/cgroup/unified"


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_cgroup_v2_create_join_devices_freeze_destroy(tmp_path: Path) -> None:
    """The v2 code path on a real cgroup2 mount (this host's hybrid ``unified`` one, which has no
    controllers: device filter, freezer, kill and removal are core v2 features)."""
    root = UNIFIED if os.path.exists(f"{UNIFIED}/cgroup.procs") else ""
    if not root and cgroups.detect().version == 2:
        root = "/sys/fs/cgroup"
    if not root:
        pytest.skip("no cgroup2 mount")
    parent = f"pyd-test-{uuid.uuid4().hex[:8]}"
    cg = cgroups.Cgroup(cgroups.Layout(2, {"": root}), f"{parent}/c1")
    blk = sorted(os.listdir("/sys/dev/block"))[0].split(":")
    node = tmp_path / "blk"
    os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(int(blk[0]), int(blk[1])))
    r, w = os.pipe()
    pid = 0
    try:
        if "memory" not in open(f"{root}/cgroup.controllers").read().split():
            with pytest.raises(cgroups.CgroupError, match="memory"):
                cgroups.Cgroup(cgroups.Layout(2, {"": root}), f"{parent}/c0").create(CgroupSpec(memory=1 << 25), [])
            assert not os.path.exists(f"{root}/{parent}/c0")
        cg.create(CgroupSpec(), list(devices.DEFAULT_RULES))
        pid = os.fork()
        if pid == 0:
            os.close(r)
            cg.join(0)
            results = []
            for path in ("/dev/null", str(node)):
                try:
                    os.close(os.open(path, os.O_RDONLY))
                    results.append("ok")
                except OSError as exc:
                    results.append(str(exc.errno))
            os.write(w, (" ".join(results) + "\n").encode())
            while True:
                time.sleep(1)
        os.close(w)
        assert os.read(r, 100).decode().split() == ["ok", "1"]  # /dev/null opens, the disk: EPERM
        assert cg.procs() == [pid]
        cg.freeze()
        assert cg.frozen()
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] in ("S", "D", "T")
        cg.thaw()
        assert not cg.frozen()
        cg.destroy()
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert not os.path.exists(f"{root}/{parent}")
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        cg.destroy()
        os.close(r)


def test_cgroup_layout_detection(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    v1.write_text(
        "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
        "31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        "32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "34 30 0:30 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
    )
    lay = cgroups.detect(str(v1))
    assert lay.version == 1
    assert lay.mounts == {"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct", "memory": "/sys/fs/cgroup/memory"}
    cg = cgroups.Cgroup(lay, "pyd/abc")
    assert sorted(set(cg.dirs.values())) == ["/sys/fs/cgroup/cpu,cpuacct/pyd/abc", "/sys/fs/cgroup/memory/pyd/abc"]
    v2 = tmp_path / "v2"
    v2.write_text("30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    assert cgroups.detect(str(v2)) == cgroups.Layout(2, {"": "/sys/fs/cgroup"})
    for bad in ("", "/abs/../x", "a/../b", "./a"):
        with pytest.raises(ValueError):
            cgroups.Cgroup(lay, bad)
    assert cgroups.cpu_shares_to_weight(1024) == 39
    assert cgroups.cpu_shares_to_weight(2) == 1 and cgroups.cpu_shares_to_weight(262144) == 10000


# -- paths inside a rootfs -------------------------------------------------------------------------


def test_resolve_in_root_never_leaves_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/etc/shadow", root / "abs")
    os.symlink("../../../../etc", root / "etc/up")
    os.symlink("loop", root / "loop")
    assert rootfs.resolve_in_root(str(root), "/abs") == f"{root}/etc/shadow"
    assert rootfs.resolve_in_root(str(root), "/etc/up/passwd") == f"{root}/etc/passwd"
    assert rootfs.resolve_in_root(str(root), "/../../x/./y") == f"{root}/x/y"
    with pytest.raises(SetupError, match="symbolic links"):
        rootfs.resolve_in_root(str(root), "/loop/x")


def test_make_target_creates_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), root / "escape")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        t = rootfs.make_target(fd, str(root), "/escape/sub/file", is_dir=False)
        try:
            assert os.readlink(f"/proc/self/fd/{t}") == f"{root}{outside}/sub/file"
        finally:
            os.close(t)
    finally:
        os.close(fd)
    assert not os.listdir(outside)


def test_mount_options() -> None:
    flags, prop, data = rootfs.parse_options(["ro", "nosuid", "rbind", "rslave", "size=64m", "mode=1777"])
    assert flags == rootfs.MS_RDONLY | rootfs.MS_NOSUID | rootfs.MS_BIND | rootfs.MS_REC
    assert prop == rootfs.linux.MS_SLAVE | rootfs.MS_REC
    assert data == "size=64m,mode=1777"
    assert rootfs.parse_options(["ro", "rw"])[0] == 0


# -- bundle, options, log format -----------------------------------------------------------------


def test_spec_round_trips_through_the_bundle() -> None:
    spec = ProcessSpec(
        args=["sh"],
        user=User(1000, 1000, [5]),
        mounts=[MountSpec("/data", "bind", "/srv", ["ro"])],
        devices=[DeviceSpec("/dev/fuse", "c", 10, 229)],
        cgroup=CgroupSpec(memory=1 << 20, pids_limit=5),
        rlimits={"nofile": (10, 20)},
        namespaces={"mnt": None, "net": "/proc/1/ns/net"},
        seccomp_filter=b"\x06\x00\x00\x00\x00\x00\xff\x7f",
    )
    assert bundle.spec_from_dict(bundle.spec_to_dict(spec)) == spec
    assert bundle.spec_from_dict({**bundle.spec_to_dict(spec), "field_from_the_future": 1}) == spec


def test_long_bundle_paths_use_a_short_socket_address(tmp_path: Path) -> None:
    long = tmp_path / ("x" * 120)
    long.mkdir()
    path, fd = bundle.socket_address(str(long))
    assert fd is not None and len(path) < 100 and path.endswith("/shim.sock")
    os.close(fd)
    path, fd = bundle.socket_address("/run/pyd/b")
    assert (path, fd) == ("/run/pyd/b/shim.sock", None)


def test_exec_opts() -> None:
    assert parse_options({}).shim_start == "forkserver"
    assert parse_options({"shim-start": "exec"}).shim_start == "exec"
    with pytest.raises(InvalidOption, match='shim-start="fork".*forkserver or exec'):
        parse_options({"shim-start": "fork"})
    with pytest.raises(InvalidOption, match='unknown option "nope"; valid keys: shim-start'):
        parse_options({"nope": "1"})


def test_log_records_round_trip() -> None:
    for msg in (
        LogMessage(b"hello\n", "stdout", 1, False),
        LogMessage(b"\xff\xfe binary", "stderr", 2, True),
        LogMessage("ünï\n".encode(), "stdout", 3, False),
    ):
        line = encode_log_record(msg)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert decode_log_record(line) == msg
    with pytest.raises(ValueError):
        decode_log_record(b'{"s": "nowhere", "t": 1}')


def test_shim_log_writer_splits_and_rotates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.log"
    log = LogFile(str(path))
    log.rotate_size = 300
    log.write(1, b"one\ntw")
    log.write(2, b"err\n")
    log.write(1, b"o\n" + b"x" * (log.max_line + 5))
    log.close()
    msgs = [decode_log_record(line) for p in (f"{path}.1", path) if os.path.exists(p) for line in open(p, "rb")]
    assert [(m.stream, m.line, m.partial) for m in msgs] == [
        ("stdout", b"one\n", False),
        ("stderr", b"err\n", False),
        ("stdout", b"two\n", False),
        ("stdout", b"x" * log.max_line, True),
        ("stdout", b"x" * 5, True),
    ]
    assert os.path.exists(f"{path}.1")  # it rotated at 300 bytes
