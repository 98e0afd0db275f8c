"""A real ``pyd daemon`` over its real unix socket: API shapes, startup errors, signals,
many idle clients."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

import pyd
from pyd.registry import Kind, installed_names
from pyd.testing.daemon import DaemonProcess

pytestmark = pytest.mark.integration

FLAGS = ["--log-driver", "none"]  # the tests here are about the daemon, not logging


@pytest.fixture(autouse=True)
def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("daemon")
    with DaemonProcess(root, config={"labels": ["suite=daemon"]}, flags=FLAGS) as d:
        yield d


def run_daemon(tmp_path: Path, *args: str, config: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``pyd daemon ARGS`` expected to exit by itself (errors, --validate)."""
    d = DaemonProcess(tmp_path, config=config, flags=list(args))
    d.root.mkdir(parents=True, exist_ok=True)
    d.config_file.write_text(json.dumps(d.config))
    try:
        return subprocess.run(d.argv(), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    finally:
        d.cleanup()


# -- API shapes ------------------------------------------------------------------------------------


def test_ping_head_and_get(daemon: DaemonProcess) -> None:
    for method, body in (("HEAD", b""), ("GET", b"OK")):
        status, headers, got = daemon.request(method, "/_ping")
        assert (status, got) == (200, body)
        assert headers["api-version"] == "1.41"
        assert headers["docker-experimental"] == "false" and headers["ostype"] == "linux"
        assert headers["server"] == f"pyd/{pyd.__version__} (linux)"
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert headers["cache-control"] == "no-cache, no-store, must-revalidate" and headers["pragma"] == "no-cache"
    assert daemon.request("GET", "/v1.41/_ping")[2] == b"OK"


def test_version_and_info(daemon: DaemonProcess) -> None:
    status, headers, body = daemon.request("GET", "/v1.41/version")
    assert status == 200 and headers["content-type"] == "application/json" and body.endswith(b"}\n")
    v = json.loads(body)
    assert (v["Version"], v["ApiVersion"], v["MinAPIVersion"], v["Os"]) == (pyd.__version__, "1.41", "1.12", "linux")
    info = daemon.get_json("/v1.41/info")
    assert info["DockerRootDir"] == str(daemon.data_root)
    assert info["Labels"] == ["suite=daemon"]
    assert info["LoggingDriver"] == "none"
    assert info["Plugins"]["Log"] == installed_names(Kind.LOG)
    assert info["Plugins"]["Volume"] == installed_names(Kind.VOLUME)
    assert info["Plugins"]["Network"] == installed_names(Kind.NETWORK)
    assert info["Plugins"]["Authorization"] is None
    storage = installed_names(Kind.GRAPHDRIVER)
    if storage:
        assert info["Driver"] in storage and info["DriverStatus"]
    assert info["CgroupVersion"] in ("1", "2") and info["NCPU"] == os.cpu_count()
    assert info["ID"] == (daemon.data_root / "engine-id").read_text().strip()


def test_version_prefix_errors_and_404(daemon: DaemonProcess) -> None:
    status, headers, body = daemon.request("GET", "/v1.99/version")
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"message": "client version 1.99 is too new. Maximum supported API version is 1.41"}
    status, headers, body = daemon.request("GET", "/v1.11/version")
    assert status == 400 and headers["content-type"].startswith("text/plain")
    assert body.decode().startswith("client version 1.11 is too old. Minimum supported API version is 1.12")
    for method, path in (("GET", "/nonexistent"), ("GET", "/v1.41/containers/create"), ("DELETE", "/v1.41/version")):
        status, headers, body = daemon.request(method, path)
        assert (status, body) == (404, b'{"message":"page not found"}\n'), (method, path)
        assert headers["api-version"] == "1.41"


def test_malformed_requests_get_4xx_not_tracebacks(daemon: DaemonProcess) -> None:
    sock = daemon.connect()
    try:
        sock.sendall(b"GARBAGE / HTTP/9.9\r\n\r\n")
        reply = sock.recv(4096)
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.") and b" 400 " in reply.split(b"\r\n", 1)[0], reply[:100]
    status, _, body = daemon.request("GET", "/events?until=notatime")
    assert status == 400 and b"until" in body and b"Traceback" not in body
    assert daemon.request("GET", "/_ping")[0] == 200


