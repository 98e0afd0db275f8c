"""System endpoints: ``/_ping``, ``/version``, ``/info``, ``/events``, ``/system/df``."""

from __future__ import annotations

import platform
import time
from typing import Any

from aiohttp import web

import pyd
from pyd.engine.events import parse_timestamp
from pyd.errors import InvalidParameter
from pyd.server.app import ENGINE
from pyd.server.http import client_gone, json_response, open_stream, parse_filters, write_json

_PING_HEADERS = {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache"}
# Go's GOARCH names, which Docker clients expect in /version
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x"}
# How often an idle /events stream checks whether its client is still there
EVENTS_POLL = 2.0


async def ping(request: web.Request) -> web.Response:
    # The docker CLI sends HEAD /_ping before every command: keep it trivial.
    body = b"" if request.method == "HEAD" else b"OK"
    return web.Response(body=body, content_type="text/plain", charset="utf-8", headers=_PING_HEADERS)


def version_document() -> dict[str, Any]:
    arch = _GOARCH.get(platform.machine(), platform.machine())
    kernel = platform.release()
    details = {
        "ApiVersion": pyd.API_VERSION,
        "Arch": arch,
        "BuildTime": "",
        "Experimental": "false",  # a string here, as dockerd sends it
        "GitCommit": "",
        "GoVersion": f"python{platform.python_version()}",
        "KernelVersion": kernel,
        "MinAPIVersion": pyd.MIN_API_VERSION,
        "Os": "linux",
    }
    return {
        "Platform": {"Name": "pyd"},
        "Components": [
            {"Name": "Engine", "Version": pyd.__version__, "Details": details},
            {"Name": "pyd-plugin-api", "Version": pyd.PLUGIN_API_VERSION, "Details": {}},
        ],
        "Version": pyd.__version__,
        "ApiVersion": pyd.API_VERSION,
        "MinAPIVersion": pyd.MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": details["GoVersion"],
        "Os": "linux",
        "Arch": arch,
        "KernelVersion": kernel,
        "BuildTime": "",
    }


async def version(request: web.Request) -> web.Response:
    return json_response(version_document())


async def info(request: web.Request) -> web.Response:
    return json_response(await request.app[ENGINE].info())


async def events(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    query = request.query
    now = time.time()
    since = parse_timestamp(query["since"], now=now, name="since") if query.get("since") else 0
    until = parse_timestamp(query["until"], now=now, name="until") if query.get("until") else 0
    if since and until and since > until:
        raise InvalidParameter("`since` time cannot be after `until` time")
    sub = engine.events.subscribe(parse_filters(query.get("filters")), since_nano=since, until_nano=until)
    try:
        resp = await open_stream(request)  # headers go out now, before any event
        while True:
            try:
                event = await sub.next(EVENTS_POLL)
            except StopAsyncIteration:
                break
            if event is None:
                if client_gone(request):
                    break
                continue
            await write_json(resp, event.to_docker())
    finally:
        sub.close()
    await resp.write_eof()
    return resp


async def system_df(request: web.Request) -> web.Response:
    return json_response(await request.app[ENGINE].disk_usage())


def setup(app: web.Application) -> None:
    app.router.add_route("GET", "/_ping", ping)
    app.router.add_route("HEAD", "/_ping", ping)
    app.router.add_get("/version", version, allow_head=False)
    app.router.add_get("/info", info, allow_head=False)
    app.router.add_get("/events", events, allow_head=False)
    app.router.add_get("/system/df", system_df, allow_head=False)
