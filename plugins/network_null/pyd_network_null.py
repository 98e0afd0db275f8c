"""pyd network driver ``null`` (entry point ``pyd.network: null``), Docker's driver of the
``none`` network: the container gets its own network namespace with only ``lo``.

``join`` brings ``lo`` up in the sandbox (a new namespace has it down) and adds nothing else;
there is no gateway, no address and no published port (``program_external_connectivity``
returns ``[]``). As in Docker there is one null network per daemon: a second is a
``Conflict``.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import threading
from pathlib import Path
from typing import Mapping

from pyd.drivers.network import (
    EndpointInfo,
    EndpointRequest,
    JoinRequest,
    JoinResult,
    NetworkContext,
    NetworkCreateRequest,
    PortBinding,
    netns_call,
)
from pyd.drivers.options import check_options
from pyd.errors import Conflict, InvalidParameter, NotFound
from pyd.hookspecs import hookimpl

NAME = "null"


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags


def _lo_up() -> None:
    # Two ioctls instead of a netlink session: pyroute2's costs a thread and a few ms per join,
    # on the path of every container start.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = _IFREQ.unpack(fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0)))[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))


class NullDriver:
    name = NAME
    scope = "local"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._network: tuple[str, str] | None = None

    def parse_options(self, raw: Mapping[str, str]) -> Mapping[str, object]:
        return check_options(raw, {}, flag="-o", driver=NAME, kind="network")

    def create_network(self, req: NetworkCreateRequest) -> None:
        self.parse_options({k: str(v) for k, v in req.options.items()})
        with self._lock:
            if self._network is not None and self._network[0] != req.network_id:
                raise Conflict(
                    f'only one instance of the null network is allowed (network "{self._network[1]}" exists)'
                )
            self._network = (req.network_id, req.name)

    restore_network = create_network

    def delete_network(self, network_id: str) -> None:
        with self._lock:
            if self._network is not None and self._network[0] == network_id:
                self._network = None

    def create_endpoint(self, req: EndpointRequest) -> EndpointInfo:
        return EndpointInfo(mac_address="")

    def delete_endpoint(self, network_id: str, endpoint_id: str) -> None:
        pass

    def join(self, req: JoinRequest) -> JoinResult:
        if not req.netns_path:
            raise InvalidParameter('network driver "null": join needs a sandbox (netns path)')
        try:
            netns_call(req.netns_path, _lo_up)
        except FileNotFoundError:
            raise NotFound(f'network driver "null": sandbox {req.netns_path} does not exist') from None
        return JoinResult()

    def leave(self, network_id: str, endpoint_id: str) -> None:
        pass

    def program_external_connectivity(
        self, network_id: str, endpoint_id: str, ports: list[PortBinding]
    ) -> list[PortBinding]:
        return []

    def revoke_external_connectivity(self, network_id: str, endpoint_id: str) -> None:
        pass


@hookimpl
def pyd_network_init(name: str, home: Path, context: NetworkContext) -> NullDriver | None:
    return NullDriver() if name == NAME else None