def test_events_stream_with_reload_and_since_until(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, config={"labels": ["a=1"], "debug": False}, flags=FLAGS) as d:
        sock = d.connect(timeout=10)
        sock.sendall(b"GET /v1.41/events?filters=%7B%22type%22%3A%7B%22daemon%22%3Atrue%7D%7D HTTP/1.1\r\nHost: x\r\n\r\n")
        head = sock.recv(4096)  # the headers arrive before any event
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Transfer-Encoding: chunked" in head
        d.config_file.write_text(json.dumps({"labels": ["a=2"], "debug": True}))
        d.signal(signal.SIGHUP)
        data = head.split(b"\r\n\r\n", 1)[1]
        deadline = time.monotonic() + 10
        while b"reload" not in data and time.monotonic() < deadline:
            data += sock.recv(4096)
        sock.close()
        line = next(l for l in data.split(b"\r\n") if l.startswith(b"{"))
        event = json.loads(line)
        assert (event["Type"], event["Action"]) == ("daemon", "reload")
        assert event["Actor"]["ID"] == d.get_json("/info")["ID"]
        assert d.get_json("/info")["Labels"] == ["a=2"] and d.get_json("/info")["Debug"] is True
        # the same event again from history, bounded by until: the stream ends by itself
        now = int(time.time())
        status, _, body = d.request("GET", f"/events?since={now - 60}&until={now + 1}")
        assert status == 200
        assert [json.loads(l)["Action"] for l in body.splitlines()] == ["reload"]


# -- start-up errors -----------------------------------------------------------------------------


def test_unknown_storage_driver_lists_available_ones(tmp_path: Path) -> None:
    proc = run_daemon(tmp_path, "--storage-driver", "nosuch", *FLAGS)
    assert proc.returncode != 0
    installed = ", ".join(installed_names(Kind.GRAPHDRIVER)) or "none"
    assert f'storage driver "nosuch" is not installed; available storage drivers: {installed}' in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_key_and_conflict_name_the_key(tmp_path: Path) -> None:
    proc = run_daemon(tmp_path / "a", *FLAGS, config={"storage-drvier": "vfs"})
    assert proc.returncode != 0
    assert "the following directives don't match any configuration option: storage-drvier" in proc.stderr
    proc = run_daemon(tmp_path / "b", "--log-driver", "none", "--debug", config={"log-driver": "none"})
    assert proc.returncode != 0
    assert (
        "the following directives are specified both as a flag and in the configuration file: "
        "log-driver: (from flag: none, from file: none)"
    ) in proc.stderr
    proc = run_daemon(tmp_path / "c", *FLAGS, config={"debug": "yes"})
    assert proc.returncode != 0 and '"debug"' in proc.stderr and "a boolean" in proc.stderr


def test_validate(tmp_path: Path) -> None:
    proc = run_daemon(tmp_path / "ok", "--validate", *FLAGS, config={"labels": ["x=y"]})
    assert (proc.returncode, proc.stdout) == (0, "configuration OK\n"), proc.stderr
    proc = run_daemon(tmp_path / "bad", "--validate", "--log-driver", "nosuch-log")
    assert proc.returncode == 1 and 'log driver "nosuch-log" is not installed' in proc.stderr
    proc = run_daemon(tmp_path / "badopt", "--validate", "--log-driver", "none", "--log-opt", "max-size=1m")
    assert proc.returncode == 1 and "max-size" in proc.stderr and "none" in proc.stderr
    proc = run_daemon(tmp_path / "group", "--validate", "-G", "no-such-group-pyd", *FLAGS)
    assert proc.returncode == 1 and 'group "no-such-group-pyd" (-G/--group) does not exist' in proc.stderr


def test_tcp_without_tls_is_refused(tmp_path: Path) -> None:
    proc = run_daemon(tmp_path, "-H", "tcp://127.0.0.1:23750", *FLAGS)
    assert proc.returncode != 0
    assert "refusing to listen on tcp://127.0.0.1:23750 without TLS" in proc.stderr


