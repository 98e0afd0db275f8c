"""``docker commit``: a container's read-write layer becomes a new image on top of its image.

Steps, as moby's ``CreateImageFromContainer``/``CommitImage``:

1. check everything the user gave (``--change`` instructions, the target ``repo:tag``, the
   optional container ``Config`` body) before anything is paused or written;
2. pause the container (the default, so the layer is a consistent snapshot; a container
   that is already paused or not running is left as it is);
3. take the rw layer's diff from the graph driver and register it as a layer on top of the
   image's chain. The mount points pyd creates in the rw layer for the generated
   ``/etc/hostname``, ``/etc/hosts`` and ``/etc/resolv.conf`` are left out (Docker keeps them
   in an init layer that a commit never includes). A container with no changes gives an image
   with no new layer, its history entry marked ``empty_layer``;
4. write the image config: the parent's rootfs and history plus the new layer and entry,
   ``config`` = the user's config (or the container's) with the changes applied and then merged
   with the container's config (moby's ``merge``), ``container_config``, ``container``,
   ``author``, ``comment``, ``created``; the parent image is recorded;
5. tag it (``repo``/``tag``), emit the ``commit`` container event, unpause.

The container's lock is held throughout, so it cannot be started, stopped or removed while its
layer is read.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator, Mapping

from pyd import __version__
from pyd.engine import image_config
from pyd.engine.images import go_arch, now_rfc3339
from pyd.engine.layers import chain_ids
from pyd.engine.reference import parse_repo_tag
from pyd.errors import Conflict, InvalidParameter, NotFound, Unavailable

if TYPE_CHECKING:
    from pyd.engine.container_record import Container
    from pyd.engine.containers import ContainerService
    from pyd.engine.images import Image, ImageService
    from pyd.engine.layers import LayerStore

log = logging.getLogger(__name__)

# Files pyd creates in the rw layer as bind-mount targets (see ContainerService._build_spec).
GENERATED_FILES = frozenset({"etc/hostname", "etc/hosts", "etc/resolv.conf"})
_BLOCK = 512
_COPY = 1 << 16


@dataclass
class CommitRequest:
    """What ``POST /commit`` carries (query parameters and the optional JSON body)."""

    container: str
    repo: str = ""
    tag: str = ""
    author: str = ""
    comment: str = ""
    pause: bool = True
    changes: tuple[str, ...] = ()
    config: Mapping[str, Any] | None = None  # a container Config; None: the container's own


# -- the config ------------------------------------------------------------------------------


def merge_config(user: dict[str, Any], container: Mapping[str, Any]) -> dict[str, Any]:
    """moby's ``merge(userConf, imageConf)`` for commit: fill what ``user`` leaves unset from
    the container's config (``User``, ports, env, labels, ``Cmd``/``Entrypoint``, health check,
    ``WorkingDir``, volumes, ``StopSignal``). Returns a new dict."""
    out = dict(user)
    if not out.get("User"):
        out["User"] = container.get("User") or ""
    ports = dict(out.get("ExposedPorts") or {})
    for port, value in (container.get("ExposedPorts") or {}).items():
        ports.setdefault(port, value)
    out["ExposedPorts"] = ports or None
    env = list(out.get("Env") or [])
    keys = {e.partition("=")[0] for e in env}
    for e in container.get("Env") or []:
        if e.partition("=")[0] not in keys:
            env.append(e)
    out["Env"] = env or None
    labels = dict(container.get("Labels") or {})
    labels.update(out.get("Labels") or {})
    out["Labels"] = labels
    if not out.get("Entrypoint"):
        if not out.get("Cmd"):
            out["Cmd"] = container.get("Cmd")
            if container.get("ArgsEscaped"):
                out["ArgsEscaped"] = True
        if out.get("Entrypoint") is None:
            out["Entrypoint"] = container.get("Entrypoint")
    theirs = container.get("Healthcheck")
    if theirs:
        mine = dict(out.get("Healthcheck") or {})
        if not mine.get("Test"):
            mine["Test"] = theirs.get("Test")
        for key in ("Interval", "Timeout", "StartPeriod", "Retries"):
            if not mine.get(key) and theirs.get(key):
                mine[key] = theirs[key]
        out["Healthcheck"] = mine
    if not out.get("WorkingDir"):
        out["WorkingDir"] = container.get("WorkingDir") or ""
    volumes = dict(out.get("Volumes") or {})
    volumes.update(container.get("Volumes") or {})
    out["Volumes"] = volumes or None
    if not out.get("StopSignal") and container.get("StopSignal"):
        out["StopSignal"] = container["StopSignal"]
    return image_config.ordered_config(out)


def new_config(req: CommitRequest, container_config: Mapping[str, Any]) -> dict[str, Any]:
    """The new image's ``config``: the request's config (or the container's) with the
    ``--change`` instructions applied, then merged with the container's config."""
    base = req.config if req.config is not None else container_config
    if not isinstance(base, Mapping):
        raise InvalidParameter("invalid commit body: expected a container Config object")
    changed = image_config.apply_changes(dict(base), list(req.changes))
    return merge_config(changed, container_config)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def image_document(
    *,
    parent: Image | None,
    base_diff_ids: list[str],
    diff_id: str | None,
    container: Container,
    config: dict[str, Any],
    author: str,
    comment: str,
) -> bytes:
    """The new image config in the field order of moby's ``image.Image`` (the ID is the
    digest of these bytes)."""
    created = now_rfc3339()
    pcfg = parent.config if parent is not None else {}
    entry: dict[str, Any] = {"created": created}
    if author:
        entry["author"] = author
    entry["created_by"] = " ".join(container.config.get("Cmd") or [])
    if comment:
        entry["comment"] = comment
    if diff_id is None:
        entry["empty_layer"] = True
    doc: dict[str, Any] = {}
    if comment:
        doc["comment"] = comment
    doc["created"] = created
    doc["container"] = container.id
    doc["container_config"] = image_config.ordered_config(container.config)
    doc["docker_version"] = __version__
    if author:
        doc["author"] = author
    doc["config"] = config
    doc["architecture"] = pcfg.get("architecture") or go_arch()
    if pcfg.get("variant"):
        doc["variant"] = pcfg["variant"]
    doc["os"] = "linux"
    doc["rootfs"] = {"type": "layers", "diff_ids": base_diff_ids + ([diff_id] if diff_id else [])}
    doc["history"] = list(pcfg.get("history") or []) + [entry]
    if pcfg.get("os.version"):
        doc["os.version"] = pcfg["os.version"]
    return _dumps(doc)


# -- the layer -------------------------------------------------------------------------------


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a PAX extended header (``"<len> path=<value>\\n"`` records)."""
    pos, found = 0, None
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            break
        if length <= 0:
            break
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        if key == b"path":
            found = value.decode("utf-8", "surrogateescape")
        pos += length
    return found


def _norm(name: str) -> str:
    name = name.strip("/")
    while name.startswith("./"):
        name = name[2:]
    return "" if name == "." else name


class LayerFilter:
    """A layer tar with the generated ``/etc`` mount-point files taken out, streamed through.

    ``/etc`` itself is held back and written only if something else below it remains (it is
    "changed" only because the mount points were created in it). Member headers are copied
    byte for byte; ``kept`` counts the members that remain, so a commit can tell an empty diff.
    """

    def __init__(self, src: BinaryIO, drop: frozenset[str] = GENERATED_FILES) -> None:
        self.src = src
        self.drop = drop
        self.kept = 0
        self.ended = False

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            data = self.src.read(n - len(out))
            if not data:
                raise InvalidParameter("the container's layer diff ended in the middle of a tar member")
            out += data
        return out

    def _skip(self, n: int) -> Iterator[bytes]:
        while n > 0:
            data = self.src.read(min(n, _COPY))
            if not data:
                raise InvalidParameter("the container's layer diff ended in the middle of a tar member")
            n -= len(data)
            yield data

    def chunks(self) -> Iterator[bytes]:
        pending: list[bytes] = []  # extended headers (PAX, GNU long names) of the next member
        long_name: str | None = None
        pax_name: str | None = None
        held_etc: bytes | None = None
        etc_child = False
        while True:
            head = self.src.read(_BLOCK)
            if head and len(head) < _BLOCK:
                head += self._read(_BLOCK - len(head))
            if not head or head == bytes(_BLOCK):
                if held_etc is not None and etc_child:
                    self.kept += 1
                    yield held_etc
                self.ended = True
                yield bytes(2 * _BLOCK)  # a tar's end, whatever padding the source had
                return
            typ = head[156:157]
            size = _octal(head[124:136])
            padded = (size + _BLOCK - 1) // _BLOCK * _BLOCK
            if typ in (b"x", b"L", b"K"):
                data = self._read(padded)
                if typ == b"x":
                    pax_name = _pax_path(data[:size]) or pax_name
                elif typ == b"L":
                    long_name = data[:size].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                pending.append(head + data)
                continue
            if typ == b"g":  # a global header applies to everything after it: keep it
                yield head + self._read(padded)
                continue
            name = pax_name or long_name
            if name is None:
                name = head[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                if head[257:263] == b"ustar\0":
                    prefix = head[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    if prefix:
                        name = f"{prefix}/{name}"
            path = _norm(name)
            raw = b"".join(pending) + head
            pending, long_name, pax_name = [], None, None
            if path in self.drop and typ in (b"0", b"\0", b"7"):
                for _ in self._skip(padded):
                    pass
                continue
            if path == "etc" and typ == b"5" and not etc_child and held_etc is None:
                held_etc = raw  # directories carry no data
                continue
            if path.startswith("etc/") and not etc_child:
                etc_child = True
                if held_etc is not None:
                    self.kept += 1
                    yield held_etc
                    held_etc = None
            self.kept += 1
            yield raw
            yield from self._skip(padded)


class _ChunkReader:
    """A minimal file object over an iterator of bytes (what ``LayerStore.register`` reads)."""

    def __init__(self, chunks: Iterable[bytes], first: bytes = b"") -> None:
        self._it = iter(chunks)
        self._buf = first

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            out = self._buf + b"".join(self._it)
            self._buf = b""
            return out
        while len(self._buf) < n:
            try:
                self._buf += next(self._it)
            except StopIteration:
                break
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def base_diff_ids(layers: LayerStore, parent: Image | None, top_chain: str | None) -> list[str]:
    """The diff IDs of the chain the container's layer sits on (from the image, or, if the
    image was force-removed meanwhile, from the layer store's records)."""
    if parent is not None and parent.top_chain == top_chain:
        return parent.diff_ids
    out: list[str] = []
    chain = top_chain
    while chain is not None:
        layer = layers.lookup(chain)
        if layer is None:
            raise NotFound(f"layer {chain} of the container's image does not exist")
        out.insert(0, layer.diff_id)
        chain = layer.parent
    if top_chain is not None and chain_ids(out)[-1] != top_chain:
        raise Conflict(f"the layer records of chain {top_chain} are inconsistent")
    return out


def commit_layers(
    layers: LayerStore,
    images: ImageService,
    c: Container,
    req: CommitRequest,
    config: dict[str, Any],
) -> Image:
    """Blocking part of a commit (worker thread): diff, register, write the image config."""
    top_chain: str | None = c.pyd.get("ImageTopChain")
    parent = images.get_by_id(c.image_id)
    base = base_diff_ids(layers, parent, top_chain)
    diff = layers.rw_diff(c.id)
    held = None
    try:
        filt = LayerFilter(diff)
        chunks = filt.chunks()
        first = next(chunks)
        if filt.ended and filt.kept == 0:
            diff_id = None  # nothing changed: an empty layer, as Docker records it
        else:
            held = layers.register(_ChunkReader(chunks, first), top_chain)  # type: ignore[arg-type]
            diff_id = held.diff_id
    finally:
        diff.close()
    try:
        raw = image_document(parent=parent, base_diff_ids=base, diff_id=diff_id, container=c, config=config,
                             author=req.author, comment=req.comment)
        return images.create(raw, parent=parent.id if parent is not None else "")
    finally:
        if held is not None:
            layers.release(held.chain_id)  # the image holds its own reference now


# -- the service call ----------------------------------------------------------------------------


async def commit_container(svc: ContainerService, req: CommitRequest) -> str:
    """``POST /commit``: returns the new image's ID (``sha256:...``)."""
    if svc.images is None or svc.layers is None:
        raise Unavailable("no storage driver is available: containers cannot be committed")
    if not req.container:
        raise InvalidParameter("commit needs a container (the container= parameter)")
    if req.tag and not req.repo:
        raise InvalidParameter(f"tag {req.tag!r} was given without a repository")
    ref = parse_repo_tag(req.repo, req.tag) if req.repo else None  # 400 before anything happens
    c = svc.get(req.container)
    config = new_config(req, c.config)
    images, layers = svc.images, svc.layers
    rt = svc.runtime(c.id)
    async with rt.lock:
        if c.state.dead:
            raise Conflict(f"You cannot commit container {c.id} which is Dead")
        if c.state.removing:
            raise Conflict(f"You cannot commit container {c.id} which is being removed")
        paused_here = False
        if req.pause and c.state.running and not c.state.paused and not c.state.restarting:
            await svc.run(svc._exec_driver().pause, c.id)
            c.state.paused = paused_here = True
            svc._save_quietly(c)
            svc._emit(c, "pause")
        try:
            img = await svc.run(commit_layers, layers, images, c, req, config, timeout=None)
        finally:
            if paused_here:
                await _unpause(svc, c)
    shown = ""
    if ref is not None:
        shown = (await svc.run(images.tag, img.id, req.repo, req.tag)).familiar()
    svc._emit(c, "commit", comment=req.comment, imageID=img.id, imageRef=shown)
    return img.id


async def _unpause(svc: ContainerService, c: Container) -> None:
    try:
        await svc.run(svc._exec_driver().resume, c.id)
    except NotFound:
        pass  # it exited meanwhile
    except Exception:
        log.exception("cannot unpause container %s after its commit", c.id[:12])
        return
    c.state.paused = False
    svc._save_quietly(c)
    svc._emit(c, "unpause")
