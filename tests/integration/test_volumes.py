"""Volumes against a real daemon: ``pyd volume ...`` output, the API's shapes and errors, the
docker SDK and the docker CLI, events, ``system df``, and data across a daemon restart.

Container mounts (``-v``, ``--mount``) come with the containers follow-up; here the data is
written through the volume's host path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest

from pyd.engine.volumes import INDEX_FILE
from pyd.testing.daemon import DaemonProcess
from pyd.testing.volume import disk_state, mounts_under

pytestmark = pytest.mark.integration

DOCKER = "/usr/local/bin/docker"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with DaemonProcess(tmp_path_factory.mktemp("volumes"), flags=["--log-driver", "none"]) as d:
        yield d
        assert mounts_under(d.root) == [], "a volume mount was left behind"


def pyd(d: DaemonProcess, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYD_HOST"}
    return subprocess.run([sys.executable, "-m", "pyd.cli.main", "-H", d.host, *args],
                          capture_output=True, text=True, timeout=60, env=env, input=input)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def api(d: DaemonProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    status, _, raw = d.request(method, path, body)
    return status, json.loads(raw) if raw.strip() else None


def q(filters: Any) -> str:
    return urllib.parse.quote(json.dumps(filters))


def volumes_state(d: DaemonProcess) -> tuple[list[str], str]:
    """What is on disk for volumes: the local driver's home and the index."""
    home = d.data_root / "volumes"
    index = d.data_root / INDEX_FILE
    return (disk_state(home) if home.exists() else []), (index.read_text() if index.exists() else "")


# -- the pyd CLI ----------------------------------------------------------------------------------


def test_cli_create_ls_inspect_rm(daemon: DaemonProcess) -> None:
    assert ok(pyd(daemon, "volume", "create", "--label", "cli=1", "--label", "flag", "cli-vol")) == "cli-vol\n"
    anon = ok(pyd(daemon, "volume", "create", "--label", "cli=1")).strip()
    assert len(anon) == 64 and int(anon, 16) >= 0
    out = ok(pyd(daemon, "volume", "ls", "--filter", "label=cli=1"))
    lines = out.splitlines()
    assert lines[0].split() == ["DRIVER", "VOLUME", "NAME"]
    assert sorted(line.split() for line in lines[1:]) == sorted([["local", "cli-vol"], ["local", anon]])
    assert ok(pyd(daemon, "volume", "ls", "-q", "--filter", "name=cli-")) == "cli-vol\n"
    out = ok(pyd(daemon, "volume", "ls", "--filter", "label=cli", "--format", '{{.Name}} {{.Labels}} {{.Label "cli"}}'))
    assert sorted(out.splitlines()) == sorted([f"{anon} cli=1 1", "cli-vol cli=1,flag= 1"])
    docs = json.loads(ok(pyd(daemon, "volume", "inspect", "cli-vol")))
    assert docs == [{
        "CreatedAt": docs[0]["CreatedAt"], "Driver": "local", "Labels": {"cli": "1", "flag": ""},
        "Mountpoint": str(daemon.data_root / "volumes" / "cli-vol" / "_data"), "Name": "cli-vol",
        "Options": None, "Scope": "local",
    }]
    assert ok(pyd(daemon, "volume", "inspect", "-f", "{{.Driver}}:{{.Name}}", "cli-vol")) == "local:cli-vol\n"
    proc = pyd(daemon, "volume", "inspect", "cli-vol", "nope-vol")
    assert proc.returncode == 1 and "Error: No such volume: nope-vol" in proc.stderr
    assert [d["Name"] for d in json.loads(proc.stdout)] == ["cli-vol"]
    proc = pyd(daemon, "volume", "rm", "cli-vol", "nope-vol", anon)
    assert proc.returncode == 1
    assert proc.stdout == f"cli-vol\n{anon}\n"
    assert proc.stderr == "Error response from daemon: get nope-vol: no such volume\n"
    assert ok(pyd(daemon, "volume", "rm", "-f", "nope-vol")) == "nope-vol\n"
    assert ok(pyd(daemon, "volume", "ls", "-q", "--filter", "label=cli")) == ""


def test_cli_tmpfs_volume(daemon: DaemonProcess) -> None:
    out = pyd(daemon, "volume", "create", "-o", "type=tmpfs", "-o", "device=tmpfs", "-o", "o=size=1m", "scratch-vol")
    assert ok(out) == "scratch-vol\n"
    doc = json.loads(ok(pyd(daemon, "volume", "inspect", "scratch-vol")))[0]
    assert doc["Options"] == {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}
    assert mounts_under(doc["Mountpoint"]) == []  # mounted only while a container uses it
    ok(pyd(daemon, "volume", "rm", "scratch-vol"))


