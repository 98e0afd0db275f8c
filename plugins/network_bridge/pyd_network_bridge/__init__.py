"""pyd network driver ``bridge`` (entry point ``pyd.network: bridge``).

See ``driver.py`` for what it builds and ``README.md`` for the options.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pyd.hookspecs import hookimpl

if TYPE_CHECKING:
    from pyd.drivers.network import NetworkContext, NetworkDriver


@hookimpl
def pyd_network_init(name: str, home: Path, context: NetworkContext) -> NetworkDriver | None:
    if name != "bridge":
        return None
    from pyd_network_bridge.driver import BridgeDriver  # pyroute2 loads only when selected

    return BridgeDriver(home, context)  # type: ignore[return-value]
