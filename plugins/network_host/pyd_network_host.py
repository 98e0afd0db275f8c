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

from pathlib import Path

from pyd.drivers.network import JoinRequest, JoinResult, NetworkContext, SingleNetworkDriver
from pyd.hookspecs import hookimpl

NAME = "host"


class HostDriver(SingleNetworkDriver):
    name = NAME
    scope = "local"
    shares_host_netns = True

    def join(self, req: JoinRequest) -> JoinResult:
        return JoinResult()


@hookimpl
def pyd_network_init(name: str, home: Path, context: NetworkContext) -> HostDriver | None:
    return HostDriver() if name == NAME else None
