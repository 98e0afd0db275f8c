"""Networks end to end over a real daemon (issue 5, "Done when"): the ``pyd`` CLI and the
docker SDK, real bridges, veths, nftables, network namespaces and the embedded DNS.

Each daemon gets its own bridge name (``pt<4 hex>0``, so its kernel objects are named
``pt<4 hex>...``) and address pools from 10.199.0.0/16, which no host route overlaps; DNS goes
only to a tiny resolver this module runs on a loopback address. Traffic stays inside the
test's networks and loopback. The last test removes everything and checks that no veth,
bridge, nftables table, netns or IPAM allocation of the daemon is left; a finalizer removes
whatever a failure left behind.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from pyd.registry import Kind, installed_names
from pyd.testing.daemon import DaemonProcess
from pyd.testing.images import busybox_rootfs_tar
from pyd.testing.network import host_links, host_routes, nft_tables

pytestmark = pytest.mark.integration

DRIVER = os.environ.get("PYD_TEST_STORAGE_DRIVER") or "overlay2"
SUPERNET = ipaddress.IPv4Network("10.199.0.0/16")
OUTSIDE_NAME = "outside.pyd-test"
OUTSIDE_ADDR = "10.199.255.254"


# -- helpers ----------------------------------------------------------------------------------------


def pyd(host: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYD_HOST"}
    return subprocess.run([sys.executable, "-m", "pyd.cli.main", "-H", host, *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.args, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def free_pool() -> ipaddress.IPv4Network:
    """A /20 of 10.199.0.0/16 that no host route overlaps (default-address-pools base)."""
    taken = host_routes()
    cands = list(SUPERNET.subnets(new_prefix=20))[:-1]  # the last one holds OUTSIDE_ADDR
    random.shuffle(cands)
    for cand in cands:
        if not any(cand.overlaps(t) for t in taken):
            return cand
    raise RuntimeError("no free /20 in 10.199.0.0/16")


class Upstream:
    """A tiny DNS server on a random loopback address: OUTSIDE_NAME -> OUTSIDE_ADDR, else
    NXDOMAIN. It stands for "the host's resolvers" so no query leaves the machine."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(20):
            self.addr = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.{random.randint(1, 250)}"
            try:
                self.sock.bind((self.addr, 53))
                break
            except OSError:
                continue
        self.sock.settimeout(0.5)
        self.queries: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        from pyd.engine import network_dns as dns

        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            try:
                q = dns.parse_query(data)
            except dns.DNSFormatError:
                continue
            self.queries.append(q.question.name)
            if q.question.name == OUTSIDE_NAME and q.question.qtype == dns.TYPE_A:
                reply = dns.build_reply(data, q, 0, [(dns.TYPE_A, ipaddress.IPv4Address(OUTSIDE_ADDR).packed)])
            elif q.question.name == OUTSIDE_NAME:
                reply = dns.build_reply(data, q, 0)  # the name exists, with no such record
            else:
                reply = dns.build_reply(data, q, dns.RCODE_NXDOMAIN)
            self.sock.sendto(reply, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class Env:
    """One daemon with its own bridge/prefix, pools and upstream resolver."""

    def __init__(self, root: Path, upstream: Upstream, **config: Any) -> None:
        self.prefix = "pt" + secrets.token_hex(2)
        self.pool = free_pool()
        cfg = {
            "bridge": f"{self.prefix}0",
            "default-address-pools": [{"base": str(self.pool), "size": 24}],
            "dns": [upstream.addr],
        }
        cfg.update(config)
        self.d = DaemonProcess(root, config=cfg, storage_driver=DRIVER)
        self.subnets = iter(self.pool.subnets(new_prefix=24))
        next(self.subnets)  # the first few /24s go to automatic choices
        next(self.subnets)
        next(self.subnets)

    @property
    def host(self) -> str:
        return self.d.host

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return pyd(self.d.host, *args, timeout=timeout)

    def subnet(self) -> ipaddress.IPv4Network:
        return next(self.subnets)

    def ipam_state(self) -> dict[str, Any]:
        path = self.d.data_root / "ipam" / "default" / "state.json"
        return json.loads(path.read_text())["pools"] if path.exists() else {}

    def leftovers(self) -> dict[str, list[str]]:
        netns_dir = self.d.exec_root / "netns"
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if str(self.d.exec_root) in line or str(self.d.data_root) in line]
        return {
            "links": host_links(self.prefix),
            "nft": nft_tables(self.prefix),
            "netns": sorted(os.listdir(netns_dir)) if netns_dir.exists() else [],
            "mounts": mounts,
        }

    def force_cleanup(self) -> None:
        """Last resort after a failure: nothing of this daemon may stay on the host."""
        try:
            if self.d.proc is not None and self.d.proc.poll() is None:
                out = self.run("ps", "-aq")
                ids = out.stdout.split()
                if ids:
                    self.run("rm", "-f", *ids)
        except Exception:
            pass
        self.d.cleanup()
        for name in host_links(self.prefix):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
        for table in nft_tables(self.prefix):
            subprocess.run(["nft", "delete", "table", *table.split()], capture_output=True)
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if str(self.d.exec_root) in line or str(self.d.data_root) in line:
                subprocess.run(["umount", "-l", line.split()[4]], capture_output=True)


