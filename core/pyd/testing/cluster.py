"""Several "hosts" on one machine, for multi-host tests: network namespaces on a test-only link.

``HostNamespaces(n)`` makes a "switch" network namespace holding a bridge, and ``n`` "host"
namespaces, each with a veth (``eth0``) plugged into that bridge and an address
``10.<a>.<b>.<i>/24`` (``i`` = 1..n; the switch has ``.254``). The /24 is chosen at random per
run among those no route of the machine overlaps, so it never shadows a real network, and it
exists only inside these namespaces. Namespaces are bind-mounted on files under a temporary
directory (no ``ip netns`` names to collide); ``close()`` (or leaving the ``with`` block)
removes them, also after a failure::

    with HostNamespaces(2) as hosts:
        a, b = hosts.hosts
        a.ns.run("ping", "-c1", b.ip)

``Cluster`` puts the pieces of a pyd cluster on top: an etcd (``pyd.testing.etcd``) in the
switch namespace, one ``pyd daemon`` per host namespace (``DaemonProcess(netns=...)``: its own
data-root, exec-root and socket; ``cluster-store`` pointing at the etcd, ``cluster-advertise``
its host address), and helpers to run the CLI against host ``i`` and to read etcd's keys::

    with Cluster(tmp_path, hosts=2) as c:
        c.import_busybox()
        c.ok(0, "network", "create", "-d", "overlay", "--subnet", str(c.free_subnet()), "net")

Everything is removed at the end: containers (``rm -f``), networks, daemons (by pid), leftover
mounts under the daemons' roots, etcd and the namespaces.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from pyd.drivers.network import netns_call
from pyd.testing.daemon import DaemonProcess
from pyd.testing.network import Sandbox, host_routes

SWITCH_HOST = 254  # the switch bridge's host number in the cluster's /24
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380


def _run(*cmd: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def free_subnets(
    count: int = 1,
    *,
    avoid: Sequence[ipaddress.IPv4Network] = (),
    within: ipaddress.IPv4Network = ipaddress.IPv4Network("10.0.0.0/8"),
    prefixlen: int = 24,
) -> list[ipaddress.IPv4Network]:
    """``count`` distinct random subnets of ``within`` that overlap no route of this machine,
    nothing in ``avoid``, and not 10.0.0.0/16 (where automatic global pools start)."""
    taken = list(host_routes()) + list(avoid) + [ipaddress.IPv4Network("10.0.0.0/16")]
    found: list[ipaddress.IPv4Network] = []
    span = within.num_addresses // (2 ** (32 - prefixlen))
    for _ in range(2000):
        start = within.network_address + random.randrange(span) * 2 ** (32 - prefixlen)
        cand = ipaddress.IPv4Network(f"{start}/{prefixlen}")
        if not any(cand.overlaps(t) for t in taken + found):
            found.append(cand)
            if len(found) == count:
                return found
    raise RuntimeError(f"no {count} free /{prefixlen} subnets in {within}")


@dataclass
class ClusterHost:
    """One "host": a network namespace with ``eth0`` = ``ip``/24 on the switch."""

    index: int  # 0-based
    ns: Sandbox
    ip: str
    ifname: str = "eth0"

    @property
    def path(self) -> Path:
        return self.ns.path


class HostNamespaces:
    """A switch namespace with a bridge and ``count`` host namespaces plugged into it."""

    def __init__(
        self, count: int = 2, root: str | os.PathLike[str] | None = None, *, default_route: bool = True, mtu: int = 1500
    ) -> None:
        if count < 1 or count >= SWITCH_HOST:
            raise ValueError(f"HostNamespaces: count must be 1..{SWITCH_HOST - 1}, not {count}")
        self.count = count
        self.default_route = default_route  # hosts route everything else to the switch (a dead end)
        self.mtu = mtu
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="pyd-cluster-")) if root is None else Path(root)
        self.tag = secrets.token_hex(3)
        self.subnet = free_subnets(1)[0]
        self.switch_ip = str(self.subnet.network_address + SWITCH_HOST)
        self.switch: Sandbox | None = None
        self.hosts: list[ClusterHost] = []

    # -- life cycle ----------------------------------------------------------------------------

    def create(self) -> "HostNamespaces":
        try:
            nsdir = self.root / f"netns-{self.tag}"
            self.switch = Sandbox.create(nsdir / "switch")
            sw = self.switch
            sw.run("ip", "link", "set", "lo", "up")
            sw.run("ip", "link", "add", "br0", "mtu", str(self.mtu), "type", "bridge")
            sw.run("ip", "addr", "add", f"{self.switch_ip}/{self.subnet.prefixlen}", "dev", "br0")
            sw.run("ip", "link", "set", "br0", "up")
            for i in range(self.count):
                ns = Sandbox.create(nsdir / f"host{i}")
                ip = str(self.subnet.network_address + i + 1)
                # made in the switch, one end moved straight into the host: no name ever appears
                # in the machine's own namespace
                sw.run("ip", "link", "add", f"h{i}", "mtu", str(self.mtu), "type", "veth",
                       "peer", "name", "eth0", "netns", str(ns.path))
                sw.run("ip", "link", "set", f"h{i}", "master", "br0")
                sw.run("ip", "link", "set", f"h{i}", "up")
                ns.run("ip", "link", "set", "lo", "up")
                ns.run("ip", "addr", "add", f"{ip}/{self.subnet.prefixlen}", "dev", "eth0")
                ns.run("ip", "link", "set", "eth0", "mtu", str(self.mtu), "up")
                if self.default_route:
                    ns.run("ip", "route", "add", "default", "via", self.switch_ip)
                self.hosts.append(ClusterHost(i, ns, ip))
            return self
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Kill what runs in the namespaces (started through ``ns.start``) and remove them.
        Links and addresses go with their namespaces."""
        for h in self.hosts:
            h.ns.close()
        self.hosts = []
        if self.switch is not None:
            self.switch.close()
            self.switch = None
        shutil.rmtree(self.root / f"netns-{self.tag}", ignore_errors=True)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "HostNamespaces":
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers -------------------------------------------------------------------------------

    def __getitem__(self, i: int) -> ClusterHost:
        return self.hosts[i]

    def switch_call(self, fn: Any) -> Any:
        """``fn()`` in a thread inside the switch namespace (sockets it opens live there)."""
        assert self.switch is not None
        return netns_call(str(self.switch.path), fn)


