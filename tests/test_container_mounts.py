"""Container mounts without a daemon: parsing and validation of ``Binds``/``Mounts``/
``VolumesFrom``/``Config.Volumes`` into a plan (Docker's rules and messages), the CLI's
``-v``/``--mount`` flags, copy-up on real directories, propagation checks on a given
mountinfo, the ``users`` registry, and the create-time volume work over the real ``local``
driver (nothing is mounted here)."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from pyd.cli.create_body import RunOptions, build_create_body
from pyd.cli.mount_flags import parse_mount_flag, split_volumes
from pyd.engine.container_mounts import (
    MountPoint,
    legacy_points,
    parse_bind_spec,
    parse_mount,
    parse_volumes_from,
    plan_mounts,
    tmpfs_options,
)
from pyd.engine.container_record import Container
from pyd.engine.container_volumes import ContainerMounts, VolumeUsers, mount_views
from pyd.engine.events import EventBus
from pyd.engine.volume_copyup import check_propagation, copy_up, mount_of
from pyd.engine.volumes import VolumeService
from pyd.errors import InvalidOption, InvalidParameter, NotFound
from pyd.registry import PluginRegistry
from pyd.types import ProcessSpec

# -- Binds ---------------------------------------------------------------------------------------


def test_bind_specs_follow_dockers_parser():
    b = parse_bind_spec("/host/dir/:/data/:ro,rshared")
    assert (b.type, b.source, b.destination, b.rw, b.mode, b.propagation, b.create_source) == (
        "bind", "/host/dir", "/data", False, "ro,rshared", "rshared", True)
    assert parse_bind_spec("/h:/c").propagation == "rprivate" and parse_bind_spec("/h:/c").rw
    assert parse_bind_spec("/h:/c:Z").rw  # SELinux labels are accepted and ignored
    v = parse_bind_spec("data:/srv:ro,nocopy", volume_driver="local")
    assert (v.type, v.name, v.driver, v.rw, v.copy_data, v.propagation) == ("volume", "data", "local", False, False, "")
    anon = parse_bind_spec("/anon")
    assert (anon.type, anon.name, anon.anonymous, anon.destination) == ("volume", "", True, "/anon")


@pytest.mark.parametrize(("spec", "message"), [
    ("/a:/b:/c:ro", "invalid volume specification: '/a:/b:/c:ro'"),
    ("/data:rw", "invalid volume specification: '/data:rw'"),  # a mode but no destination
    (":/data", "invalid volume specification: ':/data'"),
    ("/h:", "invalid volume specification: '/h:'"),
    ("/h:/c:ro,rw", "invalid mode: ro,rw"),
    ("/h:/c:sideways", "invalid mode: sideways"),
    ("/h:relative", "mount path must be absolute"),
    ("/h:/", "destination can't be '/'"),
    ("/h:/c:nocopy", 'invalid mount config for type "bind": field VolumeOptions must not be specified'),
    ("vol:/c:rshared", 'invalid mount config for type "volume": field BindOptions must not be specified'),
    ("bad name:/c", '"bad name" includes invalid characters for a local volume name'),
    ("./rel:/c", "includes invalid characters"),
])
def test_bad_bind_specs(spec, message):
    with pytest.raises(InvalidParameter) as err:
        parse_bind_spec(spec)
    assert message in str(err.value)


# -- Mounts ---------------------------------------------------------------------------------------


def test_mount_entries():
    b = parse_mount({"Type": "bind", "Source": "/h/", "Target": "/c", "ReadOnly": True,
                     "BindOptions": {"Propagation": "rslave"}})
    assert (b.source, b.destination, b.rw, b.propagation, b.create_source, b.mode) == ("/h", "/c", False, "rslave", False, "")
    v = parse_mount({"Type": "volume", "Source": "vv", "Target": "/c", "VolumeOptions": {
        "NoCopy": True, "Labels": {"a": "1"}, "DriverConfig": {"Name": "local", "Options": {"type": "tmpfs"}}}})
    assert (v.name, v.driver, v.copy_data, v.labels, v.driver_options) == ("vv", "local", False, {"a": "1"}, {"type": "tmpfs"})
    # docker-py sends Source: null for anonymous volumes and tmpfs
    assert parse_mount({"Type": "volume", "Source": None, "Target": "/c", "ReadOnly": False}).anonymous
    t = parse_mount({"Type": "tmpfs", "Source": None, "Target": "/t", "ReadOnly": True,
                     "TmpfsOptions": {"SizeBytes": 3 << 20, "Mode": 0o1770}})
    assert t.tmpfs_options == "ro,mode=1770,size=3m" and not t.rw


def test_tmpfs_options_pick_the_largest_exact_unit():
    assert tmpfs_options({"SizeBytes": 1 << 30}, False) == "size=1g"
    assert tmpfs_options({"SizeBytes": 1536}, False) == "size=1536"
    assert tmpfs_options({"SizeBytes": 2048}, False) == "size=2k"
    assert tmpfs_options(None, False) == ""


@pytest.mark.parametrize(("entry", "message"), [
    ({"Type": "bind", "Source": "rel", "Target": "/c"},
     """invalid mount config for type "bind": invalid mount path: 'rel' mount path must be absolute"""),
    ({"Type": "bind", "Target": "/c"}, 'invalid mount config for type "bind": field Source must not be empty'),
    ({"Type": "bind", "Source": "/h", "Target": "c"}, "invalid mount path: 'c' mount path must be absolute"),
    ({"Type": "bind", "Source": "/h", "Target": "/"}, "destination can't be '/'"),
    ({"Type": "bind", "Source": "/h", "Target": "/c", "BindOptions": {"Propagation": "x"}}, "invalid propagation mode: x"),
    ({"Type": "bind", "Source": "/h", "Target": "/c", "VolumeOptions": {}}, "field VolumeOptions must not be specified"),
    ({"Type": "volume", "Target": "/c", "ReadOnly": True}, "must not set ReadOnly mode when using anonymous volumes"),
    ({"Type": "volume", "Source": "vv", "Target": "/c", "TmpfsOptions": {}}, "field TmpfsOptions must not be specified"),
    ({"Type": "volume", "Source": "v/x", "Target": "/c"}, "includes invalid characters"),
    ({"Type": "tmpfs", "Source": "x", "Target": "/c"}, 'invalid mount config for type "tmpfs": field Source must not be specified'),
    ({"Type": "tmpfs", "Target": "/c", "TmpfsOptions": {"SizeBytes": -1}}, "invalid tmpfs size -1"),
    ({"Type": "tmpfs", "Target": "/c", "TmpfsOptions": {"Mode": 0o17777}}, "invalid tmpfs mode"),
    ({"Type": "npipe", "Target": "/c"}, 'invalid mount config for type "npipe": mount type unknown'),
    ({"Target": "/c"}, "field Type must not be empty"),
    ({"Type": "volume"}, "field Target must not be empty"),
    ({"Type": "volume", "Target": "/c", "ReadOnly": "yes"}, "ReadOnly must be a boolean"),
    ("type=volume", "expected an object"),
])
def test_bad_mount_entries(entry, message):
    with pytest.raises(InvalidParameter) as err:
        parse_mount(entry)
    assert message in str(err.value)


# -- VolumesFrom and the plan --------------------------------------------------------------------


def test_volumes_from_specs():
    assert parse_volumes_from("web") == ("web", "")
    assert parse_volumes_from("web:ro,z") == ("web", "ro,z")
    for bad in ("web:rshared", "web:ro,rw", ":ro", ""):
        with pytest.raises(InvalidParameter):
            parse_volumes_from(bad)


def _source_points() -> list[MountPoint]:
    return [
        MountPoint(type="volume", destination="/data", name="shared", driver="local", mode="z", origin="binds"),
        MountPoint(type="bind", destination="/h", source="/host", rw=False, mode="ro", propagation="rprivate"),
    ]


def test_plan_order_and_precedence():
    lookups: list[str] = []

    def other(ref: str) -> list[MountPoint]:
        lookups.append(ref)
        if ref != "src":
            raise NotFound(f"No such container: {ref}")
        return _source_points()

    cfg = {"Volumes": {"/data": {}, "/img": {}, "/t": {}, "/h": {}}}
    hc = {"VolumesFrom": ["src:ro"], "Binds": ["/x:/h"], "Tmpfs": {"/t": ""}, "VolumeDriver": "local",
          "Mounts": [{"Type": "volume", "Target": "/m"}]}
    plan = {p.destination: p for p in plan_mounts(cfg, hc, other)}
    assert lookups == ["src"]
    assert set(plan) == {"/data", "/h", "/m", "/img"}  # /t is a --tmpfs: no volume over it
    assert plan["/data"].name == "shared" and not plan["/data"].rw and plan["/data"].origin == "volumes-from"
    assert plan["/h"].source == "/x" and plan["/h"].rw  # a bind replaces what --volumes-from brought
    assert plan["/img"].anonymous and plan["/img"].driver == "local" and plan["/img"].origin == "image"
    # without a mode, volumes-from keeps each mount's own
    kept = {p.destination: p.rw for p in plan_mounts({}, {"VolumesFrom": ["src"]}, other)}
    assert kept == {"/data": True, "/h": False}
    with pytest.raises(NotFound, match="No such container: nope"):
        plan_mounts({}, {"VolumesFrom": ["nope"]}, other)


@pytest.mark.parametrize(("cfg", "hc", "message"), [
    ({}, {"Binds": ["va:/x", "vb:/x/"]}, "Duplicate mount point: /x"),
    ({}, {"Binds": ["va:/x"], "Mounts": [{"Type": "tmpfs", "Target": "/x"}]}, "Duplicate mount point: /x"),
    ({}, {"Binds": ["va:/x"], "Tmpfs": {"/x": ""}}, "Duplicate mount point: /x"),
    ({}, {"Binds": ["v:/x"]}, '"v" includes invalid characters'),  # Docker's names have 2+ characters
    ({"Volumes": {"relative": {}}}, {}, "mount path must be absolute"),
    ({}, {"Mounts": {"Type": "bind"}}, "invalid Mounts: expected a list"),
    ({}, {"VolumeDriver": 3}, "invalid VolumeDriver"),
])
def test_bad_plans(cfg, hc, message):
    with pytest.raises(InvalidParameter, match=message):
        plan_mounts(cfg, hc)


def test_views_and_legacy_records():
    v = MountPoint(type="volume", destination="/d", name="n", driver="local", source="/v/n/_data", mode="z")
    assert v.view() == {"Type": "volume", "Name": "n", "Source": "/v/n/_data", "Destination": "/d", "Driver": "local",
                        "Mode": "z", "RW": True, "Propagation": ""}
    t = MountPoint(type="tmpfs", destination="/t")
    assert t.view() == {"Type": "tmpfs", "Source": "", "Destination": "/t", "Mode": "", "RW": True, "Propagation": ""}
    assert MountPoint.from_json({**v.to_json(), "future_field": 1}) == v
    # a record from before plans were kept shows (and mounts) its host binds
    c = _container(host_config={"Binds": ["/h:/c:ro", "named:/n"]})
    assert mount_views(c) == [{"Type": "bind", "Source": "/h", "Destination": "/c", "Mode": "ro", "RW": False,
                               "Propagation": "rprivate"}]
    assert [p.destination for p in legacy_points({"Binds": ["/h:/c", "bad spec:::"]})] == ["/c"]


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_mount_flag_as_the_docker_cli_sends_it():
    assert parse_mount_flag("type=volume,src=trace-vol,dst=/data,readonly") == {
        "Type": "volume", "Source": "trace-vol", "Target": "/data", "ReadOnly": True}
    assert parse_mount_flag("type=tmpfs,dst=/scratch") == {"Type": "tmpfs", "Target": "/scratch"}
    assert parse_mount_flag("target=/v,volume-opt=type=tmpfs,volume-opt=o=size=1m,volume-label=a=b,volume-nocopy,"
                            "volume-driver=local") == {
        "Type": "volume", "Target": "/v", "VolumeOptions": {
            "NoCopy": True, "Labels": {"a": "b"},
            "DriverConfig": {"Name": "local", "Options": {"type": "tmpfs", "o": "size=1m"}}}}
    assert parse_mount_flag('type=bind,"source=/a,b",target=/c,bind-propagation=rshared,ro=false') == {
        "Type": "bind", "Source": "/a,b", "Target": "/c", "BindOptions": {"Propagation": "rshared"}}
    assert parse_mount_flag("type=tmpfs,dst=/t,tmpfs-size=64m,tmpfs-mode=1770")["TmpfsOptions"] == {
        "SizeBytes": 64 << 20, "Mode": 0o1770}


@pytest.mark.parametrize(("value", "message"), [
    ("type=volume,src=x", "target is required"),
    ("type=bind,src=/x,dst=/y,volume-nocopy", "cannot mix 'volume-*' options with mount type 'bind'"),
    ("type=volume,dst=/y,bind-propagation=rshared", "cannot mix 'bind-*' options with mount type 'volume'"),
    ("type=volume,dst=/y,tmpfs-size=1m", "cannot mix 'tmpfs-*' options with mount type 'volume'"),
    ("dst=/y,colour=red", "unexpected key 'colour' in 'colour=red'"),
    ("dst=/y,source", "invalid field 'source' must be a key=value pair"),
    ("dst=/y,readonly=maybe", "invalid value for readonly: maybe"),
    ("type=tmpfs,dst=/y,tmpfs-mode=999", "invalid value for tmpfs-mode: 999"),
    ("type=tmpfs,dst=/y,tmpfs-size=lots", "invalid value for tmpfs-size: lots"),
])
def test_cli_bad_mount_flags(value, message):
    with pytest.raises(InvalidParameter) as err:
        parse_mount_flag(value)
    assert str(err.value).startswith(f'invalid argument "{value}" for "--mount" flag: ') and message in str(err.value)


def test_cli_v_and_friends_in_the_create_body():
    assert split_volumes(["vol:/d", "/h:/c:ro", "/anon", "./rel:/r"], cwd="/work") == (
        ["vol:/d", "/h:/c:ro", "/work/rel:/r"], {"/anon": {}})
    body = build_create_body(RunOptions("busybox", volumes=["/anon", "v:/d"], mounts=["type=tmpfs,dst=/t"],
                                        volumes_from=["web:ro"], volume_driver="local"))
    assert body["Volumes"] == {"/anon": {}}
    hc = body["HostConfig"]
    assert (hc["Binds"], hc["Mounts"], hc["VolumesFrom"], hc["VolumeDriver"]) == (
        ["v:/d"], [{"Type": "tmpfs", "Target": "/t"}], ["web:ro"], "local")
    assert "Binds" not in build_create_body(RunOptions("busybox"))["HostConfig"]


# -- copy-up and propagation --------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_copy_up_keeps_owners_modes_and_links_and_stays_in_the_rootfs(tmp_path: Path):
    rootfs = tmp_path / "rootfs"
    content = rootfs / "srv" / "content"
    (content / "sub").mkdir(parents=True)
    os.chown(content, 1000, 1001)
    content.chmod(0o750)
    (content / "f").write_text("data")
    os.chown(content / "f", 7, 8)
    (content / "f").chmod(0o4710)
    (content / "sub").chmod(0o700)
    (content / "link").symlink_to("/etc/passwd")  # copied as a link, never followed
    os.mkfifo(content / "pipe")
    (content / "pipe").chmod(0o620)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host only")
    (rootfs / "escape").symlink_to("../../outside")  # resolves to the rootfs's /outside, which is missing
    (rootfs / "jump").symlink_to("/srv/content")  # resolved inside the rootfs
    vol = tmp_path / "vol"
    vol.mkdir()
    assert copy_up(str(rootfs), "/jump", str(vol))
    assert (stat.S_IMODE(vol.stat().st_mode), vol.stat().st_uid, vol.stat().st_gid) == (0o750, 1000, 1001)
    f = (vol / "f").stat()
    assert (stat.S_IMODE(f.st_mode), f.st_uid, f.st_gid, (vol / "f").read_text()) == (0o4710, 7, 8, "data")
    assert stat.S_IMODE((vol / "sub").stat().st_mode) == 0o700
    assert os.readlink(vol / "link") == "/etc/passwd"
    assert stat.S_ISFIFO((vol / "pipe").lstat().st_mode) and stat.S_IMODE((vol / "pipe").lstat().st_mode) == 0o620
    # only an empty volume is filled
    (vol / "f").write_text("changed")
    assert not copy_up(str(rootfs), "/srv/content", str(vol))
    assert (vol / "f").read_text() == "changed"
    # a path the image lacks, or one whose link points out of the rootfs: nothing copied
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not copy_up(str(rootfs), "/nope", str(empty))
    assert not copy_up(str(rootfs), "/escape", str(empty))
    assert list(empty.iterdir()) == []


MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:50 / /srv/shared rw shared:7 - tmpfs tmpfs rw
41 27 0:51 / /srv/slave rw master:7 - tmpfs tmpfs rw
42 27 0:52 / /srv/with\\040space rw shared:9 - tmpfs tmpfs rw
"""


