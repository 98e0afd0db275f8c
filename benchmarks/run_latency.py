"""Container start latency, pyd side by side with Docker in the same run.

Measures, for each engine, the wall time of whole commands as a user types them (CLI start-up
included):

* ``run --rm none``: ``<cli> run --rm --network none busybox true`` (create, attach, wait,
  start, exit, removal);
* ``run --rm bridge``: ``<cli> run --rm busybox true`` on the default bridge network (pyd
  only: the private dockerd runs with ``--bridge=none``, so it has no default bridge);
* ``exec``: ``<cli> exec CONTAINER true`` into a running container;
* ``20 detached``: 20 CLI processes at once, each ``<cli> run -d --network none busybox sleep
  300``, until all have returned; median of ``--rounds`` rounds, and the starts per second.

Both engines run at the same time and their runs alternate (pyd, docker, pyd, ...), so load
from elsewhere on the machine hits both alike; a short pause between runs keeps one engine's
background clean-up off the other's timing. Reported: median and p90 of each, and the load
average before and after (this benchmark wants a quiet machine).

pyd runs as its own daemon (temporary data-root and exec-root, storage driver
``PYD_BENCH_STORAGE_DRIVER``, default overlay2, its own default bridge) with the busybox test
image (``pyd.testing.images``). What is measured is what users get: ``--install wheel``
(the default) makes a fresh virtualenv with a regular ``pip install`` of the core and every
plugin (bytecode compiled, no editable-install finders) and runs the daemon and the CLI from
it; ``--install current`` uses this interpreter's environment as it is (say, an editable dev
install) and says so in the report.

Docker is Debian's ``docker.io``: the script starts its own dockerd (own ``--data-root``,
``--exec-root``, unix socket, ``--pidfile``, ``--bridge=none``, ``--iptables=false``), loads
the same busybox image into it (``pyd save`` then ``docker load``) and stops it by pid at the
end; it never touches the system's docker service. Run as root::

    python benchmarks/run_latency.py [--runs 30] [--rounds 5] [--install wheel|current]
                                     [--pause 0.2] [--no-docker] [--json FILE] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

REPO = Path(__file__).resolve().parent.parent
DOCKERD = "/usr/sbin/dockerd" if os.path.exists("/usr/sbin/dockerd") else (shutil.which("dockerd") or "dockerd")
# docker.io's own CLI (a newer one elsewhere on PATH would not be the package's)
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")
IMAGE = "busybox:latest"
EXEC_NAME = "bench-exec"


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120, env=env)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode().strip()}")
    return elapsed


def stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    return {"median_s": round(statistics.median(s), 4), "p90_s": round(p90, 4), "min_s": round(s[0], 4), "n": len(s)}


# -- the engines ------------------------------------------------------------------------------------


class Engine:
    name = ""
    cli: list[str] = []
    env: dict[str, str] | None = None
    has_bridge = False

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.cli, *args], capture_output=True, text=True, timeout=300, env=self.env)

    def remove_all(self) -> None:
        ids = self.run("ps", "-aq").stdout.split()
        if ids:
            self.run("rm", "-f", *ids)

    def stop(self) -> None:
        raise NotImplementedError


class Pyd(Engine):
    def __init__(self, root: Path, python: str, driver: str, install: str) -> None:
        from pyd.testing.daemon import DaemonProcess

        class Daemon(DaemonProcess):
            def argv(self) -> list[str]:  # the daemon from the measured install
                return [python, *super().argv()[1:]]

        self.install = install
        self.daemon = Daemon(root / "pyd", storage_driver=driver, timeout=90)
        self.daemon.start()
        pyd = Path(python).with_name("pyd")  # the console script, as a user runs it
        self.cli = [str(pyd), "-H", self.daemon.host]
        # the env of a user: no dev-only settings (this dev env writes no bytecode)
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYD_HOST", "PYD_API_VERSION")}
        self.has_bridge = True
        version = self.run("version", "--format", "{{.Server.Version}}").stdout.strip()
        self.name = f"pyd {version}"

    def load_image(self, root: Path) -> None:
        from pyd.testing.images import busybox_rootfs_tar

        tar = busybox_rootfs_tar(root / "busybox-rootfs.tar")
        out = self.run("import", str(tar), IMAGE)
        if out.returncode != 0:
            raise RuntimeError(f"pyd import failed: {out.stderr}")

    def stop(self) -> None:
        try:
            self.remove_all()
        finally:
            self.daemon.cleanup()


class Dockerd(Engine):
    """A private dockerd: its own data-root, exec-root, socket and pidfile; no bridge, no iptables."""

    def __init__(self, root: Path) -> None:
        self.root = root / "docker"
        self.run_dir = Path(tempfile.mkdtemp(prefix="pyd-bench-dockerd-", dir="/tmp"))
        self.sock = self.run_dir / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.cli = [DOCKER, "-H", self.host]
        self.proc: subprocess.Popen[bytes] | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "daemon.json").write_text("{}")
        log = open(self.root / "dockerd.log", "wb")
        self.proc = subprocess.Popen(
            [DOCKERD, "--data-root", str(self.root / "data"), "--exec-root", str(self.run_dir / "exec"),
             "-H", self.host, "--pidfile", str(self.run_dir / "docker.pid"), "--bridge=none",
             "--iptables=false", "--ip-masq=false", "--config-file", str(self.root / "daemon.json")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited: {(self.root / 'dockerd.log').read_text()[-2000:]}")
            if self.run("version").returncode == 0:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("dockerd did not come up within 60 s")
            time.sleep(0.2)
        self.name = "docker " + self.run("version", "--format", "{{.Server.Version}}").stdout.strip()

    def load_image(self, archive: Path) -> None:
        out = self.run("load", "-i", str(archive))
        if out.returncode != 0:
            raise RuntimeError(f"docker load failed: {out.stderr}")

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.remove_all()
                os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
        finally:
            _unmount_below(str(self.root))
            _unmount_below(str(self.run_dir))
            shutil.rmtree(self.run_dir, ignore_errors=True)


def _unmount_below(path: str) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for p in sorted((p for p in points if p == path or p.startswith(path + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", p], check=False)


def make_venv(root: Path) -> str:
    """A fresh virtualenv with a regular (non-editable) install of the core and every plugin."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    plugins = sorted(str(p) for p in (REPO / "plugins").iterdir() if (p / "pyproject.toml").exists())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(REPO), *plugins],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"pip install failed:\n{out.stdout}{out.stderr}")
    return py


