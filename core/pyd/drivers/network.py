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

Global scope (``scope = "global"``, e.g. ``overlay``): the core keeps the network's record in
the cluster store (``NetworkContext.kvstore``) and calls ``create_network`` on every host that
learns of it, ``delete_network`` on every host when it is removed (and at daemon shutdown, as
for local networks). Optional attributes and methods the core looks for:

* ``needs_gateway_bridge = True``: the driver gives containers no way out (no gateway in
  ``JoinResult``); the core then also joins them to the host's ``<prefix>_gwbridge`` bridge
  network (Docker's ``docker_gwbridge``), where their default route and published ports go.
* ``forget_network(network_id)``: called once, on the host where the network was removed,
  after its ``delete_network``: free cluster-wide state (e.g. the VNI). ``delete_network``
  alone must keep it, since it also runs at shutdown and on the other hosts.
* ``cleanup()``: called at daemon shutdown (stop threads; kernel objects stay as they are).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import os
import re
import secrets
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Protocol, TypeVar, runtime_checkable

from pyd.drivers.options import check_options
from pyd.errors import Conflict, InvalidParameter, NotFound

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

# Netlink helpers (pyroute2) are in ``pyd.drivers.netlink``; on-disk state in
# ``pyd.drivers.state``.

# -- names and addresses ---------------------------------------------------------------------

IFNAMSIZ = 15  # the longest interface name the kernel takes
MAX_NAME_PREFIX = 8  # NetworkContext.name_prefix: leaves room for a kind letter and a short ID
_NAME_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def check_name_prefix(driver: str, prefix: str) -> str:
    """Return ``prefix`` (``NetworkContext.name_prefix``) if it fits in interface names: 1 to
    ``MAX_NAME_PREFIX`` letters, digits, '_' or '-', starting with a letter. Otherwise raise
    ``InvalidParameter`` naming the ``driver``. Pure."""
    if not _NAME_PREFIX.match(prefix) or len(prefix) > MAX_NAME_PREFIX:
        raise InvalidParameter(
            f'network driver "{driver}": name prefix "{prefix}" must be 1 to {MAX_NAME_PREFIX} '
            "letters, digits, '_' or '-', starting with a letter"
        )
    return prefix


def short_id(ident: str, room: int) -> str:
    """The first ``room`` letters and digits of ``ident`` (an ID), for kernel object names.

    >>> short_id("ab-12cd", 4)
    'ab12'
    """
    return re.sub(r"[^A-Za-z0-9]", "", ident)[:room]


def endpoint_alias(endpoint_id: str) -> str:
    """The ``ifalias`` a driver gives an endpoint's interface, so it finds the interface again
    whatever its name (``pyd.drivers.netlink.find_by_alias``)."""
    return f"pyd-endpoint:{endpoint_id}"


def mac_from_ipv4(address: str) -> str:
    """Docker's MAC for an IPv4 endpoint: ``02:42`` + the four address bytes.

    >>> mac_from_ipv4("172.17.0.2/16")
    '02:42:ac:11:00:02'
    """
    ip = ipaddress.IPv4Interface(address).ip
    return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)


def random_mac() -> str:
    """A random locally administered MAC with Docker's ``02:42`` prefix. Docker gives each
    bridge a fixed random MAC, so the bridge's MAC does not change (and break ARP caches) as
    ports come and go."""
    return "02:42:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(4))


def endpoint_mac(req: EndpointRequest) -> str:
    """The endpoint's MAC in lower case: ``req.mac_address``, else ``mac_from_ipv4``."""
    return (req.mac_address or mac_from_ipv4(req.address)).lower()


