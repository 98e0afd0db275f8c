"""The volume service over the real ``local`` driver in a temporary data-root: Docker's
create/inspect/list/remove/prune, the index across restarts, df data, events, deadlines with
a hung driver (a fake one, the only faked boundary), and the calls containers will make.

Tests that mount (tmpfs volumes) need root and are marked ``integration``.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterable, TypeVar

import pytest

from pyd.drivers.volume import VolumeInfo
from pyd.engine.events import EventBus
from pyd.engine.volumes import INDEX_FILE, VolumeService
from pyd.errors import Conflict, DriverNotInstalled, InvalidOption, InvalidParameter, NotFound, Unavailable
from pyd.registry import PluginRegistry
from pyd.testing.volume import disk_state, force_unmount, mounts_under

T = TypeVar("T")
TMPFS = {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}
CID = "c" * 64
CID2 = "d" * 64

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Users:
    """The container service's ``users`` callback: volume name -> container IDs."""

    def __init__(self) -> None:
        self.by_volume: dict[str, list[str]] = {}

    def __call__(self, name: str) -> list[str]:
        return self.by_volume.get(name, [])


@pytest.fixture
def root(tmp_path: Path) -> Iterable[Path]:
    root = tmp_path / "data"
    root.mkdir()
    yield root
    left = mounts_under(tmp_path)
    force_unmount(left)
    assert not left, f"mounts left behind: {left}"


def service(root: Path, **kwargs: Any) -> VolumeService:
    kwargs.setdefault("events", EventBus())
    return VolumeService(registry=PluginRegistry(), root=root, **kwargs)


async def closing(svc: VolumeService, fn: Callable[[VolumeService], Coroutine[Any, Any, T]]) -> T:
    try:
        return await fn(svc)
    finally:
        await svc.close()


def actions(bus: EventBus) -> list[tuple[str, str, dict[str, str]]]:
    return [(e.action, e.actor_id, e.attributes) for _, e in bus.history if e.type == "volume"]


# -- create / inspect -----------------------------------------------------------------------------


def test_create_named_and_anonymous_in_dockers_shape(root: Path) -> None:
    bus = EventBus()
    svc = service(root, events=bus)

    async def main(svc: VolumeService) -> tuple[dict, dict, dict]:
        named = await svc.create("data", labels={"a": "b"})
        anon = await svc.create()
        return named, anon, await svc.inspect("data")

    named, anon, inspected = run(closing(svc, main))
    assert named == inspected
    assert list(named) == ["CreatedAt", "Driver", "Labels", "Mountpoint", "Name", "Options", "Scope"]
    assert named["Driver"] == "local" and named["Scope"] == "local" and named["Options"] is None
    assert named["Labels"] == {"a": "b"} and named["Name"] == "data"
    assert named["Mountpoint"] == str(root / "volumes" / "data" / "_data")
    assert time.strptime(named["CreatedAt"], "%Y-%m-%dT%H:%M:%SZ")
    assert len(anon["Name"]) == 64 and int(anon["Name"], 16) >= 0 and anon["Labels"] is None
    index = json.loads((root / INDEX_FILE).read_text())["volumes"]
    assert index["data"]["driver"] == "local" and not index["data"]["anonymous"]
    assert index[anon["Name"]]["anonymous"]
    assert actions(bus) == [("create", "data", {"driver": "local"}), ("create", anon["Name"], {"driver": "local"})]


def test_create_is_idempotent_and_conflicts_as_docker(root: Path) -> None:
    bus = EventBus()
    svc = service(root, events=bus)

    async def main(svc: VolumeService) -> None:
        first = await svc.create("same", labels={"v": "1"})
        again = await svc.create("same", driver="local", labels={"v": "2"})
        assert again == first  # unchanged, labels included (Docker)
        with pytest.raises(Conflict, match="create same: driver 'local' already has volume 'same'"):
            await svc.create("same", driver="other")
        with pytest.raises(Conflict, match="same"):  # the driver: other options
            await svc.create("same", options={"type": "none", "device": "/tmp", "o": "bind"})
        # a container's reference uses it whatever its options
        rec = await svc.get_or_create("same")
        assert rec.name == "same" and rec.driver == "local"

    run(closing(svc, main))
    assert [a for a, _, _ in actions(bus)] == ["create"]


