"""pyd network driver ``macvlan`` (entry point ``pyd.network: macvlan``).

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
    if name != "macvlan":
        return None
    from pyd_network_macvlan.driver import MacvlanDriver  # pyroute2 loads only when selected

    return MacvlanDriver(home, context)  # type: ignore[return-value]
