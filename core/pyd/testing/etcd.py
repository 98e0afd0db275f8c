"""A real etcd server for tests: Debian's ``/usr/bin/etcd`` (package ``etcd-server``).

::

    from pyd.testing.etcd import EtcdProcess, free_port, require_etcd

    require_etcd()                                     # pytest.skip with the reason if missing
    etcd = EtcdProcess(tmp_path / "etcd", f"http://127.0.0.1:{free_port()}",
                       f"http://127.0.0.1:{free_port()}")
    etcd.start()                                       # returns once it serves clients
    ...  etcd.stop(); etcd.start()                     # an outage; same data afterwards
    etcd.kill()                                        # SIGKILL (a crashed store)

With ``netns=PATH`` (a bind-mounted network namespace) etcd runs inside that namespace
(``nsenter --net=PATH``); readiness is then read from its log, since this process cannot reach
the namespace's addresses. The process is only ever signalled by its pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType

ETCD = "/usr/bin/etcd"
READY_MARK = b"ready to serve client requests"


def require_etcd() -> str:
    """The etcd binary, or ``pytest.skip`` saying which package provides it."""
    path = ETCD if os.access(ETCD, os.X_OK) else shutil.which("etcd")
    if not path:
        import pytest

        pytest.skip(f"{ETCD} is missing: install the Debian package etcd-server")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's pick; tiny race, fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EtcdProcess:
    """One single-member etcd cluster with its own data directory."""

    def __init__(
        self,
        data_dir: str | Path,
        client_url: str,
        peer_url: str,
        netns: str | Path | None = None,
        name: str = "pyd-test",
        start_timeout: float = 20.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.client_url = client_url
        self.peer_url = peer_url
        self.netns = str(netns) if netns else None
        self.name = name
        self.start_timeout = start_timeout
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``cluster-store`` value for this server (``etcd://HOST:PORT``)."""
        return "etcd://" + self.client_url.split("://", 1)[1]

    def command(self) -> list[str]:
        cmd = [
            require_etcd(),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"{self.name}-{os.getpid()}",
        ]
        if self.netns:
            cmd = ["nsenter", f"--net={self.netns}", *cmd]
        return cmd

    def start(self) -> None:
        """Start (or start again on the same data) and wait until it serves clients."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode} at start: {self.log_tail()}")
            if self._ready(offset):
                return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"etcd at {self.client_url} did not become ready in {self.start_timeout}s: {self.log_tail()}")

    def _ready(self, offset: int) -> bool:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            if READY_MARK not in f.read():
                return False
        if self.netns:
            return True
        try:
            with urllib.request.urlopen(self.client_url + "/health", timeout=1) as resp:
                return b'"true"' in resp.read()
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: int, timeout: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)  # nsenter execs etcd, so the pid is etcd's
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> EtcdProcess:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