def test_bad_name_unknown_option_and_missing_driver_create_nothing(root: Path) -> None:
    svc = service(root)
    before = disk_state(root)

    async def main(svc: VolumeService) -> None:
        with pytest.raises(InvalidParameter, match=r'create a/b: "a/b" includes invalid characters'):
            await svc.create("a/b")
        with pytest.raises(InvalidParameter, match="invalid characters"):
            await svc.create("-x")
        with pytest.raises(InvalidOption, match=r'unknown option "sise".*valid keys: device, o, size, type'):
            await svc.create("badopt", options={"sise": "1m"})
        with pytest.raises(InvalidOption, match="device"):
            await svc.create("badopt", options={"type": "tmpfs"})
        with pytest.raises(DriverNotInstalled) as err:
            await svc.create("nodriver", driver="no-such-driver")
        assert err.value.status == 404
        assert 'volume driver "no-such-driver" is not installed' in str(err.value)
        assert "local" in str(err.value)  # the installed ones are listed
        with pytest.raises(InvalidParameter, match="Labels"):
            await svc.create("badlabels", labels={"a": 1})  # type: ignore[dict-item]
        assert (await svc.list())[0] == []

    run(closing(svc, main))
    assert disk_state(root) == before
    assert not (root / "volumes-no-such-driver").exists()


def test_inspect_and_remove_of_a_missing_volume(root: Path) -> None:
    async def main(svc: VolumeService) -> None:
        with pytest.raises(NotFound, match="^get nope: no such volume$"):
            await svc.inspect("nope")
        with pytest.raises(NotFound, match="^get nope: no such volume$"):
            await svc.remove("nope")
        await svc.remove("nope", force=True)  # force ignores NotFound

    run(closing(service(root), main))


# -- list and filters -------------------------------------------------------------------------------


def test_list_filters(root: Path) -> None:
    users = Users()
    svc = service(root, users=users)

    async def main(svc: VolumeService) -> dict[str, list[str]]:
        await svc.create("web-data", labels={"app": "web", "tier": "front"})
        await svc.create("db-data", labels={"app": "db"})
        await svc.create("scratch")
        users.by_volume["db-data"] = [CID]

        async def names(**filters: list[str]) -> list[str]:
            vols, warnings = await svc.list(filters)
            assert warnings == []
            return [v["Name"] for v in vols]

        out = {
            "all": await names(),
            "dangling": await names(dangling=["true"]),
            "used": await names(dangling=["0"]),
            "label-key": await names(label=["app"]),
            "label-kv": await names(label=["app=web"]),
            "labels-all-of": await names(label=["app", "tier=front"]),
            "name-substring": await names(name=["data"]),
            "names-any-of": await names(name=["web", "scr"]),
            "driver": await names(driver=["local"]),
            "other-driver": await names(driver=["nope"]),
        }
        with pytest.raises(InvalidParameter, match="invalid filter 'foo'"):
            await svc.list({"foo": ["1"]})
        with pytest.raises(InvalidParameter, match="invalid filter 'dangling=maybe'"):
            await svc.list({"dangling": ["maybe"]})
        return out

    out = run(closing(svc, main))
    assert out == {
        "all": ["db-data", "scratch", "web-data"],
        "dangling": ["scratch", "web-data"],
        "used": ["db-data"],
        "label-key": ["db-data", "web-data"],
        "label-kv": ["web-data"],
        "labels-all-of": ["web-data"],
        "name-substring": ["db-data", "web-data"],
        "names-any-of": ["scratch", "web-data"],
        "driver": ["db-data", "scratch", "web-data"],
        "other-driver": [],
    }


# -- remove and prune -------------------------------------------------------------------------------


def test_remove_of_a_volume_in_use_is_refused_and_keeps_data(root: Path) -> None:
    users = Users()
    bus = EventBus()
    svc = service(root, users=users, events=bus)

    async def main(svc: VolumeService) -> None:
        doc = await svc.create("keep")
        Path(doc["Mountpoint"], "f").write_text("precious")
        users.by_volume["keep"] = [CID2, CID]
        with pytest.raises(Conflict) as err:
            await svc.remove("keep", force=True)  # force does not override "in use"
        assert str(err.value) == f"remove keep: volume is in use - [{CID}, {CID2}]"
        assert err.value.status == 409
        assert Path(doc["Mountpoint"], "f").read_text() == "precious"
        assert svc.is_in_use("keep")
        users.by_volume.clear()
        await svc.remove("keep")
        assert not Path(doc["Mountpoint"]).exists()
        with pytest.raises(NotFound):
            await svc.inspect("keep")

    run(closing(svc, main))
    assert [a for a, _, _ in actions(bus)] == ["create", "destroy"]
    assert json.loads((root / INDEX_FILE).read_text())["volumes"] == {}


