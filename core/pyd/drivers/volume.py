"""Volume driver protocol, modelled on moby's ``volume.Driver`` / ``volume.Volume``.

Methods are synchronous and may block; the core calls them from worker threads with
deadlines and serialises calls per volume name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol


@dataclass
class VolumeInfo:
    name: str
    mountpoint: str  # host path where the data lives (may be empty until mounted)
    created_at: str = ""  # RFC 3339
    options: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    status: Mapping[str, object] = field(default_factory=dict)
    scope: str = "local"


class VolumeDriver(Protocol):
    name: str

    def parse_options(self, raw: Mapping[str, str]) -> Mapping[str, str]:
        """Validate ``-o`` of ``volume create``; raise ``InvalidOption`` listing the valid keys."""
        ...

    def create(self, name: str, options: Mapping[str, str], labels: Mapping[str, str]) -> VolumeInfo:
        """Create a volume. Creating one that exists with the same options returns it."""
        ...

    def remove(self, name: str) -> None:
        """Delete the volume and its data. ``NotFound`` if it does not exist."""
        ...

    def get(self, name: str) -> VolumeInfo:
        """``NotFound`` if it does not exist."""
        ...

    def list(self) -> list[VolumeInfo]:
        ...

    def path(self, name: str) -> str:
        """The host path of the volume's data, mounted or not."""
        ...

    def mount(self, name: str, ref: str) -> str:
        """Make the volume usable for user ``ref`` (a container ID); return the host path.

        Reference-counted by ``ref``: the first user mounts (e.g. a tmpfs), later ones reuse it.
        """
        ...

    def unmount(self, name: str, ref: str) -> None:
        """Release ``ref``'s use; the last one unmounts."""
        ...
