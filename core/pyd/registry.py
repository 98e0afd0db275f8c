"""Plugin discovery and loading: importlib.metadata lists, stevedore imports, pluggy calls.

Nothing happens at import time. A ``PluginRegistry`` is built by the daemon's composition root
(or by a test) and passed to whoever needs it.

* ``list_installed`` reads entry-point metadata only; it imports no plugin.
* ``PluginRegistry.load`` imports the one module behind ``(kind, name)`` with stevedore and
  registers it with pluggy (``check_pending`` then rejects misspelt hooks).
* ``PluginRegistry.init_driver`` calls the kind's init hook through a caller that contains only
  the selected module, so no other plugin can answer for that name.
* A plugin that fails to load is recorded (``failures``) and reported by ``pyd plugin ls`` and
  ``/info``; the error is raised only to whoever asked for that plugin.
"""

from __future__ import annotations

import enum
import importlib
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

import pluggy

from pyd import hookspecs
from pyd.errors import (
    DriverNotInstalled,
    DuplicatePlugin,
    NotSupported,
    PluginLoadError,
    PydError,
)

log = logging.getLogger(__name__)


class Kind(str, enum.Enum):
    GRAPHDRIVER = "graphdriver"
    NETWORK = "network"
    IPAM = "ipam"
    EXEC = "exec"
    LOG = "log"
    VOLUME = "volume"
    AUTHZ = "authz"
    KVSTORE = "kvstore"
    SECURITY = "security"

    @property
    def group(self) -> str:
        return f"pyd.{self.value}"

    @property
    def init_hook(self) -> str | None:
        return None if self is Kind.SECURITY else f"pyd_{self.value}_init"


# Core behaviour that is itself replaceable, registered like any other plugin:
# (kind, name, module). Listed by ``pyd plugin ls`` with distribution "pyd".
CORE_PLUGINS: tuple[tuple[Kind, str, str], ...] = (
    (Kind.IPAM, "default", "pyd.builtin.ipam_default"),
    (Kind.LOG, "none", "pyd.builtin.log_none"),
)


@dataclass(frozen=True)
class InstalledPlugin:
    kind: Kind
    name: str
    target: str  # "module" or "module:attr"
    dist: str
    version: str


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"] or "?", dist.version or "?"


def list_installed(kinds: Iterable[Kind] | None = None) -> list[InstalledPlugin]:
    """Every plugin installed for ``kinds`` (all kinds by default), core plugins first.

    Reads metadata only. Duplicate (name, target, dist) rows, as an editable install on
    ``sys.path`` twice produces, are folded into one.
    """
    core_version = _core_version()
    out: list[InstalledPlugin] = []
    seen: set[tuple[Kind, str, str, str]] = set()
    # One scan of the installed distributions for all kinds (a scan per group costs ~4 ms each).
    all_eps = metadata.entry_points()
    for kind in kinds or list(Kind):
        for k, name, module in CORE_PLUGINS:
            if k is kind:
                out.append(InstalledPlugin(kind, name, module, "pyd", core_version))
        for ep in all_eps.select(group=kind.group):
            dist, version = _dist_of(ep)
            key = (kind, ep.name, ep.value, dist)
            if key in seen:
                continue
            seen.add(key)
            out.append(InstalledPlugin(kind, ep.name, ep.value, dist, version))
    return out


def installed_names(kind: Kind) -> list[str]:
    return sorted({p.name for p in list_installed([kind])})


def _core_version() -> str:
    from pyd import __version__

    return __version__


@dataclass
class LoadedPlugin:
    kind: Kind
    name: str
    module: ModuleType
    dist: str


