"""``pyd version``, ``pyd info`` and ``pyd events`` (docker's output shapes)."""

from __future__ import annotations

import os
import sys
from typing import Any, Iterator

import click

from pyd.cli import common

# Go's GOARCH spelling of machine names, as docker prints OS/Arch.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386"}


# -- version -------------------------------------------------------------------------------------


def _client_version(api_version: str) -> dict[str, Any]:
    import pyd

    machine = os.uname().machine
    return {
        "Platform": {"Name": ""},
        "Version": pyd.__version__,
        "ApiVersion": api_version,
        "DefaultAPIVersion": pyd.API_VERSION,
        "PythonVersion": ".".join(str(p) for p in sys.version_info[:3]),
        "Os": sys.platform,
        "Arch": _GOARCH.get(machine, machine),
    }


def _version_text(client: dict[str, Any], server: dict[str, Any] | None) -> str:
    from pyd.format import tabwrite

    lines = ["Client:"]
    api = client["ApiVersion"]
    if api != client["DefaultAPIVersion"]:
        api += f" (downgraded from {client['DefaultAPIVersion']})"
    lines += [
        f" Version:\t{client['Version']}",
        f" API version:\t{api}",
        f" Python version:\t{client['PythonVersion']}",
        f" OS/Arch:\t{client['Os']}/{client['Arch']}",
    ]
    if server is not None:
        lines += ["", f"Server: {(server.get('Platform') or {}).get('Name') or ''}".rstrip()]
        components = server.get("Components") or [
            {"Name": "Engine", "Version": server.get("Version", ""), "Details": server}
        ]
        for comp in components:
            details = comp.get("Details") or {}
            lines.append(f" {comp.get('Name', '')}:")
            lines.append(f"  Version:\t{comp.get('Version', '')}")
            if comp.get("Name") == "Engine":
                api_line = details.get("ApiVersion") or server.get("ApiVersion", "")
                min_api = details.get("MinAPIVersion") or server.get("MinAPIVersion")
                if min_api:
                    api_line += f" (minimum version {min_api})"
                lines.append(f"  API version:\t{api_line}")
                runtime = details.get("GoVersion", "")
                if runtime.startswith("python"):
                    lines.append(f"  Python version:\t{runtime[len('python'):]}")
                elif runtime:
                    lines.append(f"  Go version:\t{runtime}")
                for key, label in (("GitCommit", "Git commit"), ("BuildTime", "Built")):
                    if details.get(key):
                        lines.append(f"  {label}:\t{details[key]}")
                lines.append(f"  OS/Arch:\t{details.get('Os', '')}/{details.get('Arch', '')}")
                lines.append(f"  Experimental:\t{details.get('Experimental', 'false')}")
            else:
                for key in sorted(details):
                    lines.append(f"  {key}:\t{details[key]}")
    # docker aligns values with a tabwriter of min width 20, padding 1
    return tabwrite("\n".join(lines) + "\n", minwidth=20, padding=1)


@click.command("version")
@common.format_option
def version(format_: str | None) -> None:
    """Show the pyd version information."""
    from pyd import API_VERSION

    client = common.get_client()
    server: dict[str, Any] | None = None
    error: Exception | None = None
    try:
        server = client.get("/version")
        api_version = client.api_version
    except Exception as exc:  # noqa: BLE001 - the client part is printed first, as docker does
        error = exc
        api_version = API_VERSION
    info = _client_version(api_version)
    if format_:
        common.print_one(format_, {"Client": info, "Server": server})
    else:
        common.write(_version_text(info, server))
    if error is not None:
        raise error


# -- info ----------------------------------------------------------------------------------------


def _client_info(state: common.CliState) -> dict[str, Any]:
    import pyd

    return {"Version": pyd.__version__, "Debug": state.debug, "Host": state.resolved_host}


def _security_options(options: list[str]) -> Iterator[str]:
    # "name=seccomp,profile=default" -> "  seccomp" / "   Profile: default"
    for opt in options:
        pairs = dict(p.partition("=")[::2] for p in opt.split(","))
        name = pairs.pop("name", opt)
        yield f"  {name}"
        for key, value in pairs.items():
            yield f"   {key[:1].upper()}{key[1:]}: {value}"


