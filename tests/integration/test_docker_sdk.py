"""Docker's own clients against pyd: the docker SDK (always) and the docker CLI (if installed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

import pyd
from pyd.testing.daemon import DaemonProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with DaemonProcess(tmp_path_factory.mktemp("sdk"), config={"labels": ["client=docker"]}, flags=["--log-driver", "none"]) as d:
        yield d


def test_docker_sdk_version_info_ping(daemon: DaemonProcess) -> None:
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=daemon.base_url)  # negotiates with GET /version
    try:
        assert client.api.api_version == "1.41"
        assert client.ping() is True
        version = client.version()
        assert version["Version"] == pyd.__version__ and version["ApiVersion"] == "1.41"
        assert version["Components"][0]["Name"] == "Engine"
        info = client.info()
        assert info["Labels"] == ["client=docker"]
        assert info["OSType"] == "linux" and info["LoggingDriver"] == "none"
        assert info["DockerRootDir"] == str(daemon.data_root)
        assert set(info["Plugins"]) >= {"Volume", "Network", "Log", "Authorization"}
        assert client.api.df()["Images"] == []
    finally:
        client.close()


def test_docker_sdk_errors_and_events(daemon: DaemonProcess) -> None:
    docker = pytest.importorskip("docker")
    import time

    client = docker.DockerClient(base_url=daemon.base_url)
    try:
        with pytest.raises(docker.errors.NotFound) as err:
            client.api._result(client.api._get(client.api._url("/nonexistent")), json=True)
        assert "page not found" in str(err.value)
        now = int(time.time())
        events = list(client.events(since=now - 5, until=now, decode=True))  # ends by itself
        assert isinstance(events, list)
    finally:
        client.close()


@pytest.mark.skipif(shutil.which("docker") is None, reason="the docker CLI is not installed")
def test_docker_cli_version_and_info(daemon: DaemonProcess, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = str(tmp_path)  # no user config, no contexts
    run = lambda *args: subprocess.run(  # noqa: E731
        ["docker", "-H", daemon.base_url, *args], capture_output=True, text=True, timeout=60, env=env
    )
    proc = run("version", "--format", "{{json .Server}}")
    assert proc.returncode == 0, proc.stderr
    server = json.loads(proc.stdout)
    assert server["Version"] == pyd.__version__ and server["ApiVersion"] == "1.41"
    proc = run("info", "--format", "{{json .}}")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["Labels"] == ["client=docker"] and info["LoggingDriver"] == "none"
    proc = run("info")
    assert proc.returncode == 0, proc.stderr
    assert "Logging Driver: none" in proc.stdout
