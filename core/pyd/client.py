"""A small HTTP/1.1 client for the pyd API (the Docker Engine API) over a unix socket or TCP+TLS.

Stdlib only, and only the cheap parts: ``socket`` and ``json`` (``ssl`` only for TLS hosts).
``http.client`` is avoided on purpose: it pulls in the ``email`` package (~50 ms), and the CLI
runs this on every command.

What it speaks (see shared/docker-api-traces.md §1):

* Version negotiation as the docker CLI does it: ``HEAD /_ping`` (``GET`` after a 405), take
  ``min(API_VERSION, Api-Version header)`` (1.24 when the header is missing) and prefix every
  later request with ``/v<version>``. An explicit ``version=`` skips the ping.
* Replies framed by ``Content-Length``, chunked, or by connection close; keep-alive reuse of
  idle connections (a stale one is retried once on a fresh socket when that is safe).
* Streaming replies: raw body pieces, lines (``\\n`` or ``\\r\\n``), JSON lines, and the 8-byte
  multiplexed stdout/stderr frames (``demux``).
* Request bodies: bytes, JSON (``data=``), or a file / iterator of bytes sent chunked.
* Connection hijack after ``101 UPGRADED`` (attach, exec start): ``Client.hijack``.
* Errors: an HTTP status outside 2xx/3xx becomes the ``pyd.errors`` class for that status
  (``from_status``) carrying the daemon's ``message``, with ``http_status`` set on the
  instance; a socket that cannot be reached is ``DaemonUnreachable``.
"""

from __future__ import annotations

import json
import os
import socket
from pyd import API_VERSION, __version__
from pyd.errors import InvalidParameter, PydError, Unavailable, from_status

TYPE_CHECKING = False  # typing itself costs ~5 ms of every CLI invocation
if TYPE_CHECKING:
    from typing import IO, Any, Iterable, Iterator, Mapping

DEFAULT_HOST = "unix:///run/pyd/pyd.sock"
# The CLI treats a daemon whose ping has no Api-Version header as very old (traces §1.2).
FALLBACK_API_VERSION = "1.24"
DEFAULT_TLS_PORT = 2376
DEFAULT_TCP_PORT = 2375
CONNECT_TIMEOUT = 10.0

_MAX_LINE = 65536
_MAX_HEADERS = 200
_RECV = 65536
_NOTHING: Any = object()


class DaemonUnreachable(Unavailable):
    """The daemon's socket could not be reached (not running, wrong host, no permission)."""


class ProtocolError(Unavailable):
    """The daemon's reply was not valid HTTP, or the connection ended in the middle of it."""


class _RetryableEOF(ProtocolError):
    """A reused keep-alive connection turned out to be closed before any reply byte."""


class TLSConfig:
    """TLS settings for ``tcp://`` hosts, as docker's ``--tls``/``--tlsverify`` flags.

    ``verify`` checks the daemon's certificate against ``ca`` (system CAs when ``ca`` is None)
    and its host name; ``cert``/``key`` are the client certificate the daemon may require.
    """

    __slots__ = ("verify", "ca", "cert", "key")

    def __init__(
        self,
        verify: bool = True,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
    ) -> None:
        self.verify, self.ca, self.cert, self.key = verify, ca, cert, key


def parse_host(host: str) -> tuple[str, Any]:
    """``unix:///path`` or ``/path`` → ``("unix", path)``; ``tcp://H:P`` → ``("tcp", (H, P))``.

    P is None when the host names no port (the client picks 2376 with TLS, else 2375).
    """
    if host.startswith("unix://"):
        path = host[len("unix://") :]
        if not path.startswith("/"):
            raise InvalidParameter(f'invalid host "{host}": a unix socket path must be absolute')
        return "unix", path
    if host.startswith("/"):
        return "unix", host
    if host.startswith("tcp://"):
        rest = host[len("tcp://") :].rstrip("/")
        if rest.startswith("["):  # [ipv6]:port
            addr, _, tail = rest[1:].partition("]")
            port_s = tail[1:] if tail.startswith(":") else ""
        else:
            addr, _, port_s = rest.rpartition(":") if ":" in rest else (rest, "", "")
        if not addr:
            addr = "127.0.0.1"
        port: int | None = None
        if port_s:
            if not port_s.isdigit() or not 0 < int(port_s) < 65536:
                raise InvalidParameter(f'invalid host "{host}": bad port "{port_s}"')
            port = int(port_s)
        return "tcp", (addr, port)
    raise InvalidParameter(
        f'invalid host "{host}": use unix:///path/to/socket or tcp://HOST:PORT'
    )


