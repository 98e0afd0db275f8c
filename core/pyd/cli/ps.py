"""``pyd ps`` (``container ls``), ``pyd inspect``, ``pyd top``, ``pyd stats --no-stream``."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from pyd.cli import common

PS_DEFAULT = "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.CreatedAt}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}"
PS_HEADERS = {"ID": "CONTAINER ID", "CreatedAt": "CREATED", "RunningFor": "CREATED"}


def _ellipsis(text: str, width: int) -> str:
    """docker's ``Ellipsis``: cut to ``width`` runes, the last one replaced by ``…``."""
    if len(text) <= width:
        return text
    return text[: width - 1] + "…"


def format_ports(ports: list[dict[str, Any]]) -> str:
    out = []
    for p in ports or []:
        proto = p.get("Type", "tcp")
        if p.get("PublicPort"):
            ip = p.get("IP") or "0.0.0.0"
            out.append(f"{ip}:{p['PublicPort']}->{p.get('PrivatePort')}/{proto}")
        else:
            out.append(f"{p.get('PrivatePort')}/{proto}")
    return ", ".join(out)


class ContainerRow:
    """What ``--format`` templates see (docker's field names)."""

    def __init__(self, c: dict[str, Any], no_trunc: bool, now: float) -> None:
        self._c = c
        self._trunc = not no_trunc
        self._now = now

    @property
    def ID(self) -> str:  # noqa: N802 - docker's template names
        return common.short_id(self._c["Id"], not self._trunc)

    @property
    def Image(self) -> str:  # noqa: N802
        image = self._c.get("Image", "")
        if self._trunc and image.startswith("sha256:"):
            return common.short_id(image)
        return image

    @property
    def Command(self) -> str:  # noqa: N802
        cmd = self._c.get("Command", "")
        if self._trunc:
            cmd = _ellipsis(cmd, 20)
        return json.dumps(cmd, ensure_ascii=False)

    @property
    def CreatedAt(self) -> str:  # noqa: N802
        return self.RunningFor

    @property
    def RunningFor(self) -> str:  # noqa: N802
        return common.time_ago(self._c.get("Created", 0), self._now)

    @property
    def Ports(self) -> str:  # noqa: N802
        return format_ports(self._c.get("Ports") or [])

    @property
    def State(self) -> str:  # noqa: N802
        return self._c.get("State", "")

    @property
    def Status(self) -> str:  # noqa: N802
        return self._c.get("Status", "")

    @property
    def Size(self) -> str:  # noqa: N802
        rw = self._c.get("SizeRw")
        if rw is None:
            return ""
        return f"{common.human_size(rw)} (virtual {common.human_size(self._c.get('SizeRootFs') or 0)})"

    @property
    def Names(self) -> str:  # noqa: N802
        return ",".join(n.lstrip("/") for n in self._c.get("Names") or [])

    @property
    def Labels(self) -> str:  # noqa: N802
        return ",".join(f"{k}={v}" for k, v in (self._c.get("Labels") or {}).items())

    def Label(self, name: str) -> str:  # noqa: N802
        return (self._c.get("Labels") or {}).get(name, "")

    @property
    def Mounts(self) -> str:  # noqa: N802
        return ",".join(m.get("Name") or m.get("Source", "") for m in self._c.get("Mounts") or [])

    @property
    def Networks(self) -> str:  # noqa: N802
        return ",".join(sorted(((self._c.get("NetworkSettings") or {}).get("Networks") or {}).keys()))

    @property
    def LocalVolumes(self) -> str:  # noqa: N802
        return "0"


@click.command("ps")
@click.option("-a", "--all", "all_", is_flag=True, help="Show all containers (default shows just running).")
@click.option("-q", "--quiet", is_flag=True, help="Only display container IDs.")
@click.option("-l", "--latest", is_flag=True, help="Show the latest created container (includes all states).")
@click.option("-n", "--last", type=int, default=-1, help="Show n last created containers (includes all states).")
@click.option("-s", "--size", is_flag=True, help="Display total file sizes.")
@common.filter_option
@common.format_option
@common.no_trunc_option
def ps(all_: bool, quiet: bool, latest: bool, last: int, size: bool, filters: tuple[str, ...], format_: str | None, no_trunc: bool) -> None:
    """List containers."""
    params: dict[str, Any] = {}
    if all_:
        params["all"] = 1
    if latest:
        last = 1
    if last > 0:
        params["limit"] = last
    if size and not quiet:
        params["size"] = 1
    flt = common.parse_filters(filters)
    if flt:
        params["filters"] = flt
    rows = common.get_client().get("/containers/json", params=params or None)
    now = time.time()
    default = PS_DEFAULT + ("\t{{.Size}}" if size else "")
    headers = dict(PS_HEADERS)
    if size:
        headers["Size"] = "SIZE"
    common.print_list([ContainerRow(r, no_trunc, now) for r in rows], format_, default=default, headers=headers, quiet=quiet)


