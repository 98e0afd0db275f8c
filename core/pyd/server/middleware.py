"""What every request passes through, in order:

1. ``VersionPrefixResource`` (routing): ``/v1.41/containers/json`` is routed as
   ``/containers/json``, so route modules register unversioned paths only.
2. ``pyd_middleware``: the version check (too new -> 400 JSON, too old -> 400 plain text, as
   dockerd), the authorization chain (request, then response), and the one place where
   errors become HTTP: ``pyd.errors`` classes -> their status + ``{"message": ...}``; unknown
   route or wrong method -> 404 ``page not found``; anything else -> 500 with a message
   (the traceback goes to the log, never to the client).
3. ``on_response_prepare``: the headers dockerd sends on every response (``Api-Version``,
   ``Docker-Experimental``, ``Ostype``, ``Server``), and the response check of the authz
   chain for streamed responses (their body is not available, so plugins see ``None``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
from typing import Any, Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractMatchInfo
from aiohttp.web_urldispatcher import AbstractResource

import pyd
from pyd.drivers.authz import AuthzRequest, AuthzResponse
from pyd.errors import NotModified, PydError
from pyd.server.http import STREAM_KEY, error_response, request_key

log = logging.getLogger(__name__)

API_VERSION_KEY = request_key("pyd.api_version", str)
_AUTHZ_REQ_KEY = request_key("pyd.authz_request", AuthzRequest)
_AUTHZ_DONE_KEY = request_key("pyd.authz_response_done", bool)

VERSION_PREFIX = re.compile(r"^/v([0-9]+(?:\.[0-9]+)*)(/.*)$")
# Bodies shown to authorization plugins (in full, or the request is refused): JSON, and
# bodies without a Content-Type, which handlers also parse as JSON (``read_json`` accepts no
# Content-Type, as dockerd does). Any other body is an upload stream (a tar, an import with
# text/plain) that no handler reads as JSON: plugins see ``None``, as in moby.
_SHOWN_CONTENT_TYPES = frozenset({"", "application/json"})
_HEADERS = {
    "Api-Version": pyd.API_VERSION,
    "Docker-Experimental": "false",
    "Ostype": "linux",
    "Server": f"pyd/{pyd.__version__} (linux)",
}


def _vtuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


class VersionPrefixResource(AbstractResource):
    """Routes ``/vX.Y/<path>`` as ``/<path>``.

    Registered first and indexed under ``/``, so the router only consults it for paths that
    no unversioned route claimed; it re-resolves the stripped path with the same router.
    The handler still receives the original request (``request.path`` keeps the prefix).
    """

    def __init__(self, router: web.UrlDispatcher) -> None:
        super().__init__(name=None)
        self._router = router

    @property
    def canonical(self) -> str:
        return "/"

    def url_for(self, **kwargs: str) -> Any:
        raise RuntimeError("the version prefix resource has no URL")

    def add_prefix(self, prefix: str) -> None:
        raise RuntimeError("the version prefix resource cannot be used in a sub-application")

    def get_info(self) -> dict[str, Any]:
        return {"prefix": "/v{version}"}

    def raw_match(self, path: str) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Any:
        return iter(())

    async def resolve(self, request: web.Request) -> tuple[AbstractMatchInfo | None, set[str]]:
        # The raw (still percent-encoded) path, so "%2F" inside a name stays one segment,
        # exactly as for an unversioned request.
        m = VERSION_PREFIX.match(request.rel_url.raw_path)
        if m is None:
            return None, set()
        inner = request.clone(rel_url=request.rel_url.with_path(m.group(2), encoded=True, keep_query=True))
        match = await self._router.resolve(inner)
        return match, set()


def _version_error(request: web.Request) -> web.Response | None:
    m = VERSION_PREFIX.match(request.path)
    if m is None:
        request[API_VERSION_KEY] = pyd.API_VERSION
        return None
    version = m.group(1)
    try:
        asked = _vtuple(version)
    except ValueError:
        return error_response(400, f"invalid API version {version!r}")
    if asked > _vtuple(pyd.API_VERSION):
        return error_response(
            400, f"client version {version} is too new. Maximum supported API version is {pyd.API_VERSION}"
        )
    if asked < _vtuple(pyd.MIN_API_VERSION):
        # dockerd answers this one as plain text (http.Error), unlike every other error
        resp = web.Response(
            status=400,
            text=(
                f"client version {version} is too old. Minimum supported API version is "
                f"{pyd.MIN_API_VERSION}, please upgrade your client to a newer version\n"
            ),
            content_type="text/plain",
            charset="utf-8",
        )
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp
    request[API_VERSION_KEY] = version
    return None


# -- identity of the caller ---------------------------------------------------------------------

_UCRED = struct.Struct("3i")


def peer_identity(request: web.Request) -> tuple[str, int | None, int | None]:
    """(user, uid, gid): ``"uid:gid"`` from SO_PEERCRED on a unix socket; the client
    certificate's CN on TLS; ``""`` when unknown."""
    transport = request.transport
    if transport is None:
        return "", None, None
    if transport.get_extra_info("ssl_object") is not None:
        cert = transport.get_extra_info("peercert") or {}
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return value, None, None
        return "", None, None
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        except OSError:
            return "", None, None
        _pid, uid, gid = _UCRED.unpack(raw)
        return f"{uid}:{gid}", uid, gid
    return "", None, None


