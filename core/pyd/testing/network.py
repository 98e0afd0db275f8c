"""Conformance suite for network drivers (``pyd.drivers.network.NetworkDriver``).

Subclass ``NetworkDriverSuite`` in your plugin's tests::

    from pyd.testing.network import NetworkDriverSuite

    class TestBridge(NetworkDriverSuite):
        driver_name = "bridge"                                   # the entry-point name
        good_options = {"com.docker.network.driver.mtu": "1400"}
        bad_options = [{"com.docker.network.driver.mtu": "ten"}, {"no-such-key": "x"}]
        create_args = {}                                         # more NetworkCreateRequest fields
        settings = {}                                            # NetworkContext.settings

Override ``network_options(env)`` when a network needs options made at test time (macvlan's
``parent``: ``env.parent_link()`` makes a veth pair to use). The driver is loaded as the
daemon loads it, ``PluginRegistry().init_driver(Kind.NETWORK, name, home=..., context=...)``,
with a unique ``name_prefix`` per test (``pyd`` + 4 hex), so parallel runs never collide.

The checks (integration: root, real kernel) create a network, two sandboxes (network
namespaces bind-mounted on files under the test's tmp dir), endpoints, and join them. What a
user cares about is asserted: the sandboxes ping each other and talk TCP, the interface has the
requested name, address and MAC (Docker's ``02:42:<ip>`` when none was given), ``lo`` is up;
leave/delete_endpoint/delete_network remove every interface and nftables table of the driver
and may be repeated; a restarted driver (``NetworkRestorer``) keeps connectivity; bad options
fail with ``InvalidOption`` naming the key. Everything a test makes is removed by the fixture,
also when the test fails. ``NetworkDriverBasicSuite`` has only the loading and option checks
(for drivers without sandboxes, e.g. ``host``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import pytest

from pyd.drivers.network import (
    EndpointRequest,
    IPAMData,
    JoinRequest,
    NetworkContext,
    NetworkCreateRequest,
    NetworkDriver,
    NetworkRestorer,
    mac_from_ipv4,
    netns_call,
)
from pyd.errors import Conflict, InvalidOption, NotFound, NotSupported
from pyd.registry import Kind, PluginRegistry, list_installed

# Test subnets are /24s of this range that no host route overlaps.
TEST_SUPERNET = ipaddress.IPv4Network("10.199.0.0/16")
CMD_TIMEOUT = 20.0


def _run(*cmd: str, check: bool = True, timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def host_links(prefix: str) -> list[str]:
    """Interfaces of the host namespace whose names start with ``prefix``."""
    return sorted(n for n in os.listdir("/sys/class/net") if n.startswith(prefix))


def nft_tables(prefix: str) -> list[str]:
    """nftables tables (``family name``) whose names start with ``prefix``."""
    if shutil.which("nft") is None:
        return []
    out = _run("nft", "list", "tables", check=False).stdout
    tables = [line.split(None, 1)[1] for line in out.splitlines() if line.startswith("table ")]
    return sorted(t for t in tables if t.split()[-1].startswith(prefix))


def host_routes() -> list[ipaddress.IPv4Network]:
    out = _run("ip", "-4", "-j", "route", "show", "table", "all", check=False).stdout or "[]"
    nets = []
    for r in json.loads(out):
        dst = r.get("dst", "")
        if dst in ("", "default") or r.get("type") in ("local", "broadcast"):
            continue
        try:
            nets.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
        except ValueError:
            continue
    return nets


def free_subnet() -> ipaddress.IPv4Network:
    """A random /24 of ``TEST_SUPERNET`` that overlaps no route of the host."""
    taken = host_routes()
    subnets = list(TEST_SUPERNET.subnets(new_prefix=24))
    for _ in range(200):
        cand = random.choice(subnets)
        if not any(cand.overlaps(t) for t in taken):
            return cand
    raise RuntimeError(f"no free /24 in {TEST_SUPERNET}")


class Sandbox:
    """A network namespace bind-mounted on a file: what the core gives ``join``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.procs: list[subprocess.Popen[bytes]] = []

    @classmethod
    def create(cls, path: Path) -> Sandbox:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        _run("unshare", f"--net={path}", "true")
        return cls(path)

    def run(self, *cmd: str, check: bool = True, timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return _run("nsenter", f"--net={self.path}", *cmd, check=check, timeout=timeout)

    def start(self, *cmd: str) -> subprocess.Popen[bytes]:
        """A background process inside the sandbox, killed (by pid) at close."""
        proc = subprocess.Popen(
            ["nsenter", f"--net={self.path}", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.procs.append(proc)
        return proc

    def links(self) -> dict[str, dict[str, Any]]:
        """``ip -j addr`` inside: ifname -> its record (address = MAC, addr_info, mtu, flags)."""
        return {i["ifname"]: i for i in json.loads(self.run("ip", "-j", "addr", "show").stdout)}

    def ipv4(self, ifname: str) -> list[str]:
        info = self.links().get(ifname, {})
        return [f"{a['local']}/{a['prefixlen']}" for a in info.get("addr_info", []) if a.get("family") == "inet"]

    def routes(self) -> list[dict[str, Any]]:
        return json.loads(self.run("ip", "-4", "-j", "route", "show").stdout or "[]")

    def default_gateway(self) -> str:
        return next((r.get("gateway", "") for r in self.routes() if r.get("dst") == "default"), "")

    def ping(self, ip: str, wait: float = 2.0) -> bool:
        res = self.run("busybox", "ping", "-c", "1", "-W", str(int(wait)), ip, check=False)
        return res.returncode == 0

    def can_ping(self, ip: str, tries: int = 3) -> bool:
        """A few attempts: the first packet may wait for ARP or a bridge port to forward."""
        return any(self.ping(ip) for _ in range(tries))

    def socket(self, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket that lives in the sandbox (usable from this process)."""
        return netns_call(str(self.path), lambda: socket.socket(socket.AF_INET, kind))

    def listen(self, port: int = 0, host: str = "0.0.0.0") -> socket.socket:
        def make() -> socket.socket:
            return socket.create_server((host, port))

        return netns_call(str(self.path), make)

    def exchange(self, ip: str, port: int, payload: bytes = b"ping\n", timeout: float = 5.0) -> bytes:
        """Connect from the sandbox to ``ip:port``, send ``payload``, return what came back."""
        with self.socket() as s:
            s.settimeout(timeout)
            s.connect((ip, port))
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            return _recv_all(s)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self.procs.clear()
        if self.path.exists():
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            try:
                self.path.unlink()
            except OSError:
                pass


def _recv_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        data = s.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def echo_server(listener: socket.socket, count: int = 1) -> Callable[[], list[tuple[str, bytes]]]:
    """Serve ``count`` connections on ``listener`` in a thread: each gets back what it sent,
    upper-cased. Returns a function that waits and gives ``[(peer_ip, data), ...]``."""
    import threading

    got: list[tuple[str, bytes]] = []

    def serve() -> None:
        listener.settimeout(10)
        try:
            for _ in range(count):
                conn, peer = listener.accept()
                with conn:
                    conn.settimeout(10)
                    data = _recv_all(conn)
                    got.append((peer[0], data))
                    conn.sendall(data.upper())
        except OSError:
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    def wait() -> list[tuple[str, bytes]]:
        t.join(15)
        return got

    return wait


@dataclass
class SuiteNetwork:
    __test__ = False  # not a pytest class

    driver: NetworkDriver
    req: NetworkCreateRequest
    subnet: ipaddress.IPv4Network
    next_host: int = 2

    @property
    def network_id(self) -> str:
        return self.req.network_id

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def address(self, host: int | None = None) -> str:
        if host is None:
            host, self.next_host = self.next_host, self.next_host + 1
        return f"{self.subnet.network_address + host}/{self.subnet.prefixlen}"


@dataclass
class NetEnv:
    """Everything one test makes: a name prefix, driver homes, sandboxes, networks, links.
    ``close`` removes it all, also after a failure."""

    tmp: Path
    prefix: str = field(default_factory=lambda: "pyd" + secrets.token_hex(2))
    sandboxes: list[Sandbox] = field(default_factory=list)
    networks: list[SuiteNetwork] = field(default_factory=list)
    extra_links: list[str] = field(default_factory=list)
    _n: int = 0

    @property
    def home(self) -> Path:
        home = self.tmp / "driver-home"
        home.mkdir(mode=0o700, exist_ok=True)
        return home

    def load(
        self,
        name: str,
        settings: Mapping[str, object] | None = None,
        prefix: str | None = None,
        home: Path | None = None,
    ) -> Any:
        """The driver through a fresh registry (as a newly started daemon loads it).

        Another ``prefix`` (keep it starting with ``self.prefix``, at most 8 characters) and
        ``home`` model a second daemon on the same host."""
        ctx = NetworkContext(settings=dict(settings or {}), name_prefix=prefix or self.prefix)
        if home is not None:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
        return PluginRegistry().init_driver(Kind.NETWORK, name, home=home or self.home, context=ctx)

    def sandbox(self) -> Sandbox:
        self._n += 1
        sb = Sandbox.create(self.tmp / f"pyd-netns-{self.prefix}" / f"sb{self._n}")
        self.sandboxes.append(sb)
        return sb

    def parent_link(self) -> str:
        """A veth pair on the host with both ends up; returns one end (a parent for macvlan)."""
        self._n += 1
        a, b = f"{self.prefix}p{self._n}", f"{self.prefix}q{self._n}"
        self.extra_links += [a, b]
        _run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        _run("ip", "link", "set", a, "up")
        _run("ip", "link", "set", b, "up")
        return a

    def network(
        self, driver: NetworkDriver, options: Mapping[str, str] | None = None, **fields: Any
    ) -> SuiteNetwork:
        subnet = free_subnet()
        gateway = f"{subnet.network_address + 1}/{subnet.prefixlen}"
        req = NetworkCreateRequest(
            network_id=secrets.token_hex(32),
            name=fields.pop("name", f"net-{self.prefix}-{len(self.networks)}"),
            options=driver.parse_options(dict(options or {})),
            ipv4=[IPAMData(pool=str(subnet), gateway=gateway)],
            **fields,
        )
        net = SuiteNetwork(driver, req, subnet)
        self.networks.append(net)
        driver.create_network(req)
        return net

    def endpoint(self, net: SuiteNetwork, mac: str = "", host: int | None = None) -> EndpointRequest:
        req = EndpointRequest(
            network_id=net.network_id, endpoint_id=secrets.token_hex(32), address=net.address(host), mac_address=mac
        )
        net.driver.create_endpoint(req)
        return req

    def attach(self, net: SuiteNetwork, sandbox: Sandbox, ifname: str = "eth0", mac: str = "") -> EndpointRequest:
        ep = self.endpoint(net, mac=mac)
        net.driver.join(JoinRequest(net.network_id, ep.endpoint_id, str(sandbox.path), ifname))
        return ep

    def leftovers(self) -> tuple[list[str], list[str]]:
        """Interfaces (except the test's own ``parent_link`` pairs) and nft tables under the prefix."""
        links = [n for n in host_links(self.prefix) if n not in self.extra_links]
        return links, nft_tables(self.prefix)

    def close(self) -> None:
        for net in reversed(self.networks):
            try:
                net.driver.delete_network(net.network_id)
            except Exception:
                pass
        for sb in self.sandboxes:
            sb.close()
        # Last resort, so that a failing driver leaks nothing: what is left under our prefix.
        for name in host_links(self.prefix) + self.extra_links:
            subprocess.run(["ip", "link", "del", name], capture_output=True)
        for table in nft_tables(self.prefix):
            subprocess.run(["nft", "delete", "table", *table.split()], capture_output=True)


class NetworkDriverBasicSuite:
    """Loading and option checks every network driver must pass."""

    driver_name: ClassVar[str] = ""
    good_options: ClassVar[Mapping[str, str]] = {}
    bad_options: ClassVar[Sequence[Mapping[str, str]]] = ()
    create_args: ClassVar[Mapping[str, Any]] = {}
    settings: ClassVar[Mapping[str, object]] = {}

    @pytest.fixture
    def net_env(self, tmp_path: Path) -> Iterator[NetEnv]:
        env = NetEnv(tmp_path)
        try:
            yield env
        finally:
            env.close()

    @pytest.fixture
    def driver(self, net_env: NetEnv) -> NetworkDriver:
        assert self.driver_name, f"{type(self).__name__}.driver_name is not set"
        try:
            return net_env.load(self.driver_name, self.settings)
        except NotSupported as exc:
            pytest.skip(f"network driver {self.driver_name} is not usable here: {exc}")

    def test_listed_as_installed(self) -> None:
        names = [p.name for p in list_installed([Kind.NETWORK])]
        assert names.count(self.driver_name) == 1, names

    def test_entry_point_resolves(self, driver: NetworkDriver) -> None:
        assert driver.name == self.driver_name
        assert driver.scope in ("local", "global")
        for method in (
            "parse_options", "create_network", "delete_network", "create_endpoint", "delete_endpoint",
            "join", "leave", "program_external_connectivity", "revoke_external_connectivity",
        ):
            assert callable(getattr(driver, method, None)), method

    def test_init_hook_ignores_other_names(self, pyd_registry: PluginRegistry, net_env: NetEnv) -> None:
        module = pyd_registry.load(Kind.NETWORK, self.driver_name).module
        ctx = NetworkContext(name_prefix=net_env.prefix)
        assert module.pyd_network_init(name=f"not-{self.driver_name}", home=net_env.home, context=ctx) is None

    def test_unknown_option_is_rejected_listing_valid_keys(self, driver: NetworkDriver) -> None:
        with pytest.raises(InvalidOption) as err:
            driver.parse_options({"no-such-option-xyz": "1"})
        msg = str(err.value)
        assert "no-such-option-xyz" in msg and self.driver_name in msg and "valid keys" in msg, msg

    def test_bad_options_are_rejected_naming_the_key(self, driver: NetworkDriver) -> None:
        assert self.bad_options, "set bad_options to at least one invalid option set"
        for raw in self.bad_options:
            with pytest.raises(InvalidOption) as err:
                driver.parse_options(dict(raw))
            assert any(key in str(err.value) for key in raw), f"{raw}: {err.value}"

    def test_good_options_parse_without_side_effects(self, driver: NetworkDriver, net_env: NetEnv) -> None:
        before = (sorted(p.name for p in net_env.home.rglob("*")), net_env.leftovers())
        driver.parse_options(dict(self.good_options))
        driver.parse_options({})
        after = (sorted(p.name for p in net_env.home.rglob("*")), net_env.leftovers())
        assert after == before, "parse_options must be pure"


class NetworkDriverSuite(NetworkDriverBasicSuite):
    """Connectivity and cleanup checks for drivers that give sandboxes interfaces."""

    pytestmark = [pytest.mark.integration]

    def network_options(self, env: NetEnv) -> dict[str, str]:
        """Raw ``-o`` options of the networks the checks create."""
        return dict(self.good_options)

    @pytest.fixture
    def net_env(self, tmp_path: Path) -> Iterator[NetEnv]:
        if os.geteuid() != 0:
            pytest.skip("the network driver suite needs root")
        for tool in ("unshare", "nsenter", "busybox", "ip"):
            if shutil.which(tool) is None:
                pytest.skip(f"the network driver suite needs {tool}")
        env = NetEnv(tmp_path)
        try:
            yield env
        finally:
            env.close()

    def make_network(self, env: NetEnv, driver: NetworkDriver, **fields: Any) -> SuiteNetwork:
        return env.network(driver, self.network_options(env), **{**self.create_args, **fields})

    # -- connectivity ---------------------------------------------------------------------

    def test_two_sandboxes_reach_each_other(self, driver: NetworkDriver, net_env: NetEnv) -> None:
        net = self.make_network(net_env, driver)
        a, b = net_env.sandbox(), net_env.sandbox()
        mac = "02:aa:bb:cc:dd:01"
        ea = net_env.attach(net, a, "eth0")
        eb = net_env.attach(net, b, "eth3", mac=mac)

        la, lb = a.links(), b.links()
        assert sorted(la) == ["eth0", "lo"], la.keys()
        assert sorted(lb) == ["eth3", "lo"], lb.keys()
        assert a.ipv4("eth0") == [ea.address] and b.ipv4("eth3") == [eb.address]
        assert la["eth0"]["address"] == mac_from_ipv4(ea.address), "Docker-style MAC from the IP"
        assert lb["eth3"]["address"] == mac
        for links in (la, lb):
            assert all("UP" in i["flags"] for i in links.values()), links

        ip_a, ip_b = ea.address.split("/")[0], eb.address.split("/")[0]
        assert a.can_ping(ip_b) and b.can_ping(ip_a)
        with b.listen() as listener:
            wait = echo_server(listener)
            assert a.exchange(ip_b, listener.getsockname()[1], b"hello\n") == b"HELLO\n"
            assert wait() == [(ip_a, b"hello\n")]

    def test_join_is_idempotent_and_rejoin_after_leave(self, driver: NetworkDriver, net_env: NetEnv) -> None:
        net = self.make_network(net_env, driver)
        a, b = net_env.sandbox(), net_env.sandbox()
        ea = net_env.attach(net, a)
        eb = net_env.attach(net, b)
        join_b = JoinRequest(net.network_id, eb.endpoint_id, str(b.path), "eth0")
        driver.join(join_b)  # a retried call changes nothing
        assert sorted(b.links()) == ["eth0", "lo"]

        driver.leave(net.network_id, eb.endpoint_id)
        assert sorted(b.links()) == ["lo"], "leave takes the interface out of the sandbox"
        driver.leave(net.network_id, eb.endpoint_id)  # idempotent
        driver.join(join_b)
        assert b.ipv4("eth0") == [eb.address]
        assert b.can_ping(ea.address.split("/")[0])

    def test_taken_ifname_is_a_conflict_that_changes_nothing(
        self, driver: NetworkDriver, net_env: NetEnv
    ) -> None:
        net = self.make_network(net_env, driver)
        a, b = net_env.sandbox(), net_env.sandbox()
        net_env.attach(net, a)
        eb = net_env.attach(net, b)
        before = net_env.leftovers()
        ec = net_env.endpoint(net)
        with pytest.raises(Conflict) as err:
            driver.join(JoinRequest(net.network_id, ec.endpoint_id, str(a.path), "eth0"))
        assert "eth0" in str(err.value)
        assert sorted(a.links()) == ["eth0", "lo"] and net_env.leftovers() == before
        assert a.can_ping(eb.address.split("/")[0]), "the sandbox's own interface still works"
        driver.join(JoinRequest(net.network_id, ec.endpoint_id, str(net_env.sandbox().path), "eth0"))

    def test_default_route_via_the_gateway(self, driver: NetworkDriver, net_env: NetEnv) -> None:
        if self.create_args.get("internal"):
            pytest.skip("internal networks have no default route")
        net = self.make_network(net_env, driver)
        a = net_env.sandbox()
        ep = net_env.endpoint(net)
        res = driver.join(JoinRequest(net.network_id, ep.endpoint_id, str(a.path)))
        assert res.gateway == net.gateway
        assert a.default_gateway() == net.gateway

    # -- cleanup --------------------------------------------------------------------------

    def test_teardown_removes_everything_and_repeats(self, driver: NetworkDriver, net_env: NetEnv) -> None:
        net = self.make_network(net_env, driver)
        a, b = net_env.sandbox(), net_env.sandbox()
        ea, eb = net_env.attach(net, a), net_env.attach(net, b)
        nid = net.network_id
        for ep, sb in ((ea, a), (eb, b)):
            driver.revoke_external_connectivity(nid, ep.endpoint_id)
            driver.leave(nid, ep.endpoint_id)
            assert sorted(sb.links()) == ["lo"]
            driver.delete_endpoint(nid, ep.endpoint_id)
            driver.delete_endpoint(nid, ep.endpoint_id)
            driver.leave(nid, ep.endpoint_id)
            driver.revoke_external_connectivity(nid, ep.endpoint_id)
        driver.delete_network(nid)
        links, tables = net_env.leftovers()
        assert links == [] and tables == [], f"left behind: links {links}, nft tables {tables}"
        driver.delete_network(nid)  # idempotent

    def test_delete_network_removes_joined_endpoints(self, driver: NetworkDriver, net_env: NetEnv) -> None:
        net = self.make_network(net_env, driver)
        a = net_env.sandbox()
        net_env.attach(net, a)
        driver.delete_network(net.network_id)
        assert sorted(a.links()) == ["lo"]
        links, tables = net_env.leftovers()
        assert links == [] and tables == [], f"left behind: links {links}, nft tables {tables}"

    def test_unknown_network_and_endpoint(self, driver: NetworkDriver, net_env: NetEnv) -> None:
        with pytest.raises(NotFound):
            driver.create_endpoint(EndpointRequest("0" * 64, "1" * 64, "10.199.0.2/24"))
        net = self.make_network(net_env, driver)
        with pytest.raises(NotFound):
            driver.join(JoinRequest(net.network_id, "2" * 64, str(net_env.sandbox().path)))

    def test_create_network_again_is_a_no_op(self, driver: NetworkDriver, net_env: NetEnv) -> None:
        net = self.make_network(net_env, driver)
        a, b = net_env.sandbox(), net_env.sandbox()
        ea = net_env.attach(net, a)
        driver.create_network(net.req)  # a retried create keeps what exists
        net_env.attach(net, b)
        assert b.can_ping(ea.address.split("/")[0])

    # -- restart --------------------------------------------------------------------------

    def test_restart_keeps_connectivity(self, driver: NetworkDriver, net_env: NetEnv) -> None:
        if not isinstance(driver, NetworkRestorer):
            pytest.skip(f"network driver {self.driver_name} is not a NetworkRestorer")
        net = self.make_network(net_env, driver)
        a, b = net_env.sandbox(), net_env.sandbox()
        ea, eb = net_env.attach(net, a), net_env.attach(net, b)
        again = net_env.load(self.driver_name, self.settings)  # a restarted daemon
        assert again is not driver
        again.restore_network(net.req)
        net.driver = again
        assert a.can_ping(eb.address.split("/")[0])
        ec = net_env.attach(net, net_env.sandbox())
        assert a.can_ping(ec.address.split("/")[0])
        for ep in (ea, eb, ec):
            again.leave(net.network_id, ep.endpoint_id)
            again.delete_endpoint(net.network_id, ep.endpoint_id)
        again.delete_network(net.network_id)
        links, tables = net_env.leftovers()
        assert links == [] and tables == [], f"left behind: links {links}, nft tables {tables}"


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
