"""Multi-host overlay networks (issue 7, "Done when"): one etcd, three "hosts", each its own
``pyd daemon``, over a test-only link.

The hosts are network namespaces plugged into a "switch" namespace (``pyd.testing.cluster``);
their addresses (a random 10.x.y.0/24 that no route of the machine overlaps) exist only in
those namespaces, and etcd listens on the switch. Each daemon has its own data-root, exec-root
and socket, ``cluster-store: etcd://<switch>:2379``, ``cluster-advertise: <its address>`` and a
6 s lease TTL (heartbeat 2 s), so a dead host's endpoints expire quickly. Containers run the
busybox test image. Everything (containers, networks, daemons, etcd, namespaces, mounts) is
removed at the end, also after a failure.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from pyd.registry import Kind, installed_names
from pyd.testing.cluster import Cluster, retry_sh, unique_name as uname, wait_for

pytestmark = pytest.mark.integration

DRIVER = os.environ.get("PYD_TEST_STORAGE_DRIVER") or "overlay2"
TTL = 6
HEARTBEAT = 2


def _skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not os.path.exists("/usr/bin/etcd") and shutil.which("etcd") is None:
        pytest.skip("etcd is missing: install Debian's etcd-server")
    for kind, name in ((Kind.GRAPHDRIVER, DRIVER), (Kind.EXEC, "native"), (Kind.NETWORK, "bridge"),
                       (Kind.NETWORK, "overlay"), (Kind.KVSTORE, "etcd")):
        if name not in installed_names(kind):
            pytest.skip(f"{kind.value} plugin {name} is not installed")
    try:
        import pyd.testing.etcd  # noqa: F401
    except ImportError:
        pytest.skip("pyd.testing.etcd (EtcdProcess) is not available")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _skip_unless_possible()
    c = Cluster(tmp_path_factory.mktemp("overlay-cluster"), hosts=3, ttl=TTL, heartbeat=HEARTBEAT,
                storage_driver=DRIVER)
    try:
        c.start()
        c.import_busybox()
        yield c
    finally:
        c.close()


def overlay(c: Cluster, host: int, name: str, subnet: ipaddress.IPv4Network | None = None, *opts: str) -> str:
    subnet = subnet or c.free_subnet()
    return c.ok(host, "network", "create", "-d", "overlay", "--subnet", str(subnet), *opts, name).strip()


def endpoint(c: Cluster, host: int, ctr: str, net: str) -> dict[str, Any]:
    return c.inspect(host, ctr)[0]["NetworkSettings"]["Networks"][net]


def overlay_netns(c: Cluster, host: int) -> list[str]:
    """The overlay driver's namespace files of host ``host`` (bind mounts under
    ``<exec-root>/overlay``)."""
    base = str(c.daemons[host].exec_root / "overlay") + "/"
    return sorted(line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if line.split()[4].startswith(base))


def nsrun(path: str | Path, *cmd: str) -> str:
    return subprocess.run(["nsenter", f"--net={path}", *cmd], capture_output=True, text=True, timeout=20).stdout


def vxlan_devices(c: Cluster, host: int) -> dict[str, int]:
    """VXLAN devices of host ``host`` (its own namespace and the overlay namespaces):
    "<where>:<name>" -> VNI."""
    found: dict[str, int] = {}
    for where in [str(c.net.hosts[host].path)] + overlay_netns(c, host):
        for link in json.loads(nsrun(where, "ip", "-d", "-j", "link", "show", "type", "vxlan") or "[]"):
            vni = link.get("linkinfo", {}).get("info_data", {}).get("id")
            found[f"{where}:{link['ifname']}"] = int(vni) if vni is not None else -1
    return found


def host_bridges(c: Cluster, host: int) -> list[str]:
    return sorted(l["ifname"] for l in json.loads(nsrun(c.net.hosts[host].path, "ip", "-j", "link", "show", "type", "bridge") or "[]"))


def keys_naming(c: Cluster, *needles: str) -> list[str]:
    """etcd keys under ``pyd/`` whose key or value contains one of ``needles``."""
    return sorted(k for k, kv in c.etcd_list("pyd/").items()
                  if any(n in k or n.encode() in kv["value"] for n in needles))


@dataclass
class App:
    net: str
    net_id: str
    subnet: ipaddress.IPv4Network
    web: str  # on host 0: answers "pong" on TCP 7000
    web_ip: str


@pytest.fixture(scope="module")
def app(cluster: Cluster) -> Iterator[App]:
    net, web = uname("app"), uname("web")
    subnet = cluster.free_subnet()
    nid = overlay(cluster, 0, net, subnet)
    cluster.ok(0, "run", "-d", "--name", web, "--network", net, "busybox", "nc", "-ll", "-p", "7000", "-e", "echo", "pong")
    ip = endpoint(cluster, 0, web, net)["IPAddress"]
    try:
        yield App(net, nid, subnet, web, ip)
    finally:
        cluster.pyd(0, "rm", "-f", web)
        cluster.pyd(0, "network", "rm", net)


# -- the tests ----------------------------------------------------------------------------------------


def test_network_created_on_one_host_is_listed_on_the_others(cluster: Cluster) -> None:
    net, subnet = uname("shared"), cluster.free_subnet()
    nid = overlay(cluster, 0, net, subnet)
    assert len(nid) == 64
    try:
        for host in (1, 2):
            wait_for(lambda: net in cluster.ok(host, "network", "ls", "--format", "{{.Name}}").split(),
                     timeout=15, what=f"{net} listed on host{host}")
            doc = cluster.inspect(host, net, kind="network")[0]
            assert (doc["Id"], doc["Driver"], doc["Scope"]) == (nid, "overlay", "global")
            assert doc["IPAM"]["Config"][0]["Subnet"] == str(subnet)
        # names are unique cluster-wide
        dup = cluster.pyd(1, "network", "create", "-d", "overlay", net)
        assert dup.returncode != 0 and f"network with name {net} already exists" in dup.stderr, dup.stderr
        # and removing it on another host removes it everywhere
        cluster.ok(2, "network", "rm", net)
        for host in (0, 1):
            wait_for(lambda: net not in cluster.ok(host, "network", "ls", "--format", "{{.Name}}").split(),
                     timeout=15, what=f"{net} gone from host{host}")
    finally:
        cluster.pyd(0, "network", "rm", net)


def test_encrypted_overlay_is_refused_clearly(cluster: Cluster) -> None:
    res = cluster.pyd(0, "network", "create", "-d", "overlay", "-o", "encrypted", uname("enc"))
    assert res.returncode != 0 and "encrypted" in res.stderr and "not supported" in res.stderr, res.stderr


def test_containers_on_two_hosts_reach_each_other_by_ip_and_name(cluster: Cluster, app: App) -> None:
    assert ipaddress.IPv4Address(app.web_ip) in app.subnet
    client = uname("client")
    out = cluster.ok(1, "run", "--rm", "--name", client, "--network", app.net, "busybox", "sh", "-c",
                     f"{retry_sh(f'ping -c1 -W1 {app.web_ip} >/dev/null')} && ping -c1 -W2 {app.web_ip} && "
                     f"ping -c1 -W2 {app.web} && {retry_sh(f'nc {app.web} 7000 </dev/null | grep pong')} && "
                     f"nc {app.web_ip} 7000 </dev/null")
    assert out.count("1 packets received") == 2 and "pong" in out, out


def interface_mtus(c: Cluster, host: int, net: str) -> dict[str, int]:
    """A new container's view: IPv4 address -> MTU of the interface holding it."""
    out = c.ok(host, "run", "--rm", "--network", net, "busybox", "sh", "-c",
               "for i in /sys/class/net/eth*; do n=${i##*/}; "
               "echo $(cat $i/mtu) $(ip -o -4 addr show dev $n | awk '{print $4}'); done")
    return {line.split()[1].split("/")[0]: int(line.split()[0]) for line in out.splitlines() if len(line.split()) == 2}


