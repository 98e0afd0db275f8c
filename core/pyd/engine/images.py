"""The image service: image configs by content, references, import, load/save, delete, prune.

Images are their config JSON, stored by content: the image ID is the sha256 of the bytes
(``<root>/imagedb/content/sha256/<id>``, moby's layout), with per-image metadata (parent
image, last tag time) beside it. The config names its layers by diff ID
(``rootfs.diff_ids``); the top chain ID follows from them, and each image holds one
reference on it in the layer store. Names (``busybox:latest``) live in the reference store.

An image becomes visible only once everything it needs is on disk and verified: layers are
registered (and checked against the diff IDs) first, then the config is written atomically,
then the tags. A crash in between leaves unreferenced layers, which the layer store's
``gc()`` removes at the next start.

Dictionaries returned by ``list_images``, ``inspect``, ``history``, ``delete``, ``prune``
and ``df`` are in the Docker Engine API's shapes (v1.41).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import posixpath
import re
import shutil
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Protocol

from pyd import __version__
from pyd.engine import image_config
from pyd.engine.layers import Layer, LayerStore, chain_ids, decompressed
from pyd.engine.reference import (
    Reference,
    ReferenceStore,
    familiar_match,
    parse_normalized,
    parse_repo_tag,
)
from pyd.engine.store import atomic_write
from pyd.errors import Conflict, InvalidParameter, NotFound, PydError

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"^[a-f0-9]{64}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_ZERO_TIME = "0001-01-01T00:00:00Z"
_MAX_JSON = 32 << 20  # manifest.json and image configs in an archive

# (container ID, running) for each container made from an image; provided by the containers
# service once it exists.
ContainersUsing = Callable[[str], list[tuple[str, bool]]]


class EventSink(Protocol):
    """What the image service needs of the events service (``pyd.engine.events.EventBus``)."""

    def emit(self, type: str, action: str, actor_id: str, attributes: Mapping[str, str] | None = None) -> Any:
        ...

# A progress or result message in Docker's JSON message shape.
Emit = Callable[[dict[str, Any]], None]

_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def go_arch() -> str:
    m = platform.machine()
    return _GOARCH.get(m, m)


def now_rfc3339() -> str:
    """The current UTC time as Go's RFC 3339 with nanoseconds (trailing zeros trimmed)."""
    ns = time.time_ns()
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))
    frac = f"{ns % 1_000_000_000:09d}".rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def parse_time(value: str | None) -> float:
    """Unix seconds of an RFC 3339 time as Go writes it (any fraction length); 0 if unset."""
    if not value:
        return 0.0
    m = _TIME_RE.match(value)
    if not m:
        return 0.0
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    dt = datetime.fromisoformat(m.group(1) + tz)
    return dt.timestamp() + (float("0." + m.group(2)) if m.group(2) else 0.0)


def _dumps(obj: Any) -> bytes:
    """Compact JSON like Go's encoder (no spaces, non-ASCII kept)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def human_size(n: float) -> str:
    """Go's ``units.HumanSize``: decimal units, four significant digits (``1.997MB``)."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1000.0
        i += 1
    return f"{n:.4g}{units[i]}"


def progress_message(status: str, ident: str, current: int, total: int) -> dict[str, Any]:
    """A Docker JSON progress message (``progressDetail`` plus the rendered bar)."""
    width = 50
    bar = ""
    if total > 0:
        filled = min(width, int(width * current / total))
        bar = "[" + "=" * max(filled - 1, 0) + (">" if filled else "") + " " * (width - filled) + "] "
        text = f"{human_size(current)}/{human_size(total)}"
    else:
        text = human_size(current)
    return {
        "status": status,
        "progressDetail": {"current": current, "total": total},
        "progress": f"{bar}{text:>18}",
        "id": ident,
    }


# -- image objects and their store ------------------------------------------------------------


@dataclass
class Image:
    id: str  # "sha256:<hex>"
    raw: bytes  # the config as stored; sha256(raw) is the ID
    config: dict[str, Any]
    parent: str = ""  # parent image ID (commit/build), or ""
    last_tag_time: str = ""
    chains: list[str] = field(default_factory=list)  # chain ID per layer, bottom first

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config["rootfs"]["diff_ids"])

    @property
    def top_chain(self) -> str | None:
        return self.chains[-1] if self.chains else None

    @property
    def created(self) -> str:
        return str(self.config.get("created") or _ZERO_TIME)

    @property
    def created_ts(self) -> float:
        return parse_time(self.config.get("created"))

    @property
    def created_unix(self) -> int:
        return int(self.created_ts)

    @property
    def labels(self) -> dict[str, str] | None:
        cfg = self.config.get("config") or {}
        return cfg.get("Labels")


def parse_image_config(raw: bytes, what: str = "image config") -> dict[str, Any]:
    """Parse and check an image config; ``InvalidParameter`` naming ``what`` if unusable."""
    try:
        cfg = json.loads(raw)
    except ValueError as exc:
        raise InvalidParameter(f"invalid {what}: not JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise InvalidParameter(f"invalid {what}: not a JSON object")
    rootfs = cfg.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise InvalidParameter(f'invalid {what}: rootfs.type must be "layers"')
    diff_ids = rootfs.get("diff_ids") or []
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) and _DIGEST.match(d) for d in diff_ids):
        raise InvalidParameter(f"invalid {what}: rootfs.diff_ids must be a list of sha256 digests")
    rootfs["diff_ids"] = diff_ids
    os_name = cfg.get("os") or "linux"
    if os_name != "linux":
        raise InvalidParameter(f'image operating system "{os_name}" cannot be used on this platform')
    if cfg.get("config") is not None and not isinstance(cfg.get("config"), dict):
        raise InvalidParameter(f"invalid {what}: config must be an object")
    return cfg


