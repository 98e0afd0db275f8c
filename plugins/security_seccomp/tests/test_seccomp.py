"""The seccomp plugin: profile checks, profile choice, and filters proven in real containers.

The integration tests run containers through the native exec driver (``pyd-exec-native``).
To show that *seccomp* blocks a call (not a missing capability), the blocked-call containers
hold every capability the daemon has while carrying the filter compiled for Docker's default
set; each call is made by a tiny static program (``pyd.testing.execdriver.syscall_probe``)
whose exit status is the errno it got (1 = EPERM).
"""

from __future__ import annotations

import json
import os
import platform
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

import pyd_security_seccomp as plugin
from pyd.drivers.execdriver import DEFAULT_CAPABILITIES
from pyd.errors import InvalidParameter
from pyd.types import ContainerInfo, ProcessSpec
from pyd_security_seccomp.profile import ProfileError, compile_profile, default_profile_text, parse

EPERM = 1


def info(*opts: str, privileged: bool = False, settings: dict[str, Any] | None = None) -> ContainerInfo:
    return ContainerInfo(
        id="c" * 64, name="t", security_opts=list(opts), privileged=privileged, daemon_settings=settings or {}
    )


def prepared(container: ContainerInfo, caps: list[str] | None = None) -> ProcessSpec:
    spec = ProcessSpec(args=["true"], capabilities=list(DEFAULT_CAPABILITIES if caps is None else caps))
    plugin.pyd_container_prepare(container=container, spec=spec)
    return spec


# -- profiles --------------------------------------------------------------------------------------


def test_default_profile_parses_and_compiles() -> None:
    prof = parse(default_profile_text())
    assert prof["defaultAction"] == "SCMP_ACT_ERRNO"
    listed = {n for rule in prof["syscalls"] for n in rule["names"]}
    for never in ("keyctl", "add_key", "request_key", "swapon", "swapoff", "io_uring_setup"):
        assert never not in listed
    bpf = compile_profile(default_profile_text(), DEFAULT_CAPABILITIES)
    assert len(bpf) % 8 == 0 and 100 < len(bpf) // 8 < 4096


