"""etcd v3's JSON gateway over HTTP with the standard library: url parsing, one keep-alive
connection per thread and endpoint, failover between endpoints, error mapping.

The gateway (served by etcd itself on the client port, ``/v3/...`` since 3.4; ``/v3beta``
too on 3.4) takes and returns JSON; keys and values are base64, 64-bit integers are strings.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from pyd.errors import InvalidParameter, NotFound, PydError, Unavailable

CALL_TIMEOUT = 5.0  # the contract's bound for one call, failover included
CONNECT_TIMEOUT = 2.0
URL_FORM = "etcd://HOST:PORT[,HOST:PORT...]"

# gRPC status codes the gateway returns in {"code": N}
GRPC_NOT_FOUND = 5
GRPC_UNAVAILABLE = 14


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_url(url: str) -> list[Endpoint]:
    """``etcd://h1:p1,h2:p2`` → endpoints; ``InvalidParameter`` naming the url otherwise."""

    def bad(why: str) -> InvalidParameter:
        return InvalidParameter(f'cluster-store "{url}" is invalid: {why}; expected {URL_FORM}')

    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "etcd":
        raise bad(f'the scheme must be "etcd", not "{scheme if sep else url}"')
    if not rest or "/" in rest or "?" in rest or "@" in rest:
        raise bad("only HOST:PORT pairs separated by commas are accepted")
    out: list[Endpoint] = []
    for part in rest.split(","):
        if part.startswith("["):
            host, _, tail = part[1:].partition("]")
            port_s = tail[1:] if tail.startswith(":") else ""
        else:
            host, _, port_s = part.rpartition(":")
        if not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise bad(f'"{part}" is not HOST:PORT with a port from 1 to 65535')
        out.append(Endpoint(host, int(port_s)))
    return out


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with prefix" (``\\0`` = to the end)."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)


def set_keepalive(sock: socket.socket) -> None:
    """Notice a peer that vanished without a FIN (host down, partition) in ~10 s."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", 4), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)


class GatewayError(PydError):
    """etcd answered with an error that is not NotFound or Unavailable."""


class EtcdClient:
    """Unary calls to the gateway. Thread-safe: connections are per thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.endpoints = parse_url(url)
        self._preferred = 0  # the endpoint that answered last; failover moves it on
        self._local = threading.local()
        self._lock = threading.Lock()
        self.closed = threading.Event()

    def unavailable(self, why: object) -> Unavailable:
        return Unavailable(f"cluster store {self.url} is unreachable: {why}")

    def order(self) -> list[int]:
        n = len(self.endpoints)
        start = self._preferred
        return [(start + i) % n for i in range(n)]

    def _conn(self, index: int, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        conns: dict[int, http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(index)
        if conn is not None:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            return conn, True
        ep = self.endpoints[index]
        conn = http.client.HTTPConnection(ep.host, ep.port, timeout=min(timeout, CONNECT_TIMEOUT))
        conns[index] = conn
        return conn, False

    def _drop(self, index: int) -> None:
        conns = self._local.__dict__.get("conns", {})
        conn = conns.pop(index, None)
        if conn is not None:
            conn.close()

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` on the first endpoint that answers."""
        if self.closed.is_set():
            raise self.unavailable("the store is closed")
        payload = json.dumps(body).encode()
        deadline = time.monotonic() + CALL_TIMEOUT
        last: object = "no endpoint tried"
        for index in self.order():
            # A reused keep-alive connection may have been closed by the server in between
            # (restart, idle timeout): the request never arrived, so one fresh retry is safe.
            for _attempt in range(2):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.unavailable(f"no answer within {CALL_TIMEOUT:.0f}s ({last})")
                conn, reused = self._conn(index, left)
                try:
                    conn.request("POST", "/v3/" + path, payload, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    data = resp.read()
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                    self._drop(index)
                    last = f"{self.endpoints[index]}: {exc or type(exc).__name__}"
                    if reused:
                        continue
                    break
                except (OSError, http.client.HTTPException) as exc:
                    self._drop(index)
                    last = f"{self.endpoints[index]}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc or type(exc).__name__}"
                    break
                result = self._decode(resp.status, data, index)
                if result is None:  # the member cannot serve (no leader): try another
                    last = f"{self.endpoints[index]}: unavailable (HTTP {resp.status})"
                    break
                self._preferred = index
                return result
        raise self.unavailable(last)

    def _decode(self, status: int, data: bytes, index: int) -> dict[str, Any] | None:
        try:
            doc = json.loads(data) if data else {}
        except ValueError:
            doc = {"message": data[:200].decode(errors="replace")}
        if status == 200:
            return doc if isinstance(doc, dict) else {}
        code = doc.get("code") if isinstance(doc, dict) else None
        message = (doc.get("message") or doc.get("error")) if isinstance(doc, dict) else None
        if code == GRPC_NOT_FOUND:
            raise NotFound(f"cluster store {self.url}: {message}")
        if code == GRPC_UNAVAILABLE or status in (502, 503, 504):
            return None
        raise GatewayError(f"cluster store {self.url} ({self.endpoints[index]}) refused the request: {message or status}")

    def close(self) -> None:
        self.closed.set()
        # Only this thread's connections can be closed safely; the others' are closed by the
        # garbage collector with their thread-local storage.
        for index in list(self._local.__dict__.get("conns", {})):
            self._drop(index)
