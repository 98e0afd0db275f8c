"""``pyd plugin ls``: installed plugin distributions and, when the daemon answers, their state.

The list is read locally from entry-point metadata (``pyd.registry.list_installed``, no plugin
is imported), so it works without a daemon. When the daemon answers, its ``/info`` key
``PydPlugins`` (``PluginRegistry.status()`` rows: kind, name, dist, version, target, state,
error) says what it loaded and what failed, and why; those rows win over the local ones.
"""

from __future__ import annotations

from typing import Any

import click

from pyd.cli import common

DEFAULT_FORMAT = "table {{.Kind}}\t{{.Name}}\t{{.Distribution}}\t{{.Version}}\t{{.Status}}"
QUIET_FORMAT = "{{.Kind}}:{{.Name}}"
# How long to wait for the daemon's /info before showing the local list only.
DAEMON_TIMEOUT = 5.0


def _row(raw: dict[str, Any], source: str) -> dict[str, Any]:
    state = raw.get("state") or "installed"
    error = raw.get("error") or ""
    return {
        "Kind": raw.get("kind", ""),
        "Name": raw.get("name", ""),
        "Distribution": raw.get("dist", ""),
        "Version": raw.get("version", ""),
        "Target": raw.get("target", ""),
        "State": state,
        "Error": error,
        "Status": f"{state}: {error}" if error else state,
        "Source": source,  # "daemon" or "local"
    }


def _local_rows() -> list[dict[str, Any]]:
    from pyd.registry import list_installed

    return [
        _row(
            {"kind": p.kind.value, "name": p.name, "dist": p.dist, "version": p.version,
             "target": p.target, "state": "installed"},
            "local",
        )
        for p in list_installed()
    ]


def _daemon_rows(ctx: click.Context) -> tuple[list[dict[str, Any]] | None, str]:
    """The daemon's rows, or None and why not (no answer, an error, no ``PydPlugins``)."""
    from pyd.client import DaemonUnreachable
    from pyd.errors import PydError

    client = common.get_client(ctx)
    host = common.get_state(ctx).resolved_host
    saved = client.timeout
    client.timeout = DAEMON_TIMEOUT
    try:
        info = client.get("/info")
    except DaemonUnreachable:
        return None, f"the pyd daemon at {host} is not reachable"
    except PydError as exc:
        return None, f"the pyd daemon at {host} answered: {exc}"
    finally:
        client.timeout = saved
    rows = info.get("PydPlugins") if isinstance(info, dict) else None
    if not isinstance(rows, list):
        return None, f"the daemon at {host} does not report plugin state"
    return [_row(r, "daemon") for r in rows if isinstance(r, dict)], ""


def merged_rows(
    local: list[dict[str, Any]], daemon: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """Daemon rows first (in its order), then local plugins the daemon does not list."""
    if daemon is None:
        return local
    seen = {(r["Kind"], r["Name"], r["Distribution"]) for r in daemon}
    return daemon + [r for r in local if (r["Kind"], r["Name"], r["Distribution"]) not in seen]


@click.command("ls")
@common.filter_option
@common.format_option
@common.quiet_option
@click.pass_context
def ls(ctx: click.Context, filters: tuple[str, ...], format_: str | None, quiet: bool) -> None:
    """List plugins: kind, name, distribution, version, and loaded/failed state.

    Filters: kind=KIND, name=NAME, state=loaded|failed|installed, dist=DISTRIBUTION.
    """
    wanted = common.parse_filters(filters) or {}
    known = {"kind": "Kind", "name": "Name", "state": "State", "dist": "Distribution"}
    for key in wanted:
        if key not in known:
            from pyd.errors import InvalidParameter

            raise InvalidParameter(
                f'invalid filter "{key}" for plugin ls; valid filters: {", ".join(known)}'
            )
    daemon, why_not = _daemon_rows(ctx)
    if daemon is None and not quiet:
        common.warn(f"{why_not}; showing the plugins installed here")
    rows = merged_rows(_local_rows(), daemon)
    rows = [r for r in rows if all(r[known[k]] in vals for k, vals in wanted.items())]
    common.print_list(
        rows, format_, default=DEFAULT_FORMAT, quiet=quiet, quiet_format=QUIET_FORMAT
    )
