"""Device access rules: Docker's default allow-list, parsing, and the cgroup v2 eBPF filter.

A rule is the devices-cgroup (v1) syntax: ``"<type> <major>:<minor> <access>"`` with type
``a`` (all), ``c`` or ``b``, ``*`` for any number, access a subset of ``rwm``; ``"a"`` alone
means every device. cgroup v1 takes the rules as they are (``devices.deny a`` then one
``devices.allow`` per rule); cgroup v2 has no devices files, so ``bpf_program`` compiles the
same rules to a ``BPF_PROG_TYPE_CGROUP_DEVICE`` program that the kernel runs on every open or
mknod of a device node.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

# Docker's default (moby oci/defaults.go): mknod of anything, but open only of these.
DEFAULT_RULES: tuple[str, ...] = (
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",  # null
    "c 1:5 rwm",  # zero
    "c 1:7 rwm",  # full
    "c 1:8 rwm",  # random
    "c 1:9 rwm",  # urandom
    "c 5:0 rwm",  # tty
    "c 5:1 rwm",  # console
    "c 5:2 rwm",  # ptmx
    "c 136:* rwm",  # pts
    "c 10:200 rwm",  # net/tun
)
ALLOW_ALL = "a *:* rwm"


@dataclass(frozen=True)
class Rule:
    type: str  # "a", "c", "b"
    major: int  # -1 = any
    minor: int  # -1 = any
    access: str  # subset of "rwm"

    def __str__(self) -> str:
        maj = "*" if self.major < 0 else str(self.major)
        mnr = "*" if self.minor < 0 else str(self.minor)
        return f"{self.type} {maj}:{mnr} {self.access}"


def parse_rule(text: str) -> Rule:
    """``"c 1:3 rwm"`` -> Rule; ``ValueError`` naming the rule if it is malformed."""
    parts = text.split()
    if parts == ["a"]:
        return Rule("a", -1, -1, "rwm")
    if len(parts) != 3 or parts[0] not in ("a", "b", "c") or ":" not in parts[1]:
        raise ValueError(f'device rule "{text}" is not "<a|b|c> <major>:<minor> <rwm>"')
    maj_s, _, min_s = parts[1].partition(":")
    try:
        major = -1 if maj_s == "*" else int(maj_s)
        minor = -1 if min_s == "*" else int(min_s)
    except ValueError:
        raise ValueError(f'device rule "{text}": major and minor must be numbers or *') from None
    access = parts[2]
    if not access or set(access) - set("rwm"):
        raise ValueError(f'device rule "{text}": access must be a subset of rwm')
    return Rule(parts[0], major, minor, "".join(c for c in "rwm" if c in access))


# -- cgroup v2: eBPF device program -----------------------------------------------------------

# eBPF opcodes used below
_LDXW = 0x61  # r_dst = *(u32 *)(r_src + off)
_MOV64_REG = 0xBF
_MOV64_IMM = 0xB7
_AND64_IMM = 0x57
_RSH64_IMM = 0x77
_JNE_IMM = 0x55
_EXIT = 0x95

_ACC = {"m": 1, "r": 2, "w": 4}  # BPF_DEVCG_ACC_*
_TYPE = {"b": 1, "c": 2}  # BPF_DEVCG_DEV_*


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def bpf_program(rules: list[Rule]) -> bytes:
    """An eBPF program (packed ``struct bpf_insn``) that allows exactly what ``rules`` allow.

    Context (``struct bpf_cgroup_dev_ctx``): u32 access_type (access << 16 | type), u32 major,
    u32 minor. Registers: r2 type, r3 access, r4 major, r5 minor; return 1 to allow, 0 to deny.
    """
    prologue = [
        _insn(_LDXW, 2, 1, 0),
        _insn(_MOV64_REG, 3, 2),
        _insn(_AND64_IMM, 2, imm=0xFFFF),
        _insn(_RSH64_IMM, 3, imm=16),
        _insn(_LDXW, 4, 1, 4),
        _insn(_LDXW, 5, 1, 8),
    ]
    body: list[bytes] = []
    for rule in rules:
        # Items are finished instructions or (reg, imm): "if reg != imm, go to the next rule",
        # whose jump offset is patched once the block's length is known.
        block: list[bytes | tuple[int, int]] = []
        if rule.type != "a":
            block.append((2, _TYPE[rule.type]))
        mask = sum(_ACC[c] for c in rule.access)
        if mask != 7:  # any requested access bit outside the rule's set -> not this rule
            block.append(_insn(_MOV64_REG, 6, 3))
            block.append(_insn(_AND64_IMM, 6, imm=(~mask) & 7))
            block.append((6, 0))
        if rule.major >= 0:
            block.append((4, rule.major))
        if rule.minor >= 0:
            block.append((5, rule.minor))
        block += [_insn(_MOV64_IMM, 0, imm=1), _insn(_EXIT)]
        n = len(block)
        for i, ins in enumerate(block):
            if isinstance(ins, tuple):
                reg, imm = ins
                ins = _insn(_JNE_IMM, reg, 0, n - i - 1, imm)
            body.append(ins)
    epilogue = [_insn(_MOV64_IMM, 0, imm=0), _insn(_EXIT)]
    return b"".join(prologue + body + epilogue)


BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("pad", ctypes.c_uint8 * 64),
    ]


class _AttachAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("pad", ctypes.c_uint8 * 32),
    ]


def attach_bpf_filter(cgroup_dir: str, rules: list[Rule]) -> None:
    """Load the device program for ``rules`` and attach it to the v2 cgroup ``cgroup_dir``.

    The kernel keeps the program attached for the cgroup's lifetime; the fds are closed here.
    """
    import os

    from pyd_exec_native import linux

    prog = bpf_program(rules)
    insns = ctypes.create_string_buffer(prog, len(prog))
    lic = ctypes.create_string_buffer(b"Apache-2.0")
    log = ctypes.create_string_buffer(65536)

    def load(log_level: int) -> int:
        attr = _ProgLoadAttr()
        attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE
        attr.insn_cnt = len(prog) // 8
        attr.insns = ctypes.addressof(insns)
        attr.license = ctypes.addressof(lic)
        if log_level:
            attr.log_level, attr.log_size, attr.log_buf = log_level, len(log), ctypes.addressof(log)
        attr.prog_name = b"pyd_devices"
        return linux.bpf(BPF_PROG_LOAD, attr)

    try:
        prog_fd = load(0)
    except OSError as exc:
        try:  # again with the verifier's log, to say why
            os.close(load(1))
        except OSError:
            pass
        detail = log.value.decode(errors="replace").strip()[-500:]
        raise OSError(exc.errno, f"loading the device filter for {cgroup_dir}: {exc.strerror} {detail}") from exc
    dir_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        att = _AttachAttr()
        att.target_fd = dir_fd
        att.attach_bpf_fd = prog_fd
        att.attach_type = BPF_CGROUP_DEVICE
        linux.bpf(BPF_PROG_ATTACH, att)
    finally:
        os.close(dir_fd)
        os.close(prog_fd)