def test_propagation_needs_a_shared_or_slave_source(tmp_path: Path):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert mount_of("/srv/shared/x/y", str(info)).mount_point == "/srv/shared"
    assert mount_of("/srv/with space/a", str(info)).optional == ("shared:9",)
    check_propagation("/srv/shared/x", "rshared", str(info))
    check_propagation("/srv/slave/x", "rslave", str(info))
    check_propagation("/home/x", "rprivate", str(info))
    with pytest.raises(InvalidParameter, match="path /home/x is mounted on / but it is not a shared mount"):
        check_propagation("/home/x", "rshared", str(info))
    with pytest.raises(InvalidParameter, match="not a shared mount"):
        check_propagation("/srv/slave/x", "shared", str(info))
    with pytest.raises(InvalidParameter, match="not a shared or slave mount"):
        check_propagation("/home/x", "slave", str(info))


def test_apply_builds_mount_specs(tmp_path: Path):
    host = tmp_path / "made" / "here"
    c = _container(pyd={"MountPoints": [
        MountPoint(type="bind", destination="/h", source=str(host), rw=False, propagation="rprivate",
                   create_source=True).to_json(),
        MountPoint(type="tmpfs", destination="/t", tmpfs_options="size=1k").to_json(),
        MountPoint(type="bind", destination="/must", source=str(tmp_path / "missing"), propagation="rprivate").to_json(),
    ]})
    spec = ProcessSpec(args=["true"])
    with pytest.raises(InvalidParameter, match="bind source path does not exist: .*/missing"):
        ContainerMounts().apply(c, str(tmp_path), spec)
    assert host.is_dir()  # a -v host directory is made at start
    specs = {m.destination: m for m in spec.mounts}
    assert specs["/h"].options == ["rbind", "rprivate", "ro"] and specs["/h"].source == str(host)
    assert specs["/t"].type == "tmpfs" and specs["/t"].options == ["size=1k", "noexec", "nosuid", "nodev"]
    assert spec.rootfs_propagation == ""


