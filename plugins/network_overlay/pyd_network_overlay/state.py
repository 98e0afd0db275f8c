"""What the driver remembers per network, one JSON file each in its home, so that a
restarted daemon finds its namespaces and endpoints again without the cluster store."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyd.drivers.state import JsonRecords


@dataclass
class Endpoint:
    endpoint_id: str
    address: str  # CIDR
    mac: str
    veth: str  # the end on br0 inside the overlay namespace
    netns: str = ""  # the sandbox while joined
    ifname: str = ""


@dataclass
class Network:
    network_id: str
    name: str
    vni: int
    mtu: int
    gateways: list[str]  # CIDRs on br0
    netns: str  # <exec-root>/overlay/<id>
    endpoints: dict[str, Endpoint] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> Network:
        eps = {k: Endpoint(**v) for k, v in d.get("endpoints", {}).items()}
        return cls(**{**d, "endpoints": eps})


class StateStore:
    """``<home>/networks/<network_id>.json``."""

    def __init__(self, home: Path) -> None:
        self.records = JsonRecords(Path(home) / "networks", owner="network:overlay")

    def load_all(self) -> dict[str, Network]:
        return {net.network_id: net for net in self.records.load_all(Network.from_json)}

    def save(self, net: Network) -> None:
        # Not fsynced: a lost file costs nothing a restart cannot redo (restore_network makes
        # the network again from the cluster store, and the core keeps its endpoints).
        self.records.save(net.network_id, asdict(net), durable=False)

    def remove(self, network_id: str) -> None:
        self.records.delete(network_id)
