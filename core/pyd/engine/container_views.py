"""What ``inspect`` and ``ps`` show of a container, and ``ps``'s filters. Pure functions.

List endpoints read the engine's records only (no driver calls), so a hung driver never
freezes ``ps`` (moby#33994).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping

from pyd.engine.container_record import Container
from pyd.engine.container_state import format_time
from pyd.engine.network_views import empty_settings
from pyd.engine.network_views import labels_match as _labels_match  # moby's MatchKVList
from pyd.errors import InvalidParameter

LIST_FILTERS = frozenset(
    {"status", "name", "label", "ancestor", "id", "exited", "before", "since", "volume", "network",
     "health", "is-task", "publish", "expose"}
)
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def command_text(c: Container) -> str:
    """``ps``'s COMMAND: the path and the args, an arg with a space in single quotes (moby)."""
    if not c.args:
        return c.path
    return c.path + " " + " ".join(f"'{a}'" if " " in a else a for a in c.args)


def network_settings(c: Container) -> dict[str, Any]:
    mode = c.host_config.get("NetworkMode") or "default"
    sandbox = c.pyd.get("SandboxKey", "")
    networks: dict[str, Any] = {}
    if mode in ("host", "none"):
        networks[mode] = {
            "IPAMConfig": None, "Links": None, "Aliases": None, "NetworkID": "", "EndpointID": "",
            "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0, "MacAddress": "", "DriverOpts": None,
        }
    doc = empty_settings()
    doc["SandboxKey"] = sandbox
    doc["Networks"] = networks
    return doc


def mounts(c: Container) -> list[dict[str, Any]]:
    """Docker's ``Mounts``: the mount points of the container's plan (``--tmpfs`` is not one)."""
    from pyd.engine.container_volumes import mount_views

    return mount_views(c)


def inspect(c: Container, *, graph: Mapping[str, Any], size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Docker's ``GET /containers/{id}/json`` document."""
    doc: dict[str, Any] = {
        "Id": c.id,
        "Created": format_time(c.created),
        "Path": c.path,
        "Args": list(c.args),
        "State": c.state.to_docker(),
        "Image": c.image_id,
        "ResolvConfPath": c.resolv_conf_path,
        "HostnamePath": c.hostname_path,
        "HostsPath": c.hosts_path,
        "LogPath": c.log_path,
        "Name": "/" + c.name,
        "RestartCount": c.restart_count,
        "Driver": c.driver,
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": list(c.exec_ids) or None,
        "HostConfig": c.host_config,
        "GraphDriver": dict(graph),
        "Mounts": mounts(c),
        "Config": c.config,
        "NetworkSettings": network_settings(c),
    }
    if size is not None:
        doc["SizeRw"], doc["SizeRootFs"] = size
    if c.pyd.get("LogDropped"):
        doc["PydLogDropped"] = c.pyd["LogDropped"]  # pyd extra: messages dropped in non-blocking mode
    return doc


def list_entry(c: Container, size: tuple[int, int] | None = None, now_ns: int | None = None) -> dict[str, Any]:
    """One element of ``GET /containers/json``."""
    mode = c.host_config.get("NetworkMode") or "default"
    ns = network_settings(c)
    entry: dict[str, Any] = {
        "Id": c.id,
        "Names": ["/" + c.name],
        "Image": c.image_ref,
        "ImageID": c.image_id,
        "Command": command_text(c),
        "Created": c.created // 1_000_000_000,
        "Ports": [],
        "Labels": dict(c.config.get("Labels") or {}),
        "State": c.state.status,
        "Status": c.state.text(now_ns),
        "HostConfig": {"NetworkMode": mode},
        "NetworkSettings": {"Networks": ns["Networks"]},
        "Mounts": mounts(c),
    }
    if size is not None:
        entry["SizeRw"], entry["SizeRootFs"] = size
    return entry


# -- filters ----------------------------------------------------------------------------------


def check_filters(filters: Mapping[str, list[str]]) -> None:
    for key, values in filters.items():
        if key not in LIST_FILTERS:
            raise InvalidParameter(f"invalid filter '{key}'")
        if key == "status":
            for v in values:
                if v not in STATUSES:
                    raise InvalidParameter(f"invalid filter 'status={v}'")
        if key == "exited":
            for v in values:
                if not re.fullmatch(r"-?\d+", v):
                    raise InvalidParameter(f"invalid filter 'exited={v}'")


def _regex_any(values: Iterable[str], text: str) -> bool:
    for v in values:
        try:
            if re.search(v, text):
                return True
        except re.error:
            if v in text:
                return True
    return False


def matches(
    c: Container,
    filters: Mapping[str, list[str]],
    *,
    image_matches: Callable[[str, Container], bool],
    created_before: int | None = None,
    created_after: int | None = None,
) -> bool:
    """Every filter key must match; within a key any value may (labels: all)."""
    for key, values in filters.items():
        if not values:
            continue
        if key == "status" and c.state.status not in values:
            return False
        if key == "name" and not _regex_any(values, "/" + c.name):
            return False
        if key == "id" and not _regex_any([f"^{re.escape(v)}" if re.fullmatch(r"[0-9a-f]+", v) else v for v in values], c.id):
            return False
        if key == "label" and not _labels_match(values, c.config.get("Labels") or {}):
            return False
        if key == "exited":
            if c.state.status != "exited" or str(c.state.exit_code) not in values:
                return False
        if key == "ancestor" and not any(image_matches(v, c) for v in values):
            return False
        if key == "network":
            mode = c.host_config.get("NetworkMode") or "default"
            if mode not in values and not (mode == "default" and "bridge" in values):
                return False
        if key == "volume" and not any(v in (m["Destination"], m["Source"], m.get("Name")) for v in values
                                       for m in mounts(c)):
            return False  # a volume's name, or a mount's source or destination
        if key in ("publish", "expose", "health") and values:
            return False  # nothing pyd runs has these yet
        if key == "is-task" and any(v == "true" for v in values):
            return False
    if created_before is not None and c.created >= created_before:
        return False
    if created_after is not None and c.created <= created_after:
        return False
    return True