def test_bad_input_is_a_clear_error_and_creates_nothing(daemon: DaemonProcess) -> None:
    before = volumes_state(daemon)
    cases = [
        (["-o", "sise=1m", "bad-opt"], 'invalid -o for volume driver "local": unknown option "sise"; valid keys: device, o, size, type'),
        (["-o", "type=tmpfs", "-o", "device=tmpfs", "-o", "o=size=ten", "bad-size"], "size=ten"),
        (["bad name"], '"bad name" includes invalid characters for a local volume name'),
        (["-d", "no-such-driver", "bad-driver"], 'volume driver "no-such-driver" is not installed; available volume drivers: local'),
    ]
    for args, message in cases:
        proc = pyd(daemon, "volume", "create", *args)
        assert proc.returncode == 1, (args, proc.stdout)
        assert proc.stderr.startswith("Error response from daemon: ") and message in proc.stderr, proc.stderr
    assert volumes_state(daemon) == before
    assert not (daemon.data_root / "volumes-no-such-driver").exists()
    # the API statuses: 400 for bad input, 404 for a driver that is not installed
    assert api(daemon, "POST", "/v1.41/volumes/create", {"Name": "bad-opt", "DriverOpts": {"sise": "1"}})[0] == 400
    assert api(daemon, "POST", "/v1.41/volumes/create", {"Name": "a/b"})[0] == 400
    assert api(daemon, "POST", "/v1.41/volumes/create", {"Name": "x-y", "Driver": "nope"})[0] == 404
    assert api(daemon, "POST", "/v1.41/volumes/create", ["not", "an", "object"])[0] == 400
    assert volumes_state(daemon) == before


def test_prune_via_cli(daemon: DaemonProcess) -> None:
    ok(pyd(daemon, "volume", "create", "--label", "prune=1", "prune-a"))
    ok(pyd(daemon, "volume", "create", "--label", "prune=1", "prune-b"))
    Path(daemon.data_root, "volumes", "prune-b", "_data", "f").write_bytes(b"z" * 2000)
    proc = pyd(daemon, "volume", "prune", input="n\n")
    assert "WARNING! This will remove all local volumes not used by at least one container." in proc.stdout
    assert ok(pyd(daemon, "volume", "ls", "-q", "--filter", "label=prune")) == "prune-a\nprune-b\n"
    out = ok(pyd(daemon, "volume", "prune", "-f", "--filter", "label=prune=1"))
    assert out == "Deleted Volumes:\nprune-a\nprune-b\n\nTotal reclaimed space: 2kB\n"
    assert ok(pyd(daemon, "volume", "ls", "-q", "--filter", "label=prune")) == ""


# -- the API ---------------------------------------------------------------------------------------


def test_api_shapes_filters_events_and_df(daemon: DaemonProcess) -> None:
    since = time.time()
    status, doc = api(daemon, "POST", "/v1.41/volumes/create", {"Name": "api-vol", "Driver": "local", "Labels": {"api": "1"}})
    assert status == 201 and doc["Name"] == "api-vol" and doc["Options"] is None
    status, again = api(daemon, "POST", "/v1.41/volumes/create", {"Name": "api-vol"})  # docker-py: no Driver
    assert (status, again) == (201, doc)
    Path(doc["Mountpoint"], "data").write_bytes(b"d" * 300)
    # both filter encodings: the CLI's map of bools and docker-py's lists
    for filters in ({"label": {"api=1": True}}, {"label": ["api=1"]}, {"name": ["api-"], "dangling": ["true"]}):
        status, listing = api(daemon, "GET", f"/v1.41/volumes?filters={q(filters)}")
        assert status == 200 and listing == {"Volumes": [doc], "Warnings": None}, filters
    status, listing = api(daemon, "GET", f"/volumes?filters={q({'dangling': {'false': True}, 'label': {'api': True}})}")
    assert listing["Volumes"] == []
    assert api(daemon, "GET", f"/volumes?filters={q({'bogus': ['1']})}") == (400, {"message": "invalid filter 'bogus'"})
    assert api(daemon, "GET", "/v1.41/volumes/api-vol") == (200, doc)
    assert api(daemon, "GET", "/v1.41/volumes/no-such-vol") == (404, {"message": "get no-such-vol: no such volume"})
    _, df = api(daemon, "GET", "/v1.41/system/df")
    usage = {v["Name"]: v["UsageData"] for v in df["Volumes"]}
    assert usage["api-vol"] == {"RefCount": 0, "Size": 300}
    assert api(daemon, "DELETE", "/v1.41/volumes/api-vol") == (204, None)
    assert api(daemon, "DELETE", "/v1.41/volumes/api-vol")[0] == 404
    assert api(daemon, "DELETE", "/v1.41/volumes/api-vol?force=1") == (204, None)
    until = time.time() + 0.5
    time.sleep(0.6)
    _, _, raw = daemon.request("GET", f"/events?since={since:.3f}&until={until:.3f}&filters={q({'type': ['volume']})}")
    events = [json.loads(line) for line in raw.splitlines() if line.strip()]
    seen = [(e["Action"], e["Actor"]["ID"], e["Actor"]["Attributes"]) for e in events if e["Actor"]["ID"] == "api-vol"]
    assert seen == [("create", "api-vol", {"driver": "local"}), ("destroy", "api-vol", {"driver": "local"})]


