"""What the bridge driver does beyond the shared suite: isolation, internal networks, NAT,
icc, published ports, options, restart. Traffic only between namespaces made here, the
test's own bridges and loopback."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from pyd.drivers.network import JoinRequest, PortBinding
from pyd.errors import Conflict, InvalidParameter
from pyd.testing.network import NetEnv, Sandbox, SuiteNetwork, echo_server, nft_tables

pytestmark = [pytest.mark.integration]

ICC = "com.docker.network.bridge.enable_icc"
MASQ = "com.docker.network.bridge.enable_ip_masquerade"
MTU = "com.docker.network.driver.mtu"
NAME = "com.docker.network.bridge.name"
DEFAULT = "com.docker.network.bridge.default_bridge"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[NetEnv]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in ("nft", "unshare", "nsenter", "busybox"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    e = NetEnv(tmp_path)
    try:
        yield e
    finally:
        e.close()


@pytest.fixture
def driver(env: NetEnv):
    return env.load("bridge")


def ip(cidr_or_ep) -> str:
    text = cidr_or_ep if isinstance(cidr_or_ep, str) else cidr_or_ep.address
    return text.split("/")[0]


def bridge_of(driver, net: SuiteNetwork) -> str:
    return driver.networks[net.network_id].bridge


def ruleset(env: NetEnv) -> str:
    return "\n".join(
        os.popen(f"nft list table {t}").read() for t in nft_tables(env.prefix)
    )


def chain(env: NetEnv, name: str, table: str | None = None) -> str:
    return os.popen(f"nft list chain ip {table or env.prefix} {name} 2>/dev/null").read()


def second_daemon(env: NetEnv, tmp_path: Path):
    """Another driver instance with its own prefix and home: its bridges are not in the first
    one's isolation set, so traffic between them shows what forwarding does on its own."""
    return env.load("bridge", prefix=env.prefix + "x", home=tmp_path / "second-home")


def http_get(host: str, port: int, timeout: float = 5.0) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def refused(host: str, port: int) -> bool:
    try:
        http_get(host, port, timeout=2)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except OSError:
        return True
    return False


def free_port(host: str = "0.0.0.0") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_httpd(sb: Sandbox, tmp_path: Path, body: str) -> None:
    www = tmp_path / f"www-{sb.path.name}"
    www.mkdir()
    (www / "index.html").write_text(body)
    sb.start("busybox", "httpd", "-f", "-p", "80", "-h", str(www))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if "0.0.0.0:80" in sb.run("busybox", "netstat", "-ltn").stdout or ":::80" in sb.run(
            "busybox", "netstat", "-ltn"
        ).stdout:
            return
        time.sleep(0.05)
    raise AssertionError("busybox httpd did not start")


# -- isolation, internal, NAT, icc ----------------------------------------------------------


def test_containers_on_different_bridges_cannot_reach_each_other(env, driver, tmp_path):
    net_a, net_b = env.network(driver), env.network(driver)
    a, b = env.sandbox(), env.sandbox()
    ea, eb = env.attach(net_a, a), env.attach(net_b, b)
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1", "the driver enables forwarding"
    assert a.can_ping(net_b.gateway), "B's gateway is a host address: reachable"
    assert not a.ping(ip(eb)) and not b.ping(ip(ea))
    with b.listen() as listener:
        with pytest.raises(OSError):
            a.exchange(ip(eb), listener.getsockname()[1], timeout=2)

    # Control: a bridge of another daemon (not in this one's isolation set) is reachable,
    # so it is the isolation rule, not a lack of forwarding, that stops A -> B.
    other = second_daemon(env, tmp_path)
    net_c = env.network(other)
    c = env.sandbox()
    ec = env.attach(net_c, c)
    assert a.can_ping(ip(ec))


