"""Docker's naive differ: the changes between two trees, walked through directory fds."""

from __future__ import annotations

import os
import stat
from typing import Callable

from pyd.drivers.graph import Change, ChangeKind

from .paths import BUF, O_DIR, O_READ
from .produce import proc_path, read_xattrs, walk_fd


def _same_mtime(a: int, b: int) -> bool:
    # Layer tars carry whole seconds: a truncated time equals the precise one (as moby compares).
    return a == b or (a // 10**9 == b // 10**9 and (a % 10**9 == 0 or b % 10**9 == 0))


def _same_content(lfd: int, ufd: int, name: str) -> bool:
    a = os.open(name, O_READ, dir_fd=lfd)
    try:
        b = os.open(name, O_READ, dir_fd=ufd)
        try:
            while True:
                x, y = os.read(a, BUF), os.read(b, BUF)
                if x != y:
                    return False
                if not x:
                    return True
        finally:
            os.close(b)
    finally:
        os.close(a)


ContentCheck = Callable[[os.stat_result], bool]


def _differs(lfd: int, ufd: int, name: str, lst: os.stat_result, ust: os.stat_result, content: ContentCheck) -> bool:
    if (lst.st_mode, lst.st_uid, lst.st_gid) != (ust.st_mode, ust.st_uid, ust.st_gid):
        return True
    if not stat.S_ISDIR(ust.st_mode):
        if lst.st_rdev != ust.st_rdev or lst.st_size != ust.st_size:
            return True
        if not _same_mtime(lst.st_mtime_ns, ust.st_mtime_ns):
            return True
        if stat.S_ISLNK(ust.st_mode) and os.readlink(name, dir_fd=lfd) != os.readlink(name, dir_fd=ufd):
            return True
    if read_xattrs(proc_path(lfd, name)) != read_xattrs(proc_path(ufd, name)):
        return True
    return stat.S_ISREG(ust.st_mode) and content(ust) and not _same_content(lfd, ufd, name)


def _all_added(fd: int, rel: str, out: list[Change]) -> None:
    for e in walk_fd(fd, rel):
        out.append(Change("/" + e.path, ChangeKind.ADD))


def _diff(lfd: int | None, ufd: int, rel: str, out: list[Change], content: ContentCheck) -> bool:
    unames = os.listdir(ufd)
    lnames = set(os.listdir(lfd)) if lfd is not None else set()
    changed = False
    for name in lnames.difference(unames):
        out.append(Change(f"/{rel}/{name}" if rel else f"/{name}", ChangeKind.DELETE))
        changed = True
    for name in unames:
        path = f"{rel}/{name}" if rel else name
        ust = os.lstat(name, dir_fd=ufd)
        lst = os.lstat(name, dir_fd=lfd) if lfd is not None and name in lnames else None
        is_dir = stat.S_ISDIR(ust.st_mode)
        if lst is None or not _differs(lfd, ufd, name, lst, ust, content):  # type: ignore[arg-type]
            modified = False
        else:
            modified = True
            out.append(Change("/" + path, ChangeKind.MODIFY))
        if lst is None:
            out.append(Change("/" + path, ChangeKind.ADD))
        changed = changed or lst is None or modified
        if not is_dir:
            continue
        sub = os.open(name, O_DIR, dir_fd=ufd)
        try:
            if lst is None or not stat.S_ISDIR(lst.st_mode):
                _all_added(sub, path, out)  # everything below a new directory is new
                continue
            lsub = os.open(name, O_DIR, dir_fd=lfd)  # type: ignore[arg-type]
            try:
                if _diff(lsub, sub, path, out, content) and not modified:
                    # Docker lists a directory with changed children as modified.
                    out.append(Change("/" + path, ChangeKind.MODIFY))
                    changed = True
            finally:
                os.close(lsub)
        finally:
            os.close(sub)
    return changed


def diff_dirs(lower: str | None, upper: str, *, compare_content: ContentCheck | bool = True) -> list[Change]:
    """Docker's naive differ: what changed from the tree ``lower`` (None: empty) to ``upper``.

    A non-directory is modified if its type, mode, owner, device, size, mtime, link target or
    xattrs differ, or -- where ``compare_content`` says so for its stat -- its content; a
    directory if its mode, owner or xattrs differ, or anything below it changed. Deletions are
    reported for the topmost deleted path only; additions for every path. Sorted by path.
    """
    content: ContentCheck = (
        compare_content if callable(compare_content) else (lambda _st, _c=bool(compare_content): _c)
    )
    out: list[Change] = []
    ufd = os.open(upper, O_DIR)
    try:
        lfd = os.open(lower, O_DIR) if lower else None
        try:
            _diff(lfd, ufd, "", out, content)
        finally:
            if lfd is not None:
                os.close(lfd)
    finally:
        os.close(ufd)
    out.sort(key=lambda c: c.path)
    return out
