"""Options of the vfs driver (``--storage-opt``), checked before anything is created."""

from __future__ import annotations

from typing import Mapping

from pyd.drivers.options import check_options, parse_size

NAME = "vfs"


def _size(backing_fs: str):  # type: ignore[no-untyped-def]
    def parse(value: str) -> object:
        parse_size(value)  # a bad value is reported as such first
        raise ValueError(
            f"cannot be enforced: pyd's {NAME} driver does not implement project quotas "
            f"(backing filesystem: {backing_fs})"
        )

    return parse


def parse_options(raw: Mapping[str, str], backing_fs: str) -> dict[str, object]:
    """Daemon-wide ``--storage-opt`` for vfs: moby's ``size`` (a default quota) is recognised
    and refused with the reason; vfs has no other options."""
    return check_options(raw, {"size": _size(backing_fs)}, flag="--storage-opt", driver=NAME, kind="storage")


def parse_layer_options(raw: Mapping[str, str], backing_fs: str) -> dict[str, object]:
    """Per-container ``--storage-opt`` for vfs (same keys as daemon-wide)."""
    return parse_options(raw, backing_fs)