# -- the measurements -------------------------------------------------------------------------------


def alternate(engines: list[Engine], n: int, argv_of: Callable[[Engine], list[str]], pause: float) -> dict[str, list[float]]:
    """``n`` timed runs per engine, alternating engines (after one warm-up run each), with
    ``pause`` seconds between runs so that one engine's clean-up in the background (dockerd's
    and containerd's, pyd's purge) does not land on the other's timed run."""
    out: dict[str, list[float]] = {e.name: [] for e in engines}
    for e in engines:
        timed([*e.cli, *argv_of(e)], e.env)
    for _ in range(n):
        for e in engines:
            time.sleep(pause)
            out[e.name].append(timed([*e.cli, *argv_of(e)], e.env))
    return out


def parallel(engines: list[Engine], count: int, rounds: int, pause: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {e.name: [] for e in engines}
    for _ in range(rounds):
        for e in engines:
            time.sleep(pause * 10)  # the last round's removals settle
            argv = [*e.cli, "run", "-d", "--network", "none", IMAGE, "sleep", "300"]
            with ThreadPoolExecutor(count) as pool:
                t = time.perf_counter()
                list(pool.map(lambda _: timed(argv, e.env), range(count)))
                out[e.name].append(time.perf_counter() - t)
            e.remove_all()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="timed runs per command and engine [30]")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the parallel start [5]")
    ap.add_argument("--parallel", type=int, default=20, help="containers per parallel round [20]")
    ap.add_argument("--install", choices=("wheel", "current"), default="wheel",
                    help="wheel: a fresh venv with a regular pip install (default); current: this environment")
    ap.add_argument("--pause", type=float, default=0.2, help="seconds between timed runs [0.2]")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds of rest after the set-up [15]")
    ap.add_argument("--no-docker", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    driver = os.environ.get("PYD_BENCH_STORAGE_DRIVER", "overlay2")
    root = Path(tempfile.mkdtemp(prefix="pyd-bench-run-"))
    engines: list[Engine] = []
    try:
        if args.install == "wheel":
            print("installing pyd and its plugins into a fresh venv (pip install, not editable) ...", file=sys.stderr)
            python, install = make_venv(root), "regular pip install into a fresh venv"
        else:
            python = sys.executable
            install = "this environment (" + ("editable dev install" if _editable() else "installed") + ")"
        pyd = Pyd(root, python, driver, install)
        engines.append(pyd)
        pyd.load_image(root)
        if not args.no_docker:
            if os.path.exists(DOCKERD) and os.path.exists(DOCKER):
                archive = root / "busybox-image.tar"
                out = pyd.run("save", "-o", str(archive), IMAGE)
                if out.returncode != 0:
                    raise RuntimeError(f"pyd save failed: {out.stderr}")
                dk = Dockerd(root)
                engines.append(dk)
                dk.load_image(archive)
            else:
                print("(dockerd not installed: apt-get install docker.io for the comparison)", file=sys.stderr)
        time.sleep(args.settle)  # pip, the daemons' start and the image loads are done
        load0 = os.getloadavg()[0]
        results: dict[str, dict[str, dict[str, float]]] = {e.name: {} for e in engines}
        for key, samples in (
            ("run --rm none", alternate(engines, args.runs, lambda e: ["run", "--rm", "--network", "none", IMAGE, "true"],
                                        args.pause)),
            ("run --rm bridge", alternate([e for e in engines if e.has_bridge], args.runs,
                                          lambda e: ["run", "--rm", IMAGE, "true"], args.pause)),
        ):
            for name, s in samples.items():
                results[name][key] = stats(s)
        for e in engines:
            out = e.run("run", "-d", "--name", EXEC_NAME, "--network", "none", IMAGE, "sleep", "600")
            if out.returncode != 0:
                raise RuntimeError(f"{e.name}: cannot start the exec target: {out.stderr}")
        for name, s in alternate(engines, args.runs, lambda e: ["exec", EXEC_NAME, "true"], args.pause).items():
            results[name]["exec"] = stats(s)
        for e in engines:
            e.remove_all()
        for name, s in parallel(engines, args.parallel, args.rounds, args.pause).items():
            results[name][f"{args.parallel} detached"] = stats(s)
            results[name][f"{args.parallel} detached"]["starts_per_s"] = round(args.parallel / statistics.median(s), 1)
        load1 = os.getloadavg()[0]
    finally:
        for e in reversed(engines):
            try:
                e.stop()
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                print(f"stopping {e.name or type(e).__name__}: {exc}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)

    report = {
        "install": install,
        "storage_driver": driver,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": [round(load0, 2), round(load1, 2)],
        "runs": args.runs,
        "rounds": args.rounds,
        "pause_s": args.pause,
        "results": results,
    }
    print_table(report, args.parallel)
    if args.markdown:
        print(markdown(report, args.parallel))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _editable() -> bool:
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("pyd")
    except importlib.metadata.PackageNotFoundError:
        return True
    text = dist.read_text("direct_url.json") or ""
    return '"editable": true' in text


def _cell(r: dict[str, float] | None) -> str:
    if not r:
        return "n/a"
    return f"{r['median_s'] * 1000:.0f} / {r['p90_s'] * 1000:.0f} ms"


def rows(report: dict, count: int) -> tuple[list[str], list[list[str]]]:
    keys = ["run --rm none", "run --rm bridge", "exec", f"{count} detached"]
    names = list(report["results"])
    header = ["median / p90", *names]
    body = []
    for k in keys:
        row = [k]
        for n in names:
            r = report["results"][n].get(k)
            cell = _cell(r)
            if r and "starts_per_s" in r:
                cell += f" ({r['starts_per_s']}/s)"
            row.append(cell)
        body.append(row)
    if len(names) == 2:
        a, b = (report["results"][n].get("run --rm none") for n in names)
        body.append(["pyd / docker (run --rm none)", f"{a['median_s'] / b['median_s']:.2f}", ""])
    return header, body


def print_table(report: dict, count: int) -> None:
    header, body = rows(report, count)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    print(f"install: {report['install']}; {report['cpus']} CPUs, kernel {report['kernel']}, "
          f"python {report['python']}, storage {report['storage_driver']}, load average "
          f"{report['load_average'][0]} -> {report['load_average'][1]}")
    for r in [header, *body]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def markdown(report: dict, count: int) -> str:
    header, body = rows(report, count)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