def test_mtu_leaves_room_for_the_vxlan_header(cluster: Cluster, app: App) -> None:
    mtus = interface_mtus(cluster, 2, app.net)
    on_overlay = [mtu for ip, mtu in mtus.items() if ipaddress.IPv4Address(ip) in app.subnet]
    assert on_overlay == [1500 - 50], mtus  # the hosts' link has MTU 1500
    # a full-size packet crosses (no fragmentation needed on the underlay)
    out = cluster.ok(2, "run", "--rm", "--network", app.net, "busybox", "sh", "-c",
                     retry_sh(f"ping -c1 -W1 -s {1450 - 28} {app.web_ip} >/dev/null") + f"; ping -c1 -W2 -s {1450 - 28} {app.web_ip}")
    assert "1 packets received" in out


def test_a_second_overlay_network_is_isolated(cluster: Cluster, app: App) -> None:
    other = uname("other")
    overlay(cluster, 1, other)
    try:
        for host in (0, 1):  # on the web's own host and on another one
            res = cluster.pyd(host, "run", "--rm", "--network", other, "busybox", "sh", "-c",
                              f"nslookup {app.web} 127.0.0.11 >/dev/null 2>&1 && echo RESOLVED; "
                              f"ping -c2 -W1 {app.web_ip} >/dev/null && echo REACHED; "
                              f"nc -w 2 {app.web_ip} 7000 </dev/null | grep -q pong && echo TCP; true")
            assert res.returncode == 0, res.stderr
            assert not {"RESOLVED", "REACHED", "TCP"} & set(res.stdout.split()), (host, res.stdout)
        # the checks above would have seen a reachable peer: the same commands on the app
        # network succeed
        out = cluster.ok(1, "run", "--rm", "--network", app.net, "busybox", "sh", "-c",
                         retry_sh(f"nc -w 2 {app.web_ip} 7000 </dev/null | grep -q pong") + " && echo TCP")
        assert "TCP" in out
    finally:
        cluster.pyd(1, "network", "rm", other)


