"""pyd's seccomp security plugin (entry point ``pyd.security: seccomp``).

Which profile a container gets, as Docker decides it:

1. ``--privileged``: none (the container may do anything its capabilities allow);
2. ``--security-opt seccomp=unconfined``: none;
3. ``--security-opt seccomp=PROFILE``: that profile, a path on the daemon's host or the
   profile's JSON text itself (the docker CLI reads the file and sends its content);
4. the daemon's ``seccomp-profile`` (daemon.json): a path, ``unconfined``, or ``builtin``;
5. otherwise the profile shipped with this plugin (``default.json``).

The chosen profile is compiled for the container's capabilities (rules with ``includes.caps``
apply only when it holds them) and stored as ``spec.seccomp_filter``; the exec driver loads
it as the last step before it runs the container's program.
"""

from __future__ import annotations

from typing import Any, Mapping

from pyd.errors import InvalidParameter
from pyd.hookspecs import hookimpl
from pyd.types import ContainerInfo, ProcessSpec

from pyd_security_seccomp.profile import (
    ProfileError,
    compile_profile,
    default_profile_text,
    parse,
    read_profile_file,
)

KEY = "seccomp"
UNCONFINED = "unconfined"
BUILTIN = ("", "builtin", "default")


def _container_choice(container: ContainerInfo) -> str | None:
    """The value of the container's ``seccomp`` security option, or None if it has none."""
    value = None
    for opt in container.security_opts:
        key, sep, val = opt.partition("=")
        if not sep:  # the old "seccomp:VALUE" spelling
            key, sep, val = opt.partition(":")
        if key == KEY and sep:
            value = val
    return value


def _profile_text(value: str, what: str) -> str:
    """The profile JSON for an option value: inline JSON or a path."""
    try:
        text = value if value.lstrip().startswith("{") else read_profile_file(value)
        parse(text)
    except ProfileError as exc:
        raise ProfileError(f"{what}: {exc}") from None
    return text


def _check(value: str, what: str) -> None:
    if value in BUILTIN or value == UNCONFINED:
        return
    text = ""
    try:
        text = _profile_text(value, what)
        compile_profile(text, [])  # also what libseccomp says about it
    except ProfileError as exc:
        raise InvalidParameter(str(exc) if not text else f"{what}: {exc}") from None


def _describe(value: str) -> str:
    return "inline profile" if value.lstrip().startswith("{") else value


@hookimpl
def pyd_security_opt_keys() -> list[str]:
    return [KEY]


@hookimpl
def pyd_configure(settings: Mapping[str, Any]) -> None:
    """Check the daemon's ``seccomp-profile`` at start-up, so a bad file stops the daemon."""
    value = str(settings.get("seccomp-profile") or "")
    _check(value, f'daemon setting seccomp-profile "{value}"')


@hookimpl
def pyd_container_validate(container: ContainerInfo) -> None:
    value = _container_choice(container)
    if value is None:
        return
    if not value.strip():
        raise InvalidParameter(
            'invalid --security-opt seccomp="": give "unconfined", a profile path or the profile JSON'
        )
    _check(value, f'invalid --security-opt seccomp="{_describe(value)}"')


@hookimpl
def pyd_container_prepare(container: ContainerInfo, spec: ProcessSpec) -> None:
    if container.privileged or spec.privileged:
        spec.seccomp_filter = None
        return
    value = _container_choice(container)
    what = f'--security-opt seccomp="{_describe(value or "")}"'
    if value is None:
        value = str(container.daemon_settings.get("seccomp-profile") or "")
        what = f'daemon setting seccomp-profile "{value}"'
    if value == UNCONFINED:
        spec.seccomp_filter = None
        return
    text = ""
    try:
        text = default_profile_text() if value in BUILTIN else _profile_text(value, what)
        spec.seccomp_filter = compile_profile(text, spec.capabilities)
    except ProfileError as exc:
        raise InvalidParameter(str(exc) if not text else f"{what}: {exc}") from None
