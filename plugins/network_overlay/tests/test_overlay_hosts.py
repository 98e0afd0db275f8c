"""Two "hosts" on one machine: the overlay driver across network namespaces.

Each host is a network namespace; a veth pair joins them (10.198.<n>.1 and .2, addresses
only inside those namespaces). One driver instance per host, both on one KV store; every
driver call runs inside its host's namespace (``netns_call``), as a daemon started there with
``nsenter --net`` would make it. Containers are sandboxes (bind-mounted namespaces).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest
from pyroute2 import IPRoute

from pyd.drivers.network import (
    EndpointRequest,
    IPAMData,
    JoinRequest,
    NetworkContext,
    NetworkCreateRequest,
    mac_from_ipv4,
    netns_call,
)
from pyd.registry import Kind, PluginRegistry
from pyd.testing.network import Sandbox, echo_server, wait_for

pytestmark = pytest.mark.integration

T = TypeVar("T")


def _ns_ready() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in ("unshare", "nsenter", "busybox", "ip", "bridge"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")


@dataclass
class Host:
    name: str
    path: Path  # the host's network namespace
    ip: str  # its underlay address (the VTEP)
    link: str  # its underlay interface
    root: Path
    driver: Any = None

    def call(self, fn: Callable[[], T]) -> T:
        return netns_call(str(self.path), fn)

    def run(self, *cmd: str) -> str:
        return subprocess.run(
            ["nsenter", f"--net={self.path}", *cmd], capture_output=True, text=True, check=True, timeout=20
        ).stdout

    def overlay_ns(self, network_id: str) -> Path:
        return self.root / "exec" / "overlay" / network_id

    def fdb(self, network_id: str) -> set[tuple[str, str]]:
        """(MAC, dst) of the FDB entries with a remote VTEP on the network's vxlan0."""
        out = subprocess.run(
            ["nsenter", f"--net={self.overlay_ns(network_id)}", "bridge", "-j", "fdb", "show", "dev", "vxlan0"],
            capture_output=True, text=True, check=True,
        ).stdout
        return {(e["mac"], e["dst"]) for e in json.loads(out or "[]") if e.get("dst")}

    def neigh(self, network_id: str) -> set[tuple[str, str]]:
        out = subprocess.run(
            ["nsenter", f"--net={self.overlay_ns(network_id)}", "ip", "-j", "neigh", "show", "dev", "vxlan0"],
            capture_output=True, text=True, check=True,
        ).stdout
        return {(e["dst"], e["lladdr"]) for e in json.loads(out or "[]") if "PERMANENT" in e.get("state", [])}


@dataclass
class Cluster:
    tmp: Path
    kv: Any
    prefix: str = field(default_factory=lambda: "pyo" + secrets.token_hex(2))
    hosts: list[Host] = field(default_factory=list)
    sandboxes: list[Sandbox] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    def load(self, host: Host, advertise: str) -> Any:
        settings = {
            "exec-root": str(host.root / "exec"),
            "cluster-advertise": advertise,
            "cluster-store-opts": {"discovery.ttl": "3", "discovery.heartbeat": "1"},
        }
        ctx = NetworkContext(settings=settings, kvstore=self.kv, name_prefix=f"{self.prefix}{host.name}")
        home = host.root / "home"
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Built inside the host: the VTEP is resolved in the daemon's namespace.
        return host.call(lambda: PluginRegistry().init_driver(Kind.NETWORK, "overlay", home=home, context=ctx))

    def sandbox(self) -> Sandbox:
        sb = Sandbox.create(self.tmp / "sandboxes" / f"sb{len(self.sandboxes)}")
        self.sandboxes.append(sb)
        return sb

    def network_request(self, subnet: ipaddress.IPv4Network, **opts: str) -> NetworkCreateRequest:
        nid = secrets.token_hex(32)
        self.networks.append(nid)
        return NetworkCreateRequest(
            network_id=nid,
            name=f"ov-{nid[:6]}",
            options=opts,
            ipv4=[IPAMData(pool=str(subnet), gateway=f"{subnet.network_address + 1}/{subnet.prefixlen}")],
        )

    def attach(self, host: Host, req: NetworkCreateRequest, host_no: int, sandbox: Sandbox) -> EndpointRequest:
        subnet = ipaddress.IPv4Network(req.ipv4[0].pool)
        address = f"{subnet.network_address + host_no}/{subnet.prefixlen}"
        ep = EndpointRequest(req.network_id, secrets.token_hex(32), address)
        host.call(lambda: host.driver.create_endpoint(ep))
        host.call(lambda: host.driver.join(JoinRequest(req.network_id, ep.endpoint_id, str(sandbox.path), "eth0")))
        return ep

    def close(self) -> None:
        for host in self.hosts:
            if host.driver is None:
                continue
            for nid in self.networks:
                try:
                    host.call(lambda: host.driver.delete_network(nid))
                except Exception:
                    pass
            host.driver.close()
        for sb in self.sandboxes:
            sb.close()
        for host in self.hosts:
            # Whatever a failing driver left: mounted namespaces, then the host itself.
            ovl = host.root / "exec" / "overlay"
            if ovl.exists():
                for p in ovl.iterdir():
                    subprocess.run(["umount", "-l", str(p)], capture_output=True)
            subprocess.run(["umount", "-l", str(host.path)], capture_output=True)
        with IPRoute() as ipr:
            for link in ipr.get_links():
                if str(link.get("IFLA_IFNAME", "")).startswith(self.prefix):
                    ipr.link("del", index=link["index"])


