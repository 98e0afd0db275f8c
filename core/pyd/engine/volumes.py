"""The volume service behind ``/volumes/*``: drivers by name, an index of every volume, Docker's
create/inspect/list/remove/prune, ``system df`` data, events, and what containers need.

* Drivers are loaded by name through the registry (``local``'s home is ``<data-root>/volumes``,
  another driver's ``<data-root>/volumes-<name>``). A name that is not installed is the
  registry's ``DriverNotInstalled`` (404, listing the installed ones) before anything is made.
* The index (``<data-root>/volume-index.json``, written atomically) maps each volume to its
  driver and caches what inspect shows, so a restarted daemon finds the volumes of every
  driver, and ``GET /volumes`` is served from memory. Drivers' own ``list()`` results are
  merged in by refresh tasks: at start, and when a list asks, waiting at most ``LIST_WAIT``;
  a driver whose list hangs keeps its one task pending (no new threads pile up) and its
  volumes are listed as last known, with a warning (moby#33994).
* Every driver call runs in this service's thread pool with a deadline and under a per-volume
  lock. A call that misses its deadline answers 503 and keeps the volume's lock until its
  thread returns, so the next call on that volume waits (and times out) instead of racing it;
  other volumes are not affected.
* Containers use ``get_or_create`` / ``mount_for_container`` / ``unmount_for_container`` /
  ``remove_anonymous`` / ``is_in_use``; ``users`` (set by the container service) tells which
  containers reference a volume, so ``volume rm`` of one in use is a 409 in Docker's words.

Methods are coroutines for the event loop unless noted; the service never sees aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Mapping, TypeVar

from pyd.drivers.volume import VolumeInfo, VolumeRefs
from pyd.engine.events import EventBus
from pyd.engine.store import atomic_write_json, safe_join, validate_name
from pyd.errors import Conflict, DriverNotInstalled, InvalidParameter, NotFound, PydError, Unavailable
from pyd.registry import Kind, PluginRegistry, installed_names

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_DRIVER = "local"
# Beside the drivers' homes, never inside one (a file in <data-root>/volumes could collide
# with a volume name); "volume-" cannot be the home of a driver ("volumes-<name>").
INDEX_FILE = "volume-index.json"
INDEX_VERSION = 1
SHORT = 30.0  # get, parse_options, writing the index
LONG = 120.0  # create, remove, mount, unmount (a mount may wait for a device)
INIT = 60.0  # importing and initialising a driver
LIST_WAIT = 1.0  # how long GET /volumes waits for the drivers' own lists
START_WAIT = 10.0  # how long daemon start waits for them
POOL_SIZE = 16
_ANONYMOUS = re.compile(r"[0-9a-f]{64}")  # how anonymous volumes are named
_DRIVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a driver name used in a path
_TRUE, _FALSE = ("true", "1"), ("false", "0")

Users = Callable[[str], Iterable[str]]


@dataclass
class VolumeRecord:
    """One volume as the index keeps it: its driver, and the driver's last answer."""

    name: str
    driver: str
    mountpoint: str = ""
    created_at: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    scope: str = "local"
    anonymous: bool = False

    @classmethod
    def from_info(cls, driver: str, info: VolumeInfo, anonymous: bool) -> VolumeRecord:
        rec = cls(name=info.name, driver=driver, anonymous=anonymous)
        rec.update(info)
        return rec

    def update(self, info: VolumeInfo) -> bool:
        """Take the driver's newer answer; True if anything changed."""
        new = (
            str(info.mountpoint or ""),
            str(info.created_at or ""),
            {str(k): str(v) for k, v in (info.labels or {}).items()},
            {str(k): str(v) for k, v in (info.options or {}).items()},
            str(info.scope or "local"),
        )
        old = (self.mountpoint, self.created_at, self.labels, self.options, self.scope)
        if new == old:
            return False
        self.mountpoint, self.created_at, self.labels, self.options, self.scope = new
        return True

    def doc(self, status: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Docker's volume JSON (keys in the API's order; empty labels/options are null)."""
        out: dict[str, Any] = {}
        if self.created_at:
            out["CreatedAt"] = self.created_at
        out.update(
            {
                "Driver": self.driver,
                "Labels": dict(self.labels) or None,
                "Mountpoint": self.mountpoint,
                "Name": self.name,
                "Options": dict(self.options) or None,
                "Scope": self.scope,
            }
        )
        if status:
            out["Status"] = dict(status)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "driver": self.driver,
            "anonymous": self.anonymous,
            "mountpoint": self.mountpoint,
            "created_at": self.created_at,
            "labels": self.labels,
            "options": self.options,
            "scope": self.scope,
        }

    @classmethod
    def from_json(cls, name: str, obj: Mapping[str, Any]) -> VolumeRecord:
        return cls(
            name=name,
            driver=str(obj["driver"]),
            anonymous=bool(obj.get("anonymous", False)),
            mountpoint=str(obj.get("mountpoint", "")),
            created_at=str(obj.get("created_at", "")),
            labels={str(k): str(v) for k, v in (obj.get("labels") or {}).items()},
            options={str(k): str(v) for k, v in (obj.get("options") or {}).items()},
            scope=str(obj.get("scope") or "local"),
        )


@dataclass(frozen=True)
class VolumeMount:
    """What ``mount_for_container`` returns: the volume (its name is new for an anonymous
    one, so the container must record it) and the host path to bind into the container."""

    name: str
    driver: str
    path: str


class _Guard:
    """A per-object lock that stays held while a driver call that missed its deadline still
    runs in its thread."""

    __slots__ = ("lock", "hung", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.hung: list[asyncio.Future[Any]] = []
        self.users = 0


def _string_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidParameter(f"invalid {what}: expected an object of strings, got {type(value).__name__}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, (str, type(None))):
            raise InvalidParameter(f"invalid {what}: {k!r}={v!r} is not a string pair")
        out[k] = v or ""
    return out


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # A timed-out call's late exception is logged here, not as "never retrieved".
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("a volume driver call that timed out failed later: %s", fut.exception())


def dir_size(path: str) -> int:
    """Bytes of the files below ``path`` (hard links once, symlinks not followed), as
    Docker's ``directory.Size``; 0 if it cannot be read. Runs in a worker thread."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += st.st_size
    return total


