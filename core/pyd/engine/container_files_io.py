"""``cp`` in and out of a container (``/containers/{id}/archive``) and ``export``.

Every path is resolved inside the container's root filesystem with in-root resolution
(``rootfs_path.open_in_root``): a symlink planted in the container (``/data -> /``) can never
make the daemon read or write a host path (the CVE-2018-15664 class). Reading walks the tree
with directory fds and ``O_NOFOLLOW``; writing goes through ``pyd.drivers.archive.apply_layer``
rooted at the already-resolved directory fd.

A stopped container's filesystem is mounted for the duration of the request.
"""

from __future__ import annotations

import asyncio
import functools
import base64
import json
import os
import posixpath
import stat
from typing import TYPE_CHECKING, Any, AsyncIterator, BinaryIO, Callable

from pyd.drivers import archive
from pyd.engine.container_state import format_time
from pyd.engine.rootfs_path import open_in_root
from pyd.errors import InvalidParameter, NotFound

if TYPE_CHECKING:
    from pyd.engine.container_record import Container
    from pyd.engine.containers import ContainerService

_CHUNK = 64 * 1024

# Go's os.FileMode bits (the stat header carries a Go FileMode, not a st_mode)
_GO_DIR, _GO_SYMLINK, _GO_DEVICE, _GO_PIPE, _GO_SOCKET = 1 << 31, 1 << 27, 1 << 26, 1 << 25, 1 << 24
_GO_SETUID, _GO_SETGID, _GO_CHARDEV, _GO_STICKY = 1 << 23, 1 << 22, 1 << 21, 1 << 20


def go_file_mode(mode: int) -> int:
    out = mode & 0o777
    if stat.S_ISDIR(mode):
        out |= _GO_DIR
    elif stat.S_ISLNK(mode):
        out |= _GO_SYMLINK
    elif stat.S_ISBLK(mode):
        out |= _GO_DEVICE
    elif stat.S_ISCHR(mode):
        out |= _GO_DEVICE | _GO_CHARDEV
    elif stat.S_ISFIFO(mode):
        out |= _GO_PIPE
    elif stat.S_ISSOCK(mode):
        out |= _GO_SOCKET
    if mode & stat.S_ISUID:
        out |= _GO_SETUID
    if mode & stat.S_ISGID:
        out |= _GO_SETGID
    if mode & stat.S_ISVTX:
        out |= _GO_STICKY
    return out


def stat_header(name: str, st: os.stat_result, link: str) -> str:
    doc = {"name": name, "size": st.st_size, "mode": go_file_mode(st.st_mode),
           "mtime": format_time(st.st_mtime_ns), "linkTarget": link}
    return base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()


