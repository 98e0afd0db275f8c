"""Published ports: ``HostConfig.PortBindings`` / ``-P`` in, Docker's ``Ports`` shapes out.

* ``requested_bindings`` turns ``{"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}``
  (plus ``PublishAllPorts`` with the image's ``ExposedPorts``) into driver ``PortBinding``s.
  ``HostPort`` "" or "0" means any free port; a range ``"8000-8010"`` means the first free
  one in it (checked by binding a probe socket, as dockerd's port allocator does).
* ``inspect_ports`` gives ``NetworkSettings.Ports``: every exposed or published port, with
  ``null`` for one that is exposed only.
* ``list_ports`` gives the ``Ports`` array of ``GET /containers/json``.

Pure except for the range probe.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Iterable, Mapping

from pyd.drivers.network import PortBinding
from pyd.engine.network_records import PortRecord
from pyd.errors import Conflict, InvalidParameter

PROTOCOLS = ("tcp", "udp", "sctp")


def split_port_key(key: str) -> tuple[int, str]:
    """``"80/tcp"`` -> (80, "tcp"); ``"53"`` -> (53, "tcp")."""
    port, _, proto = str(key).partition("/")
    proto = (proto or "tcp").lower()
    if proto not in PROTOCOLS:
        raise InvalidParameter(f'invalid port "{key}": protocol "{proto}" is not tcp, udp or sctp')
    try:
        n = int(port)
    except ValueError:
        raise InvalidParameter(f'invalid port "{key}": "{port}" is not a port number') from None
    if not 1 <= n <= 65535:
        raise InvalidParameter(f'invalid port "{key}": {n} is not between 1 and 65535')
    return n, proto


def _host_port(value: object, key: str) -> tuple[int, int]:
    """A HostPort value -> (first, last); (0, 0) for "any"."""
    text = str(value or "").strip()
    if text in ("", "0"):
        return 0, 0
    lo, sep, hi = text.partition("-")
    try:
        first, last = int(lo), int(hi) if sep else int(lo)
    except ValueError:
        raise InvalidParameter(f'invalid host port "{text}" for {key}: not a port or a range (8000-8010)') from None
    if not (1 <= first <= last <= 65535):
        raise InvalidParameter(f'invalid host port "{text}" for {key}: ports are 1 to 65535')
    return first, last


def _host_ip(value: object, key: str) -> str:
    text = str(value or "").strip()
    if text in ("", "0.0.0.0"):
        return ""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise InvalidParameter(
            f'invalid host IP "{text}" for {key}: pyd publishes on IPv4 addresses (e.g. 127.0.0.1)'
        ) from None


def check_port_bindings(bindings: Mapping[str, Any] | None) -> None:
    """Validate ``PortBindings`` at container create (nothing is reserved yet)."""
    for key, items in (bindings or {}).items():
        split_port_key(key)
        for b in items or []:
            if not isinstance(b, Mapping):
                raise InvalidParameter(f"invalid PortBindings for {key}: expected objects with HostIp and HostPort")
            _host_ip(b.get("HostIp"), key)
            _host_port(b.get("HostPort"), key)


def _free_in_range(proto: str, host_ip: str, first: int, last: int, key: str) -> int:
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    for port in range(first, last + 1):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host_ip or "0.0.0.0", port))
                return port
            except OSError:
                continue
    raise Conflict(f"cannot publish {key}: no free host port in {first}-{last}")


def requested_bindings(
    port_bindings: Mapping[str, Any] | None,
    *,
    publish_all: bool = False,
    exposed_ports: Iterable[str] = (),
) -> list[PortBinding]:
    """The driver bindings for a container start (host port 0: the driver chooses)."""
    out: list[PortBinding] = []
    seen: set[str] = set()
    for key, items in (port_bindings or {}).items():
        port, proto = split_port_key(key)
        seen.add(f"{port}/{proto}")
        for b in items or [{}]:
            host_ip = _host_ip(b.get("HostIp"), key)
            first, last = _host_port(b.get("HostPort"), key)
            host_port = first if first == last else _free_in_range(proto, host_ip, first, last, key)
            out.append(PortBinding(container_port=port, proto=proto, host_ip=host_ip, host_port=host_port))  # type: ignore[arg-type]
    if publish_all:
        for key in exposed_ports:
            port, proto = split_port_key(key)
            if f"{port}/{proto}" not in seen:
                seen.add(f"{port}/{proto}")
                out.append(PortBinding(container_port=port, proto=proto))  # type: ignore[arg-type]
    return out


def to_records(bindings: Iterable[PortBinding]) -> list[PortRecord]:
    return [PortRecord(b.proto, b.container_port, b.host_ip, b.host_port) for b in bindings]


def inspect_ports(published: Iterable[PortRecord], exposed_ports: Iterable[str]) -> dict[str, Any]:
    """``NetworkSettings.Ports``: ``{"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
    "443/tcp": null}``."""
    ports: dict[str, Any] = {}
    for key in exposed_ports:
        port, proto = split_port_key(key)
        ports.setdefault(f"{port}/{proto}", None)
    for p in published:
        entry = {"HostIp": p.host_ip or "0.0.0.0", "HostPort": str(p.host_port)}
        key = f"{p.container_port}/{p.proto}"
        if ports.get(key) is None:
            ports[key] = []
        ports[key].append(entry)
    return ports


def list_ports(published: Iterable[PortRecord], exposed_ports: Iterable[str]) -> list[dict[str, Any]]:
    """``Ports`` of ``GET /containers/json``: published ones with IP/PublicPort, exposed-only
    ones with just PrivatePort/Type."""
    out: list[dict[str, Any]] = []
    done: set[str] = set()
    for p in published:
        out.append({"IP": p.host_ip or "0.0.0.0", "PrivatePort": p.container_port, "PublicPort": p.host_port, "Type": p.proto})
        done.add(f"{p.container_port}/{p.proto}")
    for key in exposed_ports:
        port, proto = split_port_key(key)
        if f"{port}/{proto}" not in done:
            out.append({"PrivatePort": port, "Type": proto})
            done.add(f"{port}/{proto}")
    return out