@pytest.fixture
def cluster(tmp_path: Path, kvstore: Any) -> Iterator[Cluster]:
    _ns_ready()
    c = Cluster(tmp_path, kvstore)
    try:
        third = random.randrange(0, 256)
        a_link, b_link = f"{c.prefix}ua", f"{c.prefix}ub"
        for name in ("a", "b"):
            path = tmp_path / "hosts" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            subprocess.run(["unshare", f"--net={path}", "true"], check=True)
            ip = f"10.198.{third}.{1 if name == 'a' else 2}"
            c.hosts.append(Host(name, path, ip, a_link if name == "a" else b_link, tmp_path / name))
        a, b = c.hosts
        with IPRoute() as ipr:
            ipr.link("add", ifname=a_link, kind="veth", peer=b_link)
            ipr.link("set", index=ipr.link_lookup(ifname=a_link)[0], net_ns_fd=str(a.path))
            ipr.link("set", index=ipr.link_lookup(ifname=b_link)[0], net_ns_fd=str(b.path))
        for host in c.hosts:
            host.run("ip", "addr", "add", f"{host.ip}/24", "dev", host.link)
            host.run("ip", "link", "set", host.link, "up")
            host.run("ip", "link", "set", "lo", "up")
        a.driver = c.load(a, a.link)  # cluster-advertise as an interface name
        b.driver = c.load(b, f"{b.ip}:7946")  # as IP:PORT
        yield c
    finally:
        c.close()
        left = [line.split()[4] for line in open("/proc/self/mountinfo") if str(tmp_path) in line.split()[4]]
        assert left == [], f"mounts left behind: {left}"


def subnet24() -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.197.{random.randrange(256)}.0/24")


def peer_keys(kv: Any, network_id: str) -> list[str]:
    return [p.key for p in kv.list(f"pyd/overlay/peers/{network_id}/")]