@click.command("inspect")
@click.option("-f", "--format", "format_", default=None, help="Format output using a Go template.")
@click.option("-s", "--size", is_flag=True, help="Display total file sizes if the type is container.")
@click.option("--type", "type_", default="", help="Return JSON for the specified type (container, image).")
@click.argument("names", nargs=-1, required=True)
def inspect(format_: str | None, size: bool, type_: str, names: tuple[str, ...]) -> None:
    """Return low-level information on pyd objects."""
    from pyd.errors import NotFound

    client = common.get_client()
    found: list[Any] = []
    missing: list[str] = []
    for name in names:
        doc = None
        if type_ in ("", "container"):
            try:
                doc = client.get(f"/containers/{name}/json", params={"size": 1} if size else None)
            except NotFound:
                doc = None
        if doc is None and type_ in ("", "image"):
            from pyd.client import quote_path

            try:
                doc = client.get(f"/images/{quote_path(name)}/json")
            except NotFound:
                doc = None
        if doc is None:
            missing.append(name)
        else:
            found.append(doc)
    _print_docs(found, format_)
    for name in missing:
        kind = "container" if type_ == "container" else "object"
        common.warn(f"Error: No such {kind}: {name}")
    if missing:
        raise click.exceptions.Exit(1)


def _print_docs(docs: list[Any], format_: str | None) -> None:
    if format_:
        for d in docs:
            common.print_one(format_, d)
        return
    # docker prints the list indented by 4 spaces, with Go's escaping of <, > and &
    text = json.dumps(docs, indent=4, ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    common.write(text + "\n")


@click.command("top")
@click.argument("container")
@click.argument("ps_args", nargs=-1)
def top(container: str, ps_args: tuple[str, ...]) -> None:
    """Display the running processes of a container."""
    params = {"ps_args": " ".join(ps_args)} if ps_args else None
    reply = common.get_client().get(f"/containers/{container}/top", params=params)
    common.print_table(reply.get("Processes") or [], reply.get("Titles") or [])


@click.command("stats")
@click.option("-a", "--all", "all_", is_flag=True, help="Show all containers (default shows just running).")
@click.option("--no-stream", is_flag=True, help="Disable streaming stats and only pull the first result.")
@common.format_option
@common.no_trunc_option
@click.argument("containers", nargs=-1)
def stats(all_: bool, no_stream: bool, format_: str | None, no_trunc: bool, containers: tuple[str, ...]) -> None:
    """Display a live stream of container(s) resource usage statistics."""
    client = common.get_client()
    if not containers:
        rows = client.get("/containers/json", params={"all": 1} if all_ else None)
        containers = tuple(r["Id"] for r in rows)
    while True:
        samples = [client.get(f"/containers/{c}/stats", params={"stream": 0}) for c in containers]
        common.print_list([StatsRow(s, no_trunc) for s in samples], format_, default=STATS_DEFAULT, headers=STATS_HEADERS)
        if no_stream:
            return
        common.write("\033[2J\033[H")


STATS_DEFAULT = (
    "table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}"
)
STATS_HEADERS = {"ID": "CONTAINER ID", "CPUPerc": "CPU %", "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %",
                 "NetIO": "NET I/O", "BlockIO": "BLOCK I/O", "PIDs": "PIDS", "Name": "NAME"}


class StatsRow:
    def __init__(self, s: dict[str, Any], no_trunc: bool) -> None:
        self._s = s
        self._no_trunc = no_trunc

    @property
    def ID(self) -> str:  # noqa: N802
        return common.short_id(self._s.get("id", ""), self._no_trunc)

    Container = ID

    @property
    def Name(self) -> str:  # noqa: N802
        return str(self._s.get("name", "")).lstrip("/")

    def _mem(self) -> tuple[float, float]:
        m = self._s.get("memory_stats") or {}
        usage = float(m.get("usage") or 0)
        stats = m.get("stats") or {}
        # docker subtracts the page cache (v1: total_inactive_file, v2: inactive_file)
        usage -= float(stats.get("total_inactive_file", stats.get("inactive_file", 0)) or 0)
        return max(usage, 0.0), float(m.get("limit") or 0)

    @property
    def CPUPerc(self) -> str:  # noqa: N802
        cpu, pre = self._s.get("cpu_stats") or {}, self._s.get("precpu_stats") or {}
        d_cpu = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (pre.get("cpu_usage") or {}).get("total_usage", 0)
        d_sys = (cpu.get("system_cpu_usage") or 0) - (pre.get("system_cpu_usage") or 0)
        ncpu = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
        pct = d_cpu / d_sys * ncpu * 100.0 if d_sys > 0 and d_cpu > 0 else 0.0
        return f"{pct:.2f}%"

    @property
    def MemUsage(self) -> str:  # noqa: N802
        usage, limit = self._mem()
        return f"{common.bytes_size(usage)} / {common.bytes_size(limit)}"

    @property
    def MemPerc(self) -> str:  # noqa: N802
        usage, limit = self._mem()
        return f"{(usage / limit * 100.0) if limit else 0.0:.2f}%"

    @property
    def NetIO(self) -> str:  # noqa: N802
        rx = sum(n.get("rx_bytes", 0) for n in (self._s.get("networks") or {}).values())
        tx = sum(n.get("tx_bytes", 0) for n in (self._s.get("networks") or {}).values())
        return f"{common.human_size(rx)} / {common.human_size(tx)}"

    @property
    def BlockIO(self) -> str:  # noqa: N802
        read = write = 0
        for e in (self._s.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
            op = str(e.get("op", "")).lower()
            if op == "read":
                read += e.get("value", 0)
            elif op == "write":
                write += e.get("value", 0)
        return f"{common.human_size(read)} / {common.human_size(write)}"

    @property
    def PIDs(self) -> str:  # noqa: N802
        return str((self._s.get("pids_stats") or {}).get("current", 0))
