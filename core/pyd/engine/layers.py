"""The layer store: read-only layers by chain ID and read-write layers for containers.

Over the selected graph driver, as moby's ``layer`` package. A read-only layer is known by
its *chain ID* (``sha256(parent_chain + " " + diff_id)``, or the diff ID for a base layer),
has a *diff ID* (sha256 of its uncompressed tar), a size, a parent, and a *cache ID*: the
random ID under which the graph driver stores it. On disk, as moby::

    <root>/layerdb/sha256/<chain hex>/{diff,size,cache-id,parent,tar-split,tar-size}
    <root>/layerdb/mounts/<container id>/{mount-id,init-id,parent}
    <root>/layerdb/tmp/<random>/          staging; whatever is here at start-up is undone

Registering is stage-then-commit: the layer is applied into the driver under a new cache ID
while its metadata collects in a staging directory that names that cache ID; only a complete
layer is renamed into ``sha256/``. A daemon killed mid-import leaves a staging directory,
which start-up removes together with its driver layer.

Reference counts live in memory: a layer is held by the images that use it (they call
``get``/``register`` and ``release``), by its child layers and by read-write layers on top.
The image service takes its references at start-up and then calls ``gc()``, which removes
layers no one holds (what an interrupted load committed but never used).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import logging
import lzma
import os
import queue
import re
import secrets
import shutil
import tarfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from pyd.drivers.graph import Change, CreateRequest, GraphDriver
from pyd.engine import tarsplit
from pyd.engine.store import safe_join
from pyd.errors import Conflict, InvalidParameter, NotFound

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"^[a-f0-9]{64}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_READ_CHUNK = 1 << 20

Progress = Callable[[int], None]


def chain_id(parent: str | None, diff_id: str) -> str:
    """The chain ID of a layer with ``diff_id`` on top of the chain ``parent``."""
    if parent is None:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The chain ID of every prefix of ``diff_ids`` (the last one is the image's top layer)."""
    out: list[str] = []
    parent: str | None = None
    for d in diff_ids:
        parent = chain_id(parent, d)
        out.append(parent)
    return out


@dataclass(frozen=True)
class Layer:
    chain_id: str
    diff_id: str
    parent: str | None  # chain ID of the parent
    cache_id: str  # the graph driver's layer ID
    size: int  # bytes of this layer's own content


@dataclass(frozen=True)
class RWLayer:
    container_id: str
    mount_id: str  # the graph driver's ID of the read-write layer
    init_id: str | None  # the driver ID of the init layer below it, if one was made
    parent: str | None  # chain ID of the image's top layer


# -- streams --------------------------------------------------------------------------------


class _Plain:
    """The upload after its sniffed head: reads pass straight through (no copies), counted
    for ``progress``. Short reads happen; an empty read is the end."""

    def __init__(self, head: bytes, src: BinaryIO, progress: Progress | None) -> None:
        self._head = head
        self._src = src
        self._progress = progress
        self._count = len(head)
        self._last = 0.0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(_READ_CHUNK), b""))
        if self._head:
            out, self._head = self._head[:n], self._head[n:]
            return out
        data = self._src.read(n)
        if not data:
            self._report(force=True)
            return b""
        self._count += len(data)
        self._report()
        return data

    def _report(self, force: bool = False) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if force or now - self._last >= 0.1:
            self._last = now
            self._progress(self._count)