def test_simultaneous_runs_on_two_hosts_never_share_an_address(cluster: Cluster) -> None:
    net = uname("race")
    subnet = ipaddress.IPv4Network(f"{cluster.free_subnet().network_address}/27")  # 29 addresses to share
    overlay(cluster, 0, net, subnet)
    names = [(host, uname(f"r{host}")) for host in (0, 1) for _ in range(5)]
    try:
        wait_for(lambda: net in cluster.ok(1, "network", "ls", "--format", "{{.Name}}").split(), timeout=15,
                 what=f"{net} on host1")
        with ThreadPoolExecutor(len(names)) as pool:
            results = list(pool.map(lambda hn: cluster.pyd(hn[0], "run", "-d", "--name", hn[1], "--network", net,
                                                           "busybox", "sleep", "300"), names))
        for (host, name), res in zip(names, results):
            assert res.returncode == 0, (host, name, res.stderr)
        ips = [endpoint(cluster, host, name, net)["IPAddress"] for host, name in names]
        assert len(set(ips)) == len(ips), sorted(ips)
        assert all(ipaddress.IPv4Address(ip) in subnet for ip in ips)
        # the cluster agrees: every endpoint is published once, with the address its host gave
        published = sorted(v["ip"].split("/")[0] for v in cluster.etcd_json("pyd/endpoints/").values()
                           if isinstance(v, dict) and v.get("container_id") and v["ip"].split("/")[0] in ips)
        assert published == sorted(ips)
    finally:
        for host in (0, 1):
            mine = [n for h, n in names if h == host]
            cluster.pyd(host, "rm", "-f", *mine)
        cluster.pyd(0, "network", "rm", net)


