"""How long the ``pyd`` client takes to start: import time and ``pyd version`` wall time.

    python benchmarks/cli_startup.py [-n 30] [--host unix:///run/pyd/pyd.sock] [--docker]

Measures, each as the median of N runs of a fresh interpreter:

* ``python -c pass`` (the floor: interpreter start-up in this environment);
* ``import pyd.cli.main`` (``-X importtime``, cumulative, and the share of click);
* ``pyd version`` against a fake API server in this process (client cost only);
* ``pyd version`` with an unreachable host (start-up, parse, connect attempt, error path);
* ``pyd version`` against ``--host`` (a real daemon), if given;
* ``docker version`` against ``--docker-host`` (or its default), with ``--docker``.

Bytecode: the runs use a private ``PYTHONPYCACHEPREFIX`` warmed once, so the figures are those
of an installed package even where ``PYTHONDONTWRITEBYTECODE`` is set (as in this dev env).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def median_ms(cmd: list[str], env: dict[str, str], n: int) -> float:
    subprocess.run(cmd, env=env, capture_output=True)  # warm caches and bytecode
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def import_ms(env: dict[str, str], n: int) -> tuple[float, float]:
    totals, clicks = [], []
    for _ in range(n):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pyd.cli.main"],
                              env=env, capture_output=True, text=True, check=True)
        cum = {}
        for line in proc.stderr.splitlines():
            m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)", line)
            if m:
                cum[m.group(2)] = int(m.group(1))
        totals.append(cum.get("pyd.cli.main", 0) / 1000)
        clicks.append(cum.get("click", 0) / 1000)
    return statistics.median(totals), statistics.median(clicks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=30, help="runs per measurement [30]")
    ap.add_argument("--host", help="also measure against this daemon (unix:///path)")
    ap.add_argument("--docker", action="store_true", help="also measure `docker version`")
    ap.add_argument("--docker-host", help="DOCKER_HOST for --docker")
    args = ap.parse_args()

    cache = tempfile.mkdtemp(prefix="pyd-bench-pyc-")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache
    env.pop("PYD_HOST", None)
    pyd_cmd = [sys.executable, "-m", "pyd.cli.main"]
    results: list[tuple[str, float]] = []
    try:
        results.append(("python -c pass", median_ms([sys.executable, "-c", "pass"], env, args.n)))
        total, click_ms = import_ms(env, args.n)
        results.append(("import pyd.cli.main (importtime)", total))
        results.append(("  of which click", click_ms))

        from pyd.testing.fake_api import FakeDaemon, ping_then

        version_doc = {"Platform": {"Name": "fake"}, "Version": "0", "ApiVersion": "1.41",
                       "Components": []}
        sock_dir = tempfile.mkdtemp(prefix="pyd-bench-")
        with FakeDaemon(os.path.join(sock_dir, "api.sock"),
                        ping_then({("GET", "/version"): version_doc})) as fake:
            results.append(("pyd version (fake server)",
                            median_ms([*pyd_cmd, "-H", fake.host, "version"], env, args.n)))
        shutil.rmtree(sock_dir, ignore_errors=True)
        bad = f"unix://{cache}/nosuch.sock"
        results.append(("pyd version (no daemon)",
                        median_ms([*pyd_cmd, "-H", bad, "version"], env, args.n)))
        pyd_bin = Path(sys.executable).with_name("pyd")
        if pyd_bin.exists():
            results.append(("pyd version via console script (no daemon)",
                            median_ms([str(pyd_bin), "-H", bad, "version"], env, args.n)))
        if args.host:
            results.append((f"pyd version ({args.host})",
                            median_ms([*pyd_cmd, "-H", args.host, "version"], env, args.n)))
        if args.docker and shutil.which("docker"):
            denv = dict(env)
            if args.docker_host:
                denv["DOCKER_HOST"] = args.docker_host
            results.append(("docker version", median_ms(["docker", "version"], denv, args.n)))
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    width = max(len(name) for name, _ in results)
    print(f"# median of {args.n} runs, {sys.executable} ({sys.version.split()[0]})")
    for name, ms in results:
        print(f"{name:<{width}}  {ms:7.1f} ms")


if __name__ == "__main__":
    main()
