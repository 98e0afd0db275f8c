"""pyd.client against a small HTTP server on a unix socket (pyd.testing.fake_api)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from pyd.testing.fake_api import FakeDaemon, Request, chunk, ping_then, reply

from pyd import errors
from pyd.client import (
    Client,
    DaemonUnreachable,
    ProtocolError,
    TLSConfig,
    demux,
    encode_query,
    parse_host,
    split_lines,
)


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "pyd.sock")


def serve(sock_path: str, routes: dict, api_version: str = "1.41") -> FakeDaemon:
    return FakeDaemon(sock_path, ping_then(routes, api_version))


# -- version negotiation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_version", "used"),
    [("1.41", "1.41"), ("1.40", "1.40"), ("1.45", "1.41"), ("1.9", "1.9"), (None, "1.24")],
)
def test_negotiation_uses_min_of_ours_and_the_ping_header(sock_path, server_version, used):
    def handle(req: Request, conn):
        if req.path == "/_ping":
            return reply(200, api_version=server_version)
        return reply(200, {"path": req.path})

    with FakeDaemon(sock_path, handle) as d:
        client = Client(d.host)
        assert client.get("/version") == {"path": f"/v{used}/version"}
        assert client.api_version == used
    assert [(r.method, r.path) for r in d.requests] == [
        ("HEAD", "/_ping"),
        ("GET", f"/v{used}/version"),
    ]


def test_negotiation_retries_ping_with_get_after_405(sock_path):
    def handle(req: Request, conn):
        if req.path == "/_ping":
            if req.method == "HEAD":
                return reply(405, {"message": "no HEAD here"}, api_version=None)
            return reply(200, "OK", api_version="1.40")
        return reply(200, {})

    with FakeDaemon(sock_path, handle) as d:
        Client(d.host).get("/info")
    assert [(r.method, r.path) for r in d.requests] == [
        ("HEAD", "/_ping"),
        ("GET", "/_ping"),
        ("GET", "/v1.40/info"),
    ]


def test_explicit_version_skips_the_ping(sock_path):
    with serve(sock_path, {("GET", "/info"): {"a": 1}}) as d:
        assert Client(d.host, version="1.39").get("/info") == {"a": 1}
    assert [r.target for r in d.requests] == ["/v1.39/info"]


def test_unversioned_request_does_not_ping(sock_path):
    with serve(sock_path, {}) as d:
        assert Client(d.host).ping() is True
    assert [(r.method, r.target) for r in d.requests] == [("GET", "/_ping")]


# -- replies -------------------------------------------------------------------------------------


def test_content_length_and_chunked_json_replies_on_one_kept_alive_connection(sock_path):
    doc = {"ID": "x" * 3000, "Plugins": {"Log": ["json-file"]}}
    raw = (json.dumps(doc) + "\n").encode()
    chunked = reply(200, chunks=[raw[:1], raw[1:1000], raw[1000:]],
                    headers={"Content-Type": "application/json"})
    routes = {("GET", "/small"): {"ok": True}, ("GET", "/big"): chunked}
    with serve(sock_path, routes) as d:
        client = Client(d.host)
        assert client.get("/small") == {"ok": True}
        assert client.get("/big") == doc
        assert client.get("/small") == {"ok": True}
        client.close()
    assert d.connections == 1
    assert {r.conn_id for r in d.requests} == {1}


def test_chunk_extensions_and_trailers_are_ignored(sock_path):
    raw = reply(200, headers={"Transfer-Encoding": "chunked"}, api_version="1.41")
    raw += b"3;name=value\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"
    with serve(sock_path, {("GET", "/x"): raw}) as d:
        client = Client(d.host)
        assert client.request("GET", "/x").content == b"abcde"
        assert client.request("GET", "/x").content == b"abcde"  # connection still in sync
    assert d.connections == 1


def test_connection_close_reply_is_not_reused(sock_path):
    routes = {("GET", "/x"): reply(200, {"n": 1}, headers={"Connection": "close"})}
    with serve(sock_path, routes) as d:
        client = Client(d.host, version="1.41")
        client.get("/x")
        client.get("/x")
    assert d.connections == 2


def test_reply_framed_by_connection_close(sock_path):
    def handle(req: Request, conn):
        req.close_after = True
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"

    with FakeDaemon(sock_path, handle) as d:
        assert Client(d.host, version="1.41").request("GET", "/x").content == b"until the end"


def test_stale_keep_alive_connection_is_retried_on_a_fresh_one(sock_path):
    def handle(req: Request, conn):
        req.close_after = True  # close silently after each reply, as an idle timeout would
        return reply(200, {"conn": conn.id})

    with FakeDaemon(sock_path, handle) as d:
        client = Client(d.host, version="1.41")
        assert client.get("/a") == {"conn": 1}
        assert client.get("/b") == {"conn": 2}
        assert client.post("/c", data={"x": 1}) == {"conn": 3}


def test_head_reply_has_no_body_even_with_content_length(sock_path):
    def handle(req: Request, conn):
        return b"HTTP/1.1 200 OK\r\nContent-Length: 72\r\nContent-Type: application/json\r\n\r\n"

    with FakeDaemon(sock_path, handle) as d:
        client = Client(d.host, version="1.41")
        resp = client.request("HEAD", "/containers/x/archive")
        assert resp.status == 200 and resp.content == b""
        assert resp.headers["content-length"] == "72"
        client.request("HEAD", "/containers/x/archive")
    assert d.connections == 1


def test_reply_cut_short_is_a_protocol_error(sock_path):
    def handle(req: Request, conn):
        req.close_after = True
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"

    with FakeDaemon(sock_path, handle) as d:
        with pytest.raises(ProtocolError, match="closed the connection mid-reply"):
            Client(d.host, version="1.41").get("/x")


def test_garbage_reply_is_a_protocol_error(sock_path):
    def handle(req: Request, conn):
        req.close_after = True
        return b"SSH-2.0-OpenSSH\r\n"

    with FakeDaemon(sock_path, handle) as d:
        with pytest.raises(ProtocolError, match="not an HTTP reply"):
            Client(d.host, version="1.41").get("/x")


# -- streams -------------------------------------------------------------------------------------


def test_json_lines_stream_arrives_incrementally_with_either_line_ending(sock_path):
    first_seen = threading.Event()

    def handle(req: Request, conn):
        conn.send(reply(200, headers={"Transfer-Encoding": "chunked"}))
        conn.send(chunk(b'{"status":"create","id":"a"}\n'))
        assert first_seen.wait(5), "client did not get the first event before the rest was sent"
        conn.send(chunk(b'{"status":"start",'))  # one message split over chunks
        conn.send(chunk(b'"id":"a"}\r\n{"progress":"x"}\r\n'))
        conn.send(chunk(b"\r\n"))
        conn.send(b"0\r\n\r\n")
        return None

    with FakeDaemon(sock_path, handle) as d:
        client = Client(d.host, version="1.41")
        got = []
        with client.stream("GET", "/events") as resp:
            for msg in resp.iter_json():
                got.append(msg)
                first_seen.set()
        assert got == [{"status": "create", "id": "a"}, {"status": "start", "id": "a"},
                       {"progress": "x"}]
        # the fully read stream released its connection for the next request
        client.request("GET", "/_ping", versioned=False)
    assert d.connections == 1


def test_multiplexed_frames_split_and_packed_across_chunks(sock_path):
    def frame(stream: int, data: bytes) -> bytes:
        return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data

    big = os.urandom(200_000)
    raw = frame(1, b"line 0\n") + frame(2, b"err 0\n") + frame(1, b"") + frame(1, big)
    pieces = [raw[:3], raw[3:20], raw[20:21], raw[21:]]
    with serve(sock_path, {("GET", "/containers/c/logs"): reply(200, chunks=pieces)}) as d:
        client = Client(d.host)
        with client.stream("GET", "/containers/c/logs", params={"stdout": True}) as resp:
            frames = list(resp.iter_frames())
    assert frames == [(1, b"line 0\n"), (2, b"err 0\n"), (1, b""), (1, big)]


def test_demux_rejects_a_truncated_frame():
    with pytest.raises(ProtocolError, match="inside a multiplexed frame"):
        list(demux([b"\x01\x00\x00\x00\x00\x00\x00\x05ab"]))


def test_split_lines_keeps_empty_lines_and_strips_crlf():
    assert list(split_lines([b"a\r\n\nb", b"c\n", b"tail"])) == [b"a", b"", b"bc", b"tail"]


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.InvalidParameter),
        (403, errors.Forbidden),
        (404, errors.NotFound),
        (409, errors.Conflict),
        (501, errors.NotSupported),
        (503, errors.Unavailable),
    ],
)
def test_error_status_maps_to_the_pyd_error_class(sock_path, status, cls):
    routes = {("GET", "/containers/x/json"): reply(status, {"message": "No such container: x"})}
    with serve(sock_path, routes) as d:
        with pytest.raises(cls) as info:
            Client(d.host).get("/containers/x/json")
    assert str(info.value) == "No such container: x"
    assert info.value.http_status == status


def test_500_is_a_plain_pyd_error_and_plain_text_bodies_are_the_message(sock_path):
    too_old = b"client version 1.11 is too old. Minimum supported API version is 1.12"
    routes = {
        ("GET", "/boom"): reply(500, {"message": "unexpected EOF"}),
        ("GET", "/old"): reply(400, too_old, {"Content-Type": "text/plain; charset=utf-8"}),
        ("GET", "/empty"): reply(404, b""),
    }
    with serve(sock_path, routes) as d:
        client = Client(d.host)
        with pytest.raises(errors.PydError) as info:
            client.get("/boom")
        assert type(info.value) is errors.PydError and str(info.value) == "unexpected EOF"
        with pytest.raises(errors.InvalidParameter, match="too old"):
            client.get("/old")
        with pytest.raises(errors.NotFound, match="404 Not Found"):
            client.get("/empty")
        # errors leave the connection usable
        assert client.ping()
    assert d.connections == 1


def test_304_is_not_an_error(sock_path):
    routes = {("POST", "/containers/x/start"): reply(304)}
    with serve(sock_path, routes) as d:
        assert Client(d.host).request("POST", "/containers/x/start").status == 304


def test_missing_socket_says_the_daemon_is_not_running(tmp_path):
    host = f"unix://{tmp_path}/nosuch.sock"
    with pytest.raises(DaemonUnreachable) as info:
        Client(host).get("/version")
    assert str(info.value) == (
        f"Cannot connect to the pyd daemon at {host}. Is the pyd daemon running?"
    )


def test_socket_nobody_listens_on_says_the_daemon_is_not_running(sock_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock_path)  # bound, never listening: connect() is refused
    try:
        with pytest.raises(DaemonUnreachable, match="Is the pyd daemon running"):
            Client(f"unix://{sock_path}").get("/version")
    finally:
        s.close()


def test_server_closing_before_answering_is_a_protocol_error(sock_path):
    def handle(req: Request, conn):
        req.close_after = True
        return b""

    with FakeDaemon(sock_path, handle) as d:
        with pytest.raises(ProtocolError, match="without answering"):
            Client(d.host, version="1.41").get("/x")


# -- requests ------------------------------------------------------------------------------------


def test_query_encoding():
    q = encode_query({
        "all": True, "size": False, "limit": None, "name": "a b/ü",
        "filters": {"label": {"a=b": True}}, "names": ["x:1", "y"],
    })
    assert q == (
        "all=1&size=0&name=a%20b%2F%C3%BC"
        "&filters=%7B%22label%22%3A%7B%22a%3Db%22%3Atrue%7D%7D&names=x%3A1&names=y"
    )


def test_request_bodies_json_bytes_file_and_iterator(sock_path):
    echo = lambda req, conn: reply(200, {"len": len(req.body)})  # noqa: E731
    routes = {("POST", "/p"): echo}
    payload = os.urandom(300_000)
    with serve(sock_path, routes) as d:
        client = Client(d.host)
        client.post("/p", data={"Image": "busybox", "Cmd": ["true"]})
        client.post("/p", body=b"raw bytes")
        client.post("/p", body=io.BytesIO(payload))
        client.post("/p", body=iter([b"a", b"", b"bc"]))
        client.post("/p")
    reqs = [r for r in d.requests if r.path.endswith("/p")]
    assert reqs[0].headers["content-type"] == "application/json"
    assert json.loads(reqs[0].body) == {"Image": "busybox", "Cmd": ["true"]}
    assert reqs[1].headers["content-length"] == "9" and reqs[1].body == b"raw bytes"
    assert reqs[2].headers["transfer-encoding"] == "chunked" and reqs[2].body == payload
    assert reqs[3].headers["transfer-encoding"] == "chunked" and reqs[3].body == b"abc"
    assert reqs[4].headers["content-length"] == "0" and reqs[4].body == b""


def test_early_error_reply_during_a_chunked_upload_is_reported(sock_path):
    def handle(req: Request, conn):
        return reply(404, {"message": "No such image: nosuch"})

    class SlowBody:
        def __init__(self):
            self.n = 0

        def read(self, size):
            self.n += 1
            return b"x" * 1000 if self.n < 50 else b""

    with FakeDaemon(sock_path, handle) as d:
        with pytest.raises(errors.NotFound, match="No such image"):
            Client(d.host, version="1.41").post("/images/load", body=SlowBody())


def test_hijack_after_101_streams_both_ways_with_half_close(sock_path):
    def frame(data: bytes) -> bytes:
        return b"\x01\x00\x00\x00" + len(data).to_bytes(4, "big") + data

    def handle(req: Request, conn):
        assert req.headers["upgrade"] == "tcp" and req.headers["connection"] == "Upgrade"
        # the 101 and the first output arrive in one segment: the client must keep the extra bytes
        conn.send(
            b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
            b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n" + frame(b"hello\n")
        )
        stdin = conn.reader.read_to_eof()  # until the client half-closes
        conn.send(frame(b"got " + stdin))
        req.close_after = True
        return None

    with serve(sock_path, {("POST", "/containers/c/attach"): handle}) as d:
        client = Client(d.host)
        with client.hijack("POST", "/containers/c/attach",
                           params={"stream": 1, "stdin": 1, "stdout": 1}) as h:
            assert h.status == 101
            h.send(b"abc")
            h.close_write()
            frames = list(h.iter_frames())
    assert frames == [(1, b"hello\n"), (1, b"got abc")]
    attach = d.requests[-1]
    assert attach.target == "/v1.41/containers/c/attach?stream=1&stdin=1&stdout=1"


def test_hijack_error_status_raises(sock_path):
    routes = {("POST", "/exec/e/start"): reply(409, {"message": "Container c is not running"})}
    with serve(sock_path, routes) as d:
        with pytest.raises(errors.Conflict, match="is not running"):
            Client(d.host).hijack("POST", "/exec/e/start", data={"Detach": False, "Tty": False})
    start = d.requests[-1]
    assert start.headers["content-type"] == "application/json"
    assert json.loads(start.body) == {"Detach": False, "Tty": False}


# -- hosts and TLS -------------------------------------------------------------------------------


def test_parse_host():
    assert parse_host("unix:///run/pyd/pyd.sock") == ("unix", "/run/pyd/pyd.sock")
    assert parse_host("/tmp/x.sock") == ("unix", "/tmp/x.sock")
    assert parse_host("tcp://10.0.0.1:2376") == ("tcp", ("10.0.0.1", 2376))
    assert parse_host("tcp://[::1]:2376") == ("tcp", ("::1", 2376))
    assert parse_host("tcp://example.org") == ("tcp", ("example.org", None))
    assert Client("tcp://example.org").address == ("example.org", 2375)
    assert Client("tcp://example.org", tls=TLSConfig()).address == ("example.org", 2376)
    for bad in ("ssh://host", "unix://relative", "tcp://h:99999", "http://x"):
        with pytest.raises(errors.InvalidParameter, match="invalid host"):
            parse_host(bad)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server cert for 127.0.0.1, a client cert; and a second, unrelated CA."""
    if not any(os.access(os.path.join(p, "openssl"), os.X_OK)
               for p in os.environ.get("PATH", "").split(":")):
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-keyout", f"{ca}-key.pem", "-out", f"{ca}.pem", "-subj", f"/CN={ca}", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, cn, ext in (("server", "127.0.0.1", ["-extfile", "ext.cnf"]), ("cert", "client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-key.pem",
                 "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", *ext, cwd=d)
    return d


