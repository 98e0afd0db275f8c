"""Exec endpoints: ``POST /containers/{id}/exec``, ``POST /exec/{id}/start`` (hijacked),
``GET /exec/{id}/json``, ``POST /exec/{id}/resize``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

import pyd
from pyd.errors import InvalidParameter, NotFound
from pyd.server.app import ENGINE
from pyd.server.hijack import finished, hijack
from pyd.server.http import json_response, query_int, read_json

# The exec start reply carries dockerd's usual headers after the three upgrade ones (§1.5).
_EXEC_HEADERS = {
    "Api-Version": pyd.API_VERSION,
    "Docker-Experimental": "false",
    "Ostype": "linux",
    "Server": f"pyd/{pyd.__version__} (linux)",
}


def _execs(request: web.Request) -> Any:
    svc = getattr(request.app[ENGINE], "containers", None)
    execs = getattr(svc, "execs", None)
    if execs is None:
        raise NotFound("the container service is not available")
    return execs


async def create(request: web.Request) -> web.Response:
    body = await read_json(request, required=True)
    if not isinstance(body, dict):
        raise InvalidParameter("invalid exec body: expected a JSON object")
    eid = _execs(request).create(request.match_info["id"], body)
    return json_response({"Id": eid}, status=201)


async def start(request: web.Request) -> web.StreamResponse:
    execs = _execs(request)
    body = await read_json(request) or {}
    if not isinstance(body, dict):
        raise InvalidParameter("invalid exec start body: expected a JSON object")
    eid = request.match_info["id"]
    execs.get(eid)  # 404 before the connection is taken over
    detach = bool(body.get("Detach"))
    tty = body.get("Tty")
    if detach:
        await execs.start(eid, detach=True, tty=tty, client=None)
        return web.Response(status=200, body=b"")
    conn = hijack(request, _EXEC_HEADERS)
    try:
        await execs.start(eid, detach=False, tty=tty, client=conn)
    except Exception as exc:  # after the 101 the only way to tell the client is the stream
        message = getattr(exc, "message", None) or str(exc)
        try:
            await conn.write(f"Error: {message}\r\n".encode() if tty else _error_frame(message))
        except (ConnectionError, OSError):
            pass
    finally:
        conn.close()
    return finished()


def _error_frame(message: str) -> bytes:
    data = f"{message}\n".encode()
    return bytes([2, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


async def inspect(request: web.Request) -> web.Response:
    return json_response(_execs(request).inspect(request.match_info["id"]))


async def resize(request: web.Request) -> web.Response:
    await _execs(request).resize(request.match_info["id"], query_int(request, "h", 0), query_int(request, "w", 0))
    return web.Response(status=200, body=b"")


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/containers/{id}/exec", create)
    r.add_post("/exec/{id}/start", start)
    r.add_get("/exec/{id}/json", inspect)
    r.add_post("/exec/{id}/resize", resize)