def test_etcd_outage_keeps_containers_running_and_recovers(cluster: Cluster, app: App) -> None:
    peer = uname("peer")
    cluster.ok(1, "run", "-d", "--name", peer, "--network", app.net, "busybox", "sleep", "600")
    late, later = uname("late"), uname("later")
    etcd_down = False
    try:
        cluster.ok(1, "exec", peer, "sh", "-c", retry_sh(f"ping -c1 -W1 {app.web_ip} >/dev/null"))
        cluster.etcd.stop()
        etcd_down = True
        t0 = time.monotonic()
        res = cluster.pyd(0, "network", "create", "-d", "overlay", "--subnet", str(cluster.free_subnet()), late)
        took = time.monotonic() - t0
        assert res.returncode != 0, res.stdout
        assert f"{cluster.net.switch_ip}:2379" in res.stderr and "unreachable" in res.stderr, res.stderr
        assert took < 30, f"network create took {took:.1f}s to fail"
        # the data plane does not need the store: both containers keep running and talking
        assert cluster.inspect(0, app.web)[0]["State"]["Running"]
        assert cluster.inspect(1, peer)[0]["State"]["Running"]
        out = cluster.ok(1, "exec", peer, "sh", "-c", f"ping -c1 -W2 {app.web_ip} && nc {app.web} 7000 </dev/null")
        assert "1 packets received" in out and "pong" in out

        cluster.etcd.start()
        etcd_down = False
        subnet = cluster.free_subnet()
        wait_for(lambda: cluster.pyd(0, "network", "create", "-d", "overlay", "--subnet", str(subnet), later).returncode == 0
                 or later in cluster.ok(0, "network", "ls", "--format", "{{.Name}}").split(),
                 timeout=45, interval=1, what="network create to work again after etcd came back")
        assert later in cluster.ok(2, "network", "ls", "--format", "{{.Name}}").split() or wait_for(
            lambda: later in cluster.ok(2, "network", "ls", "--format", "{{.Name}}").split(), timeout=15, what=f"{later} on host2")
        # a new container on a third host finds the web by name and reaches it
        out = cluster.ok(2, "run", "--rm", "--network", app.net, "busybox", "sh", "-c",
                         retry_sh(f"nc {app.web} 7000 </dev/null | grep pong") + f" && ping -c1 -W2 {app.web_ip}")
        assert "pong" in out and "1 packets received" in out
        out = cluster.ok(1, "exec", peer, "sh", "-c", f"nc {app.web_ip} 7000 </dev/null")
        assert "pong" in out
    finally:
        if etcd_down:  # the next tests need the store
            cluster.etcd.start()
        cluster.pyd(1, "rm", "-f", peer)
        cluster.pyd(0, "network", "rm", later)
        cluster.pyd(0, "network", "rm", late)


def test_a_container_removed_during_an_outage_is_withdrawn_when_etcd_returns(cluster: Cluster, app: App) -> None:
    gone = uname("gone")
    cluster.ok(1, "run", "-d", "--name", gone, "--network", app.net, "busybox", "sleep", "600")
    ep = endpoint(cluster, 1, gone, app.net)
    ep_id, ip = ep["EndpointID"], ep["IPAddress"]
    wait_for(lambda: keys_naming(cluster, ep_id), timeout=10, what="the endpoint's keys")
    etcd_down = False
    try:
        cluster.etcd.stop()
        etcd_down = True
        cluster.ok(1, "rm", "-f", gone)  # local removal works without the store
        cluster.etcd.start()
        etcd_down = False

        def allocated() -> list[str]:
            pools = cluster.etcd_json("pyd/ipam/default/GlobalDefault")["pyd/ipam/default/GlobalDefault"]["pools"]
            return [a for p in pools.values() if p["subnet"] == str(app.subnet) for a in p["allocated"]]

        # the daemon catches up: no key of the endpoint, its address free again, and no other
        # host resolves the name any more
        wait_for(lambda: not keys_naming(cluster, ep_id), timeout=30, what=f"the keys of endpoint {ep_id[:12]} to go",
                 show=lambda: keys_naming(cluster, ep_id))
        wait_for(lambda: ip not in allocated(), timeout=10, what=f"address {ip} to be released", show=allocated)
        res = cluster.pyd(0, "run", "--rm", "--network", app.net, "busybox", "sh", "-c",
                          f"nslookup {gone} 127.0.0.11 >/dev/null 2>&1 && echo RESOLVED; true")
        assert "RESOLVED" not in res.stdout
    finally:
        if etcd_down:
            cluster.etcd.start()
        cluster.pyd(1, "rm", "-f", gone)


