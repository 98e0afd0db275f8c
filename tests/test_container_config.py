"""Unit tests: the Docker create body -> stored Config/HostConfig -> ProcessSpec translation."""

from __future__ import annotations

import os

import pytest

from pyd.engine.container_config import (
    normalize_config,
    normalize_host_config,
    parse_restart_policy,
    parse_security_opts,
    parse_signal,
    replace_or_append_env,
    tweak_capabilities,
)
from pyd.engine.container_defaults import DEFAULT_CAPABILITIES, MASKED_PATHS, READONLY_PATHS
from pyd.engine.container_files import container_hosts, container_resolv_conf
from pyd.engine.container_index import ContainerIndex, new_id
from pyd.engine.container_spec import build_spec
from pyd.engine.container_state import State, format_time, human_duration, parse_time
from pyd.engine.container_user import ExecUser, resolve_user, resolve_user_in_rootfs
from pyd.errors import Conflict, InvalidParameter, NotFound
from pyd.types import User

# The body `docker run --rm --network none busybox:local echo hi` sends (traces §2.3).
CLI_BODY = {
    "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False, "AttachStdout": True,
    "AttachStderr": True, "Tty": False, "OpenStdin": False, "StdinOnce": False, "Env": None,
    "Cmd": ["echo", "hi"], "Image": "busybox:local", "Volumes": {}, "WorkingDir": "",
    "Entrypoint": None, "OnBuild": None, "Labels": {},
    "HostConfig": {
        "Binds": None, "ContainerIDFile": "", "LogConfig": {"Type": "", "Config": {}},
        "NetworkMode": "none", "PortBindings": {}, "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
        "AutoRemove": True, "VolumeDriver": "", "VolumesFrom": None, "ConsoleSize": [0, 0], "CapAdd": None,
        "CapDrop": None, "CgroupnsMode": "", "Dns": [], "DnsOptions": [], "DnsSearch": [], "ExtraHosts": None,
        "GroupAdd": None, "IpcMode": "", "Cgroup": "", "Links": None, "OomScoreAdj": 0, "PidMode": "",
        "Privileged": False, "PublishAllPorts": False, "ReadonlyRootfs": False, "SecurityOpt": None,
        "UTSMode": "", "UsernsMode": "", "ShmSize": 0, "Isolation": "", "CpuShares": 0, "Memory": 0,
        "NanoCpus": 0, "CgroupParent": "", "BlkioWeight": 0, "BlkioWeightDevice": [], "BlkioDeviceReadBps": [],
        "BlkioDeviceWriteBps": [], "BlkioDeviceReadIOps": [], "BlkioDeviceWriteIOps": [], "CpuPeriod": 0,
        "CpuQuota": 0, "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0, "CpusetCpus": "", "CpusetMems": "",
        "Devices": [], "DeviceCgroupRules": None, "DeviceRequests": None, "MemoryReservation": 0,
        "MemorySwap": 0, "MemorySwappiness": -1, "OomKillDisable": False, "PidsLimit": 0, "Ulimits": [],
        "CpuCount": 0, "CpuPercent": 0, "IOMaximumIOps": 0, "IOMaximumBandwidth": 0, "MaskedPaths": None,
        "ReadonlyPaths": None,
    },
    "NetworkingConfig": {"EndpointsConfig": {}},
}
SDK_BODY = {
    "Tty": False, "OpenStdin": False, "StdinOnce": False, "AttachStdin": False, "AttachStdout": True,
    "AttachStderr": True, "Cmd": ["echo", "hi"], "Image": "busybox:local", "NetworkDisabled": False,
    "HostConfig": {"NetworkMode": "none", "AutoRemove": True},
}


def hc_of(raw, **kw):
    kw.setdefault("ncpu", 2)
    kw.setdefault("default_log_driver", "json-file")
    return normalize_host_config(raw, **kw)


