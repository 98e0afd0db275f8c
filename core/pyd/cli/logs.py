"""``pyd logs`` and ``pyd exec`` (whose options and flow are in ``pyd.cli.exec_flow``)."""

from __future__ import annotations

import os
from typing import Any

import click

from pyd.cli import common
from pyd.cli.exec_flow import EXEC_OPTIONS
from pyd.cli.optspec import click_options


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
@click_options(EXEC_OPTIONS)
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_(ctx: click.Context, **kwargs: Any) -> None:
    """Execute a command in a running container."""
    from pyd.cli.exec_flow import exec_ as run_exec

    ctx.exit(run_exec(common.get_client, **kwargs))