def test_containers_on_two_hosts_talk_over_vxlan(cluster: Cluster) -> None:
    a, b = cluster.hosts
    assert (a.driver.vtep, b.driver.vtep) == (a.ip, b.ip)
    req = cluster.network_request(subnet24())
    a.call(lambda: a.driver.create_network(req))
    b.call(lambda: b.driver.create_network(req))  # the second host finds the VNI
    vni = json.loads(cluster.kv.get(f"pyd/overlay/networks/{req.network_id}").value)["vni"]
    assert vni >= 4096
    assert a.driver.networks[req.network_id].vni == b.driver.networks[req.network_id].vni == vni
    for host in (a, b):
        details = json.loads(
            subprocess.run(
                ["nsenter", f"--net={host.overlay_ns(req.network_id)}", "ip", "-d", "-j", "link", "show", "vxlan0"],
                capture_output=True, text=True, check=True,
            ).stdout
        )[0]
        info = details["linkinfo"]["info_data"]
        assert (info["id"], info["local"], info["port"], info.get("learning")) == (vni, host.ip, 4789, False)
        assert info.get("proxy") is True and details["master"] == "br0" and details["mtu"] == 1450
        # The VXLAN socket lives in the host's namespace (on the underlay); no interface of
        # ours is left there.
        assert ":12B5 " in host.run("cat", "/proc/net/udp"), "no UDP socket on port 4789 in the host namespace"
        assert [link["ifname"] for link in json.loads(host.run("ip", "-j", "link"))] == ["lo", host.link]

    sa, sb = cluster.sandbox(), cluster.sandbox()
    ea = cluster.attach(a, req, 2, sa)
    eb = cluster.attach(b, req, 3, sb)
    ip_a, ip_b = ea.address.split("/")[0], eb.address.split("/")[0]
    mac_a, mac_b = mac_from_ipv4(ea.address), mac_from_ipv4(eb.address)
    assert sa.links()["eth0"]["mtu"] == 1450 and sa.default_gateway() == ""

    nid = req.network_id
    assert wait_for(lambda: a.fdb(nid) == {(mac_b, b.ip)} and b.fdb(nid) == {(mac_a, a.ip)}), (a.fdb(nid), b.fdb(nid))
    assert a.neigh(nid) == {(ip_b, mac_b)} and b.neigh(nid) == {(ip_a, mac_a)}
    assert sa.can_ping(ip_b) and sb.can_ping(ip_a)
    with sb.listen() as listener:
        wait = echo_server(listener)
        assert sa.exchange(ip_b, listener.getsockname()[1], b"over vxlan\n") == b"OVER VXLAN\n"
        assert wait() == [(ip_a, b"over vxlan\n")]


def test_second_network_is_isolated(cluster: Cluster) -> None:
    a, b = cluster.hosts
    subnet = subnet24()
    red, blue = cluster.network_request(subnet), cluster.network_request(subnet)  # same subnet, other VNI
    for host in (a, b):
        for req in (red, blue):
            host.call(lambda: host.driver.create_network(req))
    vnis = {json.loads(cluster.kv.get(f"pyd/overlay/networks/{r.network_id}").value)["vni"] for r in (red, blue)}
    assert len(vnis) == 2
    r1, r2, b1, b2 = (cluster.sandbox() for _ in range(4))
    cluster.attach(a, red, 2, r1)
    er2 = cluster.attach(b, red, 3, r2)
    cluster.attach(a, blue, 4, b1)
    eb2 = cluster.attach(b, blue, 5, b2)
    assert wait_for(lambda: len(a.fdb(blue.network_id)) == 1 and len(a.fdb(red.network_id)) == 1)
    assert b1.can_ping(eb2.address.split("/")[0]), "blue works across hosts"
    assert r1.can_ping(er2.address.split("/")[0]), "red works across hosts"
    assert not b1.can_ping(er2.address.split("/")[0], tries=2), "blue reaches a container of red"
    assert not r1.can_ping(eb2.address.split("/")[0], tries=2), "red reaches a container of blue"


def test_peer_entries_follow_endpoints(cluster: Cluster) -> None:
    a, b = cluster.hosts
    req = cluster.network_request(subnet24())
    nid = req.network_id
    a.call(lambda: a.driver.create_network(req))
    sa, sb = cluster.sandbox(), cluster.sandbox()
    cluster.attach(a, req, 2, sa)
    # A host that creates the network later gets the peers already published (resync).
    b.call(lambda: b.driver.create_network(req))
    assert wait_for(lambda: len(b.fdb(nid)) == 1), b.fdb(nid)
    eb = cluster.attach(b, req, 3, sb)
    mac_b = mac_from_ipv4(eb.address)
    assert wait_for(lambda: a.fdb(nid) == {(mac_b, b.ip)})

    b.call(lambda: b.driver.leave(nid, eb.endpoint_id))
    assert wait_for(lambda: a.fdb(nid) == set() and a.neigh(nid) == set()), (a.fdb(nid), a.neigh(nid))
    b.call(lambda: b.driver.join(JoinRequest(nid, eb.endpoint_id, str(sb.path), "eth0")))
    assert wait_for(lambda: a.fdb(nid) == {(mac_b, b.ip)})
    b.call(lambda: b.driver.delete_endpoint(nid, eb.endpoint_id))
    assert wait_for(lambda: a.fdb(nid) == set())
    assert len(peer_keys(cluster.kv, nid)) == 1  # only a's endpoint is left


