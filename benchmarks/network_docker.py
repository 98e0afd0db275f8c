"""Network figures, pyd side by side with Docker in the same run (issue 5).

For each engine, on a user-defined bridge network made for the run:

* ``run --rm bridge``: wall time of ``<cli> run --rm --network NET busybox true`` as a user
  types it (CLI start-up included), median and p90 of ``--runs``; next to it the same with
  ``--network none``, so the cost of the bridge endpoint shows on its own;
* ``TCP``: throughput between two containers on NET with busybox: the server runs
  ``nc -ll -p 5000 -e sh -c '...'`` whose shell reads the connection to EOF with ``dd`` and
  notes the time before and after (``adjtimex``, microseconds; the server runs with
  ``--security-opt seccomp=unconfined`` on both engines, as pyd's default profile refuses even
  a read-only ``adjtimex``); the client (``exec`` into a
  second container) sends ``--mb`` MiB from ``/dev/zero`` with ``nc SERVER 5000 -e dd``. The
  time is taken where the data arrives, so what sits in socket buffers when the sender is done
  is counted; the first milliseconds before the server's ``dd`` starts are not (a few MB of
  head start at most). The same two commands between two bare network namespaces joined by one
  veth pair give the host's limit for this tool (``bare veth``).

Runs alternate between the engines (pyd, docker, veth, pyd, ...), so load from elsewhere hits
them alike; besides each side's median, each engine's transfer is divided by the veth's of the
same round (``same round``), which drifting load disturbs less. The load average before and
after is printed (this wants a quiet machine). One TCP stream, moved by busybox ``dd`` with
1 MiB reads and writes on the socket (``nc`` only connects and hands the socket over), so it
is CPU-bound on both ends; compare the columns, not the absolute numbers with iperf3's.

pyd runs as its own daemon (temporary data-root and exec-root, storage driver
``PYD_BENCH_STORAGE_DRIVER``, default overlay2, own default bridge), from a fresh virtualenv
with a regular ``pip install`` (``--install wheel``, the default) or this environment
(``--install current``). Docker is Debian's ``docker.io``: a private dockerd with its own
data-root, exec-root, socket and pidfile, ``--bridge=none --iptables=false`` (it never adds
rules to the host's firewall; pyd keeps its nftables rules, so docker's bridge has slightly
less to do), the same busybox image loaded with ``docker load``; stopped by pid at the end.
Both engines' bridges are named for the run; every container, network, bridge and namespace
is removed at the end, also on failure. Run as root::

    python benchmarks/network_docker.py [--runs 20] [--reps 9] [--mb 1000] [--install wheel|current]
                                        [--no-docker] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_latency import DOCKER, DOCKERD, IMAGE, Dockerd, Engine, Pyd, alternate, make_venv, stats  # noqa: E402

from pyd.testing.network import NetEnv, Sandbox, free_subnet  # noqa: E402

NET = "bench-net"
PORT = 5000
SERVER, CLIENT = "bench-nc-server", "bench-nc-client"
# The server's shell: time (adjtimex: s and us) before and after reading the connection to EOF.
SERVER_SH = (
    "T(){ busybox adjtimex | busybox awk '/tv_sec/{s=$2} /tv_usec/{u=$2} END{printf \"%d.%06d\", s, u}'; }; "
    "a=$(T); r=$(busybox dd of=/dev/null bs=1M iflag=fullblock 2>&1 | busybox head -n1); b=$(T); "
    'echo "$a $b $r" >> {out}'
)


def server_argv(out: str) -> list[str]:
    return ["busybox", "nc", "-ll", "-p", str(PORT), "-e", "busybox", "sh", "-c", SERVER_SH.replace("{out}", out)]


def client_argv(ip: str, mb: int) -> list[str]:
    return ["busybox", "nc", ip, str(PORT), "-e", "busybox", "dd", "if=/dev/zero", "bs=1M", f"count={mb}"]


def parse_line(line: str, mb: int) -> float:
    """MiB/s from one line of the server's notes: ``START END N+M records in``."""
    start, end, recs = line.split()[:3]
    if float(start) <= 0 or float(end) <= float(start):
        raise RuntimeError(f"the server could not read the clock (adjtimex): {line!r}")
    if recs != f"{mb}+0":
        raise RuntimeError(f"the server read {recs} records of 1 MiB, not {mb}+0")
    return mb / (float(end) - float(start))


class Side:
    """One place to measure TCP: a server and a client, and how to read the server's notes."""

    name = ""

    def send(self, mb: int) -> None:
        raise NotImplementedError

    def notes(self) -> list[str]:
        raise NotImplementedError

    def measure(self, mb: int) -> float:
        before = len(self.notes())
        self.send(mb)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines = self.notes()
            if len(lines) > before:
                return parse_line(lines[before], mb)
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: the server noted no transfer within 60 s")


