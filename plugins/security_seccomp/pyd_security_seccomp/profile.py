"""Seccomp profiles in Docker's JSON format: parse, check, and compile to a BPF program.

A profile is ``{"defaultAction", "defaultErrnoRet", "archMap" (or "architectures"),
"syscalls": [{"names", "action", "errnoRet", "args", "includes", "excludes"}]}``.
``includes``/``excludes`` select a rule by the container's capabilities (``caps``: all of them
for includes, any of them for excludes), the machine (``arches``, Go's names: amd64, arm64,
...) and ``minKernel``, as Docker does. Compilation goes through libseccomp (``pyseccomp``),
which is imported only when a profile is compiled; the result is the classic BPF program the
exec driver installs (``ProcessSpec.seccomp_filter``).
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable

ACTIONS = (
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
)
OPS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ")
ARCHES = {
    "SCMP_ARCH_X86": "X86",
    "SCMP_ARCH_X86_64": "X86_64",
    "SCMP_ARCH_X32": "X32",
    "SCMP_ARCH_ARM": "ARM",
    "SCMP_ARCH_AARCH64": "AARCH64",
    "SCMP_ARCH_MIPS": "MIPS",
    "SCMP_ARCH_MIPS64": "MIPS64",
    "SCMP_ARCH_MIPS64N32": "MIPS64N32",
    "SCMP_ARCH_MIPSEL": "MIPSEL",
    "SCMP_ARCH_MIPSEL64": "MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32": "MIPSEL64N32",
    "SCMP_ARCH_PPC": "PPC",
    "SCMP_ARCH_PPC64": "PPC64",
    "SCMP_ARCH_PPC64LE": "PPC64LE",
    "SCMP_ARCH_S390": "S390",
    "SCMP_ARCH_S390X": "S390X",
    "SCMP_ARCH_RISCV64": "RISCV64",
}
# platform.machine() -> (libseccomp arch name, Go arch name used in includes/excludes.arches)
_MACHINES = {
    "x86_64": ("SCMP_ARCH_X86_64", "amd64"),
    "aarch64": ("SCMP_ARCH_AARCH64", "arm64"),
    "armv7l": ("SCMP_ARCH_ARM", "arm"),
    "ppc64le": ("SCMP_ARCH_PPC64LE", "ppc64le"),
    "s390x": ("SCMP_ARCH_S390X", "s390x"),
    "riscv64": ("SCMP_ARCH_RISCV64", "riscv64"),
}


class ProfileError(ValueError):
    """The profile is not valid JSON or not a valid seccomp profile; the text says where."""


def default_profile_text() -> str:
    return resources.files(__package__).joinpath("default.json").read_text()


def read_profile_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ProfileError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ProfileError(f"{path} is not UTF-8 text") from None


def _kernel_version() -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _version(text: str) -> tuple[int, ...]:
    m = re.match(r"^(\d+)\.(\d+)", text)
    if not m:
        raise ProfileError(f'minKernel "{text}" is not a kernel version like 4.8')
    return (int(m.group(1)), int(m.group(2)))


def parse(text: str) -> dict[str, Any]:
    """Parse and check a profile; ``ProfileError`` names the first problem."""
    try:
        prof = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(prof, dict):
        raise ProfileError("a profile must be a JSON object")
    if prof.get("defaultAction") not in ACTIONS:
        raise ProfileError(f'defaultAction {prof.get("defaultAction")!r} is not one of {", ".join(ACTIONS)}')
    if prof.get("listenerPath"):
        raise ProfileError("listenerPath (SCMP_ACT_NOTIFY) is not supported")
    for a in prof.get("architectures") or []:
        if a not in ARCHES:
            raise ProfileError(f"unknown architecture {a!r}")
    for entry in prof.get("archMap") or []:
        for a in [entry.get("architecture"), *(entry.get("subArchitectures") or [])]:
            if a not in ARCHES:
                raise ProfileError(f"unknown architecture {a!r} in archMap")
    rules = prof.get("syscalls") or []
    if not isinstance(rules, list):
        raise ProfileError('"syscalls" must be a list')
    for i, rule in enumerate(rules):
        where = f"syscalls[{i}]"
        if not isinstance(rule, dict):
            raise ProfileError(f"{where} must be an object")
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not names or not all(isinstance(n, str) for n in names):
            raise ProfileError(f"{where} has no system call names")
        if rule.get("action") not in ACTIONS:
            raise ProfileError(f'{where}: action {rule.get("action")!r} is not one of {", ".join(ACTIONS)}')
        for arg in rule.get("args") or []:
            if arg.get("op") not in OPS:
                raise ProfileError(f'{where}: argument operator {arg.get("op")!r} is not one of {", ".join(OPS)}')
            if not 0 <= int(arg.get("index", -1)) <= 5:
                raise ProfileError(f"{where}: argument index must be 0..5")
        for key in ("includes", "excludes"):
            cond = rule.get(key) or {}
            if cond.get("minKernel"):
                _version(cond["minKernel"])
    return prof


def _caps(names: Iterable[str]) -> frozenset[str]:
    return frozenset(n.upper() if n.upper().startswith("CAP_") else "CAP_" + n.upper() for n in names)


def _applies(rule: dict[str, Any], caps: frozenset[str], go_arch: str, kernel: tuple[int, ...]) -> bool:
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("caps") and not all(c.upper() in caps for c in inc["caps"]):
        return False
    if inc.get("arches") and go_arch not in inc["arches"]:
        return False
    if inc.get("minKernel") and kernel < _version(inc["minKernel"]):
        return False
    if exc.get("caps") and any(c.upper() in caps for c in exc["caps"]):
        return False
    if exc.get("arches") and go_arch in exc["arches"]:
        return False
    if exc.get("minKernel") and kernel >= _version(exc["minKernel"]):
        return False
    return True


def _action(seccomp: Any, name: str, errno_ret: int | None, default_errno: int) -> int:
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return int(seccomp.KILL_THREAD)
    if name == "SCMP_ACT_KILL_PROCESS":
        return int(seccomp.KILL_PROCESS)
    if name == "SCMP_ACT_TRAP":
        return int(seccomp.TRAP)
    if name == "SCMP_ACT_ERRNO":
        return int(seccomp.ERRNO(errno_ret if errno_ret is not None else default_errno))
    if name == "SCMP_ACT_TRACE":
        return int(seccomp.TRACE(errno_ret or 0))
    if name == "SCMP_ACT_LOG":
        return int(seccomp.LOG)
    return int(seccomp.ALLOW)


def compile_profile(text: str, capabilities: Iterable[str]) -> bytes:
    """The BPF program (packed ``struct sock_filter``) for profile ``text`` and a container
    holding ``capabilities`` (names, with or without ``CAP_``). ``ProfileError`` if invalid."""
    return _compile(text, _caps(capabilities), platform.machine())


@lru_cache(maxsize=32)
def _compile(text: str, caps: frozenset[str], machine: str) -> bytes:
    # A memo of a pure function (same inputs, same program): compiling the default profile
    # takes milliseconds that every container start would otherwise pay again.
    prof = parse(text)
    import pyseccomp as seccomp  # libseccomp through ctypes: ~50 ms to import, so only here

    native, go_arch = _MACHINES.get(machine, ("", machine))
    kernel = _kernel_version()
    default_errno = int(prof.get("defaultErrnoRet") or errno.EPERM)
    filt = seccomp.SyscallFilter(_action(seccomp, prof["defaultAction"], None, default_errno))
    arches: list[str] = list(prof.get("architectures") or [])
    for entry in prof.get("archMap") or []:
        if entry.get("architecture") == native:
            arches += [entry["architecture"], *(entry.get("subArchitectures") or [])]
    for a in dict.fromkeys(arches):
        arch = getattr(seccomp.Arch, ARCHES[a])
        if a != native and not filt.exist_arch(arch):
            try:
                filt.add_arch(arch)
            except OSError as exc:
                raise ProfileError(f"libseccomp cannot add architecture {a}: {exc}") from None
    ops = {name: getattr(seccomp, name.removeprefix("SCMP_CMP_")) for name in OPS}
    for rule in prof.get("syscalls") or []:
        if not _applies(rule, caps, go_arch, kernel):
            continue
        action = _action(seccomp, rule["action"], rule.get("errnoRet"), default_errno)
        if action == filt.get_attr(seccomp.Attr.ACT_DEFAULT):
            continue  # libseccomp refuses a rule that repeats the default
        args = [
            seccomp.Arg(int(a["index"]), ops[a["op"]], int(a.get("value", 0)), int(a.get("valueTwo", 0)))
            for a in rule.get("args") or []
        ]
        for name in rule.get("names") or [rule.get("name")]:
            nr = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
            if nr == -1 or nr is None:  # not a system call on this machine or libseccomp
                continue
            try:
                filt.add_rule(action, nr, *args)
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    continue
                raise ProfileError(f"libseccomp refused the rule for {name}: {exc}") from None
    fd = os.memfd_create("pyd-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            filt.export_bpf(out)
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)
