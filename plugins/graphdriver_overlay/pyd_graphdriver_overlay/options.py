"""Options of the overlay2 driver (``--storage-opt``), checked before anything is created."""

from __future__ import annotations

from typing import Callable, Mapping

from pyd.drivers.options import check_options, parse_bool, parse_size

NAME = "overlay2"


def _not_on_this_fs(key: str, backing_fs: str) -> Callable[[str], object]:
    def parse(value: str) -> object:
        parse_size(value)  # a bad value is reported as such first
        raise ValueError(
            f"cannot be enforced: pyd's {NAME} driver does not implement project quotas "
            f"(backing filesystem: {backing_fs})"
        )

    return parse


def parse_options(raw: Mapping[str, str], backing_fs: str) -> dict[str, object]:
    """Daemon-wide ``--storage-opt`` for overlay2."""
    return check_options(
        raw,
        {
            # Accepted and ignored, as moby does since the kernel check it overrode is gone.
            "overlay2.override_kernel_check": parse_bool,
            "overlay2.size": _not_on_this_fs("overlay2.size", backing_fs),
        },
        flag="--storage-opt",
        driver=NAME,
        kind="storage",
    )


def parse_layer_options(raw: Mapping[str, str], backing_fs: str) -> dict[str, object]:
    """Per-container ``--storage-opt`` for overlay2."""
    return check_options(
        raw, {"size": _not_on_this_fs("size", backing_fs)}, flag="--storage-opt", driver=NAME, kind="storage"
    )
