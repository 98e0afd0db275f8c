"""The ``local`` volume driver: named volumes as directories under the driver's home.

Layout (Docker's, plus two small JSON files beside ``_data``)::

    <home>/<NAME>/_data        the volume's data: what containers see (a mount point when
                               the volume has type/device options)
    <home>/<NAME>/volume.json  name, created_at, labels, options (written once, atomically)
    <home>/<NAME>/refs.json    who holds it mounted, with the boot id they were taken in

A volume appears and disappears in one ``rename(2)``: it is assembled in ``<home>/.tmp-*``
and renamed to ``<home>/<NAME>``; removal renames it to ``<home>/.rm-*`` before deleting.
Leftovers of a crash are cleaned when the next driver starts.

Refs are persisted so that a daemon restart with running containers keeps the mounts and the
counts (``VolumeRefs``); refs taken in an earlier boot are void (no container outlives a
reboot). A new driver also undoes mounts that no ref holds (a crash between the last
``unmount``'s bookkeeping and the umount).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from pyd.drivers.mounts import mounts_under
from pyd.drivers.volume import VolumeCapabilities, VolumeInfo
from pyd.errors import Conflict, InvalidOption, InvalidParameter, NotFound, PydError

from pyd_volume_local import options as opts_mod
from pyd_volume_local.mounts import MS_BIND, MS_REMOUNT, Syscalls, is_mounted
from pyd_volume_local.options import MountOptions

log = logging.getLogger(__name__)

DATA, META, REFS = "_data", "volume.json", "refs.json"
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_SCRATCH = (".tmp-", ".rm-", ".probe-")  # not valid volume names, so never a volume
_TRIAL_TYPES = {"tmpfs", "ramfs"}  # mounted once at create to let the kernel check `o`


def check_name(name: object) -> str:
    if not isinstance(name, str) or len(name) > 255 or not _NAME.fullmatch(name):
        raise InvalidParameter(
            f'"{name}" includes invalid characters for a local volume name, only '
            '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host '
            "directory, use absolute path"
        )
    return name


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    """Replace ``path`` atomically and durably (temp file, fsync, rename, fsync dir)."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, separators=(",", ":"), sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _ignore_missing():
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class _ignore_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> bool:
        return typ is not None and issubclass(typ, FileNotFoundError)