class _Filters:
    """``GET /volumes`` filters (moby's volume/service/convert.go): ``dangling``, ``driver``
    (any of), ``label`` (all of; ``k`` or ``k=v``), ``name`` (substring, any of)."""

    KEYS = ("dangling", "driver", "label", "name")

    def __init__(self, filters: Mapping[str, Iterable[str]] | None) -> None:
        self.f = {k: list(v) for k, v in (filters or {}).items() if v}
        for key in self.f:
            if key not in self.KEYS:
                raise InvalidParameter(f"invalid filter '{key}'")
        self.dangling: bool | None = None
        for value in self.f.get("dangling", []):
            v = value.lower()
            if v in _TRUE:
                self.dangling = True
            elif v in _FALSE:
                self.dangling = False
            else:
                raise InvalidParameter(f"invalid filter 'dangling={value}'")

    def match(self, rec: VolumeRecord, in_use: Callable[[str], bool]) -> bool:
        if "driver" in self.f and rec.driver not in self.f["driver"]:
            return False
        if "name" in self.f and not any(n in rec.name for n in self.f["name"]):
            return False
        if not _labels_match(rec.labels, self.f.get("label", [])):
            return False
        if self.dangling is not None and in_use(rec.name) == self.dangling:
            return False
        return True


def _labels_match(labels: Mapping[str, str], wanted: Iterable[str], *, any_of: bool = False) -> bool:
    """Every (or with ``any_of`` any) ``k`` / ``k=v`` of ``wanted`` is in ``labels``."""
    results = []
    for item in wanted:
        key, sep, value = item.partition("=")
        results.append(key in labels and (not sep or labels[key] == value))
    return any(results) if any_of else all(results)


