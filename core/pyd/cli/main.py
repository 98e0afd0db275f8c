"""The ``pyd`` command: the command table, the entry point, docker-like error output.

Subcommands live in their own modules and are imported only when invoked (or when
``--help`` lists them), so ``pyd version`` imports neither aiohttp, pyroute2, the engine nor
any plugin (the idea of Flask's ``FlaskGroup``). The click group itself is in
``pyd.cli.group``; this module imports no click, so the fast paths of ``pyd.cli.fast``
(``run``, ``exec``: the commands whose start-up is on a container's critical path) can skip
click's import altogether.
"""

from __future__ import annotations

import sys

from pyd.cli.state import CliState, is_daemon_error

TYPE_CHECKING = False  # typing itself costs an import on every invocation
if TYPE_CHECKING:
    from typing import Any, NoReturn, Sequence

# Top-level commands: name -> "module:attr" of a click command (or group).
#
# To add a command, write it in its own module under pyd.cli (e.g. ``pyd/cli/containers.py``
# holding ``@click.command("ps") def ps(...)``) and add ONE line here, e.g.
#     "ps": "pyd.cli.containers:ps",
# Nothing is imported until the command is used. Keep sorted.
COMMANDS: dict[str, str] = {
    "attach": "pyd.cli.containers:attach",
    "commit": "pyd.cli.files:commit",
    "cp": "pyd.cli.files:cp",
    "create": "pyd.cli.run:create",
    "daemon": "pyd.cli.daemon:daemon",
    "diff": "pyd.cli.files:diff",
    "events": "pyd.cli.system:events",
    "exec": "pyd.cli.logs:exec_",
    "export": "pyd.cli.files:export",
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
            "commit": "pyd.cli.files:commit",
            "cp": "pyd.cli.files:cp",
            "create": "pyd.cli.run:create",
            "diff": "pyd.cli.files:diff",
            "exec": "pyd.cli.logs:exec_",
            "export": "pyd.cli.files:export",
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
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        from pyd.cli.fast import run_fast

        rv = run_fast(args, state)  # None: not one of its command lines; click parses it
        if rv is None:
            rv = _click_main(args, state)
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


def _click_main(args: list[str], state: CliState) -> Any:
    import click

    from pyd.cli.group import cli

    try:
        return cli.main(args=args, prog_name="pyd", standalone_mode=False, obj=state)
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


def __getattr__(name: str) -> Any:
    # the click group moved to pyd.cli.group; ``pyd.cli.main.cli`` still finds it
    if name in ("cli", "LazyGroup"):
        from pyd.cli import group

        return getattr(group, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
