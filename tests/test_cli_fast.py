"""The fast path of ``pyd run``/``pyd exec`` (``pyd.cli.fast``): it reads a command line exactly
as click does, or hands it to click; it runs the same flow; it imports no click."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import textwrap
import warnings

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyd.cli import exec_flow, run_flow
from pyd.cli.fast import exec_kwargs, run_fast, run_kwargs
from pyd.cli.group import cli
from pyd.cli.logs import exec_ as exec_command
from pyd.cli.optspec import parse
from pyd.cli.run import run as run_command
from pyd.cli.state import GLOBAL_OPTIONS, CliState


def click_params(command: click.Command, args: list[str]) -> dict | None:
    """What click makes of ``args`` (None when it refuses them or prints help)."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            ctx = command.make_context(command.name, list(args))
    except (click.exceptions.ClickException, click.exceptions.Exit):
        return None
    return dict(ctx.params)


def option_strings(table) -> list[str]:
    return [s for o in table for s in (*o.opts, *o.secondary)]


FILLERS = ["busybox", "x", "5", "-1", "a=b", "=v", "--", "-", "sh", "-c", "--help", "-z", "--nosuch",
           "1.5", "", " 7 ", "-it", "-dit", "-ti", "-eA=1", "-e", "-ie", "-ei", "-tdi", "-hname", "-c5"]
RUN_TOKENS = option_strings(run_flow.RUN_OPTIONS + run_flow.CREATE_OPTIONS) + FILLERS + [
    "--name=web", "--rm=1", "--cpu-shares=x", "--cpu-shares=3", "--init=1", "--net=none", "-p80:80",
    "--stop-timeout=", "--no-sig-proxy", "-aSTDOUT", "-Pd"]
EXEC_TOKENS = option_strings(exec_flow.EXEC_OPTIONS) + FILLERS + ["--user=1000", "-u0", "--privileged=1"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(RUN_TOKENS), max_size=9))
def test_run_reads_the_command_line_as_click_does(args):
    fast = run_kwargs(args)
    slow = click_params(run_command, args)
    if fast is not None:  # whatever the fast path accepts, click accepts the same way
        assert slow == fast
    if slow is None:  # whatever click refuses (or answers with help) goes to click
        assert fast is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(EXEC_TOKENS), max_size=8))
def test_exec_reads_the_command_line_as_click_does(args):
    fast = exec_kwargs(args)
    slow = click_params(exec_command, args)
    if fast is not None:
        assert slow == fast
    if slow is None:
        assert fast is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(option_strings(GLOBAL_OPTIONS) + ["-v", "--version", "--help", "unix:///x",
                                                                  "-Hunix:///y", "--host=tcp://h:1", "run", "ps"]),
                max_size=6))
def test_global_options_read_as_the_group_does(args):
    fast = parse(GLOBAL_OPTIONS, args)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            ctx = cli.make_context("pyd", list(args), obj=CliState())
        with warnings.catch_warnings():  # click 8.2+ deprecates protected_args (9.0 folds it into args)
            warnings.simplefilter("ignore", DeprecationWarning)
            protected = list(getattr(ctx, "protected_args", []))
        slow = (dict(ctx.params), [*protected, *ctx.args])
    except (click.exceptions.ClickException, click.exceptions.Exit):
        slow = None
    if fast is not None and slow is not None:
        assert slow == fast
    if slow is None:
        assert fast is None or not fast[1]  # no command: run_fast leaves it to click


def test_examples_of_the_fast_reading():
    kw = run_kwargs(["-dit", "--rm", "-eA=1", "-e", "B=2", "--name=web", "-p", "80:80", "--init",
                     "--cpu-shares", "512", "busybox", "sh", "-c", "echo --rm"])
    assert kw is not None
    assert (kw["detach"], kw["interactive"], kw["tty"], kw["rm"], kw["init"]) == (True, True, True, True, True)
    assert kw["env"] == ("A=1", "B=2") and kw["name"] == "web" and kw["publish"] == ("80:80",)
    assert kw["cpu_shares"] == 512 and kw["sig_proxy"] is True and kw["stop_timeout"] is None
    assert (kw["image"], kw["command"]) == ("busybox", ("sh", "-c", "echo --rm"))
    assert run_kwargs(["--", "busybox", "--rm"])["command"] == ("--rm",)
    assert run_kwargs(["busybox", "--", "x"])["command"] == ("--", "x")  # after IMAGE all is the command
    for refused in (["--help"], ["--cpu-shares", "lots", "busybox"], ["--nosuch", "busybox"], ["--rm"], [],
                    ["--rm=yes", "busybox"], ["-e"]):
        assert run_kwargs(refused) is None, refused
    assert exec_kwargs(["-it", "web", "sh"])["command"] == ("sh",)
    assert exec_kwargs(["web"]) is None  # COMMAND is required


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["-v"], ["--version"], ["ps"], ["version"], ["run", "--help"], ["container", "ls"],
     ["-H", "unix:///x", "--nosuch", "run", "busybox"], ["container"], [], ["exec", "web"]],
)
def test_other_command_lines_are_left_to_click(argv):
    assert run_fast(argv, CliState()) is None


