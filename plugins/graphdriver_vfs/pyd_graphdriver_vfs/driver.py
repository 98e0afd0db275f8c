"""The vfs graph driver: every layer is a full copy of its parent; no mounts, works anywhere.

Layout under ``home``::

    dir/<id>            the layer's complete tree (what ``get`` returns)
    meta/<id>/parent    the parent layer ID (empty for a base layer)
    meta/<id>/stamp     touched right after the copy: its ctime splits copied files from
                        files changed later, so the differ reads content only of the latter
    meta/<id>/rw        present for read-write (container) layers

Diffs are computed by walking the layer and its parent (Docker's naive differ).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Mapping

from pyd.drivers.archive import NaiveWhiteouts, apply_layer, changes_size, changes_tar, diff_dirs, tar_stream
from pyd.drivers.graph import Change, CreateRequest
from pyd.drivers.mounts import mount_of
from pyd.errors import Conflict, InvalidParameter, NotFound

from .copy import copy_tree
from .options import parse_layer_options

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def backing_filesystem(path: str) -> str:
    """The type of the filesystem holding ``path``, from mountinfo (e.g. "ext4")."""
    entry = mount_of(path)
    return entry.fstype if entry is not None and entry.fstype else "unknown"


class VfsDriver:
    name = "vfs"

    def __init__(self, home: Path) -> None:
        self.home = str(home)
        self._dirs = os.path.join(self.home, "dir")
        self._meta = os.path.join(self.home, "meta")
        for d in (self._dirs, self._meta):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._backing = backing_filesystem(self.home)
        self._refs: dict[str, int] = {}
        self._lock = threading.Lock()

    # -- paths ----------------------------------------------------------------------------

    def _check(self, layer_id: str) -> str:
        if not _ID.match(layer_id):
            raise InvalidParameter(
                f'invalid layer ID "{layer_id}" for storage driver "vfs": use letters, digits, "_", "." or "-"'
            )
        return layer_id

    def _dir(self, layer_id: str) -> str:
        return os.path.join(self._dirs, self._check(layer_id))

    def _require(self, layer_id: str | None) -> str:
        if layer_id is None:
            raise NotFound('no layer given to storage driver "vfs"')
        d = self._dir(layer_id)
        if not os.path.isdir(d):
            raise NotFound(f'layer "{layer_id}" does not exist in storage driver "vfs"')
        return d

    def _parent(self, layer_id: str) -> str | None:
        try:
            with open(os.path.join(self._meta, layer_id, "parent"), encoding="utf-8") as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None

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
        parent_dir = self._require(req.parent) if req.parent else None
        if os.path.lexists(d):
            raise Conflict(f'layer "{req.layer_id}" already exists in storage driver "vfs"')
        meta = os.path.join(self._meta, req.layer_id)
        shutil.rmtree(meta, ignore_errors=True)  # left by a create that crashed
        tag = uuid.uuid4().hex[:12]
        tmp_dir = os.path.join(self._dirs, f".tmp-{req.layer_id}-{tag}")
        tmp_meta = os.path.join(self._meta, f".tmp-{req.layer_id}-{tag}")
        try:
            os.mkdir(tmp_meta, 0o700)
            os.mkdir(tmp_dir, 0o755)
            os.chmod(tmp_dir, 0o755)
            if parent_dir is not None:
                copy_tree(parent_dir, tmp_dir)
            with open(os.path.join(tmp_meta, "parent"), "w", encoding="utf-8") as f:
                f.write(req.parent or "")
            open(os.path.join(tmp_meta, "stamp"), "w").close()
            if rw:
                open(os.path.join(tmp_meta, "rw"), "w").close()
            os.rename(tmp_meta, meta)
            try:
                os.rename(tmp_dir, d)
            except OSError as exc:
                raise Conflict(f'layer "{req.layer_id}" already exists in storage driver "vfs"') from exc
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            shutil.rmtree(tmp_meta, ignore_errors=True)
            if not os.path.isdir(d):
                shutil.rmtree(meta, ignore_errors=True)
            raise

    def remove(self, layer_id: str) -> None:
        d = self._dir(layer_id)
        with self._lock:
            refs = self._refs.get(layer_id, 0)
            if refs:
                raise Conflict(f'layer "{layer_id}" is in use ({refs} reference(s)); release it before removing')
            if os.path.isdir(d):
                # Rename first: a crash during the delete never leaves a layer that looks complete.
                doomed = os.path.join(self._dirs, f".removing-{layer_id}-{uuid.uuid4().hex[:12]}")
                os.rename(d, doomed)
            else:
                doomed = ""
        if doomed:
            shutil.rmtree(doomed)
        shutil.rmtree(os.path.join(self._meta, layer_id), ignore_errors=True)

    def get(self, layer_id: str, mount_label: str = "") -> str:
        d = self._require(layer_id)
        with self._lock:
            self._refs[layer_id] = self._refs.get(layer_id, 0) + 1
        return d

    def put(self, layer_id: str) -> None:
        self._check(layer_id)
        with self._lock:
            refs = self._refs.get(layer_id, 0)
            if refs > 1:
                self._refs[layer_id] = refs - 1
            elif refs == 1:
                del self._refs[layer_id]
            else:
                log.debug("put of layer %s that is not in use", layer_id, extra={"driver": self.name})

    def exists(self, layer_id: str) -> bool:
        try:
            return os.path.isdir(self._dir(layer_id))
        except InvalidParameter:
            return False

    def status(self) -> list[tuple[str, str]]:
        return [("Backing Filesystem", self._backing)]

    def free_bytes(self) -> int:
        """Free space for unprivileged use on the backing filesystem (``LayerCapacity``)."""
        st = os.statvfs(self.home)
        return st.f_bavail * st.f_frsize

    def metadata(self, layer_id: str) -> dict[str, str]:
        return {"Dir": self._require(layer_id)}

    def cleanup(self) -> None:
        with self._lock:
            self._refs.clear()  # nothing is mounted

    # -- diffs ----------------------------------------------------------------------------

    def _content_check(self, layer_id: str, parent: str | None) -> Callable[[os.stat_result], bool] | bool:
        """Which same-looking files to compare by content: against the direct parent, only files
        whose inode changed after the layer's copy was made; otherwise all of them."""
        if parent is None or self._parent(layer_id) != parent:
            return True
        try:
            stamp = os.stat(os.path.join(self._meta, layer_id, "stamp")).st_ctime_ns
        except FileNotFoundError:
            return True
        return lambda st: st.st_ctime_ns >= stamp

    def changes(self, layer_id: str, parent: str | None) -> list[Change]:
        d = self._require(layer_id)
        lower = self._require(parent) if parent else None
        return diff_dirs(lower, d, compare_content=self._content_check(layer_id, parent))

    def diff(self, layer_id: str, parent: str | None) -> BinaryIO:
        d = self._require(layer_id)
        changes = self.changes(layer_id, parent)
        return tar_stream(lambda out: changes_tar(d, changes, out))

    def diff_size(self, layer_id: str, parent: str | None) -> int:
        return changes_size(self._require(layer_id), self.changes(layer_id, parent))

    def apply_diff(self, layer_id: str, parent: str | None, diff: BinaryIO) -> int:
        d = self._require(layer_id)
        if self._parent(layer_id) != parent:
            raise InvalidParameter(
                f'cannot apply a diff to layer "{layer_id}" against parent "{parent}": '
                f'its parent is "{self._parent(layer_id)}"'
            )
        return apply_layer(d, diff, whiteouts=NaiveWhiteouts())
