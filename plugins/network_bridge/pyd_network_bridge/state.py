"""What the bridge driver remembers about its networks, one JSON file per network in ``home``.

The driver needs it to find its kernel objects again: after a daemon restart
(``restore_network``), for ``leave``/``delete_endpoint`` (which get only IDs), and to remove
exactly an endpoint's published ports. Files are written atomically
(``pyd.drivers.state.JsonRecords``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyd.drivers.state import JsonRecords


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
    # The nftables table holding the network's rules (the name prefix when they were made):
    # a daemon restarted with another prefix moves them instead of leaving the old table.
    table: str = ""

    @property
    def short(self) -> str:
        return self.network_id[:12]

    @classmethod
    def from_json(cls, d: dict) -> NetworkState:
        eps = {k: EndpointState.from_json(v) for k, v in d.get("endpoints", {}).items()}
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "endpoints": eps})


class StateStore:
    """``<home>/networks/<network_id>.json``."""

    def __init__(self, home: Path) -> None:
        self.records = JsonRecords(Path(home) / "networks", owner="network:bridge")

    def load_all(self) -> dict[str, NetworkState]:
        return {st.network_id: st for st in self.records.load_all(NetworkState.from_json)}

    def save(self, st: NetworkState, durable: bool = True) -> None:
        """Replace the network's file atomically. ``durable=False`` skips the fsync (about
        7 ms here): used for endpoint changes, which are cheap to lose in a crash because
        every kernel name is derived from the endpoint ID and the core keeps its own record."""
        self.records.save(st.network_id, asdict(st), durable=durable)

    def delete(self, network_id: str) -> None:
        self.records.delete(network_id)
