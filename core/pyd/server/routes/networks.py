"""``/networks/*``: HTTP <-> ``NetworkService`` (``request.app[ENGINE].networks``).

Wire details from the traces: create answers 201 ``{"Id": ..., "Warning": ""}``; delete 204;
connect and disconnect 200 with an empty body; ``rm`` of a network in use is 403 with
Docker's message; the list is an array of full network objects.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pyd.errors import InvalidParameter, NotFound
from pyd.server.app import ENGINE
from pyd.server.http import json_response, query_bool, query_filters, read_json


def _svc(request: web.Request) -> Any:
    svc = getattr(request.app[ENGINE], "networks", None)
    if svc is None:
        raise NotFound("the network service is not available")
    return svc


def _id(request: web.Request) -> str:
    return request.match_info["id"]


async def list_networks(request: web.Request) -> web.Response:
    return json_response(await _svc(request).list(query_filters(request)))


async def inspect(request: web.Request) -> web.Response:
    query_bool(request, "verbose")  # accepted (swarm detail); nothing more to show locally
    return json_response(await _svc(request).inspect(_id(request)))


async def create(request: web.Request) -> web.Response:
    body = await read_json(request, required=True)
    if not isinstance(body, dict):
        raise InvalidParameter("invalid network create body: expected a JSON object")
    return json_response(await _svc(request).create(body), status=201)


async def remove(request: web.Request) -> web.Response:
    await _svc(request).remove(_id(request))
    return web.Response(status=204)


def _container_of(body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("Container"), str) or not body["Container"]:
        raise InvalidParameter("Container is required: the name or ID of the container")
    return body["Container"]


async def connect(request: web.Request) -> web.Response:
    body = await read_json(request, required=True)
    container = _container_of(body)
    cfg = body.get("EndpointConfig")
    if cfg is not None and not isinstance(cfg, dict):
        raise InvalidParameter("invalid EndpointConfig: expected an object")
    await _svc(request).connect(_id(request), container, cfg)
    return web.Response(status=200, body=b"")


async def disconnect(request: web.Request) -> web.Response:
    body = await read_json(request, required=True)
    await _svc(request).disconnect(_id(request), _container_of(body), bool(body.get("Force")))
    return web.Response(status=200, body=b"")


async def prune(request: web.Request) -> web.Response:
    return json_response(await _svc(request).prune(query_filters(request)))


async def _start(app: web.Application) -> None:
    svc = getattr(app[ENGINE], "networks", None)
    if svc is not None:
        await svc.start()


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/networks", list_networks, allow_head=False)
    r.add_post("/networks/create", create)
    r.add_post("/networks/prune", prune)
    r.add_get("/networks/{id}", inspect, allow_head=False)
    r.add_delete("/networks/{id}", remove)
    r.add_post("/networks/{id}/connect", connect)
    r.add_post("/networks/{id}/disconnect", disconnect)
    # Networks come back before containers are restored (and restarted): first in line.
    app.on_startup.insert(0, _start)
