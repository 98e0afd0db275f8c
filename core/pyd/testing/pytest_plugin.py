"""pytest plugin shipped with pyd (entry point ``pytest11: pyd``): fixtures for conformance suites.

Installed with the core, so every test session that has pyd installed gets these fixtures; a
plugin's tests need no conftest.py to run a suite::

    from pyd.testing.logdriver import LogDriverSuite

    class TestMyLog(LogDriverSuite):
        driver_name = "my-log"
        good_options = {"path": "/tmp"}
        bad_options = [{"nope": "x"}]

Fixtures (all function-scoped, nothing shared between tests):

``pyd_registry``
    A fresh ``pyd.registry.PluginRegistry``: nothing loaded, drivers cached per registry.
``pyd_registry_factory``
    Call it to get another fresh registry, e.g. to model a daemon restart over the same home.
``pyd_home``
    An empty directory (mode 0700) to give a driver as its ``home``, as the core does
    (``<data-root>/<kind>/<name>``).
``pyd_log_context``
    Call it to get a ``pyd.drivers.log.LogContext`` for a new container: unique 64-hex ID,
    name, labels/env you pass, and its own empty ``log_dir``.

Defined in their own modules and re-exported here:

``pyd_daemon`` (``pyd.testing.daemon``)
    A factory of real ``pyd daemon`` processes with private data-root and socket.
``pyd_test_images``, ``pyd_image_graph_driver`` (``pyd.testing.images``)
    Test image tarballs, and a graph driver for image/layer store tests.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest

from pyd.testing.daemon import pyd_daemon  # noqa: F401  (fixture: a real `pyd daemon` process)
from pyd.testing.images import pyd_image_graph_driver, pyd_test_images  # noqa: F401  (fixtures: test images)

if TYPE_CHECKING:
    from pyd.drivers.log import LogContext
    from pyd.registry import PluginRegistry


@pytest.fixture
def pyd_registry() -> Iterator[PluginRegistry]:
    """A fresh plugin registry (nothing loaded yet)."""
    from pyd.registry import PluginRegistry

    yield PluginRegistry()


@pytest.fixture
def pyd_registry_factory() -> Callable[[], PluginRegistry]:
    """A callable returning a new, independent registry each time (a "restarted daemon")."""
    from pyd.registry import PluginRegistry

    return PluginRegistry


@pytest.fixture
def pyd_home(tmp_path: Path) -> Path:
    """An empty directory owned by the driver under test."""
    home = tmp_path / "driver-home"
    home.mkdir(mode=0o700)
    return home


@pytest.fixture
def pyd_log_context(tmp_path: Path) -> Callable[..., LogContext]:
    """Factory of ``LogContext`` objects, each a new container with its own ``log_dir``."""
    from pyd.drivers.log import LogContext

    def make(**fields: Any) -> LogContext:
        cid = fields.pop("container_id", None) or secrets.token_hex(32)
        log_dir = tmp_path / "containers" / cid
        log_dir.mkdir(parents=True, exist_ok=True)
        fields.setdefault("container_name", f"test-{cid[:8]}")
        fields.setdefault("image", "busybox:latest")
        fields.setdefault("log_dir", str(log_dir))
        return LogContext(container_id=cid, **fields)

    return make
