"""``/containers/*``: HTTP <-> ``ContainerService`` (``request.app[ENGINE].containers``).

Wire details from the traces: create answers 201 with ``Warnings: []``; start/stop of a
container already in that state answer 304 with no body; ``wait`` flushes its headers at once
and sends the result as one chunk; attach answers the exact ``101 UPGRADED`` bytes and may
come before the start; logs have no Content-Type and use 8-byte frames unless the container
has a TTY.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

from aiohttp import web

from pyd.errors import InvalidParameter, NotFound
from pyd.server.app import ENGINE
from pyd.server.hijack import finished, hijack
from pyd.server.http import (
    client_gone,
    json_response,
    open_stream,
    parse_filters,
    query_bool,
    stream_chunks,
    query_int,
    read_json,
    write_json,
)

GONE_POLL = 0.5  # how often a long wait checks that its client is still connected
_HEADER = struct.Struct(">BxxxI")
_STREAMS = {"stdin": 0, "stdout": 1, "stderr": 2}


def _svc(request: web.Request) -> Any:
    svc = getattr(request.app[ENGINE], "containers", None)
    if svc is None:
        raise NotFound("the container service is not available")
    return svc


def _id(request: web.Request) -> str:
    return request.match_info["id"]


def _timeout(request: web.Request) -> int | None:
    raw = request.query.get("t")
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidParameter(f"invalid value for t: {raw!r} is not an integer") from None


async def create(request: web.Request) -> web.Response:
    body = await read_json(request, required=True)
    if not isinstance(body, dict):
        raise InvalidParameter("invalid create body: expected a JSON object")
    result = await _svc(request).create(request.query.get("name", ""), body)
    return json_response(result, status=201)


async def list_containers(request: web.Request) -> web.Response:
    rows = await _svc(request).list(
        all=query_bool(request, "all"),
        limit=query_int(request, "limit", -1),
        size=query_bool(request, "size"),
        filters=parse_filters(request.query.get("filters")),
    )
    return json_response(rows)


async def inspect(request: web.Request) -> web.Response:
    return json_response(await _svc(request).inspect(_id(request), size=query_bool(request, "size")))


async def start(request: web.Request) -> web.Response:
    await _svc(request).start(_id(request))
    return web.Response(status=204)


async def stop(request: web.Request) -> web.Response:
    await _svc(request).stop(_id(request), _timeout(request))
    return web.Response(status=204)


async def restart(request: web.Request) -> web.Response:
    await _svc(request).restart(_id(request), _timeout(request))
    return web.Response(status=204)


async def kill(request: web.Request) -> web.Response:
    await _svc(request).kill(_id(request), request.query.get("signal") or None)
    return web.Response(status=204)


async def pause(request: web.Request) -> web.Response:
    await _svc(request).pause(_id(request))
    return web.Response(status=204)


async def unpause(request: web.Request) -> web.Response:
    await _svc(request).unpause(_id(request))
    return web.Response(status=204)


async def rename(request: web.Request) -> web.Response:
    await _svc(request).rename(_id(request), request.query.get("name", ""))
    return web.Response(status=204)


async def remove(request: web.Request) -> web.Response:
    await _svc(request).remove(
        _id(request), force=query_bool(request, "force"), volumes=query_bool(request, "v")
    )
    return web.Response(status=204)


async def prune(request: web.Request) -> web.Response:
    return json_response(await _svc(request).prune(parse_filters(request.query.get("filters"))))


async def wait_gone(request: web.Request, fut: asyncio.Future[Any]) -> bool:
    """Wait for ``fut``; False if the client went away first (the future is then cancelled)."""
    while not fut.done():
        await asyncio.wait({fut}, timeout=GONE_POLL)
        if not fut.done() and client_gone(request):
            fut.cancel()
            return False
    return True


async def wait(request: web.Request) -> web.StreamResponse:
    fut = _svc(request).wait_future(_id(request), request.query.get("condition", ""))
    resp = await open_stream(request)  # the CLI sends start only after these headers
    if not await wait_gone(request, fut):
        return resp
    result = fut.result()
    error = {"Message": result.error} if result.error else None
    try:
        await write_json(resp, {"Error": error, "StatusCode": result.status_code})
        await resp.write_eof()
    except ConnectionResetError:  # the client left in the meantime (``run -d`` drops its wait)
        pass
    return resp


async def resize(request: web.Request) -> web.Response:
    await _svc(request).resize(_id(request), query_int(request, "h", 0), query_int(request, "w", 0))
    return web.Response(status=200, body=b"")


async def attach(request: web.Request) -> web.StreamResponse:
    svc = _svc(request)
    c = svc.get(_id(request))  # 404 before the connection is taken over
    opts = {name: query_bool(request, name) for name in ("stream", "stdin", "stdout", "stderr", "logs")}
    conn = hijack(request)
    try:
        await svc.attach(c.id, conn, **opts)
    finally:
        conn.close()
    return finished()


def _frame(stream: str, data: bytes, tty: bool) -> bytes:
    if tty:
        return data
    return _HEADER.pack(_STREAMS.get(stream, 1), len(data)) + data


async def logs(request: web.Request) -> web.StreamResponse:
    svc = _svc(request)
    q = request.query
    stdout, stderr = query_bool(request, "stdout"), query_bool(request, "stderr")
    if not (stdout or stderr):
        raise InvalidParameter("Bad parameters: you must choose at least one stream")
    tail_raw = q.get("tail", "all") or "all"
    if tail_raw == "all":
        tail = -1
    else:
        try:
            tail = int(tail_raw)
        except ValueError:
            raise InvalidParameter(f"invalid value for tail: {tail_raw!r}") from None
    from pyd.engine.events import parse_timestamp

    now = time.time()
    since = parse_timestamp(q["since"], now=now, name="since") if q.get("since") else 0
    until = parse_timestamp(q["until"], now=now, name="until") if q.get("until") else 0
    follow = query_bool(request, "follow")
    timestamps = query_bool(request, "timestamps")
    reader = await svc.logs(_id(request), tail=tail, since=since, until=until, follow=follow)
    streams = {s for s, on in (("stdout", stdout), ("stderr", stderr)) if on}
    resp = await open_stream(request, content_type=None)  # dockerd sends no Content-Type here
    from pyd.engine.container_state import format_time

    watchdog = asyncio.ensure_future(_cancel_when_gone(request, reader))
    try:
        async for msg in reader:
            if msg.stream not in streams:
                continue
            data = msg.line
            if timestamps:
                data = format_time(msg.time_nano, fixed=True).encode() + b" " + data
            await resp.write(_frame(msg.stream, data, reader.tty))
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client left (docker logs -f interrupted): not an error
    finally:
        watchdog.cancel()
        reader.cancel()
    return resp


async def _cancel_when_gone(request: web.Request, reader: Any) -> None:
    """A follow on a quiet container would notice a departed client only at its next write."""
    while not client_gone(request):
        await asyncio.sleep(GONE_POLL * 2)
    reader.cancel()


async def top(request: web.Request) -> web.Response:
    return json_response(await _svc(request).top(_id(request), request.query.get("ps_args", "")))


async def stats(request: web.Request) -> web.StreamResponse:
    svc = _svc(request)
    stream = query_bool(request, "stream", True)
    one_shot = query_bool(request, "one-shot", False)
    samples = svc.stats(_id(request), stream=stream, one_shot=one_shot)
    first = await samples.__anext__()
    if not stream:
        await samples.aclose()
        return json_response(first)
    resp = await open_stream(request, content_type=None)
    try:
        await write_json(resp, first)
        async for sample in samples:
            if client_gone(request):
                break
            await write_json(resp, sample)
    finally:
        await samples.aclose()
    await resp.write_eof()
    return resp


async def changes(request: web.Request) -> web.Response:
    return json_response(await _svc(request).changes(_id(request)))


async def export(request: web.Request) -> web.StreamResponse:
    svc = _svc(request)
    chunks = await svc.export(_id(request))
    return await stream_chunks(request, chunks)


async def archive_head(request: web.Request) -> web.Response:
    stat = await _svc(request).path_stat(_id(request), _path(request))
    return web.Response(status=200, headers={"X-Docker-Container-Path-Stat": stat})


async def archive_get(request: web.Request) -> web.StreamResponse:
    stat, chunks = await _svc(request).archive(_id(request), _path(request))
    return await stream_chunks(
        request, chunks, content_type="application/x-tar", headers={"X-Docker-Container-Path-Stat": stat}
    )


async def archive_put(request: web.Request) -> web.Response:
    await _svc(request).extract(
        _id(request),
        _path(request),
        request.content,
        no_overwrite_dir_non_dir=query_bool(request, "noOverwriteDirNonDir"),
    )
    return web.Response(status=200, body=b"")


def _path(request: web.Request) -> str:
    path = request.query.get("path", "")
    if not path:
        raise InvalidParameter("Bad parameter: path cannot be empty")
    return path


async def _restore(app: web.Application) -> None:
    svc = getattr(app[ENGINE], "containers", None)
    if svc is not None:
        await svc.restore()


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/containers/create", create)
    r.add_get("/containers/json", list_containers)
    r.add_post("/containers/prune", prune)
    r.add_get("/containers/{id}/json", inspect)
    r.add_post("/containers/{id}/start", start)
    r.add_post("/containers/{id}/stop", stop)
    r.add_post("/containers/{id}/restart", restart)
    r.add_post("/containers/{id}/kill", kill)
    r.add_post("/containers/{id}/pause", pause)
    r.add_post("/containers/{id}/unpause", unpause)
    r.add_post("/containers/{id}/rename", rename)
    r.add_post("/containers/{id}/wait", wait)
    r.add_post("/containers/{id}/resize", resize)
    r.add_post("/containers/{id}/attach", attach)
    r.add_get("/containers/{id}/logs", logs)
    r.add_get("/containers/{id}/top", top)
    r.add_get("/containers/{id}/stats", stats)
    r.add_get("/containers/{id}/changes", changes)
    r.add_get("/containers/{id}/export", export)
    r.add_route("HEAD", "/containers/{id}/archive", archive_head)
    r.add_get("/containers/{id}/archive", archive_get, allow_head=False)
    r.add_put("/containers/{id}/archive", archive_put)
    r.add_delete("/containers/{id}", remove)
    # Containers are restored (live-restore) before the listeners open.
    app.on_startup.append(_restore)
