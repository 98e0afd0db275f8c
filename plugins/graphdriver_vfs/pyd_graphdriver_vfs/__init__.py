"""pyd's vfs storage driver (entry point ``vfs`` in ``pyd.graphdriver``).

Every layer is a full copy of its parent (reflinked where the filesystem can), so it works on
any filesystem and needs no mounts. The driver is in ``driver.py``, the tree copy in ``copy.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from pyd.hookspecs import hookimpl

from .driver import VfsDriver, backing_filesystem
from .options import NAME, parse_layer_options, parse_options

__all__ = ["pyd_graphdriver_init", "parse_options", "parse_layer_options"]


@hookimpl
def pyd_graphdriver_init(name: str, home: Path, options: Mapping[str, str]) -> VfsDriver | None:
    if name != NAME:
        return None
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    parse_options(options, backing_filesystem(str(home)))
    return VfsDriver(home)
