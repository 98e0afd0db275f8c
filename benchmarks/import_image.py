"""``pyd import`` end to end, per storage driver, side by side with plain ``tar -x``.

What a user runs: ``pyd -H ... import rootfs.tar bench:N``, the CLI uploading the file to a
real daemon, which hashes it, records its tar framing for ``save`` and applies it through
the graph driver, then writes the image. Builds the same deterministic tarball as
``import_layer.py`` (about 100 MB, 20k files, with symlinks and hardlinks) in a work
directory on the real disk (not tmpfs), starts one ``pyd daemon`` per storage driver
(``pyd.testing.daemon.DaemonProcess``, data-root in that directory, ``--bridge none``) and
times, interleaved in each round (the order rotates from round to round):

* ``tar -x -f rootfs.tar -C DIR``   (GNU tar, the practical limit)
* ``pyd import rootfs.tar bench:N`` against each daemon (the whole command, CLI start-up
  included, until the image ID is printed)

Each round uses its own copy of the tarball with a few bytes of one file's content changed
(same size, same members), and both tar and pyd extract that copy: importing the very same
tar twice gives the same layer, which pyd (as Docker) drops again, deleting the duplicate's
20k files in the middle of the run.

Each measurement starts after ``sync`` with the tarball in the page cache. Nothing is deleted
until the end of the run (no ``rmi`` between rounds): on ext4 mounted with ``discard``, as
here, an extraction right after deleting 20k files spends seconds in the block allocator,
which would swamp the comparison. The daemon's own CPU time per import is read from
/proc. Needs root and about rounds x (1 + drivers) x 120 MB of disk.

    python benchmarks/import_image.py [--runs 5] [--files 20000] [--size-mb 100] \\
        [--drivers overlay2,vfs] [--dir /var/tmp] [--profile overlay2]

``--profile DRIVER`` runs that driver's daemon under cProfile (``PYD_PROFILE`` is not
used): the daemon is started with ``python -m cProfile -o FILE`` and the top of the
profile is printed at the end; timings of a profiled run are not comparable.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from import_layer import build_rootfs_tar, time_tar  # noqa: E402

from pyd.testing.daemon import DaemonProcess  # noqa: E402


def pyd_cli(host: str) -> list[str]:
    pyd = Path(sys.executable).with_name("pyd")  # the console script, as a user runs it
    return [str(pyd) if pyd.exists() else sys.executable, *([] if pyd.exists() else ["-m", "pyd.cli.main"]), "-H", host]


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ProfiledDaemon(DaemonProcess):
    """A daemon run under cProfile, its profile written at exit to ``profile_file``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.profile_file = self.root / "daemon.prof"

    def argv(self) -> list[str]:
        argv = super().argv()
        return [argv[0], "-m", "cProfile", "-o", str(self.profile_file), "-m", *argv[2:]]


def variants(tarball: Path, count: int) -> list[Path]:
    """``count`` copies of ``tarball``, each with a different first bytes of one file's content."""
    with tarfile.open(tarball) as tf:
        member = next(m for m in tf if m.isfile() and m.size >= 32)
    out = []
    for i in range(count):
        copy = tarball.with_name(f"rootfs-{i}.tar")
        shutil.copyfile(tarball, copy)
        with open(copy, "r+b") as f:
            f.seek(member.offset_data)
            f.write(f"pyd-bench-variant-{i:08d}\n".encode())
        out.append(copy)
    return out


