"""TCP throughput over a pyd bridge network vs a bare veth pair, and endpoint set-up time.

    sudo python benchmarks/bridge_throughput.py [-t 5] [-r 3] [-n 30] [--json]

Needs root, ``iperf3`` (Debian package ``iperf3``), ``unshare``/``nsenter`` and the
``pyd-network-bridge`` distribution. Measures, all inside network namespaces this script
makes (no traffic leaves them):

* iperf3 TCP throughput between two sandboxes joined to one ``bridge`` network
  (veth -> bridge -> veth), median of ``-r`` runs of ``-t`` seconds;
* the same between two namespaces linked by one bare veth pair (the host's limit);
* the driver's endpoint life cycle: create_endpoint + join, and leave + delete_endpoint,
  median and 90th percentile of ``-n`` rounds on one sandbox.

Runs alternate (bridge, veth, bridge, ...) so drift on a shared machine hits both alike. The
iperf3 parts live in ``_netbench.py`` (shared with ``network_docker.py``).
Everything made is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _netbench import measure, sandbox_runner, serve_in, veth_pair  # noqa: E402

from pyd.drivers.network import EndpointRequest, JoinRequest  # noqa: E402
from pyd.testing.network import NetEnv  # noqa: E402


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-t", type=int, default=5, help="seconds per iperf3 run [5]")
    ap.add_argument("-r", type=int, default=3, help="iperf3 runs per setup [3]")
    ap.add_argument("-n", type=int, default=30, help="endpoint life-cycle rounds [30]")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    for tool in ("iperf3", "unshare", "nsenter", "busybox"):
        if shutil.which(tool) is None:
            print(f"needs {tool} (Debian package {'iperf3' if tool == 'iperf3' else tool})", file=sys.stderr)
            return 2

    tmp = Path(tempfile.mkdtemp(prefix="pyd-bench-net-"))
    env = NetEnv(tmp)
    try:
        driver = env.load("bridge")
        net = env.network(driver)
        a, b = env.sandbox(), env.sandbox()
        env.attach(net, a)
        eb = env.attach(net, b)
        bridge_ip = eb.address.split("/")[0]
        va, vb, veth_ip = veth_pair(env)
        serve_in(b, bridge_ip)
        serve_in(vb, veth_ip)

        bridge_gbps, veth_gbps = [], []
        for _ in range(args.r):
            bridge_gbps.append(measure(sandbox_runner(a), bridge_ip, args.t))
            veth_gbps.append(measure(sandbox_runner(va), veth_ip, args.t))

        sb = env.sandbox()
        up, down = [], []
        for _ in range(args.n):
            ep = EndpointRequest(net.network_id, secrets.token_hex(32), net.address())
            t0 = time.perf_counter()
            driver.create_endpoint(ep)
            driver.join(JoinRequest(net.network_id, ep.endpoint_id, str(sb.path)))
            t1 = time.perf_counter()
            driver.leave(net.network_id, ep.endpoint_id)
            driver.delete_endpoint(net.network_id, ep.endpoint_id)
            t2 = time.perf_counter()
            up.append((t1 - t0) * 1000)
            down.append((t2 - t1) * 1000)
    finally:
        env.close()
        shutil.rmtree(tmp, ignore_errors=True)

    br, ve = statistics.median(bridge_gbps), statistics.median(veth_gbps)
    figures = {
        "bridge_gbps_median": round(br, 2),
        "veth_gbps_median": round(ve, 2),
        "bridge_vs_veth_percent": round(100 * br / ve, 1),
        "bridge_gbps_runs": [round(x, 2) for x in bridge_gbps],
        "veth_gbps_runs": [round(x, 2) for x in veth_gbps],
        "create_endpoint_join_ms_median": round(statistics.median(up), 1),
        "create_endpoint_join_ms_p90": round(pct(up, 0.9), 1),
        "leave_delete_endpoint_ms_median": round(statistics.median(down), 1),
        "leave_delete_endpoint_ms_p90": round(pct(down, 0.9), 1),
    }
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    print(f"# iperf3 TCP, 1 stream, {args.r} x {args.t}s each (median); {args.n} endpoint rounds")
    print(f"bridge (veth-bridge-veth)   {br:7.2f} Gbit/s   runs {figures['bridge_gbps_runs']}")
    print(f"bare veth pair              {ve:7.2f} Gbit/s   runs {figures['veth_gbps_runs']}")
    print(f"bridge / veth               {figures['bridge_vs_veth_percent']:6.1f} %   (target >= 90 %)")
    print(f"create_endpoint + join      {figures['create_endpoint_join_ms_median']:6.1f} ms median, "
          f"{figures['create_endpoint_join_ms_p90']:.1f} ms p90")
    print(f"leave + delete_endpoint     {figures['leave_delete_endpoint_ms_median']:6.1f} ms median, "
          f"{figures['leave_delete_endpoint_ms_p90']:.1f} ms p90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
