"""The overlay2 graph driver: layers as overlayfs lower dirs, one upper/work per read-write layer.

Layout under ``home`` (as moby's overlay2)::

    <id>/diff     the layer's own content (the upper dir of a read-write layer)
    <id>/link     the layer's short name: ``l/<link>`` is a symlink to ``../<id>/diff``
    <id>/lower    the parents' short names, nearest first: ``l/AAA:l/BBB``
    <id>/parent   the parent layer ID (pyd's own record, used to pick native or naive diff)
    <id>/work     overlayfs work dir;  <id>/merged  the mount point;  <id>/rw  marks a rw layer
    l/<link>      26-character names, so 128 lower dirs fit in one page of mount options

``get`` of a layer without parent returns its ``diff`` dir; otherwise it mounts overlayfs at
``merged`` (read-write with upper/work for rw layers, read-only for image layers), counting
references; ``put`` unmounts at zero.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import threading
from pathlib import Path
from typing import BinaryIO, Mapping

from pyd.drivers.archive import TreeReader, apply_layer, changes_size, changes_tar, diff_dirs, layer_tar, tar_stream, tree_size
from pyd.drivers.graph import Change, CreateRequest
from pyd.drivers.mounts import mounts_under
from pyd.errors import Conflict, InvalidParameter, NotFound

from .mounts import MNT_DETACH, MS_RDONLY, Syscalls, is_mountpoint
from .options import parse_layer_options
from .whiteouts import OverlayFormat, OverlayWhiteouts, native_changes

log = logging.getLogger(__name__)

MAX_DEPTH = 128  # lower layers; as moby, so that the mount options fit in a page
PAGE = os.sysconf("SC_PAGESIZE")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class OverlayDriver:
    name = "overlay2"

    def __init__(self, home: Path, sys: Syscalls, *, backing_fs: str, mount_opts: str, native_diff: bool) -> None:
        self.home = str(home)
        self._sys = sys
        self._backing, self._mount_opts, self._native = backing_fs, mount_opts, native_diff
        self._refs: dict[str, int] = {}
        self._lock = threading.Lock()
        os.makedirs(os.path.join(self.home, "l"), mode=0o700, exist_ok=True)

    # -- paths and records ----------------------------------------------------------------

    def _dir(self, layer_id: str) -> str:
        if not _ID.match(layer_id) or layer_id == "l":
            raise InvalidParameter(
                f'invalid layer ID "{layer_id}" for storage driver "overlay2": use letters, digits, "_", "." or "-"'
            )
        return os.path.join(self.home, layer_id)

    @staticmethod
    def _read(path: str) -> str:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    def _lowers(self, layer_id: str) -> list[str]:
        lower = self._read(os.path.join(self._dir(layer_id), "lower"))
        return lower.split(":") if lower else []

    def _parent(self, layer_id: str) -> str | None:
        return self._read(os.path.join(self._dir(layer_id), "parent")) or None

    def _require(self, layer_id: str) -> str:
        d = self._dir(layer_id)
        if not os.path.isdir(d):
            raise NotFound(f'layer "{layer_id}" does not exist in storage driver "overlay2"')
        return d

    # -- GraphDriver ----------------------------------------------------------------------

    def parse_layer_options(self, raw: Mapping[str, str]) -> Mapping[str, str]:
        parse_layer_options(raw, self._backing)
        return dict(raw)

    def create(self, req: CreateRequest) -> None:
        self._create(req, rw=False)

    def create_rw(self, req: CreateRequest) -> None:
        self._create(req, rw=True)

    def _create(self, req: CreateRequest, *, rw: bool) -> None:
        d = self._dir(req.layer_id)
        if req.storage_opts:
            self.parse_layer_options(req.storage_opts)
        lowers: list[str] = []
        if req.parent:
            pdir = self._require(req.parent)
            lowers = [f"l/{self._read(os.path.join(pdir, 'link'))}"] + self._lowers(req.parent)
            if len(lowers) > MAX_DEPTH:
                raise InvalidParameter(
                    f'layer "{req.layer_id}" would have {len(lowers)} lower layers; overlay2 allows at most {MAX_DEPTH}'
                )
        if os.path.lexists(d):
            raise Conflict(f'layer "{req.layer_id}" already exists in storage driver "overlay2"')
        link = base64.b32encode(os.urandom(20)).decode()[:26]
        tmp = os.path.join(self.home, f".tmp-{req.layer_id}-{link}")
        linked = False
        try:
            os.makedirs(os.path.join(tmp, "diff"), mode=0o755)
            os.chmod(os.path.join(tmp, "diff"), 0o755)
            self._write(tmp, "link", link)
            if lowers:
                self._write(tmp, "lower", ":".join(lowers))
                self._write(tmp, "parent", req.parent or "")
                os.mkdir(os.path.join(tmp, "work"), 0o700)
                os.mkdir(os.path.join(tmp, "merged"), 0o700)
            if rw:
                self._write(tmp, "rw", "")
            os.symlink(f"../{req.layer_id}/diff", os.path.join(self.home, "l", link))
            linked = True
            try:
                os.rename(tmp, d)
            except OSError as exc:  # a concurrent create of the same ID won
                raise Conflict(f'layer "{req.layer_id}" already exists in storage driver "overlay2"') from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if linked:
                os.unlink(os.path.join(self.home, "l", link))
            raise

    @staticmethod
    def _write(directory: str, name: str, text: str) -> None:
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(text)

    def remove(self, layer_id: str) -> None:
        d = self._dir(layer_id)
        with self._lock:
            refs = self._refs.get(layer_id, 0)
            if refs:
                raise Conflict(
                    f'layer "{layer_id}" is in use (mounted, {refs} reference(s)); release it before removing'
                )
            if not os.path.isdir(d):
                return
            merged = os.path.join(d, "merged")
            if is_mountpoint(merged):  # left mounted by a previous daemon
                self._sys.umount(merged, MNT_DETACH)
            link = self._read(os.path.join(d, "link"))
            if link:
                try:
                    os.unlink(os.path.join(self.home, "l", link))
                except FileNotFoundError:
                    pass
            # Rename first: a crash during the delete never leaves a layer that looks complete.
            doomed = os.path.join(self.home, f".removing-{layer_id}")
            shutil.rmtree(doomed, ignore_errors=True)
            os.rename(d, doomed)
        shutil.rmtree(doomed)

    def get(self, layer_id: str, mount_label: str = "") -> str:
        d = self._require(layer_id)
        with self._lock:
            lowers = self._lowers(layer_id)
            if not lowers:
                self._refs[layer_id] = self._refs.get(layer_id, 0) + 1
                return os.path.join(d, "diff")
            merged = os.path.join(d, "merged")
            if not self._refs.get(layer_id) and not is_mountpoint(merged):
                self._mount(layer_id, d, lowers, merged)
            self._refs[layer_id] = self._refs.get(layer_id, 0) + 1
            return merged

    def _mount(self, layer_id: str, d: str, lowers: list[str], merged: str) -> None:
        rw = os.path.exists(os.path.join(d, "rw"))
        if not rw:  # image layers are mounted read-only: their own diff on top of the parents'
            lowers = [f"l/{self._read(os.path.join(d, 'link'))}"] + lowers
        extra = [self._mount_opts] if self._mount_opts else []

        def options(prefix: str) -> str:
            opts = [f"lowerdir={':'.join(prefix + p for p in lowers)}"]
            if rw:
                opts += [f"upperdir={prefix}{layer_id}/diff", f"workdir={prefix}{layer_id}/work"]
            return ",".join(opts + extra)

        flags = 0 if rw else MS_RDONLY
        absolute = options(self.home + "/")
        if len(absolute) < PAGE:
            self._sys.mount("overlay", merged, "overlay", flags, absolute)
            return
        relative = options("")
        if len(relative) >= PAGE:
            raise InvalidParameter(f'mount options of layer "{layer_id}" exceed a page even with short links')
        self._sys.mount_from(self.home, "overlay", merged, "overlay", flags, relative)

    def put(self, layer_id: str) -> None:
        d = self._dir(layer_id)
        with self._lock:
            refs = self._refs.get(layer_id, 0)
            if refs == 0:
                log.debug("put of layer %s that is not in use", layer_id, extra={"driver": self.name})
                return
            if refs > 1:
                self._refs[layer_id] = refs - 1
                return
            del self._refs[layer_id]
            merged = os.path.join(d, "merged")
            if self._lowers(layer_id) and is_mountpoint(merged):
                self._sys.umount(merged, MNT_DETACH)

    def exists(self, layer_id: str) -> bool:
        try:
            return os.path.isdir(self._dir(layer_id))
        except InvalidParameter:
            return False

    def status(self) -> list[tuple[str, str]]:
        return [
            ("Backing Filesystem", self._backing),
            ("Supports d_type", "true"),
            ("Native Overlay Diff", "true" if self._native else "false"),
        ]

    def free_bytes(self) -> int:
        """Free space for unprivileged use on the backing filesystem (``LayerCapacity``)."""
        st = os.statvfs(self.home)
        return st.f_bavail * st.f_frsize

    def metadata(self, layer_id: str) -> dict[str, str]:
        d = self._require(layer_id)
        meta = {
            "UpperDir": os.path.join(d, "diff"),
            "WorkDir": os.path.join(d, "work"),
            "MergedDir": os.path.join(d, "merged"),
        }
        lowers = self._lowers(layer_id)
        if lowers:
            meta["LowerDir"] = ":".join(
                os.path.realpath(os.path.join(self.home, p)) for p in lowers
            )
        return meta

    def cleanup(self) -> None:
        with self._lock:
            for point in mounts_under(self.home):
                try:
                    self._sys.umount(point, MNT_DETACH)
                except OSError as exc:
                    log.warning("cannot unmount %s: %s", point, exc, extra={"driver": self.name})
            self._refs.clear()

    # -- diffs ----------------------------------------------------------------------------

    def _use_native(self, layer_id: str, parent: str | None) -> bool:
        return self._native and self._parent(layer_id) == parent

    def diff(self, layer_id: str, parent: str | None) -> BinaryIO:
        d = self._require(layer_id)
        if self._use_native(layer_id, parent):
            diff_dir = os.path.join(d, "diff")
            return tar_stream(lambda out: layer_tar(diff_dir, out, whiteout_format=OverlayFormat()))
        lower, upper = self._views(layer_id, parent)
        try:
            changes = diff_dirs(lower, upper)
        except BaseException:
            self._release(layer_id, parent)
            raise
        return tar_stream(
            lambda out: changes_tar(upper, changes, out), on_close=lambda: self._release(layer_id, parent)
        )

    def _views(self, layer_id: str, parent: str | None) -> tuple[str | None, str]:
        """Mount the parent's and the layer's merged views (for the naive differ)."""
        lower = self.get(parent) if parent else None
        try:
            return lower, self.get(layer_id)
        except BaseException:
            if parent:
                self.put(parent)
            raise

    def _release(self, layer_id: str, parent: str | None) -> None:
        self.put(layer_id)
        if parent:
            self.put(parent)

    def changes(self, layer_id: str, parent: str | None) -> list[Change]:
        d = self._require(layer_id)
        if self._use_native(layer_id, parent):
            view = self.get(parent) if parent else None
            try:
                return native_changes(os.path.join(d, "diff"), view)
            finally:
                if parent:
                    self.put(parent)
        lower, upper = self._views(layer_id, parent)
        try:
            return diff_dirs(lower, upper)
        finally:
            self._release(layer_id, parent)

    def apply_diff(self, layer_id: str, parent: str | None, diff: BinaryIO) -> int:
        d = self._require(layer_id)
        if self._parent(layer_id) != parent:
            raise InvalidParameter(
                f'cannot apply a diff to layer "{layer_id}" against parent "{parent}": its parent is "{self._parent(layer_id)}"'
            )
        if parent is None:
            return apply_layer(os.path.join(d, "diff"), diff, whiteouts=OverlayWhiteouts(None))
        # Whiteouts are only recorded where they hide something in the parents' view.
        view = self.get(parent)
        try:
            with TreeReader(view) as lower:
                return apply_layer(os.path.join(d, "diff"), diff, whiteouts=OverlayWhiteouts(lower))
        finally:
            self.put(parent)

    def diff_size(self, layer_id: str, parent: str | None) -> int:
        d = self._require(layer_id)
        if self._use_native(layer_id, parent):
            return tree_size(os.path.join(d, "diff"))
        lower, upper = self._views(layer_id, parent)
        try:
            return changes_size(upper, diff_dirs(lower, upper))
        finally:
            self._release(layer_id, parent)
