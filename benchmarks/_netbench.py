"""Shared parts of the network benchmarks (``bridge_throughput.py``, ``network_docker.py``).

* iperf3 measuring: a server started once per place (``iperf3 -s -B IP``), clients of one TCP
  stream for ``-t`` seconds, the receiver's Gbit/s from the client's JSON report; anything
  that can run a command (a ``Sandbox``, a container through its engine's ``exec``) is a place.
* the host's limit: two network namespaces joined by one bare veth pair (``veth_pair``);
* the iperf3 test image: busybox's root filesystem plus the host's ``/usr/bin/iperf3``
  (Debian package ``iperf3``) and the shared libraries ``ldd`` names, as a tarball for
  ``pyd import`` (``iperf3_rootfs_tar``), so the same binary runs on the host and in containers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

from pyd.testing.images import LayerEntry, busybox_entries, layer_tar
from pyd.testing.network import NetEnv, Sandbox

PORT = 5201
IPERF3_IMAGE = "pyd-bench-iperf3:latest"
VETH_A, VETH_B = "10.199.255.1/30", "10.199.255.2/30"

# Runs a command somewhere (argv, timeout in s) and returns its stdout; must not raise on a
# non-zero exit, so iperf3's own error (in its JSON) is what gets reported.
Runner = Callable[[Sequence[str], float], str]


def server_argv(ip: str) -> list[str]:
    return ["iperf3", "-s", "-B", ip, "-p", str(PORT)]


def wait_listening(run: Runner, ip: str, timeout: float = 15.0) -> None:
    """Until ``ip:PORT`` is listening where ``run`` runs (busybox ``netstat``)."""
    deadline = time.monotonic() + timeout
    while f"{ip}:{PORT}" not in run(["busybox", "netstat", "-ltn"], 10):
        if time.monotonic() > deadline:
            raise RuntimeError(f"iperf3 server on {ip}:{PORT} is not listening after {timeout:.0f} s")
        time.sleep(0.05)


def gbps(report: str) -> float:
    """Gbit/s the server received, from ``iperf3 -c ... -J`` output."""
    try:
        doc = json.loads(report)
    except json.JSONDecodeError:
        raise RuntimeError(f"iperf3 printed no JSON report: {report[-500:]!r}") from None
    if doc.get("error"):
        raise RuntimeError(f"iperf3: {doc['error']}")
    return doc["end"]["sum_received"]["bits_per_second"] / 1e9


def measure(client: Runner, ip: str, seconds: int, tries: int = 5) -> float:
    """One TCP stream from ``client`` to the server on ``ip`` for ``seconds``; Gbit/s received.
    A server still finishing the last test answers "busy" for a moment: try again then."""
    for attempt in range(tries):
        out = client(["iperf3", "-c", ip, "-p", str(PORT), "-t", str(seconds), "-J"], seconds + 30)
        try:
            return gbps(out)
        except RuntimeError as exc:
            if "busy" not in str(exc) or attempt == tries - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def sandbox_runner(sb: Sandbox) -> Runner:
    return lambda argv, timeout: sb.run(*argv, check=False, timeout=timeout).stdout


def serve_in(sb: Sandbox, ip: str) -> None:
    """An iperf3 server in ``sb`` on ``ip`` (killed by pid when the sandbox closes)."""
    sb.start(*server_argv(ip))
    wait_listening(sandbox_runner(sb), ip)


def veth_pair(env: NetEnv) -> tuple[Sandbox, Sandbox, str]:
    """Two sandboxes joined by one bare veth pair (no bridge, no netfilter rules): the host's
    limit. Returns (client side, server side, the server side's address)."""
    a, b = env.sandbox(), env.sandbox()
    ha, hb = f"{env.prefix}a", f"{env.prefix}b"
    env.extra_links += [ha, hb]
    subprocess.run(["ip", "link", "add", ha, "type", "veth", "peer", "name", hb], check=True)
    for sb, link, addr in ((a, ha, VETH_A), (b, hb, VETH_B)):
        subprocess.run(["ip", "link", "set", link, "netns", str(sb.path)], check=True)
        sb.run("ip", "addr", "add", addr, "dev", link)
        sb.run("ip", "link", "set", link, "up")
        sb.run("ip", "link", "set", "lo", "up")
    return a, b, VETH_B.split("/")[0]


# -- the iperf3 test image -------------------------------------------------------------------------


def _closure(binary: str) -> list[str]:
    """``binary`` and every shared object ``ldd`` resolves for it (the loader included)."""
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    paths = [binary]
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > parts.index("=>") + 1 and parts[parts.index("=>") + 1].startswith("/"):
            paths.append(parts[parts.index("=>") + 1])
        elif parts and parts[0].startswith("/"):
            paths.append(parts[0])  # the loader: /lib64/ld-linux-x86-64.so.2
    return paths


def iperf3_entries(iperf3: str | None = None) -> list[LayerEntry]:
    """busybox's tree plus ``/bin/iperf3`` and its libraries at the paths ``ldd`` names (as
    regular files, symlinks resolved), so the dynamic loader finds them as on the host."""
    binary = iperf3 or shutil.which("iperf3")
    if binary is None:
        raise RuntimeError("needs iperf3 (Debian package iperf3)")
    entries = busybox_entries()
    dirs = {e.path for e in entries if e.kind == "dir"}
    extra: list[LayerEntry] = []
    for i, path in enumerate(_closure(binary)):
        dest = "bin/iperf3" if i == 0 else path.strip("/")
        parent = os.path.dirname(dest)
        chain = []
        while parent and parent not in dirs:
            chain.append(parent)
            dirs.add(parent)
            parent = os.path.dirname(parent)
        extra += [LayerEntry(d, "dir") for d in reversed(chain)]
        extra.append(LayerEntry(dest, "file", Path(path).read_bytes(), mode=0o755))
    return entries + extra


def iperf3_rootfs_tar(path: str | os.PathLike[str], iperf3: str | None = None) -> Path:
    """The iperf3 test image's root filesystem as a tarball, what ``pyd import`` takes."""
    out = Path(path)
    out.write_bytes(layer_tar(iperf3_entries(iperf3), prefix="./", root_dir=True))
    return out
