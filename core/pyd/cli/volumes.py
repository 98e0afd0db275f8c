"""``pyd volume create|ls|inspect|rm|prune``, with docker's flags and output.

Only the client is imported (never the engine); names and options are checked by the daemon
and the volume's driver.
"""

from __future__ import annotations

import re
from typing import Any

import click

from pyd.cli import common

VOLUME_TABLE = "table {{.Driver}}\t{{.Name}}"
VOLUME_HEADERS = {"Name": "VOLUME NAME"}
_PRUNE_WARNING = "WARNING! This will remove all local volumes not used by at least one container."


def _path(name: str) -> str:
    from pyd.client import quote_path

    return quote_path(name)


def _kv_map(values: tuple[str, ...]) -> dict[str, str]:
    """docker's ``KEY=VALUE`` lists (``--label``, ``-o``): a bare ``KEY`` means an empty value."""
    out: dict[str, str] = {}
    for item in values:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def _natural_key(name: str) -> list[Any]:
    # docker sorts `volume ls` naturally: vol2 before vol10
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class VolumeRow:
    """One line of ``pyd volume ls``: the fields docker's ``--format`` offers."""

    def __init__(self, v: dict[str, Any]) -> None:
        self._v = v

    @property
    def Name(self) -> str:  # noqa: N802 - docker's template names
        return self._v.get("Name", "")

    @property
    def Driver(self) -> str:  # noqa: N802
        return self._v.get("Driver", "")

    @property
    def Scope(self) -> str:  # noqa: N802
        return self._v.get("Scope", "")

    @property
    def Mountpoint(self) -> str:  # noqa: N802
        return self._v.get("Mountpoint", "")

    @property
    def Labels(self) -> str:  # noqa: N802
        labels = self._v.get("Labels") or {}
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))

    def Label(self, name: str) -> str:  # noqa: N802
        return (self._v.get("Labels") or {}).get(name, "")

    @property
    def Links(self) -> str:  # noqa: N802 - only `system df -v` counts them
        return "N/A"

    @property
    def Size(self) -> str:  # noqa: N802
        return "N/A"

    def __json__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("Driver", "Labels", "Links", "Mountpoint", "Name", "Scope", "Size")}


@click.command("create")
@click.argument("name", required=False)
@click.option("-d", "--driver", default="local", show_default=True, help="Specify volume driver name.")
@click.option("--label", "labels", multiple=True, metavar="LIST", help="Set metadata for a volume; repeatable.")
@click.option("-o", "--opt", "opts", multiple=True, metavar="KEY=VALUE",
              help="Set driver specific options; repeatable.")
@click.option("--name", "name_opt", hidden=True, help="Specify volume name.")
def create(name: str | None, driver: str, labels: tuple[str, ...], opts: tuple[str, ...], name_opt: str | None) -> None:
    """Create a volume (a random name when NAME is not given)."""
    if name and name_opt:
        raise click.UsageError("conflicting options: either specify --name or provide positional arg, not both")
    body: dict[str, Any] = {"Driver": driver, "Name": name or name_opt or ""}
    if opts:
        body["DriverOpts"] = _kv_map(opts)
    if labels:
        body["Labels"] = _kv_map(labels)
    vol = common.get_client().post("/volumes/create", data=body)
    common.write(f"{vol['Name']}\n")


@click.command("ls")
@common.filter_option
@common.format_option
@click.option("-q", "--quiet", is_flag=True, help="Only display volume names.")
def ls(filters: tuple[str, ...], format_: str | None, quiet: bool) -> None:
    """List volumes."""
    parsed = common.parse_filters(filters)
    reply = common.get_client().get("/volumes", params={"filters": parsed})
    for warning in reply.get("Warnings") or []:
        common.warn(f"WARNING: {warning}")
    vols = sorted(reply.get("Volumes") or [], key=lambda v: _natural_key(v.get("Name", "")))
    common.print_list([VolumeRow(v) for v in vols], format_, default=VOLUME_TABLE,
                      headers=VOLUME_HEADERS, quiet=quiet, quiet_format="{{.Name}}")


@click.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--format", "format_", metavar="FORMAT", help="Format output using a Go template.")
def inspect(names: tuple[str, ...], format_: str | None) -> None:
    """Display detailed information on one or more volumes."""
    client = common.get_client()
    common.inspect_objects(names, lambda name: client.get(f"/volumes/{_path(name)}"), "volume", format_)


@click.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Force the removal of one or more volumes.")
@click.pass_context
def rm(ctx: click.Context, names: tuple[str, ...], force: bool) -> None:
    """Remove one or more volumes (refused for a volume a container uses)."""
    client = common.get_client()
    failed = False
    for name in names:
        try:
            client.request("DELETE", f"/volumes/{_path(name)}", params={"force": force or None})
        except Exception as exc:  # noqa: BLE001 - reported per volume, as docker does
            if not common.is_daemon_error(exc):
                raise
            common.warn(f"Error response from daemon: {exc}")
            failed = True
            continue
        common.write(f"{name}\n")
    if failed:
        ctx.exit(1)


@click.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@click.option("--filter", "filters", multiple=True, metavar="FILTER",
              help="Provide filter values (e.g. 'label=<label>'); repeatable.")
def prune(force: bool, filters: tuple[str, ...]) -> None:
    """Remove all unused local volumes."""
    common.prune_objects("/volumes/prune", filters, force=force, warning=_PRUNE_WARNING,
                         deleted_key="VolumesDeleted", heading="Deleted Volumes")