def _info_text(client: dict[str, Any], info: dict[str, Any] | None) -> str:
    def yes(v: Any) -> str:
        return "true" if v else "false"

    out = ["Client:", f" Version:    {client['Version']}", f" Debug Mode: {yes(client['Debug'])}"]
    if info is None:
        return "\n".join(out) + "\n"
    i = info.get
    out += [
        "",
        "Server:",
        f" Containers: {i('Containers', 0)}",
        f"  Running: {i('ContainersRunning', 0)}",
        f"  Paused: {i('ContainersPaused', 0)}",
        f"  Stopped: {i('ContainersStopped', 0)}",
        f" Images: {i('Images', 0)}",
        f" Server Version: {i('ServerVersion', '')}",
        f" Storage Driver: {i('Driver', '')}",
    ]
    for pair in i("DriverStatus") or []:
        if len(pair) >= 2:
            out.append(f"  {pair[0]}: {pair[1]}")
    out.append(f" Logging Driver: {i('LoggingDriver', '')}")
    out.append(f" Cgroup Driver: {i('CgroupDriver', '')}")
    if i("CgroupVersion"):
        out.append(f" Cgroup Version: {i('CgroupVersion')}")
    plugins = dict(i("Plugins") or {})
    out.append(" Plugins:")
    for key in ("Volume", "Network", "Authorization", "Log"):
        names = plugins.pop(key, None) or []
        if names or key != "Authorization":
            out.append(f"  {key}: {' '.join(names)}".rstrip())
    for key, names in plugins.items():  # pyd's extra kinds: Storage, Exec, KVStore, ...
        out.append(f"  {key}: {' '.join(names or [])}".rstrip())
    if i("SecurityOptions"):
        out.append(" Security Options:")
        out += _security_options(i("SecurityOptions"))
    out += [
        f" Kernel Version: {i('KernelVersion', '')}",
        f" Operating System: {i('OperatingSystem', '')}",
        f" OSType: {i('OSType', '')}",
        f" Architecture: {i('Architecture', '')}",
        f" CPUs: {i('NCPU', 0)}",
        f" Total Memory: {common.bytes_size(i('MemTotal') or 0)}",
        f" Name: {i('Name', '')}",
        f" ID: {i('ID', '')}",
        f" Pyd Root Dir: {i('DockerRootDir', '')}",
        f" Debug Mode: {yes(i('Debug'))}",
    ]
    for key, label in (("HttpProxy", "HTTP Proxy"), ("HttpsProxy", "HTTPS Proxy"),
                       ("NoProxy", "No Proxy")):
        if i(key):
            out.append(f" {label}: {i(key)}")
    out.append(" Labels:")
    out += [f"  {label}" for label in i("Labels") or []]
    if i("ClusterStore"):
        out.append(f" Cluster Store: {i('ClusterStore')}")
    if i("ClusterAdvertise"):
        out.append(f" Cluster Advertise: {i('ClusterAdvertise')}")
    out.append(f" Live Restore Enabled: {yes(i('LiveRestoreEnabled'))}")
    return "\n".join(out) + "\n"


@click.command("info")
@common.format_option
@click.pass_context
def info(ctx: click.Context, format_: str | None) -> None:
    """Display system-wide information."""
    state = common.get_state(ctx)
    client_info = _client_info(state)
    server: dict[str, Any] | None = None
    error: Exception | None = None
    try:
        server = common.get_client(ctx).get("/info")
    except Exception as exc:  # noqa: BLE001 - the client part is printed first, as docker does
        error = exc
    if format_:
        common.print_one(format_, {**(server or {}), "ClientInfo": client_info})
    else:
        common.write(_info_text(client_info, server))
        for warning in (server or {}).get("Warnings") or []:
            common.warn(warning)
    if error is not None:
        raise error


# -- events --------------------------------------------------------------------------------------

# Go field names of an event (events.Message) -> the JSON keys on the wire.
_EVENT_FIELDS = {"Status": "status", "ID": "id", "From": "from", "Scope": "scope",
                 "Time": "time", "TimeNano": "timeNano"}


def format_event(event: dict[str, Any]) -> str:
    """docker's default event line:
    ``2026-11-28T06:59:48.500237729Z container create 77c7... (image=busybox, name=x)``."""
    parts = []
    nano = event.get("timeNano") or 0
    if nano:
        parts.append(common.local_time(nano // 1_000_000_000, nano % 1_000_000_000) + " ")
    elif event.get("time"):
        parts.append(common.local_time(int(event["time"])) + " ")
    actor = event.get("Actor") or {}
    parts.append(f"{event.get('Type', '')} {event.get('Action', '')} {actor.get('ID', '')}")
    attrs = actor.get("Attributes") or {}
    if attrs:
        parts.append(" (" + ", ".join(f"{k}={attrs[k]}" for k in sorted(attrs)) + ")")
    return "".join(parts) + "\n"


@click.command("events")
@click.option("--since", metavar="TIME", help="Show events created since this time.")
@click.option("--until", metavar="TIME", help="Stream events until this time.")
@common.filter_option
@common.format_option
def events(since: str | None, until: str | None, filters: tuple[str, ...],
           format_: str | None) -> None:
    """Get real time events from the daemon.

    TIME is a Unix timestamp, a date or date-time (2026-01-02, 2026-01-02T15:04:05Z; local
    time without a zone), or a duration before now (10m, 1h30m). Without --until the stream
    runs until interrupted.
    """
    params = {
        "since": common.parse_timestamp(since) if since else None,
        "until": common.parse_timestamp(until) if until else None,
        "filters": common.parse_filters(filters),
    }
    tmpl = None
    if format_:
        from pyd.format import JSONView, Template

        text = "{{json .}}" if format_.strip() == "json" else format_
        tmpl = Template(text)
    client = common.get_client()
    with client.stream("GET", "/events", params=params) as resp:
        for event in resp.iter_json():
            if tmpl is None:
                common.write(format_event(event))
            else:
                common.write(tmpl.render(JSONView(event, _EVENT_FIELDS)) + "\n")
