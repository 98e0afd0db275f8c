"""Run a real ``pyd daemon`` in a test: ``DaemonProcess`` and the ``pyd_daemon`` fixture.

Each daemon gets its own data-root (under the directory you pass, usually ``tmp_path``), and
its own exec-root, socket and pidfile in a short directory under /tmp (unix socket paths
must stay under 108 bytes, which pytest's ``tmp_path`` can exceed). It never reads
/etc/pyd/daemon.json: a config file is always written and passed.

    def test_ping(pyd_daemon):
        d = pyd_daemon(config={"labels": ["a=b"]}, flags=["--log-driver", "none"])
        status, headers, body = d.request("GET", "/_ping")
        assert body == b"OK"

    with DaemonProcess(tmp_path) as d:          # outside pytest fixtures
        docker.DockerClient(base_url=d.base_url).ping()

If ``PYD_TEST_STORAGE_DRIVER`` is set (tox sets it), ``--storage-driver`` is passed unless
the test chose one itself. Unless the test chooses ``bridge`` or ``bip``, each daemon gets its
own default bridge ``pt<4 hex>0`` (so its kernel objects are named ``pt<4 hex>...``): two test
daemons never share a bridge or an nftables table.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pytest


class DaemonStartError(RuntimeError):
    """The daemon exited or did not answer /_ping in time; the message holds its log."""


class DaemonProcess:
    """A ``pyd daemon`` subprocess listening on a private unix socket."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        config: Mapping[str, Any] | None = None,
        flags: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        storage_driver: str | None = None,
        netns: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root)
        # run inside this network namespace (a bind-mounted netns file): ``nsenter --net=PATH``
        self.netns = str(netns) if netns is not None else None
        self.data_root = self.root / "data"
        self.config = dict(config or {})
        self.flags = list(flags)
        self.env = dict(env or {})
        self.timeout = timeout
        self.storage_driver = storage_driver if storage_driver is not None else os.environ.get("PYD_TEST_STORAGE_DRIVER", "")
        self._run_dir = Path(tempfile.mkdtemp(prefix="pyd-t", dir="/tmp"))
        self.exec_root = self._run_dir / "exec"
        self.socket_path = self._run_dir / "pyd.sock"
        self.pidfile = self._run_dir / "pyd.pid"
        self.config_file = self.root / "daemon.json"
        self.log_file = self.root / "daemon.log"
        self.bridge = f"pt{secrets.token_hex(2)}0"  # used unless the test chooses bridge/bip
        self.proc: subprocess.Popen[bytes] | None = None

    # -- addresses --------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The ``-H`` address: ``unix:///tmp/.../pyd.sock``."""
        return f"unix://{self.socket_path}"

    base_url = host  # what docker.DockerClient(base_url=...) takes

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # -- lifecycle ------------------------------------------------------------------------------

    def argv(self) -> list[str]:
        """The command line used to start the daemon (``pyd daemon ...``)."""
        # nsenter execs the daemon (no fork for --net), so ``pid`` stays the daemon's own pid
        prefix = ["nsenter", f"--net={self.netns}"] if self.netns else []
        args = prefix + [
            sys.executable,
            "-m",
            "pyd.cli.main",
            "daemon",
            "--config-file",
            str(self.config_file),
        ]
        def chosen(key: str, *flag_names: str) -> bool:
            if key in self.config:
                return True
            return any(f == n or f.startswith(n + "=") for f in self.flags for n in flag_names)

        if not chosen("data-root", "--data-root"):
            args += ["--data-root", str(self.data_root)]
        if not chosen("exec-root", "--exec-root"):
            args += ["--exec-root", str(self.exec_root)]
        if not chosen("pidfile", "-p", "--pidfile"):
            args += ["--pidfile", str(self.pidfile)]
        if not chosen("hosts", "-H", "--host"):
            args += ["-H", self.host]
        if self.storage_driver and not chosen("storage-driver", "-s", "--storage-driver"):
            args += ["--storage-driver", self.storage_driver]
        if not chosen("bridge", "-b", "--bridge") and not chosen("bip", "--bip"):
            args += ["--bridge", self.bridge]
        return args + self.flags

    def start(self, *, wait: bool = True) -> "DaemonProcess":
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(self.config))
        env = dict(os.environ)
        env.update(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.cleanup()  # no process or run directory left behind; the log stays in root
                raise
        return self

    def wait_ready(self) -> None:
        """Wait until ``GET /_ping`` answers OK; raise ``DaemonStartError`` with the log if the
        daemon exits first or ``timeout`` passes."""
        assert self.proc is not None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                how = self.proc.returncode
                what = f"was killed by signal {-how}" if how < 0 else f"exited with status {how}"
                raise DaemonStartError(f"pyd daemon {what}:\n{self.log()}")
            try:
                status, _, body = self.request("GET", "/_ping", timeout=2.0)
                if status == 200 and body == b"OK":
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise DaemonStartError(f"pyd daemon did not answer /_ping within {self.timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait, SIGKILL (by pid) if it hangs. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def cleanup(self) -> None:
        """Stop the daemon and remove its private run directory."""
        self.stop()
        shutil.rmtree(self._run_dir, ignore_errors=True)

    def __enter__(self) -> "DaemonProcess":
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- a tiny stdlib client ----------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(self.socket_path))
        return sock

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | Mapping[str, Any] | list[Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request over the socket: ``(status, headers, body)``. A dict/list body is
        sent as JSON with ``Content-Type: application/json``."""
        hdrs = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        conn = _UnixHTTPConnection(str(self.socket_path), timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def get_json(self, path: str) -> Any:
        status, _, body = self.request("GET", path)
        if status != 200:
            raise AssertionError(f"GET {path}: {status} {body!r}")
        return json.loads(body)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


@pytest.fixture
def pyd_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """A factory that starts ``pyd daemon`` processes; all are stopped at teardown.

    ``pyd_daemon(config=None, flags=(), **kwargs)`` -> a started, answering ``DaemonProcess``
    (kwargs go to ``DaemonProcess``; ``wait=False`` returns it as soon as it is spawned).
    """
    started: list[DaemonProcess] = []

    def start(config: Mapping[str, Any] | None = None, flags: Sequence[str] = (), *, wait: bool = True, **kwargs: Any) -> DaemonProcess:
        d = DaemonProcess(tmp_path / f"daemon{len(started)}", config=config, flags=flags, **kwargs)
        started.append(d)
        return d.start(wait=wait)

    try:
        yield start
    finally:
        for d in started:
            d.cleanup()