# -- Docker's own clients -------------------------------------------------------------------------------


def test_docker_sdk_volumes(daemon: DaemonProcess) -> None:
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=daemon.base_url)
    try:
        vol = client.volumes.create("sdk-vol", labels={"sdk": "1"})
        assert vol.name == "sdk-vol" and vol.attrs["Labels"] == {"sdk": "1"}
        tmp = client.volumes.create("sdk-tmp", driver="local",
                                    driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "size=1m"})
        assert tmp.attrs["Options"]["type"] == "tmpfs"
        assert client.volumes.get("sdk-vol").attrs == vol.attrs
        assert [v.name for v in client.volumes.list(filters={"label": "sdk=1"})] == ["sdk-vol"]
        with pytest.raises(docker.errors.NotFound):
            client.volumes.get("sdk-missing")
        with pytest.raises(docker.errors.APIError) as err:
            client.volumes.create("sdk-bad", driver_opts={"nope": "1"})
        assert err.value.status_code == 400 and "nope" in str(err.value)
        with pytest.raises(docker.errors.NotFound):
            client.volumes.create("sdk-bad", driver="sdk-no-such-driver")
        vol.remove()
        tmp.remove(force=True)
        assert client.volumes.list(filters={"name": "sdk-"}) == []
        client.volumes.create("sdk-prune", labels={"sdk": "prune"})
        report = client.volumes.prune(filters={"label": "sdk=prune"})
        assert report == {"VolumesDeleted": ["sdk-prune"], "SpaceReclaimed": 0}
    finally:
        client.close()


@pytest.mark.skipif(not os.access(DOCKER, os.X_OK), reason="the docker CLI is not installed")
def test_docker_cli_volumes(daemon: DaemonProcess, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = str(tmp_path)  # no user config, no contexts

    def docker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DOCKER, "-H", daemon.base_url, *args], capture_output=True, text=True, timeout=60, env=env)

    assert ok(docker("volume", "create", "--label", "dcli=1", "dcli-vol")) == "dcli-vol\n"
    out = ok(docker("volume", "ls", "--filter", "label=dcli=1"))
    assert [line.split() for line in out.splitlines()] == [["DRIVER", "VOLUME", "NAME"], ["local", "dcli-vol"]]
    doc = json.loads(ok(docker("volume", "inspect", "dcli-vol")))[0]
    assert doc["Labels"] == {"dcli": "1"} and doc["Driver"] == "local" and doc["Scope"] == "local"
    proc = docker("volume", "create", "-o", "bogus=1", "dcli-bad")
    assert proc.returncode != 0 and 'unknown option "bogus"' in proc.stderr
    assert ok(docker("volume", "rm", "dcli-vol")) == "dcli-vol\n"
    assert ok(docker("volume", "ls", "-q", "--filter", "label=dcli")) == ""


# -- restart ------------------------------------------------------------------------------------------


def test_data_survives_a_daemon_restart(pyd_daemon: Any) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    d = pyd_daemon(flags=["--log-driver", "none"])
    ok(pyd(d, "volume", "create", "--label", "keep=1", "keep-vol"))
    ok(pyd(d, "volume", "create", "-o", "type=tmpfs", "-o", "device=tmpfs", "-o", "o=size=2m", "keep-tmpfs"))
    before = json.loads(ok(pyd(d, "volume", "inspect", "keep-vol", "keep-tmpfs")))
    Path(before[0]["Mountpoint"], "hello.txt").write_text("still here")
    d.stop()
    d.start()
    after = json.loads(ok(pyd(d, "volume", "inspect", "keep-vol", "keep-tmpfs")))
    assert after == before
    assert Path(after[0]["Mountpoint"], "hello.txt").read_text() == "still here"
    assert ok(pyd(d, "volume", "ls", "-q")) == "keep-tmpfs\nkeep-vol\n"
    ok(pyd(d, "volume", "rm", "keep-vol", "keep-tmpfs"))
