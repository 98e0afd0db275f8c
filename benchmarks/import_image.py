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
until the end of the run (no ``rmi`` between rounds): on this ext4 (mounted with ``discard``)
creating files for a few minutes after many were deleted is several times slower, for tar and
pyd alike (the inode allocator steps over recently freed inodes), which would swamp the
comparison. For the same reason, leave about five minutes between two runs (the first one's
clean-up deletes its trees) and read the load printed at the start and the end, or use
``--fresh-fs`` (a new ext4 in a file on the same disk, loop-mounted for the run). The daemon's
own CPU time per import is read from /proc. Needs root and about rounds x (1 + drivers) x
120 MB of disk.

    python benchmarks/import_image.py [--runs 5] [--files 20000] [--size-mb 100] \\
        [--drivers overlay2,vfs] [--dir /var/tmp] [--profile overlay2]

``--profile DRIVER`` samples that driver's daemon with py-spy (every thread: the event loop
receiving the upload, the read-ahead thread hashing it, the worker applying it) during the
timed runs; the sampling slows the daemon a little, so take figures from a run without it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
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


def start_py_spy(d: DaemonProcess, out_dir: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling all threads of the daemon into a speedscope file (open it at
    speedscope.app or with ``py-spy``'s viewer); None with a hint if py-spy is missing."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.path.exists(exe):
        print("--profile: py-spy is not installed (pip install py-spy); running without it")
        return None
    out = out_dir / f"pyd-import-{d.storage_driver}-{time.strftime('%H%M%S')}.speedscope.json"
    print(f"profile of the {d.storage_driver} daemon (py-spy, all threads): {out}")
    spy = subprocess.Popen([exe, "record", "--pid", str(d.pid), "--threads", "--idle", "--nonblocking",
                            "--rate", "250", "--format", "speedscope", "-o", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the first timed run
    return spy


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


def time_import(cli: list[str], tarball: Path, tag: str, daemon_pid: int,
                env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall, daemon cpu) seconds of ``pyd import``."""
    os.sync()
    c0, t0 = _proc_cpu(daemon_pid), time.perf_counter()
    proc = subprocess.run([*cli, "import", str(tarball), tag], capture_output=True, timeout=600, env=env)
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
    ap.add_argument("--profile", default="", metavar="DRIVER",
                    help="sample this driver's daemon with py-spy (all threads) during the timed runs")
    ap.add_argument("--keep", action="store_true", help="leave the work directory behind")
    ap.add_argument("--fresh-fs", action="store_true",
                    help="work in a new ext4 made in a file under --dir and loop-mounted (unmounted and "
                         "deleted at the end): immune to other processes' deletions on the disk")
    ap.add_argument("--baseline", default="", metavar="DIR",
                    help="also time the overlay2 import of another source tree, with DIR/core on PYTHONPATH "
                         "(e.g. git archive REV core | tar -x -C DIR)")
    args = ap.parse_args()

    for line in os.popen("uptime").read().splitlines():
        print(f"load at start: {line.strip()}")
    work = Path(tempfile.mkdtemp(prefix="pyd-bench-import-", dir=args.dir))
    image = work.with_suffix(".ext4")
    if args.fresh_fs:
        # A new ext4 in a file on the same disk: no other process's deletions in its inode
        # tables, so runs compare with runs (mounted with discard like the disk here).
        trees = (args.runs + 2) * (len(args.drivers.split(",")) + 2)  # extractions and tarballs, with room
        with open(image, "wb") as f:
            f.truncate((trees * (args.size_mb + 40) + 1024) << 20)
        inodes = trees * (args.files + args.files // 5) + 100_000
        subprocess.run(["mkfs.ext4", "-q", "-F", "-N", str(inodes), "-E", "lazy_itable_init=0,lazy_journal_init=0",
                        str(image)], check=True)  # (no background zeroing of inode tables during the run)
        subprocess.run(["mount", "-o", "loop,discard", str(image), str(work)], check=True)
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
        envs: dict[str, dict[str, str]] = {}
        for name in args.drivers.split(","):
            d = DaemonProcess(work / f"daemon-{name}", storage_driver=name, flags=["--bridge", "none"], timeout=60)
            daemons[name] = d.start()
            envs[name] = dict(os.environ)
        if args.baseline:
            label = f"overlay2, {Path(args.baseline).name}"
            env = {"PYTHONPATH": str(Path(args.baseline).resolve() / "core")}
            d = DaemonProcess(work / "daemon-baseline", storage_driver="overlay2", flags=["--bridge", "none"],
                              timeout=60, env=env)
            daemons[label] = d.start()
            envs[label] = {**os.environ, **env}
        results: dict[str, list[tuple[float, float]]] = {"tar -x": [], **{f"pyd import ({n})": [] for n in daemons}}
        # A warm-up import per daemon (lazy imports, first-use caches) that is not counted.
        for name, d in daemons.items():
            time_import(pyd_cli(d.host), tars[-1], "bench:warmup", d.pid or 0, envs[name])
        Timer = Callable[[int], tuple[float, float]]
        methods: list[tuple[str, Timer]] = [("tar -x", lambda i: time_tar(tars[i], work))]
        for name, d in daemons.items():
            methods.append((f"pyd import ({name})", lambda i, d=d, env=envs[name]: time_import(
                pyd_cli(d.host), tars[i], f"bench:{i}", d.pid or 0, env)))
        spy = start_py_spy(daemons[args.profile], Path(args.dir)) if args.profile else None
        try:
            for i in range(args.runs):
                for method, run in methods[i % len(methods) :] + methods[: i % len(methods)]:  # rotate the order
                    results[method].append(run(i))
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
        tar_runs = [w for w, _ in results["tar -x"]]
        base, base_med = min(tar_runs), statistics.median(tar_runs)
        width = max(len(m) for m in results) + 2
        print(f"\n{'method':<{width}}{'best s':>8}{'MB/s':>8}{'vs tar':>8}{'median s':>10}{'MB/s':>8}{'vs tar':>8}"
              f"{'paired':>8}{'cpu s':>8}")
        for method, runs in results.items():
            walls = [w for w, _ in runs]
            best, med = min(walls), statistics.median(walls)
            paired = statistics.median(t / w for t, w in zip(tar_runs, walls))
            cpu = statistics.median(c for _, c in runs)
            print(f"{method:<{width}}{best:>8.3f}{size / 1e6 / best:>8.1f}{base / best:>7.2f}x{med:>10.3f}"
                  f"{size / 1e6 / med:>8.1f}{base_med / med:>7.2f}x{paired:>7.2f}x{cpu:>8.2f}")
        for method, runs in results.items():
            print(f"  {method:<{width - 2}} runs: {' '.join(f'{w:.2f}' for w, _ in runs)}")
        print(f"\n{args.runs} runs. best: fastest run; vs tar: speed relative to tar -x (1.00x = as fast); "
              "paired: median over the rounds of tar's time / this time in the same round; "
              "cpu s: median CPU time of tar, or of the daemon process for pyd import.")
        for line in os.popen("uptime").read().splitlines():
            print(f"load at end: {line.strip()}")
    finally:
        for d in daemons.values():
            d.cleanup()
        if args.fresh_fs:
            subprocess.run(["umount", str(work)], check=False)
            image.unlink(missing_ok=True)
        if args.keep and not args.fresh_fs:
            print(f"left {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
