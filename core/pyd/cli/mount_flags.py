"""``-v``, ``--mount``, ``--volumes-from``, ``--volume-driver`` as the docker CLI turns them into
the create body. Pure and cheap to import (no click, no client); unit-tested directly.

* ``-v`` strings go to ``HostConfig.Binds`` as given (a ``./relative`` host path made
  absolute), except a lone container path (``-v /data``), which is an anonymous volume in
  ``Config.Volumes`` (traces §2.10). The daemon parses and checks them.
* ``--mount`` is parsed here, in the CLI, into a ``HostConfig.Mounts`` entry with zero values
  left out, with docker's keys and messages.
"""

from __future__ import annotations

import os

from pyd.errors import InvalidParameter

TYPE_CHECKING = False  # typing itself costs ~5 ms of every CLI invocation
if TYPE_CHECKING:
    from typing import Any, Sequence

_TRUE = ("1", "t", "T", "true", "TRUE", "True")
_FALSE = ("0", "f", "F", "false", "FALSE", "False")
_BOOL_KEYS = ("readonly", "ro", "volume-nocopy", "bind-nonrecursive")
_KEYS = (
    "type", "source", "src", "target", "dst", "destination", "readonly", "ro", "consistency",
    "bind-propagation", "bind-nonrecursive", "volume-driver", "volume-nocopy", "volume-label",
    "volume-opt", "tmpfs-size", "tmpfs-mode",
)


def split_volumes(specs: Sequence[str], cwd: str | None = None) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """``-v`` values -> (``Binds``, ``Config.Volumes``)."""
    binds: list[str] = []
    volumes: dict[str, dict[str, Any]] = {}
    for spec in specs:
        if ":" not in spec:
            volumes[spec] = {}
            continue
        host, _, rest = spec.partition(":")
        if host.startswith("."):  # docker resolves ./dir and ../dir against the working directory
            host = os.path.abspath(os.path.join(cwd or os.getcwd(), host))
        binds.append(f"{host}:{rest}")
    return binds, volumes


def _flag_error(value: str, why: str) -> InvalidParameter:
    return InvalidParameter(f'invalid argument "{value}" for "--mount" flag: {why}')


def _parse_bool(key: str, value: str, raw: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _flag_error(raw, f"invalid value for {key}: {value}")


def _size(value: str, raw: str) -> int:
    from pyd.cli.create_body import parse_bytes

    try:
        return parse_bytes(value, "--mount")
    except InvalidParameter:
        raise _flag_error(raw, f"invalid value for tmpfs-size: {value}") from None


def parse_mount_flag(raw: str) -> dict[str, Any]:
    """One ``--mount`` value -> a ``HostConfig.Mounts`` entry (docker's ``MountOpt.Set``)."""
    import csv  # only --mount needs it

    try:
        fields = next(csv.reader([raw]))
    except (csv.Error, StopIteration):
        raise _flag_error(raw, "invalid CSV") from None
    mount: dict[str, Any] = {"Type": "volume"}
    bind: dict[str, Any] = {}
    volume: dict[str, Any] = {}
    driver: dict[str, Any] = {}
    tmpfs: dict[str, Any] = {}
    for field in fields:
        key, sep, value = field.partition("=")
        key = key.strip().lower()
        if not sep:
            if key in _BOOL_KEYS:
                value = "true"
            else:
                raise _flag_error(raw, f"invalid field '{field}' must be a key=value pair")
        if key not in _KEYS:
            raise _flag_error(raw, f"unexpected key '{key}' in '{field}'; valid keys: {', '.join(_KEYS)}")
        if key == "type":
            mount["Type"] = value.lower()
        elif key in ("source", "src"):
            mount["Source"] = value
        elif key in ("target", "dst", "destination"):
            mount["Target"] = value
        elif key in ("readonly", "ro"):
            mount["ReadOnly"] = _parse_bool(key, value, raw)
        elif key == "consistency":
            mount["Consistency"] = value
        elif key == "bind-propagation":
            bind["Propagation"] = value.lower()
        elif key == "bind-nonrecursive":
            bind["NonRecursive"] = _parse_bool(key, value, raw)
        elif key == "volume-driver":
            driver["Name"] = value
        elif key == "volume-nocopy":
            volume["NoCopy"] = _parse_bool(key, value, raw)
        elif key == "volume-label":
            k, _, v = value.partition("=")
            volume.setdefault("Labels", {})[k] = v
        elif key == "volume-opt":
            k, _, v = value.partition("=")
            driver.setdefault("Options", {})[k] = v
        elif key == "tmpfs-size":
            tmpfs["SizeBytes"] = _size(value, raw)
        elif key == "tmpfs-mode":
            try:
                tmpfs["Mode"] = int(value, 8)
            except ValueError:
                raise _flag_error(raw, f"invalid value for tmpfs-mode: {value} (an octal mode such as 1777)") from None
    if driver:
        volume["DriverConfig"] = driver
    if not mount.get("ReadOnly"):
        mount.pop("ReadOnly", None)  # zero values are left out, as docker sends them
    mtype = mount["Type"]
    if not mount.get("Target"):
        raise _flag_error(raw, "target is required")
    for prefix, opts, key in (("bind", bind, "BindOptions"), ("volume", volume, "VolumeOptions"),
                              ("tmpfs", tmpfs, "TmpfsOptions")):
        if opts:
            if mtype != prefix:
                raise _flag_error(raw, f"cannot mix '{prefix}-*' options with mount type '{mtype}'")
            mount[key] = opts
    return mount


def mount_fields(mounts: Sequence[str], volumes_from: Sequence[str], volume_driver: str) -> dict[str, Any]:
    """The ``HostConfig`` keys for ``--mount``, ``--volumes-from``, ``--volume-driver``."""
    hc: dict[str, Any] = {}
    if mounts:
        hc["Mounts"] = [parse_mount_flag(m) for m in mounts]
    if volumes_from:
        hc["VolumesFrom"] = list(volumes_from)
    if volume_driver:
        hc["VolumeDriver"] = volume_driver
    return hc