class ImageStore:
    """Image configs by content and their metadata, as moby's ``imagedb``."""

    def __init__(self, root: Path) -> None:
        self.content = root / "content" / "sha256"
        self.meta = root / "metadata" / "sha256"
        self.content.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.meta.mkdir(parents=True, exist_ok=True, mode=0o700)

    def ids(self) -> list[str]:
        return [f"sha256:{p.name}" for p in self.content.iterdir() if _HEX64.match(p.name)]

    def read(self, image_id: str) -> bytes:
        return (self.content / image_id.split(":", 1)[1]).read_bytes()

    def write(self, raw: bytes) -> str:
        hexid = hashlib.sha256(raw).hexdigest()
        path = self.content / hexid
        if not path.exists():
            atomic_write(path, raw)
        return f"sha256:{hexid}"

    def get_meta(self, image_id: str, key: str) -> str:
        try:
            return (self.meta / image_id.split(":", 1)[1] / key).read_text().strip()
        except FileNotFoundError:
            return ""

    def set_meta(self, image_id: str, key: str, value: str) -> None:
        d = self.meta / image_id.split(":", 1)[1]
        d.mkdir(exist_ok=True, mode=0o700)
        atomic_write(d / key, value.encode())

    def delete(self, image_id: str) -> None:
        hexid = image_id.split(":", 1)[1]
        shutil.rmtree(self.meta / hexid, ignore_errors=True)
        try:
            os.unlink(self.content / hexid)
        except FileNotFoundError:
            pass


# -- the service ----------------------------------------------------------------------------


@dataclass
class _Conflict:
    message: str
    hard: bool
    used: bool = False


