"""Image uploads through a real daemon: the body as it arrives on the wire (in small pieces,
larger than the daemon's read-ahead buffer, cut off by the client) and what ``save`` gives
back of it.

The daemon receives an upload on its event loop ahead of the worker that applies it, with a
bounded buffer; these tests check the bytes that reach the layer store are the upload's,
in order, whatever its pacing, and that a client that goes away leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from pyd.registry import Kind, installed_names
from pyd.testing.daemon import DaemonProcess

pytestmark = pytest.mark.integration


def _driver() -> str:
    return os.environ.get("PYD_TEST_STORAGE_DRIVER") or "overlay2"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[DaemonProcess]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = _driver()
    if name not in installed_names(Kind.GRAPHDRIVER):
        pytest.skip(f"storage driver plugin {name} is not installed")
    d = DaemonProcess(tmp_path_factory.mktemp(f"upload-{name}"), flags=["--log-driver", "none", "--bridge", "none"],
                      storage_driver=name)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


def _layer(files: int, big: int = 0) -> bytes:
    """A PAX tar with ``files`` small files (some with long names) and ``big`` bytes in one file."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo("dir")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
        tf.addfile(d)
        for i in range(files):
            name = f"dir/{'long-' * 25 if i % 10 == 0 else ''}f{i}"
            data = os.urandom(37 * (i % 50))
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
        if big:
            ti = tarfile.TarInfo("big")
            ti.size, ti.mtime = big, 1_700_000_000
            tf.addfile(ti, io.BytesIO(os.urandom(big)))
    return buf.getvalue() + bytes(3000)  # trailing zeros past the end blocks belong to the digest


def _post_import(d: DaemonProcess, repo: str, body: bytes, piece: int, pause: float = 0.0,
                 stop_after: int | None = None) -> socket.socket:
    sock = d.connect(timeout=120)
    sock.sendall(
        f"POST /v1.41/images/create?fromSrc=-&repo={repo} HTTP/1.1\r\nHost: x\r\n"
        "Transfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n".encode()
    )
    sent = 0
    for i in range(0, len(body), piece):
        part = body[i : i + piece]
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sent += len(part)
        if pause:
            time.sleep(pause)
        if stop_after is not None and sent >= stop_after:
            return sock
    sock.sendall(b"0\r\n\r\n")
    return sock


def _reply(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
        if b"\r\n0\r\n\r\n" in b"".join(chunks[-2:]):
            break
    return b"".join(chunks)


def _saved_layer(d: DaemonProcess, name: str) -> bytes:
    status, _, body = d.request("GET", f"/images/{name}/get", timeout=120)
    assert status == 200, body[:300]
    with tarfile.open(fileobj=io.BytesIO(body)) as tf:
        manifest = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
        [layer] = manifest[0]["Layers"]
        return tf.extractfile(layer).read()  # type: ignore[union-attr]


def _image_root(d: DaemonProcess) -> Path:
    return d.data_root / "image" / d.storage_driver


@pytest.mark.parametrize("piece,pause", [(997, 0.0), (100, 0.0005)])
def test_upload_in_small_pieces_is_saved_back_byte_for_byte(daemon, piece, pause):
    repo = f"pieces-{uuid.uuid4().hex[:8]}"
    body = _layer(300 if pause else 2000)
    sock = _post_import(daemon, repo, body, piece, pause)
    try:
        reply = _reply(sock)
    finally:
        sock.close()
    assert b'"status": "sha256:' in reply or b'"status":"sha256:' in reply, reply[-300:]
    assert _saved_layer(daemon, repo) == body
    assert daemon.request("DELETE", f"/images/{repo}")[0] == 200


def test_upload_larger_than_the_read_ahead_buffer(daemon):
    repo = f"large-{uuid.uuid4().hex[:8]}"
    body = _layer(3000, big=40 << 20)
    sock = _post_import(daemon, repo, body, 1 << 20)
    try:
        reply = _reply(sock)
    finally:
        sock.close()
    assert b"sha256:" in reply, reply[-300:]
    assert _saved_layer(daemon, repo) == body
    assert daemon.request("DELETE", f"/images/{repo}")[0] == 200


def test_client_gone_mid_upload_leaves_nothing(daemon):
    repo = f"gone-{uuid.uuid4().hex[:8]}"
    body = _layer(4000, big=8 << 20)
    staging = _image_root(daemon) / "layerdb" / "tmp"
    before = set(staging.iterdir())
    sock = _post_import(daemon, repo, body, 65536, stop_after=len(body) // 2)
    deadline = time.monotonic() + 20
    while set(staging.iterdir()) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert set(staging.iterdir()) != before, "the import did not start"
    sock.close()  # mid-chunk stream: the body is cut off
    deadline = time.monotonic() + 30
    while set(staging.iterdir()) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(staging.iterdir()) == before, "the failed import left its staging behind"
    status, _, _ = daemon.request("GET", f"/images/{repo}/json")
    assert status == 404
    names = [t for img in daemon.get_json("/images/json?all=1") for t in img.get("RepoTags") or []]
    assert not [n for n in names if n.startswith(repo)]
    # and the daemon still imports
    repo2 = f"after-{uuid.uuid4().hex[:8]}"
    small = _layer(10)
    sock = _post_import(daemon, repo2, small, 4096)
    try:
        assert b"sha256:" in _reply(sock)
    finally:
        sock.close()
    assert _saved_layer(daemon, repo2) == small
