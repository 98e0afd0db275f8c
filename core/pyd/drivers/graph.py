"""Graph (storage) driver protocol, modelled on moby's ``daemon/graphdriver.Driver``.

A graph driver stores layers: each has an ID chosen by the core, an optional parent, and a
directory tree. Read-only layers come from images (filled by ``apply_diff``); read-write
layers sit on top for containers. The core serialises calls for the same layer ID; the
driver must guard its own shared state (mount refcounts) against concurrent calls for
different IDs. All methods are synchronous and may block (mounts); the core runs them in
worker threads with a deadline.

Tar streams are uncompressed and use Docker's whiteout convention: a file ``.wh.NAME``
deletes ``NAME`` of a lower layer, and ``.wh..wh..opq`` in a directory makes it opaque.
``pyd.drivers.archive`` applies and produces such streams safely; drivers should use it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import BinaryIO, Mapping, Protocol, runtime_checkable


@dataclass
class CreateRequest:
    """Arguments of ``create`` / ``create_rw`` (moby's CreateOpts)."""

    layer_id: str
    parent: str | None = None
    mount_label: str = ""
    # Per-layer options from ``--storage-opt`` on container create, already validated by
    # ``GraphDriver.parse_layer_options``.
    storage_opts: Mapping[str, str] = field(default_factory=dict)


class ChangeKind(enum.IntEnum):
    """Docker's change kinds, as ``GET /containers/{id}/changes`` reports them."""

    MODIFY = 0
    ADD = 1
    DELETE = 2


@dataclass(frozen=True)
class Change:
    path: str  # absolute path inside the layer, e.g. "/etc/passwd"
    kind: ChangeKind


class GraphDriver(Protocol):
    """What every graph driver provides."""

    name: str  # the entry-point name, e.g. "overlay2"

    def parse_layer_options(self, raw: Mapping[str, str]) -> Mapping[str, str]:
        """Validate per-container ``--storage-opt`` at container create.

        Return the options to pass in ``CreateRequest.storage_opts``; raise
        ``InvalidOption`` naming the key and listing the valid ones. A driver without
        per-layer options raises for any key.
        """
        ...

    def create(self, req: CreateRequest) -> None:
        """Create an empty read-only layer on top of ``req.parent`` (None: a base layer).

        Raises ``Conflict`` if the ID exists, ``NotFound`` if the parent does not.
        A failed create leaves nothing behind.
        """
        ...

    def create_rw(self, req: CreateRequest) -> None:
        """Create a read-write layer for a container; otherwise like ``create``."""
        ...

    def remove(self, layer_id: str) -> None:
        """Delete a layer and its data. Raises ``Conflict`` while it is mounted (refcount > 0).

        Removing an ID that does not exist is not an error (idempotent).
        """
        ...

    def get(self, layer_id: str, mount_label: str = "") -> str:
        """Mount the layer (with all its parents) and return the host path of its root.

        Reference-counted: every ``get`` needs one ``put``; only the first mounts.
        """
        ...

    def put(self, layer_id: str) -> None:
        """Release one reference taken by ``get``; the last one unmounts."""
        ...

    def exists(self, layer_id: str) -> bool:
        ...

    def status(self) -> list[tuple[str, str]]:
        """Key/value pairs for ``/info``'s ``DriverStatus``, e.g. ("Backing Filesystem", "extfs")."""
        ...

    def metadata(self, layer_id: str) -> dict[str, str]:
        """Driver-specific data for ``GraphDriver.Data`` in inspect (e.g. UpperDir, MergedDir)."""
        ...

    def cleanup(self) -> None:
        """Unmount everything the driver mounted; called once at daemon shutdown."""
        ...

    def diff(self, layer_id: str, parent: str | None) -> BinaryIO:
        """A tar stream of the changes from ``parent`` to ``layer_id`` (whiteouts included).

        The caller closes the stream.
        """
        ...

    def changes(self, layer_id: str, parent: str | None) -> list[Change]:
        """The list of paths added, modified or deleted relative to ``parent``, sorted by path."""
        ...

    def apply_diff(self, layer_id: str, parent: str | None, diff: BinaryIO) -> int:
        """Extract the tar stream ``diff`` into ``layer_id``; return the bytes of content applied.

        A security boundary: nothing may be written outside the layer (``..`` paths, absolute
        paths, symlink or hardlink escapes are refused with ``InvalidParameter``), and a
        whiteout never deletes outside it. On error the layer's content is undefined and the
        core removes the layer.
        """
        ...

    def diff_size(self, layer_id: str, parent: str | None) -> int:
        """Size in bytes of the changes from ``parent`` to ``layer_id``."""
        ...


@runtime_checkable
class LayerCapacity(Protocol):
    """Optional: the driver can report the backing filesystem's free space."""

    def free_bytes(self) -> int:
        ...
