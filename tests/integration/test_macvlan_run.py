"""macvlan networks end to end through ``pyd run`` (issue 5, "Done when": macvlan containers on
the same parent reach each other).

The parent is a veth pair the test makes in the root namespace (unique ``pv<hex>a``/``b``,
both ends up, so the macvlan sub-interfaces have carrier); never a real NIC. Each test runs
its own daemon (own bridge, so its kernel objects are named ``pt<hex>...``), imports the
busybox test image, creates a macvlan network on the veth, starts two detached containers on
it and talks between them (ping, and a TCP exchange with busybox ``nc``). Subnets are /24s of
10.199.0.0/16 that overlap no host route; traffic stays on the test's veth. At the end every
container, the network and the veth are removed, also when the test fails, and the test
checks that nothing of the daemon is left (no interface, no sub-interface on the parent, no
netns, no IPAM allocation).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from pyd.registry import Kind, installed_names
from pyd.testing.daemon import DaemonProcess
from pyd.testing.images import busybox_rootfs_tar
from pyd.testing.network import free_subnet, host_links, nft_tables

pytestmark = pytest.mark.integration

DRIVER = os.environ.get("PYD_TEST_STORAGE_DRIVER") or "overlay2"


def pyd(d: DaemonProcess, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYD_HOST"}
    return subprocess.run([sys.executable, "-m", "pyd.cli.main", "-H", d.host, *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.args, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def name(tag: str) -> str:
    return f"{tag}-{secrets.token_hex(3)}"


def retry_sh(cmd: str, tries: int = 10) -> str:
    """A shell loop for containers: retry ``cmd`` (the server may still be starting)."""
    return f"for i in $(seq {tries}); do {cmd} && exit 0; sleep 0.3; done; exit 1"


def uppers(link: str) -> list[str]:
    """Interfaces stacked on ``link`` in the root namespace (macvlan/vlan children)."""
    base = Path("/sys/class/net") / link
    return sorted(p.name[len("upper_"):] for p in base.glob("upper_*")) if base.exists() else []


def kernel_has_vlan(link: str) -> bool:
    """Whether this kernel can make 802.1q sub-interfaces (tried on the test's own veth)."""
    probe = f"{link}.4094"
    res = subprocess.run(["ip", "link", "add", "link", link, "name", probe, "type", "vlan", "id", "4094"],
                         capture_output=True, text=True)
    if res.returncode == 0:
        subprocess.run(["ip", "link", "del", probe], capture_output=True)
        return True
    return False


@pytest.fixture
def parent() -> Iterator[str]:
    """A veth pair in the root namespace, both ends up; yields the end used as parent."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    tag = secrets.token_hex(2)
    a, b = f"pv{tag}a", f"pv{tag}b"
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "link", "set", a, "up"], check=True, capture_output=True)
        subprocess.run(["ip", "link", "set", b, "up"], check=True, capture_output=True)
        yield a
    finally:
        for link in (f"{a}.20", a):  # a VLAN child made by pyd on a failed run goes too
            if Path(f"/sys/class/net/{link}").exists():
                subprocess.run(["ip", "link", "del", link], capture_output=True)


class Daemon:
    """A started daemon with the busybox image; ``cleanup`` removes what a failure left."""

    def __init__(self, d: DaemonProcess, tmp: Path) -> None:
        self.d = d
        self.prefix = d.bridge[:-1]  # pt<hex>: the prefix of every kernel object of this daemon
        ok(self.run("import", str(busybox_rootfs_tar(tmp / "busybox.tar")), "busybox:latest"))

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return pyd(self.d, *args, timeout=timeout)

    def ip_on(self, ctr: str, net: str) -> str:
        return json.loads(ok(self.run("inspect", ctr)))[0]["NetworkSettings"]["Networks"][net]["IPAddress"]

    def ipam_pools(self) -> dict[str, Any]:
        path = self.d.data_root / "ipam" / "default" / "state.json"
        return json.loads(path.read_text())["pools"] if path.exists() else {}

    def leftovers(self) -> dict[str, list[str]]:
        netns_dir = self.d.exec_root / "netns"
        return {
            "links": host_links(self.prefix),
            "nft": nft_tables(self.prefix),
            "netns": sorted(os.listdir(netns_dir)) if netns_dir.exists() else [],
        }

    def cleanup(self) -> None:
        try:
            if self.d.proc is not None and self.d.proc.poll() is None:
                ids = self.run("ps", "-aq").stdout.split()
                if ids:
                    self.run("rm", "-f", *ids)
                nets = self.run("network", "ls", "-q", "--filter", "type=custom").stdout.split()
                if nets:
                    self.run("network", "rm", *nets)
        finally:
            self.d.cleanup()
            for link in host_links(self.prefix):
                subprocess.run(["ip", "link", "del", link], capture_output=True)
            for table in nft_tables(self.prefix):
                subprocess.run(["nft", "delete", "table", *table.split()], capture_output=True)
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                if str(self.d.exec_root) in line or str(self.d.data_root) in line:
                    subprocess.run(["umount", "-l", line.split()[4]], capture_output=True)


@pytest.fixture
def daemon(pyd_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> Iterator[Daemon]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for kind, drv in ((Kind.GRAPHDRIVER, DRIVER), (Kind.EXEC, "native"), (Kind.NETWORK, "macvlan")):
        if drv not in installed_names(kind):
            pytest.skip(f"{kind.value} driver {drv} is not installed")
    d = Daemon(pyd_daemon(storage_driver=DRIVER, flags=["--log-driver", "none"]), tmp_path)
    try:
        yield d
    finally:
        d.cleanup()


def macvlan_pair(daemon: Daemon, parent: str, *extra: str) -> tuple[str, str, str, str]:
    """A macvlan network on ``parent`` and two containers on it: a TCP server answering
    ``got-<line>`` to the line it reads, and an idle client. Returns (network, subnet,
    server, client)."""
    net, subnet = name("mvnet"), free_subnet()
    gateway = str(subnet.network_address + 1)
    ok(daemon.run("network", "create", "-d", "macvlan", "--subnet", str(subnet), "--gateway", gateway,
                  "-o", f"parent={parent}", *extra, net))
    server, client = name("mvsrv"), name("mvcli")
    ok(daemon.run("run", "-d", "--name", server, "--network", net, "busybox",
                  "nc", "-ll", "-p", "7000", "-e", "sh", "-c", "read l; echo got-$l"))
    ok(daemon.run("run", "-d", "--name", client, "--network", net, "busybox", "sleep", "300"))
    return net, str(subnet), server, client


def assert_talk(daemon: Daemon, server: str, client: str, net: str) -> None:
    server_ip, client_ip = daemon.ip_on(server, net), daemon.ip_on(client, net)
    assert server_ip != client_ip
    out = ok(daemon.run("exec", client, "sh", "-c", f"ping -c1 -W2 {server_ip} && ping -c1 -W2 {server}"))
    assert out.count("1 packets received") == 2, out  # by address, and by name (embedded DNS)
    token = secrets.token_hex(4)
    out = ok(daemon.run("exec", client, "sh", "-c", retry_sh(f"echo {token} | nc {server_ip} 7000 | grep got-{token}")))
    assert f"got-{token}" in out
    out = ok(daemon.run("exec", server, "ping", "-c1", "-W2", client_ip))  # and the other way
    assert "1 packets received" in out


def assert_all_removed(daemon: Daemon, parent: str, net: str, subnet: str, *ctrs: str) -> None:
    ok(daemon.run("rm", "-f", *ctrs))
    ok(daemon.run("network", "rm", net))
    assert not any(subnet in pool for pool in daemon.ipam_pools())  # the network's pool is released
    daemon.d.stop()
    assert daemon.leftovers() == {"links": [], "nft": [], "netns": []}
    assert uppers(parent) == []  # no macvlan sub-interface left on the parent
    assert Path(f"/sys/class/net/{parent}").exists()  # the user's parent is left alone


def test_macvlan_containers_on_one_parent_reach_each_other(daemon: Daemon, parent: str) -> None:
    net, subnet, server, client = macvlan_pair(daemon, parent)
    doc = json.loads(ok(daemon.run("network", "inspect", net)))[0]
    assert doc["Driver"] == "macvlan" and doc["Options"]["parent"] == parent and not doc["Internal"]
    assert {c["Name"] for c in doc["Containers"].values()} == {server, client}
    # each container has one eth0 on the subnet, with the gateway as its default route
    out = ok(daemon.run("exec", client, "sh", "-c", "ls /sys/class/net; ip -4 addr show eth0; ip route"))
    assert out.split()[:2] == ["eth0", "lo"]
    assert f"default via {doc['IPAM']['Config'][0]['Gateway']} dev eth0" in out
    assert daemon.ip_on(client, net) in out
    assert_talk(daemon, server, client, net)
    assert_all_removed(daemon, parent, net, subnet, server, client)


def test_internal_macvlan_network_talks_inside_and_has_no_route_out(daemon: Daemon, parent: str) -> None:
    net, subnet, server, client = macvlan_pair(daemon, parent, "--internal")
    assert json.loads(ok(daemon.run("network", "inspect", net)))[0]["Internal"] is True
    routes = ok(daemon.run("exec", client, "ip", "route"))
    assert "default" not in routes and "eth0" in routes
    assert_talk(daemon, server, client, net)
    assert_all_removed(daemon, parent, net, subnet, server, client)


def test_vlan_parent_without_8021q_is_a_clear_error(daemon: Daemon, parent: str) -> None:
    if kernel_has_vlan(parent):
        pytest.skip("this kernel has 802.1q VLAN support; the refusal is for kernels without it")
    net, subnet = name("mvvlan"), free_subnet()
    vlan = f"{parent}.20"
    res = daemon.run("network", "create", "-d", "macvlan", "--subnet", str(subnet), "-o", f"parent={vlan}", net)
    assert res.returncode != 0
    assert "8021q" in res.stderr and "802.1q" in res.stderr and vlan in res.stderr, res.stderr
    # nothing half-made: no network, no sub-interface, no address pool
    assert net not in ok(daemon.run("network", "ls", "--format", "{{.Name}}")).split()
    assert not Path(f"/sys/class/net/{vlan}").exists() and uppers(parent) == []
    assert not any(str(subnet) in pool for pool in daemon.ipam_pools())
    daemon.d.stop()
    assert daemon.leftovers() == {"links": [], "nft": [], "netns": []}
