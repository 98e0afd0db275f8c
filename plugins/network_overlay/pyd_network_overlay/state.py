"""What the driver remembers per network, one JSON file each in its home, so that a
restarted daemon finds its namespaces and endpoints again without the cluster store."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


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
    def __init__(self, home: Path) -> None:
        self.dir = Path(home) / "networks"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def load_all(self) -> dict[str, Network]:
        out: dict[str, Network] = {}
        for p in sorted(self.dir.glob("*.json")):
            try:
                net = Network.from_json(json.loads(p.read_text()))
                out[net.network_id] = net
            except (ValueError, TypeError, KeyError) as exc:
                log.error("ignoring unreadable network state %s: %s", p, exc, extra={"driver": "network:overlay"})
        return out

    def save(self, net: Network) -> None:
        path = self.dir / f"{net.network_id}.json"
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(net), f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def remove(self, network_id: str) -> None:
        try:
            (self.dir / f"{network_id}.json").unlink()
        except FileNotFoundError:
            pass
