"""Attach sessions: a client's hijacked connection <-> the exec driver's stdio socket.

The driver's socket already speaks Docker's raw-stream format (8-byte frames without a TTY,
raw bytes with one; plain stdin; ``shutdown(SHUT_WR)`` for end of stdin), so the session
copies bytes both ways and looks at frames only when the client asked for one of stdout and
stderr but not the other. A session may be opened before the container starts (``docker
run`` attaches first): it then waits, keeping whatever stdin the client already sent, and
connects when the start has created the process but before it runs its program.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pyd.engine.containers import ContainerService

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">BxxxI")
_READ = 64 * 1024
GONE_POLL = 0.5


class ClientStream(Protocol):
    """The client side (the server's hijacked connection)."""

    async def read(self) -> bytes: ...  # b"": the client half-closed (end of its stdin)
    async def write(self, data: bytes) -> None: ...
    @property
    def gone(self) -> bool: ...


class _FrameFilter:
    """Drops the frames of a stream the client did not ask for (non-TTY output only)."""

    def __init__(self, keep: set[int]) -> None:
        self.keep = keep
        self.buf = b""

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = bytearray()
        while len(self.buf) >= _HEADER.size:
            stream, length = _HEADER.unpack_from(self.buf)
            end = _HEADER.size + length
            if len(self.buf) < end:
                break
            if stream in self.keep:
                out += self.buf[:end]
            self.buf = self.buf[end:]
        return bytes(out)


class AttachSession:
    def __init__(
        self,
        client: ClientStream,
        *,
        container_id: str,
        exec_id: str = "",
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    ) -> None:
        self.client = client
        self.container_id = container_id
        self.exec_id = exec_id
        self.stdin, self.stdout, self.stderr, self.tty = stdin, stdout, stderr, tty
        self.sock: socket.socket | None = None
        self._ready = asyncio.Event()
        self.cancelled = False

    async def connect(self, svc: ContainerService) -> None:
        """Open the driver's stdio socket (at start, before the program runs)."""
        try:
            self.sock = await svc.run(svc._exec_driver().attach, self.container_id, self.exec_id, self.stdin)
        except Exception as exc:
            log.warning("attaching to %s failed: %s", self.container_id[:12], exc)
            self.cancelled = True
        self._ready.set()

    def cancel(self) -> None:
        self.cancelled = True
        self._ready.set()

    async def wait_connected(self) -> bool:
        """Wait until ``connect`` or ``cancel``; False if cancelled or the client left."""
        while not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), GONE_POLL)
            except asyncio.TimeoutError:
                if self.client.gone:
                    self.cancel()
        return not self.cancelled and self.sock is not None

    async def run(self) -> None:
        """Copy until the driver closes the stream (the process exited and its output is
        flushed) or the client goes away."""
        assert self.sock is not None
        self.sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=self.sock)
        out = asyncio.ensure_future(self._output(reader))
        inp = asyncio.ensure_future(self._input(writer))
        try:
            await out
        finally:
            inp.cancel()
            await asyncio.gather(inp, return_exceptions=True)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _output(self, reader: asyncio.StreamReader) -> None:
        wanted = {s for s, on in ((1, self.stdout), (2, self.stderr)) if on}
        flt = None if self.tty or wanted == {1, 2} else _FrameFilter(wanted)
        if self.tty and not self.stdout:
            flt = _FrameFilter(set())  # nothing the client wants: drop everything
        while True:
            try:
                data = await asyncio.wait_for(reader.read(_READ), GONE_POLL)
            except asyncio.TimeoutError:
                if self.client.gone:
                    return
                continue
            if not data:
                return
            if flt is not None:
                data = flt.feed(data) if not (self.tty and not self.stdout) else b""
                if not data:
                    continue
            try:
                await self.client.write(data)
            except (ConnectionError, OSError):
                return

    async def _input(self, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await self.client.read()
            if not data:
                if self.stdin:
                    try:
                        writer.write_eof()  # end of stdin: the driver decides what it means
                    except (ConnectionError, OSError):
                        pass
                return
            if not self.stdin:
                continue  # input the client was not asked for is dropped
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                return
