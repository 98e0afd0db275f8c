"""pyd's plugin API: the hook specifications (pluggy project name ``pyd``).

A plugin is a module named by an entry point in one of the ``pyd.<kind>`` groups (the entry
point's name is the driver name users type). The daemon imports only the modules its
configuration selects, registers them with pluggy, and calls the hooks below. Implement
hooks with the ``hookimpl`` marker from this module::

    from pyd.hookspecs import hookimpl

    @hookimpl
    def pyd_log_init(name, home):
        if name == "my-log":
            return MyLogDriver(home)

Rules for every hook:
* Call by keyword only; an implementation may accept fewer arguments than the spec (so the
  spec can grow without breaking it).
* Init hooks are ``firstresult``: return your driver for a name that is yours, ``None``
  otherwise. The core calls them through a caller that only contains the module behind the
  selected entry point, so a plugin cannot answer for a name it was not installed under.
* Raise ``pyd.errors`` classes: ``InvalidOption``/``InvalidParameter`` for bad user input,
  ``NotSupported`` when the host lacks what the plugin needs. Other exceptions are reported as
  plugin failures naming the plugin.

.. versionadded:: 0.1 (every hook below, unless noted)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import pluggy

if TYPE_CHECKING:
    from pyd.drivers.authz import Authorizer
    from pyd.drivers.execdriver import ExecDriver
    from pyd.drivers.graph import GraphDriver
    from pyd.drivers.ipam import IpamDriver
    from pyd.drivers.kvstore import KVStore
    from pyd.drivers.log import LogDriver
    from pyd.drivers.network import NetworkContext, NetworkDriver
    from pyd.drivers.volume import VolumeDriver
    from pyd.types import ContainerInfo, Event, ProcessSpec

PROJECT = "pyd"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------------------------
# Daemon lifecycle
# --------------------------------------------------------------------------------------------


@hookspec(historic=True)
def pyd_configure(settings: Mapping[str, Any]) -> None:
    """Called once at daemon start with the effective daemon configuration (daemon.json keys
    merged with flags, e.g. ``settings["data-root"]``). Historic: a plugin registered later
    still receives it. Main thread, before the API socket opens; must not block long.
    Do not mutate ``settings``.
    """


@hookspec
def pyd_daemon_shutdown() -> None:
    """Called once when the daemon stops (after the API socket closed), in the main thread.
    Release what the plugin holds beyond its drivers' ``cleanup``. Exceptions are logged.
    """


# --------------------------------------------------------------------------------------------
# Driver registration: one firstresult init hook per kind
# --------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def pyd_graphdriver_init(name: str, home: Path, options: Mapping[str, str]) -> GraphDriver | None:
    """Return the graph driver registered under ``name`` (a ``pyd.drivers.graph.GraphDriver``).

    Called once at daemon start for the selected storage driver, in the main thread.
    ``home`` is ``<data-root>/<name>``, owned by the driver (created by the core).
    ``options`` are the daemon-wide ``--storage-opt``/``storage-opts`` as ``key: value``
    strings: validate them all and raise ``InvalidOption`` naming the bad key and the valid
    ones. Raise ``NotSupported`` with the reason if the host cannot run this driver (e.g.
    overlayfs missing); the daemon then falls back to the next default or fails naming it.
    """


@hookspec(firstresult=True)
def pyd_network_init(name: str, home: Path, context: NetworkContext) -> NetworkDriver | None:
    """Return the network driver registered under ``name`` (``pyd.drivers.network.NetworkDriver``).

    Called once at daemon start for every installed network driver that loads, in the main
    thread. ``home`` is ``<data-root>/network/<name>``. ``context`` carries daemon-wide
    network settings and, for global-scope drivers, the KV store. ``NotSupported``: the
    driver is listed as unavailable with the reason and networks using it cannot be created.
    """


@hookspec(firstresult=True)
def pyd_ipam_init(name: str, home: Path, kvstore: KVStore | None) -> IpamDriver | None:
    """Return the IPAM driver registered under ``name`` (``pyd.drivers.ipam.IpamDriver``).

    ``home`` is ``<data-root>/ipam/<name>`` for local state; ``kvstore`` is the cluster store
    for global pools, or None.
    """


@hookspec(firstresult=True)
def pyd_exec_init(name: str, home: Path, options: Mapping[str, str]) -> ExecDriver | None:
    """Return the exec driver registered under ``name`` (``pyd.drivers.execdriver.ExecDriver``).

    Called once at daemon start, main thread. ``home`` is the driver's directory under the
    exec-root (state that must not outlive a reboot); ``options`` are ``exec-opts``.
    """


@hookspec(firstresult=True)
def pyd_log_init(name: str, home: Path) -> LogDriver | None:
    """Return the log driver registered under ``name`` (``pyd.drivers.log.LogDriver``).

    Called once per daemon start for each log driver that the configuration or a container
    selects, in the main thread, before the API socket opens. ``home`` is
    ``<data-root>/log/<name>``. Options are not passed here: the driver's ``parse_options``
    checks daemon-wide ``log-opts`` and each container's ``--log-opt``.
    """


@hookspec(firstresult=True)
def pyd_volume_init(name: str, home: Path) -> VolumeDriver | None:
    """Return the volume driver registered under ``name`` (``pyd.drivers.volume.VolumeDriver``).

    ``home`` is ``<data-root>/volumes`` for ``local`` and ``<data-root>/volumes-<name>``
    otherwise (the driver keeps its volumes there).
    """


@hookspec(firstresult=True)
def pyd_kvstore_init(name: str, url: str, home: Path) -> KVStore | None:
    """Return a connected KV store (``pyd.drivers.kvstore.KVStore``) for ``name``.

    ``url`` is the ``cluster-store`` value (e.g. ``etcd://127.0.0.1:2379``), or ``""`` for an
    embedded store; ``home`` is ``<data-root>/kvstore/<name>``. Called on first use, from any
    thread. Must not need the store to be reachable (it may be down when the daemon starts):
    check the url (``InvalidParameter`` naming it) and return; every method then raises
    ``Unavailable`` naming the store while it cannot be reached. The daemon calls ``close()``
    at shutdown.
    """


@hookspec(firstresult=True)
def pyd_authz_init(name: str, home: Path, options: Mapping[str, str]) -> Authorizer | None:
    """Return the authorizer registered under ``name`` (``pyd.drivers.authz.Authorizer``).

    Called at daemon start for each name in ``authorization-plugins``; the core calls the
    authorizers in that order. ``options`` come from ``authorization-opts`` in daemon.json
    (e.g. ``{"policy": "/etc/pyd/authz.json"}``). Any failure here stops the daemon (fail closed).
    """


# --------------------------------------------------------------------------------------------
# Container lifecycle (security plugins and other cross-cutting work)
# --------------------------------------------------------------------------------------------


@hookspec
def pyd_container_validate(container: ContainerInfo) -> None:
    """Check a container's configuration at create time (e.g. ``--security-opt`` values).

    Called in a worker thread once per ``create``. Raise ``InvalidParameter`` for bad input:
    the create fails with 400 and nothing is made. Options a plugin does not know must be
    left alone (another plugin may own them); the core rejects options no plugin claimed via
    ``pyd_security_opt_keys``.
    """


@hookspec
def pyd_security_opt_keys() -> list[str]:
    """Return the ``--security-opt`` keys this plugin owns (e.g. ``["seccomp"]``).

    The core owns ``no-new-privileges`` and ``label``; a key nobody owns is rejected at create.
    """


@hookspec
def pyd_container_prepare(container: ContainerInfo, spec: ProcessSpec) -> None:
    """Edit ``spec`` in place before the exec driver starts the container.

    Called in a worker thread once per start, after the core filled in the spec. The seccomp
    plugin sets ``spec.seccomp_filter`` here. Raise ``InvalidParameter`` for bad user input
    (400); any other exception aborts the start (500, naming the plugin).
    """


# --------------------------------------------------------------------------------------------
# Observability
# --------------------------------------------------------------------------------------------


@hookspec
def pyd_event(event: Event) -> None:
    """Called for every lifecycle event (the ``/events`` stream), in the event-loop thread.

    Must not block: hand work to a thread of your own. Exceptions are logged and ignored.
    """


@hookspec
def pyd_info(info: dict[str, Any]) -> None:
    """Add to ``GET /info``: e.g. append to ``info["SecurityOptions"]``. Must be fast."""