# -- small encoders --------------------------------------------------------------------------

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PATH_SAFE = _UNRESERVED | frozenset(b"/:@")


def quote(value: str, safe: frozenset[int] = _UNRESERVED) -> str:
    """Percent-encode ``value`` (UTF-8) for a query value; ``quote_path`` keeps ``/ : @``."""
    raw = value.encode()
    if all(b in safe for b in raw):
        return value
    return "".join(chr(b) if b in safe else f"%{b:02X}" for b in raw)


def quote_path(value: str) -> str:
    """Encode a name for use in a URL path (image names keep their ``/`` and ``:``)."""
    return quote(value, _PATH_SAFE)


def _query_value(value: Any) -> str:
    if value is True:
        return "1"
    if value is False:
        return "0"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def encode_query(params: Mapping[str, Any] | None) -> str:
    """Encode query parameters: ``{"all": True, "filters": {...}, "names": ["a", "b"]}`` →
    ``all=1&filters=%7B...%7D&names=a&names=b``.

    ``None`` values are left out; booleans are ``1``/``0`` as the docker CLI sends them; dicts
    are JSON (``filters``); lists and tuples repeat the key. Pass ``json.dumps(...)`` yourself
    for a parameter that wants a JSON list.
    """
    if not params:
        return ""
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else (value,)
        for v in values:
            parts.append(f"{quote(key)}={quote(_query_value(v))}")
    return "&".join(parts)


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


# -- stream decoders ---------------------------------------------------------------------------

STDIN, STDOUT, STDERR = 0, 1, 2