def _http_in_ns(ns_path: Path, host: str, port: int, method: str, path: str, body: Any, timeout: float) -> Any:
    """One JSON HTTP request from inside the namespace at ``ns_path``."""
    import socket

    sock = netns_call(str(ns_path), lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock
        conn.request(method, path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} http://{host}:{port}{path}: {resp.status} {data[:300]!r}")
        return json.loads(data)
    finally:
        sock.close()


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _prefix_end(prefix: str) -> bytes:
    """etcd's range_end for "every key starting with prefix"."""
    b = bytearray(prefix.encode())
    b[-1] += 1
    return bytes(b)


class Cluster:
    """etcd in the switch namespace plus one ``pyd daemon`` in each host namespace."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        hosts: int = 2,
        *,
        ttl: int = 6,
        heartbeat: int = 2,
        config: Mapping[str, Any] | None = None,
        storage_driver: str | None = None,
        etcd: bool = True,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.net = HostNamespaces(hosts, self.root)
        self.ttl, self.heartbeat = ttl, heartbeat
        self.extra_config = dict(config or {})
        self.storage_driver = storage_driver if storage_driver is not None else (os.environ.get("PYD_TEST_STORAGE_DRIVER") or "overlay2")
        self.use_etcd = etcd
        self.etcd: Any = None  # pyd.testing.etcd.EtcdProcess
        self.daemons: list[DaemonProcess] = []

    # -- addresses -----------------------------------------------------------------------------

    @property
    def etcd_url(self) -> str:
        return f"http://{self.net.switch_ip}:{ETCD_CLIENT_PORT}"

    @property
    def cluster_store(self) -> str:
        return f"etcd://{self.net.switch_ip}:{ETCD_CLIENT_PORT}" if self.use_etcd else ""

    def host_ip(self, i: int) -> str:
        return self.net.hosts[i].ip

    def free_subnet(self) -> ipaddress.IPv4Network:
        """A /24 for a network of the test: off the machine's routes and the cluster's link."""
        return free_subnets(1, avoid=[self.net.subnet])[0]

    # -- life cycle ----------------------------------------------------------------------------

    def daemon_config(self, i: int) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            # nothing listens on the switch's port 53: lookups of outside names fail at once
            # and no query leaves the test's namespaces
            "dns": [self.net.switch_ip],
        }
        if self.use_etcd:
            cfg.update({
                "cluster-store": self.cluster_store,
                "cluster-advertise": self.host_ip(i),
                "cluster-store-opts": {"discovery.ttl": str(self.ttl), "discovery.heartbeat": str(self.heartbeat)},
            })
        cfg.update(self.extra_config)
        return cfg

    def start(self) -> "Cluster":
        try:
            self.net.create()
            if self.use_etcd:
                from pyd.testing.etcd import EtcdProcess  # imported late: only clusters with etcd need it

                ip = self.net.switch_ip
                assert self.net.switch is not None
                self.etcd = EtcdProcess(self.root / "etcd", f"http://{ip}:{ETCD_CLIENT_PORT}",
                                        f"http://{ip}:{ETCD_PEER_PORT}", netns=str(self.net.switch.path))
                self.etcd.start()
            for h in self.net.hosts:
                d = DaemonProcess(self.root / f"host{h.index}", config=self.daemon_config(h.index),
                                  storage_driver=self.storage_driver, netns=h.path, timeout=60)
                self.daemons.append(d)
                d.start()
            return self
        except BaseException:
            self.close()
            raise

    def restart_daemon(self, i: int) -> DaemonProcess:
        """Start host ``i``'s daemon again (after ``stop`` or a kill) over the same roots."""
        d = self.daemons[i]
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
        d.start()
        return d

    def close(self) -> None:
        """Remove everything, best effort, in an order that lets each step succeed."""
        for i, d in enumerate(self.daemons):
            if d.proc is not None and d.proc.poll() is None:
                try:
                    ids = self.pyd(i, "ps", "-aq", timeout=30).stdout.split()
                    if ids:
                        self.pyd(i, "rm", "-f", *ids, timeout=120)
                except Exception:
                    pass
        for i, d in enumerate(self.daemons):
            if d.proc is not None and d.proc.poll() is None:
                try:
                    nets = self.pyd(i, "network", "ls", "-q", "--filter", "type=custom", timeout=30).stdout.split()
                    if nets:
                        self.pyd(i, "network", "rm", *nets, timeout=60)
                except Exception:
                    pass
        for d in self.daemons:
            try:
                d.cleanup()
            except Exception:
                pass
        # mounts a killed daemon or a failed test left (container rootfs, netns files)
        roots = [str(p) for d in self.daemons for p in (d.exec_root, d.data_root)]
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            mnt = line.split()[4]
            if any(mnt == r or mnt.startswith(r + "/") for r in roots):
                subprocess.run(["umount", "-l", mnt], capture_output=True)
        self.daemons = []
        if self.etcd is not None:
            try:
                self.etcd.kill()
            except Exception:
                pass
            self.etcd = None
        self.net.close()

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the CLI ------------------------------------------------------------------------------

    def pyd(self, i: int, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """``pyd -H <host i's socket> ARGS`` (the CLI runs here; the socket is a file)."""
        env = {k: v for k, v in os.environ.items() if k != "PYD_HOST"}
        return subprocess.run([sys.executable, "-m", "pyd.cli.main", "-H", self.daemons[i].host, *args],
                              capture_output=True, text=True, timeout=timeout, env=env)

    def ok(self, i: int, *args: str, timeout: float = 90) -> str:
        """Like ``pyd`` but the command must succeed; returns its stdout. A failure names the
        command, its output and the tail of host ``i``'s daemon log."""
        res = self.pyd(i, *args, timeout=timeout)
        if res.returncode != 0:
            tail = "\n".join(self.daemons[i].log().splitlines()[-30:])
            raise AssertionError(f"host{i}: pyd {' '.join(args)} -> {res.returncode}\nstdout: {res.stdout}\n"
                                 f"stderr: {res.stderr}\n--- daemon log (tail) ---\n{tail}")
        return res.stdout

    def import_busybox(self) -> None:
        """The busybox test image (``pyd.testing.images``) as ``busybox:latest`` on every host."""
        from pyd.testing.images import busybox_rootfs_tar

        tar = self.root / "busybox.tar"
        if not tar.exists():
            busybox_rootfs_tar(tar)
        for i in range(len(self.daemons)):
            self.ok(i, "import", str(tar), "busybox:latest")

    def inspect(self, i: int, *names: str, kind: str = "") -> list[dict[str, Any]]:
        args = ([kind, "inspect"] if kind else ["inspect"]) + list(names)
        return json.loads(self.ok(i, *args))

    # -- etcd ----------------------------------------------------------------------------------

    def etcd_list(self, prefix: str, timeout: float = 5.0) -> dict[str, dict[str, Any]]:
        """Every key under ``prefix`` in etcd (through its HTTP/JSON gateway, from the switch
        namespace): key -> {"value": bytes, "lease": int}."""
        assert self.net.switch is not None
        doc = _http_in_ns(self.net.switch.path, self.net.switch_ip, ETCD_CLIENT_PORT, "POST", "/v3/kv/range",
                          {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))}, timeout)
        out: dict[str, dict[str, Any]] = {}
        for kv in doc.get("kvs", []):
            key = base64.b64decode(kv["key"]).decode()
            out[key] = {"value": base64.b64decode(kv.get("value", "")), "lease": int(kv.get("lease", 0) or 0)}
        return out

    def etcd_json(self, prefix: str) -> dict[str, Any]:
        """``etcd_list`` with the values decoded as JSON (a value that is not JSON: its text)."""
        out: dict[str, Any] = {}
        for key, kv in self.etcd_list(prefix).items():
            try:
                out[key] = json.loads(kv["value"])
            except ValueError:
                out[key] = kv["value"].decode(errors="replace")
        return out


def wait_for(
    predicate: Any, timeout: float = 30.0, interval: float = 0.5, what: str = "condition", show: Any = None
) -> Any:
    """Call ``predicate()`` until it returns something true; return that, or raise
    ``AssertionError`` naming ``what``, the last exception and ``show()`` (the state worth
    seeing, e.g. the keys still there) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # e.g. a store that is still coming back
            last = exc
        if time.monotonic() >= deadline:
            msg = f"timed out after {timeout}s waiting for {what}" + (f": {last!r}" if last else "")
            if show is not None:
                try:
                    msg += f"\nstate: {show()!r}"
                except Exception as exc:
                    msg += f"\nstate: unavailable ({exc!r})"
            raise AssertionError(msg)
        time.sleep(interval)


def unique_name(tag: str) -> str:
    """``tag-a1b2c3``: a network or container name no other test run uses."""
    return f"{tag}-{os.urandom(3).hex()}"


def retry_sh(cmd: str, tries: int = 15, pause: float = 0.4) -> str:
    """A subshell for containers retrying ``cmd`` (a peer or a server may still be coming up)."""
    return f"(for i in $(seq {tries}); do {cmd} && exit 0; sleep {pause}; done; exit 1)"
