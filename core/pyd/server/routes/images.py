"""Image endpoints (``/images/...``): list, inspect, history, tag, delete, prune, import,
load and save, in the Docker Engine API's shapes.

Handlers translate HTTP to ``engine.images`` (an ``ImageService``) calls, which block and run
in worker threads. Upload bodies (import, load) are handed to the service as a file-like
object that a task on the event loop fills ahead of the worker (``BodyReader``); streamed
replies (save, progress) are fed from the worker thread with backpressure. An error before
the first byte of a reply is an ordinary HTTP error; after it, a progress stream ends with
Docker's ``errorDetail`` line.

Routes take the image name as ``{name:.+}`` with the action as a fixed suffix, so a name with
slashes and colons (``127.0.0.1:5000/a/b:v1``) matches from the right.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import io
import threading
from typing import Any, AsyncIterator, Callable, Iterator

from aiohttp import web

from pyd.engine.images import ImageService
from pyd.errors import InvalidParameter, NotFound, NotSupported, Unavailable
from pyd.server.app import ENGINE
from pyd.server.http import (
    json_response,
    parse_filters,
    query_bool,
    stream_chunks,
    stream_json,
)

# Deadlines of calls that may reach the graph driver (inspect: metadata; delete: removal).
SHORT = 60.0
LONG = 600.0
_PUT_POLL = 0.5


def _images(request: web.Request) -> ImageService:
    svc = getattr(request.app[ENGINE], "images", None)
    if svc is None:
        raise Unavailable("no storage driver is loaded: images are unavailable (see the daemon log)")
    return svc


async def _call(fn: Callable[..., Any], *args: Any, timeout: float = SHORT, **kwargs: Any) -> Any:
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), timeout)
    except asyncio.TimeoutError:
        raise Unavailable(f"the image store did not answer within {timeout:g}s") from None


# -- bridges between the event loop and worker threads ------------------------------------------


class BodyReader(io.RawIOBase):
    """The request body as a blocking file object for a worker thread.

    A task on the event loop (``start``) reads the body as it arrives into a buffer of up to
    ``limit`` bytes, so the client keeps sending while the worker writes files, and a read
    takes everything buffered at once: data crosses threads without a hop per piece. Only
    a full buffer makes the task wait, until the worker has taken some. ``close`` (from any
    thread) stops the task; a read after it, or after the body failed, raises.
    """

    def __init__(self, request: web.Request, loop: asyncio.AbstractEventLoop, limit: int = 16 << 20) -> None:
        self._content = request.content
        self._loop = loop
        self._limit = limit
        self._cond = threading.Condition()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._space = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start receiving (call on the event loop)."""
        self._task = self._loop.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            while True:
                data = await self._content.readany()
                with self._cond:
                    if self._eof:  # closed
                        return
                    if data:
                        self._chunks.append(data)
                        self._size += len(data)
                    else:
                        self._eof = True
                    self._cond.notify_all()
                if not data:
                    return
                while True:
                    with self._cond:
                        if self._size < self._limit or self._eof:
                            break
                        self._space.clear()
                    await self._space.wait()
        except BaseException as exc:  # the client went away, a bad chunk, cancellation
            with self._cond:
                if not self._eof:
                    self._error = exc if isinstance(exc, Exception) else ConnectionResetError("upload cancelled")
                    self._eof = True
                self._cond.notify_all()
            if not isinstance(exc, Exception):
                raise

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        with self._cond:
            while not self._chunks and not self._eof:
                self._cond.wait()
            if not self._chunks:
                if self._error is not None:
                    raise self._error
                return b""
            was_full = self._size >= self._limit
            if n is None or n < 0:
                out = b"".join(self._chunks)
                self._chunks.clear()
            else:
                first = self._chunks[0]
                if len(first) >= n:  # one piece (a part of it)
                    out = first[:n] if len(first) > n else self._chunks.popleft()
                    if len(first) > n:
                        self._chunks[0] = first[n:]
                else:  # as many whole pieces as fit
                    parts, have = [], 0
                    while self._chunks and have + len(self._chunks[0]) <= n:
                        piece = self._chunks.popleft()
                        parts.append(piece)
                        have += len(piece)
                    out = b"".join(parts)
            self._size -= len(out)
            if was_full and self._size < self._limit:
                self._loop.call_soon_threadsafe(self._space.set)
            return out

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        """Stop receiving; what is buffered is dropped (from any thread)."""
        if self.closed:
            return
        with self._cond:
            if not self._eof:
                self._eof = True
                self._error = ConnectionResetError("upload reader closed")
            self._chunks.clear()
            self._size = 0
            self._cond.notify_all()
        task = self._task
        if task is not None and not task.done():
            try:
                self._loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop is closed: so is the task
                pass
        super().close()


