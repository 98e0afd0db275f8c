"""What the bridge driver remembers about its networks, one JSON file per network in ``home``.

The driver needs it to find its kernel objects again: after a daemon restart
(``restore_network``), for ``leave``/``delete_endpoint`` (which get only IDs), and to remove
exactly an endpoint's published ports. Files are written atomically (temp, fsync, rename).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class PublishedPort:
    proto: str
    host_ip: str  # "" = every local address
    host_port: int
    container_ip: str
    container_port: int


@dataclass
class EndpointState:
    endpoint_id: str
    address: str  # CIDR
    mac: str
    host_if: str  # veth end on the bridge (exists while joined; its peer is in the sandbox)
    netns: str = ""  # sandbox path while joined
    ifname: str = ""  # name inside the sandbox while joined
    ports: list[PublishedPort] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict) -> EndpointState:
        ports = [PublishedPort(**p) for p in d.get("ports", [])]
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "ports": ports})


@dataclass
class NetworkState:
    network_id: str
    name: str
    bridge: str
    created_bridge: bool  # False: the bridge existed before (adopted); never delete it
    mtu: int
    icc: bool
    masquerade: bool
    host_ip: str
    internal: bool
    gateways: list[str]  # CIDRs on the bridge, e.g. "172.18.0.1/16"
    endpoints: dict[str, EndpointState] = field(default_factory=dict)

    @property
    def short(self) -> str:
        return self.network_id[:12]

    @classmethod
    def from_json(cls, d: dict) -> NetworkState:
        eps = {k: EndpointState.from_json(v) for k, v in d.get("endpoints", {}).items()}
        return cls(**{**d, "endpoints": eps})


class StateStore:
    """``<home>/networks/<network_id>.json``."""

    def __init__(self, home: Path) -> None:
        self.dir = Path(home) / "networks"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, network_id: str) -> Path:
        if not network_id or "/" in network_id or network_id.startswith("."):
            raise ValueError(f"bad network id {network_id!r}")
        return self.dir / f"{network_id}.json"

    def load_all(self) -> dict[str, NetworkState]:
        out: dict[str, NetworkState] = {}
        for p in sorted(self.dir.glob("*.json")):
            try:
                st = NetworkState.from_json(json.loads(p.read_text()))
            except (ValueError, TypeError, KeyError) as exc:
                log.error("ignoring unreadable network state %s: %s", p, exc, extra={"driver": "network:bridge"})
                continue
            out[st.network_id] = st
        return out

    def save(self, st: NetworkState, durable: bool = True) -> None:
        """Replace the network's file atomically. ``durable=False`` skips the fsync (about
        7 ms here): used for endpoint changes, which are cheap to lose in a crash because
        every kernel name is derived from the endpoint ID and the core keeps its own record."""
        path = self._path(st.network_id)
        data = json.dumps(asdict(st), indent=1, sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def delete(self, network_id: str) -> None:
        try:
            self._path(network_id).unlink()
        except FileNotFoundError:
            pass
