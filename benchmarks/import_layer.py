"""Import of a ~100 MB rootfs layer: overlay2 and vfs ``apply_diff`` against plain ``tar -x``.

Builds a deterministic tarball (about 20k files in about 1k directories, with symlinks and
hardlinks) in a temporary directory, then times, in the same run and interleaved:

* ``tar -x -f rootfs.tar -C DIR``            (GNU tar, the practical limit)
* ``apply_diff`` into a new base layer of each graph driver, loaded through its entry point

Each measurement starts after ``sync`` with the tarball in the page cache. Nothing is deleted
until the end: on ext4 (mounted with ``discard`` here) an extraction right after deleting the
previous one's 20k files spends seconds in the block allocator, for tar and pyd alike, which
would swamp the comparison. Needs root and about runs x 3 x 120 MB of disk.

    python benchmarks/import_layer.py [--runs 3] [--files 20000] [--size-mb 100] [--drivers overlay2,vfs]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import resource
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
import uuid
from pathlib import Path


def build_rootfs_tar(path: Path, files: int, size_mb: int, seed: int = 20240601) -> tuple[int, int]:
    """Write the tarball; return (entries, bytes of file content)."""
    rng = random.Random(seed)
    dirs = [f"usr/share/d{i // 40:03d}/s{i:04d}" for i in range(max(1, files // 20))]
    target = size_mb * 1024 * 1024
    # Mostly small files, some medium, a few large: like a distribution's rootfs.
    sizes = [rng.choice((200, 900, 2500, 4000, 7000)) for _ in range(files)]
    for i in rng.sample(range(files), files // 25):
        sizes[i] = rng.randint(20_000, 120_000)
    for i in rng.sample(range(files), 12):
        sizes[i] = rng.randint(1_000_000, 4_000_000)
    scale = target / sum(sizes)
    sizes = [max(0, int(s * scale)) for s in sizes]
    blob = rng.randbytes(8 * 1024 * 1024)  # content is sliced from here: cheap and deterministic
    entries = content = 0
    by_dir: dict[int, list[int]] = {}
    for i in range(files):
        by_dir.setdefault(i % len(dirs), []).append(i)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        made: set[str] = set()

        def add(ti: tarfile.TarInfo, data: bytes | None = None) -> None:
            nonlocal entries
            ti.mtime = 1_700_000_000
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
            entries += 1

        for k, d in enumerate(dirs):  # depth first, as tar -c and Docker write layers
            parts = d.split("/")
            for i in range(1, len(parts) + 1):
                sub = "/".join(parts[:i])
                if sub not in made:
                    made.add(sub)
                    ti = tarfile.TarInfo(sub)
                    ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                    add(ti)
            for i in by_dir.get(k, []):
                size = sizes[i]
                ti = tarfile.TarInfo(f"{d}/f{i:05d}")
                ti.mode, ti.size = 0o755 if i % 7 == 0 else 0o644, size
                off = rng.randrange(0, len(blob) // 2)
                data = blob[off : off + size] if size <= len(blob) // 2 else (blob * (size // len(blob) + 1))[:size]
                add(ti, data)
                content += size
                if i % 50 == 0:
                    link = tarfile.TarInfo(f"{d}/l{i:05d}")
                    link.type, link.linkname = tarfile.SYMTYPE, f"f{i:05d}"
                    add(link)
                if i % 97 == 0:
                    hard = tarfile.TarInfo(f"{d}/h{i:05d}")
                    hard.type, hard.linkname = tarfile.LNKTYPE, f"{d}/f{i:05d}"
                    add(hard)
    return entries, content


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def time_tar(tarball: Path, work: Path) -> tuple[float, float]:
    """(wall, cpu) seconds of ``tar -x``."""
    dest = work / f"tar-{uuid.uuid4().hex[:8]}"
    dest.mkdir()
    os.sync()
    c0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run(["tar", "-x", "-f", str(tarball), "-C", str(dest)], check=True)
    elapsed, cpu = time.perf_counter() - t0, _children_cpu() - c0
    return elapsed, cpu


def time_driver(driver: object, tarball: Path) -> tuple[float, float]:
    """(wall, cpu) seconds of ``apply_diff`` into a new base layer."""
    layer = uuid.uuid4().hex
    from pyd.drivers.graph import CreateRequest

    driver.create(CreateRequest(layer))  # type: ignore[attr-defined]
    os.sync()
    with open(tarball, "rb") as f:
        c0, t0 = time.process_time(), time.perf_counter()
        driver.apply_diff(layer, None, f)  # type: ignore[attr-defined]
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return elapsed, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--drivers", default="overlay2,vfs")
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir under /var/tmp)")
    args = ap.parse_args()

    from pyd.registry import Kind, PluginRegistry

    work = Path(tempfile.mkdtemp(prefix="pyd-bench-", dir=args.dir or "/var/tmp"))
    try:
        tarball = work / "rootfs.tar"
        t0 = time.perf_counter()
        entries, content = build_rootfs_tar(tarball, args.files, args.size_mb)
        size = tarball.stat().st_size
        print(f"tarball: {size / 1e6:.1f} MB, {entries} entries, {content / 1e6:.1f} MB of file content "
              f"(built in {time.perf_counter() - t0:.1f}s) in {work}")
        with open(tarball, "rb") as f:  # into the page cache for everyone
            while f.read(1 << 22):
                pass
        registry = PluginRegistry()
        drivers = {}
        for name in args.drivers.split(","):
            home = work / name
            home.mkdir()
            drivers[name] = registry.init_driver(Kind.GRAPHDRIVER, name, home=home, options={})
        results: dict[str, list[tuple[float, float]]] = {"tar -x": [], **{f"{n} apply_diff": [] for n in drivers}}
        for _ in range(args.runs):
            results["tar -x"].append(time_tar(tarball, work))
            for name, driver in drivers.items():
                results[f"{name} apply_diff"].append(time_driver(driver, tarball))
        for driver in drivers.values():
            driver.cleanup()
        base = min(w for w, _ in results["tar -x"])
        base_med = statistics.median(w for w, _ in results["tar -x"])
        base_cpu = min(c for _, c in results["tar -x"])
        print(f"\n{'method':<22}{'best s':>8}{'MB/s':>8}{'vs tar':>8}{'median s':>10}{'vs tar':>8}"
              f"{'cpu s':>8}{'vs tar':>8}")
        for method, runs in results.items():
            best, med = min(w for w, _ in runs), statistics.median(w for w, _ in runs)
            cpu = min(c for _, c in runs)
            print(f"{method:<22}{best:>8.3f}{size / 1e6 / best:>8.1f}{base / best:>7.2f}x{med:>10.3f}"
                  f"{base_med / med:>7.2f}x{cpu:>8.3f}{base_cpu / cpu:>7.2f}x")
        print("\nbest: fastest of the runs; vs tar: speed relative to tar -x (1.00x = as fast).")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
