"""``pyd version``, ``info``, ``events``, ``plugin ls`` and error output, against a fake API
server (pyd.testing.fake_api), run in-process through ``pyd.cli.main.main``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pyd.cli.main import main
from pyd.testing.fake_api import FakeDaemon, Request, chunk, ping_then, reply

VERSION = {
    "Platform": {"Name": "pyd"},
    "Components": [
        {"Name": "Engine", "Version": "0.1.0", "Details": {
            "ApiVersion": "1.41", "Arch": "amd64", "BuildTime": "", "Experimental": "false",
            "GitCommit": "", "GoVersion": "python3.11.7", "KernelVersion": "6.1.0",
            "MinAPIVersion": "1.12", "Os": "linux"}},
        {"Name": "pyd-plugin-api", "Version": "0.1", "Details": {}},
    ],
    "Version": "0.1.0", "ApiVersion": "1.41", "MinAPIVersion": "1.12", "Os": "linux",
    "Arch": "amd64",
}

INFO = {
    "ID": "ABCD:EFGH", "Containers": 3, "ContainersRunning": 1, "ContainersPaused": 0,
    "ContainersStopped": 2, "Images": 15, "Driver": "overlay2",
    "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]],
    "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "null"],
                "Authorization": None, "Log": ["json-file", "none"], "Storage": ["overlay2", "vfs"]},
    "Debug": False, "LoggingDriver": "json-file", "CgroupDriver": "cgroupfs",
    "CgroupVersion": "1", "KernelVersion": "6.1.0", "OperatingSystem": "Debian GNU/Linux 12",
    "OSType": "linux", "Architecture": "x86_64", "NCPU": 2, "MemTotal": 25276514304,
    "DockerRootDir": "/var/lib/pyd", "Name": "host1", "Labels": ["env=test"],
    "ServerVersion": "0.1.0", "LiveRestoreEnabled": True,
    "SecurityOptions": ["name=seccomp,profile=default"],
    "Warnings": ["WARNING: log plugin broken: failed to load"],
    "PydPlugins": [
        {"kind": "graphdriver", "name": "overlay2", "dist": "pyd-graphdriver-overlay",
         "version": "0.1.0", "target": "pyd_graphdriver_overlay", "state": "loaded", "error": ""},
        {"kind": "log", "name": "broken", "dist": "pyd-log-broken", "version": "0.2",
         "target": "pyd_log_broken", "state": "failed",
         "error": 'log plugin "broken" (pyd_log_broken) failed to load: ImportError: nope'},
    ],
}


@pytest.fixture
def api(tmp_path: Path):
    routes = {("GET", "/version"): VERSION, ("GET", "/info"): INFO}
    with FakeDaemon(str(tmp_path / "api.sock"), ping_then(routes)) as d:
        d.routes = routes
        yield d


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.delenv("TZ")
    time.tzset()


# -- version -------------------------------------------------------------------------------------


def test_version_prints_client_and_server_sections(api, capsys):
    code, out, err = run(capsys, "-H", api.host, "version")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "Client:"
    assert lines[1] == " Version:           0.1.0"
    assert lines[2] == " API version:       1.41"
    assert lines[3].startswith(" Python version:    3.")
    assert lines[4].startswith(" OS/Arch:           linux/")
    assert lines[5:] == [
        "",
        "Server: pyd",
        " Engine:",
        "  Version:          0.1.0",
        "  API version:      1.41 (minimum version 1.12)",
        "  Python version:   3.11.7",
        "  OS/Arch:          linux/amd64",
        "  Experimental:     false",
        " pyd-plugin-api:",
        "  Version:          0.1",
    ]


def test_version_shows_a_downgraded_api_and_format(tmp_path, capsys):
    routes = {("GET", "/version"): {**VERSION, "ApiVersion": "1.40"}}
    with FakeDaemon(str(tmp_path / "s"), ping_then(routes, api_version="1.40")) as d:
        code, out, _ = run(capsys, "-H", d.host, "version")
        assert " API version:       1.40 (downgraded from 1.41)" in out.splitlines()
        code, out, _ = run(capsys, "-H", d.host, "version", "--format",
                           "{{.Server.Version}} {{.Client.ApiVersion}}")
        assert (code, out) == (0, "0.1.0 1.40\n")


def test_version_without_daemon_prints_client_part_then_fails(tmp_path, capsys):
    host = f"unix://{tmp_path}/none.sock"
    code, out, err = run(capsys, "-H", host, "version")
    assert code == 1
    assert out.startswith("Client:\n Version:           0.1.0\n")
    assert "Server" not in out
    assert err == f"Cannot connect to the pyd daemon at {host}. Is the pyd daemon running?\n"


def test_host_from_environment(api, capsys, monkeypatch):
    monkeypatch.setenv("PYD_HOST", api.host)
    code, out, _ = run(capsys, "version", "--format", "{{.Server.Platform.Name}}")
    assert (code, out) == (0, "pyd\n")


# -- info ----------------------------------------------------------------------------------------


def test_info_text(api, capsys):
    code, out, err = run(capsys, "-H", api.host, "info")
    assert code == 0
    assert out.startswith("Client:\n Version:    0.1.0\n Debug Mode: false\n\nServer:\n")
    server = out.split("Server:\n", 1)[1].splitlines()
    assert server[:9] == [
        " Containers: 3",
        "  Running: 1",
        "  Paused: 0",
        "  Stopped: 2",
        " Images: 15",
        " Server Version: 0.1.0",
        " Storage Driver: overlay2",
        "  Backing Filesystem: extfs",
        "  Supports d_type: true",
    ]
    for line in [
        " Logging Driver: json-file",
        " Cgroup Driver: cgroupfs",
        " Cgroup Version: 1",
        " Plugins:",
        "  Volume: local",
        "  Network: bridge host null",
        "  Log: json-file none",
        "  Storage: overlay2 vfs",
        " Security Options:",
        "  seccomp",
        "   Profile: default",
        " Kernel Version: 6.1.0",
        " Operating System: Debian GNU/Linux 12",
        " OSType: linux",
        " Architecture: x86_64",
        " CPUs: 2",
        " Total Memory: 23.54GiB",
        " Name: host1",
        " ID: ABCD:EFGH",
        " Pyd Root Dir: /var/lib/pyd",
        " Debug Mode: false",
        " Labels:",
        "  env=test",
        " Live Restore Enabled: true",
    ]:
        assert line in server
    assert not any(line.startswith("  Authorization") for line in server)  # null: not shown
    assert err == "WARNING: log plugin broken: failed to load\n"


def test_info_format(api, capsys):
    code, out, _ = run(capsys, "-H", api.host, "info", "--format",
                       "{{.Driver}} {{json .Plugins.Log}} {{.ClientInfo.Version}}")
    assert (code, out) == (0, 'overlay2 ["json-file","none"] 0.1.0\n')
    code, out, _ = run(capsys, "-H", api.host, "system", "info", "--format", "json")
    assert json.loads(out)["ID"] == "ABCD:EFGH"


def test_daemon_error_is_reported_like_docker(tmp_path, capsys):
    routes = {("GET", "/info"): reply(500, {"message": "graph driver status failed"})}
    with FakeDaemon(str(tmp_path / "s"), ping_then(routes)) as d:
        code, out, err = run(capsys, "-H", d.host, "info")
    assert code == 1
    assert err == "Error response from daemon: graph driver status failed\n"


def test_debug_adds_a_traceback(tmp_path, capsys):
    routes = {("GET", "/info"): reply(403, {"message": "authorization denied by plugin p: no"})}
    with FakeDaemon(str(tmp_path / "s"), ping_then(routes)) as d:
        code, _, err = run(capsys, "-H", d.host, "info")
        assert err == "Error response from daemon: authorization denied by plugin p: no\n"
        code, _, err = run(capsys, "-D", "-H", d.host, "info")
    assert code == 1
    assert "Traceback" in err and "pyd.errors.Forbidden" in err
    assert err.endswith("Error response from daemon: authorization denied by plugin p: no\n")


def test_usage_errors_exit_125_and_local_errors_say_error(api, capsys):
    code, _, err = run(capsys, "version", "--nosuch")
    assert code == 125 and "No such option" in err
    code, _, err = run(capsys, "nosuchcommand")
    assert code == 125
    code, _, err = run(capsys, "-H", "ssh://x", "version")
    assert code == 1 and 'Error: invalid host "ssh://x"' in err
    code, _, err = run(capsys, "-H", api.host, "version", "--format", "{{.Nope")
    assert code == 1 and err.startswith("Error: template parsing error")


def test_no_arguments_prints_help_and_succeeds(capsys):
    code, out, err = run(capsys)
    assert code == 0 and "Commands:" in out + err


def test_version_flag(capsys):
    code, out, _ = run(capsys, "--version")
    assert (code, out) == (0, "pyd version 0.1.0\n")


# -- events --------------------------------------------------------------------------------------

EVENTS = [
    {"status": "create", "id": "77c780ad05e7", "from": "busybox:local", "Type": "container",
     "Action": "create", "Actor": {"ID": "77c780ad05e7", "Attributes": {
         "name": "sleepy_goodall", "image": "busybox:local", "trace": "ev"}},
     "scope": "local", "time": 1795850060, "timeNano": 1795850060807693882},
    {"Type": "network", "Action": "connect", "Actor": {"ID": "f0c8", "Attributes": {}},
     "scope": "local", "time": 1795850061, "timeNano": 1795850061000000001},
]


def _events_route(req: Request, conn):
    conn.send(reply(200, headers={"Transfer-Encoding": "chunked",
                                  "Content-Type": "application/json"}))
    for ev in EVENTS:
        conn.send(chunk(json.dumps(ev).encode() + b"\n"))
    conn.send(b"0\r\n\r\n")
    return None


def test_events_default_format_and_query(tmp_path, capsys, utc):
    with FakeDaemon(str(tmp_path / "s"), ping_then({("GET", "/events"): _events_route})) as d:
        code, out, err = run(capsys, "-H", d.host, "events", "--since", "1795850059",
                             "--until", "2026-11-28T07:14:22Z", "--filter", "label=trace=ev",
                             "-f", "type=container")
    assert code == 0, err
    assert out.splitlines() == [
        "2026-11-28T07:14:20.807693882Z container create 77c780ad05e7 "
        "(image=busybox:local, name=sleepy_goodall, trace=ev)",
        "2026-11-28T07:14:21.000000001Z network connect f0c8",
    ]
    q = d.requests[-1].query
    assert q["since"] == ["1795850059"]
    assert q["until"] == ["1795850062.000000000"]
    assert json.loads(q["filters"][0]) == {"label": {"trace=ev": True},
                                           "type": {"container": True}}


def test_events_format_uses_go_field_names(tmp_path, capsys):
    with FakeDaemon(str(tmp_path / "s"), ping_then({("GET", "/events"): _events_route})) as d:
        code, out, _ = run(capsys, "-H", d.host, "events", "--format",
                           "{{.ID}}|{{.Type}}|{{.Actor.Attributes.name}}|{{.TimeNano}}")
        assert out.splitlines() == [
            "77c780ad05e7|container|sleepy_goodall|1795850060807693882",
            "<no value>|network|<no value>|1795850061000000001",
        ]
        code, out, _ = run(capsys, "-H", d.host, "events", "--format", "{{json .}}")
    assert [json.loads(line) for line in out.splitlines()] == EVENTS


def test_events_bad_filter_is_a_local_error(capsys, tmp_path):
    code, _, err = run(capsys, "-H", f"unix://{tmp_path}/x", "events", "--filter", "oops")
    assert code == 1 and err.startswith('Error: bad format of filter "oops"')


# -- plugin ls -----------------------------------------------------------------------------------


def test_plugin_ls_shows_daemon_state_and_why_one_failed(api, capsys):
    code, out, err = run(capsys, "-H", api.host, "plugin", "ls")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "DISTRIBUTION", "VERSION", "STATUS"]
    assert lines[1].split() == ["graphdriver", "overlay2", "pyd-graphdriver-overlay", "0.1.0",
                                "loaded"]
    assert lines[2].split()[:5] == ["log", "broken", "pyd-log-broken", "0.2", "failed:"]
    assert lines[2].endswith('failed: log plugin "broken" (pyd_log_broken) failed to load: '
                             "ImportError: nope")
    # core plugins are installed locally and listed after the daemon's rows
    assert any(line.split()[:3] == ["log", "none", "pyd"] for line in lines[3:])


def test_plugin_ls_quiet_filter_and_format(api, capsys):
    code, out, _ = run(capsys, "-H", api.host, "plugin", "ls", "-q", "--filter", "state=failed")
    assert (code, out) == (0, "log:broken\n")
    code, out, _ = run(capsys, "-H", api.host, "plugin", "ls", "--filter", "kind=graphdriver",
                       "-f", "state=loaded", "--format", "{{.Name}} {{.Distribution}} {{.State}}")
    assert out == "overlay2 pyd-graphdriver-overlay loaded\n"
    code, _, err = run(capsys, "-H", api.host, "plugin", "ls", "--filter", "color=red")
    assert code == 1 and 'invalid filter "color"' in err


def test_plugin_ls_without_daemon_lists_local_metadata(tmp_path, capsys):
    host = f"unix://{tmp_path}/none.sock"
    code, out, err = run(capsys, "-H", host, "plugin", "ls")
    assert code == 0
    assert "not reachable; showing the plugins installed here" in err
    rows = [line.split() for line in out.splitlines()[1:]]
    assert ["ipam", "default", "pyd"] in [r[:3] for r in rows]  # a core plugin
    assert all(r[-1] == "installed" for r in rows)