def test_dead_host_entries_expire_and_lost_lease_is_renewed(cluster: Cluster) -> None:
    a, b = cluster.hosts
    req = cluster.network_request(subnet24())
    nid = req.network_id
    for host in (a, b):
        host.call(lambda: host.driver.create_network(req))
    sa, sb = cluster.sandbox(), cluster.sandbox()
    ea = cluster.attach(a, req, 2, sa)
    eb = cluster.attach(b, req, 3, sb)
    ip_b = eb.address.split("/")[0]
    assert wait_for(lambda: len(a.fdb(nid)) == 1)

    # The store loses b's lease (e.g. it was unreachable for longer than the TTL): b notices at
    # its next heartbeat, takes a new lease and publishes again; a programs b again.
    cluster.kv.revoke_lease(b.driver.peers.lease)
    assert wait_for(lambda: a.fdb(nid) == set(), timeout=3)
    assert wait_for(lambda: len(a.fdb(nid)) == 1, timeout=6), "b did not publish again"
    assert sa.can_ping(ip_b)

    # b dies (its threads stop, nothing is deleted): its entries expire with the lease (TTL 3 s).
    b.driver.close()
    assert wait_for(lambda: a.fdb(nid) == set() and a.neigh(nid) == set(), timeout=10)
    assert peer_keys(cluster.kv, nid) == [f"pyd/overlay/peers/{nid}/{ea.endpoint_id}"]


def test_delete_network_leaves_nothing(cluster: Cluster) -> None:
    a, b = cluster.hosts
    req = cluster.network_request(subnet24())
    nid = req.network_id
    for host in (a, b):
        host.call(lambda: host.driver.create_network(req))
    sa, sb = cluster.sandbox(), cluster.sandbox()
    cluster.attach(a, req, 2, sa)
    cluster.attach(b, req, 3, sb)
    assert wait_for(lambda: len(a.fdb(nid)) == 1)

    b.call(lambda: b.driver.delete_network(nid))  # e.g. b's daemon shuts down
    assert not b.overlay_ns(nid).exists() and sorted(sb.links()) == ["lo"]
    assert wait_for(lambda: a.fdb(nid) == set())
    assert cluster.kv.get(f"pyd/overlay/networks/{nid}") is not None, "delete_network keeps the VNI"

    a.call(lambda: a.driver.delete_network(nid))
    a.call(lambda: a.driver.forget_network(nid))  # `network rm` ran on a
    a.call(lambda: a.driver.delete_network(nid))  # idempotent
    for host, sb_ in ((a, sa), (b, sb)):
        assert not host.overlay_ns(nid).exists()
        assert sorted(sb_.links()) == ["lo"]
        names = [l["ifname"] for l in json.loads(host.run("ip", "-j", "link"))]
        assert names == ["lo", host.link], names
    assert [p.key for p in cluster.kv.list("pyd/overlay/") if nid in p.key or p.value == nid.encode()] == []


def test_restarted_driver_reads_back_and_corrects_its_entries(cluster: Cluster) -> None:
    a, b = cluster.hosts
    req = cluster.network_request(subnet24())
    nid = req.network_id
    for host in (a, b):
        host.call(lambda: host.driver.create_network(req))
    sa, sb, sc = cluster.sandbox(), cluster.sandbox(), cluster.sandbox()
    ea = cluster.attach(a, req, 2, sa)
    eb = cluster.attach(b, req, 3, sb)
    assert wait_for(lambda: len(a.fdb(nid)) == 1)

    a.driver.close()  # a's daemon stops; its kernel objects stay
    b.call(lambda: b.driver.delete_endpoint(nid, eb.endpoint_id))  # meanwhile, on b
    ec = cluster.attach(b, req, 4, sc)
    mac_c = mac_from_ipv4(ec.address)
    a.driver = cluster.load(a, a.link)  # restarted
    a.call(lambda: a.driver.restore_network(req))
    assert wait_for(lambda: a.fdb(nid) == {(mac_c, b.ip)}), a.fdb(nid)
    assert a.neigh(nid) == {(ec.address.split("/")[0], mac_c)}, "the stale entry of b's old endpoint is gone"
    assert sa.can_ping(ec.address.split("/")[0]) and sc.can_ping(ea.address.split("/")[0])
