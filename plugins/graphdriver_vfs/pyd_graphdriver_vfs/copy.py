"""Copy a layer tree for vfs: reflinks where the filesystem can share blocks, copies otherwise.

Everything is walked through directory fds without following symlinks. Hardlinks inside the
tree stay hardlinks; owners, modes (setuid included), xattrs and times are kept. Directory
times are set after their content.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

FICLONE = 0x40049409  # _IOW(0x94, 9, int)
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NO_CLONE = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM)


class TreeCopier:
    def __init__(self) -> None:
        self.reflink = True  # until the filesystem says otherwise
        self._links: dict[tuple[int, int], str] = {}
        self._dst_root = -1

    def copy(self, src: str, dst: str) -> None:
        """Copy the content of directory ``src`` into the existing empty directory ``dst``."""
        sfd = os.open(src, _O_DIR)
        try:
            self._dst_root = os.open(dst, _O_DIR)
            try:
                self._copy_dir(sfd, self._dst_root, "")
                st = os.fstat(sfd)
                self._meta(self._dst_root, st, sfd)
                os.utime(self._dst_root, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(self._dst_root)
        finally:
            os.close(sfd)

    def _copy_dir(self, sfd: int, dfd: int, rel: str) -> None:
        for name in os.listdir(sfd):
            st = os.lstat(name, dir_fd=sfd)
            path = f"{rel}/{name}" if rel else name
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                os.mkdir(name, 0o700, dir_fd=dfd)
                s2, d2 = os.open(name, _O_DIR, dir_fd=sfd), os.open(name, _O_DIR, dir_fd=dfd)
                try:
                    self._copy_dir(s2, d2, path)
                    self._meta(d2, st, s2)
                    os.utime(d2, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(s2)
                    os.close(d2)
            elif stat.S_ISREG(mode):
                self._copy_file(sfd, dfd, name, path, st)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
                os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dfd)
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                try:
                    os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(mode))
                finally:
                    os.close(fd)
                os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
            # sockets are not copied: they are not part of a layer

    def _copy_file(self, sfd: int, dfd: int, name: str, path: str, st: os.stat_result) -> None:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1:
            first = self._links.get(key)
            if first is not None:
                parent, _, base = first.rpartition("/")
                pfd = os.open(parent, _O_DIR, dir_fd=self._dst_root) if parent else self._dst_root
                try:
                    os.link(base, name, src_dir_fd=pfd, dst_dir_fd=dfd, follow_symlinks=False)
                finally:
                    if parent:
                        os.close(pfd)
                return
            self._links[key] = path
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
        try:
            dst = os.open(name, _O_NEW, 0o600, dir_fd=dfd)
            try:
                self._data(src, dst, st.st_size)
                self._meta(dst, st, src)
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _data(self, src: int, dst: int, size: int) -> None:
        if size == 0:
            return
        if self.reflink:
            try:
                fcntl.ioctl(dst, FICLONE, src)
                return
            except OSError as exc:
                if exc.errno not in _NO_CLONE:
                    raise
                self.reflink = False
        left = size
        try:
            while left > 0:
                n = os.copy_file_range(src, dst, left)
                if n == 0:
                    return  # the file shrank while copying
                left -= n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
        while left > 0 and (chunk := os.read(src, min(left, 1 << 20))):
            view = memoryview(chunk)
            while view:
                view = view[os.write(dst, view) :]
            left -= len(chunk)

    @staticmethod
    def _meta(fd: int, st: os.stat_result, src_fd: int) -> None:
        os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        for name in os.listxattr(src_fd):
            os.setxattr(fd, name, os.getxattr(src_fd, name))


def copy_tree(src: str, dst: str) -> bool:
    """Copy ``src``'s content into the empty directory ``dst``; True if reflinks were used."""
    c = TreeCopier()
    c.copy(src, dst)
    return c.reflink