def time_import(cli: list[str], tarball: Path, tag: str, daemon_pid: int) -> tuple[float, float]:
    """(wall, daemon cpu) seconds of ``pyd import``."""
    os.sync()
    c0, t0 = _proc_cpu(daemon_pid), time.perf_counter()
    proc = subprocess.run([*cli, "import", str(tarball), tag], capture_output=True, timeout=600)
    elapsed, cpu = time.perf_counter() - t0, _proc_cpu(daemon_pid) - c0
    if proc.returncode != 0 or not proc.stdout.strip().startswith(b"sha256:"):
        raise RuntimeError(f"pyd import failed ({proc.returncode}): {proc.stderr.decode().strip()}")
    return elapsed, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--drivers", default="overlay2,vfs")
    ap.add_argument("--dir", default="/var/tmp", help="parent of the work directory (a real disk, not tmpfs)")
    ap.add_argument("--profile", default="", metavar="DRIVER", help="run this driver's daemon under cProfile")
    ap.add_argument("--keep", action="store_true", help="leave the work directory behind")
    args = ap.parse_args()

    for line in os.popen("uptime").read().splitlines():
        print(f"load at start: {line.strip()}")
    work = Path(tempfile.mkdtemp(prefix="pyd-bench-import-", dir=args.dir))
    daemons: dict[str, DaemonProcess] = {}
    try:
        tarball = work / "rootfs.tar"
        t0 = time.perf_counter()
        entries, content = build_rootfs_tar(tarball, args.files, args.size_mb)
        size = tarball.stat().st_size
        fs = subprocess.run(["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True).stdout.strip()
        print(f"tarball: {size / 1e6:.1f} MB, {entries} entries, {content / 1e6:.1f} MB of file content "
              f"(built in {time.perf_counter() - t0:.1f}s) in {work} ({fs})")
        tars = variants(tarball, args.runs + 1)
        for t in tars:  # into the page cache for everyone
            with open(t, "rb") as f:
                while f.read(1 << 22):
                    pass
        for name in args.drivers.split(","):
            cls = ProfiledDaemon if name == args.profile else DaemonProcess
            d = cls(work / f"daemon-{name}", storage_driver=name, flags=["--bridge", "none"], timeout=60)
            daemons[name] = d.start()
        results: dict[str, list[tuple[float, float]]] = {"tar -x": [], **{f"pyd import ({n})": [] for n in daemons}}
        # A warm-up import per daemon (lazy imports, first-use caches) that is not counted.
        for name, d in daemons.items():
            time_import(pyd_cli(d.host), tars[-1], "bench:warmup", d.pid or 0)
        methods: list[tuple[str, Callable[[int], tuple[float, float]]]] = [("tar -x", lambda i: time_tar(tars[i], work))]
        for name, d in daemons.items():
            methods.append((f"pyd import ({name})",
                            lambda i, d=d: time_import(pyd_cli(d.host), tars[i], f"bench:{i}", d.pid or 0)))
        for i in range(args.runs):
            for method, run in methods[i % len(methods) :] + methods[: i % len(methods)]:  # rotate the order
                results[method].append(run(i))
        base = min(w for w, _ in results["tar -x"])
        base_med = statistics.median(w for w, _ in results["tar -x"])
        print(f"\n{'method':<24}{'best s':>8}{'MB/s':>8}{'vs tar':>8}{'median s':>10}{'MB/s':>8}{'vs tar':>8}"
              f"{'cpu s':>8}")
        for method, runs in results.items():
            best, med = min(w for w, _ in runs), statistics.median(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            print(f"{method:<24}{best:>8.3f}{size / 1e6 / best:>8.1f}{base / best:>7.2f}x{med:>10.3f}"
                  f"{size / 1e6 / med:>8.1f}{base_med / med:>7.2f}x{cpu:>8.2f}")
        for method, runs in results.items():
            print(f"  {method:<22} runs: {' '.join(f'{w:.2f}' for w, _ in runs)}")
        print(f"\n{args.runs} runs. best: fastest run; vs tar: speed relative to tar -x (1.00x = as fast); "
              "cpu s: median CPU time of tar, or of the daemon process for pyd import.")
        for line in os.popen("uptime").read().splitlines():
            print(f"load at end: {line.strip()}")
    finally:
        for d in daemons.values():
            d.cleanup()
        prof = [d for d in daemons.values() if isinstance(d, ProfiledDaemon)]
        for d in prof:
            if d.profile_file.exists():
                import pstats

                out = Path(args.dir) / f"pyd-import-{time.strftime('%H%M%S')}.prof"
                shutil.copy(d.profile_file, out)
                print(f"\nprofile of the daemon: {out}")
                pstats.Stats(str(out)).sort_stats("tottime").print_stats(30)
        if args.keep:
            print(f"left {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
