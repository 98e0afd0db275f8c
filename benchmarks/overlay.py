"""Overlay networks across two hosts: TCP throughput vs the underlying link, and start latency.

    sudo python benchmarks/overlay.py [--mb 500] [-r 3] [-n 20] [--json]

Needs root, Debian's ``etcd-server`` and ``busybox-static``, and the ``pyd-network-overlay``,
``pyd-kvstore-etcd`` and ``pyd-network-bridge`` distributions. Builds a two-host cluster with
``pyd.testing.cluster`` (two "host" network namespaces on a test-only switch, etcd on the
switch, one ``pyd daemon`` per host); no packet leaves those namespaces. Measures:

* TCP throughput of one stream moving ``--mb`` MiB from a container on host 0 to a container
  on host 1 over an overlay network (container veth -> br0 -> VXLAN -> the hosts' link -> ...),
  and the same between the two host namespaces directly over their link (the ceiling). The
  byte movers are a small Python sender/receiver (1 MiB writes; the receiver times first byte
  to EOF) run in the containers' network namespaces (``nsenter --net=/proc/PID/ns/net``) and
  in the host namespaces, so both paths use the same tool. (busybox ``nc`` moves data in small
  chunks and tops out far below either path, ~0.2 Gbit/s here, so it would only measure
  itself.) Median of ``-r`` runs, alternating overlay and direct so drift on a shared machine
  hits both alike.
* Container start latency as a user sees it: ``pyd run --rm --network NET busybox true`` on the
  overlay network vs on a local bridge network of the same host, ``-n`` runs each, alternating;
  median and p90 (CLI start-up included).

Everything made is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyd.testing.cluster import Cluster

PORT = 5201

RECEIVER = r"""
import socket, sys, time
s = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
c, _ = s.accept()
buf = bytearray(1 << 20)
n, t0 = 0, None
while True:
    k = c.recv_into(buf)
    if not k:
        break
    if t0 is None:
        t0 = time.perf_counter()
    n += k
print(n, time.perf_counter() - t0, flush=True)
"""

SENDER = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
chunk = b"\0" * (1 << 20)
for _ in range(int(sys.argv[3])):
    s.sendall(chunk)
s.close()
"""


