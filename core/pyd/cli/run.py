"""``pyd create`` and ``pyd run``: the click commands.

Their options and flow live in ``pyd.cli.run_flow`` (no click), which ``pyd.cli.fast`` also
runs straight from the command line; see there for the order of the API calls and the exit
codes.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import click

from pyd.cli import common
from pyd.cli.optspec import click_options
from pyd.cli.run_flow import (  # noqa: F401 - re-exported for the other commands
    CREATE_OPTIONS,
    EXIT_CANNOT_INVOKE,
    EXIT_DAEMON,
    EXIT_NOT_FOUND,
    RUN_OPTIONS,
    RunExit,
    _daemon_text,
    _proxy_signals,
    _wait_status,
    create_container,
    options_from,
    run_created,
    start_error_code,
)
from pyd.cli import run_flow


def create_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The flags ``create`` and ``run`` share (docker's names), then IMAGE [COMMAND]..."""
    f = click.argument("command", nargs=-1, type=click.UNPROCESSED)(f)
    f = click.argument("image")(f)
    return click_options(CREATE_OPTIONS)(f)


@click.command("create", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": False})
@create_options
def create(**kwargs: Any) -> None:
    """Create a new container."""
    try:
        run_flow.create(common.get_client, kwargs)
    except RunExit as exc:
        click.get_current_context().exit(exc.code)


@click.command("run", context_settings={"allow_interspersed_args": False})
@click_options(RUN_OPTIONS)
@create_options
@click.pass_context
def run(ctx: click.Context, **kwargs: Any) -> None:
    """Run a command in a new container."""
    try:
        code = run_flow.run(common.get_client, kwargs)
    except RunExit as exc:
        code = exc.code
    ctx.exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