class _ReadAhead:
    """Reads the (decompressed) layer stream on a thread of its own, ``chunk`` bytes at a
    time, hashing it (sha256) and keeping up to ``depth`` chunks ready.

    Receiving, decompressing and hashing release the GIL: on another core they overlap the
    driver's writing of files instead of adding to it. An error of the source is raised by
    the next ``read`` here, as it was raised there.
    """

    def __init__(self, src: BinaryIO, chunk: int = _READ_CHUNK, depth: int = 16) -> None:
        self.sha = hashlib.sha256()
        self._src = src
        self._chunk = chunk
        self._q: queue.Queue[bytes | BaseException | None] = queue.Queue(depth)
        self._stop = threading.Event()
        self._buf = b""
        self._eof = False
        self._thread = threading.Thread(target=self._run, name="pyd-layer-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                parts: list[bytes] = []
                have = 0
                while have < self._chunk:  # short reads (an upload's pieces) gathered to a chunk
                    data = self._src.read(self._chunk - have)
                    if not data:
                        break
                    parts.append(data)
                    have += len(data)
                if not parts:
                    break
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                self.sha.update(data)
                self._put(data)
            self._put(None)
        except BaseException as exc:  # handed to the reader
            self._put(exc)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(_READ_CHUNK), b""))
        if not self._buf:
            if self._eof:
                return b""
            item = self._q.get()
            if item is None:
                self._eof = True
                return b""
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            self._buf = item
        if n >= len(self._buf):
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def hexdigest(self) -> str:
        """The sha256 of the whole stream (read to its end first)."""
        if not self._eof or self._buf:
            raise RuntimeError("layer stream digest asked before its end")
        self._thread.join()
        return self.sha.hexdigest()

    def close(self) -> None:
        """Stop reading ahead. The thread ends as soon as its current read returns."""
        self._stop.set()
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass


class _LayerInput(io.RawIOBase):
    """The layer stream handed to the graph driver.

    ``apply_layer`` claims the recording (``claim_recording``): it reads the stream beneath
    and reports its bytes to the tar-split recorder in its own parse. A driver that reads this
    object instead gets the same bytes, recorded by ``TarSplitWriter``'s parse here.
    """

    def __init__(self, src: _ReadAhead, split: tarsplit.TarSplitWriter) -> None:
        self._src = src
        self._split = split
        self._claimed = False
        self._started = False

    def readable(self) -> bool:
        return True

    def claim_recording(self) -> tuple[BinaryIO, tarsplit.TarSplitRecorder] | None:
        if self._started or self._claimed:
            return None
        self._claimed = True
        return self._src, self._split  # type: ignore[return-value]

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        self._started = True
        data = self._src.read(len(b))
        n = len(data)
        b[:n] = data
        if self._claimed:
            self._split.raw(data)  # what the claimer left unread: raw bytes after the tar
        else:
            self._split.feed(data)
        return n


_COMPRESSED = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


