"""Container start latency, pyd side by side with Docker in the same run.

Measures, for each engine:

* ``run --rm``: the median wall time of ``<cli> run --rm --network none busybox true`` (the
  whole command as a user types it: CLI start-up, create, attach, wait, start, exit, removal);
* ``20 detached``: the wall time to start 20 containers at once with
  ``<cli> run -d --network none busybox sleep 300`` (20 CLI processes in parallel), median of
  several rounds, and the resulting starts per second.

pyd runs as its own daemon (temporary data-root, ``PYD_BENCH_STORAGE_DRIVER``, default overlay2)
with the busybox test image. Docker is Debian's ``docker.io`` when installed: the script starts
its own dockerd (own --data-root, --exec-root, unix socket, --pidfile, --bridge=none,
--iptables=false), loads the same busybox image into it with ``docker load`` (from
``pyd save``), and stops it by pid afterwards. Run as root::

    /work/venv/bin/python benchmarks/run_latency.py [--runs 20] [--rounds 3] [--no-docker]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from pyd.testing.daemon import DaemonProcess
from pyd.testing.images import busybox_rootfs_tar

DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
IMAGE = "busybox:latest"


def pyd_cli(host: str) -> list[str]:
    pyd = Path(sys.executable).with_name("pyd")  # the console script, as a user runs it
    return [str(pyd) if pyd.exists() else sys.executable, *([] if pyd.exists() else ["-m", "pyd.cli.main"]), "-H", host]


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode().strip()}")
    return elapsed


def bench_run_rm(cli: list[str], runs: int) -> list[float]:
    argv = [*cli, "run", "--rm", "--network", "none", IMAGE, "true"]
    timed(argv)  # warm-up (page cache, lazy imports in the daemon)
    return [timed(argv) for _ in range(runs)]


def bench_parallel(cli: list[str], count: int, rounds: int, cleanup: Callable[[], None]) -> list[float]:
    argv = [*cli, "run", "-d", "--network", "none", IMAGE, "sleep", "300"]
    out = []
    for _ in range(rounds):
        with ThreadPoolExecutor(count) as pool:
            t = time.perf_counter()
            list(pool.map(lambda _: timed(argv), range(count)))
            out.append(time.perf_counter() - t)
        cleanup()
    return out


def remove_all(cli: list[str]) -> None:
    ids = subprocess.run([*cli, "ps", "-aq"], capture_output=True, text=True, timeout=60).stdout.split()
    if ids:
        subprocess.run([*cli, "rm", "-f", *ids], capture_output=True, timeout=300)


# -- the engines ------------------------------------------------------------------------------------


def start_pyd(root: Path, driver: str) -> DaemonProcess:
    d = DaemonProcess(root / "pyd", storage_driver=driver, timeout=60)
    d.start()
    tar = busybox_rootfs_tar(root / "busybox.tar")
    subprocess.run([*pyd_cli(d.host), "import", str(tar), IMAGE], check=True, capture_output=True, timeout=120)
    return d


class Dockerd:
    """A private dockerd: its own data-root, exec-root, socket and pidfile; no bridge, no iptables."""

    def __init__(self, root: Path) -> None:
        self.root = root / "docker"
        self.run_dir = Path(tempfile.mkdtemp(prefix="pyd-bench-dockerd-", dir="/tmp"))
        self.sock = self.run_dir / "docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "dockerd.log", "wb")
        self.proc = subprocess.Popen(
            [DOCKERD, "--data-root", str(self.root / "data"), "--exec-root", str(self.run_dir / "exec"),
             "-H", self.host, "--pidfile", str(self.run_dir / "docker.pid"), "--bridge=none",
             "--iptables=false", "--ip-masq=false", "--config-file", str(self.write_config())],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited: {(self.root / 'dockerd.log').read_text()[-2000:]}")
            if subprocess.run([DOCKER, "-H", self.host, "version"], capture_output=True).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("dockerd did not come up within 60 s")

    def write_config(self) -> Path:
        path = self.root / "daemon.json"
        path.write_text("{}")
        return path

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        _unmount_below(str(self.root))
        _unmount_below(str(self.run_dir))
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _unmount_below(path: str) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for p in sorted((p for p in points if p.startswith(path)), key=len, reverse=True):
        subprocess.run(["umount", "-l", p], check=False)


# -- report -----------------------------------------------------------------------------------------


def summary(name: str, rm: list[float], par: list[float], count: int) -> dict[str, float]:
    med_rm, med_par = statistics.median(rm), statistics.median(par)
    return {
        "engine": name,
        "run_rm_median_s": round(med_rm, 4),
        "run_rm_min_s": round(min(rm), 4),
        "detached_20_median_s": round(med_par, 3),
        "starts_per_s": round(count / med_par, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=20)
    ap.add_argument("--no-docker", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    driver = os.environ.get("PYD_BENCH_STORAGE_DRIVER", "overlay2")
    root = Path(tempfile.mkdtemp(prefix="pyd-bench-run-"))
    results = []
    d = start_pyd(root, driver)
    try:
        cli = pyd_cli(d.host)
        rm = bench_run_rm(cli, args.runs)
        par = bench_parallel(cli, args.parallel, args.rounds, lambda: remove_all(cli))
        results.append(summary(f"pyd ({driver})", rm, par, args.parallel))
        archive = root / "busybox-image.tar"
        subprocess.run([*cli, "save", "-o", str(archive), IMAGE], check=True, capture_output=True, timeout=120)
    finally:
        remove_all(pyd_cli(d.host))
        d.cleanup()
    if not args.no_docker and os.path.exists(DOCKERD):
        dk = Dockerd(root)
        try:
            dk.start()
            cli = [DOCKER, "-H", dk.host]
            subprocess.run([*cli, "load", "-i", str(archive)], check=True, capture_output=True, timeout=120)
            rm = bench_run_rm(cli, args.runs)
            par = bench_parallel(cli, args.parallel, args.rounds, lambda: remove_all(cli))
            version = subprocess.run([*cli, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True).stdout.strip()
            results.append(summary(f"docker {version}", rm, par, args.parallel))
        finally:
            try:
                remove_all([DOCKER, "-H", dk.host])
            finally:
                dk.stop()
    elif not args.no_docker:
        print("(dockerd not installed: apt-get install docker.io for the comparison)", file=sys.stderr)
    shutil.rmtree(root, ignore_errors=True)

    print(f"{'engine':<22} {'run --rm median':>16} {'min':>8} {'20 detached':>12} {'starts/s':>9}")
    for r in results:
        print(f"{r['engine']:<22} {r['run_rm_median_s']:>15.3f}s {r['run_rm_min_s']:>7.3f}s "
              f"{r['detached_20_median_s']:>11.2f}s {r['starts_per_s']:>9.1f}")
    if len(results) == 2:
        ratio = results[0]["run_rm_median_s"] / results[1]["run_rm_median_s"]
        print(f"pyd run --rm / docker run --rm = {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
