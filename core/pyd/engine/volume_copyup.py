"""Host-side file work for container mounts: copy-up of the image's content into a new volume,
and the propagation checks of bind sources. Blocking; runs in a worker thread.

Copy-up (moby's ``CopyImagePathContent``): when a volume is mounted on a path where the image
has a directory and the volume is empty, the directory's content is copied into it with
owners, modes, times and extended attributes kept, and the volume's root takes the owner and
mode of the image's directory. The image (or a container sharing the rootfs) controls that
content, so the source is opened inside the rootfs (``rootfs_path.open_in_root``: symlinks
resolve as the container sees them and never lead out of it) and walked with directory fds and
``O_NOFOLLOW``: nothing is ever resolved through a path string. Hard links are copied as
separate files.
"""

from __future__ import annotations

import errno
import os
import stat

from pyd.drivers.mounts import MountEntry as MountInfo, mount_of  # noqa: F401  (MountInfo: its old name)
from pyd.engine.rootfs_path import open_in_root
from pyd.errors import InvalidParameter

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


def copy_up(rootfs: str, destination: str, volume_path: str) -> bool:
    """Copy the rootfs's directory at ``destination`` into ``volume_path`` if the latter is
    empty. True if something was copied; False if the volume is not empty or the image has no
    directory there (a file there makes the mount itself fail later, with its own error)."""
    try:
        src = open_in_root(rootfs, destination, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        dst = os.open(volume_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if os.listdir(dst):
                return False  # moby's rule: only an empty volume is filled
            _copy_dir(src, dst)
            st = os.fstat(src)
            os.fchown(dst, st.st_uid, st.st_gid)
            os.fchmod(dst, stat.S_IMODE(st.st_mode))
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return True


def _copy_dir(src: int, dst: int) -> None:
    with os.scandir(src) as it:
        names = [e.name for e in it]
    for name in names:
        try:
            st = os.stat(name, dir_fd=src, follow_symlinks=False)
        except FileNotFoundError:
            continue  # gone meanwhile
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o700, dir_fd=dst)
            s2 = os.open(name, _DIR_FLAGS, dir_fd=src)
            try:
                d2 = os.open(name, _DIR_FLAGS, dir_fd=dst)
                try:
                    _copy_dir(s2, d2)
                    _xattrs(s2, d2)
                    _meta_fd(d2, st)
                finally:
                    os.close(d2)
            finally:
                os.close(s2)
        elif stat.S_ISREG(mode):
            _copy_file(src, dst, name, st)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            if stat.S_ISFIFO(mode):
                os.mkfifo(name, 0o600, dir_fd=dst)
            else:
                os.mknod(name, 0o600 | stat.S_IFMT(mode), st.st_rdev, dir_fd=dst)
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dst)
            try:
                # chown/chmod through the O_PATH fd: the node just made, never a link planted since
                proc = f"/proc/self/fd/{fd}"
                os.chown(proc, st.st_uid, st.st_gid)
                os.chmod(proc, stat.S_IMODE(mode))
                os.utime(proc, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fd)
        # sockets are not copied (a socket file means nothing without its process)


def _copy_file(src: int, dst: int, name: str, st: os.stat_result) -> None:
    fi = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src)
    try:
        fo = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst)
        try:
            offset = 0
            while True:
                try:
                    n = os.sendfile(fo, fi, offset, _CHUNK)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                        raise
                    n = _copy_plain(fi, fo, offset)
                if n == 0:
                    break
                offset += n
            _xattrs(fi, fo)
            _meta_fd(fo, st)
        finally:
            os.close(fo)
    finally:
        os.close(fi)


def _copy_plain(fi: int, fo: int, offset: int) -> int:
    data = os.pread(fi, _CHUNK, offset)
    if data:
        os.pwrite(fo, data, offset)
    return len(data)


def _meta_fd(fd: int, st: os.stat_result) -> None:
    # chown first: it clears set-id bits, which the chmod then restores
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _xattrs(src: int, dst: int) -> None:
    """Best effort: e.g. ``security.capability`` of a binary; overlayfs hides its own."""
    try:
        names = os.listxattr(src)
    except OSError:
        return
    for attr in names:
        try:
            os.setxattr(dst, attr, os.getxattr(src, attr))
        except OSError:
            pass


# -- propagation of bind sources ------------------------------------------------------------------


def check_propagation(source: str, propagation: str, mountinfo: str = "/proc/self/mountinfo") -> None:
    """Docker's ``ensureShared``/``ensureSharedOrSlave``: a bind with shared propagation needs
    a shared source mount, one with slave propagation a shared or slave one (else the mode
    could not have any effect). ``InvalidParameter`` naming the path and its mount."""
    if propagation not in ("shared", "rshared", "slave", "rslave"):
        return
    info = mount_of(source, mountinfo)
    if info is None:
        return
    shared = any(o.startswith("shared:") for o in info.optional)
    slave = any(o.startswith("master:") for o in info.optional)
    if propagation in ("shared", "rshared") and not shared:
        raise InvalidParameter(
            f"path {source} is mounted on {info.mount_point} but it is not a shared mount "
            f"(needed for bind-propagation={propagation}; make it one with mount --make-shared {info.mount_point})"
        )
    if propagation in ("slave", "rslave") and not (shared or slave):
        raise InvalidParameter(
            f"path {source} is mounted on {info.mount_point} but it is not a shared or slave mount "
            f"(needed for bind-propagation={propagation})"
        )
