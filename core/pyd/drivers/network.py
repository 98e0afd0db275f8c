"""Network driver protocol, modelled on libnetwork's ``driverapi.Driver``.

The core owns networks, endpoints and IPAM; a driver turns them into kernel objects
(bridges, veths, VXLAN devices, NAT rules). Addresses are allocated by the core (through the
IPAM driver) before the driver is called. All methods are synchronous and may block
(netlink, ``nft``); the core calls them from worker threads with deadlines and serialises
calls per network. Every method must be safe to call again after a timeout (idempotent), and
every delete/leave/revoke must succeed when the object is already gone.

Life of an endpoint, as the core drives it::

    create_network ─ create_endpoint ─ join ─ program_external_connectivity
                                              (container runs)
    revoke_external_connectivity ─ leave ─ delete_endpoint ─ ... ─ delete_network

* ``create_endpoint`` prepares the endpoint's interface on the host side (for ``bridge`` a
  veth pair with one end on the bridge) and returns its MAC address.
* ``join`` moves the endpoint's interface into the sandbox (``JoinRequest.netns_path``, a
  bind-mounted network namespace made by the core), names it ``JoinRequest.ifname``, sets
  its address and MAC, brings it and ``lo`` up, and adds a default route via the gateway if
  the network has one and the sandbox has no default route yet. A driver whose containers
  share the host's namespace sets the class attribute ``shares_host_netns = True``: the core
  then makes no sandbox, and ``join`` receives ``netns_path=""`` and changes nothing.
* ``leave`` takes the interface out of the sandbox (or deletes it); the endpoint stays
  known to the driver until ``delete_endpoint`` and may be joined again.
* ``delete_network`` removes every kernel object and firewall rule of the network,
  including those of endpoints the core failed to delete.

Kernel object names (interfaces, nftables tables) start with ``NetworkContext.name_prefix``
so that several daemons (tests) never collide and leftovers are easy to find.

A driver may keep state in its ``home`` (``<data-root>/network/<name>``) to find its kernel
objects again after a daemon restart (``NetworkRestorer``).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")


@dataclass
class IPAMData:
    """One address pool assigned to a network."""

    pool: str  # CIDR, e.g. "172.18.0.0/16"
    gateway: str = ""  # CIDR of the gateway, e.g. "172.18.0.1/16"
    ip_range: str = ""


@dataclass
class NetworkContext:
    """What a network driver gets at init: daemon-wide settings and shared services."""

    # Daemon settings relevant to networking, by their daemon.json names: bridge, bip,
    # fixed-cidr, mtu, iptables, ip-forward, ip-masq, icc, ip, default-address-pools,
    # cluster-advertise, ... Each driver documents the keys it reads.
    settings: Mapping[str, object] = field(default_factory=dict)
    # The KV store (pyd.drivers.kvstore.KVStore) for global-scope drivers, or None.
    kvstore: object | None = None
    # A prefix for every kernel object the driver names (tests give each daemon its own).
    # At most 8 characters, so that "<prefix>" + a short ID fits IFNAMSIZ (15).
    name_prefix: str = "pyd"


@dataclass
class NetworkCreateRequest:
    network_id: str
    name: str
    # The result of ``parse_options`` for the ``-o`` options. Drivers also accept the raw
    # string values here (the core may persist raw options and pass them again on restore).
    options: Mapping[str, object]
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
    # The sandbox: a path to a bind-mounted netns, e.g. <exec-root>/netns/<id>; "" for
    # drivers with ``shares_host_netns = True``.
    netns_path: str
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
        """Validate ``-o`` options of ``network create``; raise ``InvalidOption`` naming the
        key and listing the valid keys. Pure: creates nothing."""
        ...

    def create_network(self, req: NetworkCreateRequest) -> None:
        """Create the network's kernel objects. Raises ``Conflict`` on clashes (e.g. bridge
        name), ``InvalidParameter`` for unusable input (e.g. a missing parent interface),
        ``NotSupported`` when the kernel lacks a feature. A failure leaves nothing behind."""
        ...

    def delete_network(self, network_id: str) -> None:
        """Remove everything ``create_network`` made, and what remains of its endpoints.
        Missing objects (or an unknown network) are not an error."""
        ...

    def create_endpoint(self, req: EndpointRequest) -> EndpointInfo:
        """Prepare an endpoint (e.g. a veth pair on the host side). ``NotFound`` for an
        unknown network; ``InvalidParameter`` for an address outside the network's pools."""
        ...

    def delete_endpoint(self, network_id: str, endpoint_id: str) -> None:
        """Remove the endpoint's interfaces (and published ports). Unknown: no-op."""
        ...

    def join(self, req: JoinRequest) -> JoinResult:
        """Move the endpoint's interface into the sandbox as ``req.ifname`` and configure it
        (see the module docstring). ``Conflict`` if ``req.ifname`` is taken there by an
        interface that is not this endpoint's."""
        ...

    def leave(self, network_id: str, endpoint_id: str) -> None:
        """Take the endpoint's interface out of its sandbox. Not joined or gone: no-op."""
        ...

    def program_external_connectivity(
        self, network_id: str, endpoint_id: str, ports: list[PortBinding]
    ) -> list[PortBinding]:
        """Publish ``ports``; return them with chosen host ports and the container IP filled in.

        A host port in use (by a process or another container) raises ``Conflict`` and
        leaves no rule behind. Calling it again replaces the endpoint's earlier bindings.
        """
        ...

    def revoke_external_connectivity(self, network_id: str, endpoint_id: str) -> None:
        """Remove exactly the endpoint's published ports. None published: no-op."""
        ...


@runtime_checkable
class NetworkRestorer(Protocol):
    """Optional: re-adopt kernel objects after a daemon restart instead of recreating them.

    Called once per existing network at daemon start, before any endpoint call, with the
    request the network was created with. Missing objects are recreated; objects of the
    network's known endpoints (interfaces in running containers, published ports) are kept.
    """

    def restore_network(self, req: NetworkCreateRequest) -> None:
        ...


# --------------------------------------------------------------------------------------------
# Helpers for drivers (stdlib only)
# --------------------------------------------------------------------------------------------


def mac_from_ipv4(address: str) -> str:
    """Docker's MAC for an IPv4 endpoint: ``02:42`` + the four address bytes.

    >>> mac_from_ipv4("172.17.0.2/16")
    '02:42:ac:11:00:02'
    """
    ip = ipaddress.IPv4Interface(address).ip
    return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)


_CLONE_NEWNET = 0x40000000


def netns_call(path: str, fn: Callable[[], T]) -> T:
    """Run ``fn()`` in a new thread that has entered the network namespace at ``path``.

    Sockets ``fn`` opens (netlink, TCP, ...) belong to that namespace for their whole life,
    even when used later from another thread. Only the helper thread switches namespaces,
    so the calling process never forks (pyroute2's ``netns=`` mode forks a child, which a
    multi-threaded daemon must not do). Exceptions of ``fn`` are re-raised here;
    ``FileNotFoundError`` if ``path`` does not exist, ``OSError`` if it is not a netns.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    box: dict[str, object] = {}

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({path}): {os.strerror(err)}")
            try:
                box["result"] = fn()
            finally:
                # Go back before the thread ends; it is about to exit either way.
                libc.setns(own, _CLONE_NEWNET)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc
        finally:
            os.close(own)

    try:
        thread = threading.Thread(target=run, name=f"netns:{path}", daemon=True)
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
