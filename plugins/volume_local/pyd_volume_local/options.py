"""The local driver's ``-o`` options: Docker's ``type``, ``device``, ``o`` and ``size``.

``parse`` checks keys and values in one place and returns a ``MountOptions`` describing the
mount(2) call to make at first use (or none, for a plain directory volume). ``o`` is split the
way mount(8) does: flag words (``ro``, ``nosuid``, ``bind``, ``rshared``...) become mount flags,
everything else (``size=64m``, ``uid=1000``) is passed to the filesystem as data.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Mapping

from pyd.drivers.options import parse_size
from pyd.errors import InvalidOption

from pyd_volume_local.mounts import MS_BIND, MS_RDONLY, MS_REC, kernel_filesystems, kernel_may_load

VALID_KEYS = ("device", "o", "size", "type")
# moby's mandatoryOpts: a key on the left needs every key on the right.
_REQUIRES = {"type": ("device",), "device": ("type",), "o": ("device",)}

# word -> (flag, set it?); the later word wins, as with mount(8).
_FLAGS: dict[str, tuple[int, bool]] = {
    "defaults": (0, False),
    "ro": (MS_RDONLY, True), "rw": (MS_RDONLY, False),
    "nosuid": (0x2, True), "suid": (0x2, False),
    "nodev": (0x4, True), "dev": (0x4, False),
    "noexec": (0x8, True), "exec": (0x8, False),
    "sync": (0x10, True), "async": (0x10, False),
    "mand": (0x40, True), "nomand": (0x40, False),
    "dirsync": (0x80, True),
    "noatime": (0x400, True), "atime": (0x400, False),
    "nodiratime": (0x800, True), "diratime": (0x800, False),
    "silent": (0x8000, True), "loud": (0x8000, False),
    "relatime": (1 << 21, True), "norelatime": (1 << 21, False),
    "strictatime": (1 << 24, True), "nostrictatime": (1 << 24, False),
    "lazytime": (1 << 25, True), "nolazytime": (1 << 25, False),
}
_PROPAGATION = {
    "unbindable": 1 << 17, "runbindable": 1 << 17 | MS_REC,
    "private": 1 << 18, "rprivate": 1 << 18 | MS_REC,
    "slave": 1 << 19, "rslave": 1 << 19 | MS_REC,
    "shared": 1 << 20, "rshared": 1 << 20 | MS_REC,
}
_BIND = {"bind": MS_BIND, "rbind": MS_BIND | MS_REC}
# Words that mount(8) consumes itself; the kernel would reject them as filesystem data.
_USERSPACE = {"auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail", "_netdev",
              "remount", "move", "loop"}
_NETWORK = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs", "ncpfs"}
_FSTYPE = re.compile(r"[a-z0-9][a-z0-9._+-]*")
PAGE = 4096  # mount(2) takes at most one page of data


@dataclass(frozen=True)
class MountOptions:
    """What ``parse`` made of ``-o``. ``device == ""``: a plain directory, nothing to mount."""

    raw: tuple[tuple[str, str], ...] = ()
    fstype: str = ""
    device: str = ""
    flags: int = 0  # MS_* flags; for a bind mount applied by a remount after the bind
    data: str = ""  # filesystem-specific options, comma-separated
    bind: int = 0  # MS_BIND or MS_BIND|MS_REC
    propagation: int = 0

    @property
    def needs_mount(self) -> bool:
        return bool(self.device)

    def as_dict(self) -> dict[str, str]:
        return dict(self.raw)

    def describe(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.raw) or "(none)"


def _bad(key: str, value: str, why: str) -> InvalidOption:
    return InvalidOption(
        f'invalid -o for volume driver "local": {key}="{value}" {why}; '
        f"valid keys: {', '.join(VALID_KEYS)}"
    )


def parse(raw: Mapping[str, str], *, check_host: bool = True) -> MountOptions:
    """Check ``raw`` (the ``-o`` of ``volume create``) and return what to mount.

    Pure: reads /proc and stats ``device``, writes nothing. ``check_host=False`` skips the
    checks that depend on the host's current state (the kernel's filesystems, the device
    existing); used when re-reading options that were accepted at create time.
    """
    for key, value in raw.items():
        if key not in VALID_KEYS:
            raise InvalidOption(
                f'invalid -o for volume driver "local": unknown option "{key}"; '
                f"valid keys: {', '.join(VALID_KEYS)}"
            )
        if not isinstance(value, str) or "\0" in value:
            raise _bad(key, str(value), "is not a string without NUL bytes")
    for key, needed in _REQUIRES.items():
        for other in needed:
            if key in raw and other not in raw:
                hint = " (e.g. device=tmpfs)" if raw.get("type") == "tmpfs" else ""
                raise _bad(key, raw[key], f'needs option "{other}"{hint}')

    if "size" in raw:
        try:
            parse_size(raw["size"])
        except ValueError as exc:
            raise _bad("size", raw["size"], str(exc)) from None
        # moby sets an XFS project quota on the volume directory; pyd does not do quotas.
        raise _bad(
            "size",
            raw["size"],
            "needs project quotas on the volumes filesystem, which pyd's local driver does not "
            f'support; for a size-limited volume use type=tmpfs,device=tmpfs,o=size={raw["size"]}',
        )

    fstype, device = raw.get("type", ""), raw.get("device", "")
    flags, bind, propagation, data = _split_o(raw.get("o", ""))
    if not device:
        return MountOptions(raw=tuple(sorted(raw.items())))

    if not _FSTYPE.fullmatch(fstype):
        raise _bad("type", fstype, "is not a filesystem type name (e.g. tmpfs, ext4, none)")
    if fstype in _NETWORK:
        raise _bad(
            "type",
            fstype,
            "is a network filesystem, which pyd's local driver does not mount; mount it on the "
            "host and use type=none,o=bind,device=/host/path",
        )
    if bind:
        if fstype != "none":
            raise _bad("o", raw.get("o", ""), 'is a bind mount, which needs type=none')
        if data:
            raise _bad("o", raw["o"], f'has "{data}", which does not apply to a bind mount')
    elif fstype == "none":
        raise _bad("type", fstype, "needs o=bind (or rbind) and device=/host/dir")
    if len(data.encode()) >= PAGE:
        raise _bad("o", raw["o"], f"is longer than mount(2) accepts ({PAGE - 1} bytes)")

    if check_host:
        _check_host(fstype, device, bind)
    return MountOptions(
        raw=tuple(sorted(raw.items())),
        fstype=fstype,
        device=device,
        flags=flags,
        data=data,
        bind=bind,
        propagation=propagation,
    )


def _split_o(o: str) -> tuple[int, int, int, str]:
    flags = bind = propagation = 0
    data: list[str] = []
    for word in (w.strip() for w in o.split(",")):
        if not word:
            continue
        if word in _FLAGS:
            flag, on = _FLAGS[word]
            flags = flags | flag if on else flags & ~flag
        elif word in _BIND:
            bind = _BIND[word]
        elif word in _PROPAGATION:
            propagation = _PROPAGATION[word]
        elif word in _USERSPACE or word.startswith(("x-", "loop=", "comment=")):
            why = "is done by mount(8), not the kernel"
            if word.startswith("loop"):
                why += "; attach the file with losetup and use device=/dev/loopN"
            raise _bad("o", o, f'has "{word}", which {why}')
        else:
            data.append(word)
    return flags, bind, propagation, ",".join(data)


def _check_host(fstype: str, device: str, bind: int) -> None:
    if bind:
        if not os.path.isabs(device):
            raise _bad("device", device, "must be an absolute path for a bind mount")
        if not os.path.isdir(device):
            raise _bad("device", device, "must be an existing directory for a bind mount")
        return
    known = kernel_filesystems()
    if fstype not in known and not kernel_may_load(fstype):
        raise _bad("type", fstype, "is not a filesystem this kernel supports (see /proc/filesystems)")
    if not known.get(fstype, True):
        return  # tmpfs, ramfs, overlay...: device is only a name shown in mount tables
    if not os.path.isabs(device):
        raise _bad("device", device, f"must be an absolute path to a block device for type={fstype}")
    try:
        st = os.stat(device)
    except OSError as exc:
        raise _bad("device", device, f"cannot be used: {exc.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        hint = "; attach a file with losetup and use device=/dev/loopN" if stat.S_ISREG(st.st_mode) else ""
        raise _bad("device", device, f"is not a block device{hint}")
