"""pyd's overlay2 storage driver (entry point ``overlay2`` in ``pyd.graphdriver``).

This module holds the hook implementation, the option parsers and the host checks; the driver
itself is in ``driver.py``, the system calls in ``mounts.py``, whiteout conversion in
``whiteouts.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping

from pyd.errors import NotSupported
from pyd.hookspecs import hookimpl

from .driver import OverlayDriver
from .mounts import FS_NAMES, MNT_DETACH, Syscalls
from .options import NAME, parse_layer_options, parse_options

__all__ = ["pyd_graphdriver_init", "parse_options", "parse_layer_options"]

# Extra mount options tried in order; the first that mounts is used. redirect_dir and metacopy
# off keep the diff dir a complete record of the layer, so the native diff is exact.
_MOUNT_OPTS = ("index=off,redirect_dir=off,metacopy=off", "index=off", "")


def _overlay_available() -> bool:
    with open("/proc/filesystems", encoding="ascii") as f:
        return any(line.split()[-1:] == ["overlay"] for line in f)


def _probe(home: Path, sys: Syscalls, fs: str) -> str:
    """Check that overlayfs works with ``home`` as upper dir; return the extra mount options."""
    if not _overlay_available():
        res = subprocess.run(["modprobe", "overlay"], capture_output=True, text=True)
        if not _overlay_available():
            raise NotSupported(
                'storage driver "overlay2" is not usable: overlayfs is not in /proc/filesystems and '
                f"modprobe overlay failed ({(res.stderr or res.stdout).strip() or res.returncode}); "
                "use --storage-driver vfs"
            )
    if set(str(home)) & {":", ","}:
        raise NotSupported(f'storage driver "overlay2" cannot use {home}: its path contains ":" or ","')
    probe = tempfile.mkdtemp(prefix=".probe-", dir=home)
    try:
        if not sys.supports_d_type(probe):
            raise NotSupported(
                f'storage driver "overlay2" is not usable: the backing filesystem ({fs}) of {home} '
                "does not report d_type (xfs needs ftype=1); use --storage-driver vfs"
            )
        for d in ("l1", "l2", "upper", "work", "merged"):
            os.mkdir(os.path.join(probe, d))
        Path(probe, "l2", "f").write_bytes(b"")
        errors = []
        for extra in _MOUNT_OPTS:
            data = f"lowerdir={probe}/l1:{probe}/l2,upperdir={probe}/upper,workdir={probe}/work"
            try:
                sys.mount("overlay", f"{probe}/merged", "overlay", 0, data + ("," + extra if extra else ""))
            except OSError as exc:
                errors.append(exc)
                continue
            try:
                os.unlink(f"{probe}/merged/f")  # makes a whiteout in the upper dir
            finally:
                sys.umount(f"{probe}/merged", MNT_DETACH)
            return extra
        raise NotSupported(
            f'storage driver "overlay2" is not usable: overlayfs cannot use {home} (on {fs}) as upper '
            f"directory ({errors[-1].strerror if errors else 'unknown error'}); this happens e.g. when "
            "it is itself on overlayfs; use --storage-driver vfs or another data-root"
        )
    finally:
        shutil.rmtree(probe, ignore_errors=True)


@hookimpl
def pyd_graphdriver_init(name: str, home: Path, options: Mapping[str, str]) -> OverlayDriver | None:
    if name != NAME:
        return None
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    sys = Syscalls()
    magic = sys.fs_type(str(home))
    fs = FS_NAMES.get(magic, hex(magic))
    parse_options(options, fs)  # before the host checks: a typo is reported even where overlay is unusable
    extra = _probe(home, sys, fs)
    native = "redirect_dir=off" in extra or not (_module_param_on("redirect_dir") or _module_param_on("metacopy"))
    return OverlayDriver(home, sys, backing_fs=fs, mount_opts=extra, native_diff=native)


def _module_param_on(param: str) -> bool:
    try:
        with open(f"/sys/module/overlay/parameters/{param}", encoding="ascii") as f:
            return f.read().strip() in ("Y", "y", "1", "on")
    except OSError:
        return False