def test_capability_rules_change_the_program() -> None:
    base = compile_profile(default_profile_text(), DEFAULT_CAPABILITIES)
    admin = compile_profile(default_profile_text(), [*DEFAULT_CAPABILITIES, "SYS_ADMIN"])
    assert base != admin


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"defaultAction": "SCMP_ACT_NOPE"}', "defaultAction"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "X"}]}', "syscalls[0]"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_Z80"]}', "SCMP_ARCH_Z80"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",'
         ' "args": [{"index": 9, "value": 0, "op": "SCMP_CMP_EQ"}]}]}', "index"),
    ],
)
def test_bad_profiles_are_named(text: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(text)


# -- hooks -----------------------------------------------------------------------------------------


def test_owns_the_seccomp_key() -> None:
    assert plugin.pyd_security_opt_keys() == ["seccomp"]


def test_validate_accepts_good_values(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(default_profile_text())
    for opt in ("seccomp=unconfined", f"seccomp={path}", "seccomp=" + default_profile_text(), "seccomp:unconfined", "label=disable"):
        plugin.pyd_container_validate(container=info(opt))


def test_validate_names_a_bad_path_or_profile(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(InvalidParameter, match=f"{missing}.*No such file"):
        plugin.pyd_container_validate(container=info(f"seccomp={missing}"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"defaultAction": ')
    with pytest.raises(InvalidParameter, match=f"{bad}.*not valid JSON"):
        plugin.pyd_container_validate(container=info(f"seccomp={bad}"))
    with pytest.raises(InvalidParameter, match="inline profile.*defaultAction"):
        plugin.pyd_container_validate(container=info('seccomp={"syscalls": []}'))
    with pytest.raises(InvalidParameter, match="seccomp"):
        plugin.pyd_container_validate(container=info("seccomp="))


def test_daemon_profile_is_checked_at_start(tmp_path: Path) -> None:
    plugin.pyd_configure(settings={})
    plugin.pyd_configure(settings={"seccomp-profile": "unconfined"})
    bad = tmp_path / "daemon.json"
    bad.write_text("nope")
    with pytest.raises(InvalidParameter, match=f"seccomp-profile.*{bad}"):
        plugin.pyd_configure(settings={"seccomp-profile": str(bad)})


def test_which_profile_a_container_gets(tmp_path: Path) -> None:
    default = compile_profile(default_profile_text(), DEFAULT_CAPABILITIES)
    assert prepared(info()).seccomp_filter == default
    assert prepared(info("seccomp=unconfined")).seccomp_filter is None
    assert prepared(info(privileged=True)).seccomp_filter is None
    assert prepared(info("seccomp=builtin")).seccomp_filter == default
    custom = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(custom))
    want = compile_profile(json.dumps(custom), DEFAULT_CAPABILITIES)
    assert prepared(info(f"seccomp={path}")).seccomp_filter == want
    assert prepared(info(settings={"seccomp-profile": str(path)})).seccomp_filter == want
    assert prepared(info(settings={"seccomp-profile": "unconfined"})).seccomp_filter is None
    # the container's own choice beats the daemon's
    assert prepared(info("seccomp=builtin", settings={"seccomp-profile": str(path)})).seccomp_filter == default


# -- in real containers ----------------------------------------------------------------------------

# (name, x86-64 number, arguments): harmless arguments, so that where the call is allowed it
# fails for another reason (EFAULT, EINVAL, ...) or does nothing lasting inside the container.
BLOCKED = [
    ("mount", 165, ()),
    ("umount2", 166, ()),
    ("unshare", 272, (0x20000,)),  # CLONE_NEWNS
    ("setns", 308, (0, 0)),
    ("keyctl", 250, (0, 0)),
    ("add_key", 248, ()),
    ("request_key", 249, ()),
    ("bpf", 321, (0, 0, 0)),
    ("perf_event_open", 298, ()),
    ("userfaultfd", 323, (0,)),
    ("reboot", 169, (0, 0, 0, 0)),  # bad magic: EINVAL even where allowed
    ("swapon", 167, ()),
    ("swapoff", 168, ()),
    ("init_module", 175, ()),
    ("delete_module", 176, ()),
    ("open_by_handle_at", 304, ()),
    ("ptrace", 101, (2, 999999)),  # PTRACE_PEEKDATA of no such pid
    ("clone-newns", 56, (0x20000 | 17,)),  # clone(CLONE_NEWNS | SIGCHLD)
    ("personality-exec", 135, (0x0400000,)),  # READ_IMPLIES_EXEC
    ("io_uring_setup", 425, (0, 0)),
]
# Blocked too, but not called where allowed: they could act on the host.
BLOCKED_ONLY = [("kexec_load", 246, (0, 0, 0, 0)), ("kexec_file_load", 320, (-1, -1, 0, 0, 0))]


@pytest.fixture(scope="module")
def exec_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if platform.machine() != "x86_64":
        pytest.skip("the syscall probes are x86-64 programs")
    from pyd.registry import Kind, PluginRegistry, installed_names

    if "native" not in installed_names(Kind.EXEC):
        pytest.skip("pyd-exec-native is not installed")
    from pyd.testing.execdriver import install_probe, make_busybox_rootfs

    rootfs = make_busybox_rootfs(tmp_path_factory.mktemp("rootfs"))
    for name, nr, args in BLOCKED + BLOCKED_ONLY:
        install_probe(rootfs, name, nr, *args)
    install_probe(rootfs, "getpid", 39)
    install_probe(rootfs, "mount32", 21, compat32=True)
    install_probe(rootfs, "getpid32", 20, compat32=True)
    driver = PluginRegistry().init_driver(Kind.EXEC, "native", home=tmp_path_factory.mktemp("home"), options={})
    yield driver, rootfs
    driver.close()


@pytest.fixture
def ctx(exec_env: Any, tmp_path: Path) -> Iterator[Any]:
    from pyd.testing.execdriver import Ctx, Tracker, cgroup_dirs

    driver, rootfs = exec_env
    parent = f"pyd-test-{uuid.uuid4().hex[:8]}"
    tracker = Tracker(driver, tmp_path, parent)
    yield Ctx(driver, tracker, rootfs)
    problems = tracker.remove_all()
    assert not problems, problems
    assert not cgroup_dirs(parent)


def all_caps() -> list[str]:
    from pyd.testing.execdriver import held_capabilities

    return held_capabilities()


def run_probe(ctx: Any, probe: str, seccomp: bytes | None, caps: list[str]) -> int:
    r = ctx.run([f"/bin/probe-{probe}"], capabilities=caps, seccomp_filter=seccomp)
    assert r.exit_code is not None, r
    return r.exit_code


@pytest.mark.integration
def test_default_profile_blocks_the_dangerous_calls(ctx: Any) -> None:
    seccomp = prepared(info()).seccomp_filter
    assert seccomp
    caps = all_caps()
    got = {name: run_probe(ctx, name, seccomp, caps) for name, _nr, _args in BLOCKED + BLOCKED_ONLY}
    assert got == {name: EPERM for name in got}
    assert run_probe(ctx, "getpid", seccomp, caps) == 0  # and ordinary calls still work
    if run_probe(ctx, "getpid32", None, caps) == 0:  # the 32-bit entry point is filtered too
        assert run_probe(ctx, "mount32", seccomp, caps) == EPERM


@pytest.mark.integration
def test_unconfined_lets_them_through(ctx: Any) -> None:
    spec = prepared(info("seccomp=unconfined"))
    assert spec.seccomp_filter is None
    caps = all_caps()
    got = {name: run_probe(ctx, name, None, caps) for name, _nr, _args in BLOCKED}
    assert all(code != EPERM for code in got.values()), got


@pytest.mark.integration
def test_capability_conditional_rules_in_a_container(ctx: Any) -> None:
    caps = [*DEFAULT_CAPABILITIES, "SYS_ADMIN"]
    seccomp = prepared(info(), caps).seccomp_filter
    assert run_probe(ctx, "mount", seccomp, caps) != EPERM  # allowed with CAP_SYS_ADMIN
    assert run_probe(ctx, "keyctl", seccomp, caps) == EPERM  # never allowed


@pytest.mark.integration
def test_ordinary_programs_run_under_the_default_profile(ctx: Any) -> None:
    seccomp = prepared(info()).seccomp_filter
    script = "echo ok; ls / > /dev/null; sleep 0.01 & wait; mkdir -p /tmp/x && rmdir /tmp/x; id -u; grep Seccomp: /proc/self/status"
    r = ctx.run(["sh", "-c", script], seccomp_filter=seccomp)
    assert r.exit_code == 0, r.err
    assert r.out.split() == ["ok", "0", "Seccomp:", "2"], r.out
    r = ctx.run(["sh", "-c", "mount -t tmpfs none /mnt"], seccomp_filter=seccomp, capabilities=all_caps())
    assert r.exit_code != 0 and "permission denied" in r.err.lower(), r.err


@pytest.mark.integration
def test_reading_the_clock_state_is_allowed_setting_it_is_not(ctx: Any) -> None:
    # glibc's adjtimex() is clock_adjtime(CLOCK_REALTIME): Docker's profile allows it and the
    # kernel itself wants CAP_SYS_TIME for any change (Docker's default set lacks it)
    seccomp = prepared(info()).seccomp_filter
    r = ctx.run(["adjtimex"], seccomp_filter=seccomp, capabilities=list(DEFAULT_CAPABILITIES))
    assert r.exit_code == 0 and "offset" in r.out, r.err
    r = ctx.run(["adjtimex", "-o", "1"], seccomp_filter=seccomp, capabilities=list(DEFAULT_CAPABILITIES))
    assert r.exit_code != 0 and "not permitted" in r.err, (r.out, r.err)