class _Target:
    """The parent directory (as an fd) and the name of a path inside the rootfs."""

    def __init__(self, rootfs: str, path: str, shown: str, container: str) -> None:
        # lstrip: normpath keeps a leading "//", whose basename "/" would name the host's root
        norm = posixpath.normpath("/" + path.lstrip("/"))
        self.name = posixpath.basename(norm) or "/"
        parent = posixpath.dirname(norm)
        self.missing = f"Could not find the file {shown} in container {container}"
        try:
            self.parent_fd = open_in_root(rootfs, parent, os.O_PATH | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(self.missing) from None
        if norm == "/":
            self.name = "."
        try:
            self.st = os.stat(self.name, dir_fd=self.parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.close(self.parent_fd)
            raise NotFound(self.missing) from None
        self.link = os.readlink(self.name, dir_fd=self.parent_fd) if stat.S_ISLNK(self.st.st_mode) else ""

    def close(self) -> None:
        os.close(self.parent_fd)


async def _with_rootfs(svc: ContainerService, c: Container) -> tuple[str, Callable[[], None]]:
    """The host path of the container's root filesystem and how to release it."""
    assert svc.layers is not None
    root = await svc.run(svc.layers.mount, c.id, timeout=120.0)
    layers = svc.layers

    def release() -> None:
        layers.unmount(c.id)

    return root, release


async def path_stat(svc: ContainerService, ref: str, path: str) -> str:
    c = svc.get(ref)
    root, release = await _with_rootfs(svc, c)
    try:
        t = await svc.run(_Target, root, path, path, ref)
        t.close()
        name = posixpath.basename(posixpath.normpath("/" + path)) or "/"
        return stat_header(name, t.st, t.link)
    finally:
        await svc.run(release)


def _produce(target: _Target, out: BinaryIO) -> None:
    writer = archive.TarWriter(out)  # the same writer layers use (PAX, xattrs, hardlinks)
    try:
        top = target.name if target.name != "." else "."
        if stat.S_ISDIR(target.st.st_mode):
            fd = os.open(target.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=target.parent_fd)
            try:
                writer.add(archive.Entry(top, target.name, target.parent_fd, os.fstat(fd), fd))
                for e in archive.walk_fd(fd, "" if top == "." else top):
                    writer.add(e)
            finally:
                os.close(fd)
        else:
            writer.add(archive.Entry(top, target.name, target.parent_fd, target.st))
    finally:
        writer.close()
        target.close()


async def _iterate(svc: ContainerService, stream: BinaryIO) -> AsyncIterator[bytes]:
    try:
        while True:
            chunk = await svc.run(stream.read, _CHUNK, timeout=None)
            if not chunk:
                return
            yield chunk
    finally:
        await svc.run(stream.close, timeout=None)


async def get_archive(svc: ContainerService, ref: str, path: str) -> tuple[str, AsyncIterator[bytes]]:
    c = svc.get(ref)
    root, release = await _with_rootfs(svc, c)
    try:
        target = await svc.run(_Target, root, path, path, ref)
    except BaseException:
        await svc.run(release)
        raise
    name = posixpath.basename(posixpath.normpath("/" + path)) or "/"
    header = stat_header(name, target.st, target.link)
    stream = archive.tar_stream(lambda out: _produce(target, out), on_close=release)
    return header, _iterate(svc, stream)


async def put_archive(svc: ContainerService, ref: str, path: str, content: Any, *, no_overwrite_dir_non_dir: bool = False) -> None:
    c = svc.get(ref)
    if c.host_config.get("ReadonlyRootfs"):
        raise InvalidParameter(f"container rootfs is marked read-only: cannot copy into {ref}")
    root, release = await _with_rootfs(svc, c)
    try:
        t = await svc.run(_Target, root, path, path, ref)
        try:
            if stat.S_ISLNK(t.st.st_mode):
                # as dockerd: a symlink at the extraction point is followed, inside the rootfs
                try:
                    fd = open_in_root(root, path, os.O_PATH | os.O_DIRECTORY)
                except FileNotFoundError:
                    raise NotFound(t.missing) from None
                except NotADirectoryError:
                    raise InvalidParameter(f"extraction point is not a directory: {path}") from None
            elif not stat.S_ISDIR(t.st.st_mode):
                raise InvalidParameter(f"extraction point is not a directory: {path}")
            else:
                fd = os.open(t.name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=t.parent_fd)
        finally:
            t.close()
        try:
            rfd, wfd = os.pipe2(os.O_CLOEXEC)
            reader = open(rfd, "rb")
            apply = asyncio.ensure_future(svc.run(functools.partial(archive.apply_layer, resolve_symlinks=True), f"/proc/self/fd/{fd}", reader, timeout=None))
            try:
                with open(wfd, "wb", buffering=0) as w:
                    async for chunk in content.iter_chunked(_CHUNK):
                        if apply.done():
                            break
                        await svc.run(w.write, chunk, timeout=None)
            except BrokenPipeError:
                pass
            finally:
                await asyncio.wait({apply})
                reader.close()
            apply.result()
        finally:
            os.close(fd)
    finally:
        await svc.run(release)


async def export_rootfs(svc: ContainerService, c: Container) -> AsyncIterator[bytes]:
    root, release = await _with_rootfs(svc, c)
    stream = archive.tar_stream(lambda out: archive.layer_tar(root, out), on_close=release)
    async for chunk in _iterate(svc, stream):
        yield chunk
