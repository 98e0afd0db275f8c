"""Volume endpoints (``/volumes/...``): list, create, inspect, remove, prune, in the Docker
Engine API's shapes. Handlers translate HTTP to ``engine.volumes`` (a ``VolumeService``),
which runs driver calls in its own threads with deadlines."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pyd.engine.volumes import VolumeService
from pyd.errors import InvalidParameter, Unavailable
from pyd.server.app import ENGINE
from pyd.server.http import json_response, query_bool, query_filters, read_json


def _volumes(request: web.Request) -> VolumeService:
    svc = getattr(request.app[ENGINE], "volumes", None)
    if svc is None:
        raise Unavailable("the volume service is not running (see the daemon log)")
    return svc


async def list_volumes(request: web.Request) -> web.Response:
    volumes, warnings = await _volumes(request).list(query_filters(request))
    return json_response({"Volumes": volumes, "Warnings": warnings or None})


async def create_volume(request: web.Request) -> web.Response:
    body: Any = await read_json(request) or {}
    if not isinstance(body, dict):
        raise InvalidParameter("invalid volume create body: expected a JSON object")
    for key in ("Name", "Driver"):
        if not isinstance(body.get(key) or "", str):
            raise InvalidParameter(f"invalid volume create body: {key} must be a string")
    doc = await _volumes(request).create(
        body.get("Name") or "", body.get("Driver") or "", body.get("DriverOpts"), body.get("Labels")
    )
    return json_response(doc, status=201)


async def inspect_volume(request: web.Request) -> web.Response:
    return json_response(await _volumes(request).inspect(request.match_info["name"]))


async def remove_volume(request: web.Request) -> web.Response:
    await _volumes(request).remove(request.match_info["name"], force=query_bool(request, "force"))
    return web.Response(status=204)


async def prune_volumes(request: web.Request) -> web.Response:
    return json_response(await _volumes(request).prune(query_filters(request)))


async def _start(app: web.Application) -> None:
    # Before the listeners open: merge what the drivers list (bounded by the service).
    svc = getattr(app[ENGINE], "volumes", None)
    if svc is not None:
        await svc.start()


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/volumes", list_volumes, allow_head=False)
    r.add_post("/volumes/create", create_volume)
    r.add_post("/volumes/prune", prune_volumes)
    r.add_get("/volumes/{name}", inspect_volume, allow_head=False)
    r.add_delete("/volumes/{name}", remove_volume)
    app.on_startup.append(_start)
