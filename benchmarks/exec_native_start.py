"""Start-up cost of the native exec driver, measured through its driver API (no daemon).

    sudo /work/venv/bin/python benchmarks/exec_native_start.py [--runs 30] [--parallel 20]

Prints the median and spread of create+start+wait+delete of ``/bin/true`` in a busybox rootfs
(new mnt, pid, uts, ipc, net and cgroup namespaces; the network namespace stays empty), and the
wall time of 20 such containers started in parallel from a thread pool (as the engine's worker
threads would). The first create, which also starts the driver's fork server, is reported
apart. Everything it makes lives in a temporary directory and is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyd.drivers.execdriver import (
    DEFAULT_CAPABILITIES,
    DEFAULT_MASKED_PATHS,
    DEFAULT_NAMESPACES,
    DEFAULT_READONLY_PATHS,
    CreateContainerRequest,
)
from pyd.registry import Kind, PluginRegistry
from pyd.testing.execdriver import cgroup_dirs, make_busybox_rootfs
from pyd.types import CgroupSpec, ProcessSpec


def one(driver: object, root: Path, rootfs: Path, parent: str) -> float:
    cid = f"bench-{uuid.uuid4().hex[:12]}"
    spec = ProcessSpec(
        args=["/bin/true"],
        env=["PATH=/bin"],
        rootfs=str(rootfs),
        hostname=cid[:12],
        capabilities=list(DEFAULT_CAPABILITIES),
        masked_paths=list(DEFAULT_MASKED_PATHS),
        readonly_paths=list(DEFAULT_READONLY_PATHS),
        namespaces={n: None for n in DEFAULT_NAMESPACES},
        cgroup=CgroupSpec(path=f"{parent}/{cid}"),
    )
    t0 = time.perf_counter()
    driver.create(CreateContainerRequest(cid, spec, str(root / cid)))  # type: ignore[attr-defined]
    try:
        driver.start(cid)  # type: ignore[attr-defined]
        st = driver.wait(cid, timeout=30)  # type: ignore[attr-defined]
        assert st.exit_code == 0, st
    finally:
        driver.delete(cid)  # type: ignore[attr-defined]
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--parallel", type=int, default=20)
    ap.add_argument("--shim-start", default="forkserver", choices=["forkserver", "exec"])
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pyd-bench-") as tmp:
        root = Path(tmp)
        rootfs = make_busybox_rootfs(root / "rootfs")
        parent = f"pyd-bench-{uuid.uuid4().hex[:8]}"
        driver = PluginRegistry().init_driver(
            Kind.EXEC, "native", home=root / "home", options={"shim-start": args.shim_start}
        )
        try:
            first = one(driver, root, rootfs, parent)
            times = [one(driver, root, rootfs, parent) for _ in range(args.runs)]
            with ThreadPoolExecutor(args.parallel) as pool:
                t0 = time.perf_counter()
                par = list(pool.map(lambda _: one(driver, root, rootfs, parent), range(args.parallel)))
                wall = time.perf_counter() - t0
        finally:
            driver.close()
        left = cgroup_dirs(parent)
    ms = [t * 1000 for t in times]
    print(f"native exec driver, shim-start={args.shim_start}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")
    print(f"  first create+start+wait+delete (cold; in forkserver mode it waits for the fork server): {first * 1000:.1f} ms")
    print(
        f"  create+start+wait+delete of /bin/true, {args.runs} runs: median {statistics.median(ms):.1f} ms, "
        f"min {min(ms):.1f}, max {max(ms):.1f}"
    )
    print(
        f"  {args.parallel} in parallel: wall {wall * 1000:.0f} ms ({args.parallel / wall:.1f} containers/s), "
        f"median per container {statistics.median(par) * 1000:.1f} ms"
    )
    if left:
        print(f"  LEFTOVER cgroups: {left}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