def _skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for kind, name in ((Kind.GRAPHDRIVER, DRIVER), (Kind.EXEC, "native"), (Kind.NETWORK, "bridge")):
        if name not in installed_names(kind):
            pytest.skip(f"{kind.value} driver {name} is not installed")


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    try:
        yield up
    finally:
        up.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Env]:
    _skip_unless_possible()
    root = tmp_path_factory.mktemp("networks")
    e = Env(root / "daemon", upstream)
    try:
        e.d.start()
        tar = busybox_rootfs_tar(root / "busybox.tar")
        ok(e.run("import", str(tar), "busybox:latest"))
        yield e
    finally:
        e.force_cleanup()


def name(tag: str) -> str:
    return f"{tag}-{secrets.token_hex(3)}"


def retry_sh(cmd: str, tries: int = 10) -> str:
    """A shell loop for containers: retry ``cmd`` (a server may still be starting)."""
    return f"for i in $(seq {tries}); do {cmd} && exit 0; sleep 0.3; done; exit 1"


# -- networks ----------------------------------------------------------------------------------------


def test_network_create_ls_inspect_rm(env: Env) -> None:
    net, subnet = name("net"), env.subnet()
    gw = str(subnet.network_address + 254)
    nid = ok(env.run("network", "create", "--subnet", str(subnet), "--gateway", gw, "--label", "t=1",
                     "-o", "com.docker.network.driver.mtu=1400", net)).strip()
    assert len(nid) == 64
    ls = ok(env.run("network", "ls"))
    assert ls.splitlines()[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    assert any(line.split()[:3] == [nid[:12], net, "bridge"] for line in ls.splitlines())
    assert {"bridge", "host", "none"} <= set(ok(env.run("network", "ls", "--format", "{{.Name}}")).split())
    assert ok(env.run("network", "ls", "-q", "--filter", "label=t=1")).split() == [nid[:12]]
    doc = json.loads(ok(env.run("network", "inspect", net)))[0]
    assert doc["Id"] == nid and doc["Driver"] == "bridge" and doc["Labels"] == {"t": "1"}
    assert doc["IPAM"]["Config"] == [{"Subnet": str(subnet), "Gateway": gw}]
    bridge = f"{env.prefix}-{nid[:15 - len(env.prefix) - 1]}"
    assert Path(f"/sys/class/net/{bridge}/mtu").read_text().strip() == "1400"
    dup = env.run("network", "create", net)
    assert dup.returncode == 1 and f"network with name {net} already exists" in dup.stderr
    bad = env.run("network", "create", "-o", "no.such.option=1", name("bad"))
    assert bad.returncode == 1 and "valid keys" in bad.stderr
    assert ok(env.run("network", "rm", net)).strip() == net
    assert not Path(f"/sys/class/net/{bridge}").exists()
    missing = env.run("network", "inspect", net)
    assert missing.returncode == 1 and f"No such network: {net}" in missing.stderr


def test_rm_of_a_network_in_use_is_refused(env: Env) -> None:
    net, ctr = name("busy"), name("c")
    nid = ok(env.run("network", "create", net)).strip()
    ok(env.run("run", "-d", "--name", ctr, "--network", net, "busybox", "sleep", "300"))
    try:
        status, _, body = env.d.request("DELETE", f"/networks/{net}")
        assert status == 403
        assert json.loads(body)["message"] == f"error while removing network: network {net} id {nid} has active endpoints"
    finally:
        ok(env.run("rm", "-f", ctr))
    ok(env.run("network", "rm", net))


def test_containers_reach_each_other_by_name_but_not_across_bridges(env: Env) -> None:
    net, other = name("app"), name("other")
    web, client, outsider = name("web"), name("client"), name("outsider")
    ok(env.run("network", "create", net))
    ok(env.run("network", "create", other))
    try:
        ok(env.run("run", "-d", "--name", web, "--network", net, "--network-alias", "www", "busybox",
                   "nc", "-ll", "-p", "7000", "-e", "echo", "pong"))
        out = ok(env.run("run", "--rm", "--name", client, "--network", net, "busybox", "sh", "-c",
                         f"ping -c1 -W2 {web} && ping -c1 -W2 www && " + retry_sh(f"nc {web} 7000 </dev/null | grep pong")))
        assert "1 packets received" in out and "pong" in out
        web_ip = json.loads(ok(env.run("inspect", web)))[0]["NetworkSettings"]["Networks"][net]["IPAddress"]
        assert ipaddress.IPv4Address(web_ip)
        # another bridge: no name, and no packets to its address either
        res = env.run("run", "--rm", "--name", outsider, "--network", other, "busybox", "sh", "-c",
                      f"nslookup {web} 127.0.0.11 >/dev/null 2>&1 && echo RESOLVED; ping -c1 -W1 {web_ip} && echo REACHED; "
                      f"nc -w 2 {web_ip} 7000 </dev/null | grep -q pong && echo TCP; true")
        assert res.returncode == 0, res.stderr
        assert "RESOLVED" not in res.stdout and "REACHED" not in res.stdout and "TCP" not in res.stdout
    finally:
        env.run("rm", "-f", web)
        env.run("network", "rm", net, other)


def test_embedded_dns_forwards_other_names_to_the_upstream(env: Env, upstream: Upstream) -> None:
    net = name("dnsnet")
    ok(env.run("network", "create", net))
    try:
        out = ok(env.run("run", "--rm", "--network", net, "busybox", "sh", "-c",
                         f"cat /etc/resolv.conf; nslookup {OUTSIDE_NAME}"))
        assert "nameserver 127.0.0.11" in out and OUTSIDE_ADDR in out
        assert OUTSIDE_NAME in upstream.queries
    finally:
        env.run("network", "rm", net)


def test_network_none_has_only_lo(env: Env) -> None:
    out = ok(env.run("run", "--rm", "--network", "none", "busybox", "ls", "/sys/class/net"))
    assert out.split() == ["lo"]


def test_network_host_sees_the_hosts_interfaces(env: Env) -> None:
    out = ok(env.run("run", "--rm", "--network", "host", "busybox", "ls", "/sys/class/net"))
    host_default = next(iter(os.listdir("/sys/class/net")))
    assert set(out.split()) >= {"lo", host_default}
    assert set(out.split()) >= {n for n in ("eth0",) if os.path.exists(f"/sys/class/net/{n}")}


def test_default_bridge_gives_eth0_a_route_and_links(env: Env, upstream: Upstream) -> None:
    out = ok(env.run("run", "--rm", "busybox", "sh", "-c", "ls /sys/class/net; ip route; cat /etc/resolv.conf"))
    assert out.split()[:2] == ["eth0", "lo"] and "default via" in out
    assert f"nameserver {upstream.addr}" in out and "127.0.0.11" not in out  # no embedded DNS here
    bridge = json.loads(ok(env.run("network", "inspect", "bridge")))[0]
    assert ipaddress.IPv4Network(bridge["IPAM"]["Config"][0]["Subnet"]).subnet_of(env.pool)
    target = name("linked")
    ok(env.run("run", "-d", "--name", target, "busybox", "sleep", "300"))
    try:
        out = ok(env.run("run", "--rm", "--link", f"{target}:db", "busybox", "sh", "-c", "cat /etc/hosts; ping -c1 -W2 db"))
        ip = json.loads(ok(env.run("inspect", target)))[0]["NetworkSettings"]["IPAddress"]
        assert f"{ip}\tdb {target}" in out and "1 packets received" in out
    finally:
        env.run("rm", "-f", target)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_published_port_on_loopback_answers_from_the_host(env: Env) -> None:
    web, port = name("httpd"), _free_port()
    ok(env.run("run", "-d", "--name", web, "-p", f"127.0.0.1:{port}:80", "busybox", "sh", "-c",
               "mkdir -p /www && echo hello-from-pyd > /www/index.html && httpd -f -p 80 -h /www"))
    try:
        body = ""
        for _ in range(30):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert body.strip() == "hello-from-pyd"
        assert ok(env.run("port", web)).strip() == f"80/tcp -> 127.0.0.1:{port}"
        ports = json.loads(ok(env.run("inspect", web)))[0]["NetworkSettings"]["Ports"]
        assert ports == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    finally:
        ok(env.run("rm", "-f", web))


def test_a_published_port_collision_fails_cleanly(env: Env) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    ctr = name("clash")
    links_before = host_links(env.prefix)
    try:
        res = env.run("run", "-d", "--name", ctr, "-p", f"127.0.0.1:{port}:80", "busybox", "sleep", "300")
        assert res.returncode != 0 and "already in use" in res.stderr, (res.stdout, res.stderr)
        state = json.loads(ok(env.run("inspect", ctr)))[0]["State"]
        assert not state["Running"] and "already in use" in state["Error"]
        # nothing half-made: no veth, no sandbox, no address of it
        assert host_links(env.prefix) == links_before
        cid = json.loads(ok(env.run("inspect", ctr)))[0]["Id"]
        assert not (env.d.exec_root / "netns" / cid).exists()
    finally:
        holder.close()
        env.run("rm", "-f", ctr)


def test_internal_network_has_no_way_out(env: Env) -> None:
    internal, outside = name("internal"), name("outside")
    ok(env.run("network", "create", "--internal", internal))
    out_id = ok(env.run("network", "create", outside)).strip()
    peer = name("peer")
    try:
        ok(env.run("run", "-d", "--name", peer, "--network", outside, "busybox", "sleep", "300"))
        peer_ip = json.loads(ok(env.run("inspect", peer)))[0]["NetworkSettings"]["Networks"][outside]["IPAddress"]
        gw = json.loads(ok(env.run("network", "inspect", out_id)))[0]["IPAM"]["Config"][0]["Gateway"]
        res = env.run("run", "--rm", "--network", internal, "busybox", "sh", "-c",
                      f"ip route; ping -c1 -W1 {peer_ip} && echo REACHED; ping -c1 -W1 {gw} && echo GATEWAY; "
                      f"nslookup {OUTSIDE_NAME} >/dev/null 2>&1 && echo RESOLVED; true")
        assert res.returncode == 0, res.stderr
        assert "default" not in res.stdout
        assert "REACHED" not in res.stdout and "GATEWAY" not in res.stdout and "RESOLVED" not in res.stdout
    finally:
        env.run("rm", "-f", peer)
        env.run("network", "rm", internal, outside)


def test_network_connect_adds_eth1_live(env: Env) -> None:
    first, second = name("first"), name("second")
    ctr, peer = name("multi"), name("peer")
    ok(env.run("network", "create", first))
    ok(env.run("network", "create", second))
    try:
        ok(env.run("run", "-d", "--name", ctr, "--network", first, "busybox", "nc", "-ll", "-p", "7000", "-e", "echo", "pong"))
        ok(env.run("network", "connect", "--alias", "multi-alias", second, ctr))
        links = ok(env.run("exec", ctr, "ls", "/sys/class/net")).split()
        assert links == ["eth0", "eth1", "lo"]
        out = ok(env.run("run", "--rm", "--name", peer, "--network", second, "busybox", "sh", "-c",
                         retry_sh("nc multi-alias 7000 </dev/null | grep pong")))
        assert "pong" in out
        nets = json.loads(ok(env.run("inspect", ctr)))[0]["NetworkSettings"]["Networks"]
        assert set(nets) == {first, second} and "multi-alias" in nets[second]["Aliases"]
        ok(env.run("network", "disconnect", second, ctr))
        assert ok(env.run("exec", ctr, "ls", "/sys/class/net")).split() == ["eth0", "lo"]
        res = env.run("network", "disconnect", second, ctr)
        assert res.returncode == 1 and "is not connected to network" in res.stderr
    finally:
        env.run("rm", "-f", ctr)
        env.run("network", "rm", first, second)


def test_docker_sdk_networks(env: Env) -> None:
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=env.d.base_url)
    net_name, ctr_name = name("sdknet"), name("sdkc")
    net = client.networks.create(net_name, driver="bridge", labels={"sdk": "1"})
    try:
        assert client.networks.get(net.id).name == net_name
        assert [n.name for n in client.networks.list(names=[net_name])] == [net_name]
        assert net_name in [n.name for n in client.networks.list(filters={"label": "sdk=1"})]
        ok(env.run("run", "-d", "--name", ctr_name, "busybox", "sleep", "300"))
        container = client.containers.get(ctr_name)
        net.connect(container, aliases=["sdkpeer"])
        net.reload()
        assert container.id in net.attrs["Containers"]
        container.reload()
        assert "sdkpeer" in container.attrs["NetworkSettings"]["Networks"][net_name]["Aliases"]
        net.disconnect(container)
        container.remove(force=True)
    finally:
        env.run("rm", "-f", ctr_name)
        net.remove()
    with pytest.raises(docker.errors.NotFound):
        client.networks.get(net_name)
    client.close()


