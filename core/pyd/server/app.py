"""``make_app(engine)``: the aiohttp application serving the Docker Engine API.

The engine hangs off the app (``request.app[ENGINE]``), never a module global.

Adding an API area (e.g. images) takes two steps:

1. write ``pyd/server/routes/images.py`` with ``def setup(app: web.Application) -> None``
   that adds unversioned routes (``app.router.add_get("/images/json", list_images)``); the
   ``/v1.41`` prefix, errors, authz and common headers are handled for it;
2. add ``"pyd.server.routes.images"`` to ``ROUTE_MODULES`` below.

A module listed here that does not exist (yet) is skipped with a warning; one that fails to
import stops the daemon with the import error.
"""

from __future__ import annotations

import importlib
import logging
from typing import Iterable

from aiohttp import web

from pyd.engine import Engine
from pyd.engine.authz import MAX_BODY
from pyd.server.middleware import VersionPrefixResource, on_response_prepare, pyd_middleware

log = logging.getLogger(__name__)

ENGINE = web.AppKey("engine", Engine)

ROUTE_MODULES: tuple[str, ...] = (
    "pyd.server.routes.system",
    "pyd.server.routes.images",
    "pyd.server.routes.volumes",  # before containers: their restore may mount volumes
    "pyd.server.routes.containers",
    "pyd.server.routes.commit",
    "pyd.server.routes.exec",
    "pyd.server.routes.networks",
)


async def _end_streams(app: web.Application) -> None:
    # on_shutdown runs once the listeners are closed: end /events streams so their
    # connections finish instead of holding the shutdown up.
    app[ENGINE].events.close()


def make_app(engine: Engine, route_modules: Iterable[str] = ROUTE_MODULES) -> web.Application:
    app = web.Application(middlewares=[pyd_middleware], client_max_size=MAX_BODY)
    app[ENGINE] = engine
    # First, so that it is indexed before any route that could match "/" prefixes.
    app.router.register_resource(VersionPrefixResource(app.router))
    app.on_response_prepare.append(on_response_prepare)
    app.on_shutdown.append(_end_streams)
    for name in route_modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            log.warning("route module %s is listed but not installed; its endpoints answer 404", name)
            continue
        module.setup(app)
    return app