def test_prune_removes_unused_volumes_and_reports_space(root: Path) -> None:
    users = Users()
    bus = EventBus()
    svc = service(root, users=users, events=bus)

    async def main(svc: VolumeService) -> list[dict[str, Any]]:
        used = await svc.create("used")
        users.by_volume["used"] = [CID]
        big = await svc.create("big", labels={"keep": "no"})
        Path(big["Mountpoint"], "blob").write_bytes(b"x" * 5000)
        os.link(Path(big["Mountpoint"], "blob"), Path(big["Mountpoint"], "hardlink"))  # counted once
        await svc.create("kept", labels={"keep": "yes"})
        anon = (await svc.create())["Name"]
        reports = [
            await svc.prune({"label": ["nosuch"]}),
            await svc.prune({"all": ["false"]}),  # anonymous ones only
            await svc.prune({"label!": ["keep=yes"]}),
            await svc.prune(),
        ]
        with pytest.raises(InvalidParameter, match="invalid filter 'dangling'"):
            await svc.prune({"dangling": ["true"]})
        assert [v["Name"] for v in (await svc.list())[0]] == ["used"]
        assert Path(used["Mountpoint"]).is_dir()
        reports.append({"anon": anon})
        return reports

    nothing, anon_only, not_kept, rest, extra = run(closing(svc, main))
    assert nothing == {"VolumesDeleted": None, "SpaceReclaimed": 0}
    assert anon_only == {"VolumesDeleted": [extra["anon"]], "SpaceReclaimed": 0}
    assert not_kept == {"VolumesDeleted": ["big"], "SpaceReclaimed": 5000}
    assert rest == {"VolumesDeleted": ["kept"], "SpaceReclaimed": 0}
    prunes = [attrs for a, _, attrs in actions(bus) if a == "prune"]
    assert prunes[2] == {"reclaimed": "5000"}


# -- the index across restarts ----------------------------------------------------------------------


def test_volumes_survive_a_restart_and_a_lost_index(root: Path) -> None:
    async def first(svc: VolumeService) -> tuple[str, str]:
        doc = await svc.create("persist", labels={"x": "y"})
        Path(doc["Mountpoint"], "data.txt").write_text("hello")
        anon = await svc.create()
        return doc["CreatedAt"], anon["Name"]

    created, anon = run(closing(service(root), first))

    async def again(svc: VolumeService) -> list[dict[str, Any]]:
        await svc.start()
        return (await svc.list())[0]

    by_name = {v["Name"]: v for v in run(closing(service(root), again))}
    assert set(by_name) == {"persist", anon}
    assert (by_name["persist"]["CreatedAt"], by_name["persist"]["Labels"]) == (created, {"x": "y"})
    assert by_name[anon]["Labels"] is None
    assert Path(root / "volumes" / "persist" / "_data" / "data.txt").read_text() == "hello"

    # A lost index is rebuilt from the driver's own list; 64-hex names count as anonymous.
    (root / INDEX_FILE).unlink()
    svc = service(root)
    assert sorted(v["Name"] for v in run(closing(svc, again))) == sorted(["persist", anon])
    assert svc.get(anon).anonymous and not svc.get("persist").anonymous
    assert json.loads((root / INDEX_FILE).read_text())["volumes"]["persist"]["labels"] == {"x": "y"}

    # A corrupt one is kept aside, and rebuilt the same way.
    (root / INDEX_FILE).write_text("{not json")
    svc = service(root)
    assert sorted(v["Name"] for v in run(closing(svc, again))) == sorted(["persist", anon])
    assert (root / (INDEX_FILE + ".corrupt")).read_text() == "{not json"


def test_volume_removed_behind_the_daemons_back_is_forgotten(root: Path) -> None:
    async def main(svc: VolumeService) -> None:
        await svc.create("ghost")
        await svc.create("alive")
        os.rename(root / "volumes" / "ghost", root / "volumes" / ".rm-by-hand")
        with pytest.raises(NotFound, match="get ghost: no such volume"):
            await svc.inspect("ghost")
        await svc.create("ghost2")
        (root / "volumes" / "ghost2" / "volume.json").unlink()
        assert [v["Name"] for v in (await svc.list())[0]] == ["alive"]

    run(closing(service(root), main))


# -- df ---------------------------------------------------------------------------------------------


def test_disk_usage(root: Path) -> None:
    users = Users()
    svc = service(root, users=users)

    async def main(svc: VolumeService) -> dict[str, Any]:
        doc = await svc.create("sized")
        Path(doc["Mountpoint"], "sub").mkdir()
        Path(doc["Mountpoint"], "sub", "f").write_bytes(b"y" * 1234)
        os.symlink("/etc/passwd", Path(doc["Mountpoint"], "link"))
        await svc.create("empty")
        users.by_volume["sized"] = [CID, CID2]
        df: dict[str, Any] = {}
        await asyncio.to_thread(svc.contribute_disk_usage, df)
        return df

    df = run(closing(svc, main))
    usage = {v["Name"]: v["UsageData"] for v in df["Volumes"]}
    link = len("/etc/passwd")  # a symlink counts as itself, never its target
    assert usage == {"empty": {"RefCount": 0, "Size": 0}, "sized": {"RefCount": 2, "Size": 1234 + link}}
    assert df["Volumes"][0]["Driver"] == "local"


