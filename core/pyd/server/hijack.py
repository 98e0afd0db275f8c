"""Taking over an HTTP connection for attach and exec start (Docker's "hijack").

After the ``101 UPGRADED`` reply (exact bytes, traces §1.5) the socket carries raw stream data
in both directions. Two details matter to the docker CLI and SDK:

* a client half-close (``shutdown(SHUT_WR)``) means "end of stdin", not "gone": the server must
  keep writing output, so the protocol's ``eof_received`` keeps the transport open;
* the server ends the stream by closing the connection once the output is flushed.

aiohttp has no public hijack; this uses its upgrade path (the same one ``WebSocketResponse``
uses): ``RequestHandler.set_parser`` routes every later byte to our reader, and the handler
returns a response whose ``prepare``/``write_eof`` write nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

UPGRADED = (
    b"HTTP/1.1 101 UPGRADED\r\n"
    b"Content-Type: application/vnd.docker.raw-stream\r\n"
    b"Connection: Upgrade\r\n"
    b"Upgrade: tcp\r\n"
)
# Without an Upgrade header dockerd still takes the connection over, with this reply.
RAW_200 = b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
_MAX_PENDING = 1 << 20


class _Feed:
    """What aiohttp's protocol feeds after ``set_parser``: bytes and EOF into a queue."""

    def __init__(self, conn: "HijackedConnection") -> None:
        self.conn = conn

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.conn._push(data)
        return False, b""

    def feed_eof(self) -> None:
        self.conn._push(b"")


class HijackedConnection:
    """The raw client connection: ``read()`` (b"" at end of stdin), ``write()``, ``close()``."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._proto: Any = request.protocol
        self._transport = request.transport
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self._pending = 0
        self._eof = False
        self._paused = False
        self.closed = False

    def _push(self, data: bytes) -> None:
        if self._eof:
            return
        if not data:
            self._eof = True
        self._pending += len(data)
        self._chunks.put_nowait(data)
        if self._pending > _MAX_PENDING and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    async def read(self) -> bytes:
        """The next bytes from the client; ``b""`` once it half-closed or went away."""
        data = await self._chunks.get()
        self._pending -= len(data)
        if self._paused and self._pending < _MAX_PENDING // 2 and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        if not data:
            self._chunks.put_nowait(b"")  # stay at EOF for later readers
        return data

    @property
    def at_eof(self) -> bool:
        return self._eof

    @property
    def gone(self) -> bool:
        t = self._transport
        return self.closed or t is None or t.is_closing()

    async def write(self, data: bytes) -> None:
        t = self._transport
        if t is None or t.is_closing():
            raise ConnectionResetError("the client closed the connection")
        t.write(data)
        await self._proto._drain_helper()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        t = self._transport
        if t is not None and not t.is_closing():
            t.close()


class _HijackedResponse(web.StreamResponse):
    """Returned by the handler after the stream ended: aiohttp must write nothing more."""

    def __init__(self) -> None:
        super().__init__(status=101)
        self.force_close()

    async def prepare(self, request: web.BaseRequest) -> None:  # type: ignore[override]
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None

    @property
    def prepared(self) -> bool:
        return True


def hijack(request: web.Request, extra_headers: dict[str, str] | None = None) -> HijackedConnection:
    """Send the upgrade reply and take the connection over (call after reading the body)."""
    conn = HijackedConnection(request)
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client closed the connection")
    upgrade = request.headers.get("Upgrade", "").lower() == "tcp" or "upgrade" in request.headers.get("Connection", "").lower()
    head = UPGRADED if upgrade else RAW_200
    for key, value in (extra_headers or {}).items():
        head += f"{key}: {value}\r\n".encode("latin-1")
    transport.write(head + b"\r\n")
    proto = request.protocol
    feed = _Feed(conn)
    proto.set_parser(feed)  # type: ignore[arg-type]
    transport.set_protocol(_KeepOpen(proto, feed))
    return conn


class _KeepOpen(asyncio.Protocol):
    """Sits between the transport and aiohttp's protocol only to answer ``eof_received``
    with True: a half-close must end stdin, not the connection (aiohttp would close it)."""

    def __init__(self, inner: Any, feed: _Feed) -> None:
        self.inner, self.feed = inner, feed

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool:
        self.feed.feed_eof()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.feed.feed_eof()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def finished() -> web.StreamResponse:
    return _HijackedResponse()