# -- users and the create-time volume work --------------------------------------------------------------


def test_users_registry_is_thread_safe():
    users = VolumeUsers()

    def churn(i: int) -> None:
        for n in range(300):
            users.add(f"c{i}", [f"v{n % 7}"])
            users.of(f"v{n % 7}")
            users.drop(f"c{i}", [f"v{(n + 3) % 7}"])

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    users.drop("c0")
    assert "c0" not in sum((users.of(f"v{n}") for n in range(7)), [])
    users.add("x", ["a", ""])
    assert users.of("a") == ["x"] and users.of("") == []


def _container(**kw: Any) -> Container:
    base: dict[str, Any] = dict(id="a" * 64, name="c", dir="/nonexistent", created=0, path="true", args=[],
                                config={}, host_config={}, image_id="sha256:" + "0" * 64)
    base.update(kw)
    return Container(**base)


def test_create_makes_volumes_and_undoes_them_on_failure(tmp_path: Path):
    svc = VolumeService(registry=PluginRegistry(), root=tmp_path, events=EventBus())
    mounts = ContainerMounts()
    mounts.attach(svc)
    assert svc.users is not None and svc.users("x") == []

    async def scenario() -> None:
        try:
            await svc.create("existing")
            good = _container(config={"Volumes": {"/img": {}}},
                              host_config={"Binds": ["existing:/e", "fresh:/f"], "Mounts": [{"Type": "volume", "Target": "/m"}]})
            async with mounts.creating(good, lambda ref: good):
                # users are known while the container is still being made
                assert svc.is_in_use("fresh") and svc.is_in_use("existing")
            plan = {p["destination"]: p for p in good.pyd["MountPoints"]}
            assert plan["/e"]["mode"] == "z" and plan["/f"]["source"] == str(tmp_path / "volumes" / "fresh" / "_data")
            anon = [plan["/m"]["name"], plan["/img"]["name"]]
            assert all(len(n) == 64 for n in anon)
            names = {v["Name"] for v in (await svc.list())[0]}
            assert names == {"existing", "fresh", *anon}
            assert all(svc.refs(n) == [good.id] for n in names)

            bad = _container(id="b" * 64, host_config={
                "Binds": ["existing:/e", "new-one:/n", "/anon"],
                "Mounts": [{"Type": "volume", "Source": "bad-opts", "Target": "/x",
                            "VolumeOptions": {"DriverConfig": {"Options": {"sise": "1"}}}}]})
            with pytest.raises(InvalidOption, match='unknown option "sise"'):
                async with mounts.creating(bad, lambda ref: bad):
                    pass
            # what this create made is gone; what existed stays; bad is no user of anything
            assert {v["Name"] for v in (await svc.list())[0]} == names
            assert "MountPoints" not in bad.pyd and svc.refs("existing") == [good.id]

            failing = _container(id="c" * 64, host_config={"Binds": ["later:/l"]})
            with pytest.raises(RuntimeError):
                async with mounts.creating(failing, lambda ref: failing):
                    raise RuntimeError("the rest of the create failed")
            assert "later" not in {v["Name"] for v in (await svc.list())[0]}

            nodriver = _container(id="d" * 64, host_config={"Binds": ["nd:/x"], "VolumeDriver": "no-such"})
            with pytest.raises(InvalidParameter, match='create nd: volume driver "no-such" is not installed'):
                async with mounts.creating(nodriver, lambda ref: nodriver):
                    pass

            await mounts.forget(good, remove_anonymous=True)
            assert {v["Name"] for v in (await svc.list())[0]} == {"existing", "fresh"}
            assert not svc.is_in_use("existing")
        finally:
            await svc.close()

    asyncio.run(scenario())
