"""pyd network driver ``null`` (entry point ``pyd.network: null``), Docker's driver of the
``none`` network: the container gets its own network namespace with only ``lo``.

``join`` brings ``lo`` up in the sandbox (a new namespace has it down) and adds nothing else;
there is no gateway, no address and no published port (``program_external_connectivity``
returns ``[]``). As in Docker there is one null network per daemon: a second is a
``Conflict``.
"""

from __future__ import annotations

from pathlib import Path

from pyd.drivers.network import JoinRequest, JoinResult, NetworkContext, SingleNetworkDriver, link_up, netns_call
from pyd.errors import InvalidParameter, NotFound
from pyd.hookspecs import hookimpl

NAME = "null"


class NullDriver(SingleNetworkDriver):
    name = NAME
    scope = "local"

    def join(self, req: JoinRequest) -> JoinResult:
        if not req.netns_path:
            raise InvalidParameter('network driver "null": join needs a sandbox (netns path)')
        try:
            # ioctls, not a netlink session: this is on the path of every container start.
            netns_call(req.netns_path, link_up)
        except FileNotFoundError:
            raise NotFound(f'network driver "null": sandbox {req.netns_path} does not exist') from None
        return JoinResult()


@hookimpl
def pyd_network_init(name: str, home: Path, context: NetworkContext) -> NullDriver | None:
    return NullDriver() if name == NAME else None
