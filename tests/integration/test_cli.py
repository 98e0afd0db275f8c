"""The ``pyd`` CLI against a real daemon: version, info, plugin ls, events, daemon errors.

Each command runs as a separate process (``python -m pyd.cli.main``), as a user runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

import pyd
from pyd.registry import list_installed
from pyd.testing.daemon import DaemonProcess

pytestmark = pytest.mark.integration

LABEL = "pyd-cli-test=1"


def pyd_cli(host: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYD_HOST"}
    return subprocess.run([sys.executable, "-m", "pyd.cli.main", "-H", host, *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[DaemonProcess]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    root = tmp_path_factory.mktemp("cli-daemon")
    with DaemonProcess(root, config={"labels": [LABEL]}, flags=["--log-driver", "none"]) as d:
        yield d


def test_version(daemon):
    proc = pyd_cli(daemon.host, "version")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:3] == ["Client:", f" Version:           {pyd.__version__}",
                         f" API version:       {pyd.API_VERSION}"]
    server = lines[lines.index("Server: pyd"):]
    assert server[1:4] == [
        " Engine:",
        f"  Version:          {pyd.__version__}",
        f"  API version:      {pyd.API_VERSION} (minimum version {pyd.MIN_API_VERSION})",
    ]
    proc = pyd_cli(daemon.host, "version", "--format", "{{.Server.ApiVersion}}/{{.Client.Version}}")
    assert (proc.returncode, proc.stdout) == (0, f"{pyd.API_VERSION}/{pyd.__version__}\n")


def test_info(daemon):
    proc = pyd_cli(daemon.host, "info")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    info = daemon.get_json("/info")
    for line in [
        "Server:",
        f" Server Version: {pyd.__version__}",
        f" Storage Driver: {info['Driver']}",
        " Logging Driver: none",
        f" Pyd Root Dir: {daemon.data_root}",
        " Labels:",
        f"  {LABEL}",
        f" CPUs: {os.cpu_count()}",
        f"  Log: {' '.join(info['Plugins']['Log'])}",
        " OSType: linux",
    ]:
        assert line in out, f"{line!r} not in:\n{proc.stdout}"
    assert info["Driver"] in {"overlay2", "vfs"}
    proc = pyd_cli(daemon.host, "info", "--format", "{{.DockerRootDir}} {{json .Labels}}")
    assert proc.stdout == f'{daemon.data_root} ["{LABEL}"]\n'


def test_plugin_ls_shows_what_is_installed_and_what_the_daemon_loaded(daemon):
    proc = pyd_cli(daemon.host, "plugin", "ls", "--format",
                   "{{.Kind}} {{.Name}} {{.Distribution}} {{.State}}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # the daemon answered: no "showing local plugins" note
    rows = {tuple(line.split()[:3]): line.split()[3] for line in proc.stdout.splitlines()}
    installed = {(p.kind.value, p.name, p.dist) for p in list_installed()}
    assert set(rows) == installed
    driver = daemon.get_json("/info")["Driver"]
    graph = [k for k in rows if k[:2] == ("graphdriver", driver)]
    assert graph and rows[graph[0]] == "loaded"
    assert rows[("log", "none", "pyd")] == "loaded"
    table = pyd_cli(daemon.host, "plugin", "ls").stdout.splitlines()
    assert table[0].split() == ["KIND", "NAME", "DISTRIBUTION", "VERSION", "STATUS"]
    assert len(table) == len(installed) + 1


def test_events_stream_until_interrupted_and_replay_with_since_until(daemon):
    t0 = time.time()
    env = {k: v for k, v in os.environ.items() if k != "PYD_HOST"}
    stream = subprocess.Popen(
        [sys.executable, "-m", "pyd.cli.main", "-H", daemon.host, "events",
         "--filter", "type=daemon"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        # the stream is open once the daemon counts a listener
        deadline = time.monotonic() + 20
        while daemon.get_json("/info")["NEventsListener"] < 1:
            assert time.monotonic() < deadline, "pyd events never subscribed"
            assert stream.poll() is None, stream.stderr.read()
            time.sleep(0.05)
        daemon.signal(signal.SIGHUP)  # the daemon reloads its config: a "daemon reload" event
        line = stream.stdout.readline()
        assert " daemon reload " in line, line
        assert f"name={os.uname().nodename}" in line
        stream.send_signal(signal.SIGINT)
        assert stream.wait(10) == 130
    finally:
        if stream.poll() is None:
            stream.kill()
            stream.wait()
    proc = pyd_cli(daemon.host, "events", "--since", str(int(t0)), "--until",
                   str(int(time.time()) + 1), "--filter", "type=daemon", "--format", "{{json .}}")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(e["Type"], e["Action"]) for e in events] == [("daemon", "reload")]


def test_daemon_errors_are_reported_like_docker(daemon):
    proc = pyd_cli(daemon.host, "events", "--since", "1h", "--until", "2h")
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error response from daemon: ")


def test_no_daemon(tmp_path):
    host = f"unix://{tmp_path}/nosuch.sock"
    proc = pyd_cli(host, "info")
    assert proc.returncode == 1
    assert proc.stderr.endswith(
        f"Cannot connect to the pyd daemon at {host}. Is the pyd daemon running?\n")