class EngineSide(Side):
    def __init__(self, engine: Engine) -> None:
        self.engine, self.name = engine, engine.name
        # unconfined: the server reads the clock with adjtimex(2), which pyd's default seccomp
        # profile refuses (Docker's allows it read-only); the same for both engines.
        must(engine, "run", "-d", "--name", SERVER, "--network", NET, "--security-opt", "seccomp=unconfined",
             IMAGE, *server_argv("/tmp/notes"))
        must(engine, "run", "-d", "--name", CLIENT, "--network", NET, IMAGE, "sleep", "3600")
        doc = json.loads(must(engine, "inspect", SERVER))[0]
        self.ip = doc["NetworkSettings"]["Networks"][NET]["IPAddress"]

    def send(self, mb: int) -> None:
        must(self.engine, "exec", CLIENT, *client_argv(self.ip, mb))

    def notes(self) -> list[str]:
        out = self.engine.run("exec", SERVER, "cat", "/tmp/notes")
        return out.stdout.splitlines() if out.returncode == 0 else []


class VethSide(Side):
    """Two network namespaces joined by one bare veth pair (no bridge, no netfilter rules)."""

    name = "bare veth"

    def __init__(self, env: NetEnv) -> None:
        self.a, self.b = env.sandbox(), env.sandbox()
        ha, hb = f"{env.prefix}a", f"{env.prefix}b"
        env.extra_links += [ha, hb]
        subprocess.run(["ip", "link", "add", ha, "type", "veth", "peer", "name", hb], check=True)
        for sb, link, addr in ((self.a, ha, "10.199.255.1/30"), (self.b, hb, "10.199.255.2/30")):
            subprocess.run(["ip", "link", "set", link, "netns", str(sb.path)], check=True)
            sb.run("ip", "addr", "add", addr, "dev", link)
            sb.run("ip", "link", "set", link, "up")
            sb.run("ip", "link", "set", "lo", "up")
        self.ip = "10.199.255.2"
        self.out = env.tmp / "veth-notes"
        self.out.touch()
        self.b.start(*server_argv(str(self.out)))
        time.sleep(0.2)

    def send(self, mb: int) -> None:
        self.a.run(*client_argv(self.ip, mb), timeout=120)

    def notes(self) -> list[str]:
        return self.out.read_text().splitlines()