def test_shell_completion_is_left_to_click(monkeypatch):
    monkeypatch.setenv("_PYD_COMPLETE", "bash_complete")
    assert run_fast(["run", "busybox"], CliState()) is None


RUN_IN_SUBPROCESS = textwrap.dedent(
    """
    import json, sys
    from pyd.testing.fake_api import FakeDaemon, ping_then, reply

    def attach(req, conn):
        frame = lambda n, d: bytes([n, 0, 0, 0]) + len(d).to_bytes(4, "big") + d
        conn.send(b"HTTP/1.1 101 UPGRADED\\r\\nContent-Type: application/vnd.docker.raw-stream\\r\\n"
                  b"Connection: Upgrade\\r\\nUpgrade: tcp\\r\\n\\r\\n" + frame(1, b"out\\n") + frame(2, b"err\\n"))
        conn.reader.read_to_eof()  # the client half-closes stdin
        req.close_after = True

    cid = "c" * 64
    routes = {
        ("POST", "/containers/create"): reply(201, {"Id": cid, "Warnings": []}),
        ("POST", f"/containers/{cid}/attach"): attach,
        ("POST", f"/containers/{cid}/wait"): reply(200, chunks=[b'{"Error":null,"StatusCode":3}\\n']),
        ("POST", f"/containers/{cid}/start"): reply(204),
    }
    with FakeDaemon(sys.argv[1], ping_then(routes)) as d:
        from pyd.cli.main import main
        try:
            main(["-H", "unix://" + sys.argv[1], "run", "--rm", "--network", "none", "-e", "A=1", "busybox", "true"])
        except SystemExit as exc:
            code = exc.code
    sys.stdout.flush()
    sys.__stdout__.write("\\n@@" + json.dumps({
        "code": code,
        "click": "click" in sys.modules,
        "requests": [[r.method, r.target, r.body.decode()] for r in d.requests],
    }))
    """
)


def test_run_goes_the_fast_path_and_keeps_the_docker_cli_order(tmp_path):
    proc = subprocess.run([sys.executable, "-c", RUN_IN_SUBPROCESS, str(tmp_path / "api.sock")],
                          capture_output=True, text=True, timeout=60)
    result = json.loads(proc.stdout.rpartition("@@")[2])
    assert result["code"] == 3, proc.stderr  # the container's exit code
    assert proc.stdout.startswith("out\n") and proc.stderr == "err\n"
    assert not result["click"]
    calls = [(m, t.split("?")[0]) for m, t, _ in result["requests"]]
    cid = "c" * 64
    assert calls == [
        ("HEAD", "/_ping"),
        ("POST", "/v1.41/containers/create"),
        ("POST", f"/v1.41/containers/{cid}/attach"),
        ("POST", f"/v1.41/containers/{cid}/wait"),
        ("POST", f"/v1.41/containers/{cid}/start"),
    ]
    assert result["requests"][3][1].endswith("?condition=removed")
    body = json.loads(result["requests"][1][2])
    assert body["Env"] == ["A=1"] and body["HostConfig"]["AutoRemove"] is True
    assert body["HostConfig"]["NetworkMode"] == "none"


@pytest.mark.parametrize("argv", [["run", "--rm", "busybox", "true"], ["exec", "web", "true"]], ids=["run", "exec"])
def test_fast_commands_import_neither_click_nor_typing(tmp_path, argv):
    host = f"unix://{tmp_path}/nosuch.sock"
    code = textwrap.dedent(
        f"""
        import json, sys
        from pyd.cli.main import main
        try:
            main({["-H", host, *argv]!r})
        except SystemExit as exc:
            code = exc.code
        sys.__stdout__.write("\\n@@" + json.dumps({{"code": code, "modules": sorted(sys.modules)}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    result = json.loads(proc.stdout.rpartition("@@")[2])
    assert "Cannot connect to the pyd daemon" in proc.stderr
    assert result["code"] in (1, 125)  # as through click: run says "pyd: ..." and exits 125
    slow = {"click", "typing", "threading", "dataclasses", "inspect", "csv"} & set(result["modules"])
    assert not slow
