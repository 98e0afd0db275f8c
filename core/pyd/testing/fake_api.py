"""A fake pyd API server for testing the client and CLI commands without a daemon.

A tiny HTTP/1.1 server on a unix socket (or a TLS/TCP socket) in a thread. The test gives a
handler ``(request, conn) -> bytes | None``: bytes are sent as the whole raw reply; ``None``
means the handler wrote to ``conn`` itself (streams, hijack). Every request is recorded in
``FakeDaemon.requests``; ``connections`` counts accepted connections. ``ping_then(routes)``
builds a handler that answers ``/_ping`` and serves JSON (or raw replies) per route.

    routes = {("GET", "/containers/json"): [{"Id": "abc", ...}]}
    with FakeDaemon(str(tmp_path / "api.sock"), ping_then(routes)) as d:
        main(["-H", d.host, "ps"])       # pyd.cli.main.main; raises SystemExit
    assert d.requests[-1].query["all"] == ["1"]
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

_REASONS = {
    101: "UPGRADED", 200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified",
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    409: "Conflict", 500: "Internal Server Error", 501: "Not Implemented",
    503: "Service Unavailable",
}


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    conn_id: int
    close_after: bool = False  # set by a handler to close the connection after replying
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> dict[str, list[str]]:
        from urllib.parse import parse_qs

        return parse_qs(self.target.partition("?")[2], keep_blank_values=True)


def reply(
    status: int = 200,
    body: bytes | str | Any = b"",
    headers: dict[str, str] | None = None,
    *,
    chunks: Iterable[bytes] | None = None,
    api_version: str | None = "1.41",
) -> bytes:
    """A raw reply: ``body`` (bytes/str, or JSON for anything else) with Content-Length, or
    ``chunks`` sent with chunked encoding exactly as given (including empty-chunk splits)."""
    hdrs = dict(headers or {})
    if api_version:
        hdrs.setdefault("Api-Version", api_version)
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body) + "\n"
        hdrs.setdefault("Content-Type", "application/json")
    if isinstance(body, str):
        body = body.encode()
    if chunks is not None:
        hdrs["Transfer-Encoding"] = "chunked"
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    else:
        if status not in (101, 204, 304):
            hdrs.setdefault("Content-Length", str(len(body)))
        payload = body
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'X')}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    return head.encode() + payload


def chunk(data: bytes) -> bytes:
    """One chunk in chunked encoding (for handlers that stream by hand)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            if not self._fill():
                line, self.buf = self.buf, b""
                return line
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_to_eof(self) -> bytes:
        while self._fill():
            pass
        data, self.buf = self.buf, b""
        return data


Handler = Callable[[Request, "FakeConn"], "bytes | None"]


class FakeConn:
    def __init__(self, sock: socket.socket, conn_id: int) -> None:
        self.sock = sock
        self.id = conn_id
        self.reader = _Reader(sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


class FakeDaemon:
    def __init__(
        self,
        address: str,
        handler: Handler,
        *,
        family: int = socket.AF_UNIX,
        ssl_context: Any = None,
    ) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.connections = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._ssl = ssl_context
        if family == socket.AF_UNIX:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(address)
            self.host = f"unix://{address}"
        else:
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.listener.bind(("127.0.0.1", 0))
            self.host = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.listener.listen(16)
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> FakeDaemon:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self._lock:
            for s in self._conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                conn_id = self.connections
                self._conns.append(sock)
            threading.Thread(target=self._serve, args=(sock, conn_id), daemon=True).start()

    def _serve(self, sock: socket.socket, conn_id: int) -> None:
        try:
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_side=True)
                with self._lock:
                    self._conns.append(sock)
            conn = FakeConn(sock, conn_id)
            while True:
                req = self._read_request(conn)
                if req is None:
                    return
                with self._lock:
                    self.requests.append(req)
                out = self.handler(req, conn)
                if out is not None:
                    conn.send(out)
                if req.close_after:
                    return
        except (OSError, EOFError):
            return
        except BaseException as exc:  # surfaced by tests through .errors
            self.errors.append(exc)
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def _read_request(self, conn: FakeConn) -> Request | None:
        line = conn.reader.readline()
        if not line:
            return None
        method, target, _ = line.decode().split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            raw = conn.reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(conn.reader.readline().strip(), 16)
                if size == 0:
                    conn.reader.readline()
                    break
                parts.append(conn.reader.read(size))
                conn.reader.read(2)
            body = b"".join(parts)
        elif "content-length" in headers:
            body = conn.reader.read(int(headers["content-length"]))
        return Request(method, target, headers, body, conn.id)


def ping_then(routes: dict[tuple[str, str], Any], api_version: str = "1.41") -> Handler:
    """A handler answering ``/_ping`` and, for ``(METHOD, unversioned path)``, the reply in
    ``routes`` (raw bytes, JSON-able body, or a handler function)."""

    def handle(req: Request, conn: FakeConn) -> bytes | None:
        path = req.path
        if path == "/_ping":
            return reply(200, b"" if req.method == "HEAD" else b"OK", api_version=api_version,
                         headers={"Content-Type": "text/plain; charset=utf-8"})
        if path.startswith("/v"):
            path = "/" + path.split("/", 2)[2]
        route = routes.get((req.method, path))
        if route is None:
            return reply(404, {"message": "page not found"})
        if callable(route):
            return route(req, conn)
        if isinstance(route, bytes):
            return route
        return reply(200, route)

    return handle
