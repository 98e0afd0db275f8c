"""Authorization over the real socket: the ``policy`` plugin from daemon.json denies with 403
and moby's message, judges the caller's uid from SO_PEERCRED, and a missing authorization
plugin stops the daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from pyd.registry import Kind, installed_names
from pyd.testing.daemon import DaemonProcess

pytestmark = pytest.mark.integration

NOBODY = 65534
POLICY = {
    "rules": [
        {
            "action": "deny",
            "method": "POST",
            "path": "^/containers/create$",
            "body": {"HostConfig.Privileged": True},
            "reason": "privileged containers are not allowed",
        },
        {"action": "deny", "path": "^/info$", "unless_uid": [0], "reason": "only root may read /info"},
    ]
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    assert "policy" in installed_names(Kind.AUTHZ), "pip install -e plugins/authz_policy first"
    root = tmp_path_factory.mktemp("authz")
    policy = root / "policy.json"
    policy.write_text(json.dumps(POLICY))
    config = {
        "authorization-plugins": ["policy"],
        "authorization-opts": {"policy": {"file": str(policy)}},
    }
    with DaemonProcess(root, config=config, flags=["--log-driver", "none"]) as d:
        yield d


def test_policy_denies_with_403_and_the_plugins_message(daemon: DaemonProcess) -> None:
    body = {"Image": "busybox", "HostConfig": {"Privileged": True}}
    status, headers, reply = daemon.request("POST", "/v1.41/containers/create?name=authz-priv", body)
    assert status == 403
    assert headers["content-type"] == "application/json"
    assert reply == b'{"message":"authorization denied by plugin policy: privileged containers are not allowed"}\n'
    # what the policy does not forbid passes through the chain
    assert daemon.request("GET", "/v1.41/_ping")[2] == b"OK"
    assert daemon.request("GET", "/v1.41/info")[0] == 200  # we are root
    info = daemon.get_json("/info")
    assert info["Plugins"]["Authorization"] == ["policy"]


def test_docker_sdk_sees_the_denial(daemon: DaemonProcess) -> None:
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=daemon.base_url)
    try:
        with pytest.raises(docker.errors.APIError) as err:
            client.api.create_container("busybox", host_config=client.api.create_host_config(privileged=True))
        assert err.value.status_code == 403
        assert err.value.explanation == "authorization denied by plugin policy: privileged containers are not allowed"
    finally:
        client.close()


def test_the_callers_uid_comes_from_the_socket(daemon: DaemonProcess) -> None:
    # Let uid 65534 reach the (private, temporary) socket, then ask as that user.
    run_dir = daemon.socket_path.parent
    os.chmod(run_dir, 0o711)
    os.chmod(daemon.socket_path, 0o666)
    code = (
        "import os, socket, sys\n"
        f"os.setgid({NOBODY}); os.setuid({NOBODY})\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "s.sendall(b'GET /v1.41/info HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n"
        "data = b''\n"
        "while chunk := s.recv(65536): data += chunk\n"
        "sys.stdout.buffer.write(data)\n"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(daemon.socket_path)], capture_output=True, timeout=30
        )
    finally:
        os.chmod(daemon.socket_path, 0o660)
        os.chmod(run_dir, 0o700)
    assert proc.returncode == 0, proc.stderr
    head, _, body = proc.stdout.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 403 ")
    assert json.loads(body) == {"message": "authorization denied by plugin policy: only root may read /info"}


def start_fails(root: Path, config: dict) -> str:
    d = DaemonProcess(root, config=config, flags=["--log-driver", "none"])
    d.root.mkdir(parents=True, exist_ok=True)
    d.config_file.write_text(json.dumps(d.config))
    try:
        proc = subprocess.run(d.argv(), capture_output=True, text=True, timeout=60)
    finally:
        d.cleanup()
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_missing_authorization_plugin_stops_startup(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    err = start_fails(tmp_path / "a", {"authorization-plugins": ["no-such-authz"]})
    assert 'authorization driver "no-such-authz" is not installed; available authorization drivers: ' in err
    assert "policy" in err
    assert not (tmp_path / "a" / "data" / "authz" / "no-such-authz").exists()


def test_authorization_plugin_without_its_options_stops_startup(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    err = start_fails(tmp_path, {"authorization-plugins": ["policy"]})
    assert 'authorization plugin "policy" failed to start' in err and '"file"' in err