def test_network_rm_cleans_every_host_and_the_store(cluster: Cluster) -> None:
    net = uname("gone")
    before = {h: (set(overlay_netns(cluster, h)), set(vxlan_devices(cluster, h)), host_bridges(cluster, h)) for h in range(3)}
    nid = overlay(cluster, 0, net)
    ctrs = [(h, uname(f"g{h}")) for h in range(3)]
    try:
        for h, name in ctrs:  # every host makes its kernel objects for the network
            cluster.ok(h, "run", "-d", "--name", name, "--network", net, "busybox", "sleep", "300")
        vni = cluster.etcd_json(f"pyd/overlay/networks/{nid}")[f"pyd/overlay/networks/{nid}"]["vni"]
        for h in range(3):
            made = set(vxlan_devices(cluster, h).items()) - {(k, v) for k, v in vxlan_devices(cluster, h).items() if k in before[h][1]}
            assert any(v == vni for _, v in made), (h, vxlan_devices(cluster, h))
            assert set(overlay_netns(cluster, h)) - before[h][0], f"host{h}: no overlay namespace for {net}"
        assert keys_naming(cluster, nid), "the network left no trace in etcd to check"
        for h, name in ctrs:
            cluster.ok(h, "rm", "-f", name)
        cluster.ok(0, "network", "rm", net)
        for h in range(3):
            wait_for(lambda: not any(v == vni for v in vxlan_devices(cluster, h).values()), timeout=20,
                     what=f"host{h}: VXLAN devices with VNI {vni} removed", show=lambda: vxlan_devices(cluster, h))
            wait_for(lambda: set(overlay_netns(cluster, h)) == before[h][0], timeout=20,
                     what=f"host{h}: the overlay namespace of {net} removed", show=lambda: overlay_netns(cluster, h))
            assert host_bridges(cluster, h) == before[h][2]
            assert net not in cluster.ok(h, "network", "ls", "--format", "{{.Name}}").split()
        leftover = lambda: keys_naming(cluster, nid, f"network-names/{net}", f"overlay/vni/{vni}")  # noqa: E731
        wait_for(lambda: not leftover(), timeout=10, what=f"etcd keys of {net} removed", show=leftover)
    finally:
        for h, name in ctrs:
            cluster.pyd(h, "rm", "-f", name)
        cluster.pyd(0, "network", "rm", net)


def test_zz_a_killed_host_has_its_endpoints_expire(cluster: Cluster, app: App) -> None:
    """Runs last of the cluster tests: host2's daemon dies (SIGKILL); its leases lapse."""
    doomed = uname("doomed")
    cluster.ok(2, "run", "-d", "--name", doomed, "--network", app.net, "busybox", "sleep", "600")
    ep_id = endpoint(cluster, 2, doomed, app.net)["EndpointID"]
    vtep = cluster.host_ip(2)
    peers, endpoints = f"pyd/overlay/peers/{app.net_id}/", f"pyd/endpoints/{app.net_id}/"
    wait_for(lambda: ep_id in {k.rsplit("/", 1)[-1] for k in cluster.etcd_list(peers)}, timeout=10, what="peer key")
    assert any(v.get("vtep") == vtep for v in cluster.etcd_json(peers).values())
    assert cluster.etcd_list(endpoints + ep_id)[endpoints + ep_id]["lease"] != 0

    def host2_keys() -> list[str]:
        return [k for k, v in cluster.etcd_json(peers).items() if ep_id in k or v.get("vtep") == vtep] + \
               [k for k in cluster.etcd_list(endpoints) if ep_id in k]

    def host0_knows_vtep() -> bool:  # FDB entries on host0's VXLAN device point at host2
        return any(vtep in nsrun(ns, "bridge", "fdb", "show") for ns in overlay_netns(cluster, 0))

    wait_for(host0_knows_vtep, timeout=10, what="host0 to learn host2's VTEP")
    d = cluster.daemons[2]
    d.signal(9)
    assert d.proc is not None and d.proc.wait(10) == -9
    t0 = time.monotonic()
    wait_for(lambda: not host2_keys(), timeout=TTL * 3 + 10, interval=0.5, what="host2's keys to expire", show=host2_keys)
    took = time.monotonic() - t0
    assert took <= TTL + HEARTBEAT + 10, f"expiry took {took:.1f}s"
    # host0 forgets host2's VTEP too
    wait_for(lambda: not host0_knows_vtep(), timeout=15, what="host0 to drop host2's FDB entries")
    # name resolution on the other hosts forgets the dead container
    res = cluster.pyd(1, "run", "--rm", "--network", app.net, "busybox", "sh", "-c",
                      f"nslookup {doomed} 127.0.0.11 >/dev/null 2>&1 && echo RESOLVED; true")
    assert "RESOLVED" not in res.stdout
    # the host comes back: its daemon starts over the same roots and cleans up
    cluster.restart_daemon(2)
    cluster.ok(2, "rm", "-f", doomed)
