"""Network figures, pyd side by side with Docker in the same run (issue 5).

For each engine, on a user-defined bridge network made for the run:

* ``run --rm bridge``: wall time of ``<cli> run --rm --network NET busybox true`` as a user
  types it (CLI start-up included), median and p90 of ``--runs``; next to it the same with
  ``--network none``, so the cost of the bridge endpoint shows on its own;
* ``TCP``: iperf3 throughput, one TCP stream for ``-t`` seconds, between two containers on
  NET: a server container (``iperf3 -s``, address chosen with ``--ip``) and a client
  container that ``iperf3 -c`` is ``exec``-ed into. The image is the same on both engines: busybox
  plus the host's ``iperf3`` (Debian package ``iperf3``) and its libraries, imported into pyd,
  saved with ``pyd save`` and loaded with ``docker load``. The same binary between two bare
  network namespaces joined by one veth pair gives the host's limit (``bare veth``). Both
  engines run their containers with their default seccomp profile (``--unconfined``: none).

Runs alternate (pyd, docker, veth, pyd, ...), after one warm-up each, so load from elsewhere
hits them alike; besides each side's median, each engine's figure is divided by the veth's of
the same round (``same round``), which drifting load disturbs less. The load average before
and after is printed (this wants a quiet machine). The iperf3 code and image are shared with
``bridge_throughput.py`` (``_netbench.py``).

pyd runs as its own daemon (temporary data-root and exec-root, storage driver
``PYD_BENCH_STORAGE_DRIVER``, default overlay2, own default bridge), from a fresh virtualenv
with a regular ``pip install`` (``--install wheel``, the default) or this environment
(``--install current``). Docker is Debian's ``docker.io``: a private dockerd with its own
data-root, exec-root, socket and pidfile, ``--bridge=none --iptables=false`` (it never adds
rules to the host's firewall; pyd keeps its nftables rules, so docker's bridge has slightly
less to do; with ``br_netfilter`` loaded, bridged packets pass the netfilter hooks on both),
the same images loaded with ``docker load``; stopped by pid at the end.
Both engines' bridges are named for the run; every container, network, bridge and namespace
is removed at the end, also on failure. Run as root::

    python benchmarks/network_docker.py [--runs 20] [--reps 9] [-t 3] [--install wheel|current]
                                        [--unconfined] [--no-docker] [--json FILE]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_latency import DOCKER, DOCKERD, IMAGE, Dockerd, Engine, Pyd, alternate, make_venv, stats  # noqa: E402

from _netbench import IPERF3_IMAGE, Runner, iperf3_rootfs_tar, measure, sandbox_runner, serve_in, server_argv, veth_pair, wait_listening  # noqa: E402,E501

from pyd.testing.network import NetEnv, free_subnet  # noqa: E402

NET = "bench-net"
SERVER, CLIENT = "bench-iperf-server", "bench-iperf-client"


class Side:
    """One place to measure TCP: where the iperf3 client runs and the server's address."""

    def __init__(self, name: str, client: Runner, ip: str) -> None:
        self.name, self.client, self.ip = name, client, ip

    def measure(self, seconds: int) -> float:
        return measure(self.client, self.ip, seconds)


def engine_side(engine: Engine, subnet: ipaddress.IPv4Network, opts: list[str]) -> Side:
    """An iperf3 server container and a client container on NET (``opts``: more run options)."""
    ip = str(subnet.network_address + 200)  # above what IPAM hands out first
    must(engine, "run", "-d", "--name", SERVER, "--network", NET, "--ip", ip, *opts, IPERF3_IMAGE, *server_argv(ip))
    must(engine, "run", "-d", "--name", CLIENT, "--network", NET, *opts, IPERF3_IMAGE, "sleep", "3600")

    def in_container(name: str) -> Runner:
        return lambda argv, timeout: engine.run("exec", name, *argv).stdout

    wait_listening(in_container(SERVER), ip)
    return Side(engine.name, in_container(CLIENT), ip)


def veth_side(env: NetEnv) -> Side:
    a, b, ip = veth_pair(env)
    serve_in(b, ip)
    return Side("bare veth", sandbox_runner(a), ip)


