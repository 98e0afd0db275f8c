"""The ``pyd`` command: global options, lazily loaded subcommands, docker-like error output.

Subcommands live in their own modules and are imported only when invoked (or when
``--help`` lists them), so ``pyd version`` imports neither aiohttp, pyroute2, the engine nor
any plugin (the idea of Flask's ``FlaskGroup``).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Mapping, NoReturn, Sequence

import click

from pyd.cli.common import CliState, is_daemon_error

# Top-level commands: name -> "module:attr" of a click command (or group).
#
# To add a command, write it in its own module under pyd.cli (e.g. ``pyd/cli/containers.py``
# holding ``@click.command("ps") def ps(...)``) and add ONE line here, e.g.
#     "ps": "pyd.cli.containers:ps",
# Nothing is imported until the command is used. Keep sorted.
COMMANDS: dict[str, str] = {
    "attach": "pyd.cli.containers:attach",
    "create": "pyd.cli.run:create",
    "daemon": "pyd.cli.daemon:daemon",
    "events": "pyd.cli.system:events",
    "exec": "pyd.cli.logs:exec_",
    "history": "pyd.cli.images:history",
    "images": "pyd.cli.images:images",
    "import": "pyd.cli.images:import_",
    "info": "pyd.cli.system:info",
    "inspect": "pyd.cli.ps:inspect",  # containers, then images
    "kill": "pyd.cli.containers:kill",
    "load": "pyd.cli.images:load",
    "logs": "pyd.cli.logs:logs",
    "pause": "pyd.cli.containers:pause",
    "port": "pyd.cli.containers:port",
    "ps": "pyd.cli.ps:ps",
    "rename": "pyd.cli.containers:rename",
    "restart": "pyd.cli.containers:restart",
    "rm": "pyd.cli.containers:rm",
    "rmi": "pyd.cli.images:rmi",
    "run": "pyd.cli.run:run",
    "save": "pyd.cli.images:save",
    "start": "pyd.cli.containers:start",
    "stats": "pyd.cli.ps:stats",
    "stop": "pyd.cli.containers:stop",
    "tag": "pyd.cli.images:tag",
    "top": "pyd.cli.ps:top",
    "unpause": "pyd.cli.containers:unpause",
    "version": "pyd.cli.system:version",
    "wait": "pyd.cli.containers:wait",
}

# Management commands (docker's ``pyd system info``, ``pyd plugin ls``, later ``pyd container
# ls``, ``pyd image ls``, ``pyd network create``, ``pyd volume rm``...): group name ->
# (help text, {subcommand: "module:attr"}). Add a group, or one line to a group, the same way;
# one command object may be listed both here and in COMMANDS (``info`` and ``system info``).
GROUPS: dict[str, tuple[str, dict[str, str]]] = {
    "container": (
        "Manage containers",
        {
            "attach": "pyd.cli.containers:attach",
            "create": "pyd.cli.run:create",
            "exec": "pyd.cli.logs:exec_",
            "inspect": "pyd.cli.ps:inspect",
            "kill": "pyd.cli.containers:kill",
            "logs": "pyd.cli.logs:logs",
            "ls": "pyd.cli.ps:ps",
            "pause": "pyd.cli.containers:pause",
            "port": "pyd.cli.containers:port",
            "prune": "pyd.cli.containers:prune",
            "rename": "pyd.cli.containers:rename",
            "restart": "pyd.cli.containers:restart",
            "rm": "pyd.cli.containers:rm",
            "run": "pyd.cli.run:run",
            "start": "pyd.cli.containers:start",
            "stats": "pyd.cli.ps:stats",
            "stop": "pyd.cli.containers:stop",
            "top": "pyd.cli.ps:top",
            "unpause": "pyd.cli.containers:unpause",
            "wait": "pyd.cli.containers:wait",
        },
    ),
    "image": (
        "Manage images",
        {
            "history": "pyd.cli.images:history",
            "import": "pyd.cli.images:import_",
            "inspect": "pyd.cli.images:inspect",
            "load": "pyd.cli.images:load",
            "ls": "pyd.cli.images:images",
            "list": "pyd.cli.images:images",
            "prune": "pyd.cli.images:prune",
            "rm": "pyd.cli.images:rmi",
            "save": "pyd.cli.images:save",
            "tag": "pyd.cli.images:tag",
        },
    ),
    "network": (
        "Manage networks",
        {
            "connect": "pyd.cli.networks:connect",
            "create": "pyd.cli.networks:create",
            "disconnect": "pyd.cli.networks:disconnect",
            "inspect": "pyd.cli.networks:inspect",
            "ls": "pyd.cli.networks:ls",
            "list": "pyd.cli.networks:ls",
            "prune": "pyd.cli.networks:prune",
            "rm": "pyd.cli.networks:rm",
            "remove": "pyd.cli.networks:rm",
        },
    ),
    "plugin": ("Manage plugins", {"ls": "pyd.cli.plugin:ls"}),
    "system": (
        "Manage pyd",
        {"df": "pyd.cli.images:system_df", "events": "pyd.cli.system:events", "info": "pyd.cli.system:info"},
    ),
    "volume": (
        "Manage volumes",
        {
            "create": "pyd.cli.volumes:create",
            "inspect": "pyd.cli.volumes:inspect",
            "list": "pyd.cli.volumes:ls",
            "ls": "pyd.cli.volumes:ls",
            "prune": "pyd.cli.volumes:prune",
            "remove": "pyd.cli.volumes:rm",
            "rm": "pyd.cli.volumes:rm",
        },
    ),
}

EXIT_USAGE = 125  # docker's exit code when the CLI itself fails (bad flags, unknown command)


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
@click.option(
    "-H",
    "--host",
    metavar="HOST",
    help="Daemon socket to connect to: unix:///path or tcp://HOST:PORT "
    "[env PYD_HOST; default unix:///run/pyd/pyd.sock]",
)
@click.option("-D", "--debug", is_flag=True, help="Enable debug mode (tracebacks on errors).")
@click.option("--tls", is_flag=True, help="Use TLS; implied by --tlsverify.")
@click.option(
    "--tlsverify", is_flag=True, help="Use TLS and verify the remote [env PYD_TLS_VERIFY]."
)
@click.option(
    "--tlscacert", metavar="PATH", help="Trust certs signed only by this CA [~/.pyd/ca.pem]."
)
@click.option("--tlscert", metavar="PATH", help="Path to TLS certificate file [~/.pyd/cert.pem].")
@click.option("--tlskey", metavar="PATH", help="Path to TLS key file [~/.pyd/key.pem].")
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
    state.host = host
    state.debug = state.debug or debug
    state.tls = tls or tlsverify
    state.tlsverify = tlsverify
    state.tlscacert, state.tlscert, state.tlskey = tlscacert, tlscert, tlskey
    ctx.call_on_close(state.close)


def _report(exc: BaseException, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exception(exc)
    from pyd.client import DaemonUnreachable

    message = str(exc) or type(exc).__name__
    if isinstance(exc, DaemonUnreachable):
        text = message  # docker prints its "Cannot connect ..." without a prefix
    elif is_daemon_error(exc):
        text = f"Error response from daemon: {message}"
    else:
        from pyd.errors import PydError

        if not isinstance(exc, PydError):
            message = f"{type(exc).__name__}: {message}"
            if not debug:
                message += " (run with --debug for a traceback)"
        text = f"Error: {message}"
    sys.stderr.write(text + "\n")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point (``pyd = "pyd.cli.main:main"``).

    Exit status: what the command sets with ``ctx.exit(n)`` (0 otherwise); 1 for an error
    (``Error response from daemon: ...`` for one the daemon answered); 125 for usage errors;
    130 after Ctrl-C.
    """
    state = CliState()
    try:
        rv = cli.main(args=argv, prog_name="pyd", standalone_mode=False, obj=state)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.exceptions.UsageError as exc:
        exc.show()
        # `pyd` alone (or a group alone) prints help, and docker exits 0 there
        no_args = getattr(click.exceptions, "NoArgsIsHelpError", ())
        sys.exit(0 if no_args and isinstance(exc, no_args) else EXIT_USAGE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(141)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - every error ends as one line on stderr
        _report(exc, state.debug)
        sys.exit(1)
    finally:
        state.close()
    sys.exit(rv if isinstance(rv, int) else 0)


def _silence_stdout() -> None:
    # Python flushes stdout at exit; after EPIPE that flush would print another traceback.
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    main()
