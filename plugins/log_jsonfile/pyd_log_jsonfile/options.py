"""``--log-opt`` keys of the json-file driver: parsed and checked in one place.

Docker's keys: ``max-size``, ``max-file``, ``compress``, ``labels``, ``labels-regex``, ``env``,
``env-regex``, ``tag``. Unlike dockerd, combinations that would be ignored are errors
(``max-file`` without ``max-size``, ``compress`` without ``max-file`` > 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from pyd.drivers.log import LogContext
from pyd.drivers.options import check_options, parse_bool, parse_positive_int, parse_size
from pyd.errors import InvalidOption

NAME = "json-file"
UNLIMITED = -1

# The fields a ``tag`` template may use, as Docker's ``{{.Name}}`` etc.
_TAG_FIELDS = ("ID", "FullID", "Name", "ImageName", "DaemonName")
_TAG_PART = re.compile(r"\{\{(.*?)\}\}")
_TAG_FIELD = re.compile(r"^\s*\.(\w+)\s*$")


def _max_size(value: str) -> int:
    if value.strip() == "-1":
        return UNLIMITED
    size = parse_size(value)
    if size <= 0:
        raise ValueError("must be a positive size (e.g. 10m) or -1 for unlimited")
    return size


def _names(value: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in value.split(",") if n.strip())


def _regex(value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"is not a regular expression ({exc})") from None


def _tag(value: str) -> str:
    for m in _TAG_PART.finditer(value):
        field = _TAG_FIELD.match(m.group(1))
        if field is None or field.group(1) not in _TAG_FIELDS:
            raise ValueError(
                f"uses {m.group()}; a tag may use " + ", ".join("{{.%s}}" % f for f in _TAG_FIELDS)
            )
    return value


PARSERS = {
    "max-size": _max_size,
    "max-file": parse_positive_int,
    "compress": parse_bool,
    "labels": _names,
    "labels-regex": _regex,
    "env": _names,
    "env-regex": _regex,
    "tag": _tag,
}
VALID_KEYS = ", ".join(sorted(PARSERS))


@dataclass(frozen=True)
class JsonFileOptions:
    max_size: int = UNLIMITED  # bytes; -1: never rotate
    max_file: int = 1  # files kept in all, the current one included
    compress: bool = False
    labels: tuple[str, ...] = ()
    labels_regex: re.Pattern[str] | None = None
    env: tuple[str, ...] = ()
    env_regex: re.Pattern[str] | None = None
    tag: str = ""

    def attributes(self, ctx: LogContext) -> dict[str, str]:
        """The extra attributes written with every line (Docker's ``attrs``)."""
        attrs: dict[str, str] = {}
        for key, value in ctx.labels.items():
            if key in self.labels or (self.labels_regex and self.labels_regex.search(key)):
                attrs[key] = value
        for item in ctx.env:
            key, sep, value = item.partition("=")
            if sep and (key in self.env or (self.env_regex and self.env_regex.search(key))):
                attrs[key] = value
        if self.tag:
            attrs["tag"] = render_tag(self.tag, ctx)
        return attrs


def render_tag(template: str, ctx: LogContext) -> str:
    values = {
        "ID": ctx.container_id[:12],
        "FullID": ctx.container_id,
        "Name": ctx.container_name.lstrip("/"),
        "ImageName": ctx.image,
        "DaemonName": "pyd",
    }

    def sub(m: re.Match[str]) -> str:
        field = _TAG_FIELD.match(m.group(1))
        assert field is not None  # checked by parse_options
        return values[field.group(1)]

    return _TAG_PART.sub(sub, template)


def _error(text: str) -> InvalidOption:
    return InvalidOption(f'invalid --log-opt for log driver "{NAME}": {text}; valid keys: {VALID_KEYS}')


def parse_options(raw: Mapping[str, str]) -> JsonFileOptions:
    """Check every key and value, and the combinations; pure."""
    opts = check_options(raw, PARSERS, flag="--log-opt", driver=NAME, kind="log")
    max_size = opts.get("max-size", UNLIMITED)
    max_file = opts.get("max-file", 1)
    compress = opts.get("compress", False)
    if "max-file" in opts and max_size == UNLIMITED:
        raise _error(f'max-file="{raw["max-file"]}" needs max-size (files rotate when they reach it)')
    if compress and max_file < 2:  # type: ignore[operator]
        raise _error(f'compress="{raw["compress"]}" needs max-file of 2 or more (only rotated files are compressed)')
    return JsonFileOptions(
        max_size=max_size,  # type: ignore[arg-type]
        max_file=max_file,  # type: ignore[arg-type]
        compress=compress,  # type: ignore[arg-type]
        labels=opts.get("labels", ()),  # type: ignore[arg-type]
        labels_regex=opts.get("labels-regex"),  # type: ignore[arg-type]
        env=opts.get("env", ()),  # type: ignore[arg-type]
        env_regex=opts.get("env-regex"),  # type: ignore[arg-type]
        tag=opts.get("tag", ""),  # type: ignore[arg-type]
    )
