"""A container's filesystem from the CLI: ``pyd cp``, ``pyd diff``, ``pyd export``, ``pyd commit``.

``cp`` follows the docker CLI (traces §2.7): into a container it stats the destination
(``HEAD .../archive``), builds a tar whose top entry already carries the final name and
``PUT``s it into the destination directory (or, when the destination does not exist, into its
parent); out of a container it ``GET``s the tar and extracts it locally with the same naming
rules (an existing directory receives the source under its own name; anything else is created
or replaced under the destination's name; ``SRC/.`` copies a directory's contents). ``-``
stands for a tar on stdin or stdout.

Local extraction is guarded: entries are renamed only below the chosen top name, nothing is
written outside the destination (tarfile's ``tar`` filter refuses paths that escape, also
through symlinks the archive made), hard links must point inside the archive, and device nodes
from a container are not created on the host.
"""

from __future__ import annotations

import os
import posixpath
import sys
from typing import IO, TYPE_CHECKING, Any, Iterator

import click

from pyd.cli import common

if TYPE_CHECKING:
    import tarfile

    from pyd.client import Client

_GO_DIR = 1 << 31
_GO_SYMLINK = 1 << 27
_KINDS = {0: "C", 1: "A", 2: "D"}


_isatty = common.isatty


# -- cp: argument parsing -------------------------------------------------------------------------


def split_cp_arg(arg: str) -> tuple[str, str]:
    """docker's ``splitCpArg``: ``CONTAINER:PATH`` → (container, path); a local path (absolute,
    without ``:``, or starting with ``.`` such as ``./a:b``) → ("", arg)."""
    if arg.startswith("/"):
        return "", arg
    container, sep, path = arg.partition(":")
    if not sep or container.startswith("."):
        return "", arg
    return container, path


def _specifies_current_dir(path: str) -> bool:
    return path == "." or path.endswith("/.")


def _base(path: str) -> str:
    """The last component of ``path`` after cleaning (``""`` for ``/``)."""
    return posixpath.basename(posixpath.normpath(path).rstrip("/")) if path.strip("/") else ""


def _container_path(path: str) -> str:
    # container paths are relative to the container's root (docker: "/" is optional)
    return path if path.startswith("/") else "/" + path


def _stat(client: Client, container: str, path: str) -> dict[str, Any] | None:
    """The container path's stat (``X-Docker-Container-Path-Stat``), None when it does not exist."""
    import base64
    import json

    from pyd.errors import NotFound

    try:
        resp = client.request("HEAD", f"/containers/{container}/archive", params={"path": path})
    except NotFound:
        return None
    raw = resp.headers.get("x-docker-container-path-stat", "")
    try:
        return json.loads(base64.b64decode(raw)) if raw else {}
    except ValueError:
        return {}


def _decode_stat(raw: str) -> dict[str, Any]:
    import base64
    import json

    try:
        return json.loads(base64.b64decode(raw)) if raw else {}
    except ValueError:
        return {}


# -- cp: out of a container -----------------------------------------------------------------------


class _Namer:
    """Maps archive member names below the archive's top entry to local names.

    ``top`` is the local name for the top entry (None: put its contents directly into the
    destination, i.e. ``SRC/.`` into an existing directory)."""

    def __init__(self, top: str | None) -> None:
        self.top = top
        self.root: str | None = None  # the archive's top name, from its first member

    @staticmethod
    def _clean(name: str) -> str:
        name = name.lstrip("/")
        while name.startswith("./"):
            name = name[2:]
        name = name.rstrip("/")
        return "" if name == "." else name

    def rename(self, name: str) -> str | None:
        name = self._clean(name)
        if self.root is None:
            self.root = name
        root = self.root
        if root == "":
            rel = name
        elif name == root:
            rel = ""
        elif name.startswith(root + "/"):
            rel = name[len(root) + 1 :]
        else:
            return None  # not below the top entry: never written
        if any(part == ".." for part in rel.split("/")):
            return None
        if self.top is None:
            return rel or None
        return f"{self.top}/{rel}" if rel else self.top