def test_outbound_traffic_is_masqueraded(env, driver, tmp_path):
    net = env.network(driver)
    a = env.sandbox()
    ea = env.attach(net, a)
    br = bridge_of(driver, net)
    assert f'oifname != "{br}" masquerade' in chain(env, f"n-{net.network_id[:12]}-pin")

    # To the host side of its own bridge: arrives, from the container's address.
    with socket.create_server((net.gateway, 0)) as listener:
        wait = echo_server(listener)
        assert a.exchange(net.gateway, listener.getsockname()[1], b"out\n") == b"OUT\n"
        assert wait() == [(ip(ea), b"out\n")]

    # Leaving through another interface (a bridge of another daemon): the source becomes
    # the outgoing interface's address.
    other = second_daemon(env, tmp_path)
    net_c = env.network(other)
    c = env.sandbox()
    env.attach(net_c, c)
    with c.listen() as listener:
        wait = echo_server(listener)
        c_ip = ip(c.ipv4("eth0")[0])
        assert a.exchange(c_ip, listener.getsockname()[1]) == b"PING\n"
        assert wait() == [(net_c.gateway, b"ping\n")]


def test_masquerade_can_be_turned_off(env, driver, tmp_path):
    net = env.network(driver, {MASQ: "false"})
    a = env.sandbox()
    ea = env.attach(net, a)
    assert "masquerade" not in chain(env, f"n-{net.network_id[:12]}-pin")
    other = second_daemon(env, tmp_path)
    net_c = env.network(other)
    c = env.sandbox()
    env.attach(net_c, c)
    with c.listen() as listener:
        wait = echo_server(listener)
        a.exchange(ip(c.ipv4("eth0")[0]), listener.getsockname()[1])
        assert wait() == [(ip(ea), b"ping\n")], "no NAT: the container's own address"


def test_internal_network_has_no_way_out(env, driver, tmp_path):
    net = env.network(driver, internal=True)
    a, b = env.sandbox(), env.sandbox()
    ep = env.endpoint(net)
    res = driver.join(JoinRequest(net.network_id, ep.endpoint_id, str(a.path)))
    eb = env.attach(net, b)
    assert res.gateway == "" and a.default_gateway() == "", a.routes()
    assert a.can_ping(ip(eb)), "containers of one internal network talk to each other"
    assert "masquerade" not in chain(env, f"n-{net.network_id[:12]}-pin")

    # Even with a route of its own, nothing is forwarded out of an internal network (the
    # target is another daemon's bridge, so only the internal rule stands in the way).
    other = second_daemon(env, tmp_path)
    net_c = env.network(other)
    c = env.sandbox()
    ec = env.attach(net_c, c)
    a.run("ip", "route", "add", str(net_c.subnet), "via", net.gateway)
    assert not a.ping(ip(ec))


def test_icc_off_blocks_containers_of_one_network(env, driver):
    net = env.network(driver, {ICC: "false"})
    a, b = env.sandbox(), env.sandbox()
    ea, eb = env.attach(net, a), env.attach(net, b)
    assert a.can_ping(net.gateway) and b.can_ping(net.gateway)
    assert not a.ping(ip(eb)) and not b.ping(ip(ea))


# -- published ports ------------------------------------------------------------------------


def test_published_port_answers_on_loopback_and_the_bridge_address(env, driver, tmp_path):
    net = env.network(driver)
    s = env.sandbox()
    ep = env.attach(net, s)
    start_httpd(s, tmp_path, "hello from the sandbox\n")
    fixed = free_port("127.0.0.1")
    got = driver.program_external_connectivity(
        net.network_id,
        ep.endpoint_id,
        [PortBinding(80), PortBinding(80, host_ip="127.0.0.1", host_port=fixed)],
    )
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert low <= got[0].host_port <= high, got
    assert got[0].container_ip == ip(ep) and got[1].host_port == fixed

    for host in ("127.0.0.1", net.gateway):
        assert b"hello from the sandbox" in http_get(host, got[0].host_port), host
    assert b"hello from the sandbox" in http_get("127.0.0.1", fixed)
    assert refused(net.gateway, fixed), "bound to 127.0.0.1 only"
    # The container reaches its own published port through the host (hairpin).
    assert b"hello" in s.run("busybox", "wget", "-q", "-O", "-", f"http://{net.gateway}:{got[0].host_port}/").stdout.encode()
    with pytest.raises(OSError):  # the host port is held while published
        socket.create_server(("127.0.0.1", got[0].host_port)).close()

    driver.revoke_external_connectivity(net.network_id, ep.endpoint_id)
    assert ep.endpoint_id not in chain(env, "published")
    assert refused("127.0.0.1", got[0].host_port) and refused("127.0.0.1", fixed)
    socket.create_server(("127.0.0.1", got[0].host_port)).close()  # free again


