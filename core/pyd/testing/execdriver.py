"""Conformance suite for exec drivers (``pyd.drivers.execdriver.ExecDriver``).

Subclass ``ExecDriverSuite`` in your plugin's tests and set ``driver_name`` (the entry-point
name); every test then runs against your driver, loaded through its real entry point, with a
busybox root filesystem (Debian's ``busybox-static``). The checks are what a user of ``pyd run``
relies on: isolation (pid 1, hostname, no host processes, no host fds, cwd inside the root),
limits (memory with OOM report, pids, read-only root, device access), privileges (default
capabilities versus ``--privileged``, a non-root user, a non-dumpable exec helper), stdio
(pipes, stdin, a tty, the log file) and lifecycle (exit codes, exec, pause, stats, a driver
that is restarted or killed while containers run, and nothing left behind by ``delete`` or by
a failed ``create``). All tests need root and are marked ``integration``.

``syscall_probe`` builds a tiny static x86-64 program that makes one system call and exits with
its errno (0 on success); security plugins use it to prove what their filters block.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from pyd.drivers.execdriver import (
    CAPABILITY_NAMES,
    DEFAULT_CAPABILITIES,
    DEFAULT_MASKED_PATHS,
    DEFAULT_NAMESPACES,
    DEFAULT_READONLY_PATHS,
    ContainerState,
    CreateContainerRequest,
    ExecRequest,
    StdioConfig,
    decode_log_record,
)
from pyd.errors import Conflict, InvalidParameter, NotFound, PydError
from pyd.types import CgroupSpec, MountSpec, ProcessSpec, User

BUSYBOX = "/bin/busybox"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
GROUP = "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n"
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"]


# --------------------------------------------------------------------------------------------
# Helpers usable outside the suite
# --------------------------------------------------------------------------------------------


def make_busybox_rootfs(path: Path) -> Path:
    """A root filesystem with /bin/busybox, its applets as symlinks, and /etc/passwd with
    root, uid 1000 ("user") and nobody."""
    if not os.path.exists(BUSYBOX):
        pytest.skip(f"{BUSYBOX} is missing (Debian package busybox-static)")
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)  # temporary directories are made 0700
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root", "home/user", "proc", "sys", "dev", "var"):
        (path / d).mkdir(parents=True, exist_ok=True)
    os.chmod(path / "tmp", 0o1777)
    os.chown(path / "home/user", 1000, 1000)
    shutil.copy(BUSYBOX, path / "bin/busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for app in applets:
        if app != "busybox" and not (path / "bin" / app).exists():
            os.symlink("busybox", path / "bin" / app)
    (path / "etc/passwd").write_text(PASSWD)
    (path / "etc/group").write_text(GROUP)
    return path


def demux(data: bytes) -> tuple[bytes, bytes]:
    """Split Docker's multiplexed raw stream into (stdout, stderr)."""
    out, err = bytearray(), bytearray()
    i = 0
    while i + 8 <= len(data):
        stream, n = struct.unpack(">BxxxI", data[i : i + 8])
        (err if stream == 2 else out).extend(data[i + 8 : i + 8 + n])
        i += 8 + n
    return bytes(out), bytes(err)


