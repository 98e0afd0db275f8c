"""Error classes of pyd's public API.

Drivers and services raise these; one server middleware maps each class to an HTTP status
(``status`` below) and the client maps the status back to the class. Never raise HTTP types.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs ~5 ms of every CLI invocation
if TYPE_CHECKING:
    from typing import Iterable


class PydError(Exception):
    """Base of every error pyd reports to a user. ``status`` is the HTTP status code."""

    status = 500

    @property
    def message(self) -> str:
        return str(self)


class InvalidParameter(PydError):
    """The user's input is wrong; nothing was changed (400)."""

    status = 400


class InvalidOption(InvalidParameter):
    """A driver option (``--storage-opt``, ``--log-opt``, ``-o``) is unknown or has a bad value."""


class Forbidden(PydError):
    """An authorization plugin denied the request, or the state forbids it (403)."""

    status = 403


class NotFound(PydError):
    """No such container, image, network, volume, exec instance or driver (404)."""

    status = 404


class Conflict(PydError):
    """The object's state forbids the operation now: name in use, container running (409)."""

    status = 409


class NotModified(PydError):
    """The object is already in the requested state, e.g. start of a running container (304)."""

    status = 304


class NotSupported(PydError):
    """The driver cannot do that, e.g. read back logs (501)."""

    status = 501


class Unavailable(PydError):
    """A driver timed out or could not be loaded (503)."""

    status = 503


_BY_STATUS: dict[int, type[PydError]] = {
    400: InvalidParameter,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    304: NotModified,
    501: NotSupported,
    503: Unavailable,
}


def from_status(status: int, message: str) -> PydError:
    """The error class that ``status`` stands for, carrying ``message`` (used by the client)."""
    return _BY_STATUS.get(status, PydError)(message)


class PluginError(PydError):
    """Base for errors about plugins themselves (loading, selection)."""

    status = 503


class DriverNotInstalled(PluginError, NotFound):
    """The configuration names a driver that no installed distribution provides."""

    status = 404

    def __init__(self, kind: str, name: str, installed: Iterable[str]) -> None:
        self.kind, self.name, self.installed = kind, name, sorted(installed)
        avail = ", ".join(self.installed) or "none"
        super().__init__(
            f'{kind} driver "{name}" is not installed; available {kind} drivers: {avail}'
        )


class PluginLoadError(PluginError):
    """An installed plugin failed to import or to initialise."""

    def __init__(self, kind: str, name: str, target: str, cause: BaseException) -> None:
        self.kind, self.name, self.target, self.cause = kind, name, target, cause
        super().__init__(
            f'{kind} plugin "{name}" ({target}) failed to load: {type(cause).__name__}: {cause}'
        )


class DuplicatePlugin(PluginError):
    """Two distributions register the same name in one entry-point group."""

    def __init__(self, kind: str, name: str, targets: Iterable[str]) -> None:
        self.kind, self.name, self.targets = kind, name, list(targets)
        super().__init__(
            f'{kind} driver name "{name}" is claimed by more than one plugin: '
            + ", ".join(self.targets)
        )
