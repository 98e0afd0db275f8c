"""pyd network driver ``overlay`` (entry point ``pyd.network: overlay``).

Multi-host networks: VXLAN between hosts, coordinated through the cluster KV store. See
``driver.py`` for what it builds and ``README.md`` for options and settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pyd.hookspecs import hookimpl

if TYPE_CHECKING:
    from pyd.drivers.network import NetworkContext, NetworkDriver


@hookimpl
def pyd_network_init(name: str, home: Path, context: NetworkContext) -> NetworkDriver | None:
    if name != "overlay":
        return None
    from pyd_network_overlay.driver import OverlayDriver  # pyroute2 loads only when selected

    return OverlayDriver(home, context)  # type: ignore[return-value]