def demux(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Decode the multiplexed stream format: frames of ``[stream, 0, 0, 0, size(4, BE)]`` + data.

    Yields ``(stream, payload)`` with stream 1 (stdout) or 2 (stderr). Frames may be split
    across, or packed into, the incoming pieces in any way.
    """
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        pos = 0
        while len(buf) - pos >= 8:
            size = int.from_bytes(buf[pos + 4 : pos + 8], "big")
            if len(buf) - pos < 8 + size:
                break
            yield buf[pos], bytes(buf[pos + 8 : pos + 8 + size])
            pos += 8 + size
        if pos:
            del buf[:pos]
    if buf:
        raise ProtocolError(f"stream ended inside a multiplexed frame ({len(buf)} bytes left)")


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Split a byte stream into lines ending in ``\\n`` or ``\\r\\n`` (endings removed)."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            line = bytes(buf[start:end])
            yield line[:-1] if line.endswith(b"\r") else line
            start = end + 1
        if start:
            del buf[:start]
    if buf:
        yield bytes(buf[:-1] if buf.endswith(b"\r") else buf)


def json_lines(chunks: Iterable[bytes]) -> Iterator[Any]:
    """Decode a stream of JSON documents, one per line; blank lines are skipped."""
    for line in split_lines(chunks):
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise ProtocolError(f"invalid JSON in stream: {line[:200]!r}") from exc


def _cut_off(host: str) -> ProtocolError:
    return ProtocolError(f"the pyd daemon at {host} closed the connection mid-reply")


# -- the connection ----------------------------------------------------------------------------


class _Conn:
    """A socket plus the bytes received from it but not yet consumed."""

    __slots__ = ("sock", "buf", "reused", "host")

    def __init__(self, sock: socket.socket, host: str) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.reused = False
        self.host = host

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(_RECV)
        except socket.timeout:
            raise Unavailable(f"timed out waiting for the pyd daemon at {self.host}") from None
        except ConnectionResetError:
            data = b""
        if not data:
            return False
        self.buf += data
        return True

    def readline(self) -> bytes:
        start = 0
        while True:
            end = self.buf.find(b"\n", start)
            if end >= 0:
                line = bytes(self.buf[: end + 1])
                del self.buf[: end + 1]
                return line
            if len(self.buf) > _MAX_LINE:
                raise ProtocolError("reply header line too long")
            start = len(self.buf)
            if not self._fill():
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def read_some(self, limit: int = _RECV) -> bytes:
        """Up to ``limit`` bytes: what is buffered, else one recv; ``b""`` at EOF."""
        if not self.buf and not self._fill():
            return b""
        data = bytes(self.buf[:limit])
        del self.buf[:limit]
        return data

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise _cut_off(self.host)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Response:
    """A reply. ``content`` holds the body of a non-streaming request; a streaming one is read
    with ``iter_raw``/``iter_lines``/``iter_json``/``iter_frames`` and closed when done
    (or used as a context manager)."""

    def __init__(self, client: Client, conn: _Conn, method: str) -> None:
        self._client = client
        self._conn: _Conn | None = conn
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.content: bytes | None = None
        self._keep_alive = True
        self._mode = "none"  # none | length | chunked | close
        self._remaining = 0
        self._method = method

    # -- parsing -------------------------------------------------------------------------

    def _read_head(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            line = conn.readline()
            if not line:
                if conn.reused:
                    raise _RetryableEOF("keep-alive connection closed")
                raise ProtocolError(
                    f"the pyd daemon at {conn.host} closed the connection without answering"
                )
            parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise ProtocolError(f"not an HTTP reply from {conn.host}: {line[:80]!r}")
            self.status = int(parts[1])
            self.reason = parts[2] if len(parts) > 2 else ""
            self._keep_alive = parts[0] != "HTTP/1.0"
            headers: dict[str, str] = {}
            for _ in range(_MAX_HEADERS):
                raw = conn.readline()
                if raw in (b"\r\n", b"\n"):
                    break
                if not raw:
                    raise _cut_off(conn.host)
                name, sep, value = raw.decode("latin-1").partition(":")
                if not sep:
                    raise ProtocolError(f"malformed reply header: {raw[:80]!r}")
                name = name.strip().lower()
                value = value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            else:
                raise ProtocolError("too many reply headers")
            # 1xx other than 101 are interim (e.g. 100 Continue): skip them.
            if 100 <= self.status < 200 and self.status != 101:
                continue
            self.headers = headers
            break
        if "close" in self.headers.get("connection", "").lower():
            self._keep_alive = False
        if self._method == "HEAD" or self.status in (101, 204, 304) or self.status < 200:
            self._mode = "none"
        elif "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._mode = "chunked"
        elif "content-length" in self.headers:
            try:
                self._remaining = int(self.headers["content-length"])
            except ValueError:
                raise ProtocolError("bad Content-Length in reply") from None
            self._mode = "length" if self._remaining else "none"
        else:
            self._mode = "close"
            self._keep_alive = False

    # -- body ------------------------------------------------------------------------------

    def iter_raw(self) -> Iterator[bytes]:
        """Body bytes as they arrive (chunk framing removed); the connection is released
        (or closed) once the body has been read to its end."""
        if self.content is not None:
            if self.content:
                yield self.content
            return
        conn = self._conn
        if conn is None:
            return
        mode = self._mode
        if mode == "length":
            while self._remaining > 0:
                data = conn.read_some(min(self._remaining, _RECV))
                if not data:
                    raise _cut_off(conn.host)
                self._remaining -= len(data)
                yield data
        elif mode == "chunked":
            while True:
                line = conn.readline()
                if not line:
                    raise _cut_off(conn.host)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None
                if size == 0:
                    while conn.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    break
                while size > 0:
                    data = conn.read_some(min(size, _RECV))
                    if not data:
                        raise _cut_off(conn.host)
                    size -= len(data)
                    yield data
                if conn.readline().strip():  # the CRLF that ends the chunk's data
                    raise ProtocolError("chunk data longer than its declared size")
        elif mode == "close":
            while data := conn.read_some():
                yield data
        self._finish()

    def read(self) -> bytes:
        if self.content is None:
            self.content = b"".join(self.iter_raw())
        return self.content

    def iter_lines(self) -> Iterator[bytes]:
        return split_lines(self.iter_raw())

    def iter_json(self) -> Iterator[Any]:
        return json_lines(self.iter_raw())

    def iter_frames(self) -> Iterator[tuple[int, bytes]]:
        return demux(self.iter_raw())

    def json(self) -> Any:
        body = self.read()
        if not body.strip():
            return None
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ProtocolError(f"invalid JSON reply: {body[:200]!r}") from exc

    @property
    def text(self) -> str:
        return self.read().decode("utf-8", "replace")

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._keep_alive and not conn.buf:
            self._client._release(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Stop reading: a body not read to its end makes the connection unusable."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


class Hijacked:
    """A connection taken over after ``101 UPGRADED``: raw bytes in both directions.

    Read with ``recv``/``iter_raw``/``iter_frames`` (multiplexed, when the container has no
    TTY); write stdin with ``send``; ``close_write`` half-closes (end of stdin) and keeps
    reading. When polling ``fileno()`` with select, drain ``pending()`` first: bytes that
    arrived with the 101 reply are buffered here, not in the socket.
    """

    def __init__(self, conn: _Conn, status: int, headers: dict[str, str]) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers
        self.sock = conn.sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def pending(self) -> bytes:
        data = bytes(self._conn.buf)
        self._conn.buf.clear()
        return data

    def recv(self, size: int = _RECV) -> bytes:
        return self._conn.read_some(size)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close_write(self) -> None:
        """Half-close: tell the daemon stdin has ended; output keeps coming."""
        if hasattr(self.sock, "unwrap"):
            # TLS has no half-close (close_notify ends both directions); leave it open: the
            # daemon ends the stream when the process exits.
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def iter_raw(self) -> Iterator[bytes]:
        while data := self.recv():
            yield data

    def iter_frames(self) -> Iterator[tuple[int, bytes]]:
        return demux(self.iter_raw())

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Hijacked:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """The pyd API client. One instance per CLI invocation; not thread-safe.

    ``host``: ``unix:///path`` (default ``DEFAULT_HOST``) or ``tcp://HOST:PORT``.
    ``tls``: a ``TLSConfig`` for tcp hosts (None: plain TCP). ``version``: an API version to
    use without negotiating. ``timeout``: seconds for each socket read (None: wait forever,
    right for streams and ``wait``).
    """

    def __init__(
        self,
        host: str | None = None,
        *,
        tls: TLSConfig | None = None,
        version: str | None = None,
        timeout: float | None = None,
        user_agent: str | None = None,
    ) -> None:
        self.host = host or DEFAULT_HOST
        self.scheme, self.address = parse_host(self.host)
        self.tls = tls if self.scheme == "tcp" else None
        if self.scheme == "tcp" and self.address[1] is None:
            port = DEFAULT_TLS_PORT if self.tls else DEFAULT_TCP_PORT
            self.address = (self.address[0], port)
        self.timeout = timeout
        self.user_agent = user_agent or f"pyd-client/{__version__} ({os.uname().sysname.lower()})"
        self._version = version
        self._idle: list[_Conn] = []
        self._ssl_context: Any = None
        if self.scheme == "unix":
            self._host_header = "localhost"
        else:
            addr, port = self.address
            self._host_header = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
        # Headers of the last ping (Api-Version, Ostype, ...), empty until negotiated.
        self.ping_headers: dict[str, str] = {}

    # -- connections -----------------------------------------------------------------------

    def _connect(self) -> _Conn:
        try:
            if self.scheme == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(CONNECT_TIMEOUT)
                try:
                    sock.connect(self.address)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(self.address, timeout=CONNECT_TIMEOUT)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.tls is not None:
                    sock = self._wrap_tls(sock)
        except PermissionError as exc:
            raise DaemonUnreachable(
                f"permission denied while trying to connect to the pyd daemon socket at "
                f"{self.host}: {exc.strerror}"
            ) from exc
        except OSError as exc:  # refused, no such socket, timeout, DNS failure
            raise DaemonUnreachable(
                f"Cannot connect to the pyd daemon at {self.host}. Is the pyd daemon running?"
            ) from exc
        sock.settimeout(self.timeout)
        return _Conn(sock, self.host)

    def _wrap_tls(self, sock: socket.socket) -> socket.socket:
        import ssl  # only TLS hosts pay for it

        if self._ssl_context is None:
            self._ssl_context = self._make_ssl_context(ssl)
        try:
            return self._ssl_context.wrap_socket(sock, server_hostname=self.address[0])
        except (ssl.SSLError, ssl.CertificateError) as exc:
            sock.close()
            raise DaemonUnreachable(
                f"TLS handshake with the pyd daemon at {self.host} failed: {exc}"
            ) from exc

    def _make_ssl_context(self, ssl: Any) -> Any:
        tls = self.tls
        assert tls is not None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            if tls.verify:
                if tls.ca:
                    ctx.load_verify_locations(cafile=tls.ca)
                else:
                    ctx.load_default_certs()
            else:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if tls.cert or tls.key:
                if not (tls.cert and tls.key):
                    raise InvalidParameter("--tlscert and --tlskey must be given together")
                ctx.load_cert_chain(tls.cert, tls.key)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidParameter(f"cannot load TLS files ({exc})") from exc
        return ctx

    def _release(self, conn: _Conn) -> None:
        conn.reused = True
        self._idle.append(conn)

    def close(self) -> None:
        """Close idle connections (streams and hijacked ones are closed by their owners)."""
        while self._idle:
            self._idle.pop().close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- version negotiation -----------------------------------------------------------------

    @property
    def api_version(self) -> str:
        """The API version used in request paths; negotiated with a ping on first use."""
        if self._version is None:
            self.negotiate()
        assert self._version is not None
        return self._version

    def negotiate(self) -> str:
        """Ping the daemon and settle the API version: ``min(ours, Api-Version)``."""
        resp = self._request("HEAD", "/_ping")
        if resp.status == 405:
            resp = self._request("GET", "/_ping")
        resp.read()
        self.ping_headers = resp.headers
        server = resp.headers.get("api-version") or FALLBACK_API_VERSION
        if _version_tuple(server) < _version_tuple(API_VERSION):
            self._version = server
        else:
            self._version = API_VERSION
        return self._version

    def ping(self) -> bool:
        """``GET /_ping``; True when the daemon answers ``OK``."""
        resp = self.request("GET", "/_ping", versioned=False)
        return resp.read().strip() == b"OK"

    # -- requests --------------------------------------------------------------------------

    def url(
        self, path: str, params: Mapping[str, Any] | None = None, versioned: bool = True
    ) -> str:
        if not path.startswith("/"):
            path = "/" + path
        if versioned:
            path = f"/v{self.api_version}{path}"
        query = encode_query(params)
        return f"{path}?{query}" if query else path

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Any = _NOTHING,
        body: bytes | str | IO[bytes] | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        versioned: bool = True,
    ) -> Response:
        """Send a request and return the reply; raise the ``pyd.errors`` class of an error status.

        ``data`` is sent as JSON; ``body`` as is (bytes/str with ``Content-Length``, a file or
        an iterator of bytes chunked). Without ``stream`` the body is read into ``content``;
        with it, read it from the returned ``Response`` and close that.
        """
        target = self.url(path, params, versioned)
        hdrs = dict(headers or {})
        if data is not _NOTHING:
            body = json.dumps(data, separators=(",", ":")).encode()
            hdrs.setdefault("Content-Type", "application/json")
        resp = self._request(method, target, body=body, headers=hdrs)
        if resp.status >= 400 or resp.status < 200:
            raise self._error(resp)
        if not stream or resp._mode == "none":
            resp.read()  # also releases the connection of a bodiless stream reply
        return resp

    def _request(
        self,
        method: str,
        target: str,
        *,
        body: bytes | str | IO[bytes] | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        if isinstance(body, str):
            body = body.encode()
        replayable = body is None or isinstance(body, (bytes, bytearray))
        while True:
            if self._idle:
                conn = self._idle.pop()
                conn.sock.settimeout(self.timeout)  # the timeout may have changed meanwhile
            else:
                conn = self._connect()
            try:
                self._send(conn, method, target, body, headers or {})
                resp = Response(self, conn, method)
                resp._read_head()
                return resp
            except _RetryableEOF:
                conn.close()
                if not replayable:
                    raise ProtocolError(
                        f"the pyd daemon at {self.host} closed the connection without answering"
                    ) from None
            except (BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                if not (conn.reused and replayable):
                    raise ProtocolError(
                        f"the pyd daemon at {self.host} closed the connection: {exc.strerror}"
                    ) from exc
            except BaseException:
                conn.close()
                raise

    def _send(
        self,
        conn: _Conn,
        method: str,
        target: str,
        body: bytes | bytearray | IO[bytes] | Iterable[bytes] | None,
        headers: Mapping[str, str],
    ) -> None:
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {self._host_header}",
            f"User-Agent: {self.user_agent}",
        ]
        chunked = body is not None and not isinstance(body, (bytes, bytearray))
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        elif body is not None:
            lines.append(f"Content-Length: {len(body)}")
        elif method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0")
        for name, value in headers.items():
            lines.append(f"{name}: {value}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        sock = conn.sock
        if not chunked:
            sock.sendall(head + body if body else head)
            return
        sock.sendall(head)
        try:
            for piece in _pieces(body):  # type: ignore[arg-type]
                if piece:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            # The daemon answered early (e.g. 404 before the upload ended) and closed;
            # its reply may already be in the socket: let the caller read it.
            pass

    def _error(self, resp: Response) -> PydError:
        try:
            raw = resp.read()
        except PydError:
            raw = b""
        message = ""
        if raw.strip():
            try:
                doc = json.loads(raw)
                message = str(doc.get("message") or "") if isinstance(doc, dict) else ""
            except ValueError:
                pass
            if not message:
                message = raw.decode("utf-8", "replace").strip()
        if not message:
            message = f"{resp.status} {resp.reason}".strip()
        err = from_status(resp.status, message)
        err.http_status = resp.status  # type: ignore[attr-defined]  # "came from the daemon"
        return err

    # -- conveniences ----------------------------------------------------------------------

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """A request whose JSON reply (or None for an empty body) is returned."""
        return self.request(method, path, **kwargs).json()

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.call("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.call("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.call("DELETE", path, **kwargs)

    def stream(self, method: str, path: str, **kwargs: Any) -> Response:
        """A request whose reply body is read incrementally; close the response when done."""
        return self.request(method, path, stream=True, **kwargs)

    def hijack(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Any = _NOTHING,
        headers: Mapping[str, str] | None = None,
    ) -> Hijacked:
        """Send an ``Upgrade: tcp`` request (attach, exec start) and take over the connection.

        Returns a ``Hijacked`` after ``101 UPGRADED`` (or a 2xx reply, which dockerd also uses
        for a raw stream); an error status raises its ``pyd.errors`` class.
        """
        hdrs = {"Connection": "Upgrade", "Upgrade": "tcp"}
        body: bytes | None = None
        if data is not _NOTHING:
            body = json.dumps(data, separators=(",", ":")).encode()
            hdrs["Content-Type"] = "application/json"
        else:
            hdrs["Content-Type"] = "text/plain"
        hdrs.update(headers or {})
        target = self.url(path, params)
        # Never on a pooled connection: this socket is given away.
        conn = self._connect()
        try:
            self._send(conn, method, target, body, hdrs)
            resp = Response(self, conn, method)
            resp._read_head()
        except BaseException:
            conn.close()
            raise
        if resp.status == 101 or 200 <= resp.status < 300:
            resp._conn = None
            return Hijacked(conn, resp.status, resp.headers)
        raise self._error(resp)


def _pieces(body: IO[bytes] | Iterable[bytes]) -> Iterator[bytes]:
    read = getattr(body, "read", None)
    if read is None:
        yield from body  # type: ignore[misc]
        return
    while piece := read(_RECV):
        yield piece
