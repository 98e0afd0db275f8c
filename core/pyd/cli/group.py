"""The ``pyd`` click group: global options and lazily loaded subcommands.

The command table (``COMMANDS``, ``GROUPS``) and the entry point live in ``pyd.cli.main``;
this module holds the click side, imported only when a command goes through click (every
command but the fast paths of ``pyd.cli.fast``).
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

import click

from pyd.cli.main import COMMANDS, GROUPS
from pyd.cli.optspec import click_options
from pyd.cli.state import GLOBAL_OPTIONS, CliState


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first lookup from ``lazy`` (name ->
    ``"module:attr"``)."""

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.add_command(self._load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def _load(self, name: str) -> click.Command:
        module_name, _, attr = self.lazy[name].partition(":")
        module = importlib.import_module(module_name)
        cmd = getattr(module, attr)
        if not isinstance(cmd, click.Command):
            raise TypeError(f"{self.lazy[name]} is not a click command")
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Like click's, but a command whose module fails to import is listed with the reason
        # instead of breaking --help for every other command.
        rows: list[tuple[str, str]] = []
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(n) for n in names), default=0)
        for name in names:
            try:
                cmd = self.get_command(ctx, name)
            except Exception as exc:  # noqa: BLE001 - shown to the user
                rows.append((name, f"(cannot load: {type(exc).__name__}: {exc})"))
                continue
            if cmd is None or cmd.hidden:
                continue
            rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _groups() -> dict[str, click.Command]:
    return {
        name: LazyGroup(name=name, help=help_text, lazy=lazy)
        for name, (help_text, lazy) in GROUPS.items()
    }


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from pyd import __version__

    click.echo(f"pyd version {__version__}")
    ctx.exit(0)


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    commands=_groups(),
    context_settings={"max_content_width": 100},
)
@click_options(GLOBAL_OPTIONS)
@click.option(
    "-v",
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print version information and quit.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    host: str | None,
    debug: bool,
    tls: bool,
    tlsverify: bool,
    tlscacert: str | None,
    tlscert: str | None,
    tlskey: str | None,
) -> None:
    """A container engine: a daemon with the Docker Engine API, and this client."""
    state = ctx.ensure_object(CliState)
    state.set_globals(host, debug, tls, tlsverify, tlscacert, tlscert, tlskey)
    ctx.call_on_close(state.close)
