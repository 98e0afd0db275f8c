"""The ``none`` log driver (a core plugin, see ``pyd.registry.CORE_PLUGINS``).

Docker's ``--log-driver none``: every line is discarded. It accepts no options and cannot read
back (it is deliberately not a ``LogReader``); the core answers ``pyd logs`` on such a container
with Docker's "configured logging driver does not support reading".
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from pyd.drivers.log import LogContext, LogMessage
from pyd.drivers.options import check_options
from pyd.hookspecs import hookimpl

NAME = "none"


class _NoOptions:
    """The parsed (empty) options of the none driver."""

    def __repr__(self) -> str:
        return "NoneLogOptions()"


class _DiscardWriter:
    def log(self, msg: LogMessage) -> None:
        pass

    def close(self) -> None:
        pass


class NoneLogDriver:
    """A ``pyd.drivers.log.LogDriver`` that throws every line away."""

    name = NAME

    def __init__(self, home: Path) -> None:
        self.home = home

    def parse_options(self, raw: Mapping[str, str]) -> object:
        # An empty parser table: any key fails with 'valid keys: (none)'.
        check_options(raw, {}, flag="--log-opt", driver=NAME, kind="log")
        return _NoOptions()

    def open(self, ctx: LogContext, options: object) -> _DiscardWriter:
        return _DiscardWriter()


@hookimpl
def pyd_log_init(name: str, home: Path) -> NoneLogDriver | None:
    if name != NAME:
        return None
    return NoneLogDriver(home)