def _read_exactly(src: BinaryIO, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = src.read(n - len(out))
        if not data:
            break
        out += data
    return out


def decompressed(src: BinaryIO, progress: Progress | None = None) -> BinaryIO:
    """``src`` uncompressed: gzip, bzip2 and xz are recognised by their magic bytes.

    Reads may be short (an empty read is the end)."""
    head = _read_exactly(src, 6)
    raw: BinaryIO = _Plain(head, src, progress)  # type: ignore[assignment]
    kind = next((k for magic, k in _COMPRESSED if head.startswith(magic)), None)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if kind == "bzip2":
        return bz2.BZ2File(raw, "rb")  # type: ignore[return-value]
    if kind == "xz":
        return lzma.LZMAFile(raw, "rb")  # type: ignore[return-value]
    if kind == "zstd":
        raise InvalidParameter("unsupported layer compression: zstd (use gzip, bzip2, xz or none)")
    return raw


_BAD_INPUT = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


# -- the store ------------------------------------------------------------------------------


class LayerStore:
    """Read-only layers by chain ID and read-write layers by container ID. Thread-safe."""

    def __init__(self, driver: GraphDriver, root: Path) -> None:
        self.driver = driver
        self.root = Path(root) / "layerdb"
        self._sha = self.root / "sha256"
        self._tmp = self.root / "tmp"
        self._mounts_dir = self.root / "mounts"
        for d in (self._sha, self._tmp, self._mounts_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._layers: dict[str, Layer] = {}
        self._refs: dict[str, int] = {}
        self._mounts: dict[str, RWLayer] = {}
        self._removing: dict[str, Path] = {}  # chain -> its metadata, staged for deletion
        self._cleanup_staging()
        self._load()

    @property
    def driver_name(self) -> str:
        return self.driver.name

    # -- start-up ------------------------------------------------------------------------

    def _cleanup_staging(self) -> None:
        """Undo what interrupted registrations, creations and removals left in ``tmp/``."""
        for entry in sorted(self._tmp.iterdir()):
            # Children before parents: a container's layer before its init layer.
            ids: list[str] = []
            for name in ("mount-id", "init-id", "cache-id", "driver-ids"):
                try:
                    found = (entry / name).read_text().split()
                except (FileNotFoundError, NotADirectoryError):
                    continue
                ids += reversed(found) if name == "driver-ids" else found
            for driver_id in dict.fromkeys(ids):
                try:
                    self.driver.remove(driver_id)
                except Exception as exc:  # keep the marker: try again next start
                    log.warning("cannot remove leftover layer %s: %s", driver_id, exc,
                                extra={"driver": self.driver.name})
                    break
            else:
                log.info("removed leftovers of an interrupted layer operation: %s", entry.name)
                _rmtree(entry)

    def _load(self) -> None:
        found: dict[str, Layer] = {}
        for d in self._sha.iterdir():
            if not _HEX64.match(d.name):
                continue
            try:
                layer = Layer(
                    chain_id="sha256:" + d.name,
                    diff_id=(d / "diff").read_text().strip(),
                    parent=_read_opt(d / "parent"),
                    cache_id=(d / "cache-id").read_text().strip(),
                    size=int((d / "size").read_text().strip() or 0),
                )
            except (OSError, ValueError) as exc:
                log.warning("skipping layer %s with unreadable metadata: %s", d.name, exc)
                continue
            found[layer.chain_id] = layer
        # A layer is usable only if its whole parent chain is.
        usable: dict[str, bool] = {}

        def ok(cid: str | None, depth: int = 0) -> bool:
            if cid is None:
                return True
            if cid in usable:
                return usable[cid]
            layer = found.get(cid)
            usable[cid] = bool(layer) and depth < 1000 and ok(layer.parent, depth + 1)  # type: ignore[union-attr]
            return usable[cid]

        for cid, layer in found.items():
            if ok(cid):
                self._layers[cid] = layer
                self._refs.setdefault(cid, 0)
            else:
                log.warning("skipping layer %s: its parent %s is missing", cid, layer.parent)
        for layer in self._layers.values():
            if layer.parent:
                self._refs[layer.parent] += 1
        for d in self._mounts_dir.iterdir():
            try:
                rw = RWLayer(
                    container_id=d.name,
                    mount_id=(d / "mount-id").read_text().strip(),
                    init_id=_read_opt(d / "init-id"),
                    parent=_read_opt(d / "parent"),
                )
            except OSError as exc:
                log.warning("skipping read-write layer of %s: %s", d.name, exc)
                continue
            if rw.parent and rw.parent not in self._layers:
                log.warning("read-write layer of %s sits on missing layer %s", d.name, rw.parent)
            elif rw.parent:
                self._refs[rw.parent] += 1
            self._mounts[rw.container_id] = rw

    def gc(self) -> list[Layer]:
        """Remove every layer that nothing holds (call once after the images took theirs)."""
        removed: list[Layer] = []
        with self._lock:
            while True:
                idle = [cid for cid, n in self._refs.items() if n == 0]
                if not idle:
                    break
                for cid in idle:
                    removed += self._drop(cid)
        self._delete(removed)
        if removed:
            log.info("removed %d unreferenced layers", len(removed))
        return removed

    # -- staging -------------------------------------------------------------------------

    def _stage(self, driver_ids: list[str]) -> Path:
        """A staging directory that names the driver IDs about to be created (written first)."""
        d = self._tmp / secrets.token_hex(16)
        d.mkdir(mode=0o700)
        _write_durable(d / "driver-ids", "\n".join(driver_ids))
        _fsync_dir(self._tmp)
        return d

    def _discard(self, staging: Path, driver_ids: list[str]) -> None:
        for driver_id in reversed(driver_ids):
            try:
                self.driver.remove(driver_id)
            except Exception as exc:  # start-up cleanup retries
                log.warning("cannot remove layer %s after a failed operation: %s", driver_id, exc,
                            extra={"driver": self.driver.name})
                return
        _rmtree(staging)

    # -- read-only layers --------------------------------------------------------------------

    def register(
        self,
        stream: BinaryIO,
        parent: str | None = None,
        *,
        progress: Progress | None = None,
    ) -> Layer:
        """Apply the layer tar ``stream`` (plain, gzip, bzip2 or xz) on top of ``parent``.

        Returns the layer with one reference taken for the caller (give it back with
        ``release``). If a layer with the same chain ID exists, the new copy is dropped and
        the existing one is returned (with a new reference). ``progress`` is called with the
        number of input bytes read so far. Bad input raises ``InvalidParameter`` and leaves
        nothing behind.
        """
        parent_layer = self.get(parent) if parent else None
        cache_id = secrets.token_hex(32)
        staging = self._stage([cache_id])
        parent_cache = parent_layer.cache_id if parent_layer else None
        committed = False
        try:
            self.driver.create(CreateRequest(layer_id=cache_id, parent=parent_cache))
            with open(staging / "tar-split", "wb") as split_file:
                split = tarsplit.TarSplitWriter(split_file)
                ahead: _ReadAhead | None = None
                try:
                    ahead = _ReadAhead(decompressed(stream, progress))
                    reader = _LayerInput(ahead, split)
                    size = self.driver.apply_diff(cache_id, parent_cache, reader)  # type: ignore[arg-type]
                    while reader.read(_READ_CHUNK):  # the tar's tail (padding) is part of the digest
                        pass
                    diff_id = "sha256:" + ahead.hexdigest()
                except BaseException as exc:
                    split.abort()
                    if isinstance(exc, _BAD_INPUT):
                        raise InvalidParameter(f"invalid layer tar: {exc}") from exc
                    raise
                finally:
                    if ahead is not None:
                        ahead.close()
                split.close()
                split_file.flush()
                os.fsync(split_file.fileno())
            if size is None or size < 0:
                size = self.driver.diff_size(cache_id, parent_cache)
            cid = chain_id(parent, diff_id)
            for name, value in (
                ("diff", diff_id),
                ("size", str(size)),
                ("cache-id", cache_id),
                ("tar-size", str(split.total)),
                ("parent", parent or ""),
            ):
                if name != "parent" or parent:
                    _write_durable(staging / name, value)
            if not split.reproducible:
                _write_durable(staging / "not-reproducible", "")
            with self._lock:
                existing = self._layers.get(cid)
                if existing is not None:
                    self._refs[cid] += 1
                else:
                    target = self._sha / cid.split(":", 1)[1]
                    _fsync_dir(staging)
                    os.rename(staging, target)
                    _fsync_dir(self._sha)
                    committed = True
                    layer = Layer(cid, diff_id, parent, cache_id, int(size))
                    self._layers[cid] = layer
                    self._refs[cid] = 1
            if existing is not None:
                self._discard(staging, [cache_id])
                if parent:
                    self.release(parent)  # the existing layer holds its own parent
                return existing
            _unlink(target / "driver-ids")
            return layer
        except BaseException:
            if not committed:
                self._discard(staging, [cache_id])
                if parent:
                    self.release(parent)
            raise

    def get(self, chain: str) -> Layer:
        """The layer ``chain``, taking one reference (``release`` it); ``NotFound`` if unknown."""
        with self._lock:
            layer = self._layers.get(chain)
            if layer is None:
                raise NotFound(f"layer {chain} does not exist")
            self._refs[chain] += 1
            return layer

    def lookup(self, chain: str) -> Layer | None:
        """The layer ``chain`` without taking a reference."""
        with self._lock:
            return self._layers.get(chain)

    def exists(self, chain: str) -> bool:
        with self._lock:
            return chain in self._layers

    def all(self) -> list[Layer]:
        with self._lock:
            return list(self._layers.values())

    def refcount(self, chain: str) -> int:
        with self._lock:
            return self._refs.get(chain, 0)

    def release(self, chain: str, *, purge: bool = True) -> list[Layer]:
        """Give back one reference; layers no longer held are deleted (parents too, in turn).

        Returns the layers deleted, top first. They are gone from the store at once; their
        driver data is removed here, or with ``purge=False`` by a later ``purge(layers)``
        (so a caller holding its own lock need not wait for the driver).
        """
        with self._lock:
            if chain not in self._layers:
                raise NotFound(f"layer {chain} does not exist")
            removed: list[Layer] = []
            self._refs[chain] -= 1
            if self._refs[chain] <= 0:
                removed = self._drop(chain)
        if purge:
            self._delete(removed)
        return removed

    def purge(self, layers: list[Layer]) -> None:
        """Remove the driver data of layers ``release(..., purge=False)`` returned."""
        self._delete(layers)

    def _drop(self, chain: str) -> list[Layer]:
        """With the lock held: forget ``chain`` (refcount 0) and the parents it alone held;
        move their metadata to staging so a crash mid-delete is finished at start-up."""
        removed: list[Layer] = []
        cur: str | None = chain
        while cur is not None:
            if self._refs.get(cur, 0) > 0:
                break
            layer = self._layers.pop(cur)
            self._refs.pop(cur, None)
            src = self._sha / cur.split(":", 1)[1]
            dst = self._tmp / f"rm-{secrets.token_hex(8)}"
            os.rename(src, dst)
            removed.append(layer)
            self._removing[layer.chain_id] = dst
            cur = layer.parent
            if cur is not None:
                self._refs[cur] -= 1
        return removed

    def _delete(self, layers: list[Layer]) -> None:
        """Outside the lock: delete the driver data and staged metadata of dropped layers."""
        for layer in layers:
            with self._lock:
                staged = self._removing.pop(layer.chain_id, None)
            try:
                self.driver.remove(layer.cache_id)
            except Exception as exc:  # left in tmp/: retried at the next start
                log.warning("cannot remove layer %s (%s): %s", layer.chain_id, layer.cache_id, exc,
                            extra={"driver": self.driver.name})
                continue
            if staged is not None:
                _rmtree(staged)

    # -- sizes, content ----------------------------------------------------------------------

    def size(self, chain: str | None) -> int:
        """Bytes of the whole chain (the image's ``Size``)."""
        total = 0
        with self._lock:
            while chain is not None:
                layer = self._layers.get(chain)
                if layer is None:
                    break
                total += layer.size
                chain = layer.parent
        return total

    def total_size(self) -> int:
        """Bytes of all read-only layers (``system df``'s ``LayersSize``)."""
        with self._lock:
            return sum(layer.size for layer in self._layers.values())

    def metadata(self, chain: str) -> dict[str, str]:
        """The driver's data for inspect's ``GraphDriver.Data``."""
        layer = self._must(chain)
        return dict(self.driver.metadata(layer.cache_id))

    def changes(self, chain: str) -> list[Change]:
        layer = self._must(chain)
        parent = self._must(layer.parent).cache_id if layer.parent else None
        return self.driver.changes(layer.cache_id, parent)

    def _must(self, chain: str) -> Layer:
        layer = self.lookup(chain)
        if layer is None:
            raise NotFound(f"layer {chain} does not exist")
        return layer

    def tar_size(self, chain: str) -> int:
        """The length of the layer's tar as ``tar_stream`` produces it."""
        layer = self._must(chain)
        d = self._sha / layer.chain_id.split(":", 1)[1]
        self._check_reproducible(chain, d)
        try:
            return int((d / "tar-size").read_text())
        except (OSError, ValueError):
            return tarsplit.read_total(d / "tar-split")

    @staticmethod
    def _check_reproducible(chain: str, d: Path) -> None:
        if (d / "not-reproducible").exists():
            raise tarsplit.LayerNotReproducible(
                f"layer {chain} cannot be exported byte for byte: its tar writes a path "
                "twice or deletes a file it wrote"
            )

    def tar_stream(self, chain: str) -> Iterator[bytes]:
        """The layer's tar, byte for byte as it was registered (its digest is the diff ID).

        Takes a reference and a driver mount for as long as the iterator runs.
        """
        layer = self.get(chain)
        d = self._sha / layer.chain_id.split(":", 1)[1]
        try:
            self._check_reproducible(chain, d)
            root = self.driver.get(layer.cache_id)
            try:
                yield from tarsplit.reassemble(d / "tar-split", root, f"layer {chain}")
            finally:
                self.driver.put(layer.cache_id)
        finally:
            self.release(chain)

    # -- read-write layers -------------------------------------------------------------------

    def create_rw(
        self,
        container_id: str,
        parent: str | None,
        *,
        mount_label: str = "",
        storage_opts: dict[str, str] | None = None,
        init: Callable[[str], None] | None = None,
    ) -> RWLayer:
        """Create the read-write layer of ``container_id`` on the chain ``parent``.

        ``init(root)``, if given, fills an init layer between the image and the container's
        layer (Docker's ``-init`` layer: /etc/hosts placeholders and the like).
        ``Conflict`` if the container already has one.
        """
        safe_join(self._mounts_dir, container_id)
        with self._lock:
            if container_id in self._mounts:
                raise Conflict(f"read-write layer for container {container_id} already exists")
        parent_layer = self.get(parent) if parent else None
        mount_id = secrets.token_hex(32)
        init_id = f"{mount_id}-init" if init is not None else None
        ids = [i for i in (init_id, mount_id) if i]
        staging = self._stage(ids)
        committed = False
        try:
            below = parent_layer.cache_id if parent_layer else None
            if init_id is not None and init is not None:
                self.driver.create_rw(CreateRequest(layer_id=init_id, parent=below, mount_label=mount_label))
                root = self.driver.get(init_id, mount_label)
                try:
                    init(root)
                finally:
                    self.driver.put(init_id)
                below = init_id
            self.driver.create_rw(
                CreateRequest(layer_id=mount_id, parent=below, mount_label=mount_label,
                              storage_opts=dict(storage_opts or {}))
            )
            _write_durable(staging / "mount-id", mount_id)
            if init_id:
                _write_durable(staging / "init-id", init_id)
            if parent:
                _write_durable(staging / "parent", parent)
            _unlink(staging / "driver-ids")  # mount-id / init-id name them from here on
            rw = RWLayer(container_id, mount_id, init_id, parent)
            with self._lock:
                if container_id in self._mounts:
                    raise Conflict(f"read-write layer for container {container_id} already exists")
                _fsync_dir(staging)
                os.rename(staging, self._mounts_dir / container_id)
                _fsync_dir(self._mounts_dir)
                committed = True
                self._mounts[container_id] = rw
            return rw
        except BaseException:
            if not committed:
                _write_durable(staging / "driver-ids", "\n".join(ids))
                self._discard(staging, ids)
                if parent:
                    self.release(parent)
            raise

    def get_rw(self, container_id: str) -> RWLayer:
        with self._lock:
            rw = self._mounts.get(container_id)
        if rw is None:
            raise NotFound(f"no read-write layer for container {container_id}")
        return rw

    def rw_layers(self) -> list[RWLayer]:
        with self._lock:
            return list(self._mounts.values())

    def mount(self, container_id: str, mount_label: str = "") -> str:
        """Mount the container's filesystem; returns the host path of its root. Refcounted."""
        return self.driver.get(self.get_rw(container_id).mount_id, mount_label)

    def unmount(self, container_id: str) -> None:
        self.driver.put(self.get_rw(container_id).mount_id)

    def _rw_parent(self, rw: RWLayer) -> str | None:
        if rw.init_id:
            return rw.init_id
        return self._must(rw.parent).cache_id if rw.parent else None

    def rw_changes(self, container_id: str) -> list[Change]:
        rw = self.get_rw(container_id)
        return self.driver.changes(rw.mount_id, self._rw_parent(rw))

    def rw_diff(self, container_id: str) -> BinaryIO:
        """Tar of the container's changes (for commit); the caller closes it."""
        rw = self.get_rw(container_id)
        return self.driver.diff(rw.mount_id, self._rw_parent(rw))

    def rw_size(self, container_id: str) -> int:
        rw = self.get_rw(container_id)
        return self.driver.diff_size(rw.mount_id, self._rw_parent(rw))

    def rw_metadata(self, container_id: str) -> dict[str, str]:
        return dict(self.driver.metadata(self.get_rw(container_id).mount_id))

    def remove_rw(self, container_id: str) -> list[Layer]:
        """Delete the container's layer (``Conflict`` while mounted); releases the image layer."""
        rw = self.get_rw(container_id)
        self.driver.remove(rw.mount_id)
        if rw.init_id:
            self.driver.remove(rw.init_id)
        with self._lock:
            self._mounts.pop(container_id, None)
            dst = self._tmp / f"rm-{secrets.token_hex(8)}"
            os.rename(self._mounts_dir / container_id, dst)
        _rmtree(dst)
        return self.release(rw.parent) if rw.parent else []


# -- small file helpers -------------------------------------------------------------------


def _read_opt(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def _write_durable(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

