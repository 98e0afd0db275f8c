"""The fast path of ``pyd run`` and ``pyd exec``: the same flow as the click commands, without
importing click.

A container's start is on the critical path of scripts, CI jobs and compose; click's import
is about 40 ms of every ``pyd`` invocation, more than the daemon's own work for a container
(DESIGN.md, "Speed"). So ``pyd.cli.main.main`` first offers the command line to
``run_fast``: for ``[GLOBAL OPTIONS] run|exec ...`` (also ``container run|exec``) it parses
the options from the same ``Opt`` tables the click commands are built from
(``pyd.cli.optspec``) and runs ``pyd.cli.run_flow`` / ``pyd.cli.exec_flow``. Anything else,
and anything the parser is not sure of (``--help``, ``-v``, an unknown option, a missing
argument, a bad number, shell completion), returns None and goes through click, which
handles or reports it exactly as before.
"""

from __future__ import annotations

import os
import sys

from pyd.cli.optspec import parse
from pyd.cli.state import GLOBAL_OPTIONS

TYPE_CHECKING = False  # typing itself costs an import on every invocation
if TYPE_CHECKING:
    from typing import Any, Callable

    from pyd.cli.state import CliState


def run_fast(args: list[str], state: CliState) -> int | None:
    """Run ``args`` (the command line without the program name) if it is a fast-path
    command; the exit code, or None to let click handle it."""
    if "_PYD_COMPLETE" in os.environ:  # click's shell completion
        return None
    parsed = parse(GLOBAL_OPTIONS, args)
    if parsed is None or not parsed[1]:
        return None
    g, rest = parsed
    name, rest = rest[0], rest[1:]
    if name == "container" and rest:
        name, rest = rest[0], rest[1:]
    prepare = _COMMANDS.get(name)
    if prepare is None:
        return None
    call = prepare(rest)
    if call is None:
        return None
    state.set_globals(g["host"], g["debug"], g["tls"], g["tlsverify"], g["tlscacert"], g["tlscert"], g["tlskey"])
    return _invoke(call, state)


def _invoke(call: Callable[[Callable[[], Any]], int], state: CliState) -> int:
    """Run the command as click's ``main`` would (its handling of Ctrl-C and EPIPE included);
    other errors go to ``pyd.cli.main.main``, which reports them as for any command."""
    try:
        return call(state.client)
    except (EOFError, KeyboardInterrupt):
        sys.stderr.write("\n")  # click's Abort prints a newline; main exits 130
        sys.stderr.flush()
        return 130
    except OSError as exc:
        import errno

        if exc.errno != errno.EPIPE:
            raise
        sys.stdout = _Pacify(sys.stdout)  # type: ignore[assignment]
        sys.stderr = _Pacify(sys.stderr)  # type: ignore[assignment]
        return 1


class _Pacify:
    """click's ``PacifyFlushWrapper``: a stream whose flush ignores EPIPE."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def flush(self) -> None:
        try:
            self.wrapped.flush()
        except OSError as exc:
            import errno

            if exc.errno != errno.EPIPE:
                raise

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.wrapped, attr)


def run_kwargs(args: list[str]) -> dict[str, Any] | None:
    """``pyd run ARGS`` as the keyword arguments of the click command, or None."""
    from pyd.cli import run_flow

    parsed = parse(run_flow.RUN_OPTIONS + run_flow.CREATE_OPTIONS, args)
    if parsed is None or not parsed[1]:
        return None  # click reports the missing IMAGE
    kwargs, positional = parsed
    kwargs["image"], kwargs["command"] = positional[0], tuple(positional[1:])
    return kwargs


def exec_kwargs(args: list[str]) -> dict[str, Any] | None:
    """``pyd exec ARGS`` as the keyword arguments of the click command, or None."""
    from pyd.cli import exec_flow

    parsed = parse(exec_flow.EXEC_OPTIONS, args)
    if parsed is None or len(parsed[1]) < 2:
        return None  # click reports the missing CONTAINER or COMMAND
    kwargs, positional = parsed
    kwargs["container"], kwargs["command"] = positional[0], tuple(positional[1:])
    return kwargs


def _run(args: list[str]) -> Callable[[Callable[[], Any]], int] | None:
    kwargs = run_kwargs(args)
    if kwargs is None:
        return None

    def call(get_client: Callable[[], Any]) -> int:
        from pyd.cli import run_flow

        try:
            return run_flow.run(get_client, kwargs)
        except run_flow.RunExit as exc:
            return exc.code

    return call


def _exec(args: list[str]) -> Callable[[Callable[[], Any]], int] | None:
    kwargs = exec_kwargs(args)
    if kwargs is None:
        return None

    def call(get_client: Callable[[], Any]) -> int:
        from pyd.cli import exec_flow

        return exec_flow.exec_(get_client, **kwargs)

    return call


_COMMANDS: dict[str, Callable[[list[str]], Callable[[Callable[[], Any]], int] | None]] = {
    "run": _run,
    "exec": _exec,
}
