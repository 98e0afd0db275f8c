"""Volume driver protocol, modelled on moby's ``volume.Driver`` / ``volume.Volume``.

A volume driver is created once per daemon (``pyd_volume_init``) with a ``home`` directory it
owns. Methods are synchronous and may block; the core calls them from worker threads with
deadlines and serialises calls per volume name. A call that timed out may be repeated, so
every method must be safe to retry: ``mount``/``unmount`` are idempotent per ``ref``.

Contract shared by every method that takes a ``name``:

* ``name`` is checked against Docker's rule ``^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`` (at most 255
  characters) before it is used for anything; a bad one raises ``InvalidParameter`` naming it.
* A volume that does not exist raises ``NotFound`` whose message names it, in Docker's words
  (``get NAME: no such volume``).

Copy-up (Docker's "a new empty volume gets the image's content at the mount path") is done by
the core, not the driver: after ``mount`` the core copies the image's files into the returned
directory if, and only if, that directory is empty (moby's rule, so a volume emptied by hand is
filled again). A driver therefore keeps its own files (metadata) outside that directory.

Optional abilities, checked with ``isinstance`` (or the helpers below):

* ``VolumeCapable``: ``capabilities()`` reports the scope (moby's ``Capabilities{Scope}``);
  a driver without it is ``local`` scope.
* ``VolumeRefs``: ``refs(name)`` lists the refs that hold the volume mounted. A driver whose
  refs survive a daemon restart offers it, so the core can release refs of containers that
  stopped while the daemon was down (see ``VolumeRefs``).

.. versionchanged:: 0.1 (issue 6) ``VolumeCapabilities``, ``VolumeCapable``, ``VolumeRefs``,
   ``capabilities_of``; contracts of ``mount``/``unmount``/``remove`` spelled out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, Protocol, runtime_checkable


@dataclass
class VolumeInfo:
    """What ``create``/``get``/``list`` report; the core turns it into Docker's volume JSON."""

    name: str
    mountpoint: str  # host path where the data lives (``path(name)``), mounted or not
    created_at: str = ""  # RFC 3339, UTC, second precision: "2026-11-28T07:14:09Z"
    options: Mapping[str, str] = field(default_factory=dict)  # the ``-o`` given at create
    labels: Mapping[str, str] = field(default_factory=dict)
    # Driver-specific state for ``volume inspect`` ("Status"); empty for most drivers.
    status: Mapping[str, object] = field(default_factory=dict)
    scope: str = "local"


@dataclass(frozen=True)
class VolumeCapabilities:
    """moby's ``volume.Capability``: ``scope`` is ``local`` (volumes exist on this host only)
    or ``global`` (the same name means the same volume on every host of a cluster)."""

    scope: Literal["local", "global"] = "local"


class VolumeDriver(Protocol):
    name: str

    def parse_options(self, raw: Mapping[str, str]) -> Mapping[str, str]:
        """Validate ``-o`` of ``volume create`` (keys and values) and return them normalised.

        Pure: touches nothing on disk. Raise ``InvalidOption`` naming the key and the value
        and listing the valid keys. ``create`` validates again, so calling this first is only
        an early check.
        """
        ...

    def create(self, name: str, options: Mapping[str, str], labels: Mapping[str, str]) -> VolumeInfo:
        """Create a volume; fast (no mount is made here).

        Idempotent: creating a volume that exists with the same options returns it unchanged
        (labels included, as Docker does). The same name with different options raises
        ``Conflict`` naming the volume. Bad name or options: ``InvalidParameter`` /
        ``InvalidOption`` and nothing is created.
        """
        ...

    def remove(self, name: str) -> None:
        """Delete the volume and its data. ``NotFound`` if it does not exist; ``Conflict``
        naming the volume while any ref holds it mounted (its data is left intact).

        Never deletes data that is not the volume's own (e.g. the source of a bind volume).
        """
        ...

    def get(self, name: str) -> VolumeInfo:
        """``NotFound`` (``get NAME: no such volume``) if it does not exist."""
        ...

    def list(self) -> list[VolumeInfo]:
        """Every volume of this driver, sorted by name."""
        ...

    def path(self, name: str) -> str:
        """The host path of the volume's data, mounted or not (``VolumeInfo.mountpoint``)."""
        ...

    def mount(self, name: str, ref: str) -> str:
        """Make the volume usable for user ``ref`` (a container ID); return the host path.

        Refs form a set: the first ref mounts (e.g. a tmpfs), later ones reuse it, and the
        same ref twice counts once (so a retried call is harmless). The returned directory is
        what the container sees; on a new volume it is empty (the core's copy-up relies on
        that). Errors: ``NotFound``; a failed mount raises with the driver's reason and
        leaves no ref behind.
        """
        ...

    def unmount(self, name: str, ref: str) -> None:
        """Release ``ref``'s use; when no ref is left the mount (if any) is undone.

        A ref that holds nothing is ignored (idempotent). ``NotFound`` if the volume does
        not exist.
        """
        ...


@runtime_checkable
class VolumeCapable(Protocol):
    """Optional: the driver reports its capabilities (moby's ``CapabilitiesDriver``)."""

    def capabilities(self) -> VolumeCapabilities:
        ...


@runtime_checkable
class VolumeRefs(Protocol):
    """Optional: the driver can tell who holds a volume mounted.

    A driver that persists refs (so a daemon restart with running containers keeps its
    mounts and counts) offers this. After restoring containers the core reconciles:
    ``mount(name, id)`` for each running container that uses the volume (idempotent), and
    ``unmount(name, ref)`` for every other ref ``refs(name)`` reports.
    """

    def refs(self, name: str) -> frozenset[str]:
        """The refs holding ``name`` mounted (empty if none). ``NotFound`` if no such volume."""
        ...


def capabilities_of(driver: object) -> VolumeCapabilities:
    """``driver.capabilities()`` if the driver has that ability, else ``local`` scope."""
    if isinstance(driver, VolumeCapable):
        return driver.capabilities()
    return VolumeCapabilities()