# -- deadlines: a hung driver (fake) ------------------------------------------------------------------


class HangingDriver:
    """A volume driver whose ``list``/``get`` block while ``hang`` is set."""

    name = "hanging"

    def __init__(self) -> None:
        self.hang = threading.Event()
        self.release = threading.Event()
        self.vols: dict[str, VolumeInfo] = {}

    def _wait(self) -> None:
        if self.hang.is_set():
            self.release.wait(30)

    def parse_options(self, raw: Any) -> dict[str, str]:
        if raw:
            raise InvalidOption(f"invalid -o for volume driver \"hanging\": unknown option {sorted(raw)[0]!r}; valid keys: none")
        return {}

    def create(self, name: str, options: Any, labels: Any) -> VolumeInfo:
        info = self.vols.setdefault(name, VolumeInfo(name=name, mountpoint=f"/hanging/{name}", labels=dict(labels)))
        return info

    def get(self, name: str) -> VolumeInfo:
        self._wait()
        if name not in self.vols:
            raise NotFound(f"get {name}: no such volume")
        return self.vols[name]

    def list(self) -> list[VolumeInfo]:
        self._wait()
        return sorted(self.vols.values(), key=lambda v: v.name)

    def remove(self, name: str) -> None:
        self._wait()
        self.vols.pop(name)

    def path(self, name: str) -> str:
        return self.vols[name].mountpoint

    def mount(self, name: str, ref: str) -> str:
        return self.vols[name].mountpoint

    def unmount(self, name: str, ref: str) -> None:
        pass


def test_a_hung_driver_does_not_freeze_list_or_other_volumes(root: Path) -> None:
    fake = HangingDriver()
    svc = service(root, drivers={"hanging": fake})
    svc.short = svc.long = 0.3
    svc.list_wait = 0.2

    async def main(svc: VolumeService) -> None:
        await svc.create("stuck", driver="hanging")
        await svc.create("fine")
        fake.hang.set()
        t0 = time.monotonic()
        vols, warnings = await svc.list()
        assert time.monotonic() - t0 < 1.0
        assert [(v["Name"], v["Driver"]) for v in vols] == [("fine", "local"), ("stuck", "hanging")]
        assert any('"hanging" has not answered' in w for w in warnings), warnings
        t0 = time.monotonic()
        vols, _ = await svc.list()  # the pending list is not waited for again
        assert time.monotonic() - t0 < 0.15 and len(vols) == 2
        with pytest.raises(Unavailable, match="did not complete within 0.3s"):
            await svc.inspect("stuck")
        # the hung call still runs: the volume stays locked, and the next call says so
        with pytest.raises(Unavailable, match='volume "stuck" is busy'):
            await svc.remove("stuck")
        assert (await svc.inspect("fine"))["Name"] == "fine"  # other volumes are not affected
        fake.release.set()
        fake.hang.clear()
        await asyncio.sleep(0.1)
        assert (await svc.inspect("stuck"))["Driver"] == "hanging"
        await svc.remove("stuck")
        vols, warnings = await svc.list()
        assert [v["Name"] for v in vols] == ["fine"] and warnings == []

    run(closing(svc, main))


def test_a_volume_whose_driver_is_gone_is_listed_and_can_be_forced_out(root: Path) -> None:
    (root / INDEX_FILE).write_text(json.dumps({"version": 1, "volumes": {
        "orphan": {"driver": "uninstalled-driver", "mountpoint": "/x/orphan", "created_at": "2026-01-01T00:00:00Z",
                   "labels": {}, "options": {}, "scope": "local", "anonymous": False}}}))
    svc = service(root)  # starts despite the missing driver

    async def main(svc: VolumeService) -> None:
        await svc.start()
        vols, warnings = await svc.list()
        assert [(v["Name"], v["Driver"], v["Mountpoint"]) for v in vols] == [("orphan", "uninstalled-driver", "/x/orphan")]
        assert any('"uninstalled-driver" is not available' in w for w in warnings), warnings
        with pytest.raises(Unavailable, match='get orphan: volume driver "uninstalled-driver" is not available'):
            await svc.inspect("orphan")
        with pytest.raises(Unavailable, match="remove orphan"):
            await svc.remove("orphan")
        await svc.remove("orphan", force=True)  # Docker's purge
        assert (await svc.list())[0] == []

    run(closing(svc, main))
    assert not (root / "volumes-uninstalled-driver").exists()