def must(engine: Engine, *args: str) -> str:
    out = engine.run(*args)
    if out.returncode != 0:
        raise RuntimeError(f"{engine.name}: {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def make_network(engine: Engine, bridge: str) -> None:
    subnet = free_subnet()  # a /24 of 10.199.0.0/16 that no host route overlaps (so far)
    must(engine, "network", "create", "--driver", "bridge", "--subnet", str(subnet),
         "-o", f"com.docker.network.bridge.name={bridge}", NET)


def remove_network(engine: Engine, bridge: str) -> None:
    """Containers, then the network; the bridge by name if the engine left it (dockerd does
    not remove user bridges when it stops, so this runs before the engine stops)."""
    try:
        engine.remove_all()
        engine.run("network", "rm", NET)
    finally:
        if os.path.exists(f"/sys/class/net/{bridge}"):
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1), "runs": [round(v, 1) for v in values]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="timed run --rm per engine and network [20]")
    ap.add_argument("--reps", type=int, default=9, help="TCP transfers per engine [9]")
    ap.add_argument("--mb", type=int, default=1000, help="MiB per TCP transfer [1000]")
    ap.add_argument("--install", choices=("wheel", "current"), default="wheel",
                    help="wheel: a fresh venv with a regular pip install (default); current: this environment")
    ap.add_argument("--pause", type=float, default=0.2, help="seconds between timed runs [0.2]")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds of rest after the set-up [10]")
    ap.add_argument("--no-docker", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    for tool in ("busybox", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            print(f"needs {tool}", file=sys.stderr)
            return 2
    driver = os.environ.get("PYD_BENCH_STORAGE_DRIVER", "overlay2")
    root = Path(tempfile.mkdtemp(prefix="pyd-bench-netdk-"))
    tag = secrets.token_hex(2)
    engines: list[Engine] = []
    bridges: dict[str, str] = {}
    env = NetEnv(root)
    try:
        if args.install == "wheel":
            print("installing pyd and its plugins into a fresh venv (pip install, not editable) ...", file=sys.stderr)
            python, install = make_venv(root), "regular pip install into a fresh venv"
        else:
            python, install = sys.executable, "this environment"
        pyd = Pyd(root, python, driver, install)
        engines.append(pyd)
        pyd.load_image(root)
        if not args.no_docker:
            if os.path.exists(DOCKERD) and os.path.exists(DOCKER):
                archive = root / "busybox-image.tar"
                must(pyd, "save", "-o", str(archive), IMAGE)
                dk = Dockerd(root)
                engines.append(dk)
                dk.load_image(archive)
            else:
                print("(dockerd not installed: apt-get install docker.io for the comparison)", file=sys.stderr)
        for i, e in enumerate(engines):
            bridges[e.name] = f"pbn{tag}{i}"
            make_network(e, bridges[e.name])
        time.sleep(args.settle)  # pip, the daemons' start and the image loads are done
        load0 = os.getloadavg()[0]
        results: dict[str, dict[str, object]] = {e.name: {} for e in engines}
        for key, net in (("run --rm none", "none"), ("run --rm bridge", NET)):
            samples = alternate(engines, args.runs, lambda e, net=net: ["run", "--rm", "--network", net, IMAGE, "true"],
                                args.pause)
            for name, s in samples.items():
                results[name][key] = stats(s)
        sides: list[Side] = [EngineSide(e) for e in engines] + [VethSide(env)]
        results[sides[-1].name] = {}
        for s in sides:
            s.measure(min(args.mb, 50))  # warm-up: ARP, the first connection
        mibs: dict[str, list[float]] = {s.name: [] for s in sides}
        for _ in range(args.reps):
            for s in sides:
                time.sleep(args.pause)
                mibs[s.name].append(s.measure(args.mb))
        veth = mibs[sides[-1].name]
        for name, v in mibs.items():
            results[name]["tcp_mib_s"] = spread(v)
            # per round against the veth in the same round: less sensitive to drifting load
            results[name]["tcp_vs_veth_paired_pct"] = spread([100 * x / y for x, y in zip(v, veth)])
        load1 = os.getloadavg()[0]
    finally:
        for e in reversed(engines):
            try:
                remove_network(e, bridges.get(e.name, ""))
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                print(f"removing {e.name}'s network: {exc}", file=sys.stderr)
            try:
                e.stop()
            except Exception as exc:  # noqa: BLE001
                print(f"stopping {e.name or type(e).__name__}: {exc}", file=sys.stderr)
        env.close()
        shutil.rmtree(root, ignore_errors=True)

    report = {
        "install": install, "storage_driver": driver, "cpus": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(), "load_average": [round(load0, 2), round(load1, 2)],
        "runs": args.runs, "reps": args.reps, "mib_per_transfer": args.mb, "results": results,
    }
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _ms(r: object) -> str:
    if not isinstance(r, dict):
        return "n/a"
    return f"{r['median_s'] * 1000:.0f} / {r['p90_s'] * 1000:.0f} ms"


def print_table(report: dict) -> None:
    res = report["results"]
    names = list(res)
    rows = [["", *names]]
    rows.append(["run --rm none (median / p90)", *(_ms(res[n].get("run --rm none")) for n in names)])
    rows.append(["run --rm bridge (median / p90)", *(_ms(res[n].get("run --rm bridge")) for n in names)])
    diff = []
    for n in names:
        a, b = res[n].get("run --rm bridge"), res[n].get("run --rm none")
        diff.append(f"+{(a['median_s'] - b['median_s']) * 1000:.0f} ms" if a and b else "n/a")
    rows.append(["bridge - none (medians)", *diff])
    tcp = []
    for n in names:
        t = res[n].get("tcp_mib_s")
        tcp.append(f"{t['median']:.0f} MiB/s ({t['median'] * 8 * 1.048576 / 1000:.2f} Gbit/s), "
                   f"{t['min']:.0f}-{t['max']:.0f}" if t else "n/a")
    rows.append([f"TCP {report['mib_per_transfer']} MiB, median (min-max)", *tcp])
    veth = res.get("bare veth", {}).get("tcp_mib_s")
    if veth:
        rows.append(["TCP vs bare veth (medians)", *(f"{res[n]['tcp_mib_s']['median'] / veth['median'] * 100:.0f} %"
                                                     if res[n].get("tcp_mib_s") else "n/a" for n in names)])
        paired = []
        for n in names:
            p = res[n].get("tcp_vs_veth_paired_pct")
            paired.append(f"{p['median']:.0f} % ({p['min']:.0f}-{p['max']:.0f})" if p else "n/a")
        rows.append(["TCP vs bare veth, same round (median, min-max)", *paired])
    print(f"install: {report['install']}; {report['cpus']} CPUs, kernel {report['kernel']}, python "
          f"{report['python']}, storage {report['storage_driver']}, load average {report['load_average'][0]} -> "
          f"{report['load_average'][1]}; {report['runs']} runs, {report['reps']} transfers each")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    sys.exit(main())
