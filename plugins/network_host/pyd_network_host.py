"""pyd network driver ``host`` (entry point ``pyd.network: host``).

Containers on the host network share the daemon's network namespace: they see the host's
interfaces and bind the host's ports directly. Contract with the core (see
``pyd.drivers.network``): the driver sets ``shares_host_netns = True``, so the core makes no
sandbox for such a container and calls ``join`` with ``netns_path=""``; ``join`` changes
nothing and returns no gateway. Published ports mean nothing here (Docker discards them with
a warning), so ``program_external_connectivity`` publishes none and returns ``[]``. As in
Docker there is one host network per daemon: a second is a ``Conflict``.
"""

from __future__ import annotations

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
)
from pyd.drivers.options import check_options
from pyd.errors import Conflict
from pyd.hookspecs import hookimpl

NAME = "host"


class HostDriver:
    name = NAME
    scope = "local"
    shares_host_netns = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._network: tuple[str, str] | None = None  # (id, name) of the one host network

    def parse_options(self, raw: Mapping[str, str]) -> Mapping[str, object]:
        return check_options(raw, {}, flag="-o", driver=NAME, kind="network")

    def create_network(self, req: NetworkCreateRequest) -> None:
        self.parse_options({k: str(v) for k, v in req.options.items()})
        with self._lock:
            if self._network is not None and self._network[0] != req.network_id:
                raise Conflict(
                    f'only one instance of the host network is allowed (network "{self._network[1]}" exists)'
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
def pyd_network_init(name: str, home: Path, context: NetworkContext) -> HostDriver | None:
    return HostDriver() if name == NAME else None