def test_restart_keeps_networks_allocations_and_connectivity(tmp_path: Path, upstream: Upstream, env: Env) -> None:
    e = Env(tmp_path / "restart", upstream, **{"live-restore": True})
    net, keep = name("rnet"), name("keep")
    try:
        e.d.start()
        ok(e.run("import", str(busybox_rootfs_tar(tmp_path / "bb.tar")), "busybox:latest"))
        subnet = e.subnet()
        fixed = str(subnet.network_address + 10)
        nid = ok(e.run("network", "create", "--subnet", str(subnet), net)).strip()
        ok(e.run("run", "-d", "--name", keep, "--network", net, "--ip", fixed, "busybox",
                 "nc", "-ll", "-p", "7000", "-e", "echo", "pong"))
        before = e.ipam_state()
        e.d.stop()
        e.d.start()
        doc = json.loads(ok(e.run("network", "inspect", net)))[0]
        assert doc["Id"] == nid
        assert [c["IPv4Address"] for c in doc["Containers"].values()] == [f"{fixed}/{subnet.prefixlen}"]
        assert allocated(e.ipam_state()) == allocated(before)  # nothing released, nothing handed out twice
        out = ok(e.run("run", "--rm", "--network", net, "busybox", "sh", "-c", retry_sh(f"nc {keep} 7000 </dev/null | grep pong")))
        assert "pong" in out  # the running container kept its address, name and connectivity
        clash = e.run("run", "--rm", "--network", net, "--ip", fixed, "busybox", "true")
        assert clash.returncode != 0 and "in use" in clash.stderr
        # a crash (SIGKILL) of the daemon: the container keeps running, the next daemon adopts it
        e.d.signal(9)
        assert e.d.proc is not None and e.d.proc.wait(10) == -9
        e.d.start()
        out = ok(e.run("run", "--rm", "--network", net, "busybox", "sh", "-c", retry_sh(f"nc {keep} 7000 </dev/null | grep pong")))
        assert "pong" in out and allocated(e.ipam_state()) == allocated(before)
        ok(e.run("rm", "-f", keep))
        ok(e.run("network", "rm", net))
        e.d.stop()
        assert e.leftovers() == {"links": [], "nft": [], "netns": [], "mounts": []}
        pools = e.ipam_state()
        assert not any(str(subnet) in p for p in pools)
        assert all(len(p["allocated"]) == 1 for p in pools.values())  # the default bridge's gateway
    finally:
        e.force_cleanup()


def allocated(pools: dict[str, Any]) -> dict[str, list[str]]:
    return {pid: sorted(p["allocated"]) for pid, p in pools.items()}


def test_zz_nothing_is_left_behind(env: Env) -> None:
    """Runs last: remove every container and user network, stop the daemon, look."""
    ids = ok(env.run("ps", "-aq")).split()
    if ids:
        ok(env.run("rm", "-f", *ids))
    users = ok(env.run("network", "ls", "-q", "--filter", "type=custom")).split()
    if users:
        ok(env.run("network", "rm", *users))
    pools = env.ipam_state()
    assert len(pools) == 1 and all(len(p["allocated"]) == 1 for p in pools.values())  # the default bridge
    files = env.d.data_root / "network" / "files"
    assert not list((files / "endpoints").iterdir())
    env.d.stop()
    assert env.leftovers() == {"links": [], "nft": [], "netns": [], "mounts": []}
