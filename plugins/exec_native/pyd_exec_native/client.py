"""Talking to a shim over its socket (protocol in ``pyd_exec_native.shim``); daemon side."""

from __future__ import annotations

import errno
import json
import os
import socket
from typing import Any

from pyd.errors import Conflict, InvalidParameter, NotFound, NotModified, PydError

from pyd_exec_native import bundle

_ERRORS: dict[str, type[PydError]] = {
    "invalid": InvalidParameter,
    "notfound": NotFound,
    "conflict": Conflict,
    "notmodified": NotModified,
}


class ShimGone(Exception):
    """The shim is not running (it exited after its container did, or was killed)."""


def error_from_reply(reply: dict[str, Any]) -> PydError:
    cls = _ERRORS.get(reply.get("kind", ""), PydError)
    return cls(reply.get("error", "the shim reported an error"))


def connect(bundle_dir: str, timeout: float | None = None) -> socket.socket:
    path, dirfd = bundle.socket_address(bundle_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTDIR):
            raise ShimGone(bundle_dir) from None
        raise
    finally:
        if dirfd is not None:
            os.close(dirfd)
    return sock


def _read_line(sock: socket.socket) -> bytes:
    # byte by byte: nothing after the newline may be consumed (an attach stream follows it)
    buf = bytearray()
    while True:
        b = sock.recv(1)
        if not b:
            raise ShimGone("the shim closed the connection without an answer")
        if b == b"\n":
            return bytes(buf)
        buf += b
        if len(buf) > (1 << 20):
            raise PydError("the shim's answer is too long")


def _read_reply(sock: socket.socket) -> dict[str, Any]:
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            raise ShimGone("the shim closed the connection without an answer")
        chunks.append(data)
        if data.endswith(b"\n"):
            return json.loads(b"".join(chunks))


def request(bundle_dir: str, msg: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
    """Send one request and return the shim's ``ok`` answer; raise the error it names, or
    ``ShimGone``; ``TimeoutError`` when ``timeout`` passes first."""
    sock = connect(bundle_dir, timeout)
    try:
        sock.sendall(json.dumps(msg).encode() + b"\n")
        reply = _read_reply(sock)
    except (ConnectionResetError, BrokenPipeError):
        raise ShimGone(bundle_dir) from None
    finally:
        sock.close()
    if not reply.get("ok"):
        raise error_from_reply(reply)
    return reply


def open_stream(bundle_dir: str, msg: dict[str, Any]) -> tuple[socket.socket, dict[str, Any]]:
    """Send an attach request; return the connected socket (now carrying the stream, in
    blocking mode) and the shim's answer."""
    sock = connect(bundle_dir, 30.0)
    try:
        sock.sendall(json.dumps(msg).encode() + b"\n")
        reply = json.loads(_read_line(sock))
    except BaseException:
        sock.close()
        raise
    if not reply.get("ok"):
        sock.close()
        raise error_from_reply(reply)
    sock.settimeout(None)
    return sock, reply