class VolumeService:
    """``/volumes/*`` and the volume side of containers. See the module docstring."""

    def __init__(
        self,
        *,
        registry: PluginRegistry,
        root: str | os.PathLike[str],
        events: EventBus | None = None,
        users: Users | None = None,
        drivers: Mapping[str, Any] | None = None,
    ) -> None:
        """``root`` is the data-root. ``users(name)`` -> IDs of the containers that
        reference the volume (the container service sets it). ``drivers``: driver objects
        already built, by name (tests, embedding); others are loaded through ``registry``.

        Loads the index and initialises the drivers it names (and ``local``), as the daemon
        does before it opens its socket; a driver that fails is recorded, its volumes stay
        listed and their use answers 503 naming it.
        """
        self.registry = registry
        self.root = Path(root)
        self.events = events or EventBus()
        self.users: Users = users or (lambda name: ())
        self.index_path = self.root / INDEX_FILE
        self.short, self.long, self.init_timeout = SHORT, LONG, INIT
        self.list_wait, self.start_wait = LIST_WAIT, START_WAIT
        self._vols: dict[str, VolumeRecord] = {}
        self._drivers: dict[str, Any] = dict(drivers or {})
        self._driver_errors: dict[str, str] = {}
        # Refs this daemon holds through mount_for_container (frozensets: read from threads).
        self._mounted: dict[str, frozenset[str]] = {}
        self._guards: dict[str, _Guard] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._refresh_start: dict[str, int] = {}
        self._list_errors: dict[str, str] = {}
        self._changed: dict[str, int] = {}  # name -> sequence number of its last create/remove
        self._seq = 0
        self._save_lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="pyd-volume")
        self._load_index()
        self._init_known_drivers()

    # -- drivers ------------------------------------------------------------------------------

    def driver_home(self, name: str) -> Path:
        """``<data-root>/volumes`` for ``local`` (Docker's layout), else ``volumes-<name>``."""
        if not _DRIVER_NAME.fullmatch(name):
            raise InvalidParameter(f'invalid volume driver name "{name}"')
        return safe_join(self.root, "volumes" if name == DEFAULT_DRIVER else f"volumes-{name}")

    def _init_driver_sync(self, name: str) -> Any:
        installed = installed_names(Kind.VOLUME)
        if name not in installed:
            # Before the home directory is made: a typo creates nothing.
            raise DriverNotInstalled(Kind.VOLUME.value, name, installed)
        home = self.driver_home(name)
        home.mkdir(parents=True, exist_ok=True, mode=0o701)
        return self.registry.init_driver(Kind.VOLUME, name, home=home)

    def _init_known_drivers(self) -> None:
        names = {rec.driver for rec in self._vols.values()}
        if DEFAULT_DRIVER in installed_names(Kind.VOLUME):
            names.add(DEFAULT_DRIVER)
        for name in sorted(names - set(self._drivers)):
            try:
                self._drivers[name] = self._init_driver_sync(name)
            except PydError as exc:
                self._driver_errors[name] = str(exc)
                log.warning("volume driver unavailable: %s", exc, extra={"plugin": f"volume:{name}"})

    async def _driver(self, name: str) -> Any:
        """The driver called ``name``, loading it on first use (``DriverNotInstalled``: 404)."""
        drv = self._drivers.get(name)
        if drv is not None:
            return drv
        async with self._hold(f"driver:{name}", self.init_timeout, what=f'volume driver "{name}"') as g:
            drv = self._drivers.get(name)
            if drv is None:
                try:
                    drv = await self._run(self._init_driver_sync, name, timeout=self.init_timeout,
                                          what=f'loading volume driver "{name}"', guard=g)
                except PydError as exc:
                    self._driver_errors[name] = str(exc)
                    raise
                self._drivers[name] = drv
                self._driver_errors.pop(name, None)
        return drv

    async def _driver_of(self, rec: VolumeRecord, verb: str) -> Any:
        try:
            return await self._driver(rec.driver)
        except PydError as exc:
            raise Unavailable(f'{verb} {rec.name}: volume driver "{rec.driver}" is not available: {exc}') from exc

    # -- calls with deadlines and locks -----------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, timeout: float, what: str,
                   guard: _Guard | None = None) -> T:
        """``fn(*args)`` in the pool; ``Unavailable`` if it misses ``timeout``. The thread
        runs on; with ``guard`` its lock stays held until the thread returns."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, functools.partial(fn, *args))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            fut.add_done_callback(_retrieve)
            if guard is not None:
                guard.hung.append(fut)
            raise Unavailable(f"{what} did not complete within {timeout:g}s") from None

    @contextlib.asynccontextmanager
    async def _hold(self, key: str, timeout: float, *, what: str) -> AsyncIterator[_Guard]:
        """The lock of ``key`` (a volume or a driver), waited for at most ``timeout``."""
        g = self._guards.get(key)
        if g is None:
            g = self._guards[key] = _Guard()
        g.users += 1
        try:
            try:
                await asyncio.wait_for(g.lock.acquire(), timeout)
            except asyncio.TimeoutError:
                raise Unavailable(
                    f"{what} is busy: an earlier call to its driver has not returned within {timeout:g}s"
                ) from None
            try:
                yield g
            finally:
                pending = [f for f in g.hung if not f.done()]
                g.hung.clear()
                if pending:
                    waiter = asyncio.gather(*pending, return_exceptions=True)
                    waiter.add_done_callback(lambda _f: g.lock.release())
                else:
                    g.lock.release()
        finally:
            g.users -= 1
            if g.users == 0 and not g.lock.locked():
                self._guards.pop(key, None)

    def _volume_lock(self, name: str, timeout: float) -> contextlib.AbstractAsyncContextManager[_Guard]:
        return self._hold(f"volume:{name}", timeout, what=f'volume "{name}"')

    def _locked(self, name: str) -> bool:
        g = self._guards.get(f"volume:{name}")
        return g is not None and g.lock.locked()

    # -- the index ---------------------------------------------------------------------------------

    def _load_index(self) -> None:
        try:
            raw = self.index_path.read_bytes()
        except FileNotFoundError:
            return
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or not isinstance(doc.get("volumes"), dict):
                raise ValueError("not a volume index")
            records = {}
            for name, obj in doc["volumes"].items():
                validate_name("volume", name)
                records[name] = VolumeRecord.from_json(name, obj)
        except (ValueError, KeyError, TypeError, AttributeError, InvalidParameter) as exc:
            # Keep the bad file for inspection; the drivers' lists rebuild what they can.
            aside = self.index_path.with_name(INDEX_FILE + ".corrupt")
            os.replace(self.index_path, aside)
            log.error("volume index %s is unreadable (%s); moved to %s, rebuilding from the drivers",
                      self.index_path, exc, aside)
            return
        self._vols = records

    def _index_doc(self) -> dict[str, Any]:
        return {"version": INDEX_VERSION,
                "volumes": {n: r.to_json() for n, r in sorted(self._vols.items())}}

    async def _save(self) -> None:
        async with self._save_lock:  # the snapshot is taken inside: the last write is the newest
            doc = self._index_doc()
            await self._run(atomic_write_json, self.index_path, doc, 0o600, timeout=self.short,
                            what="writing the volume index")

    def _touch(self, name: str) -> None:
        self._seq += 1
        if self._refresh_start:  # only a list already in flight can predate this change
            self._changed[name] = self._seq

    def _forget(self, name: str) -> None:
        self._vols.pop(name, None)
        self._mounted.pop(name, None)
        self._touch(name)

    # -- refresh from the drivers' own lists -------------------------------------------------------

    async def start(self) -> None:
        """At daemon start: merge what every loaded driver lists (bounded by ``start_wait``)."""
        await self._refresh(self.start_wait)

    async def _refresh(self, wait: float) -> list[str]:
        """Start a list of each loaded driver that has none in flight, wait up to ``wait`` for
        them, and return warnings for drivers that did not answer or are unavailable."""
        loop = asyncio.get_running_loop()
        started = []
        for name, drv in list(self._drivers.items()):
            task = self._refreshing.get(name)
            if task is None or task.done():
                self._refresh_start[name] = self._seq
                task = self._refreshing[name] = loop.create_task(self._refresh_driver(name, drv))
                started.append(task)
        if started and wait > 0:
            await asyncio.wait(started, timeout=wait)
        warnings = []
        for name, task in sorted(self._refreshing.items()):
            if not task.done():
                warnings.append(f'volume driver "{name}" has not answered a list request; '
                                "its volumes are shown as last known")
            elif name in self._list_errors:
                warnings.append(f'volume driver "{name}" failed to list its volumes: {self._list_errors[name]}')
        in_index = {r.driver for r in self._vols.values()}
        for name, err in sorted(self._driver_errors.items()):
            if name in in_index and name not in self._drivers:
                warnings.append(f'volume driver "{name}" is not available ({err}); its volumes are shown as last known')
        return warnings

    async def _refresh_driver(self, name: str, drv: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            # No deadline: while a hung list runs, this task stays pending and no second
            # thread is started for the same driver.
            infos = await loop.run_in_executor(self._pool, drv.list)
        except Exception as exc:  # noqa: BLE001 - the driver's failure, reported as a warning
            self._list_errors[name] = str(exc) or type(exc).__name__
            log.warning("volume driver list failed: %s", exc, extra={"plugin": f"volume:{name}"})
            return
        self._list_errors.pop(name, None)
        try:
            if self._merge(name, infos, self._refresh_start.get(name, 0)):
                await self._save()
        except Exception:
            log.exception("merging the volumes of driver %s failed", name)
        finally:
            self._refresh_start.pop(name, None)
            oldest = min(self._refresh_start.values(), default=self._seq)
            self._changed = {n: s for n, s in self._changed.items() if s > oldest}

    def _merge(self, driver: str, infos: Iterable[VolumeInfo], since: int) -> bool:
        """Add volumes the driver has and the index lacks; forget the index's volumes of that
        driver it no longer has (as moby's restore). Names created, removed or locked since
        the list started are left alone (the list may predate them)."""
        changed = False
        seen: set[str] = set()
        for info in infos:
            name = getattr(info, "name", None)
            if not isinstance(name, str):
                continue
            seen.add(name)
            if self._changed.get(name, 0) > since or self._locked(name):
                continue
            rec = self._vols.get(name)
            if rec is None:
                try:
                    validate_name("volume", name)
                except InvalidParameter:
                    log.warning("volume driver %s lists a volume with an invalid name %r; ignored", driver, name)
                    continue
                # The index lost it (or the driver made it): 64 hex is how pyd names anonymous ones.
                self._vols[name] = VolumeRecord.from_info(driver, info, bool(_ANONYMOUS.fullmatch(name)))
                log.info("found volume %s", name, extra={"plugin": f"volume:{driver}"})
                changed = True
            elif rec.driver != driver:
                log.warning("volume %s is listed by driver %s but belongs to driver %s; ignored",
                            name, driver, rec.driver)
            else:
                changed |= rec.update(info)
        for name, rec in list(self._vols.items()):
            if (rec.driver == driver and name not in seen and self._changed.get(name, 0) <= since
                    and not self._locked(name) and not self._mounted.get(name)):
                log.info("volume %s no longer exists in its driver; forgotten", name,
                         extra={"plugin": f"volume:{driver}"})
                del self._vols[name]
                changed = True
        return changed

    # -- users -----------------------------------------------------------------------------------

    def refs(self, name: str) -> list[str]:
        """IDs of the containers that use ``name`` (referencing or mounting it), sorted.
        Safe from any thread; no driver call. ``users`` failing raises: callers that delete
        must not guess."""
        ids = set(self.users(name) or ()) | set(self._mounted.get(name, frozenset()))
        return sorted(ids)

    def is_in_use(self, name: str) -> bool:
        """True while a container references or mounts the volume (no driver call)."""
        try:
            return bool(self.refs(name))
        except Exception:  # noqa: BLE001 - when unsure, in use: never offer it for deletion
            log.exception("cannot tell which containers use volume %s", name)
            return True

    # -- create, inspect, list, remove, prune -------------------------------------------------------

    async def create(self, name: str = "", driver: str = "", options: Mapping[str, str] | None = None,
                     labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``POST /volumes/create``. No name: an anonymous volume (64 hex). Existing name:
        returned as is if the driver's ``create`` agrees (same options), 409 otherwise."""
        rec = await self._create(name or None, driver, options, labels, strict=True)
        return rec.doc()

    async def get_or_create(self, name: str | None, driver: str = "", options: Mapping[str, str] | None = None,
                            labels: Mapping[str, str] | None = None) -> VolumeRecord:
        """What a container reference to a volume does (Docker creates it at container
        create): the existing volume (any driver, unless ``driver`` names another: 409), or a
        new one; ``None`` makes an anonymous one."""
        return await self._create(name, driver, options, labels, strict=False)

    def _prepare(self, name: str | None, options: Any, labels: Any) -> tuple[str, bool, dict[str, str], dict[str, str]]:
        anonymous = not name
        name = name or secrets.token_hex(32)
        try:
            validate_name("volume", name)
        except InvalidParameter as exc:
            raise InvalidParameter(f"create {name}: {exc}") from None
        return name, anonymous, _string_map(options, "DriverOpts"), _string_map(labels, "Labels")

    async def _create(self, name: str | None, driver: str, options: Any, labels: Any, *, strict: bool) -> VolumeRecord:
        vname, anonymous, opts, lbls = self._prepare(name, options, labels)
        async with self._volume_lock(vname, self.long) as g:
            return await self._create_locked(vname, anonymous, driver, opts, lbls, strict=strict, guard=g)

    async def _create_locked(self, name: str, anonymous: bool, driver: str, options: dict[str, str],
                             labels: dict[str, str], *, strict: bool, guard: _Guard) -> VolumeRecord:
        rec = self._vols.get(name)
        if rec is not None:
            if driver and driver != rec.driver:
                raise Conflict(f"create {name}: driver '{rec.driver}' already has volume '{name}': "
                               "volume name must be unique")
            if strict or options:  # the driver decides whether the options are the same
                drv = await self._driver_of(rec, "create")
                info = await self._run(drv.create, name, options, labels, timeout=self.long,
                                       what=f'create {name}: volume driver "{rec.driver}"', guard=guard)
                if rec.update(info):
                    await self._save()
            return rec
        driver = driver or DEFAULT_DRIVER
        drv = await self._driver(driver)  # not installed: 404 listing the installed ones
        # The driver judges -o before anything exists (a bad one creates nothing).
        await self._run(drv.parse_options, options, timeout=self.short,
                        what=f'create {name}: checking options with volume driver "{driver}"', guard=guard)
        info = await self._run(drv.create, name, options, labels, timeout=self.long,
                               what=f'create {name}: volume driver "{driver}"', guard=guard)
        rec = VolumeRecord.from_info(driver, info, anonymous)
        rec.name = name
        self._vols[name] = rec
        self._touch(name)
        await self._save()
        self.events.emit("volume", "create", name, {"driver": driver})
        return rec

    def _need(self, name: str) -> VolumeRecord:
        rec = self._vols.get(name)
        if rec is None:
            raise NotFound(f"get {name}: no such volume")
        return rec

    def get(self, name: str) -> VolumeRecord:
        """The index's record of ``name`` (no driver call); ``NotFound`` in Docker's words."""
        return self._need(name)

    async def inspect(self, name: str) -> dict[str, Any]:
        """``GET /volumes/{name}``: the driver's current answer (with its ``Status``)."""
        rec = self._need(name)
        drv = await self._driver_of(rec, "get")
        async with self._volume_lock(name, self.short) as g:
            if self._vols.get(name) is not rec:
                rec = self._need(name)
            try:
                info = await self._run(drv.get, name, timeout=self.short,
                                       what=f'get {name}: volume driver "{rec.driver}"', guard=g)
            except NotFound:
                self._forget(name)  # gone behind the daemon's back
                await self._save()
                raise NotFound(f"get {name}: no such volume") from None
            if rec.update(info):
                await self._save()
        return rec.doc(status=getattr(info, "status", None))

    async def list(self, filters: Mapping[str, Iterable[str]] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """``GET /volumes``: ``(volumes, warnings)`` from the index, after merging what the
        drivers list within ``list_wait`` (a hung driver never holds this up longer)."""
        flt = _Filters(filters)
        warnings = await self._refresh(self.list_wait)
        vols = [rec.doc() for _, rec in sorted(self._vols.items()) if flt.match(rec, self.is_in_use)]
        return vols, warnings

    async def remove(self, name: str, *, force: bool = False) -> None:
        """``DELETE /volumes/{name}``: 409 while a container uses it; ``force`` ignores a
        missing volume and forgets one whose driver is gone (Docker's purge)."""
        if name not in self._vols:
            if force:
                return
            raise NotFound(f"get {name}: no such volume")
        async with self._volume_lock(name, self.long) as g:
            rec = self._vols.get(name)
            if rec is None:
                if force:
                    return
                raise NotFound(f"get {name}: no such volume")
            users = self.refs(name)
            if users:
                raise Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]")
            try:
                drv = await self._driver(rec.driver)
            except PydError as exc:
                if not force:
                    raise Unavailable(f'remove {name}: volume driver "{rec.driver}" is not available: {exc}') from exc
                log.warning("forgetting volume %s: its driver is not available (%s)", name, exc)
                drv = None
            if drv is not None:
                try:
                    await self._run(drv.remove, name, timeout=self.long,
                                    what=f'remove {name}: volume driver "{rec.driver}"', guard=g)
                except NotFound:
                    pass  # already gone in the driver: forget it
            self._forget(name)
            await self._save()
        self.events.emit("volume", "destroy", name, {"driver": rec.driver})

    async def prune(self, filters: Mapping[str, Iterable[str]] | None = None) -> dict[str, Any]:
        """``POST /volumes/prune``: every volume of local scope no container uses (API 1.41,
        Docker 20.10). ``label``/``label!`` narrow it; ``all=false`` keeps named volumes
        (Docker 23's default, for clients that ask for it)."""
        filters = {k: list(v) for k, v in (filters or {}).items() if v}
        for key in filters:
            if key not in ("label", "label!", "all"):
                raise InvalidParameter(f"invalid filter '{key}'")
        every = True
        for value in filters.get("all", []):
            if value.lower() in _TRUE:
                every = True
            elif value.lower() in _FALSE:
                every = False
            else:
                raise InvalidParameter(f"invalid filter 'all={value}'")
        deleted: list[str] = []
        reclaimed = 0
        for name, rec in sorted(self._vols.items()):
            if rec.scope != "local" or not (every or rec.anonymous):
                continue
            if not _labels_match(rec.labels, filters.get("label", [])):
                continue
            if filters.get("label!") and _labels_match(rec.labels, filters["label!"], any_of=True):
                continue
            if self.is_in_use(name):
                continue
            size = 0
            if rec.driver == DEFAULT_DRIVER and rec.mountpoint:
                try:
                    size = await self._run(dir_size, rec.mountpoint, timeout=self.long, what=f"measuring volume {name}")
                except Unavailable:
                    size = 0
            try:
                await self.remove(name)
            except (Conflict, NotFound, Unavailable) as exc:
                log.info("prune keeps volume %s: %s", name, exc)
                continue
            deleted.append(name)
            reclaimed += size
        self.events.emit("volume", "prune", "", {"reclaimed": str(reclaimed)})
        return {"VolumesDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    # -- containers ---------------------------------------------------------------------------------

    async def mount_for_container(
        self,
        name: str | None,
        container_id: str,
        driver: str = "",
        options: Mapping[str, str] | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        destination: str = "",
        read_write: bool = True,
        propagation: str = "",
    ) -> VolumeMount:
        """Get or create the volume (``None``: a new anonymous one) and mount it for
        ``container_id``; returns its name and the host path. Idempotent per container."""
        vname, anonymous, opts, lbls = self._prepare(name, options, labels)
        async with self._volume_lock(vname, self.long) as g:
            created = vname not in self._vols
            rec = await self._create_locked(vname, anonymous, driver, opts, lbls, strict=False, guard=g)
            drv = await self._driver_of(rec, "mount")
            try:
                path = await self._run(drv.mount, vname, container_id, timeout=self.long,
                                       what=f'mount {vname}: volume driver "{rec.driver}"', guard=g)
            except PydError:
                if created and anonymous:  # made only for this mount: do not leave it behind
                    await self._discard_new(rec, drv, g)
                raise
            self._mounted[vname] = self._mounted.get(vname, frozenset()) | {container_id}
        attrs = {"driver": rec.driver, "container": container_id}
        if destination:
            attrs.update({"destination": destination, "read/write": str(bool(read_write)).lower(),
                          "propagation": propagation})
        self.events.emit("volume", "mount", vname, attrs)
        return VolumeMount(name=vname, driver=rec.driver, path=str(path))

    async def _discard_new(self, rec: VolumeRecord, drv: Any, guard: _Guard) -> None:
        try:
            await self._run(drv.remove, rec.name, timeout=self.long, what=f"remove {rec.name}", guard=guard)
        except PydError as exc:
            log.warning("cannot remove anonymous volume %s after its mount failed: %s", rec.name, exc)
            return
        self._forget(rec.name)
        await self._save()
        self.events.emit("volume", "destroy", rec.name, {"driver": rec.driver})

    async def unmount_for_container(self, name: str, container_id: str) -> None:
        """Release ``container_id``'s mount (the driver unmounts when the last user goes).
        A volume that no longer exists is ignored."""
        rec = self._vols.get(name)
        if rec is None:
            self._mounted.pop(name, None)
            return
        drv = await self._driver_of(rec, "unmount")
        async with self._volume_lock(name, self.long) as g:
            try:
                await self._run(drv.unmount, name, container_id, timeout=self.long,
                                what=f'unmount {name}: volume driver "{rec.driver}"', guard=g)
            except NotFound:
                pass
            left = self._mounted.get(name, frozenset()) - {container_id}
            if left:
                self._mounted[name] = left
            else:
                self._mounted.pop(name, None)
        self.events.emit("volume", "unmount", name, {"driver": rec.driver, "container": container_id})

    async def remove_anonymous(self, names: Iterable[str]) -> list[str]:
        """``rm -v``: remove those of ``names`` that are anonymous and unused; named volumes
        and volumes still in use stay (logged, as Docker does). Returns the removed names."""
        removed = []
        for name in names:
            rec = self._vols.get(name)
            if rec is None or not rec.anonymous:
                continue
            try:
                await self.remove(name)
            except (Conflict, NotFound, Unavailable) as exc:
                log.warning("keeping anonymous volume %s: %s", name, exc)
                continue
            removed.append(name)
        return removed

    async def reconcile(self, running: Mapping[str, Iterable[str]]) -> None:
        """After a restart, with ``running`` = volume -> IDs of running containers using it:
        mount for each of them (idempotent) and release every other ref a driver with the
        ``VolumeRefs`` ability still reports (so tmpfs volumes of containers that stopped
        while the daemon was down are unmounted)."""
        for name, rec in sorted(self._vols.items()):
            want = set(running.get(name, ()))
            try:
                drv = await self._driver(rec.driver)
            except PydError as exc:
                log.warning("cannot reconcile volume %s: %s", name, exc)
                continue
            try:
                async with self._volume_lock(name, self.long) as g:
                    held: set[str] = set()
                    if isinstance(drv, VolumeRefs):
                        held = set(await self._run(drv.refs, name, timeout=self.short,
                                                   what=f"refs {name}", guard=g))
                    for cid in sorted(want):
                        await self._run(drv.mount, name, cid, timeout=self.long, what=f"mount {name}", guard=g)
                    for ref in sorted(held - want):
                        await self._run(drv.unmount, name, ref, timeout=self.long, what=f"unmount {name}", guard=g)
                    if want:
                        self._mounted[name] = frozenset(want)
                    else:
                        self._mounted.pop(name, None)
            except PydError as exc:
                log.warning("cannot reconcile volume %s: %s", name, exc)

    # -- engine hooks: /system/df, close -----------------------------------------------------------

    def contribute_disk_usage(self, df: dict[str, Any]) -> None:
        """The ``Volumes`` of ``GET /system/df`` (worker thread): each volume with
        ``UsageData`` (``RefCount``; ``Size`` of local volumes' data, -1 for other drivers)."""
        out = []
        for rec in sorted(list(self._vols.values()), key=lambda r: r.name):
            doc = rec.doc()
            try:
                refcount = len(self.refs(rec.name))
            except Exception:  # noqa: BLE001
                refcount = -1
            size = dir_size(rec.mountpoint) if rec.driver == DEFAULT_DRIVER and rec.mountpoint else -1
            doc["UsageData"] = {"RefCount": refcount, "Size": size}
            out.append(doc)
        df["Volumes"] = out

    async def close(self) -> None:
        for task in self._refreshing.values():
            task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