def _tls_server(pki: Path, require_client_cert: bool):
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "server.pem", pki / "server-key.pem")
    if require_client_cert:
        ctx.load_verify_locations(pki / "ca.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED

    def handle(req: Request, conn):
        if req.path == "/_ping":
            return reply(200)
        peer = conn.sock.getpeercert()
        cn = dict(x[0] for x in peer["subject"])["commonName"] if peer else None
        return reply(200, {"client_cn": cn})

    return FakeDaemon("", handle, family=socket.AF_INET, ssl_context=ctx)


def test_tls_with_verification_and_client_certificate(pki):
    with _tls_server(pki, require_client_cert=True) as d:
        tls = TLSConfig(verify=True, ca=str(pki / "ca.pem"), cert=str(pki / "cert.pem"),
                        key=str(pki / "cert-key.pem"))
        client = Client(d.host, tls=tls)
        assert client.get("/info") == {"client_cn": "client"}
        assert client.get("/info") == {"client_cn": "client"}
        client.close()
    assert d.connections == 1


def test_tls_verification_fails_against_another_ca(pki):
    with _tls_server(pki, require_client_cert=False) as d:
        client = Client(d.host, tls=TLSConfig(verify=True, ca=str(pki / "other-ca.pem")))
        with pytest.raises(DaemonUnreachable, match="TLS handshake .* failed"):
            client.get("/info")
        # --tls without --tlsverify encrypts but does not check the certificate
        assert Client(d.host, tls=TLSConfig(verify=False)).get("/info") == {"client_cn": None}


def test_unreadable_tls_files_are_a_clear_error(tmp_path):
    client = Client("tcp://127.0.0.1:1", tls=TLSConfig(ca=str(tmp_path / "nosuch.pem")))
    with pytest.raises(errors.InvalidParameter, match="cannot load TLS files"):
        client._make_ssl_context(__import__("ssl"))


def test_read_timeout_is_reported(sock_path):
    release = threading.Event()

    def handle(req: Request, conn):
        release.wait(10)  # never answers in time
        req.close_after = True
        return b""

    with FakeDaemon(sock_path, handle) as d:
        client = Client(d.host, version="1.41", timeout=0.3)
        try:
            with pytest.raises(errors.Unavailable, match="timed out waiting for the pyd daemon"):
                client.get("/info")
        finally:
            release.set()
