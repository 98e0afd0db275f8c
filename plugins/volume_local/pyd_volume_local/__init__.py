"""pyd's ``local`` volume driver (entry point ``pyd.volume: local``), Docker's default.

Named volumes are directories under ``<data-root>/volumes/<NAME>/_data``; with Docker's
``type``/``device``/``o`` options the volume is a mount (tmpfs, a block device, a bind of a
host directory) made at first use and undone when the last user goes. See README.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pyd.hookspecs import hookimpl

if TYPE_CHECKING:
    from pyd_volume_local.driver import LocalVolumeDriver


@hookimpl
def pyd_volume_init(name: str, home: Path) -> LocalVolumeDriver | None:
    if name != "local":
        return None
    from pyd_volume_local.driver import LocalVolumeDriver

    return LocalVolumeDriver(Path(home))