def test_port_taken_by_a_host_process_is_a_conflict_with_nothing_left(env, driver):
    net = env.network(driver)
    s = env.sandbox()
    ep = env.attach(net, s)
    spare = free_port()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        taken = listener.getsockname()[1]
        with pytest.raises(Conflict) as err:
            driver.program_external_connectivity(
                net.network_id, ep.endpoint_id, [PortBinding(81, host_port=spare), PortBinding(80, host_port=taken)]
            )
        assert str(taken) in str(err.value) and "in use" in str(err.value)
    assert ep.endpoint_id not in chain(env, "published"), "no rule left behind"
    socket.create_server(("0.0.0.0", spare)).close()  # the first port was released too


def test_port_published_by_another_container_is_a_conflict(env, driver, tmp_path):
    net = env.network(driver)
    s1, s2 = env.sandbox(), env.sandbox()
    e1, e2 = env.attach(net, s1), env.attach(net, s2)
    start_httpd(s1, tmp_path, "first\n")
    port = driver.program_external_connectivity(net.network_id, e1.endpoint_id, [PortBinding(80)])[0].host_port
    with pytest.raises(Conflict):
        driver.program_external_connectivity(net.network_id, e2.endpoint_id, [PortBinding(80, host_port=port)])
    assert e2.endpoint_id not in chain(env, "published")
    assert b"first" in http_get("127.0.0.1", port), "the first container keeps its port"

    # revoke removes exactly one endpoint's rules
    p2 = driver.program_external_connectivity(net.network_id, e2.endpoint_id, [PortBinding(80)])[0].host_port
    driver.revoke_external_connectivity(net.network_id, e2.endpoint_id)
    rules = chain(env, "published")
    assert e1.endpoint_id in rules and e2.endpoint_id not in rules
    assert b"first" in http_get("127.0.0.1", port) and refused("127.0.0.1", p2)


def test_published_ports_survive_a_restart(env, driver, tmp_path):
    net = env.network(driver)
    s = env.sandbox()
    ep = env.attach(net, s)
    start_httpd(s, tmp_path, "still here\n")
    port = driver.program_external_connectivity(net.network_id, ep.endpoint_id, [PortBinding(80)])[0].host_port
    for sock in driver._reserved.get(ep.endpoint_id, []):  # the old daemon is gone
        sock.close()
    again = env.load("bridge")
    again.restore_network(net.req)
    net.driver = again
    assert b"still here" in http_get("127.0.0.1", port)
    with pytest.raises(OSError):
        socket.create_server(("127.0.0.1", port)).close()
    again.revoke_external_connectivity(net.network_id, ep.endpoint_id)
    assert refused("127.0.0.1", port)


# -- options and names -----------------------------------------------------------------------


def test_mtu_and_bridge_name(env, driver):
    name = f"{env.prefix}-named"
    net = env.network(driver, {MTU: "1400", NAME: name})
    a = env.sandbox()
    res = driver.join(JoinRequest(net.network_id, env.endpoint(net).endpoint_id, str(a.path)))
    assert Path(f"/sys/class/net/{name}/mtu").read_text().strip() == "1400"
    assert a.links()["eth0"]["mtu"] == 1400 and res.mtu == 1400
    with pytest.raises(Conflict) as err:
        env.network(driver, {NAME: name})
    assert name in str(err.value)


