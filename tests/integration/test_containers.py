"""Containers end to end over the real socket: ``pyd`` CLI, the docker CLI and the docker SDK
against a real daemon with the native exec driver (issue 4, "Done when").

The storage driver is ``$PYD_TEST_STORAGE_DRIVER`` (tox sets overlay2, then vfs), overlay2 by
default. The last test stops the daemon and checks that nothing is left behind: no mount under
the daemon's roots, no cgroup of a container the module made, no shim process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
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
CREATED: set[str] = set()  # every container ID the module made, for the leftover check


def pyd(host: str, *args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "PYD_HOST"}
    return subprocess.run([sys.executable, "-m", "pyd.cli.main", "-H", host, *args],
                          input=stdin, capture_output=True, timeout=timeout, env=env)


def ok(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    return proc.stdout.decode()


def _skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for kind, name in ((Kind.GRAPHDRIVER, DRIVER), (Kind.EXEC, "native")):
        if name not in installed_names(kind):
            pytest.skip(f"{kind.value} driver {name} is not installed")


def _start(root: Path, **kw: Any) -> DaemonProcess:
    d = DaemonProcess(root, storage_driver=DRIVER, **kw)
    d.start()
    return d


def _import_busybox(d: DaemonProcess, root: Path) -> None:
    tar = busybox_rootfs_tar(root / "busybox.tar")
    ok(pyd(d.host, "import", str(tar), "busybox:latest"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[DaemonProcess]:
    _skip_unless_possible()
    root = tmp_path_factory.mktemp(f"containers-{DRIVER}")
    d = _start(root)
    try:
        _import_busybox(d, root)
        yield d
    finally:
        _track(d)
        d.cleanup()


def _track(d: DaemonProcess) -> None:
    try:
        for c in d.get_json("/containers/json?all=1"):
            CREATED.add(c["Id"])
    except Exception:
        pass


def run(d: DaemonProcess, *args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return pyd(d.host, "run", *args, stdin=stdin, timeout=timeout)


def detached(d: DaemonProcess, *args: str) -> str:
    cid = ok(run(d, "-d", *args)).strip()
    CREATED.add(cid)
    return cid


def inspect(d: DaemonProcess, ref: str) -> dict[str, Any]:
    return json.loads(ok(pyd(d.host, "inspect", ref)))[0]


def wait_for(cond: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- run ------------------------------------------------------------------------------------------


def test_run_rm_is_pid_1_with_its_hostname_and_leaves_nothing(daemon):
    out = ok(run(daemon, "--rm", "busybox", "sh", "-c", "echo $$; hostname; cat /proc/1/cmdline"))
    lines = out.splitlines()
    assert lines[0] == "1"
    assert re.fullmatch(r"[0-9a-f]{12}", lines[1])
    # pid 1 is the container's own command (busybox sh execs its last command itself)
    assert lines[2].split("\0")[0] in ("sh", "cat")
    # --rm is done by the daemon: the container is gone when run returns
    assert lines[1] not in ok(pyd(daemon.host, "ps", "-a", "--no-trunc"))


def test_exit_codes_propagate(daemon):
    assert run(daemon, "--rm", "busybox", "sh", "-c", "exit 3").returncode == 3
    missing = run(daemon, "--rm", "busybox", "no-such-program")
    assert missing.returncode == 127 and b"executable file not found" in missing.stderr
    assert run(daemon, "--rm", "busybox", "/etc").returncode == 126  # a directory cannot be run
    bad = run(daemon, "--rm", "--memory", "1k", "busybox", "true")
    assert bad.returncode == 125 and b"Minimum memory limit allowed is 6MB" in bad.stderr
    nosuch = run(daemon, "--rm", "no-such-image:1", "true")
    assert nosuch.returncode == 125 and b"No such image" in nosuch.stderr


def test_init_is_pid_1_forwards_signals_and_passes_the_exit_code(daemon):
    if not any(os.access(p, os.X_OK) for p in ("/usr/bin/tini-static", "/usr/bin/tini", "/usr/bin/docker-init")):
        pytest.skip("no init binary on this host: install the Debian package tini")
    # pid 1 is the init (bind-mounted read-only at /sbin/docker-init, as Docker's), the
    # command its child, and the command's exit code comes back
    proc = run(daemon, "--rm", "--init", "busybox", "sh", "-c", "tr '\\0' ' ' </proc/1/cmdline; exit 7")
    assert proc.returncode == 7, (proc.stdout, proc.stderr)
    assert proc.stdout.decode().startswith("/sbin/docker-init -- sh -c"), proc.stdout
    # a command that is not pid 1 dies of SIGTERM: stop is quick and the code is 143, where
    # `sleep` as pid 1 ignores it and is killed after the timeout (137)
    cid = detached(daemon, "--init", "busybox", "sleep", "60")
    t = time.monotonic()
    ok(pyd(daemon.host, "stop", "-t", "20", cid))
    assert time.monotonic() - t < 10
    assert json.loads(ok(pyd(daemon.host, "inspect", cid)))[0]["State"]["ExitCode"] == 143
    ok(pyd(daemon.host, "rm", cid))


def test_stdin_is_piped_into_the_container(daemon):
    out = run(daemon, "-i", "--rm", "busybox", "cat", stdin=b"hi\n")
    assert ok(out) == "hi\n"
    # stdout and stderr stay apart
    both = run(daemon, "--rm", "busybox", "sh", "-c", "echo out; echo err >&2")
    assert (both.stdout, both.stderr) == (b"out\n", b"err\n")


def test_container_cannot_see_host_processes(daemon):
    out = ok(run(daemon, "--rm", "busybox", "sh", "-c", "ls /proc | grep -c '^[0-9]'"))
    assert int(out) <= 3  # sh, ls, grep at most; the host has hundreds


# -- detached lifecycle -------------------------------------------------------------------------


def test_detached_run_logs_follow_and_stop(daemon):
    cid = detached(daemon, "--name", "ticker", "busybox", "sh", "-c",
                   "trap 'echo bye; exit 0' TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done")
    follow = subprocess.Popen([sys.executable, "-m", "pyd.cli.main", "-H", daemon.host, "logs", "-f", "ticker"],
                              stdout=subprocess.PIPE)
    try:
        time.sleep(1.0)
        stop = pyd(daemon.host, "stop", "ticker")
        assert ok(stop).strip() == "ticker"
        out, _ = follow.communicate(timeout=20)  # -f ends when the container stops
    finally:
        follow.kill()
    lines = out.decode().splitlines()
    assert lines[0] == "tick 0" and lines[-1] == "bye" and len(lines) >= 4
    info = inspect(daemon, cid)
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 0
    # a second stop is a no-op for the CLI (304 from the daemon)
    assert pyd(daemon.host, "stop", "ticker").returncode == 0
    status, _, _ = daemon.request("POST", f"/containers/{cid}/stop")
    assert status == 304
    ok(pyd(daemon.host, "rm", "ticker"))


def test_ps_and_inspect_shapes(daemon):
    cid = detached(daemon, "--name", "shape", "-l", "team=pyd", "busybox", "sleep", "300")
    table = ok(pyd(daemon.host, "ps", "--filter", "label=team=pyd"))
    header, row = table.splitlines()[:2]
    assert re.split(r"\s{2,}", header.strip()) == ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    assert row.startswith(cid[:12]) and '"sleep 300"' in row and "Up " in row and row.endswith("shape")
    assert ok(pyd(daemon.host, "ps", "-q", "--filter", "name=shap")).strip() == cid[:12]
    info = inspect(daemon, "shape")
    for key in ("Id", "Created", "Path", "Args", "State", "Image", "Name", "HostConfig", "Config", "Mounts",
                "NetworkSettings", "GraphDriver", "LogPath", "RestartCount"):
        assert key in info
    assert info["Name"] == "/shape" and info["Config"]["Hostname"] == cid[:12]
    assert info["State"]["Running"] and info["State"]["Pid"] > 0
    assert info["HostConfig"]["LogConfig"]["Type"] == "json-file" and info["HostConfig"]["ShmSize"] == 67108864
    # both filter encodings (CLI map of bools, docker-py lists)
    for flt in ('{"label":{"team=pyd":true}}', '{"label":["team=pyd"]}'):
        rows = daemon.get_json("/containers/json?filters=" + flt.replace('"', "%22"))
        assert [r["Id"] for r in rows] == [cid]
    # Docker's errors
    dup = run(daemon, "--name", "shape", "busybox", "true")
    assert dup.returncode == 125 and b'The container name "/shape" is already in use' in dup.stderr
    busy = pyd(daemon.host, "rm", "shape")
    assert busy.returncode == 1 and b"You cannot remove a running container" in busy.stderr
    ok(pyd(daemon.host, "rename", "shape", "shape2"))
    ok(pyd(daemon.host, "pause", "shape2"))
    assert inspect(daemon, cid)["State"]["Status"] == "paused"
    ok(pyd(daemon.host, "unpause", "shape2"))
    ok(pyd(daemon.host, "rm", "-f", "shape2"))
    assert cid not in ok(pyd(daemon.host, "ps", "-aq", "--no-trunc"))


def test_exec_exit_codes_user_and_stdin(daemon):
    cid = detached(daemon, "busybox", "sleep", "300")
    assert ok(pyd(daemon.host, "exec", cid, "echo", "hi")) == "hi\n"
    assert pyd(daemon.host, "exec", cid, "sh", "-c", "exit 7").returncode == 7
    assert pyd(daemon.host, "exec", cid, "nope").returncode == 127
    out = ok(pyd(daemon.host, "exec", "-u", "1000", "-w", "/tmp", "-e", "X=1", cid, "sh", "-c", "id -u; pwd; echo $X"))
    assert out.split() == ["1000", "/tmp", "1"]
    assert ok(pyd(daemon.host, "exec", "-i", cid, "cat", stdin=b"abc\n")) == "abc\n"
    ok(pyd(daemon.host, "rm", "-f", cid))


def test_restart_policy_on_failure(daemon):
    cid = detached(daemon, "--restart", "on-failure:2", "busybox", "sh", "-c", "echo run; exit 1")
    wait_for(lambda: inspect(daemon, cid)["RestartCount"] == 2 and inspect(daemon, cid)["State"]["Status"] == "exited",
             timeout=20, what="two restarts")
    assert ok(pyd(daemon.host, "logs", cid)).count("run") == 3
    ok(pyd(daemon.host, "rm", cid))


# -- security through `pyd run` (the checks themselves are proven at driver level) --------------


def test_default_container_cannot_mount_but_privileged_can(daemon):
    denied = run(daemon, "--rm", "busybox", "mount", "-t", "tmpfs", "none", "/tmp")
    assert denied.returncode != 0 and b"denied" in denied.stderr or b"not permitted" in denied.stderr
    ok(run(daemon, "--rm", "--privileged", "busybox", "mount", "-t", "tmpfs", "none", "/tmp"))


def test_read_only_rootfs_and_unprivileged_user(daemon):
    ro = run(daemon, "--rm", "--read-only", "busybox", "touch", "/newfile")
    assert ro.returncode != 0 and b"Read-only file system" in ro.stderr
    ok(run(daemon, "--rm", "--read-only", "--tmpfs", "/scratch", "busybox", "touch", "/scratch/ok"))
    user = run(daemon, "--rm", "--user", "1000", "busybox", "sh", "-c", "id -u; echo x >> /etc/passwd")
    assert user.stdout == b"1000\n" and user.returncode != 0 and b"Permission denied" in user.stderr


def test_memory_limit_oom_kills(daemon):
    cid = detached(daemon, "--memory", "32m", "--memory-swap", "32m", "busybox", "sh", "-c",
                   "dd if=/dev/zero of=/dev/null bs=128M count=1")
    wait_for(lambda: not inspect(daemon, cid)["State"]["Running"], timeout=30, what="the OOM kill")
    state = inspect(daemon, cid)["State"]
    assert state["OOMKilled"] is True and state["ExitCode"] == 137
    ok(pyd(daemon.host, "rm", cid))


def test_pids_limit_contains_a_fork_bomb(daemon):
    cid = detached(daemon, "--pids-limit", "20", "busybox", "sleep", "300")
    bomb = pyd(daemon.host, "exec", cid, "sh", "-c", "for i in $(seq 100); do sleep 30 & done")
    assert bomb.returncode != 0 and b"can't fork" in bomb.stderr
    stats = daemon.get_json(f"/containers/{cid}/stats?stream=0")["pids_stats"]
    assert stats["limit"] == 20 and 10 <= stats["current"] <= 20
    ok(pyd(daemon.host, "rm", "-f", cid))


# -- docker SDK and docker CLI ------------------------------------------------------------------------


def test_docker_sdk(daemon):
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=daemon.host, timeout=60)
    try:
        assert client.containers.run("busybox", ["sh", "-c", "echo hi"], remove=True, network_mode="none") == b"hi\n"
        c = client.containers.run("busybox", ["sh", "-c", "echo one; echo two >&2; exit 3"], detach=True)
        CREATED.add(c.id)
        assert c.wait() == {"Error": None, "StatusCode": 3}
        assert c.logs() == b"one\ntwo\n" and c.logs(stderr=False) == b"one\n"
        c.remove()
        svc = client.containers.run("busybox", ["sleep", "300"], detach=True, labels={"t": "sdk"})
        CREATED.add(svc.id)
        assert svc.exec_run(["echo", "hi"]) == (0, b"hi\n")
        assert svc.exec_run(["sh", "-c", "exit 7"]).exit_code == 7
        assert [x.id for x in client.containers.list(filters={"label": "t=sdk"})] == [svc.id]
        svc.kill()
        assert svc.wait()["StatusCode"] == 137
        svc.remove()
    finally:
        client.close()


def test_docker_cli(daemon):
    if not os.path.exists(DOCKER):
        pytest.skip("the docker CLI is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}

    def docker(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([DOCKER, "-H", daemon.host, *args], input=stdin, capture_output=True, timeout=60, env=env)

    out = docker("run", "--rm", "--network", "none", "busybox", "sh", "-c", "echo from docker; exit 4")
    assert (out.returncode, out.stdout) == (4, b"from docker\n")
    assert docker("run", "-i", "--rm", "busybox", "cat", stdin=b"piped\n").stdout == b"piped\n"
    cid = docker("run", "-d", "busybox", "sleep", "300").stdout.decode().strip()
    CREATED.add(cid)
    ex = docker("exec", cid, "sh", "-c", "echo in exec; exit 5")
    assert (ex.returncode, ex.stdout) == (5, b"in exec\n")
    assert docker("inspect", "--format", "{{.State.Status}}", cid).stdout == b"running\n"
    assert docker("rm", "-f", cid).returncode == 0


def test_cp_in_and_out_never_leaves_the_rootfs(daemon, tmp_path):
    if not os.path.exists(DOCKER):
        pytest.skip("the docker CLI is not installed")
    cid = detached(daemon, "busybox", "sh", "-c", "ln -s / /escape; sleep 300")
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    subprocess.run([DOCKER, "-H", daemon.host, "cp", str(src), f"{cid}:/tmp/in.txt"], check=True, timeout=30)
    assert ok(pyd(daemon.host, "exec", cid, "cat", "/tmp/in.txt")) == "hello\n"
    out = tmp_path / "out"
    subprocess.run([DOCKER, "-H", daemon.host, "cp", f"{cid}:/escape/etc/passwd", str(out)], check=True, timeout=30)
    # /escape -> / is resolved inside the container: its passwd, not the host's
    assert out.read_text() == ok(pyd(daemon.host, "exec", cid, "cat", "/etc/passwd"))
    ok(pyd(daemon.host, "rm", "-f", cid))


# -- live-restore after kill -9 ----------------------------------------------------------------------


def test_kill_9_of_the_daemon_keeps_containers_running(tmp_path):
    _skip_unless_possible()
    d = _start(tmp_path / "d")
    try:
        _import_busybox(d, tmp_path)
        a = detached(d, "--name", "keep-a", "busybox", "sh", "-c", "i=0; while true; do echo a $i; i=$((i+1)); sleep 0.1; done")
        b = detached(d, "--name", "keep-b", "busybox", "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")
        pids = {c: inspect(d, c)["State"]["Pid"] for c in (a, b)}
        time.sleep(0.5)
        d.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        d.proc.wait(10)  # type: ignore[union-attr]
        time.sleep(0.5)  # output written while no daemon runs
        for pid in pids.values():
            os.kill(pid, 0)  # still running
        d.start()
        rows = {r["Id"]: r for r in d.get_json("/containers/json")}
        assert set(rows) == {a, b} and all(r["State"] == "running" for r in rows.values())
        assert {c: inspect(d, c)["State"]["Pid"] for c in (a, b)} == pids
        lines = ok(pyd(d.host, "logs", "keep-a")).splitlines()
        numbers = [int(x.split()[1]) for x in lines]
        assert numbers == list(range(len(numbers)))  # nothing lost or repeated across the restart
        wait_for(lambda: len(ok(pyd(d.host, "logs", "keep-a")).splitlines()) > len(lines) + 3, what="logs to continue")
        ok(pyd(d.host, "stop", "keep-b"))
        assert inspect(d, b)["State"]["ExitCode"] == 0
        ok(pyd(d.host, "rm", "-f", "keep-a", "keep-b"))
    finally:
        _track(d)
        d.cleanup()


# -- last: nothing left behind ---------------------------------------------------------------------------


def test_zz_nothing_left_behind(daemon):
    """Stop the module's daemon (which stops its containers) and look for leftovers."""
    _track(daemon)
    detached(daemon, "busybox", "sleep", "300")  # a running container at shutdown, too
    roots = [str(daemon.data_root), str(daemon.exec_root)]
    exec_root = str(daemon.exec_root)
    daemon.stop()
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if any(r in line for r in roots)]
    assert mounts == []
    cgroups = [p for p in Path("/sys/fs/cgroup").glob("*/pyd/*") if p.name in CREATED]
    cgroups += [p for p in Path("/sys/fs/cgroup").glob("pyd/*") if p.name in CREATED]
    assert cgroups == []
    shims = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd").startswith(exec_root):
                    shims.append(entry.name)
            except OSError:
                continue
    assert shims == []