def _extract(stream: IO[bytes], dest_dir: str, namer: _Namer) -> None:
    import tarfile

    uid, gid = os.getuid(), os.getgid()
    dest_dir = os.path.realpath(dest_dir)
    renamed: dict[str, tuple[str, bool]] = {}  # member name -> (local name, is a regular file)

    def guard(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        original = member.name
        name = namer.rename(original)
        if name is None:
            return None
        if member.isdev():
            common.warn(f"skipping device node {original}: not created on the host")
            return None
        changes: dict[str, Any] = {"name": name, "uid": uid, "gid": gid, "uname": "", "gname": ""}
        if member.islnk():
            # only to a regular file this archive already wrote: never to a host path or a
            # symlink (whose mode change would follow it)
            target, regular = renamed.get(namer._clean(member.linkname), ("", False))
            if not regular:
                raise click.ClickException(f"invalid archive: hard link {original} -> {member.linkname}")
            changes["linkname"] = target
        renamed[namer._clean(original)] = (name, member.isreg() or member.islnk())
        candidate = member.replace(**changes, deep=False)
        # tarfile's "tar" filter refuses names that escape dest_dir (also through symlinks
        # extracted earlier); its narrowing of modes is not docker's, so the mode is kept
        safe = tarfile.tar_filter(candidate, path)
        return safe.replace(mode=candidate.mode, deep=False) if safe is not None else None

    with tarfile.open(fileobj=stream, mode="r|", errorlevel=1) as tf:
        try:
            tf.extractall(dest_dir, filter=guard, numeric_owner=True)
        except tarfile.FilterError as exc:
            raise click.ClickException(f"refusing to extract: {exc}") from None


def _copy_from_container(client: Client, container: str, src: str, dst: str, follow: bool, quiet: bool) -> None:
    src = _container_path(src)
    if dst == "-":
        resp = client.stream("GET", f"/containers/{container}/archive", params={"path": src})
        out = sys.stdout.buffer
        with resp:
            for chunk in resp.iter_raw():
                out.write(chunk)
        out.flush()
        return
    path = src
    if follow:  # docker evaluates a symlink at SRC (one level) only with -L
        st = _stat(client, container, src)
        if st and st.get("linkTarget"):
            target = st["linkTarget"]
            if not target.startswith("/"):
                target = posixpath.join(posixpath.dirname(posixpath.normpath(src)), target)
            path = posixpath.normpath(target) + ("/." if _specifies_current_dir(src) else "")
    dst = os.path.abspath(dst) + ("/" if dst.endswith("/") else "")
    resp = client.stream("GET", f"/containers/{container}/archive", params={"path": path})
    with resp:
        st = _decode_stat(resp.headers.get("x-docker-container-path-stat", ""))
        is_dir = bool(int(st.get("mode") or 0) & _GO_DIR)
        contents = is_dir and (_specifies_current_dir(src) or _base(src) == "")
        dst_exists = os.path.exists(dst.rstrip("/") or "/")
        if dst_exists and os.path.isdir(dst):
            dest_dir, top = dst, (None if contents else _base(src))
        elif dst_exists:
            if is_dir:
                raise click.ClickException(f"cannot copy a directory to a file: {dst}")
            dest_dir, top = os.path.dirname(dst), os.path.basename(dst)
        else:
            if not is_dir and dst.endswith("/"):
                raise click.ClickException(f"destination directory {dst} does not exist")
            parent = os.path.dirname(dst.rstrip("/"))
            if not os.path.isdir(parent):
                raise click.ClickException(f"destination directory {parent} does not exist")
            dest_dir, top = parent, os.path.basename(dst.rstrip("/"))
        counted = _Counting(resp.iter_raw())
        _extract(counted, dest_dir, _Namer(top))  # type: ignore[arg-type]
    _report(counted.total, dst, quiet)


class _Counting:
    """A file object over an iterator of chunks that counts the bytes read."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._it = chunks
        self._buf = b""
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                piece = next(self._it)
            except StopIteration:
                break
            self.total += len(piece)
            self._buf += piece
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _report(size: int, dst: str, quiet: bool) -> None:
    if not quiet and _isatty(sys.stderr):
        common.warn(f"Successfully copied {common.human_size(size, 3)} to {dst}")


# -- cp: into a container -----------------------------------------------------------------------


def _tar_stream(src: str, top: str | None, follow: bool, keep_ids: bool) -> tuple[IO[bytes], list[BaseException]]:
    """A tar of the local ``src`` (named ``top``; its contents at the top when None) produced
    by a thread into a pipe; errors are collected in the returned list."""
    import tarfile
    import threading

    rfd, wfd = os.pipe()
    errors: list[BaseException] = []

    def owner(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        if not keep_ids:  # docker: without -a the files belong to the container's root
            ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        return ti

    def produce() -> None:
        try:
            with open(wfd, "wb") as out, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                source = os.path.realpath(src) if follow else src.rstrip("/") or "/"
                if top is None:
                    for child in sorted(os.listdir(source)):
                        tf.add(os.path.join(source, child), arcname=child, filter=owner)
                else:
                    tf.add(source, arcname=top, filter=owner)
        except BrokenPipeError:
            pass  # the daemon answered (an error) before the upload ended
        except BaseException as exc:
            errors.append(exc)

    threading.Thread(target=produce, name="pyd-cp-tar", daemon=True).start()
    return open(rfd, "rb"), errors


def _copy_to_container(client: Client, src: str, container: str, dst: str, follow: bool, keep_ids: bool, quiet: bool) -> None:
    dst = _container_path(dst)
    st = _stat(client, container, dst)
    if st is not None and int(st.get("mode") or 0) & _GO_SYMLINK and st.get("linkTarget"):
        target = st["linkTarget"]  # docker evaluates a symlink at the destination (one level)
        if not target.startswith("/"):
            target = posixpath.join(posixpath.dirname(posixpath.normpath(dst)), target)
        dst = target
        st = _stat(client, container, dst)
    dst_is_dir = st is not None and bool(int(st.get("mode") or 0) & _GO_DIR)
    params: dict[str, Any] = {"path": dst, "noOverwriteDirNonDir": "true", "copyUIDGID": "true" if keep_ids else None}
    headers = {"Content-Type": "application/x-tar"}
    if src == "-":
        if not dst_is_dir:
            raise click.ClickException(f'destination "{container}:{dst}" must be a directory')
        counted = _CountingFile(sys.stdin.buffer)
        client.request("PUT", f"/containers/{container}/archive", params=params, body=counted, headers=headers)
        _report(counted.total, f"{container}:{dst}", quiet)
        return
    local = os.path.abspath(src) + ("/." if _specifies_current_dir(src) else "")
    try:
        src_st = os.stat(local) if follow else os.lstat(local.rstrip("/") or "/")
    except FileNotFoundError:
        raise click.ClickException(f"lstat {local}: no such file or directory") from None
    import stat as _stat_mod

    src_is_dir = _stat_mod.S_ISDIR(src_st.st_mode)
    if st is not None and dst_is_dir:
        put_path, top = dst, (None if _specifies_current_dir(src) and src_is_dir else _base(local) or None)
    elif st is not None:
        if src_is_dir:
            raise click.ClickException(f'cannot copy a directory to a file: "{container}:{dst}"')
        put_path, top = posixpath.dirname(dst.rstrip("/")) or "/", posixpath.basename(dst.rstrip("/"))
    else:
        if not src_is_dir and dst.endswith("/"):
            raise click.ClickException(f'destination "{container}:{dst}" does not exist')
        put_path, top = posixpath.dirname(dst.rstrip("/")) or "/", posixpath.basename(dst.rstrip("/"))
    params["path"] = put_path
    source = local[:-2] if local.endswith("/.") else local
    reader, errors = _tar_stream(source, top, follow, keep_ids)
    counted = _CountingFile(reader)
    try:
        client.request("PUT", f"/containers/{container}/archive", params=params, body=counted, headers=headers)
    finally:
        reader.close()
    if errors:
        raise click.ClickException(f"reading {src}: {errors[0]}")
    _report(counted.total, f"{container}:{dst}", quiet)


class _CountingFile:
    """Counts the bytes read from a file object (the upload's size for the report)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.total += len(data)
        return data


# -- commands -----------------------------------------------------------------------------------


@click.command("cp")
@click.option("-a", "--archive", is_flag=True, help="Archive mode (copy all uid/gid information).")
@click.option("-L", "--follow-link", is_flag=True, help="Always follow symbol link in SRC_PATH.")
@click.option("-q", "--quiet", is_flag=True, help="Suppress progress output during copy.")
@click.argument("src", metavar="SRC")
@click.argument("dest", metavar="DEST")
def cp(archive: bool, follow_link: bool, quiet: bool, src: str, dest: str) -> None:
    """Copy files/folders between a container and the local filesystem.

    \b
    pyd cp [OPTIONS] CONTAINER:SRC_PATH DEST_PATH|-
    pyd cp [OPTIONS] SRC_PATH|- CONTAINER:DEST_PATH

    Use '-' as the source to read a tar archive from stdin and extract it to a directory
    destination in a container; use '-' as the destination to stream a tar archive of a
    container source to stdout.
    """
    src_container, src_path = split_cp_arg(src)
    dst_container, dst_path = split_cp_arg(dest)
    if not src_path:
        raise click.ClickException("source can not be empty")
    if not dst_path:
        raise click.ClickException("destination can not be empty")
    if src_container and dst_container:
        raise click.ClickException("copying between containers is not supported")
    if not src_container and not dst_container:
        raise click.ClickException("must specify at least one container source")
    client = common.get_client()
    if src_container:
        _copy_from_container(client, src_container, src_path, dst_path, follow_link, quiet)
    else:
        _copy_to_container(client, src_path, dst_container, dst_path, follow_link, archive, quiet)


@click.command("diff")
@click.argument("container")
def diff(container: str) -> None:
    """Inspect changes to files or directories on a container's filesystem
    (A: added, C: changed, D: deleted)."""
    changes = common.get_client().get(f"/containers/{container}/changes") or []
    common.write("".join(f"{_KINDS.get(ch.get('Kind'), '?')} {ch.get('Path')}\n" for ch in changes))


@click.command("export")
@click.option("-o", "--output", metavar="FILE", help="Write to a file, instead of STDOUT.")
@click.argument("container")
def export(output: str | None, container: str) -> None:
    """Export a container's filesystem as a tar archive (to STDOUT by default)."""
    common.save_stream(f"/containers/{container}/export", "GET", None, output)


_TRUE = ("1", "t", "true", "yes", "y", "on")
_FALSE = ("0", "f", "false", "no", "n", "off")


class _CommitCommand(click.Command):
    """Accepts docker's ``--pause=false`` / ``-p=false`` spelling of the bool flag."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out = []
        for i, arg in enumerate(args):
            if arg == "--":
                out.extend(args[i:])
                break
            name, eq, value = arg.partition("=")
            if eq and name in ("-p", "--pause"):
                if value.lower() in _TRUE:
                    arg = "--pause"
                elif value.lower() in _FALSE:
                    arg = "--no-pause"
                else:
                    raise click.BadParameter(f"invalid boolean value {value!r}", param_hint="--pause")
            out.append(arg)
        return super().parse_args(ctx, out)


def split_reference(ref: str) -> tuple[str, str]:
    """``REPO[:TAG]`` → (repo, tag); a colon before the last ``/`` is a registry port."""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1 :]
    return ref, ""


@click.command("commit", cls=_CommitCommand)
@click.option("-a", "--author", default="", help='Author (e.g., "John Hannibal Smith <hannibal@a-team.com>").')
@click.option("-c", "--change", "changes", multiple=True, metavar="LIST", help="Apply Dockerfile instruction to the created image; repeatable.")
@click.option("-m", "--message", default="", help="Commit message.")
@click.option("-p", "--pause/--no-pause", default=True, help="Pause container during commit [true]; --pause=false to not.")
@click.argument("container")
@click.argument("repository", metavar="[REPOSITORY[:TAG]]", required=False)
def commit(author: str, changes: tuple[str, ...], message: str, pause: bool, container: str, repository: str | None) -> None:
    """Create a new image from a container's changes."""
    if repository and "@" in repository:
        raise click.ClickException("refusing to create a tag with a digest reference")
    repo, tag = split_reference(repository) if repository else ("", "")
    params = {
        "container": container,
        "repo": repo or None,
        "tag": tag or None,
        "comment": message or None,
        "author": author or None,
        "changes": list(changes) or None,
        "pause": pause,
    }
    result = common.get_client().post("/commit", params=params)
    common.write(f"{result['Id']}\n")