async def _authz_request(request: web.Request) -> AuthzRequest:
    from pyd.server.app import ENGINE

    chain = request.app[ENGINE].authz
    body: bytes | None = None
    mime = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if request.body_exists and mime in _SHOWN_CONTENT_TYPES:
        # Shown in full or refused: never truncated.
        chain.check_body_size(request.content_length)
        try:
            body = await request.read()  # cached: the handler reads the same bytes
        except web.HTTPRequestEntityTooLarge:  # chunked, so its size was not known up front
            raise chain.body_too_large(None) from None
    elif not request.body_exists:
        body = b""
    user, uid, gid = peer_identity(request)
    return AuthzRequest(
        user=user,
        uid=uid,
        gid=gid,
        method=request.method,
        uri=str(request.rel_url),
        headers=dict(request.headers),
        body=body,
    )


@web.middleware
async def pyd_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    from pyd.server.app import ENGINE

    try:
        early = _version_error(request)
        if early is not None:
            return early
        chain = request.app[ENGINE].authz
        if chain:
            areq = await _authz_request(request)
            await chain.check_request(areq)
            request[_AUTHZ_REQ_KEY] = areq
        resp = await handler(request)
        if chain and not request.get(_AUTHZ_DONE_KEY) and isinstance(resp, web.Response) and not resp.prepared:
            request[_AUTHZ_DONE_KEY] = True
            body = resp.body if isinstance(resp.body, bytes) else None
            await chain.check_response(
                request[_AUTHZ_REQ_KEY], AuthzResponse(status=resp.status, headers=dict(resp.headers), body=body)
            )
        return resp
    except asyncio.CancelledError:
        raise
    except NotModified:
        return error_response(304, "")
    except PydError as exc:
        return _after_stream(request, exc) or error_response(exc.status, exc.message)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        return error_response(404, "page not found")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else exc.reason)
    except ConnectionResetError:
        log.debug("client went away: %s %s", request.method, request.path)
        raise
    except Exception as exc:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return _after_stream(request, exc) or error_response(
            500, f"internal error: {type(exc).__name__}: {exc}" if str(exc) else f"internal error: {type(exc).__name__}"
        )


def _after_stream(request: web.Request, exc: BaseException) -> web.StreamResponse | None:
    """Once a streamed response sent its headers, an error cannot become an error response:
    log it and end the stream (the client sees it end)."""
    resp = request.get(STREAM_KEY)
    if resp is None:
        return None
    log.warning("error after the response started, ending the stream: %s %s: %s", request.method, request.path, exc)
    return resp


async def authorize_stream(request: web.Request, response: web.StreamResponse) -> None:
    """The authz response check for a streamed response, before its headers are prepared
    (plugins see ``body=None``). Raises ``Forbidden``. ``open_stream`` calls it."""
    from pyd.server.app import ENGINE

    chain = request.app[ENGINE].authz
    areq = request.get(_AUTHZ_REQ_KEY)
    if not chain or areq is None or request.get(_AUTHZ_DONE_KEY):
        return
    request[_AUTHZ_DONE_KEY] = True
    headers = dict(response.headers)
    if response.content_type and "Content-Type" not in headers:
        headers["Content-Type"] = response.content_type
    await chain.check_response(areq, AuthzResponse(status=response.status, headers=headers, body=None))


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Common headers on every response. Backstop for a streamed response that did not
    start through ``open_stream``: its authz check runs here, where aiohttp has already
    committed to the stream's framing, so a denial drops the connection (fail closed)
    instead of answering 403."""
    for key, value in _HEADERS.items():
        response.headers[key] = value
    if isinstance(response, web.Response) or request.get(_AUTHZ_DONE_KEY) or request.get(_AUTHZ_REQ_KEY) is None:
        return
    try:
        await authorize_stream(request, response)
    except PydError as exc:
        log.warning("%s (%s %s): closing the connection", exc, request.method, request.path)
        if request.transport is not None:
            request.transport.close()
        raise ConnectionResetError(str(exc)) from exc