def test_cli_and_sdk_bodies_give_the_same_record():
    a_cfg = normalize_config(CLI_BODY, {}, "busybox:local")
    b_cfg = normalize_config(SDK_BODY, {}, "busybox:local")
    assert a_cfg == b_cfg
    a = hc_of(CLI_BODY["HostConfig"]).host_config
    b = hc_of(SDK_BODY["HostConfig"]).host_config
    assert a == b
    # the defaults the daemon fills in, as inspect shows them
    assert a["LogConfig"] == {"Type": "json-file", "Config": {}}
    assert a["ShmSize"] == 67108864
    assert a["IpcMode"] == "private"
    assert a["PidsLimit"] is None and a["MemorySwappiness"] is None
    assert a["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    assert a_cfg["Env"] is None and a_cfg["Labels"] == {}


def test_image_config_merge_follows_moby():
    img = {
        "Cmd": ["sh"], "Entrypoint": ["/entry"], "Env": ["PATH=/bin", "A=1"], "WorkingDir": "/app",
        "User": "nobody", "Labels": {"from": "image", "x": "img"}, "StopSignal": "SIGQUIT",
        "ExposedPorts": {"80/tcp": {}},
    }
    cfg = normalize_config({"Env": ["A=2", "B=3"], "Labels": {"x": "ctr"}}, img, "img")
    assert cfg["Entrypoint"] == ["/entry"] and cfg["Cmd"] == ["sh"]
    assert cfg["Env"] == ["PATH=/bin", "A=2", "B=3"]
    assert cfg["WorkingDir"] == "/app" and cfg["User"] == "nobody"
    assert cfg["Labels"] == {"from": "image", "x": "ctr"}
    assert cfg["StopSignal"] == "SIGQUIT" and cfg["ExposedPorts"] == {"80/tcp": {}}
    # a user Cmd replaces the image's Cmd but keeps its entrypoint
    cfg = normalize_config({"Cmd": ["-x"]}, img, "img")
    assert cfg["Entrypoint"] == ["/entry"] and cfg["Cmd"] == ["-x"]
    # a user entrypoint drops the image's Cmd (Docker does not mix them)
    cfg = normalize_config({"Entrypoint": ["/bin/echo"]}, img, "img")
    assert cfg["Entrypoint"] == ["/bin/echo"] and cfg["Cmd"] is None
    # --entrypoint "" resets the entrypoint and keeps the image's Cmd
    cfg = normalize_config({"Entrypoint": [""]}, img, "img")
    assert cfg["Entrypoint"] == [] and cfg["Cmd"] == ["sh"]
    # a string Cmd is a one-element list (Go's StrSlice)
    assert normalize_config({"Cmd": "true"}, {}, "i")["Cmd"] == ["true"]


def test_no_command_and_relative_workdir_are_rejected():
    with pytest.raises(InvalidParameter, match="No command specified"):
        normalize_config({}, {}, "busybox")
    with pytest.raises(InvalidParameter, match="needs to be an absolute path"):
        normalize_config({"Cmd": ["x"], "WorkingDir": "rel"}, {}, "busybox")


def test_env_unset_and_replace():
    assert replace_or_append_env(["A=1", "B=2"], ["B=3", "C=4", "A"]) == ["B=3", "C=4"]


def test_resource_translation_and_errors():
    hc = hc_of({"Memory": 32 << 20}).host_config
    assert hc["MemorySwap"] == 64 << 20  # Docker's default: swap equal to memory
    with pytest.raises(InvalidParameter, match="Minimum memory limit allowed is 6MB"):
        hc_of({"Memory": 1 << 20})
    with pytest.raises(InvalidParameter, match="larger than memory limit"):
        hc_of({"Memory": 32 << 20, "MemorySwap": 16 << 20})
    with pytest.raises(InvalidParameter, match="always set the Memory limit"):
        hc_of({"MemorySwap": 16 << 20})
    with pytest.raises(InvalidParameter, match="Range of CPUs is from 0.01 to 2.00"):
        hc_of({"NanoCpus": 3 * 10**9})
    with pytest.raises(InvalidParameter, match="Nano CPUs and CPU Period"):
        hc_of({"NanoCpus": 10**9, "CpuQuota": 50000})
    assert hc_of({"PidsLimit": -1}).host_config["PidsLimit"] is None
    assert hc_of({"PidsLimit": 50}).host_config["PidsLimit"] == 50


def test_restart_policy_rules():
    assert parse_restart_policy("on-failure:3") == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert parse_restart_policy("unless-stopped")["Name"] == "unless-stopped"
    with pytest.raises(InvalidParameter, match="invalid restart policy 'sometimes'"):
        parse_restart_policy("sometimes")
    with pytest.raises(InvalidParameter, match="cannot be used with restart policy 'always'"):
        parse_restart_policy("always:2")
    with pytest.raises(InvalidParameter, match="AutoRemove"):
        hc_of({"AutoRemove": True, "RestartPolicy": {"Name": "always"}})


def test_capabilities():
    assert tweak_capabilities(DEFAULT_CAPABILITIES, None, None) == list(DEFAULT_CAPABILITIES)
    caps = tweak_capabilities(DEFAULT_CAPABILITIES, ["cap_net_admin"], ["MKNOD", "CAP_CHOWN"])
    assert "NET_ADMIN" in caps and "MKNOD" not in caps and "CHOWN" not in caps
    assert tweak_capabilities(DEFAULT_CAPABILITIES, ["KILL"], ["ALL"]) == ["KILL"]
    assert "SYS_ADMIN" in tweak_capabilities(DEFAULT_CAPABILITIES, ["ALL"], None)
    with pytest.raises(InvalidParameter, match='unknown capability: "CAP_BOGUS"'):
        hc_of({"CapAdd": ["CAP_BOGUS"]})


def test_security_opts_are_claimed_or_rejected():
    s = parse_security_opts(["no-new-privileges", "seccomp=unconfined"], ["seccomp"])
    assert s.no_new_privileges and s.plugin_opts == {"seccomp": "unconfined"}
    assert parse_security_opts(["no-new-privileges:true"], []).no_new_privileges
    assert not parse_security_opts(["no-new-privileges=false"], []).no_new_privileges
    with pytest.raises(InvalidParameter, match='unknown key "apparmor"; valid keys: label, no-new-privileges, seccomp'):
        hc_of({"SecurityOpt": ["apparmor=x"]}, plugin_security_keys=["seccomp"])
    with pytest.raises(InvalidParameter, match='unknown key "seccomp"'):
        hc_of({"SecurityOpt": ["seccomp=unconfined"]})  # no plugin installed claims it


def test_log_config_core_keys_are_stripped():
    r = hc_of({"LogConfig": {"Type": "json-file", "Config": {"mode": "non-blocking", "max-buffer-size": "4m", "max-size": "1m"}}})
    assert r.log_mode == "non-blocking" and r.log_max_buffer == 4 << 20
    assert r.log_opts == {"max-size": "1m"}
    assert r.host_config["LogConfig"]["Config"]["mode"] == "non-blocking"  # inspect shows what was set
    with pytest.raises(InvalidParameter, match="mode=\"sometimes\""):
        hc_of({"LogConfig": {"Type": "none", "Config": {"mode": "sometimes"}}})
    with pytest.raises(InvalidParameter, match="only valid with mode=non-blocking"):
        hc_of({"LogConfig": {"Config": {"max-buffer-size": "1m"}}})
    # daemon-wide log-opts apply when the container names no driver
    r = hc_of({}, default_log_opts={"max-size": "5m"})
    assert r.log_driver == "json-file" and r.log_opts == {"max-size": "5m"}


def test_network_modes():
    # a network name passes through: the network service checks that it exists
    assert hc_of({"NetworkMode": "nosuch"}).host_config["NetworkMode"] == "nosuch"
    assert hc_of({"NetworkMode": "container:abc"}).host_config["NetworkMode"] == "container:abc"
    r = hc_of({"NetworkMode": "host", "PortBindings": {"80/tcp": [{"HostPort": "80"}]}})
    assert r.warnings and r.host_config["PortBindings"] == {}


def test_tmpfs_and_binds_validation():
    with pytest.raises(InvalidParameter, match="must be absolute"):
        hc_of({"Tmpfs": {"rel": ""}})
    # named volumes are planned at create (tests/test_container_mounts.py); bad specs fail here
    assert hc_of({"Binds": ["vol:/data"]}).host_config["Binds"] == ["vol:/data"]
    with pytest.raises(InvalidParameter, match="invalid volume specification"):
        hc_of({"Binds": ["/a:/b:/c:ro"]})
    assert hc_of({"Binds": ["/tmp:/data:ro"]}).host_config["Binds"] == ["/tmp:/data:ro"]


def test_signals():
    assert parse_signal("SIGTERM") == 15 and parse_signal("kill") == 9 and parse_signal("10") == 10
    with pytest.raises(InvalidParameter, match="Invalid signal: BOGUS"):
        parse_signal("BOGUS")


def spec_of(body, **kw):
    cfg = normalize_config(body, {}, "busybox")
    cid = "abcdef0123456789" * 4
    cfg["Hostname"] = cfg["Hostname"] or cid[:12]
    hc = hc_of(body.get("HostConfig"), plugin_security_keys=kw.get("keys", [])).host_config
    return build_spec(
        cid=cid, config=cfg, hc=hc, rootfs="/rootfs", user=ExecUser(User(1000, 1000), "/home/u"),
        etc_files={"/etc/hosts": "/c/hosts", "/etc/hostname": "/c/hostname", "/etc/resolv.conf": "/c/resolv.conf"},
        plugin_security_keys=kw.get("keys", []),
    )


def test_spec_defaults():
    spec = spec_of({"Cmd": ["sh", "-c", "echo"], "Env": ["X=1"], "HostConfig": {"NetworkMode": "none"}})
    assert spec.args == ["sh", "-c", "echo"]
    assert spec.hostname == "abcdef012345"
    assert spec.env[0].startswith("PATH=/usr/local/sbin") and "HOSTNAME=abcdef012345" in spec.env
    assert "X=1" in spec.env and "HOME=/home/u" in spec.env
    assert spec.capabilities == list(DEFAULT_CAPABILITIES)
    assert spec.masked_paths == list(MASKED_PATHS) and spec.readonly_paths == list(READONLY_PATHS)
    assert set(spec.namespaces) == {"mnt", "pid", "uts", "ipc", "net", "cgroup"}
    assert {m.destination for m in spec.mounts} >= {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/shm"}
    assert spec.cgroup.path.endswith("abcdef0123456789" * 4) and spec.cgroup.memory is None


def test_spec_limits_and_security():
    spec = spec_of({
        "Cmd": ["x"], "Tty": True,
        "HostConfig": {
            "NetworkMode": "host", "Memory": 32 << 20, "NanoCpus": 5 * 10**8, "CpuShares": 512,
            "PidsLimit": 50, "ReadonlyRootfs": True, "Tmpfs": {"/run": "size=1m"},
            "SecurityOpt": ["no-new-privileges"], "CapDrop": ["NET_RAW"],
        },
    })
    assert "net" not in spec.namespaces and "TERM=xterm" in spec.env and spec.terminal
    assert (spec.cgroup.memory, spec.cgroup.memory_swap) == (32 << 20, 64 << 20)
    assert (spec.cgroup.cpu_quota, spec.cgroup.cpu_period, spec.cgroup.cpu_shares) == (50000, 100000, 512)
    assert spec.cgroup.pids_limit == 50 and spec.readonly_rootfs and spec.no_new_privileges
    assert "NET_RAW" not in spec.capabilities
    run = next(m for m in spec.mounts if m.destination == "/run")
    assert run.type == "tmpfs" and set(run.options) >= {"size=1m", "noexec", "nosuid", "nodev"}
    hosts = next(m for m in spec.mounts if m.destination == "/etc/hosts")
    assert "ro" in hosts.options  # read-only rootfs: the generated files too


def test_spec_privileged():
    spec = spec_of({"Cmd": ["x"], "HostConfig": {"Privileged": True}})
    assert spec.privileged and "SYS_ADMIN" in spec.capabilities
    assert spec.masked_paths == [] and spec.readonly_paths == []


PASSWD = b"root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\nbob:x:1000:1000::/home/bob:/bin/sh\n"
GROUP = b"root:x:0:\nwww:x:33:\nstaff:x:50:bob,www\naudio:x:29:bob\n"


def test_user_resolution():
    u = resolve_user("", PASSWD, GROUP)
    assert (u.user.uid, u.user.gid, u.home) == (0, 0, "/root")
    u = resolve_user("bob", PASSWD, GROUP)
    assert (u.user.uid, u.user.gid, u.user.additional_gids, u.home) == (1000, 1000, [50, 29], "/home/bob")
    u = resolve_user("1000:staff", PASSWD, GROUP)
    assert (u.user.uid, u.user.gid) == (1000, 50)
    u = resolve_user("4242", PASSWD, GROUP)  # unknown uid: allowed, gid 0
    assert (u.user.uid, u.user.gid, u.home) == (4242, 0, "/")
    u = resolve_user("www", PASSWD, GROUP, group_add=["audio", "7"])
    assert u.user.additional_gids == [50, 29, 7]
    with pytest.raises(InvalidParameter, match="unable to find user nobody"):
        resolve_user("nobody", PASSWD, GROUP)
    with pytest.raises(InvalidParameter, match="unable to find group wheel"):
        resolve_user("bob:wheel", PASSWD, GROUP)


def test_user_lookup_does_not_follow_symlinks_out_of_the_rootfs(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "passwd").write_bytes(b"evil:x:0:0::/:/bin/sh\n")
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    # absolute and relative links that would leave the rootfs resolve inside it instead
    os.symlink(str(host / "passwd"), rootfs / "etc" / "passwd")
    os.symlink("../../../../../../host/passwd", rootfs / "etc" / "group")
    with pytest.raises(InvalidParameter, match="unable to find user evil"):
        resolve_user_in_rootfs(str(rootfs), "evil")
    # a link whose target exists inside the rootfs is followed there
    (rootfs / "real").mkdir()
    (rootfs / "real" / "passwd").write_bytes(b"alice:x:7:8::/a:/bin/sh\n")
    os.unlink(rootfs / "etc" / "passwd")
    os.symlink("/real/passwd", rootfs / "etc" / "passwd")
    assert resolve_user_in_rootfs(str(rootfs), "alice").user.uid == 7


def test_resolv_conf_drops_loopback_nameservers():
    host = "search example.com\nnameserver 127.0.0.53\nnameserver 10.0.0.2\noptions ndots:2\n"
    out = container_resolv_conf(host, host_network=False)
    assert out == "search example.com\nnameserver 10.0.0.2\noptions ndots:2\n"
    out = container_resolv_conf("nameserver 127.0.0.1\n", host_network=False)
    assert "nameserver 8.8.8.8" in out and "127.0.0.1" not in out
    assert "127.0.0.1" in container_resolv_conf("nameserver 127.0.0.1\n", host_network=True)
    assert container_resolv_conf(host, host_network=False, dns=["1.1.1.1"]).count("nameserver") == 1


def test_hosts_file():
    text = container_hosts("abc", extra=["db:10.0.0.5"], ip="172.17.0.2")
    assert text.startswith("127.0.0.1\tlocalhost\n") and "10.0.0.5\tdb\n" in text and "172.17.0.2\tabc\n" in text


def test_index_lookup_and_name_conflict():
    idx: ContainerIndex[str] = ContainerIndex()
    a, b = "aaaa1111" + "0" * 56, "aaaa2222" + "0" * 56
    idx.add(a, "A", "web")
    idx.add(b, "B", "db")
    assert idx.get("web") == "A" and idx.get("/db") == "B" and idx.get("aaaa1") == "A" and idx.get(b) == "B"
    with pytest.raises(InvalidParameter, match="multiple containers"):
        idx.get("aaaa")
    with pytest.raises(NotFound, match="No such container: zzz"):
        idx.get("zzz")
    with pytest.raises(Conflict, match=f'The container name "/web" is already in use by container "{a}"'):
        idx.reserve("web", b)
    cid = new_id()
    assert len(cid) == 64 and not cid[:12].isdigit()


def test_state_and_times():
    st = State()
    assert st.status == "created" and st.text() == "Created"
    st.set_running(42, 1_000_000_000_000)
    assert st.status == "running" and st.text(1_000_000_000_000 + 3 * 10**9) == "Up 3 seconds"
    st.set_stopped(3, 2_000_000_000_000)
    assert st.text(2_000_000_000_000 + 120 * 10**9) == "Exited (3) 2 minutes ago"
    assert State.from_docker(st.to_docker()) == st
    assert human_duration(0.2) == "Less than a second" and human_duration(3600) == "About an hour"
    ns = 1795849263_542887300
    assert format_time(ns) == "2026-11-28T07:01:03.5428873Z"
    assert format_time(ns, fixed=True) == "2026-11-28T07:01:03.542887300Z"
    assert parse_time(format_time(ns)) == ns and format_time(0) == "0001-01-01T00:00:00Z"


# -- CLI flags -> create body ------------------------------------------------------------------

from pyd.cli.create_body import RunOptions, build_create_body, parse_bytes  # noqa: E402


def test_cli_flags_build_the_create_body(tmp_path):
    envf = tmp_path / "env"
    envf.write_text("# comment\nFROM_FILE=1\n\nPASSED\n")
    o = RunOptions(
        image="busybox", command=["sh", "-c", "echo"], name="web", rm=True, interactive=True,
        env=["A=1", "HOME_VAR"], env_file=[str(envf)], labels=["x=y", "flag"], restart="on-failure:3",
        memory="32m", memory_swap="-1", cpus="1.5", pids_limit=50, cap_add=["NET_ADMIN"],
        security_opt=["no-new-privileges"], read_only=True, tmpfs=["/run:size=64k"],
        log_driver="json-file", log_opt=["max-size=1m"], init=True, network="none", stop_timeout=3,
        entrypoint="",
    )
    body = build_create_body(o, environ={"HOME_VAR": "/h", "PASSED": "p"})
    assert body["Cmd"] == ["sh", "-c", "echo"] and body["Entrypoint"] == [""]
    assert body["Env"] == ["FROM_FILE=1", "PASSED=p", "A=1", "HOME_VAR=/h"]
    assert body["Labels"] == {"x": "y", "flag": ""}
    assert (body["OpenStdin"], body["StdinOnce"], body["AttachStdin"]) == (True, True, True)
    hc = body["HostConfig"]
    assert hc["AutoRemove"] and hc["NetworkMode"] == "none"
    assert hc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert (hc["Memory"], hc["MemorySwap"], hc["NanoCpus"], hc["PidsLimit"]) == (32 << 20, -1, 1_500_000_000, 50)
    assert hc["Tmpfs"] == {"/run": "size=64k"} and hc["ReadonlyRootfs"] and hc["Init"]
    assert hc["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m"}}
    # what the daemon makes of it
    cfg = normalize_config(body, {}, "busybox")
    assert cfg["Cmd"] == ["sh", "-c", "echo"] and cfg["Entrypoint"] == []
    with pytest.raises(InvalidParameter, match="AutoRemove"):
        hc_of(hc)  # --rm with a restart policy is refused by the daemon, as Docker does


def test_detached_body_attaches_nothing():
    body = build_create_body(RunOptions(image="busybox", detach=True, interactive=True), environ={})
    assert (body["AttachStdin"], body["AttachStdout"], body["AttachStderr"]) == (False, False, False)
    assert body["OpenStdin"] and not body["StdinOnce"]


def test_sizes_parse_like_docker():
    assert parse_bytes("32m", "-m") == 32 << 20
    assert parse_bytes("1g", "-m") == 1 << 30
    assert parse_bytes("512", "-m") == 512
    assert parse_bytes("64kb", "-m") == 64 << 10
    with pytest.raises(InvalidParameter, match="invalid size"):
        parse_bytes("lots", "-m, --memory")


def test_mkdir_in_rootfs_stays_inside(tmp_path):
    from pyd.engine.rootfs_path import mkdir_all_in_root, open_in_root

    rootfs, host = tmp_path / "rootfs", tmp_path / "host"
    rootfs.mkdir()
    host.mkdir()
    os.symlink(str(host), rootfs / "work")  # an image's /work -> the host's directory
    mkdir_all_in_root(str(rootfs), "/work/app/data", uid=1000, gid=1000)
    assert list(host.iterdir()) == []  # nothing was created outside the rootfs
    assert (rootfs / str(host).lstrip("/") / "app" / "data").is_dir()
    fd = open_in_root(str(rootfs), "/", os.O_PATH | os.O_DIRECTORY)
    os.close(fd)
