"""``pyd logs`` and ``pyd exec``."""

from __future__ import annotations

import os
from typing import Any

import click

from pyd.cli import common


@click.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Follow log output.")
@click.option("--since", default="", help="Show logs since timestamp (e.g. 2013-01-02T13:23:37Z) or relative (e.g. 42m).")
@click.option("--until", default="", help="Show logs before a timestamp or relative (e.g. 42m).")
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps.")
@click.option("-n", "--tail", default="all", help='Number of lines to show from the end of the logs (default "all").')
@click.option("--details", is_flag=True, hidden=True)
@click.argument("container")
def logs(follow: bool, since: str, until: str, timestamps: bool, tail: str, details: bool, container: str) -> None:
    """Fetch the logs of a container."""
    from pyd.cli.stdio import Demux, write_all

    client = common.get_client()
    info = client.get(f"/containers/{container}/json")  # as docker: 404 here, and the full ID
    params: dict[str, Any] = {"stdout": 1, "stderr": 1, "tail": tail or "all"}
    if follow:
        params["follow"] = 1
    if timestamps:
        params["timestamps"] = 1
    if since:
        params["since"] = common.parse_timestamp(since)
    if until:
        params["until"] = common.parse_timestamp(until)
    resp = client.stream("GET", f"/containers/{info['Id']}/logs", params=params)
    tty = bool(info["Config"].get("Tty"))
    demux = None if tty else Demux()
    try:
        for chunk in resp.iter_raw():
            if demux is None:
                write_all(1, chunk)
            else:
                demux.feed(chunk)
    finally:
        resp.close()


@click.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Detached mode: run command in the background.")
@click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open even if not attached.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY.")
@click.option("-e", "--env", multiple=True, help="Set environment variables.")
@click.option("--env-file", multiple=True, help="Read in a file of environment variables.")
@click.option("-u", "--user", default="", help="Username or UID (format: <name|uid>[:<group|gid>]).")
@click.option("-w", "--workdir", default="", help="Working directory inside the container.")
@click.option("--privileged", is_flag=True, help="Give extended privileges to the command.")
@click.option("--detach-keys", default="", hidden=True)
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_(
    ctx: click.Context,
    detach: bool,
    interactive: bool,
    tty: bool,
    env: tuple[str, ...],
    env_file: tuple[str, ...],
    user: str,
    workdir: str,
    privileged: bool,
    detach_keys: str,
    container: str,
    command: tuple[str, ...],
) -> None:
    """Execute a command in a running container."""
    from pyd.cli.create_body import parse_env_item, read_env_file
    from pyd.cli.stdio import RawTerminal, copy_output, on_winch, pump_stdin
    from pyd.errors import PydError

    client = common.get_client()
    environ = os.environ
    envs = [e for path in env_file for e in read_env_file(path, environ)] + [parse_env_item(e, environ) for e in env]
    body = {
        "User": user,
        "Privileged": privileged,
        "Tty": tty,
        "AttachStdin": interactive and not detach,
        "AttachStdout": not detach,
        "AttachStderr": not detach,
        "Detach": detach,
        "DetachKeys": detach_keys,
        "Env": envs or None,
        "WorkingDir": workdir,
        "Cmd": list(command),
    }
    try:
        eid = client.post(f"/containers/{container}/exec", data=body)["Id"]
    except PydError as exc:
        if common.is_daemon_error(exc):
            common.warn(f"Error response from daemon: {exc}")
            ctx.exit(1 if getattr(exc, "http_status", 0) != 404 else 1)
        raise
    if detach:
        client.post(f"/exec/{eid}/start", data={"Detach": True, "Tty": tty})
        return
    hijacked = client.hijack("POST", f"/exec/{eid}/start", data={"Detach": False, "Tty": tty})
    if tty:
        def resize(rows: int, cols: int) -> None:
            from pyd.client import Client

            c = Client(client.host, tls=client.tls, version=client.api_version)
            try:
                c.post(f"/exec/{eid}/resize", params={"h": rows, "w": cols})
            finally:
                c.close()

        on_winch(resize)
        with RawTerminal():
            if interactive:
                pump_stdin(hijacked, half_close=False)
            copy_output(hijacked, True)
    else:
        if interactive:
            pump_stdin(hijacked)
        else:
            hijacked.close_write()
        copy_output(hijacked, False)
    hijacked.close()
    code = client.get(f"/exec/{eid}/json").get("ExitCode")
    ctx.exit(126 if code is None else int(code))