def read_all(sock: socket.socket, timeout: float = 30.0) -> bytes:
    """Everything the stream carries until the driver closes it."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        sock.close()
    return b"".join(chunks)


def syscall_probe(nr: int, *args: int, compat32: bool = False) -> bytes:
    """A static x86-64 ELF that makes system call ``nr`` with ``args`` and exits with its errno
    (0 on success). ``compat32`` uses ``int 0x80`` (i386 numbering, 32-bit arguments)."""
    code = bytearray()
    if compat32:
        code += b"\xb8" + struct.pack("<I", nr)  # mov eax, nr
        for op, a in zip((b"\xbb", b"\xb9", b"\xba", b"\xbe", b"\xbf", b"\xbd"), args):  # ebx ecx edx esi edi ebp
            code += op + struct.pack("<I", a & 0xFFFFFFFF)
        code += b"\xcd\x80"  # int 0x80
        code += b"\x48\x63\xc0"  # movsxd rax, eax
    else:
        code += b"\x48\xc7\xc0" + struct.pack("<i", nr)  # mov rax, nr
        for op, a in zip((b"\x48\xbf", b"\x48\xbe", b"\x48\xba", b"\x49\xba", b"\x49\xb8", b"\x49\xb9"), args):
            code += op + struct.pack("<Q", a & 0xFFFFFFFFFFFFFFFF)  # movabs rdi rsi rdx r10 r8 r9
        code += b"\x0f\x05"  # syscall
    code += b"\x31\xff"  # xor edi, edi
    code += b"\x48\x85\xc0"  # test rax, rax
    code += b"\x79\x05"  # jns exit
    code += b"\x48\xf7\xd8"  # neg rax
    code += b"\x89\xc7"  # mov edi, eax
    code += b"\xb8\xe7\x00\x00\x00"  # exit: mov eax, 231 (exit_group)
    code += b"\x0f\x05"  # syscall
    base, hdr = 0x400000, 64 + 56
    total = hdr + len(code)
    ehdr = struct.pack(
        "<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + b"\x00" * 9, 2, 62, 1, base + hdr, 64, 0, 0, 64, 56, 1, 0, 0, 0
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, total, total, 0x1000)
    return ehdr + phdr + bytes(code)


def install_probe(rootfs: Path, name: str, nr: int, *args: int, compat32: bool = False) -> str:
    """Write a ``syscall_probe`` into ``rootfs``/bin/probe-<name>; return its path in the container."""
    path = rootfs / "bin" / f"probe-{name}"
    path.write_bytes(syscall_probe(nr, *args, compat32=compat32))
    os.chmod(path, 0o755)
    return f"/bin/probe-{name}"


def held_capabilities() -> list[str]:
    """Names of the capabilities this process holds (bounding and permitted): what
    ``--privileged`` grants on this host."""
    masks = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("CapBnd:", "CapPrm:")):
                masks[line[:6]] = int(line.split()[1], 16)
    both = masks.get("CapBnd", 0) & masks.get("CapPrm", 0)
    return [n for i, n in enumerate(CAPABILITY_NAMES) if both >> i & 1]


def _stat(pid: int) -> tuple[str, str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return "", ""


def process_alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    state, _ = _stat(pid)
    return bool(state) and state not in ("Z", "X")


def cgroup_dirs(path: str) -> list[str]:
    """Existing directories named ``path`` under any cgroup hierarchy of this host."""
    roots = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.split()[0] in ("cgroup", "cgroup2"):
                roots.add(pre.split()[4])
    return sorted(d for d in (os.path.join(r, path) for r in roots) if os.path.isdir(d))


@dataclass
class Result:
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    state: ContainerState

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")


@dataclass
class Tracker:
    """The containers one test made, removed (and checked gone) at its end."""

    driver: Any
    base: Path
    cgroup_parent: str
    ids: dict[str, dict[str, Any]] = field(default_factory=dict)

    def remember(self, cid: str, bundle: str, rootfs: str) -> None:
        self.ids[cid] = {"bundle": bundle, "rootfs": rootfs, "pids": set()}

    def note_pid(self, cid: str, pid: int) -> None:
        if pid:
            self.ids[cid]["pids"].add(pid)

    def shim_pid(self, cid: str) -> int:
        try:
            with open(os.path.join(self.ids[cid]["bundle"], "state.json")) as f:
                return int(json.load(f).get("shim_pid") or 0)
        except (OSError, ValueError, KeyError):
            return 0

    def remove_all(self) -> list[str]:
        problems = []
        for cid, info in self.ids.items():
            shim = self.shim_pid(cid)
            if shim:
                info["pids"].add(shim)
            try:
                st = self.driver.state(cid)
                self.note_pid(cid, st.pid)
                if st.status in ("running", "paused"):
                    if st.status == "paused":
                        self.driver.resume(cid)
                    self.driver.kill(cid, signal.SIGKILL)
                    self.driver.wait(cid, timeout=10)
            except NotFound:
                pass
            except PydError as exc:
                problems.append(f"{cid}: {exc}")
            try:
                self.driver.delete(cid)
            except PydError as exc:
                problems.append(f"{cid}: delete: {exc}")
            deadline = time.monotonic() + 5
            while any(process_alive(p) for p in info["pids"]) and time.monotonic() < deadline:
                time.sleep(0.01)
            for pid in info["pids"]:
                if process_alive(pid):
                    problems.append(f"{cid}: process {pid} still runs after delete")
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            left = cgroup_dirs(f"{self.cgroup_parent}/{cid}")
            if left:
                problems.append(f"{cid}: cgroups left after delete: {left}")
            if os.path.exists(info["bundle"]):
                problems.append(f"{cid}: bundle {info['bundle']} left after delete")
            with open("/proc/self/mountinfo") as f:
                mounts = f.read()
            for p in (info["rootfs"], info["bundle"]):
                if p in mounts:
                    problems.append(f"{cid}: a mount under {p} is visible on the host")
        self.ids.clear()
        return problems


# --------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="exec drivers need root")
class ExecDriverSuite:
    """Subclass and set ``driver_name``; ``driver_options`` are its ``exec-opts``."""

    driver_name: str = ""
    driver_options: dict[str, str] = {}

    # -- fixtures ------------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def exec_rootfs(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return make_busybox_rootfs(tmp_path_factory.mktemp("rootfs"))

    @pytest.fixture(scope="class")
    @classmethod
    def exec_home(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp("exec-home")

    @pytest.fixture(scope="class")
    @classmethod
    def cgroup_parent(cls) -> Iterator[str]:
        parent = f"pyd-test-{uuid.uuid4().hex[:8]}"
        yield parent
        left = cgroup_dirs(parent)
        for d in left:
            try:
                os.rmdir(d)
            except OSError:
                pass
        assert not left, f"cgroup parent directories left behind: {left}"

    @classmethod
    def load_driver(cls, home: Path) -> Any:
        from pyd.registry import Kind, PluginRegistry

        return PluginRegistry().init_driver(Kind.EXEC, cls.driver_name, home=home, options=dict(cls.driver_options))

    @pytest.fixture(scope="class")
    @classmethod
    def driver(cls, exec_home: Path) -> Iterator[Any]:
        drv = cls.load_driver(exec_home)
        yield drv
        drv.close()

    @pytest.fixture
    def tracker(self, driver: Any, tmp_path: Path, cgroup_parent: str) -> Iterator[Tracker]:
        t = Tracker(driver, tmp_path, cgroup_parent)
        yield t
        problems = t.remove_all()
        assert not problems, "cleanup: " + "; ".join(problems)

    # -- building and running containers ---------------------------------------------------------

    @pytest.fixture
    def ctx(self, driver: Any, tracker: Tracker, exec_rootfs: Path) -> "Ctx":
        return Ctx(driver, tracker, exec_rootfs)

    # -- tests -----------------------------------------------------------------------------------

    def test_entry_point_gives_a_driver(self, driver: Any) -> None:
        assert driver.name == self.driver_name
        for method in ("create", "start", "state", "kill", "wait", "exec", "exec_state", "attach",
                       "resize", "pause", "resume", "stats", "delete", "list", "close"):  # fmt: skip
            assert callable(getattr(driver, method, None)), method

    def test_pid_1_and_hostname(self, ctx: "Ctx") -> None:
        r = ctx.run(["sh", "-c", "echo $$; hostname; cat /proc/1/cmdline | tr '\\0' ' '"], hostname="box-one")
        assert r.exit_code == 0, r.err
        assert r.out.splitlines() == ["1", "box-one", "sh -c echo $$; hostname; cat /proc/1/cmdline | tr '\\0' ' ' "]

    def test_host_processes_are_invisible(self, ctx: "Ctx") -> None:
        r = ctx.run(["sh", "-c", "for p in /proc/[0-9]*; do echo ${p#/proc/} $(tr '\\0' ' ' < $p/cmdline); done"])
        lines = r.out.splitlines()
        assert r.exit_code == 0 and lines, r.err
        pids = {int(line.split()[0]) for line in lines}
        assert max(pids) < 20, lines  # only the container's own few processes
        assert not any("python" in line or "pytest" in line for line in lines), lines

    def test_exit_code_and_signal_propagate(self, ctx: "Ctx") -> None:
        assert ctx.run(["sh", "-c", "exit 42"]).exit_code == 42
        cid = ctx.create(["sleep", "60"])
        ctx.driver.start(cid)
        ctx.driver.kill(cid, signal.SIGKILL)
        st = ctx.driver.wait(cid, timeout=10)
        assert (st.status, st.exit_code) == ("stopped", 137)
        with pytest.raises(Conflict):
            ctx.driver.kill(cid, signal.SIGTERM)

    def test_program_not_found_is_127(self, ctx: "Ctx") -> None:
        cid = ctx.create(["no-such-program"])
        with pytest.raises(InvalidParameter, match="executable file not found"):
            ctx.driver.start(cid)
        st = ctx.driver.wait(cid, timeout=10)
        assert st.exit_code == 127 and "no-such-program" in st.error
        cid = ctx.create(["/etc/passwd"])
        with pytest.raises(InvalidParameter, match="permission denied"):
            ctx.driver.start(cid)
        assert ctx.driver.wait(cid, timeout=10).exit_code == 126

    def test_stdin_is_piped_through(self, ctx: "Ctx") -> None:
        r = ctx.run(["sh", "-c", "cat; echo done >&2"], stdin=b"hello\nworld\n")
        assert (r.exit_code, r.stdout, r.stderr) == (0, b"hello\nworld\n", b"done\n")

    def test_tty(self, ctx: "Ctx") -> None:
        r = ctx.run(["sh", "-c", "test -t 0 && test -t 1 && echo is-a-tty; stty size; tty"], tty=True, console_size=(33, 101))
        assert r.exit_code == 0
        lines = [line.strip() for line in r.out.splitlines()]
        assert lines[:2] == ["is-a-tty", "33 101"], r.out
        assert lines[2].startswith("/dev/pts/"), r.out

    def test_default_container_cannot_mount_unshare_or_add_links(self, ctx: "Ctx") -> None:
        for cmd in ("mkdir -p /mnt && mount -t tmpfs none /mnt", "unshare -m true", "ip link add b0 type bridge"):
            r = ctx.run(["sh", "-c", cmd])
            assert r.exit_code != 0, f"{cmd} worked in a default container"

    def test_privileged_container_can(self, ctx: "Ctx") -> None:
        for cmd in ("mkdir -p /mnt && mount -t tmpfs none /mnt && umount /mnt", "unshare -m true", "ip link add b0 type bridge"):
            r = ctx.run(["sh", "-c", cmd], privileged=True)
            assert r.exit_code == 0, f"{cmd} failed in a privileged container: {r.err}"

    def test_block_device_cannot_be_opened(self, ctx: "Ctx") -> None:
        blocks = sorted(os.listdir("/sys/dev/block"))
        if not blocks:
            pytest.skip("this host has no block device")
        major, minor = blocks[0].split(":")
        cmd = f"mknod /tmp/blk-$$ b {major} {minor} && head -c 1 /tmp/blk-$$ > /dev/null; r=$?; rm -f /tmp/blk-$$; exit $r"
        r = ctx.run(["sh", "-c", cmd])
        assert r.exit_code != 0 and "not permitted" in r.err, (r.exit_code, r.err)
        r = ctx.run(["sh", "-c", cmd], privileged=True)  # the same device does open when allowed
        assert r.exit_code == 0, r.err
        r = ctx.run(["sh", "-c", "head -c 1 /dev/zero > /dev/null && echo > /dev/null && head -c 1 /dev/urandom > /dev/null"])
        assert r.exit_code == 0, r.err

    def test_memory_limit_ends_in_oom_kill(self, ctx: "Ctx") -> None:
        r = ctx.run(["sh", "-c", "tail /dev/zero"], cgroup=CgroupSpec(memory=32 * 1024 * 1024), timeout=60)
        assert r.state.oom_killed, r.state
        assert r.exit_code == 137, r.state

    def test_pids_limit_contains_a_fork_bomb(self, ctx: "Ctx") -> None:
        cid = ctx.create(["sh", "-c", "bomb() { bomb | bomb & }; bomb; sleep 60"], cgroup=CgroupSpec(pids_limit=50))
        sock = ctx.driver.attach(cid)
        ctx.driver.start(cid)
        sock.settimeout(60)
        data = b""
        while b"fork" not in demux(data)[1]:  # the kernel refuses its forks: "can't fork"
            chunk = sock.recv(65536)
            assert chunk, demux(data)
            data += chunk
            assert ctx.driver.stats(cid)["pids_stats"]["current"] <= 50
        for _ in range(5):
            stats = ctx.driver.stats(cid)
            assert stats["pids_stats"]["current"] <= 50 and stats["pids_stats"].get("limit") == 50, stats
            time.sleep(0.05)
        pid = os.fork()  # the host can still fork
        if pid == 0:
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        ctx.driver.kill(cid, signal.SIGKILL, all=True)
        assert ctx.driver.wait(cid, timeout=30).status == "stopped"
        read_all(sock, timeout=30)

    def test_read_only_rootfs(self, ctx: "Ctx") -> None:
        r = ctx.run(["sh", "-c", "touch /rofile"], readonly_rootfs=True)
        assert r.exit_code != 0 and "Read-only file system" in r.err, r.err
        r = ctx.run(["sh", "-c", "echo x > /dev/shm/ok && cat /dev/shm/ok"], readonly_rootfs=True)
        assert (r.exit_code, r.out) == (0, "x\n"), r.err

    def test_non_root_user_cannot_write_root_files(self, ctx: "Ctx") -> None:
        r = ctx.run(["sh", "-c", "id -u; id -G; touch /etc/nope"], user=User(1000, 1000, [65534]))
        lines = r.out.splitlines()
        assert lines[:2] == ["1000", "1000 65534"], r.out
        assert r.exit_code != 0 and "Permission denied" in r.err, r.err
        r = ctx.run(["sh", "-c", "echo more >> /etc/passwd"], user=User(1000, 1000))
        assert r.exit_code != 0
        r = ctx.run(["sh", "-c", "grep Cap /proc/self/status"], user=User(1000, 1000))
        eff = [line for line in r.out.splitlines() if line.startswith("CapEff")]
        assert eff and int(eff[0].split()[1], 16) == 0, r.out

    def test_capabilities_are_exactly_the_list(self, ctx: "Ctx") -> None:
        r = ctx.run(["sh", "-c", "grep -E 'Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status"])
        caps = {line.split(":")[0]: int(line.split()[1], 16) for line in r.out.splitlines()}
        names = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
                 "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "MKNOD", "AUDIT_WRITE", "SETFCAP")  # fmt: skip
        numbers = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6, "SETUID": 7,
                   "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13, "SYS_CHROOT": 18, "MKNOD": 27,
                   "AUDIT_WRITE": 29, "SETFCAP": 31}  # fmt: skip
        want = sum(1 << numbers[n] for n in names)
        assert set(DEFAULT_CAPABILITIES) == set(names)
        assert caps == {"CapInh": 0, "CapPrm": want, "CapEff": want, "CapBnd": want, "CapAmb": 0}, r.out

    def test_process_settings(self, ctx: "Ctx") -> None:
        script = (
            "grep NoNewPrivs /proc/self/status | tr -d ' \t'; ulimit -n; ulimit -Hn; "
            "cat /proc/sys/net/ipv4/ip_forward /proc/self/oom_score_adj; echo $FOO; umask"
        )
        r = ctx.run(
            ["sh", "-c", script],
            env=[*ENV, "FOO=bar baz"],
            no_new_privileges=True,
            rlimits={"nofile": (123, 456)},
            sysctls={"net.ipv4.ip_forward": "1"},
            oom_score_adj=500,
        )
        assert r.out.splitlines() == ["NoNewPrivs:1", "123", "456", "1", "500", "bar baz", "0022"], (r.out, r.err)
        assert ctx.run(["sh", "-c", "grep NoNewPrivs /proc/self/status"]).out.split() == ["NoNewPrivs:", "0"]

    def test_no_host_fds_leak(self, ctx: "Ctx") -> None:
        r = ctx.run(["sh", "-c", "ls /proc/$$/fd; for f in /proc/$$/fd/*; do readlink $f; done"])
        fds = [x for x in r.out.split() if x.isdigit()]
        assert fds == ["0", "1", "2"], r.out
        assert "/dev/null" in r.out and "pipe:" in r.out

    def test_cwd_is_inside_the_rootfs(self, ctx: "Ctx") -> None:
        r = ctx.run(["sh", "-c", "pwd; readlink /proc/self/cwd; ls ../.."], cwd="/home/user")
        lines = r.out.splitlines()
        assert lines[:2] == ["/home/user", "/home/user"] and "etc" in lines, r.out
        # The CVE-2024-21626 pattern: a working directory through a leaked fd must not reach the host.
        for fd in range(3, 10):
            try:
                r = ctx.run(["sh", "-c", "readlink /proc/self/cwd"], cwd=f"/proc/self/fd/{fd}")
            except InvalidParameter:
                continue
            assert r.exit_code != 0, f"cwd /proc/self/fd/{fd} led to {r.out!r}"

    def test_masked_and_read_only_paths(self, ctx: "Ctx") -> None:
        files = [p for p in DEFAULT_MASKED_PATHS if os.path.isfile(p) and open(p, "rb").read(1)]
        dirs = [p for p in DEFAULT_MASKED_PATHS if os.path.isdir(p) and os.listdir(p)]
        assert files and dirs, "this host has none of the masked paths to check"
        cmd = f"wc -c < {files[0]}; ls {dirs[0]} | wc -l; echo 1 > /proc/sys/kernel/panic"
        r = ctx.run(["sh", "-c", cmd])
        lines = r.out.split()
        assert lines[:2] == ["0", "0"], (cmd, r.out, r.err)
        assert r.exit_code != 0 and "Read-only file system" in r.err, r.err

    def test_mounts_from_the_spec(self, ctx: "Ctx", tmp_path: Path) -> None:
        src = tmp_path / "vol"
        src.mkdir()
        (src / "hello").write_text("from the host\n")
        hosts = tmp_path / "hosts"
        hosts.write_text("127.0.0.1 localhost\n")
        mounts = [
            MountSpec("/data", "bind", str(src), ["rbind", "rw"]),
            MountSpec("/etc/hosts", "bind", str(hosts), ["rbind", "ro"]),
            MountSpec("/scratch", "tmpfs", "tmpfs", ["nosuid", "size=1m"]),
        ]
        r = ctx.run(["sh", "-c", "cat /data/hello /etc/hosts; echo new > /data/out; echo x > /scratch/f; cat /scratch/f; echo y > /etc/hosts"], mounts=mounts)
        assert r.out == "from the host\n127.0.0.1 localhost\nx\n", r.out
        assert "Read-only" in r.err and (src / "out").read_text() == "new\n"

    def test_mount_destination_symlink_stays_inside(self, ctx: "Ctx", tmp_path: Path, exec_rootfs: Path) -> None:
        # An image whose mount destination is a symlink to a host path (CVE-2018-15664 class):
        # the mount must land inside the rootfs.
        outside = tmp_path / "outside"
        outside.mkdir()
        link = exec_rootfs / f"evil-{uuid.uuid4().hex[:6]}"
        os.symlink(str(outside), link)
        src = tmp_path / "src"
        src.mkdir()
        (src / "marker").write_text("m\n")
        top = exec_rootfs / outside.parts[1]
        before = set(os.listdir(top)) if top.is_dir() else None
        try:
            r = ctx.run(["sh", "-c", f"cat /{link.name}/marker"], mounts=[MountSpec(f"/{link.name}", "bind", str(src), ["rbind"])])
            assert r.out == "m\n", r.err
            assert not os.listdir(outside)  # nothing was mounted on, or created in, the host path
            assert (exec_rootfs / str(outside).lstrip("/")).is_dir()  # the target was made inside
        finally:
            os.unlink(link)
            if before is None:
                shutil.rmtree(top, ignore_errors=True)
            else:
                for name in set(os.listdir(top)) - before:
                    shutil.rmtree(top / name, ignore_errors=True)

    def test_image_symlinks_do_not_lead_to_the_host(self, ctx: "Ctx", tmp_path: Path) -> None:
        """/dev, /proc and a mount point that are absolute symlinks in the image stay inside it."""
        rootfs = make_busybox_rootfs(tmp_path / "evil-rootfs")
        escape = Path(f"/tmp/pyd-escape-{uuid.uuid4().hex[:8]}")
        for name in ("dev", "proc", "data"):
            d = rootfs / name
            if d.is_dir():
                d.rmdir()
            os.symlink(str(escape / name), d)
        src = tmp_path / "src"
        src.mkdir()
        try:
            r = ctx.run(
                ["sh", "-c", "echo x > /dev/null && head -c1 /dev/zero | wc -c && grep -c Name /proc/self/status && ls /data"],
                rootfs=str(rootfs),
                mounts=[MountSpec("/data", "bind", str(src), ["rbind"])],
                sysctls={"net.ipv4.ip_forward": "1"},
            )
            assert r.exit_code == 0 and r.out.split() == ["1", "1"], (r.out, r.err)
            assert not escape.exists()
        finally:
            shutil.rmtree(escape, ignore_errors=True)

    def test_log_file_records_output(self, ctx: "Ctx", tmp_path: Path) -> None:
        log_path = tmp_path / "ctr.log"
        r = ctx.run(["sh", "-c", "echo one; echo two >&2; printf 'no-newline'"], log_path=str(log_path))
        assert r.exit_code == 0
        msgs = [decode_log_record(line) for line in log_path.read_bytes().splitlines(keepends=True)]
        got = [(m.stream, m.line, m.partial) for m in msgs]
        assert sorted(got) == sorted([("stdout", b"one\n", False), ("stderr", b"two\n", False), ("stdout", b"no-newline", True)])
        assert all(m.time_nano > 0 for m in msgs)

    def test_exec_in_a_running_container(self, ctx: "Ctx") -> None:
        cid = ctx.create(["sleep", "60"])
        init_pid = ctx.driver.start(cid)
        pid = ctx.driver.exec(cid, ExecRequest("e1", ["sh", "-c", "cat /proc/1/cmdline; echo; echo err >&2; exit 3"], env=ENV))
        assert pid > 0 and pid != init_pid
        out, err = demux(read_all(ctx.driver.attach(cid, "e1")))
        assert (out, err) == (b"sleep\x0060\x00\n", b"err\n")
        st = ctx.driver.exec_state(cid, "e1")
        assert (st.status, st.exit_code) == ("stopped", 3)
        pid = ctx.driver.exec(cid, ExecRequest("e2", ["cat"], env=ENV, open_stdin=True))
        s = ctx.driver.attach(cid, "e2", stdin=True)
        s.sendall(b"piped\n")
        s.shutdown(socket.SHUT_WR)
        assert demux(read_all(s))[0] == b"piped\n"
        assert ctx.driver.exec_state(cid, "e2").exit_code == 0
        pid = ctx.driver.exec(cid, ExecRequest("e3", ["sh", "-c", "tty; stty size"], env=ENV, tty=True, console_size=(20, 70)))
        out = read_all(ctx.driver.attach(cid, "e3")).decode()
        assert "/dev/pts/" in out and "20 70" in out, out
        with pytest.raises(Conflict):
            ctx.driver.exec(cid, ExecRequest("e1", ["true"], env=ENV))
        with pytest.raises(NotFound):
            ctx.driver.exec_state(cid, "nope")

    def test_exec_helper_is_not_dumpable(self, ctx: "Ctx") -> None:
        """Root in the container must not open /proc/PID/exe of the host binary that joins it
        (CVE-2019-5736). The exec process is held before its exec while the container looks."""
        cid = ctx.create(["sh"], stdio=StdioConfig(open_stdin=True))
        shell = ctx.driver.attach(cid, stdin=True)
        ctx.driver.start(cid)
        host_pid = ctx.driver.exec(cid, ExecRequest("hold", ["true"], env=ENV))
        with open(f"/proc/{host_pid}/status") as f:
            nspid = [line.split()[-1] for line in f if line.startswith("NSpid:")][0]
        with open(f"/proc/{host_pid}/exe", "rb") as f:
            assert f.read(4) == b"\x7fELF"  # it is still the host's binary
        script = textwrap.dedent(
            f"""\
            for p in 1 {nspid}; do
              if cat /proc/$p/exe > /dev/null 2>&1; then r=open; else r=denied; fi
              if ( echo x >> /proc/$p/exe ) 2>/dev/null; then w=written; else w=refused; fi
              echo "PID $p $r $w"
            done
            echo END
            """
        )
        shell.sendall(script.encode())
        shell.settimeout(20)
        data = b""
        while b"END" not in demux(data)[0]:
            chunk = shell.recv(65536)
            assert chunk, demux(data)
            data += chunk
        out = demux(data)[0].decode()
        assert "PID 1 open" in out, out  # the check can see an ordinary process's binary
        assert f"PID {nspid} denied refused" in out, out
        read_all(ctx.driver.attach(cid, "hold"))
        assert ctx.driver.exec_state(cid, "hold").exit_code == 0
        shell.close()

    def test_pause_resume_and_stats(self, ctx: "Ctx") -> None:
        cid = ctx.create(["sh", "-c", "while true; do sleep 0.05; done"], cgroup=CgroupSpec(memory=64 * 1024 * 1024, pids_limit=100))
        ctx.driver.start(cid)
        stats = ctx.driver.stats(cid)
        assert stats["memory_stats"]["usage"] > 0 and stats["memory_stats"]["limit"] == 64 * 1024 * 1024
        assert stats["pids_stats"]["current"] >= 1 and stats["cpu_stats"]["cpu_usage"]["total_usage"] > 0
        assert stats["cpu_stats"]["online_cpus"] >= 1 and stats["read"].endswith("Z")
        ctx.driver.pause(cid)
        assert ctx.driver.state(cid).status == "paused"
        with pytest.raises(Conflict):
            ctx.driver.exec(cid, ExecRequest("p", ["true"], env=ENV))
        ctx.driver.resume(cid)
        assert ctx.driver.state(cid).status == "running"
        with pytest.raises(Conflict):
            ctx.driver.resume(cid)

    def test_containers_outlive_a_killed_driver(self, ctx: "Ctx", exec_home: Path, tmp_path: Path) -> None:
        """A daemon killed with SIGKILL leaves its containers running and their logs growing; a
        new driver on the same home lists them, reads their state, attaches to their output
        and stops them; one that exited meanwhile shows its exit code."""
        home = tmp_path / "home-killed"
        cids = [f"outlive-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        loop = ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done"]
        specs = [ctx.spec(loop, cid) for cid in cids[:2]] + [ctx.spec(["sh", "-c", "sleep 1; exit 7"], cids[2])]
        bundles = [str(tmp_path / f"bundle-{cid}") for cid in cids]
        logs = [str(tmp_path / f"{cid}.log") for cid in cids]
        script = textwrap.dedent(
            f"""\
            import sys, time, pickle
            from pyd.registry import Kind, PluginRegistry
            from pyd.drivers.execdriver import CreateContainerRequest
            specs, bundles, cids, logs = pickle.loads(bytes.fromhex(sys.argv[1]))
            d = PluginRegistry().init_driver(Kind.EXEC, {self.driver_name!r}, home={str(home)!r}, options={self.driver_options!r})
            for cid, spec, b, log in zip(cids, specs, bundles, logs):
                d.create(CreateContainerRequest(cid, spec, b, log_path=log))
                print(d.start(cid), flush=True)
            time.sleep(600)
            """
        )
        import pickle

        arg = pickle.dumps((specs, bundles, cids, logs)).hex()
        daemon = subprocess.Popen([sys.executable, "-c", script, arg], stdout=subprocess.PIPE, text=True)
        other = None
        try:
            pids = [int(daemon.stdout.readline()) for _ in cids]  # type: ignore[union-attr]
            for cid, b, spec in zip(cids, bundles, specs):
                ctx.tracker.remember(cid, b, spec.rootfs)
            daemon.kill()
            daemon.wait()
            sizes = [os.path.getsize(log) if os.path.exists(log) else 0 for log in logs[:2]]
            time.sleep(1.5)
            assert all(process_alive(p) for p in pids[:2])
            for log, size in zip(logs, sizes):  # the logs grow with no daemon around
                assert os.path.getsize(log) > size
                last = decode_log_record(open(log, "rb").read().splitlines()[-1])
                assert last.stream == "stdout" and last.line.startswith(b"tick ")
            other = self.load_driver(home)
            ctx.tracker.driver = other
            assert sorted(other.list()) == sorted(cids)
            for cid, pid in zip(cids[:2], pids):
                st = other.state(cid)
                assert (st.status, st.pid) == ("running", pid)
            st = other.wait(cids[2], timeout=20)  # exited while no daemon was there
            assert (st.status, st.exit_code, st.pid) == ("stopped", 7, pids[2])
            s = other.attach(cids[0])
            s.settimeout(10)
            data = b""
            while data.count(b"tick") < 2:
                chunk = s.recv(4096)
                assert chunk
                data += chunk
            other.kill(cids[0], signal.SIGKILL)
            assert other.wait(cids[0], timeout=10).exit_code == 137
            read_all(s, timeout=10)  # the stream ends once the container is gone
            other.kill(cids[1], signal.SIGTERM)  # pid 1 ignores TERM without a handler
            time.sleep(0.2)
            assert other.state(cids[1]).status == "running"
            other.kill(cids[1], signal.SIGKILL)
            assert other.wait(cids[1], timeout=10).status == "stopped"
            for cid in cids:
                other.delete(cid)
                assert cid not in other.list()
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            if other is not None:
                problems = ctx.tracker.remove_all()
                ctx.tracker.driver = ctx.driver
                other.close()
                assert not problems, problems

    def test_delete_leaves_nothing_and_is_idempotent(self, ctx: "Ctx") -> None:
        cid = ctx.create(["sleep", "60"])
        pid = ctx.driver.start(cid)
        with pytest.raises(Conflict):
            ctx.driver.delete(cid)
        shim = ctx.tracker.shim_pid(cid)
        assert shim and process_alive(shim)
        ctx.driver.kill(cid, signal.SIGKILL)
        ctx.driver.wait(cid, timeout=10)
        ctx.driver.delete(cid)
        ctx.driver.delete(cid)
        assert cid not in ctx.driver.list()
        with pytest.raises(NotFound):
            ctx.driver.state(cid)
        assert not process_alive(pid)
        deadline = time.monotonic() + 5
        while process_alive(shim) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not process_alive(shim)
        assert not cgroup_dirs(f"{ctx.tracker.cgroup_parent}/{cid}")
        # a created container that never ran can be deleted too
        cid = ctx.create(["true"])
        ctx.driver.delete(cid)
        assert cid not in ctx.driver.list()

    def test_failed_create_leaves_nothing(self, ctx: "Ctx", tmp_path: Path) -> None:
        before = set(ctx.driver.list())
        bad = [
            dict(mounts=[MountSpec("/data", "bind", str(tmp_path / "missing"), ["rbind"])]),
            dict(capabilities=["NOT_A_CAP"]),
            dict(cwd="relative/dir"),
            dict(sysctls={"kernel.panic": "1"}),
            dict(cgroup=CgroupSpec(memory=1024 * 1024, memory_swap=1024)),
        ]
        for overrides in bad:
            cid = f"bad-{uuid.uuid4().hex[:8]}"
            bundle = tmp_path / f"bundle-{cid}"
            spec = ctx.spec(["true"], cid, **overrides)
            with pytest.raises(InvalidParameter):
                ctx.driver.create(CreateContainerRequest(cid, spec, str(bundle)))
            assert not bundle.exists(), overrides
            assert not cgroup_dirs(f"{ctx.tracker.cgroup_parent}/{cid}"), overrides
        # a failure inside the container's setup (a mount the kernel refuses) also cleans up
        cid = f"bad-{uuid.uuid4().hex[:8]}"
        bundle = tmp_path / f"bundle-{cid}"
        spec = ctx.spec(["true"], cid, mounts=[MountSpec("/x", "no-such-fs", "none", [])])
        with pytest.raises(PydError):
            ctx.driver.create(CreateContainerRequest(cid, spec, str(bundle)))
        assert not bundle.exists()
        assert not cgroup_dirs(f"{ctx.tracker.cgroup_parent}/{cid}")
        assert set(ctx.driver.list()) == before


class Ctx:
    """Builds specs with Docker's defaults and runs containers through the driver."""

    def __init__(self, driver: Any, tracker: Tracker, rootfs: Path) -> None:
        self.driver = driver
        self.tracker = tracker
        self.rootfs = rootfs

    def spec(self, args: list[str], cid: str, **overrides: Any) -> ProcessSpec:
        spec = ProcessSpec(
            args=list(args),
            env=list(ENV),
            rootfs=str(self.rootfs),
            hostname=cid[:12],
            capabilities=list(DEFAULT_CAPABILITIES),
            masked_paths=list(DEFAULT_MASKED_PATHS),
            readonly_paths=list(DEFAULT_READONLY_PATHS),
            namespaces={n: None for n in DEFAULT_NAMESPACES},
        )
        cgroup = overrides.pop("cgroup", None) or CgroupSpec()
        cgroup.path = cgroup.path or f"{self.tracker.cgroup_parent}/{cid}"
        spec.cgroup = cgroup
        if overrides.get("privileged"):
            spec.masked_paths, spec.readonly_paths = [], []
        for key, value in overrides.items():
            setattr(spec, key, value)
        return spec

    def create(self, args: list[str], stdio: StdioConfig | None = None, log_path: str = "", **overrides: Any) -> str:
        cid = f"c-{uuid.uuid4().hex[:12]}"
        bundle = str(self.tracker.base / f"bundle-{cid}")
        spec = self.spec(args, cid, **overrides)
        self.tracker.remember(cid, bundle, spec.rootfs)
        self.driver.create(CreateContainerRequest(cid, spec, bundle, stdio or StdioConfig(), log_path))
        self.tracker.note_pid(cid, self.driver.state(cid).pid)
        return cid

    def run(
        self,
        args: list[str],
        stdin: bytes | None = None,
        tty: bool = False,
        console_size: tuple[int, int] = (0, 0),
        timeout: float = 30.0,
        log_path: str = "",
        **overrides: Any,
    ) -> Result:
        stdio = StdioConfig(open_stdin=stdin is not None, stdin_once=stdin is not None, tty=tty, console_size=console_size)
        cid = self.create(args, stdio=stdio, log_path=log_path, **overrides)
        sock = self.driver.attach(cid, stdin=stdin is not None)
        if stdin is not None:
            sock.sendall(stdin)
            sock.shutdown(socket.SHUT_WR)
        try:
            self.driver.start(cid)
        except InvalidParameter:
            sock.close()
            raise
        data = read_all(sock, timeout)
        state = self.driver.wait(cid, timeout=timeout)
        out, err = (data, b"") if tty else demux(data)
        return Result(state.exit_code, out, err, state)