def test_existing_non_bridge_device_is_a_conflict_and_left_alone(env, driver):
    veth = env.parent_link()
    with pytest.raises(Conflict) as err:
        env.network(driver, {NAME: veth})
    assert veth in str(err.value)
    assert Path(f"/sys/class/net/{veth}").exists()
    assert Path(f"/sys/class/net/{veth}/bridge").exists() is False
    assert driver.networks == {} and nft_tables(env.prefix) == []


def test_default_bridge_name(env, tmp_path):
    d = env.load("bridge")
    net = env.network(d, {DEFAULT: "true"})
    assert bridge_of(d, net) == f"{env.prefix}0"
    custom = env.load("bridge", settings={"bridge": f"{env.prefix}d"}, prefix=env.prefix + "y", home=tmp_path / "h2")
    net2 = env.network(custom, {DEFAULT: "true"})
    assert Path(f"/sys/class/net/{env.prefix}d/bridge").exists()
    assert bridge_of(custom, net2) == f"{env.prefix}d"


def test_rules_of_one_network_go_with_it(env, driver):
    n1, n2 = env.network(driver), env.network(driver)
    driver.delete_network(n1.network_id)
    rules = ruleset(env)
    assert f"n-{n1.network_id[:12]}" not in rules and f"n-{n2.network_id[:12]}-in" in rules
    assert bridge_of(driver, n2) in rules
    driver.delete_network(n2.network_id)
    assert nft_tables(env.prefix) == []


def test_restore_recreates_a_lost_bridge(env, driver):
    net = env.network(driver)
    br = bridge_of(driver, net)
    os.system(f"ip link del {br}")
    again = env.load("bridge")
    again.restore_network(net.req)
    net.driver = again
    a, b = env.sandbox(), env.sandbox()
    env.attach(net, a)
    eb = env.attach(net, b)
    assert a.can_ping(ip(eb))


def test_endpoint_address_outside_the_subnet(env, driver):
    net = env.network(driver)
    from pyd.drivers.network import EndpointRequest

    with pytest.raises(InvalidParameter) as err:
        driver.create_endpoint(EndpointRequest(net.network_id, "e" * 64, "192.0.2.200/24"))
    assert str(net.subnet) in str(err.value)


def test_iptables_false_makes_no_rules_and_cannot_publish(env):
    from pyd.errors import NotSupported

    d = env.load("bridge", settings={"iptables": False, "ip-forward": False})
    net = env.network(d)
    a, b = env.sandbox(), env.sandbox()
    ea = env.attach(net, a)
    eb = env.attach(net, b)
    assert nft_tables(env.prefix) == []
    assert a.can_ping(ip(eb))
    with pytest.raises(NotSupported) as err:
        d.program_external_connectivity(net.network_id, ea.endpoint_id, [PortBinding(80)])
    assert "iptables" in str(err.value)


def test_a_restart_under_another_prefix_moves_the_rules_and_leaves_no_table(env, driver):
    # e.g. the daemon's `bridge` setting changed between two runs on one data-root
    net = env.network(driver)
    br = bridge_of(driver, net)
    assert nft_tables(env.prefix) == [f"ip {env.prefix}"]
    other = env.prefix + "y"
    again = env.load("bridge", prefix=other)
    again.restore_network(net.req)
    net.driver = again
    # the old table and bridge are gone; the network is on a bridge of the new prefix
    assert nft_tables(env.prefix) == [f"ip {other}"]
    new_br = bridge_of(again, net)
    assert new_br.startswith(other) and new_br in chain(env, f"n-{net.network_id[:12]}-in", table=other)
    assert not os.path.exists(f"/sys/class/net/{br}") and os.path.exists(f"/sys/class/net/{new_br}")
    a, b = env.sandbox(), env.sandbox()
    env.attach(net, a)
    assert a.can_ping(ip(env.attach(net, b)))
    for ep in list(again.networks[net.network_id].endpoints):
        again.leave(net.network_id, ep)
        again.delete_endpoint(net.network_id, ep)
    again.delete_network(net.network_id)
    assert nft_tables(env.prefix) == [] and not os.path.exists(f"/sys/class/net/{new_br}")