def test_parallel_creates_all_reach_the_index(root: Path) -> None:
    async def main(svc: VolumeService) -> None:
        await asyncio.gather(*(svc.create(f"par-{i:02d}") for i in range(24)))
        await asyncio.gather(*(svc.create(f"par-{i:02d}") for i in range(0, 24, 2)))  # idempotent

    run(closing(service(root), main))
    index = json.loads((root / INDEX_FILE).read_text())["volumes"]
    assert sorted(index) == [f"par-{i:02d}" for i in range(24)]


# -- what containers call -----------------------------------------------------------------------------


@pytest.mark.integration
@needs_root
def test_mount_for_containers_tmpfs_refcount_and_events(root: Path) -> None:
    bus = EventBus()
    svc = service(root, events=bus)

    async def main(svc: VolumeService) -> None:
        await svc.create("tv", options=TMPFS)
        path = str(root / "volumes" / "tv" / "_data")
        assert mounts_under(path) == []
        m1 = await svc.mount_for_container("tv", CID, destination="/data")
        m2 = await svc.mount_for_container("tv", CID2)
        assert m1.path == m2.path == path and m1.name == "tv" and m1.driver == "local"
        assert mounts_under(path) == [path]
        assert os.statvfs(path).f_blocks * os.statvfs(path).f_frsize == 1024 * 1024
        assert svc.is_in_use("tv")
        with pytest.raises(Conflict, match=f"remove tv: volume is in use - \\[{CID}, {CID2}\\]"):
            await svc.remove("tv")
        vols, _ = await svc.list({"dangling": ["true"]})
        assert vols == []
        await svc.unmount_for_container("tv", CID)
        assert mounts_under(path) == [path]  # one user left
        await svc.unmount_for_container("tv", CID2)
        await svc.unmount_for_container("tv", CID2)  # idempotent
        assert mounts_under(path) == [] and not svc.is_in_use("tv")
        await svc.remove("tv")

    run(closing(svc, main))
    evs = actions(bus)
    assert ("mount", "tv", {"driver": "local", "container": CID, "destination": "/data",
                            "read/write": "true", "propagation": ""}) in evs
    assert [a for a, _, _ in evs] == ["create", "mount", "mount", "unmount", "unmount", "unmount", "destroy"]


@pytest.mark.integration
@needs_root
def test_anonymous_volumes_for_containers_and_rm_v(root: Path) -> None:
    async def main(svc: VolumeService) -> None:
        anon = await svc.mount_for_container(None, CID, options=TMPFS)
        assert len(anon.name) == 64 and svc.get(anon.name).anonymous
        named = await svc.mount_for_container("named-vol", CID)
        assert not svc.get("named-vol").anonymous
        with pytest.raises(Conflict, match="driver 'local' already has volume 'named-vol'"):
            await svc.mount_for_container("named-vol", CID2, driver="other")
        # while mounted, rm -v keeps it
        assert await svc.remove_anonymous([anon.name, named.name]) == []
        await svc.unmount_for_container(anon.name, CID)
        await svc.unmount_for_container("named-vol", CID)
        assert await svc.remove_anonymous([anon.name, named.name, "no-such"]) == [anon.name]
        assert [v["Name"] for v in (await svc.list())[0]] == ["named-vol"]

    run(closing(service(root), main))


@pytest.mark.integration
@needs_root
def test_reconcile_after_a_restart_releases_refs_of_stopped_containers(root: Path) -> None:
    async def before(svc: VolumeService) -> str:
        await svc.create("kept-mounted", options=TMPFS)
        await svc.create("released", options=TMPFS)
        await svc.mount_for_container("kept-mounted", CID)
        return (await svc.mount_for_container("released", CID2)).path

    released_path = run(closing(service(root), before))
    kept_path = str(root / "volumes" / "kept-mounted" / "_data")
    assert mounts_under(released_path) == [released_path]  # the daemon "died" with mounts

    svc = service(root)

    async def after(svc: VolumeService) -> None:
        await svc.reconcile({"kept-mounted": [CID]})
        assert mounts_under(released_path) == []
        assert mounts_under(kept_path) == [kept_path]
        assert svc.is_in_use("kept-mounted") and not svc.is_in_use("released")
        await svc.unmount_for_container("kept-mounted", CID)
        assert mounts_under(kept_path) == []

    run(closing(svc, after))