def python_throughput(src_ns: str, dst_ns: str, dst_ip: str, mb: int) -> float:
    """Gbit/s of one TCP stream of ``mb`` MiB from namespace ``src_ns`` to ``dst_ip`` in ``dst_ns``."""
    rx = subprocess.Popen(["nsenter", f"--net={dst_ns}", sys.executable, "-c", RECEIVER, dst_ip, str(PORT)],
                          stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout is not None
        if rx.stdout.readline().strip() != "ready":
            raise RuntimeError("the receiver did not start")
        subprocess.run(["nsenter", f"--net={src_ns}", sys.executable, "-c", SENDER, dst_ip, str(PORT), str(mb)],
                       check=True, timeout=300)
        n, secs = rx.stdout.readline().split()
        if int(n) != mb << 20:
            raise RuntimeError(f"received {n} bytes of {mb << 20}")
        return int(n) * 8 / float(secs) / 1e9
    finally:
        if rx.poll() is None:
            rx.kill()
        rx.wait(10)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def timed(c: Cluster, *args: str) -> float:
    t0 = time.perf_counter()
    c.ok(0, *args)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=500, help="MiB per throughput run [500]")
    ap.add_argument("-r", type=int, default=3, help="throughput runs per path and tool [3]")
    ap.add_argument("-n", type=int, default=20, help="start-latency runs per network [20]")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    for tool in ("nsenter", "busybox", "etcd"):
        if shutil.which(tool) is None:
            print(f"needs {tool}", file=sys.stderr)
            return 2

    tmp = Path(tempfile.mkdtemp(prefix="pyd-bench-overlay-"))
    c = Cluster(tmp, hosts=2)
    try:
        c.start()
        c.import_busybox()
        onet, bnet = "bench-overlay", "bench-bridge"
        c.ok(0, "network", "create", "-d", "overlay", "--subnet", str(c.free_subnet()), onet)
        c.ok(0, "network", "create", "--subnet", str(c.free_subnet()), bnet)
        c.ok(0, "run", "-d", "--name", "tx", "--network", onet, "busybox", "sleep", "3600")
        c.ok(1, "run", "-d", "--name", "rx", "--network", onet, "busybox", "sleep", "3600")
        tx_ns = f"/proc/{c.inspect(0, 'tx')[0]['State']['Pid']}/ns/net"
        rx_doc = c.inspect(1, "rx")[0]
        rx_ns = f"/proc/{rx_doc['State']['Pid']}/ns/net"
        rx_ip = rx_doc["NetworkSettings"]["Networks"][onet]["IPAddress"]
        h0, h1 = c.net.hosts
        # warm up: ARP, FDB, the first connection
        subprocess.run(["nsenter", f"--net={tx_ns}", "busybox", "ping", "-c3", "-W1", rx_ip], capture_output=True)
        links = json.loads(subprocess.run(["nsenter", f"--net={tx_ns}", "ip", "-j", "addr"],
                                          capture_output=True, text=True).stdout or "[]")
        tx_ip = c.inspect(0, "tx")[0]["NetworkSettings"]["Networks"][onet]["IPAddress"]
        mtu = next((l["mtu"] for l in links if any(a.get("local") == tx_ip for a in l.get("addr_info", []))), 0)

        runs: dict[str, list[float]] = {"overlay": [], "direct": []}
        for _ in range(args.r):
            runs["overlay"].append(python_throughput(tx_ns, rx_ns, rx_ip, args.mb))
            runs["direct"].append(python_throughput(str(h0.path), str(h1.path), h1.ip, args.mb))

        lat: dict[str, list[float]] = {"overlay": [], "bridge": []}
        timed(c, "run", "--rm", "--network", onet, "busybox", "true")  # first use makes the gwbridge
        timed(c, "run", "--rm", "--network", bnet, "busybox", "true")
        for _ in range(args.n):
            lat["overlay"].append(timed(c, "run", "--rm", "--network", onet, "busybox", "true"))
            time.sleep(0.2)  # background clean-up of the last run off the next one's clock
            lat["bridge"].append(timed(c, "run", "--rm", "--network", bnet, "busybox", "true"))
            time.sleep(0.2)
    finally:
        c.close()
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in runs.items()}
    figures = {
        "mib_per_run": args.mb,
        "overlay_mtu": mtu,
        **{f"{k}_gbps_median": round(v, 2) for k, v in med.items()},
        **{f"{k}_gbps_runs": [round(x, 2) for x in v] for k, v in runs.items()},
        "overlay_vs_direct_percent": round(100 * med["overlay"] / med["direct"], 1),
        "run_rm_overlay_s_median": round(statistics.median(lat["overlay"]), 3),
        "run_rm_overlay_s_p90": round(pct(lat["overlay"], 0.9), 3),
        "run_rm_bridge_s_median": round(statistics.median(lat["bridge"]), 3),
        "run_rm_bridge_s_p90": round(pct(lat["bridge"], 0.9), 3),
        "loadavg": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    print(f"# TCP, 1 stream, {args.mb} MiB per run, median of {args.r} runs; overlay MTU {mtu}; "
          f"start latency: {args.n} runs each")
    print(f"{'overlay: container host0 -> container host1':<46}{med['overlay']:>7.2f} Gbit/s   runs {figures['overlay_gbps_runs']}")
    print(f"{'direct: host0 netns -> host1 netns (the link)':<46}{med['direct']:>7.2f} Gbit/s   runs {figures['direct_gbps_runs']}")
    print(f"{'overlay / direct':<46}{figures['overlay_vs_direct_percent']:>7.1f} %")
    print()
    print(f"{'pyd run --rm --network NET busybox true':<46}{'median':>10}{'p90':>10}")
    for k in ("overlay", "bridge"):
        print(f"{'  ' + k:<46}{statistics.median(lat[k]) * 1000:>7.0f} ms{pct(lat[k], 0.9) * 1000:>7.0f} ms")
    print(f"(1-min load average at the end: {figures['loadavg']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
