"""The container service's side of mounts: volumes made at create, mounted at start (with
copy-up), released at exit, removed with ``rm -v``; the ``users`` the volume service asks.

Lifecycle (moby's, with the volume service's calls):

* create: ``plan_mounts`` checks every input first (a 400 makes nothing); then the container
  is registered as a user of its named volumes *before* they are made (a concurrent prune
  cannot take them), the volumes are made (``get_or_create``; anonymous ones get their names
  here and are registered at once, before anything else can run on the loop), and the plan
  is kept in the record (``Pyd.MountPoints``). If the create fails later, volumes this create
  made are removed again.
* start: ``mount`` (``mount_for_container`` per volume, idempotent) before the rootfs work;
  ``apply`` (worker thread, rootfs mounted) makes missing ``-v`` host directories, checks
  bind sources and propagation, copies the image's content into new empty volumes and adds
  the ``MountSpec``s. A failed start, and every exit, calls ``release``.
* remove: ``forget``, with ``rm -v`` removing the anonymous volumes nobody else uses.
* daemon start: ``register`` each restored container, then ``reconcile`` the drivers' refs
  with the containers that still run (live-restore).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable

from pyd.engine.container_mounts import MountPoint, legacy_points, plan_mounts
from pyd.engine.container_spec import tmpfs_mount
from pyd.engine.volume_copyup import check_propagation, copy_up
from pyd.errors import InvalidParameter, NotFound, PydError, Unavailable
from pyd.types import MountSpec

if TYPE_CHECKING:
    from pyd.engine.container_record import Container
    from pyd.engine.volumes import VolumeService

log = logging.getLogger(__name__)

RECORD_KEY = "MountPoints"  # under the record's Pyd key
DEFAULT_DRIVER = "local"
_NEEDS_SLAVE_ROOT = ("shared", "rshared", "slave", "rslave")


class VolumeUsers:
    """volume name -> IDs of the containers that reference it. Thread-safe: the volume service
    reads it from worker threads (``system df``) and the loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_volume: dict[str, set[str]] = {}

    def add(self, cid: str, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                if name:
                    self._by_volume.setdefault(name, set()).add(cid)

    def drop(self, cid: str, names: Iterable[str] | None = None) -> None:
        """Forget ``cid`` as a user of ``names`` (all volumes when None)."""
        with self._lock:
            for name in list(self._by_volume) if names is None else list(names):
                ids = self._by_volume.get(name)
                if ids is None:
                    continue
                ids.discard(cid)
                if not ids:
                    del self._by_volume[name]

    def of(self, name: str) -> list[str]:
        """The ``users`` callback of the volume service."""
        with self._lock:
            return sorted(self._by_volume.get(name, ()))


def points_of(c: Container) -> list[MountPoint]:
    """The container's mount plan (a record from before plans were kept: its host binds)."""
    stored = c.pyd.get(RECORD_KEY)
    if stored is None:
        return legacy_points(c.host_config)
    return [MountPoint.from_json(p) for p in stored]


def mount_views(c: Container) -> list[dict[str, Any]]:
    """``Mounts`` of inspect and ``ps``, in Docker's shape."""
    return [p.view() for p in points_of(c)]


def _volume_names(points: Iterable[MountPoint]) -> list[str]:
    return [p.name for p in points if p.type == "volume" and p.name]


class ContainerMounts:
    """Held by the container service (``containers.mounts``); ``attach`` gives it the volume
    service and makes it that service's ``users``."""

    def __init__(self) -> None:
        self.users = VolumeUsers()
        self.volumes: VolumeService | None = None
        self._active: dict[str, dict[str, str]] = {}  # cid -> destination -> host path (started)

    def attach(self, volumes: VolumeService | None) -> None:
        self.volumes = volumes
        if volumes is not None:
            volumes.users = self.users.of

    def _service(self) -> VolumeService:
        if self.volumes is None:
            raise Unavailable("the volume service is not running: containers with volumes cannot be created or started")
        return self.volumes

    # -- create -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def creating(self, c: Container, lookup: Callable[[str], Container]) -> AsyncIterator[list[MountPoint]]:
        """Plan ``c``'s mounts and make its volumes; the body makes the rest of the container.
        If anything fails, the volumes made here are removed and ``c`` is no user of any."""
        points = plan_mounts(c.config, c.host_config, lambda ref: points_of(lookup(ref)))
        for p in points:
            if p.type == "bind" and p.origin == "mounts" and not os.path.exists(p.source):
                raise InvalidParameter(
                    f'invalid mount config for type "bind": bind source path does not exist: {p.source}')
        made: list[str] = []
        try:
            if any(p.type == "volume" for p in points):
                await self._make_volumes(c.id, points, made)
            c.pyd[RECORD_KEY] = [p.to_json() for p in points]
            yield points
        except BaseException:
            c.pyd.pop(RECORD_KEY, None)
            self.users.drop(c.id)
            for name in made:
                try:
                    await self._service().remove(name)
                except PydError as exc:
                    log.warning("cannot remove volume %s made for the failed create of %s: %s", name, c.id[:12], exc)
            raise

    async def _make_volumes(self, cid: str, points: list[MountPoint], made: list[str]) -> None:
        svc = self._service()
        from pyd.registry import Kind, installed_names

        installed = installed_names(Kind.VOLUME)
        vols = [p for p in points if p.type == "volume"]
        existing: set[str] = set()
        for p in vols:
            if p.name:
                try:
                    existing.add(svc.get(p.name).name)
                except NotFound:
                    pass
            driver = p.driver or ("" if p.name in existing else DEFAULT_DRIVER)
            if driver and driver not in installed:
                what = p.name or f"the anonymous volume at {p.destination}"
                raise InvalidParameter(
                    f'create {what}: volume driver "{driver}" is not installed; '
                    f"available volume drivers: {', '.join(installed) or 'none'}"
                )
        # Users first: from here on a prune or `volume rm` sees the volumes as in use.
        self.users.add(cid, _volume_names(vols))
        for p in vols:
            rec = await svc.get_or_create(p.name or None, p.driver, p.driver_options or None, p.labels or None)
            if not p.name:
                self.users.add(cid, [rec.name])  # no await since it was made: nothing ran in between
            if rec.name not in existing:
                made.append(rec.name)
            p.name, p.driver, p.source = rec.name, rec.driver, rec.mountpoint
            if p.origin == "binds" and p.driver == DEFAULT_DRIVER and not p.mode:
                p.mode = "z"  # moby's setBindModeIfNull, for -v NAME:/path on the local driver

    # -- start / exit ---------------------------------------------------------------------------

    async def mount(self, c: Container) -> None:
        """Mount ``c``'s volumes for a start; on failure, what was mounted is released."""
        vols = [p for p in points_of(c) if p.type == "volume"]
        if not vols:
            self._active[c.id] = {}
            return
        svc = self._service()
        active: dict[str, str] = {}
        done: list[str] = []
        try:
            for p in vols:
                vm = await svc.mount_for_container(p.name, c.id, p.driver, destination=p.destination,
                                                   read_write=p.rw, propagation=p.propagation)
                done.append(vm.name)
                active[p.destination] = vm.path
        except BaseException:
            for name in done:
                with contextlib.suppress(Exception):
                    await svc.unmount_for_container(name, c.id)
            raise
        self._active[c.id] = active

    def apply(self, c: Container, rootfs: str, spec: Any) -> None:
        """Add ``c``'s mounts to ``spec`` (worker thread, after ``mount``, rootfs mounted):
        host directories of ``-v``, propagation checks, copy-up."""
        active = self._active.get(c.id, {})
        for p in points_of(c):
            ro = [] if p.rw else ["ro"]
            if p.type == "bind":
                if not os.path.exists(p.source):
                    if not p.create_source:
                        raise InvalidParameter(
                            f'invalid mount config for type "bind": bind source path does not exist: {p.source}')
                    os.makedirs(p.source, mode=0o755, exist_ok=True)
                check_propagation(p.source, p.propagation)
                if p.propagation in _NEEDS_SLAVE_ROOT:
                    # host mounts reach the container only if its root receives them
                    spec.rootfs_propagation = "rslave"
                spec.mounts.append(MountSpec(destination=p.destination, type="bind", source=p.source,
                                             options=["rbind", p.propagation or "rprivate"] + ro))
            elif p.type == "volume":
                path = active.get(p.destination)
                if path is None:
                    raise PydError(f"volume {p.name} is not mounted for container {c.id[:12]}")
                if p.copy_data:
                    try:
                        copy_up(rootfs, p.destination, path)
                    except OSError as exc:
                        raise PydError(
                            f"copying the image's {p.destination} into volume {p.name} failed: {exc}") from exc
                spec.mounts.append(MountSpec(destination=p.destination, type="bind", source=path,
                                             options=["rbind", "rprivate"] + ro))
            else:
                spec.mounts.append(tmpfs_mount(p.destination, p.tmpfs_options))

    async def release(self, c: Container) -> None:
        """Undo ``mount`` (at exit, or after a failed start). Never raises."""
        self._active.pop(c.id, None)
        names = _volume_names(points_of(c))
        if not names or self.volumes is None:
            return
        for name in names:
            try:
                await self.volumes.unmount_for_container(name, c.id)
            except Exception as exc:  # noqa: BLE001 - logged; the next reconcile retries
                log.warning("cannot unmount volume %s of container %s: %s", name, c.id[:12], exc)

    # -- remove / restore -------------------------------------------------------------------------

    async def forget(self, c: Container, *, remove_anonymous: bool = False) -> None:
        """``c`` is removed: it uses no volume any more; with ``rm -v`` its anonymous volumes
        go too (named ones, and those another container uses, stay). Never raises."""
        self._active.pop(c.id, None)
        names = _volume_names(points_of(c))
        self.users.drop(c.id, names)
        if remove_anonymous and names and self.volumes is not None:
            try:
                await self.volumes.remove_anonymous(names)
            except Exception as exc:  # noqa: BLE001
                log.warning("cannot remove the anonymous volumes of container %s: %s", c.id[:12], exc)

    def register(self, c: Container) -> None:
        """A container restored at daemon start uses its volumes again."""
        self.users.add(c.id, _volume_names(points_of(c)))

    async def reconcile(self, containers: Iterable[Container]) -> None:
        """After restore: the drivers hold exactly the refs of containers that still run."""
        if self.volumes is None:
            return
        running: dict[str, list[str]] = {}
        for c in containers:
            if c.state.running:
                for name in _volume_names(points_of(c)):
                    running.setdefault(name, []).append(c.id)
        try:
            await self.volumes.reconcile(running)
        except Exception:  # noqa: BLE001
            log.exception("reconciling volume mounts after restore failed")

