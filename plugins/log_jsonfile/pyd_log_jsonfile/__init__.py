"""pyd's ``json-file`` log driver (entry point ``pyd.log: json-file``), Docker's default.

One JSON object per line in ``<log_dir>/<container id>-json.log``, in Docker's exact format
(``jsonlog``), with Docker's ``--log-opt`` keys (``options``) and rotation, and the
``LogReader`` ability across rotated and compressed files (``files``).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Iterator, Mapping

from pyd.drivers.log import LogContext, LogMessage, ReadConfig
from pyd.errors import InvalidParameter
from pyd.hookspecs import hookimpl

from .files import JsonFileWriter, Shared, read_log
from .jsonlog import encode_attrs
from .options import NAME, JsonFileOptions, parse_options

__all__ = ["JsonFileDriver", "JsonFileOptions", "pyd_log_init"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class JsonFileDriver:
    """``pyd.drivers.log.LogDriver`` + ``LogReader``."""

    name = NAME

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self._lock = threading.Lock()
        self._shared: dict[Path, Shared] = {}  # per log path; lives as long as the driver

    def parse_options(self, raw: Mapping[str, str]) -> JsonFileOptions:
        return parse_options(raw)

    def log_path(self, ctx: LogContext) -> Path:
        """``<log_dir>/<id>-json.log``; without a ``log_dir``, ``<home>/<id>/<id>-json.log``."""
        if not _SAFE_ID.match(ctx.container_id):
            raise InvalidParameter(f'log driver "{NAME}": invalid container ID "{ctx.container_id}"')
        base = Path(ctx.log_dir) if ctx.log_dir else self.home / ctx.container_id
        return base / f"{ctx.container_id}-json.log"

    def _shared_for(self, path: Path) -> Shared:
        with self._lock:
            return self._shared.setdefault(path, Shared())

    @staticmethod
    def _check(options: object) -> JsonFileOptions:
        if not isinstance(options, JsonFileOptions):
            raise TypeError(f"{NAME}: options must come from parse_options, got {type(options).__name__}")
        return options

    def open(self, ctx: LogContext, options: object) -> JsonFileWriter:
        opts = self._check(options)
        attrs = opts.attributes(ctx)
        path = self.log_path(ctx)
        return JsonFileWriter(path, opts, encode_attrs(attrs) if attrs else "", self._shared_for(path))

    def read(self, ctx: LogContext, options: object, cfg: ReadConfig) -> Iterator[LogMessage]:
        self._check(options)
        path = self.log_path(ctx)
        return read_log(path, self._shared_for(path), cfg)


@hookimpl
def pyd_log_init(name: str, home: Path) -> JsonFileDriver | None:
    if name != NAME:
        return None
    return JsonFileDriver(home)
