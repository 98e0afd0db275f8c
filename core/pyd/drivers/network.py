"""Network driver protocol, modelled on libnetwork's ``driverapi.Driver``.

The core owns networks, endpoints and IPAM; a driver turns them into kernel objects
(bridges, veths, VXLAN devices, NAT rules). Addresses are allocated by the core (through the
IPAM driver) before the driver is called. All methods are synchronous and may block
(netlink); the core calls them from worker threads with deadlines and serialises calls per
network. Every method must be safe to call again after a timeout (idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, Protocol, runtime_checkable


@dataclass
class IPAMData:
    """One address pool assigned to a network."""

    pool: str  # CIDR, e.g. "172.18.0.0/16"
    gateway: str = ""  # CIDR of the gateway, e.g. "172.18.0.1/16"
    ip_range: str = ""


@dataclass
class NetworkContext:
    """What a network driver gets at init: daemon-wide settings and shared services."""

    # Daemon settings relevant to networking: bridge, bip, fixed-cidr, mtu, iptables,
    # ip-forward, icc, default-address-pools, cluster-advertise, ...
    settings: Mapping[str, object] = field(default_factory=dict)
    # The KV store (pyd.drivers.kvstore.KVStore) for global-scope drivers, or None.
    kvstore: object | None = None
    # A prefix for every kernel object the driver names (tests give each daemon its own).
    name_prefix: str = "pyd"


@dataclass
class NetworkCreateRequest:
    network_id: str
    name: str
    options: Mapping[str, object]  # the result of ``parse_options`` for ``-o`` options
    ipv4: list[IPAMData] = field(default_factory=list)
    internal: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    enable_ipv6: bool = False


@dataclass
class EndpointRequest:
    network_id: str
    endpoint_id: str
    address: str  # CIDR of the endpoint's IPv4 address, e.g. "172.18.0.2/16"
    mac_address: str = ""  # empty: the driver chooses (Docker derives it from the IP)
    options: Mapping[str, object] = field(default_factory=dict)


@dataclass
class EndpointInfo:
    mac_address: str


@dataclass
class JoinRequest:
    network_id: str
    endpoint_id: str
    netns_path: str  # the sandbox: a path to bind-mounted netns, e.g. <exec-root>/netns/<id>
    ifname: str = "eth0"  # name the interface must have inside the sandbox


@dataclass
class JoinResult:
    gateway: str = ""  # IPv4 gateway for the default route, empty for none (internal nets)
    mtu: int = 0


@dataclass
class PortBinding:
    """``-p [host_ip:]host_port:container_port/proto``; host_port 0 means choose one."""

    container_port: int
    proto: Literal["tcp", "udp", "sctp"] = "tcp"
    host_ip: str = ""
    host_port: int = 0
    container_ip: str = ""


class NetworkDriver(Protocol):
    name: str
    scope: Literal["local", "global"]

    def parse_options(self, raw: Mapping[str, str]) -> Mapping[str, object]:
        """Validate ``-o`` options of ``network create``; raise ``InvalidOption`` listing the valid keys."""
        ...

    def create_network(self, req: NetworkCreateRequest) -> None:
        """Create the network's kernel objects. Raises ``Conflict`` on clashes (e.g. bridge name)."""
        ...

    def delete_network(self, network_id: str) -> None:
        """Remove everything ``create_network`` made. Missing objects are not an error."""
        ...

    def create_endpoint(self, req: EndpointRequest) -> EndpointInfo:
        """Prepare an endpoint (e.g. a veth pair on the host side)."""
        ...

    def delete_endpoint(self, network_id: str, endpoint_id: str) -> None:
        ...

    def join(self, req: JoinRequest) -> JoinResult:
        """Move the endpoint's interface into the sandbox as ``req.ifname`` and configure it."""
        ...

    def leave(self, network_id: str, endpoint_id: str) -> None:
        ...

    def program_external_connectivity(
        self, network_id: str, endpoint_id: str, ports: list[PortBinding]
    ) -> list[PortBinding]:
        """Publish ``ports``; return them with chosen host ports filled in.

        A port in use raises ``Conflict`` and leaves no rule behind.
        """
        ...

    def revoke_external_connectivity(self, network_id: str, endpoint_id: str) -> None:
        ...


@runtime_checkable
class NetworkRestorer(Protocol):
    """Optional: re-adopt kernel objects after a daemon restart instead of recreating them."""

    def restore_network(self, req: NetworkCreateRequest) -> None:
        ...