async def _iterate_in_thread(make: Callable[[], Iterator[bytes]], depth: int = 8) -> AsyncIterator[bytes]:
    """Run the iterator ``make()`` in a worker thread and yield its items here, with at most
    ``depth`` items in flight. If the consumer stops early, the iterator is closed in its
    thread (its ``finally`` blocks run: mounts released)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while True:
            try:
                fut.result(_PUT_POLL)
                return True
            except concurrent.futures.TimeoutError:
                if stop.is_set():
                    fut.cancel()
                    return False

    def produce() -> None:
        try:
            gen = make()
        except BaseException as exc:
            put(("error", exc))
            return
        try:
            for item in gen:
                if stop.is_set() or not put(("item", item)):
                    return
        except BaseException as exc:
            put(("error", exc))
            return
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()
        put(("end", None))

    worker = loop.run_in_executor(None, produce)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                break
    finally:
        stop.set()
        while not queue.empty():
            queue.get_nowait()
        if worker.done():
            worker.result()


async def _progress_job(
    request: web.Request, job: Callable[[Callable[[dict[str, Any]], None]], Any]
) -> web.StreamResponse:
    """Run ``job(emit)`` in a worker thread and stream what it emits as a progress stream.

    Until the first message, a failure is a plain HTTP error; the job's return value may be
    a final message (dict) to send.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def emit(msg: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, ("msg", msg))

    def run() -> None:
        try:
            result = job(emit)
        except BaseException as exc:
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
            return
        if isinstance(result, dict):
            emit(result)
        loop.call_soon_threadsafe(queue.put_nowait, ("end", None))

    worker = loop.run_in_executor(None, run)
    kind, first = await queue.get()
    if kind == "error":
        await worker
        raise first

    async def rest() -> AsyncIterator[dict[str, Any]]:
        item: tuple[str, Any] = (kind, first)
        while True:
            k, value = item
            if k == "msg":
                yield value
            elif k == "error":
                raise value
            else:
                return
            item = await queue.get()

    try:
        return await stream_json(request, rest(), progress=True)
    finally:
        await worker


# -- handlers ---------------------------------------------------------------------------------


async def list_images(request: web.Request) -> web.Response:
    svc = _images(request)
    rows = await _call(
        svc.list_images,
        all=query_bool(request, "all"),
        filters=parse_filters(request.query.get("filters")),
    )
    return json_response(rows)


async def inspect_image(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        doc = await _call(_images(request).inspect, name)
    except NotFound as exc:
        raise NotFound(f"no such image: {name}: {exc}") from None
    return json_response(doc)


async def image_history(request: web.Request) -> web.Response:
    return json_response(await _call(_images(request).history, request.match_info["name"]))


async def tag_image(request: web.Request) -> web.Response:
    repo = request.query.get("repo", "")
    await _call(_images(request).tag, request.match_info["name"], repo, request.query.get("tag", ""))
    return web.Response(status=201)


async def delete_image(request: web.Request) -> web.Response:
    records = await _call(
        _images(request).delete,
        request.match_info["name"],
        force=query_bool(request, "force"),
        prune=not query_bool(request, "noprune"),
        timeout=LONG,
    )
    return json_response(records)


async def prune_images(request: web.Request) -> web.Response:
    report = await _call(_images(request).prune, parse_filters(request.query.get("filters")), timeout=LONG)
    return json_response(report)


async def create_image(request: web.Request) -> web.StreamResponse:
    """``POST /images/create``: import (``fromSrc``); pulling (``fromImage``) is not here yet."""
    svc = _images(request)
    query = request.query
    if query.get("fromImage"):
        raise NotSupported(
            f"cannot pull {query['fromImage']}: pulling from a registry is not implemented yet; "
            "use pyd load or pyd import"
        )
    src = query.get("fromSrc", "")
    if not src:
        raise InvalidParameter("POST /images/create needs fromImage (pull) or fromSrc (import)")
    if src != "-":
        raise NotSupported(f"cannot import from {src}: only fromSrc=- (the request body) is supported")
    body = BodyReader(request, asyncio.get_running_loop())

    def job(emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        try:
            img = svc.import_rootfs(
                body,
                query.get("repo", ""),
                tag=query.get("tag", ""),
                changes=query.getall("changes", []),
                message=query.get("message", ""),
                src=src,
            )
        finally:
            body.close()
        return {"status": img.id}

    body.start()
    return await _progress_job(request, job)


async def load_images(request: web.Request) -> web.StreamResponse:
    svc = _images(request)
    quiet = query_bool(request, "quiet", default=True)
    body = BodyReader(request, asyncio.get_running_loop())

    def job(emit: Callable[[dict[str, Any]], None]) -> None:
        try:
            svc.load(body, quiet=quiet, emit=emit)
        finally:
            body.close()

    body.start()
    return await _progress_job(request, job)


async def _save(request: web.Request, names: list[str]) -> web.StreamResponse:
    svc = _images(request)
    plan = await _call(svc.save_plan, names)
    chunks = _iterate_in_thread(lambda: svc.save(plan))
    try:
        # The first chunk before the headers: an error in preparing the archive is still an
        # HTTP error.
        first = await chunks.__anext__()
    except BaseException:
        await chunks.aclose()
        raise
    return await stream_chunks(request, chunks, content_type="application/x-tar", first=first)


async def save_images(request: web.Request) -> web.StreamResponse:
    names = request.query.getall("names", [])
    if not names:
        raise InvalidParameter("GET /images/get needs at least one names= parameter")
    return await _save(request, names)


async def save_image(request: web.Request) -> web.StreamResponse:
    return await _save(request, [request.match_info["name"]])


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/images/json", list_images, allow_head=False)
    r.add_post("/images/create", create_image)
    r.add_post("/images/load", load_images)
    r.add_post("/images/prune", prune_images)
    r.add_get("/images/get", save_images, allow_head=False)
    r.add_get("/images/{name:.+}/get", save_image, allow_head=False)
    r.add_get("/images/{name:.+}/json", inspect_image, allow_head=False)
    r.add_get("/images/{name:.+}/history", image_history, allow_head=False)
    r.add_post("/images/{name:.+}/tag", tag_image)
    r.add_delete("/images/{name:.+}", delete_image)