def gateway_cidrs(req: NetworkCreateRequest, what: str) -> list[str]:
    """One gateway CIDR per pool of ``req.ipv4`` (e.g. ``"172.18.0.1/16"``): the pool's
    gateway, else its first host address. ``what`` names the network in errors (e.g.
    ``'bridge network "web"'``); raises ``InvalidParameter`` for a pool that is not an IPv4
    subnet with a host address. Pure."""
    out = []
    for data in req.ipv4:
        try:
            pool = ipaddress.IPv4Network(data.pool, strict=False)
            gw = ipaddress.IPv4Interface(data.gateway).ip if data.gateway else next(iter(pool.hosts()))
        except (ValueError, StopIteration):
            raise InvalidParameter(
                f"{what}: pool {data.pool!r} with gateway {data.gateway!r} "
                "is not an IPv4 subnet with a host address"
            ) from None
        out.append(f"{gw}/{pool.prefixlen}")
    return out


def check_endpoint_address(what: str, address: str, gateways: list[str]) -> ipaddress.IPv4Interface:
    """Parse an endpoint's ``address`` (IPv4 CIDR) and check that it lies in one of the
    subnets of ``gateways`` (CIDRs as ``gateway_cidrs`` makes). ``what`` names the network in
    errors; raises ``InvalidParameter`` naming the address and the subnets. Pure."""
    try:
        iface = ipaddress.IPv4Interface(address)
    except ValueError:
        raise InvalidParameter(f'{what}: endpoint address "{address}" is not an IPv4 CIDR') from None
    if not any(iface.ip in ipaddress.IPv4Interface(g).network for g in gateways):
        subnets = ", ".join(str(ipaddress.IPv4Interface(g).network) for g in gateways)
        raise InvalidParameter(f"{what}: address {iface.ip} is not in the network's subnets ({subnets})")
    return iface


def gateway_for(address: str, gateways: list[str]) -> str:
    """The gateway IP (no prefix) of the subnet in ``gateways`` that holds ``address``
    (CIDR), or "" if none does. Pure."""
    ip = ipaddress.IPv4Interface(address).ip
    for g in gateways:
        gw = ipaddress.IPv4Interface(g)
        if ip in gw.network:
            return str(gw.ip)
    return ""


N = TypeVar("N")
E = TypeVar("E")
E_co = TypeVar("E_co", covariant=True)


class DriverNetwork(Protocol[E_co]):
    """What ``known_endpoint`` needs of a driver's record of a network."""

    @property
    def name(self) -> str: ...

    @property
    def endpoints(self) -> Mapping[str, E_co]: ...


def known_network(networks: Mapping[str, N], network_id: str, driver: str) -> N:
    """``networks[network_id]`` (a driver's records by network ID); raises ``NotFound`` naming
    the ``driver`` and the ID if there is none."""
    net = networks.get(network_id)
    if net is None:
        raise NotFound(f'network driver "{driver}": no network with ID {network_id}')
    return net


def known_endpoint(net: DriverNetwork[E], endpoint_id: str, driver: str) -> E:
    """``net.endpoints[endpoint_id]``; raises ``NotFound`` naming the ``driver``'s network and
    the endpoint ID if there is none."""
    ep = net.endpoints.get(endpoint_id)
    if ep is None:
        raise NotFound(f'{driver} network "{net.name}": no endpoint with ID {endpoint_id}')
    return ep


def check_sandbox(what: str, netns_path: str) -> None:
    """Check ``JoinRequest.netns_path`` for a driver that needs a sandbox: "" raises
    ``InvalidParameter``, a path that does not exist raises ``NotFound`` (the container went
    away meanwhile). ``what`` names the network in errors."""
    if not netns_path:
        raise InvalidParameter(f"{what}: join needs a sandbox (netns path)")
    if not os.path.exists(netns_path):
        raise NotFound(f"{what}: sandbox {netns_path} does not exist")


