"""Helpers for route handlers: Docker-shaped JSON in and out, streams, query parsing.

Handlers should only translate HTTP to service calls and back; these helpers keep the wire
details (Go-style JSON, ``\\n`` vs ``\\r\\n`` stream framing, flushing, Docker's error texts
for bad input) in one place.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterable, AsyncIterator, Mapping

from aiohttp import web

from pyd.errors import InvalidParameter



def request_key(name: str, t: type) -> Any:
    """A typed request-storage key (``web.RequestKey``, aiohttp >= 3.12), or the plain name."""
    factory = getattr(web, "RequestKey", None)
    return factory(name, t) if factory is not None else name


# Set on the request once a streamed response has sent its headers: from then on an error
# can no longer become an error response (the middleware only logs it).
STREAM_KEY = request_key("pyd.stream", web.StreamResponse)

_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def dumps(obj: Any) -> str:
    """JSON as Go's ``json.Encoder`` writes it (compact, HTML characters escaped), no newline."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).translate(_GO_ESCAPES)


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON reply ending in ``\\n``, as dockerd sends them."""
    return web.Response(
        body=(dumps(obj) + "\n").encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(status: int, message: str) -> web.Response:
    """Docker's error shape: ``{"message": "..."}`` + ``\\n``; 304 has no body at all."""
    if status == 304:
        return web.Response(status=304)
    return json_response({"message": message}, status=status)


async def open_stream(
    request: web.Request,
    *,
    status: int = 200,
    content_type: str | None = "application/json",
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Start a chunked response and send its headers at once (clients such as the docker CLI
    wait for them before their next request: ``wait``, ``events``).

    Streaming handlers should start their response with this: it also runs the authz
    response check first (plugins see ``body=None``), so a denial is a proper 403."""
    from pyd.server.middleware import authorize_stream

    resp = web.StreamResponse(status=status, headers=headers)
    if content_type:
        resp.content_type = content_type
    await authorize_stream(request, resp)  # while a denial can still be a clean 403
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    request[STREAM_KEY] = resp
    return resp


async def stream_chunks(
    request: web.Request,
    chunks: AsyncIterator[bytes],
    *,
    content_type: str = "application/octet-stream",
    headers: Mapping[str, str] | None = None,
    first: bytes | None = None,
) -> web.StreamResponse:
    """Send ``chunks`` (``first`` before them, if given) as a chunked response and close the
    iterator whatever happens. A failure after the headers cuts the stream off without its
    final chunk, so no client takes a truncated archive for a whole one."""
    try:
        resp = await open_stream(request, content_type=content_type, headers=headers)
        if first is not None:
            await resp.write(first)
        async for chunk in chunks:
            await resp.write(chunk)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    await resp.write_eof()
    return resp


async def write_json(resp: web.StreamResponse, obj: Any, *, progress: bool = False) -> None:
    """One JSON message, flushed. ``progress=True`` ends it with ``\\r\\n`` (pull, push, load,
    build); otherwise ``\\n`` (events, stats, wait)."""
    # aiohttp hands each write to the transport at once: one message, one chunk, no buffering
    await resp.write((dumps(obj) + ("\r\n" if progress else "\n")).encode())


async def stream_json(
    request: web.Request,
    messages: AsyncIterable[Any],
    *,
    progress: bool = False,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Send every message of ``messages`` as its own flushed JSON line, then end the stream.

    For progress streams, an error raised by ``messages`` after the headers went out becomes
    Docker's last line ``{"errorDetail": {"message": ...}, "error": ...}``.
    """
    resp = await open_stream(request, headers=headers)
    try:
        async for msg in messages:
            await write_json(resp, msg, progress=progress)
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as exc:
        if not progress:
            raise
        text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        await write_json(resp, {"errorDetail": {"message": text}, "error": text}, progress=True)
    await resp.write_eof()
    return resp


def client_gone(request: web.Request) -> bool:
    """True once the client closed its connection (for long streams that idle)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def read_json(request: web.Request, *, required: bool = False) -> Any:
    """The request body as JSON, with Docker's checks.

    A Content-Type other than ``application/json`` (none at all is accepted, as by dockerd)
    is refused with Docker's 400 ``Content-Type specified (X) must be 'application/json'``;
    an empty body gives None
    (or 400 when ``required``); malformed JSON is a 400 naming the problem.
    """
    ctype = request.headers.get("Content-Type", "")
    if ctype and ctype.split(";", 1)[0].strip().lower() != "application/json":
        raise InvalidParameter(f"Content-Type specified ({ctype}) must be 'application/json'")
    raw = await request.read() if request.body_exists else b""
    if not raw.strip():
        if required:
            raise InvalidParameter("request body is empty; expected a JSON object")
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidParameter(f"invalid JSON in request body: {exc}") from None


def parse_filters(raw: str | None) -> dict[str, list[str]]:
    """Docker's ``filters`` query parameter in either encoding: the CLI's map of bools
    ``{"label": {"a=b": true}}`` or docker-py's lists ``{"label": ["a=b"]}``.

    Returns ``{key: [values]}``; malformed input is a 400.
    """
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise InvalidParameter(f"invalid filters: {raw!r} is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidParameter("invalid filters: expected a JSON object")
    out: dict[str, list[str]] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out[key] = [str(v) for v, on in value.items() if on]
        elif isinstance(value, list):
            out[key] = [str(v) for v in value]
        elif isinstance(value, str):
            out[key] = [value]
        else:
            raise InvalidParameter(f"invalid filter {key!r}: expected a list or a map of booleans")
    return out


def query_filters(request: web.Request) -> dict[str, list[str]]:
    """The request's ``filters`` query parameter, parsed by ``parse_filters`` (``{}`` when absent)."""
    return parse_filters(request.query.get("filters"))


_TRUE = {"1", "true", "True", "TRUE", "t", "yes"}
_FALSE = {"0", "false", "False", "FALSE", "f", "no", ""}


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    """Docker's query booleans: ``1``/``0``, ``true``/``false`` and docker-py's ``True``/``False``."""
    value = request.query.get(name)
    if value is None:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidParameter(f"invalid value for {name}: {value!r} is not a boolean")


def query_int(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidParameter(f"invalid value for {name}: {value!r} is not an integer") from None