class ImageService:
    """Everything ``/images/*`` does. Thread-safe; all methods may block (call them from a
    worker thread)."""

    def __init__(
        self,
        layers: LayerStore,
        root: Path,
        *,
        containers_using: ContainersUsing | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.layers = layers
        self.root = Path(root)
        self.store = ImageStore(self.root / "imagedb")
        self.refs = ReferenceStore(self.root / "repositories.json")
        self.tmp = self.root / "tmp"
        self.containers_using: ContainersUsing = containers_using or (lambda image_id: [])
        self.events: EventSink | None = events
        self._lock = threading.RLock()
        self._images: dict[str, Image] = {}
        self.tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        for leftover in self.tmp.iterdir():  # spooled uploads of an interrupted load
            _remove_path(leftover)
        self._restore()

    # -- start-up ------------------------------------------------------------------------

    def _restore(self) -> None:
        for image_id in self.store.ids():
            try:
                raw = self.store.read(image_id)
                if "sha256:" + hashlib.sha256(raw).hexdigest() != image_id:
                    raise InvalidParameter("content does not match its digest")
                img = self._image(image_id, raw)
                if img.top_chain:
                    self.layers.get(img.top_chain)
            except (OSError, PydError) as exc:
                log.warning("image %s is unusable and is skipped: %s", image_id, exc)
                continue
            self._images[image_id] = img
        self.layers.gc()

    def _image(self, image_id: str, raw: bytes) -> Image:
        cfg = parse_image_config(raw)
        return Image(
            id=image_id,
            raw=raw,
            config=cfg,
            parent=self.store.get_meta(image_id, "parent"),
            last_tag_time=self.store.get_meta(image_id, "lastUpdated"),
            chains=chain_ids(cfg["rootfs"]["diff_ids"]),
        )

    def _event(self, action: str, image_id: str, name: str = "") -> None:
        if self.events is not None:
            try:
                self.events.emit("image", action, image_id, {"name": name or image_id})
            except Exception:  # an event sink must not break an image operation
                log.exception("image event %s failed", action)

    # -- lookup --------------------------------------------------------------------------

    def count(self) -> int:
        with self._lock:
            return len(self._images)

    def images(self) -> list[Image]:
        with self._lock:
            return list(self._images.values())

    def get_by_id(self, image_id: str) -> Image | None:
        with self._lock:
            return self._images.get(image_id)

    def resolve(self, name: str) -> Image:
        """The image that ``name`` means to Docker: a reference (``busybox``, ``x:1``,
        ``repo@sha256:...``), a full ID (``sha256:...`` or 64 hex) or a unique ID prefix.

        ``NotFound`` ("No such image: busybox:latest"); ``InvalidParameter`` for a name
        outside the grammar.
        """
        if _HEX64.match(name) or _DIGEST.match(name):
            img = self.get_by_id(name if name.startswith("sha256:") else f"sha256:{name}")
            if img is None:
                raise NotFound(f"No such image: {name}")
            return img
        try:
            ref = parse_normalized(name)
        except InvalidParameter:
            if name.startswith("sha256:"):  # a short "sha256:abc" prefix
                return self._by_prefix(name, name)
            raise
        image_id = self.refs.get(ref)
        if image_id is not None:
            img = self.get_by_id(image_id)
            if img is not None:
                return img
        return self._by_prefix(name, ref.tagged_or_latest().familiar())

    def _by_prefix(self, name: str, shown: str) -> Image:
        prefix = name[7:] if name.startswith("sha256:") else name
        if re.match(r"^[a-f0-9]+$", prefix):
            with self._lock:
                hits = [img for iid, img in self._images.items() if iid[7:].startswith(prefix)]
            if len(hits) == 1:
                return hits[0]
        raise NotFound(f"No such image: {shown}")

    def _tags(self, image_id: str) -> tuple[list[Reference], list[Reference]]:
        """(tagged, digested) references of an image."""
        refs = self.refs.references(image_id)
        return [r for r in refs if r.tag], [r for r in refs if r.digest]

    def children(self, image_id: str) -> list[str]:
        with self._lock:
            return [i.id for i in self._images.values() if i.parent == image_id]

    # -- list / inspect / history --------------------------------------------------------

    def _summary(self, img: Image) -> dict[str, Any]:
        size = self.layers.size(img.top_chain)
        return {
            "Containers": -1,
            "Created": img.created_unix,
            "Id": img.id,
            "Labels": img.labels,
            "ParentId": img.parent,
            "RepoDigests": None,
            "RepoTags": None,
            "SharedSize": -1,
            "Size": size,
            "VirtualSize": size,
        }

    def list_images(
        self, *, all: bool = False, filters: dict[str, list[str]] | None = None
    ) -> list[dict[str, Any]]:
        """``GET /images/json``: filters ``dangling``, ``label``, ``before``, ``since``,
        ``reference``; without ``all``, intermediate images (untagged parents) are hidden."""
        return self._list(all=all, filters=filters or {}, extra=False)

    def _list(self, *, all: bool, filters: dict[str, list[str]], extra: bool) -> list[dict[str, Any]]:
        for key in filters:
            if key not in ("dangling", "label", "before", "since", "reference"):
                raise InvalidParameter(f"Invalid filter '{key}'")
        dangling: bool | None = None
        for value in filters.get("dangling", []):
            v = value.lower()
            if v in ("true", "1"):
                dangling = True
            elif v in ("false", "0"):
                dangling = False
            else:
                raise InvalidParameter(f"Invalid filter 'dangling={value}'")
        before = min((self.resolve(v).created_ts for v in filters.get("before", [])), default=None)
        since = max((self.resolve(v).created_ts for v in filters.get("since", [])), default=None)
        labels = filters.get("label", [])
        patterns = filters.get("reference", [])
        images = self.images()
        parents = {i.parent for i in images if i.parent}
        out: list[tuple[float, dict[str, Any]]] = []
        for img in images:
            if before is not None and img.created_ts >= before:
                continue
            if since is not None and img.created_ts <= since:
                continue
            if labels and not _match_labels(img.labels or {}, labels):
                continue
            summary = self._summary(img)
            tags: list[str] = []
            digests: list[str] = []
            for ref in self.refs.references(img.id):
                if patterns and not any(familiar_match(p, ref) for p in patterns):
                    continue
                if ref.digest:
                    digests.append(ref.familiar())
                if ref.tag:
                    tags.append(ref.familiar())
            if not tags and not digests:
                if all or img.id not in parents:
                    if dangling is False or patterns:
                        continue
                    summary["RepoDigests"] = ["<none>@<none>"]
                    summary["RepoTags"] = ["<none>:<none>"]
                else:
                    continue
            else:
                if dangling is True and tags:
                    continue
                summary["RepoTags"] = tags or None
                summary["RepoDigests"] = digests or None
            out.append((img.created_ts, summary))
        out.sort(key=lambda t: t[0], reverse=True)
        rows = [summary for _, summary in out]
        if extra:
            self._add_usage(rows)
        return rows

    def _add_usage(self, summaries: list[dict[str, Any]]) -> None:
        """``system df``: real ``Containers`` counts and ``SharedSize``."""
        chains = {}
        uses: dict[str, int] = {}
        for s in summaries:
            img = self.get_by_id(s["Id"])
            chains[s["Id"]] = img.chains if img else []
            for c in chains[s["Id"]]:
                uses[c] = uses.get(c, 0) + 1
        for s in summaries:
            s["Containers"] = len(self.containers_using(s["Id"]))
            shared = 0
            for c in chains[s["Id"]]:
                if uses.get(c, 0) > 1:
                    layer = self.layers.lookup(c)
                    shared += layer.size if layer else 0
            s["SharedSize"] = shared

    def inspect(self, name: str) -> dict[str, Any]:
        """``GET /images/{name}/json``."""
        img = self.resolve(name)
        tags, digests = self._tags(img.id)
        cfg = img.config
        size = self.layers.size(img.top_chain)
        data: dict[str, str] | None = None
        if img.top_chain:
            try:
                data = self.layers.metadata(img.top_chain)
            except Exception as exc:  # inspect still answers if the driver cannot
                log.warning("graph driver metadata of %s failed: %s", img.id, exc)
        out: dict[str, Any] = {
            "Id": img.id,
            "RepoTags": [r.familiar() for r in tags],
            "RepoDigests": [r.familiar() for r in digests],
            "Parent": img.parent,
            "Comment": cfg.get("comment", ""),
            "Created": img.created,
            "Container": cfg.get("container", ""),
            "ContainerConfig": image_config.ordered_config(cfg.get("container_config")),
            "DockerVersion": cfg.get("docker_version", ""),
            "Author": cfg.get("author", ""),
            "Config": image_config.ordered_config(cfg.get("config")) if cfg.get("config") is not None else None,
            "Architecture": cfg.get("architecture", ""),
        }
        if cfg.get("variant"):
            out["Variant"] = cfg["variant"]
        out["Os"] = cfg.get("os", "linux")
        if cfg.get("os.version"):
            out["OsVersion"] = cfg["os.version"]
        out.update(
            {
                "Size": size,
                "VirtualSize": size,
                "GraphDriver": {"Data": data, "Name": self.layers.driver_name},
                "RootFS": {"Type": "layers", "Layers": img.diff_ids} if img.diff_ids else {"Type": "layers"},
                "Metadata": {"LastTagTime": img.last_tag_time or _ZERO_TIME},
            }
        )
        return out

    def history(self, name: str) -> list[dict[str, Any]]:
        """``GET /images/{name}/history``: newest first."""
        img = self.resolve(name)
        items: list[dict[str, Any]] = []
        layer_index = 0
        for h in img.config.get("history") or []:
            size = 0
            if not h.get("empty_layer"):
                if layer_index >= len(img.chains):
                    raise InvalidParameter(f"image {img.id}: too many non-empty layers in History section")
                layer = self.layers.lookup(img.chains[layer_index])
                size = layer.size if layer else 0
                layer_index += 1
            items.insert(0, {
                "Comment": h.get("comment", ""),
                "Created": int(parse_time(h.get("created"))),
                "CreatedBy": h.get("created_by", ""),
                "Id": "<missing>",
                "Size": size,
                "Tags": None,
            })
        cur: Image | None = img
        for item in items:
            if cur is None:
                break
            item["Id"] = cur.id
            tags = [r.familiar() for r in self._tags(cur.id)[0]]
            item["Tags"] = tags or None
            cur = self.get_by_id(cur.parent) if cur.parent else None
        return items

    # -- create / tag --------------------------------------------------------------------

    def create(self, raw: bytes, *, parent: str = "") -> Image:
        """Store a config whose layers already exist; the image takes its layer reference.

        Used by import, load and (later) commit. Returns the existing image if the same
        config is already stored.
        """
        cfg = parse_image_config(raw)
        chains = chain_ids(cfg["rootfs"]["diff_ids"])
        with self._lock:
            image_id = "sha256:" + hashlib.sha256(raw).hexdigest()
            existing = self._images.get(image_id)
            if existing is not None:
                return existing
            if chains:
                self.layers.get(chains[-1])  # NotFound if a layer is missing
            try:
                self.store.write(raw)
                if parent:
                    self.store.set_meta(image_id, "parent", parent)
            except BaseException:
                if chains:
                    self.layers.release(chains[-1])
                raise
            img = Image(image_id, raw, cfg, parent, "", chains)
            self._images[image_id] = img
            return img

    def tag(self, name: str, repo: str, tag: str = "") -> Reference:
        """``POST /images/{name}/tag``: point ``repo[:tag]`` at the image (moving the tag)."""
        img = self.resolve(name)
        if not repo:
            raise InvalidParameter("repository name must have at least one component")
        ref = parse_repo_tag(repo, tag)
        self._add_ref(ref, img.id)
        self._event("tag", img.id, ref.familiar())
        return ref

    def _add_ref(self, ref: Reference, image_id: str) -> None:
        if ref.name == "docker.io/library/sha256":
            raise InvalidParameter("refusing to create an ambiguous tag using digest algorithm as name")
        self.refs.add(ref, image_id, force=True)
        stamp = now_rfc3339()
        self.store.set_meta(image_id, "lastUpdated", stamp)
        with self._lock:
            img = self._images.get(image_id)
            if img is not None:
                img.last_tag_time = stamp

    # -- delete / prune ------------------------------------------------------------------

    def delete(self, name: str, *, force: bool = False, prune: bool = True) -> list[dict[str, str]]:
        """``DELETE /images/{name}``: untag first; delete the image only when nothing else
        refers to it. Returns Docker's list of ``{"Untagged": ...}`` / ``{"Deleted": ...}``."""
        dropped: list[Layer] = []
        try:
            return self._delete(name, force, prune, dropped)
        finally:
            self.layers.purge(dropped)  # driver work outside the service lock

    def _delete(self, name: str, force: bool, prune: bool, dropped: list[Layer]) -> list[dict[str, str]]:
        with self._lock:
            img = self.resolve(name)
            records: list[dict[str, str]] = []
            refs = self.refs.references(img.id)
            by_id = img.id.startswith(name) or img.id[7:].startswith(name)
            removed_ref = False
            if not by_id:
                ref = parse_normalized(name).tagged_or_latest()
                if not force:
                    users = self.containers_using(img.id)
                    if users and len(refs) == 1:
                        raise Conflict(
                            f'conflict: unable to remove repository reference "{name}" (must force) - '
                            f"container {users[0][0][:12]} is using its referenced image {img.id[7:19]}"
                        )
                self.refs.delete(ref)
                self._event("untag", img.id, ref.familiar())
                records.append({"Untagged": ref.familiar()})
                refs = self.refs.references(img.id)
                # A removed tag whose repository keeps only digest references takes them too.
                if not ref.digest and not [r for r in refs if not r.digest and r.name == ref.name]:
                    for r in [r for r in refs if r.digest and r.name == ref.name]:
                        self.refs.delete(r)
                        records.append({"Untagged": r.familiar()})
                    refs = self.refs.references(img.id)
                if refs:
                    return records
                removed_ref = True
            elif len({r.name for r in refs}) <= 1 and len([r for r in refs if r.tag]) <= 1:
                mask_soft = not force
                conflict = self._conflict(img.id, hard=True, soft_stopped=mask_soft, soft_refs=False)
                if conflict is not None:
                    raise Conflict(self._conflict_text(img.id, conflict))
                for r in refs:
                    self.refs.delete(r)
                    self._event("untag", img.id, r.familiar())
                    records.append({"Untagged": r.familiar()})
            self._delete_helper(img.id, records, dropped, force=force, prune=prune, quiet=removed_ref)
            return records

    def _conflict(self, image_id: str, *, hard: bool, soft_stopped: bool, soft_refs: bool) -> _Conflict | None:
        if hard and self.children(image_id):
            return _Conflict("image has dependent child images", hard=True)
        users = self.containers_using(image_id)
        running = [c for c, r in users if r]
        if hard and running:
            return _Conflict(f"image is being used by running container {running[0][:12]}", hard=True, used=True)
        if soft_refs and self.refs.references(image_id):
            return _Conflict("image is referenced in multiple repositories", hard=False)
        stopped = [c for c, r in users if not r]
        if soft_stopped and stopped:
            return _Conflict(f"image is being used by stopped container {stopped[0][:12]}", hard=False, used=True)
        return None

    @staticmethod
    def _conflict_text(image_id: str, c: _Conflict) -> str:
        how = "cannot be forced" if c.hard else "must be forced"
        return f"conflict: unable to delete {image_id[7:19]} ({how}) - {c.message}"

    def _delete_helper(
        self,
        image_id: str,
        records: list[dict[str, str]],
        dropped: list[Layer],
        *,
        force: bool,
        prune: bool,
        quiet: bool,
    ) -> None:
        conflict = self._conflict(image_id, hard=True, soft_stopped=not force, soft_refs=not force)
        if conflict is not None:
            if quiet and (not self._is_dangling(image_id) or conflict.used):
                return
            raise Conflict(self._conflict_text(image_id, conflict))
        img = self._images[image_id]
        for r in self.refs.references(image_id):
            self.refs.delete(r)
            records.append({"Untagged": r.familiar()})
        removed = self._remove_image(img)
        dropped += removed
        self._event("delete", image_id)
        records.append({"Deleted": image_id})
        for layer in removed:
            records.append({"Deleted": layer.chain_id})
        if prune and img.parent and img.parent in self._images:
            self._delete_helper(img.parent, records, dropped, force=False, prune=True, quiet=True)

    def _is_dangling(self, image_id: str) -> bool:
        return not self.refs.references(image_id) and not self.children(image_id)

    def _remove_image(self, img: Image) -> list[Layer]:
        """Forget the image and give back its layer reference; returns the layers dropped
        (their driver data is purged by the caller, outside the lock)."""
        self._images.pop(img.id, None)
        self.store.delete(img.id)
        return self.layers.release(img.top_chain, purge=False) if img.top_chain else []

    def prune(self, filters: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """``POST /images/prune``: dangling images, or with ``dangling=false`` every image no
        container uses; ``until`` and ``label`` narrow it."""
        filters = filters or {}
        for key in filters:
            if key not in ("dangling", "until", "label", "label!"):
                raise InvalidParameter(f"Invalid filter '{key}'")
        dangling_only = True
        for value in filters.get("dangling", []):
            v = value.lower()
            if v in ("false", "0"):
                dangling_only = False
            elif v not in ("true", "1"):
                raise InvalidParameter(f"Invalid filter 'dangling={value}'")
        until: float | None = None
        for value in filters.get("until", []):
            until = _parse_until(value)
        deleted: list[dict[str, str]] = []
        dropped: list[Layer] = []
        sizes = {layer.chain_id: layer.size for layer in self.layers.all()}
        try:
            self._prune(filters, dangling_only, until, deleted, dropped)
        finally:
            self.layers.purge(dropped)
        reclaimed = sum(sizes.get(rec.get("Deleted", ""), 0) for rec in deleted)
        return {"ImagesDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    def _prune(
        self,
        filters: dict[str, list[str]],
        dangling_only: bool,
        until: float | None,
        deleted: list[dict[str, str]],
        dropped: list[Layer],
    ) -> None:
        with self._lock:
            images = self.images()
            parents = {i.parent for i in images if i.parent}
            candidates = []
            for img in images:
                if dangling_only and img.id in parents:
                    continue
                refs = self.refs.references(img.id)
                if not refs and img.id in parents:
                    continue
                if until is not None and img.created_unix > until:
                    continue
                if not _match_labels(img.labels or {}, filters.get("label", [])):
                    continue
                negated = filters.get("label!", [])
                if negated and _match_labels(img.labels or {}, negated, any_of=True):
                    continue
                candidates.append((img, refs))
            for img, refs in candidates:
                if img.id not in self._images:
                    continue
                try:
                    if refs:
                        if dangling_only and any(r.tag for r in refs):
                            continue
                        for r in refs:
                            deleted += self._delete(str(r), False, True, dropped)
                    else:
                        deleted += self._delete(img.id, False, True, dropped)
                except (Conflict, NotFound) as exc:
                    log.debug("prune skips %s: %s", img.id, exc)

    # -- engine hooks: /info and /system/df --------------------------------------------------

    def contribute_info(self, info: dict[str, Any]) -> None:
        info["Images"] = self.count()

    def contribute_disk_usage(self, df: dict[str, Any]) -> None:
        df.update(self.df())

    # -- system df -----------------------------------------------------------------------

    def df(self) -> dict[str, Any]:
        """The images part of ``GET /system/df``."""
        return {
            "LayersSize": self.layers.total_size(),
            "Images": self._list(all=True, filters={}, extra=True),
        }

    # -- import --------------------------------------------------------------------------

    def import_rootfs(
        self,
        stream: BinaryIO,
        repo_tag: str = "",
        *,
        tag: str = "",
        changes: Iterable[str] = (),
        message: str = "",
        src: str = "-",
        progress: Callable[[int], None] | None = None,
    ) -> Image:
        """``docker import``: one layer from a rootfs tarball (plain or compressed), a config
        from ``changes`` (Dockerfile instructions), then the tag. Arguments are checked
        before the stream is read."""
        ref = parse_repo_tag(repo_tag, tag) if repo_tag else None
        if ref is None and tag:
            raise InvalidParameter("a tag was given without a repository")
        cfg = image_config.apply_changes(image_config.empty_config(), list(changes))
        comment = message or f"Imported from {src}"
        layer = self.layers.register(stream, None, progress=progress)
        try:
            created = now_rfc3339()
            config = {
                "architecture": go_arch(),
                "comment": comment,
                "config": cfg,
                "container_config": image_config.empty_config(),
                "created": created,
                "docker_version": __version__,
                "history": [{"created": created, "comment": comment}],
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            }
            img = self.create(_dumps(config))
        finally:
            self.layers.release(layer.chain_id)
        if ref is not None:
            self._add_ref(ref, img.id)
        self._event("import", img.id, ref.familiar() if ref else "")
        return img

    # -- load ----------------------------------------------------------------------------

    def spool(self, stream: BinaryIO) -> BinaryIO:
        """Copy an upload into a temp file in the data-root (deleted on close), uncompressed."""
        f = tempfile.TemporaryFile(dir=self.tmp)
        try:
            src = decompressed(stream)
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
            f.flush()
            f.seek(0)
        except BaseException:
            f.close()
            raise
        return f  # type: ignore[return-value]

    def load(self, stream: BinaryIO, *, quiet: bool = True, emit: Emit | None = None) -> list[str]:
        """``docker load`` of a docker-archive (``manifest.json`` + configs + layer tars; also
        the OCI-layout variant that newer Docker writes). Everything is read from inside
        the archive; every layer's diff ID and every config's digest is checked, and an image
        appears only once all of it is verified. Returns the ``Loaded image...`` lines."""
        out = emit or (lambda msg: None)
        with self.spool(stream) as spooled:
            archive = _Archive(spooled)
            manifest = archive.manifest()
            loaded: list[str] = []
            for entry in manifest:
                loaded += self._load_one(archive, entry, quiet, out)
            return loaded

    def _load_one(self, archive: _Archive, entry: dict[str, Any], quiet: bool, out: Emit) -> list[str]:
        config_path = entry["Config"]
        raw = archive.read(config_path, _MAX_JSON)
        actual = hashlib.sha256(raw).hexdigest()
        named = re.search(r"([a-f0-9]{64})(?:\.json)?$", config_path)
        if named and named.group(1) != actual:
            raise InvalidParameter(
                f"invalid archive: config {config_path} has digest sha256:{actual}, "
                f"not the sha256:{named.group(1)} its name says"
            )
        cfg = parse_image_config(raw, f"image config {config_path}")
        diff_ids = cfg["rootfs"]["diff_ids"]
        layer_paths = entry["Layers"]
        if len(layer_paths) != len(diff_ids):
            raise InvalidParameter(
                f"invalid manifest, layers length mismatch: expected {len(diff_ids)}, got {len(layer_paths)}"
            )
        refs = []
        for t in entry.get("RepoTags") or []:
            ref = parse_normalized(t)
            if not ref.tag or ref.digest:
                raise InvalidParameter(f'invalid tag "{t}" in manifest.json')
            refs.append(ref)
        held: list[Layer] = []
        try:
            parent: str | None = None
            for i, (path, diff_id) in enumerate(zip(layer_paths, diff_ids)):
                expected = chain_ids(diff_ids[: i + 1])[-1]
                layer = None
                if self.layers.exists(expected):
                    try:
                        layer = self.layers.get(expected)
                    except NotFound:
                        layer = None
                if layer is None:
                    member = archive.member(path)
                    ident = diff_id[7:19]
                    total = member.size
                    report = None if quiet else _layer_progress(out, ident, total)
                    layer = self.layers.register(archive.open(member), parent, progress=report)
                    if layer.diff_id != diff_id:
                        self.layers.release(layer.chain_id)
                        raise InvalidParameter(
                            f"invalid diffID for layer {i}: expected {diff_id!r}, got {layer.diff_id!r}"
                        )
                held.append(layer)
                parent = layer.chain_id
            img = self.create(raw)
        finally:
            for layer in reversed(held):
                self.layers.release(layer.chain_id)
        lines = []
        for ref in refs:
            old = self.refs.get(ref)
            if old is not None and old != img.id:
                out({"stream": f"The image {ref.familiar()} already exists, renaming the old one with ID {old} to empty string\n"})
            self._add_ref(ref, img.id)
            lines.append(f"Loaded image: {ref.familiar()}")
        if not refs:
            lines.append(f"Loaded image ID: {img.id}")
        for line in lines:
            out({"stream": line + "\n"})
        self._event("load", img.id, refs[0].familiar() if refs else "")
        return lines

    # -- save ----------------------------------------------------------------------------

    def save_plan(self, names: list[str]) -> list[tuple[Image, list[Reference]]]:
        """Resolve ``names`` for ``save`` (errors before any byte is sent): a bare repository
        name means all of its tags; an ID saves the image without tags."""
        plan: dict[str, tuple[Image, list[Reference]]] = {}

        def add(img: Image, ref: Reference | None) -> None:
            entry = plan.setdefault(img.id, (img, []))
            if ref is not None and ref.tag and all(str(r) != str(ref) for r in entry[1]):
                entry[1].append(ref)

        if not names:
            raise InvalidParameter("no image names given to save")
        for name in names:
            if _HEX64.match(name) or _DIGEST.match(name):
                add(self.resolve(name), None)
                continue
            ref = parse_normalized(name)
            if ref.name_only:
                found = [(r, i) for r, i in self.refs.by_name(ref.name) if i in self._images]
                for r, image_id in found:
                    add(self._images[image_id], r)
                if not found:
                    add(self.resolve(name), None)
                continue
            image_id = self.refs.get(ref)
            if image_id is None or image_id not in self._images:
                raise NotFound(f"No such image: {ref.familiar()}")
            add(self._images[image_id], ref)
        return list(plan.values())

    def save(self, plan: list[tuple[Image, list[Reference]]]) -> Iterator[bytes]:
        """The docker-archive of ``plan`` as a byte stream (``docker save``'s format):
        ``<v1 id>/{VERSION,json,layer.tar}``, ``<config id>.json``, ``manifest.json``,
        ``repositories``. Deterministic: the same images give the same bytes."""
        entries: dict[str, _Entry] = {}
        manifest = []
        repositories: dict[str, dict[str, str]] = {}
        layer_paths: dict[str, str] = {}  # diff-id chain -> first path written
        for img, refs in plan:
            mtime = int(parse_time(img.created))
            paths = []
            parent_v1 = ""
            for i, chain in enumerate(img.chains):
                top = i == len(img.chains) - 1
                v1 = _v1_id(chain, parent_v1, img.id if top else "")
                v1_json = _v1_json(img, v1, parent_v1, top)
                path = f"{v1}/layer.tar"
                entries[f"{v1}/"] = _Entry(f"{v1}/", tarfile.DIRTYPE, mtime)
                entries[f"{v1}/VERSION"] = _Entry(f"{v1}/VERSION", tarfile.REGTYPE, mtime, data=b"1.0")
                entries[f"{v1}/json"] = _Entry(f"{v1}/json", tarfile.REGTYPE, mtime, data=v1_json)
                if chain in layer_paths and layer_paths[chain] != path:
                    target = "../" + layer_paths[chain]
                    entries[path] = _Entry(path, tarfile.SYMTYPE, mtime, link=target)
                else:
                    layer_paths[chain] = path
                    entries[path] = _Entry(path, tarfile.REGTYPE, mtime, chain=chain,
                                           size=self.layers.tar_size(chain))
                paths.append(path)
                parent_v1 = v1
            cfg_name = f"{img.id[7:]}.json"
            entries[cfg_name] = _Entry(cfg_name, tarfile.REGTYPE, mtime, data=img.raw)
            manifest.append({"Config": cfg_name, "RepoTags": [r.familiar() for r in refs] or None, "Layers": paths})
            for r in refs:
                if parent_v1:
                    repositories.setdefault(r.familiar_name, {})[r.tag or "latest"] = parent_v1
        entries["manifest.json"] = _Entry("manifest.json", tarfile.REGTYPE, 0, data=_dumps(manifest) + b"\n")
        if repositories:
            entries["repositories"] = _Entry("repositories", tarfile.REGTYPE, 0, data=_dumps(repositories) + b"\n")
        for img, refs in plan:
            self._event("save", img.id, refs[0].familiar() if refs else "")
        return _coalesce(self._tar(entries[k] for k in sorted(entries)))

    def _tar(self, entries: Iterable[_Entry]) -> Iterator[bytes]:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.mtime = e.mtime
            info.mode = 0o755 if e.type == tarfile.DIRTYPE else (0o777 if e.type == tarfile.SYMTYPE else 0o644)
            info.uname = info.gname = ""
            if e.type == tarfile.SYMTYPE:
                info.linkname = e.link
            size = len(e.data) if e.data is not None else e.size
            info.size = size if e.type == tarfile.REGTYPE else 0
            yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            if e.type != tarfile.REGTYPE:
                continue
            if e.data is not None:
                yield e.data
            else:
                assert e.chain is not None
                sent = 0
                for chunk in self.layers.tar_stream(e.chain):
                    sent += len(chunk)
                    yield chunk
                if sent != size:
                    raise PydError(f"layer {e.chain} changed size while it was saved")
            if size % 512:
                yield bytes(512 - size % 512)
        yield bytes(1024)


# -- archive reading ------------------------------------------------------------------------


class _Archive:
    """Random access to members of a spooled docker-archive, by paths that must stay inside it."""

    def __init__(self, f: BinaryIO) -> None:
        try:
            self.tar = tarfile.open(fileobj=f, mode="r:")
            self.index: dict[str, tarfile.TarInfo] = {}
            for m in self.tar:
                self.index[posixpath.normpath(m.name.lstrip("/")) if m.name not in ("", ".") else "."] = m
        except tarfile.TarError as exc:
            raise InvalidParameter(f"invalid archive: not a tar file: {exc}") from None

    def member(self, path: str) -> tarfile.TarInfo:
        if not isinstance(path, str) or not path:
            raise InvalidParameter(f"invalid archive: bad path {path!r} in manifest.json")
        if path.startswith("/") or ".." in path.split("/"):
            raise InvalidParameter(f"invalid archive: path {path!r} in manifest.json points outside the archive")
        cur = posixpath.normpath(path)
        for _ in range(40):
            m = self.index.get(cur)
            if m is None:
                raise InvalidParameter(f"invalid archive: {path} is named in manifest.json but missing")
            if m.issym() or m.islnk():
                target = m.linkname
                if target.startswith("/"):
                    raise InvalidParameter(f"invalid archive: {path} links outside the archive")
                nxt = posixpath.normpath(posixpath.join(posixpath.dirname(cur), target) if m.issym() else target)
                if nxt == ".." or nxt.startswith("../"):
                    raise InvalidParameter(f"invalid archive: {path} links outside the archive")
                cur = nxt
                continue
            if not m.isfile():
                raise InvalidParameter(f"invalid archive: {path} is not a regular file")
            return m
        raise InvalidParameter(f"invalid archive: too many links resolving {path}")

    def open(self, member: tarfile.TarInfo) -> BinaryIO:
        f = self.tar.extractfile(member)
        assert f is not None
        return f  # type: ignore[return-value]

    def read(self, path: str, limit: int) -> bytes:
        m = self.member(path)
        if m.size > limit:
            raise InvalidParameter(f"invalid archive: {path} is larger than {limit} bytes")
        return self.open(m).read()

    def manifest(self) -> list[dict[str, Any]]:
        if "manifest.json" not in self.index:
            if "index.json" in self.index:
                return self._oci_manifest()
            raise InvalidParameter("invalid archive: no manifest.json (docker-archive) or index.json (OCI layout)")
        try:
            data = json.loads(self.read("manifest.json", _MAX_JSON))
        except ValueError as exc:
            raise InvalidParameter(f"invalid archive: manifest.json is not JSON: {exc}") from None
        if not isinstance(data, list):
            raise InvalidParameter("invalid archive: manifest.json must be a list")
        for e in data:
            if (
                not isinstance(e, dict)
                or not isinstance(e.get("Config"), str)
                or not isinstance(e.get("Layers"), list)
                or not all(isinstance(p, str) for p in e["Layers"])
                or not isinstance(e.get("RepoTags") or [], list)
            ):
                raise InvalidParameter("invalid archive: manifest.json entries need Config, Layers and RepoTags")
        return data

    def _oci_manifest(self) -> list[dict[str, Any]]:
        """An OCI image layout without manifest.json: index.json -> manifests -> config, layers."""

        def blob(digest: str) -> str:
            if not isinstance(digest, str) or not _DIGEST.match(digest):
                raise InvalidParameter(f"invalid archive: bad digest {digest!r} in the OCI layout")
            return "blobs/sha256/" + digest[7:]

        try:
            index = json.loads(self.read("index.json", _MAX_JSON))
            out = []
            for desc in index.get("manifests") or []:
                man = json.loads(self.read(blob(desc.get("digest")), _MAX_JSON))
                if "manifests" in man:  # a nested index: take its first manifest
                    man = json.loads(self.read(blob(man["manifests"][0]["digest"]), _MAX_JSON))
                name = (desc.get("annotations") or {}).get("io.containerd.image.name") or ""
                out.append(
                    {
                        "Config": blob(man["config"]["digest"]),
                        "RepoTags": [name] if name else [],
                        "Layers": [blob(layer["digest"]) for layer in man.get("layers") or []],
                    }
                )
            return out
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise InvalidParameter(f"invalid archive: unreadable OCI index: {exc}") from None


# -- save helpers -----------------------------------------------------------------------------


@dataclass
class _Entry:
    name: str
    type: bytes
    mtime: int
    data: bytes | None = None
    chain: str | None = None
    size: int = 0
    link: str = ""


def _v1_id(chain: str, parent_v1: str, image_id: str) -> str:
    """A stable legacy ID per layer position (``<v1 id>/`` directories in the archive)."""
    seed = _dumps({"layer_id": chain, "parent": parent_v1, "image": image_id})
    return hashlib.sha256(seed).hexdigest()


def _v1_json(img: Image, v1: str, parent_v1: str, top: bool) -> bytes:
    """The legacy per-layer ``json`` (pre-1.10 Docker reads it; current loaders ignore it)."""
    cfg = img.config
    if top:
        out: dict[str, Any] = {"id": v1}
        if parent_v1:
            out["parent"] = parent_v1
        for key in ("comment", "created", "container", "container_config", "docker_version",
                    "author", "config", "architecture", "variant", "os"):
            if key in cfg:
                out[key] = cfg[key]
    else:
        out = {"id": v1}
        if parent_v1:
            out["parent"] = parent_v1
        out["created"] = "1970-01-01T00:00:00Z"
        out["container_config"] = image_config.empty_config()
        out["os"] = cfg.get("os", "linux")
    return _dumps(out)


def _layer_progress(out: Emit, ident: str, total: int) -> Callable[[int], None]:
    def report(n: int) -> None:
        out(progress_message("Loading layer", ident, min(n, total), total))

    return report


def _coalesce(chunks: Iterator[bytes], size: int = 256 << 10) -> Iterator[bytes]:
    buf = bytearray()
    for c in chunks:
        buf += c
        if len(buf) >= size:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


# -- small helpers --------------------------------------------------------------------------


def _match_labels(labels: dict[str, str], wanted: list[str], any_of: bool = False) -> bool:
    """Docker's label filter: every ``key`` or ``key=value`` must match (``any_of``: one)."""
    results = []
    for w in wanted:
        key, eq, value = w.partition("=")
        results.append(key in labels and (not eq or labels[key] == value))
    return any(results) if any_of else all(results)


def _parse_until(value: str) -> float:
    """``until`` of prune: Unix seconds, an RFC 3339 time, or a Go duration ago (``24h``)."""
    from pyd.drivers.options import parse_duration

    try:
        return float(value)
    except ValueError:
        pass
    t = parse_time(value)
    if t:
        return t
    try:
        return time.time() - parse_duration(value)
    except ValueError:
        raise InvalidParameter(f"invalid filter 'until={value}': not a timestamp or duration") from None


def _remove_path(p: Path) -> None:
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink()
    except OSError:
        pass