# -- network namespaces ----------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MNT_DETACH = 0x2
_NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: its CLONE_NEW* type
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def link_up(name: str = "lo") -> None:
    """Set interface ``name`` up in the calling thread's network namespace: two ioctls, no
    netlink session (pyroute2's costs a thread and a few ms). Run it inside ``netns_call``
    for a sandbox. Idempotent; ``OSError`` (``ENODEV``) if there is no such interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = _IFREQ.unpack(fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, _IFREQ.pack(name.encode(), 0)))[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, _IFREQ.pack(name.encode(), flags | _IFF_UP))


def is_netns(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is (a bind mount of) a network namespace; False if it is missing or
    anything else. Never raises."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == _CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def create_netns(path: str | os.PathLike[str]) -> bool:
    """Make a new network namespace with ``lo`` up and bind-mount it on ``path`` (its parent
    directory is made, mode 0700). True if it made one; False if ``path`` already is a
    network namespace (idempotent).

    The namespace is made in a short-lived helper thread (``unshare(CLONE_NEWNET)`` moves
    only the calling thread), so the daemon never forks and none of its threads changes
    namespace; the bind mount keeps the namespace alive after the thread ends. Raises
    ``OSError`` naming the failed step; a failure leaves no file or mount behind.
    """
    path = os.fspath(path)
    if is_netns(path):
        return False
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444))
    box: dict[str, BaseException] = {}

    def run() -> None:
        try:
            libc = _libc()
            if libc.unshare(_CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
            link_up("lo")
            if libc.mount(b"/proc/thread-self/ns/net", os.fsencode(path), None, _MS_BIND, None) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"bind-mounting a network namespace on {path}: {os.strerror(err)}")
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"netns-create:{os.path.basename(path)}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise box["error"]
    return True


def remove_netns(path: str | os.PathLike[str]) -> None:
    """Unmount (lazily) and delete the namespace file ``path``. The kernel frees the namespace,
    and every interface in it, once no process or open file holds it any more. A missing
    ``path`` is not an error (idempotent); ``OSError`` if the unmount fails otherwise."""
    path = os.fspath(path)
    libc = _libc()
    for _ in range(8):  # stacked mounts after a crash and a retried create: unmount them all
        if libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more) / gone
                break
            raise OSError(err, f"unmounting network namespace {path}: {os.strerror(err)}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass




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


# -- method sets drivers may inherit -----------------------------------------------------------


class NoExternalConnectivity:
    """Mixin for a driver that publishes no ports (containers are reachable at their own
    addresses, or share the host's ports): ``program_external_connectivity`` publishes
    nothing and returns ``[]``, ``revoke_external_connectivity`` does nothing."""

    def program_external_connectivity(
        self, network_id: str, endpoint_id: str, ports: list[PortBinding]
    ) -> list[PortBinding]:
        return []

    def revoke_external_connectivity(self, network_id: str, endpoint_id: str) -> None:
        pass


class SingleNetworkDriver(NoExternalConnectivity):
    """Base for a driver with at most one network per daemon and nothing per endpoint, as
    Docker's ``host`` and ``null``: no ``-o`` options (``InvalidOption`` for any), a second
    network with another ID raises ``Conflict``, creating the same one again (or restoring
    it) is a no-op, and endpoints, ``leave`` and ports are no-ops. Subclasses set ``name``
    and ``scope`` and write ``join``."""

    name: str

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._network: tuple[str, str] | None = None  # (id, name) of the one network

    def parse_options(self, raw: Mapping[str, str]) -> Mapping[str, object]:
        return check_options(raw, {}, flag="-o", driver=self.name, kind="network")

    def create_network(self, req: NetworkCreateRequest) -> None:
        self.parse_options({k: str(v) for k, v in req.options.items()})
        with self._lock:
            if self._network is not None and self._network[0] != req.network_id:
                raise Conflict(
                    f'only one instance of the {self.name} network is allowed '
                    f'(network "{self._network[1]}" exists)'
                )
            self._network = (req.network_id, req.name)

    def restore_network(self, req: NetworkCreateRequest) -> None:
        self.create_network(req)

    def delete_network(self, network_id: str) -> None:
        with self._lock:
            if self._network is not None and self._network[0] == network_id:
                self._network = None

    def create_endpoint(self, req: EndpointRequest) -> EndpointInfo:
        return EndpointInfo(mac_address="")

    def delete_endpoint(self, network_id: str, endpoint_id: str) -> None:
        pass

    def leave(self, network_id: str, endpoint_id: str) -> None:
        pass
