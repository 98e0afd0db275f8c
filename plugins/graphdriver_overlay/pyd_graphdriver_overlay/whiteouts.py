"""overlayfs's on-disk whiteouts and Docker's tar whiteouts, converted both ways.

In an overlay upper (a layer's ``diff`` dir) a deleted name is a 0:0 character device and an
opaque directory carries ``trusted.overlay.opaque=y``. In a layer tar they are ``.wh.NAME`` and
``DIR/.wh..wh..opq``. ``pyd.drivers.archive`` does the tar side; these classes plug in.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Callable

from pyd.drivers.archive import TreeReader, iter_tree
from pyd.drivers.graph import Change, ChangeKind
from pyd.errors import InvalidParameter

OPAQUE_XATTR = "trusted.overlay.opaque"


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(dir_fd: int) -> bool:
    try:
        return os.getxattr(dir_fd, OPAQUE_XATTR) == b"y"
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return False
        raise


class OverlayWhiteouts:
    """``WhiteoutHandler`` for applying a tar into a layer's fresh ``diff`` dir.

    overlayfs lists a directory that only one layer contributes (an opaque one, or one with
    nothing below) straight from disk, whiteouts included; it only expects whiteouts where they
    hide something. So a whiteout is recorded only if ``lower`` (a reader of the parent layers'
    merged view, None for a base layer) has the path and no directory above it is opaque in this
    layer; marking a directory opaque drops the whiteouts already below it.
    """

    def __init__(self, lower: TreeReader | None) -> None:
        self._lower = lower
        self._opaque: set[str] = set()

    def whiteout(self, dir_fd: int, name: str, path: str, uid: int, gid: int) -> None:
        if self._lower is None or self._lower.entry(path) is None:
            return
        parts = path.split("/")
        if any("/".join(parts[:i]) in self._opaque for i in range(1, len(parts))):
            return
        os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=dir_fd)
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)

    def opaque(self, dir_fd: int, path: str, keep: Callable[[str], bool]) -> None:
        if not path:
            # overlayfs never consults the opaque mark of an upper root, so it cannot hide
            # the lower layers' root entries; refuse rather than apply it wrongly.
            raise InvalidParameter(
                'layer marks its root directory opaque (".wh..wh..opq" at the top level), '
                "which the overlay2 storage driver cannot represent"
            )
        os.setxattr(dir_fd, OPAQUE_XATTR, b"y")
        self._opaque.add(path)
        _drop_whiteouts(dir_fd)


def _drop_whiteouts(dir_fd: int) -> None:
    for name in os.listdir(dir_fd):
        st = os.lstat(name, dir_fd=dir_fd)
        if is_whiteout(st):
            os.unlink(name, dir_fd=dir_fd)
        elif stat.S_ISDIR(st.st_mode):
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                _drop_whiteouts(sub)
            finally:
                os.close(sub)


class OverlayFormat:
    """``WhiteoutFormat`` for producing a tar from a layer's ``diff`` dir (native diff)."""

    def is_whiteout(self, st: os.stat_result) -> bool:
        return is_whiteout(st)

    def is_opaque(self, dir_fd: int) -> bool:
        return is_opaque(dir_fd)


def native_changes(diff_dir: str, parent_view: str | None) -> list[Change]:
    """Changes of a layer from its ``diff`` dir alone: a whiteout is a deletion, an entry that
    exists in the parent's merged view is a modification, anything else an addition; an opaque
    directory also deletes every parent entry it hides."""
    out: list[Change] = []
    lower = TreeReader(parent_view) if parent_view else None
    try:
        for e in iter_tree(diff_dir):
            path = "/" + e.path
            if is_whiteout(e.st):
                if lower is not None and lower.entry(path) is not None:
                    out.append(Change(path, ChangeKind.DELETE))
                continue
            below = lower.entry(path) if lower is not None else None
            out.append(Change(path, ChangeKind.MODIFY if below is not None else ChangeKind.ADD))
            if (
                e.fd is not None
                and below is not None
                and stat.S_ISDIR(below.st.st_mode)
                and is_opaque(e.fd)
                and lower is not None
            ):
                mine = set(os.listdir(e.fd))
                for name in sorted(set(lower.listdir(path)) - mine):
                    out.append(Change(f"{path}/{name}", ChangeKind.DELETE))
    finally:
        if lower is not None:
            lower.close()
    out.sort(key=lambda c: c.path)
    return out