# -- lifecycle -------------------------------------------------------------------------------------


def test_socket_mode_pidfile_and_clean_sigterm(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, flags=FLAGS).start()
    try:
        st = os.stat(d.socket_path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        assert int(d.pidfile.read_text()) == d.pid
        # a second daemon on the same pidfile is refused, naming the holder
        proc = run_daemon(tmp_path / "second", "--pidfile", str(d.pidfile), *FLAGS)
        assert proc.returncode != 0 and f"(held by pid {d.pid})" in proc.stderr
        # ... and one on the same socket too
        proc = run_daemon(tmp_path / "third", "-H", d.host, *FLAGS)
        assert proc.returncode != 0 and "another daemon is already listening" in proc.stderr
        assert d.request("GET", "/_ping")[2] == b"OK"  # the refused daemon left our socket alone
        assert d.stop() == 0
        assert not d.socket_path.exists() and not d.pidfile.exists()
        assert "daemon shutdown complete" in d.log()
    finally:
        d.cleanup()


def test_restart_after_a_crash_takes_over_stale_socket_and_pidfile(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, flags=FLAGS).start()
    try:
        d.signal(signal.SIGKILL)
        d.proc.wait(10)
        assert d.socket_path.exists() and d.pidfile.exists()  # left behind by the crash
        d.start()
        assert d.request("GET", "/_ping")[2] == b"OK"
        assert int(d.pidfile.read_text()) == d.pid
    finally:
        d.cleanup()


def test_many_idle_and_slow_clients_do_not_block_a_ping(daemon: DaemonProcess) -> None:
    idle: list[socket.socket] = []
    try:
        for i in range(300):
            s = daemon.connect()
            if i % 2:
                s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a request that never ends
            idle.append(s)
        t0 = time.monotonic()
        for _ in range(5):
            status, _, body = daemon.request("GET", "/_ping", timeout=5)
            assert (status, body) == (200, b"OK")
        assert time.monotonic() - t0 < 3
        # a keep-alive connection serves requests one after another
        conn = daemon.connect()
        conn.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        data = b""
        while data.count(b"\r\n\r\nOK") < 2:
            chunk = conn.recv(4096)
            assert chunk
            data += chunk
        conn.close()
    finally:
        for s in idle:
            s.close()


# -- TCP with TLS -----------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_certs(d: Path) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=pyd-test-ca", cwd=d)
    for name, cn, ext in (
        ("server", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        ("alice", "alice", "extendedKeyUsage=clientAuth\n"),
        ("bob", "bob", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True).returncode != 0, reason="needs the openssl CLI")
def test_tcp_with_tls_requires_a_client_certificate_and_passes_its_cn_to_authz(tmp_path: Path) -> None:
    import http.client
    import ssl

    if "policy" not in installed_names(Kind.AUTHZ):
        pytest.fail("pip install -e plugins/authz_policy first")
    certs = tmp_path / "certs"
    certs.mkdir()
    _make_certs(certs)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"rules": [{"action": "deny", "path": "^/info$", "unless_user": ["alice"], "reason": "alice only"}]}))
    port = _free_port()
    config = {
        "tlsverify": True,
        "tlscacert": str(certs / "ca.pem"),
        "tlscert": str(certs / "server.pem"),
        "tlskey": str(certs / "server.key"),
        "authorization-plugins": ["policy"],
        "authorization-opts": {"policy": {"file": str(policy)}},
    }
    d = DaemonProcess(tmp_path / "d", config=config, flags=FLAGS)
    d.flags += ["-H", d.host, "-H", f"tcp://127.0.0.1:{port}"]

    def get(path: str, client: str | None) -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        if client:
            ctx.load_cert_chain(str(certs / f"{client}.pem"), str(certs / f"{client}.key"))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    with d:
        assert get("/_ping", "alice") == (200, b"OK")
        assert get("/v1.41/info", "alice")[0] == 200
        status, body = get("/v1.41/info", "bob")
        assert (status, json.loads(body)) == (403, {"message": "authorization denied by plugin policy: alice only"})
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            get("/_ping", None)  # no client certificate: no connection
        assert d.request("GET", "/_ping")[2] == b"OK"  # the unix socket serves too