class LocalVolumeDriver:
    name = "local"

    def __init__(self, home: Path, syscalls: Syscalls | None = None) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True, mode=0o701)
        self._sys = syscalls or Syscalls()
        self._boot = _boot_id()
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._recover()

    # -- VolumeDriver ---------------------------------------------------------------------

    def parse_options(self, raw: Mapping[str, str]) -> Mapping[str, str]:
        return self._parse(raw).as_dict()

    def create(self, name: str, options: Mapping[str, str], labels: Mapping[str, str]) -> VolumeInfo:
        check_name(name)
        opts = self._parse(dict(options or {}))
        labels = dict(labels or {})
        for k, v in labels.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise InvalidParameter(f'volume "{name}": label {k!r}={v!r} must be a string pair')
        with self._lock(name):
            meta = self._read_meta(name)
            if meta is not None:
                if meta["options"] != opts.as_dict():
                    have = MountOptions(raw=tuple(sorted(meta["options"].items()))).describe()
                    raise Conflict(
                        f'volume "{name}" already exists with different options '
                        f"(has {have}, requested {opts.describe()}); remove it first or use another name"
                    )
                return self._info(name, meta)
            if os.path.lexists(self.home / name):
                raise Conflict(f'volume "{name}": {self.home / name} exists but is not a volume of this driver')
            meta = {
                "name": name,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "labels": labels,
                "options": opts.as_dict(),
            }
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.home))
            try:
                os.chmod(tmp, 0o755)
                (tmp / DATA).mkdir(mode=0o755)
                _write_json(tmp / META, meta)
                os.rename(tmp, self.home / name)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _fsync_dir(self.home)
            log.info("created volume %s", name, extra={"driver": self.name})
            return self._info(name, meta)

    def remove(self, name: str) -> None:
        check_name(name)
        with self._lock(name):
            self._need_meta("remove", name)
            refs = self._read_refs(name)
            if refs:
                raise Conflict(f"remove {name}: volume is in use - [{', '.join(sorted(refs))}]")
            mounted = mounts_under(str(self.home / name))
            if mounted:
                raise Conflict(f"remove {name}: volume is in use - mounted at {mounted[0]}")
            trash = Path(tempfile.mkdtemp(prefix=".rm-", dir=self.home))
            os.rename(self.home / name, trash / name)  # gone in one step, then deleted
            _fsync_dir(self.home)
            shutil.rmtree(trash)
            log.info("removed volume %s", name, extra={"driver": self.name})

    def get(self, name: str) -> VolumeInfo:
        check_name(name)
        return self._info(name, self._need_meta("get", name))

    def list(self) -> list[VolumeInfo]:
        out = []
        for entry in sorted(os.scandir(self.home), key=lambda e: e.name):
            if not _NAME.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                meta = self._read_meta(entry.name)
            except PydError as exc:
                log.warning("%s", exc, extra={"driver": self.name})
                continue
            if meta is not None:  # a directory without volume.json is not ours
                out.append(self._info(entry.name, meta))
        return out

    def path(self, name: str) -> str:
        check_name(name)
        self._need_meta("path", name)
        return str(self.home / name / DATA)

    def mount(self, name: str, ref: str) -> str:
        check_name(name)
        self._check_ref(ref)
        with self._lock(name):
            meta = self._need_meta("mount", name)
            opts = opts_mod.parse(meta["options"], check_host=False)
            target = self.home / name / DATA
            refs = self._read_refs(name)
            if ref in refs and (not opts.needs_mount or is_mounted(str(target))):
                return str(target)
            # Record the ref before mounting: a crash in between leaves a ref the core's
            # restore releases, never a mount that nothing accounts for.
            self._write_refs(name, refs | {ref})
            if opts.needs_mount and not is_mounted(str(target)):
                try:
                    self._mount(opts, str(target))
                except OSError as exc:
                    self._write_refs(name, refs - {ref})
                    raise PydError(
                        f'error while mounting volume "{name}": failed to mount local volume: '
                        f"{opts.describe()}: {exc.strerror or exc}"
                    ) from exc
                log.info("mounted volume %s", name, extra={"driver": self.name})
            return str(target)

    def unmount(self, name: str, ref: str) -> None:
        check_name(name)
        self._check_ref(ref)
        with self._lock(name):
            meta = self._need_meta("unmount", name)
            refs = self._read_refs(name)
            if ref not in refs:
                return
            refs = refs - {ref}
            self._write_refs(name, refs)
            if not refs and meta["options"].get("device"):
                self._umount(name)

    # -- optional abilities ---------------------------------------------------------------

    def capabilities(self) -> VolumeCapabilities:
        return VolumeCapabilities(scope="local")

    def refs(self, name: str) -> frozenset[str]:
        check_name(name)
        with self._lock(name):
            self._need_meta("refs", name)
            return frozenset(self._read_refs(name))

    # -- internals ------------------------------------------------------------------------

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    @staticmethod
    def _check_ref(ref: object) -> None:
        if not isinstance(ref, str) or not ref:
            raise InvalidParameter(f"volume ref must be a non-empty string (a container ID), not {ref!r}")

    def _parse(self, raw: Mapping[str, str]) -> MountOptions:
        opts = opts_mod.parse(raw)
        if opts.fstype in _TRIAL_TYPES and os.geteuid() == 0:
            self._trial_mount(opts)
        return opts

    def _info(self, name: str, meta: Mapping[str, Any]) -> VolumeInfo:
        return VolumeInfo(
            name=name,
            mountpoint=str(self.home / name / DATA),
            created_at=meta["created_at"],
            options=dict(meta["options"]),
            labels=dict(meta["labels"]),
            scope="local",
        )

    def _read_meta(self, name: str) -> dict[str, Any] | None:
        path = self.home / name / META
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise PydError(f'volume "{name}": cannot read {path}: {exc}') from exc
        if not isinstance(meta, dict) or not {"created_at", "labels", "options"} <= meta.keys():
            raise PydError(f'volume "{name}": {path} is not a volume record of the local driver')
        return meta

    def _need_meta(self, verb: str, name: str) -> dict[str, Any]:
        meta = self._read_meta(name)
        if meta is None:
            raise NotFound(f"{verb} {name}: no such volume")
        return meta

    def _read_refs(self, name: str) -> set[str]:
        try:
            with open(self.home / name / REFS, encoding="utf-8") as f:
                rec = json.load(f)
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            raise PydError(f'volume "{name}": cannot read {self.home / name / REFS}: {exc}') from exc
        if rec.get("boot_id") != self._boot:
            return set()  # taken before a reboot: nobody holds them any more
        return set(rec.get("refs", []))

    def _write_refs(self, name: str, refs: set[str]) -> None:
        _write_json(self.home / name / REFS, {"boot_id": self._boot, "refs": sorted(refs)})

    def _mount(self, opts: MountOptions, target: str) -> None:
        if opts.bind:
            self._sys.mount(opts.device, target, "", opts.bind)
        else:
            self._sys.mount(opts.device, target, opts.fstype, opts.flags, opts.data)
        try:
            if opts.bind and opts.flags:  # a bind takes its flags only in a remount
                self._sys.mount("", target, "", MS_REMOUNT | MS_BIND | opts.flags)
            if opts.propagation:
                self._sys.mount("", target, "", opts.propagation)
        except OSError:
            self._sys.umount(target)
            raise

    def _umount(self, name: str) -> None:
        target = str(self.home / name / DATA)
        while is_mounted(target):  # a bind of a bind may stack; take them all
            try:
                self._sys.umount(target)
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # raced with another unmount: not mounted now
                    break
                raise PydError(f'error while unmounting volume "{name}": {exc.strerror}') from exc
        log.info("unmounted volume %s", name, extra={"driver": self.name})

    def _trial_mount(self, opts: MountOptions) -> None:
        """Mount once on a scratch directory (removed again) so the kernel judges ``o`` now,
        not when the first container starts."""
        probe = Path(tempfile.mkdtemp(prefix=".probe-", dir=self.home))
        try:
            try:
                self._mount(opts, str(probe))
            except OSError as exc:
                raise InvalidOption(
                    f'invalid -o for volume driver "local": o="{opts.as_dict().get("o", "")}" '
                    f"was refused by the kernel for type={opts.fstype}: {exc.strerror}; "
                    f"valid keys: {', '.join(opts_mod.VALID_KEYS)}"
                ) from None
            self._sys.umount(str(probe))
        finally:
            with _ignore_missing():
                probe.rmdir()

    def _recover(self) -> None:
        """Finish what a crash interrupted: scratch directories, stale refs, orphan mounts."""
        for entry in os.scandir(self.home):
            if entry.name.startswith(_SCRATCH) and entry.is_dir(follow_symlinks=False):
                for point in mounts_under(entry.path):
                    self._sys.umount(point)
                shutil.rmtree(entry.path, ignore_errors=True)
        for info in self.list():
            try:
                with open(self.home / info.name / REFS, encoding="utf-8") as f:
                    stale = json.load(f).get("boot_id") != self._boot
            except (OSError, ValueError):
                stale = False
            if stale:
                self._write_refs(info.name, set())  # refs of an earlier boot: nobody holds them
            if info.options.get("device") and not self._read_refs(info.name):
                if is_mounted(info.mountpoint):
                    log.info("undoing mount of volume %s that no ref holds", info.name,
                             extra={"driver": self.name})
                    self._umount(info.name)
