"""Path handling shared by applying and reading layers: never following a symlink.

Everything is resolved from an open root directory one component at a time with
``openat(O_NOFOLLOW)``; removal is ``unlinkat``/``rmtree(dir_fd=...)``, which do not follow links.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections import OrderedDict
from typing import Callable

from pyd.errors import InvalidParameter

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
PAX_XATTR = "SCHILY.xattr."
OVERLAY_XATTR = "trusted.overlay."

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
BUF = 1 << 20
CACHE = 64  # open directory fds kept while applying (tars are mostly sorted)


def remove_entry(dir_fd: int, name: str) -> None:
    """Remove ``name`` (any type; directories recursively, symlink-safe) from ``dir_fd``."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except IsADirectoryError:
        shutil.rmtree(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def clear_dir(dir_fd: int, path: str, keep: Callable[[str], bool]) -> None:
    """Remove every entry below ``dir_fd`` whose relative path ``keep`` rejects, recursively."""
    for name in os.listdir(dir_fd):
        child = f"{path}/{name}" if path else name
        if not keep(child):
            remove_entry(dir_fd, name)
            continue
        try:
            sub = os.open(name, O_DIR, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                continue
            raise
        try:
            clear_dir(sub, child, keep)
        finally:
            os.close(sub)




def split_member(name: str, what: str = "layer member") -> list[str]:
    """The components of a tar member name; refuses absolute paths and ``..``."""
    if name.startswith("/"):
        raise InvalidParameter(
            f'{what} "{name}" is an absolute path; paths in a layer must be relative to its root'
        )
    parts = name.split("/")
    if "" in parts or "." in parts:
        parts = [p for p in parts if p and p != "."]
    if ".." in parts:
        raise InvalidParameter(f'{what} "{name}" contains "..", which would leave the layer root')
    return parts


class DirCache:
    """Open directory fds by relative path, LRU-bounded. ``walk`` opens the missing components
    with ``open_child`` and caches only the final directory, so an fd in use by the caller is
    never the one evicted (the cache holds more than two entries)."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.fds: OrderedDict[str, int] = OrderedDict()
        self.generation = 0  # bumped whenever a cached fd is closed (callers' memos expire)
        # Cached directory fds without the setgid bit (new files there get the creator's gid).
        self.plain: set[int] = set()
        self.note(root_fd)

    def note(self, fd: int) -> None:
        if os.fstat(fd).st_mode & stat.S_ISGID:
            self.plain.discard(fd)
        else:
            self.plain.add(fd)

    def _close(self, fd: int) -> None:
        self.generation += 1
        self.plain.discard(fd)
        os.close(fd)

    def put(self, key: str, fd: int) -> None:
        old = self.fds.pop(key, None)
        if old is not None and old != fd:
            self._close(old)
        self.fds[key] = fd
        self.note(fd)
        while len(self.fds) > CACHE:
            self._close(self.fds.popitem(last=False)[1])

    def forget(self, rel: str, *, include_self: bool = True) -> None:
        prefix = rel + "/" if rel else ""
        for key in [k for k in self.fds if k.startswith(prefix) or (include_self and k == rel)]:
            self._close(self.fds.pop(key))

    def close(self) -> None:
        for fd in self.fds.values():
            self._close(fd)
        self.fds.clear()
        self.plain.clear()

    def walk(self, parts: list[str], open_child: Callable[[int, str, str], int]) -> int:
        if not parts:
            return self.root_fd
        key = "/".join(parts)
        fd = self.fds.get(key)
        if fd is not None:
            self.fds.move_to_end(key)
            return fd
        start, cur = 0, self.root_fd
        for i in range(len(parts) - 1, 0, -1):
            cached = self.fds.get("/".join(parts[:i]))
            if cached is not None:
                self.fds.move_to_end("/".join(parts[:i]))
                start, cur = i, cached
                break
        opened: list[int] = []
        try:
            for j in range(start, len(parts)):
                cur = open_child(cur, parts[j], "/".join(parts[: j + 1]))
                opened.append(cur)
        except BaseException:
            for o in opened:
                os.close(o)
            raise
        for o in opened[:-1]:
            os.close(o)
        self.put(key, cur)
        return cur


def open_existing_dir(parent: int, name: str, rel: str) -> int:
    try:
        return os.open(name, O_DIR, dir_fd=parent)
    except FileNotFoundError:
        raise InvalidParameter(f'"{rel}" does not exist in the layer') from None
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise InvalidParameter(f'"{rel}" is a symlink or not a directory; refusing to follow it') from None
        raise
