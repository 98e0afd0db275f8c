"""Hook implementations of the native exec driver (the module behind ``pyd.exec: native``)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from pyd.hookspecs import hookimpl


@hookimpl
def pyd_exec_init(name: str, home: Path, options: Mapping[str, str]) -> object | None:
    if name != "native":
        return None
    from pyd_exec_native.driver import NativeExecDriver, parse_options

    return NativeExecDriver(Path(home), parse_options(options))