class PluginRegistry:
    """Owns the pluggy ``PluginManager`` and the record of what loaded and what failed."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.loaded: dict[tuple[Kind, str], LoadedPlugin] = {}
        self.failures: dict[tuple[Kind, str], PydError] = {}
        # Drivers answered by init hooks, cached per (kind, name): one instance per daemon.
        self.drivers: dict[tuple[Kind, str], Any] = {}

    # -- loading ------------------------------------------------------------------------

    def load(self, kind: Kind, name: str) -> LoadedPlugin:
        """Import and register the plugin behind ``(kind, name)``; raise a ``PluginError`` if
        it is not installed, claimed twice, or fails to import or to register."""
        key = (kind, name)
        if key in self.loaded:
            return self.loaded[key]
        try:
            plugin = self._import(kind, name)
            self._register(plugin)
        except PydError as exc:
            self.failures[key] = exc
            raise
        self.failures.pop(key, None)
        self.loaded[key] = plugin
        log.debug("loaded plugin", extra={"plugin": f"{kind.value}:{name}", "dist": plugin.dist})
        return plugin

    def try_load(self, kind: Kind, name: str) -> LoadedPlugin | None:
        """Like ``load`` but a failure is only recorded and logged (for plugins not selected)."""
        try:
            return self.load(kind, name)
        except PydError as exc:
            log.warning("%s", exc, extra={"plugin": f"{kind.value}:{name}"})
            return None

    def load_all(self, kind: Kind) -> list[LoadedPlugin]:
        """Load every installed plugin of ``kind``, isolating failures (e.g. security plugins)."""
        out = []
        for name in installed_names(kind):
            plugin = self.try_load(kind, name)
            if plugin is not None:
                out.append(plugin)
        return out

    def _import(self, kind: Kind, name: str) -> LoadedPlugin:
        core = [m for k, n, m in CORE_PLUGINS if k is kind and n == name]
        eps = [p for p in list_installed([kind]) if p.name == name and p.dist != "pyd"]
        if core and eps:
            raise DuplicatePlugin(kind.value, name, core + [f"{p.target} ({p.dist})" for p in eps])
        if core:
            try:
                module = importlib.import_module(core[0])
            except Exception as exc:  # a broken core plugin is still only that plugin's failure
                raise PluginLoadError(kind.value, name, core[0], exc) from exc
            return LoadedPlugin(kind, name, module, "pyd")
        if not eps:
            raise DriverNotInstalled(kind.value, name, installed_names(kind))
        if len(eps) > 1:
            raise DuplicatePlugin(kind.value, name, [f"{p.target} ({p.dist})" for p in eps])
        return LoadedPlugin(kind, name, self._stevedore_load(kind, name, eps[0]), eps[0].dist)

    def _stevedore_load(self, kind: Kind, name: str, ep: InstalledPlugin) -> ModuleType:
        from stevedore import DriverManager, ExtensionManager
        from stevedore.exception import MultipleMatches, NoMatches

        def failed(_mgr: Any, entrypoint: Any, exc: BaseException) -> None:
            raise PluginLoadError(kind.value, name, ep.target, exc) from exc

        # stevedore keeps a process-wide cache of each group's entry points; drop it so that
        # it sees what importlib.metadata (list_installed) just saw, e.g. a plugin installed
        # after the first load in this process (tests, conformance runs).
        ExtensionManager.ENTRY_POINT_CACHE.pop(kind.group, None)
        try:
            mgr = DriverManager(
                kind.group,
                name,
                invoke_on_load=False,
                on_load_failure_callback=failed,
            )
        except NoMatches:
            raise DriverNotInstalled(kind.value, name, installed_names(kind)) from None
        except MultipleMatches:
            raise DuplicatePlugin(kind.value, name, [ep.target]) from None
        module = mgr.driver
        if not isinstance(module, ModuleType):
            raise PluginLoadError(
                kind.value, name, ep.target, TypeError("entry point must name a module of hookimpls")
            )
        return module

    def _register(self, plugin: LoadedPlugin) -> None:
        if self.pm.is_registered(plugin.module):  # one module may serve several names
            return
        target = plugin.module.__name__
        try:
            self.pm.register(plugin.module, name=f"{plugin.kind.value}:{plugin.name}")
            self.pm.check_pending()
        # Not only PluginValidationError: register() replays historic hooks (pyd_configure)
        # into the new plugin, and an exception there is that plugin's failure too.
        except Exception as exc:
            if self.pm.is_registered(plugin.module):
                self.pm.unregister(plugin.module)
            raise PluginLoadError(plugin.kind.value, plugin.name, target, exc) from exc

    # -- driver construction ------------------------------------------------------------

    def init_driver(self, kind: Kind, name: str, **kwargs: Any) -> Any:
        """Load ``(kind, name)`` and call its init hook with ``name`` and ``kwargs``.

        Only the selected module can answer. ``None`` from it, or an exception, becomes a
        ``PluginLoadError`` naming the plugin; ``NotSupported`` and other ``PydError``s pass
        through (they already say what is wrong).
        """
        key = (kind, name)
        if key in self.drivers:
            return self.drivers[key]
        plugin = self.load(kind, name)
        hook_name = kind.init_hook
        assert hook_name is not None, f"{kind} has no init hook"
        others = [p for p in self.pm.get_plugins() if p is not plugin.module]
        caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
        try:
            driver = caller(name=name, **kwargs)
        except PydError as exc:
            self.failures[key] = exc
            raise
        except Exception as exc:
            err = PluginLoadError(kind.value, name, plugin.module.__name__, exc)
            self.failures[key] = err
            raise err from exc
        if driver is None:
            err = PluginLoadError(
                kind.value,
                name,
                plugin.module.__name__,
                LookupError(f"{hook_name} returned None for the name it is installed under"),
            )
            self.failures[key] = err
            raise err
        self.drivers[key] = driver
        return driver

    def try_init_driver(self, kind: Kind, name: str, **kwargs: Any) -> Any | None:
        try:
            return self.init_driver(kind, name, **kwargs)
        except NotSupported as exc:
            log.info("%s", exc, extra={"plugin": f"{kind.value}:{name}"})
        except PydError as exc:
            log.warning("%s", exc, extra={"plugin": f"{kind.value}:{name}"})
        return None

    # -- broadcast hooks ------------------------------------------------------------------

    def broadcast(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call every implementation of a broadcast hook (``pyd_event``, ``pyd_info``,
        ``pyd_daemon_shutdown``, ...) in pluggy's order, isolating failures: an exception in
        one plugin is logged with the plugin's name and does not stop the others. Returns the
        non-None results. (A plain ``pm.hook.X()`` call stops at the first exception.)
        """
        results: list[Any] = []
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            if impl.hookwrapper or impl.wrapper:
                continue
            try:
                result = impl.function(*[kwargs[arg] for arg in impl.argnames])
            except Exception:
                log.exception("%s failed", hook_name, extra={"plugin": impl.plugin_name})
                continue
            if result is not None:
                results.append(result)
        return results

    # -- reporting ------------------------------------------------------------------------

    def status(self, installed: Iterable[InstalledPlugin] | None = None) -> list[dict[str, str]]:
        """One row per installed plugin for ``pyd plugin ls`` / ``GET /plugins``:
        kind, name, dist, version, state (``loaded``, ``failed``, ``installed``), error.
        ``installed``: a ``list_installed()`` result the caller already has (it costs a scan)."""
        rows = []
        for p in list_installed() if installed is None else installed:
            key = (p.kind, p.name)
            if key in self.failures:
                state, error = "failed", str(self.failures[key])
            elif key in self.loaded:
                state, error = "loaded", ""
            else:
                state, error = "installed", ""
            rows.append(
                {
                    "kind": p.kind.value,
                    "name": p.name,
                    "dist": p.dist,
                    "version": p.version,
                    "target": p.target,
                    "state": state,
                    "error": error,
                }
            )
        return rows

    def home(self, root: Path, kind: Kind, name: str) -> Path:
        """The state directory the core gives a driver: ``<root>/<kind>/<name>``."""
        path = root / kind.value / name
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path