def must(engine: Engine, *args: str) -> str:
    out = engine.run(*args)
    if out.returncode != 0:
        raise RuntimeError(f"{engine.name}: {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def make_network(engine: Engine, bridge: str) -> ipaddress.IPv4Network:
    subnet = free_subnet()  # a /24 of 10.199.0.0/16 that no host route overlaps (so far)
    must(engine, "network", "create", "--driver", "bridge", "--subnet", str(subnet),
         "-o", f"com.docker.network.bridge.name={bridge}", NET)
    return subnet


def remove_network(engine: Engine, bridge: str) -> None:
    """Containers, then the network; the bridge by name if the engine left it (dockerd does
    not remove user bridges when it stops, so this runs before the engine stops)."""
    try:
        engine.remove_all()
        engine.run("network", "rm", NET)
    finally:
        if os.path.exists(f"/sys/class/net/{bridge}"):
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def spread(values: list[float], digits: int = 1) -> dict[str, object]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "runs": [round(v, digits) for v in values]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="timed run --rm per engine and network [20]")
    ap.add_argument("--reps", type=int, default=9, help="iperf3 runs per engine and the veth [9]")
    ap.add_argument("-t", "--seconds", type=int, default=3, help="seconds per iperf3 run [3]")
    ap.add_argument("--install", choices=("wheel", "current"), default="wheel",
                    help="wheel: a fresh venv with a regular pip install (default); current: this environment")
    ap.add_argument("--pause", type=float, default=0.2, help="seconds between timed runs [0.2]")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds of rest after the set-up [10]")
    ap.add_argument("--unconfined", action="store_true",
                    help="iperf3 containers with --security-opt seccomp=unconfined on both engines")
    ap.add_argument("--no-docker", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the clean-up below runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    for tool in ("busybox", "unshare", "nsenter", "iperf3", "ldd"):
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
        must(pyd, "import", str(iperf3_rootfs_tar(root / "iperf3-rootfs.tar")), IPERF3_IMAGE)
        if not args.no_docker:
            if os.path.exists(DOCKERD) and os.path.exists(DOCKER):
                archive = root / "images.tar"  # busybox and the iperf3 image, as pyd has them
                must(pyd, "save", "-o", str(archive), IMAGE, IPERF3_IMAGE)
                dk = Dockerd(root)
                engines.append(dk)
                dk.load_image(archive)
            else:
                print("(dockerd not installed: apt-get install docker.io for the comparison)", file=sys.stderr)
        # the same image on both sides: pyd's image ID is the config digest docker load computes
        image_ids = {e.name: must(e, "image", "inspect", "--format", "{{.Id}}", IPERF3_IMAGE).strip() for e in engines}
        subnets = {}
        for i, e in enumerate(engines):
            bridges[e.name] = f"pbn{tag}{i}"
            subnets[e.name] = make_network(e, bridges[e.name])
        time.sleep(args.settle)  # pip, the daemons' start and the image loads are done
        load0 = os.getloadavg()[0]
        results: dict[str, dict[str, object]] = {e.name: {} for e in engines}
        for key, net in (("run --rm none", "none"), ("run --rm bridge", NET)):
            samples = alternate(engines, args.runs, lambda e, net=net: ["run", "--rm", "--network", net, IMAGE, "true"],
                                args.pause)
            for name, s in samples.items():
                results[name][key] = stats(s)
        opts = ["--security-opt", "seccomp=unconfined"] if args.unconfined else []
        sides = [engine_side(e, subnets[e.name], opts) for e in engines] + [veth_side(env)]
        results[sides[-1].name] = {}
        for side in sides:
            side.measure(1)  # warm-up: ARP, the first connection
        gbit: dict[str, list[float]] = {side.name: [] for side in sides}
        for _ in range(args.reps):
            for side in sides:
                time.sleep(args.pause)
                gbit[side.name].append(side.measure(args.seconds))
        veth = gbit[sides[-1].name]
        for name, v in gbit.items():
            results[name]["tcp_gbit_s"] = spread(v, 2)
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
        "runs": args.runs, "reps": args.reps, "seconds_per_iperf3_run": args.seconds,
        "iperf3_seccomp": "unconfined" if args.unconfined else "default", "iperf3_image_ids": image_ids,
        "results": results,
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
        t = res[n].get("tcp_gbit_s")
        tcp.append(f"{t['median']:.2f} Gbit/s ({t['min']:.2f}-{t['max']:.2f})" if t else "n/a")
    rows.append([f"iperf3 TCP {report['seconds_per_iperf3_run']} s, median (min-max)", *tcp])
    veth = res.get("bare veth", {}).get("tcp_gbit_s")
    if veth:
        rows.append(["TCP vs bare veth (medians)", *(f"{res[n]['tcp_gbit_s']['median'] / veth['median'] * 100:.1f} %"
                                                     if res[n].get("tcp_gbit_s") else "n/a" for n in names)])
        paired = []
        for n in names:
            p = res[n].get("tcp_vs_veth_paired_pct")
            paired.append(f"{p['median']:.1f} % ({p['min']:.1f}-{p['max']:.1f})" if p else "n/a")
        rows.append(["TCP vs bare veth, same round (median, min-max)", *paired])
    print(f"install: {report['install']}; {report['cpus']} CPUs, kernel {report['kernel']}, python "
          f"{report['python']}, storage {report['storage_driver']}, load average {report['load_average'][0]} -> "
          f"{report['load_average'][1]}; {report['runs']} runs, {report['reps']} iperf3 runs each, seccomp "
          f"{report['iperf3_seccomp']}")
    print("iperf3 image: " + ", ".join(f"{n} {i[:19]}" for n, i in report["iperf3_image_ids"].items()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    sys.exit(main())
