"""What the network service persists, and where.

Layout under ``<data-root>/network/files/`` (``<data-root>/network/<driver>`` is each
driver's own home, so the service keeps to ``files``, as libnetwork keeps its store there):

* ``networks/<id>.json``   one ``NetworkRecord`` per network;
* ``endpoints/<id>.json``  one ``EndpointRecord`` per live endpoint (a container joined to a
  network): its address, so IPAM allocations are known after a restart and released once;
* ``containers/<id>.json`` one ``ContainerNet`` per container the service knows: the networks
  it is configured for (Docker's ``NetworkSettings.Networks``), kept while it is stopped.

Every write is atomic (temp, rename) and durable (fsync) when it records configuration; what
only describes a container's current run (its sandbox, joined endpoints without an address,
published ports) is not fsynced: a power cut ends that run anyway, and the next start sweeps
what is left. A record that cannot be read is skipped with a warning rather than stopping
the daemon.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

from pyd.engine.store import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass
class PoolRecord:
    pool_id: str
    subnet: str  # CIDR
    gateway: str = ""  # CIDR of the allocated gateway, "" when none
    ip_range: str = ""
    # What the user asked for (IPAM.Config shows it); "" when chosen automatically.
    requested_subnet: str = ""
    requested_gateway: str = ""
    aux_addresses: dict[str, str] = field(default_factory=dict)


@dataclass
class NetworkRecord:
    id: str
    name: str
    driver: str
    created: str  # RFC 3339 with nanoseconds, as Docker shows it
    scope: str = "local"
    ipam_driver: str = "default"
    ipam_options: dict[str, str] | None = None
    pools: list[PoolRecord] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)  # raw -o strings
    labels: dict[str, str] = field(default_factory=dict)
    internal: bool = False
    attachable: bool = False
    ingress: bool = False
    enable_ipv6: bool = False
    predefined: bool = False  # bridge/host/none made by the daemon: never removed by users
    # pyd's bookkeeping (e.g. the daemon settings the default bridge was made from)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NetworkRecord:
        d = _known(cls, d)
        d["pools"] = [PoolRecord(**_known(PoolRecord, p)) for p in d.get("pools") or []]
        return cls(**d)


@dataclass
class PortRecord:
    proto: str
    container_port: int
    host_ip: str = ""
    host_port: int = 0


@dataclass
class EndpointRecord:
    id: str
    network_id: str
    container_id: str
    ifname: str = ""  # eth0, eth1, ... ("" for the host network)
    address: str = ""  # CIDR, "" for networks without IPAM (host, none)
    gateway: str = ""  # IPv4 of the default route this endpoint gave ("" if none)
    mac: str = ""
    pool_id: str = ""
    sandbox: str = ""  # netns path, "" when the container shares the host's namespace
    aliases: list[str] = field(default_factory=list)
    ports: list[PortRecord] = field(default_factory=list)
    joined: bool = False  # join succeeded (leave is needed)

    def to_json(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EndpointRecord:
        d = _known(cls, d)
        d["ports"] = [PortRecord(**_known(PortRecord, p)) for p in d.get("ports") or []]
        return cls(**d)

    @property
    def ip(self) -> str:
        return self.address.split("/", 1)[0] if self.address else ""

    @property
    def prefixlen(self) -> int:
        return int(self.address.split("/", 1)[1]) if "/" in self.address else 0


@dataclass
class Attachment:
    """A container's configuration for one network (``EndpointSettings`` as the API sends it)."""

    network_id: str
    name: str = ""  # the network's name when attached (for messages if it was removed)
    aliases: list[str] = field(default_factory=list)
    ipv4: str = ""  # IPAMConfig.IPv4Address: the address the user asked for
    links: list[str] = field(default_factory=list)
    driver_opts: dict[str, str] = field(default_factory=dict)
    mac: str = ""


@dataclass
class ContainerNet:
    id: str
    name: str
    network_mode: str  # default, bridge, none, host, container:X or a network name
    hostname: str = ""
    attachments: list[Attachment] = field(default_factory=list)  # in join order
    # While running: the sandbox, its ID, the endpoint per network, published ports.
    sandbox: str = ""
    sandbox_id: str = ""
    endpoints: dict[str, str] = field(default_factory=dict)  # network id -> endpoint id
    dns: list[str] = field(default_factory=list)  # upstream servers of the embedded DNS
    port_bindings: dict[str, Any] = field(default_factory=dict)  # HostConfig.PortBindings
    publish_all: bool = False
    exposed_ports: list[str] = field(default_factory=list)  # "80/tcp", ...
    links: list[str] = field(default_factory=list)  # HostConfig.Links ("name:alias")

    def to_json(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ContainerNet:
        d = _known(cls, d)
        d["attachments"] = [Attachment(**_known(Attachment, a)) for a in d.get("attachments") or []]
        return cls(**d)

    def attachment(self, network_id: str) -> Attachment | None:
        return next((a for a in self.attachments if a.network_id == network_id), None)


def _plain(obj: Any) -> Any:
    """``dataclasses.asdict`` for these records without its deep copies (~40 % less CPU:
    records are saved on the event loop at every container start and stop)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """Only the keys ``cls`` has (records written by a newer pyd may carry more)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


class RecordDir(Generic[R]):
    """A directory of ``<id>.json`` records of one kind."""

    def __init__(self, path: Path, kind: type[R]) -> None:
        self.path = path
        self.kind = kind
        path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _file(self, ident: str) -> Path:
        if not ident or "/" in ident or ident.startswith("."):
            raise ValueError(f"invalid record id {ident!r}")
        return self.path / f"{ident}.json"

    def save(self, ident: str, record: R, *, durable: bool = True) -> None:
        """``durable=False`` for runtime state only (see ``atomic_write``): no fsync."""
        atomic_write_json(self._file(ident), record.to_json(), durable=durable)  # type: ignore[attr-defined]

    def writer(self, ident: str, record: R) -> Callable[[], None]:
        """``save`` in two steps: the record is serialized now (where it is changed), the
        returned function writes it durably later, in any thread."""
        path, data = self._file(ident), json.dumps(record.to_json(), separators=(",", ":")).encode()  # type: ignore[attr-defined]
        return lambda: atomic_write(path, data)

    def delete(self, ident: str) -> None:
        try:
            os.unlink(self._file(ident))
        except FileNotFoundError:
            pass

    def load_all(self) -> Iterator[R]:
        for entry in sorted(self.path.glob("*.json")):
            try:
                data = json.loads(entry.read_bytes())
                yield self.kind.from_json(data)  # type: ignore[attr-defined]
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("skipping unreadable network record %s: %s", entry, exc)
