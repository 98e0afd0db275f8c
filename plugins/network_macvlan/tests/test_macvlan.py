"""macvlan against the shared suite, plus modes, parents and VLAN sub-interfaces. Parents are
veth pairs the tests make; never a real NIC."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from pyd.drivers.network import JoinRequest
from pyd.errors import Conflict, InvalidParameter, NotSupported
from pyd.testing.network import NetEnv, NetworkDriverSuite

from pyd_network_macvlan import options


class TestMacvlan(NetworkDriverSuite):
    driver_name = "macvlan"
    good_options = {"macvlan_mode": "bridge"}
    bad_options = [
        {"macvlan_mode": "switch"},
        {"parent": "eth0.5000"},
        {"parent": "a-name-far-too-long"},
        {"parent": "bad name"},
        {"com.docker.network.driver.mtu": "1500"},
    ]

    def network_options(self, env: NetEnv) -> dict[str, str]:
        return {**self.good_options, "parent": env.parent_link()}


class TestMacvlanInternal(TestMacvlan):
    create_args = {"internal": True}


def ip(ep) -> str:
    return ep.address.split("/")[0]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[NetEnv]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if shutil.which("busybox") is None:
        pytest.skip("needs busybox")
    e = NetEnv(tmp_path)
    try:
        yield e
    finally:
        e.close()


@pytest.fixture
def driver(env: NetEnv):
    return env.load("macvlan")


def test_parse_vlan_parent():
    assert options.split_vlan("eth0.20") == ("eth0", 20)
    assert options.split_vlan("eth0") == ("eth0", 0)
    assert options.parse_options({"parent": "eth0.20", "macvlan_mode": "VEPA"}) == {
        "parent": "eth0.20",
        "macvlan_mode": "vepa",
    }


@pytest.mark.integration
def test_private_mode_keeps_containers_apart(env, driver):
    net = env.network(driver, {"parent": env.parent_link(), "macvlan_mode": "private"})
    a, b = env.sandbox(), env.sandbox()
    ea, eb = env.attach(net, a), env.attach(net, b)
    assert not a.ping(ip(eb)) and not b.ping(ip(ea))


@pytest.mark.integration
def test_missing_parent_is_a_clear_error(env, driver):
    with pytest.raises(InvalidParameter) as err:
        env.network(driver, {"parent": f"{env.prefix}zz"})
    assert f"{env.prefix}zz" in str(err.value) and "not found" in str(err.value)
    assert driver.networks == {}


@pytest.mark.integration
def test_parent_used_by_two_networks_is_a_conflict(env, driver):
    parent = env.parent_link()
    env.network(driver, {"parent": parent})
    with pytest.raises(Conflict) as err:
        env.network(driver, {"parent": parent})
    assert parent in str(err.value)


@pytest.mark.integration
def test_parent_is_left_alone(env, driver):
    parent = env.parent_link()
    net = env.network(driver, {"parent": parent})
    env.attach(net, env.sandbox())
    driver.delete_network(net.network_id)
    assert Path(f"/sys/class/net/{parent}").exists()
    assert env.leftovers() == ([], [])


@pytest.mark.integration
def test_vlan_parent_is_made_and_removed(env, driver):
    parent = env.parent_link()
    vlan = f"{parent}.20"
    try:
        net = env.network(driver, {"parent": vlan})
    except NotSupported as exc:
        assert "8021q" in str(exc) and vlan in str(exc)
        assert not Path(f"/sys/class/net/{vlan}").exists(), "nothing left half-made"
        assert driver.networks == {}
        pytest.skip("this kernel has no 802.1q VLAN support (8021q)")
    assert Path(f"/sys/class/net/{vlan}").exists()
    a, b = env.sandbox(), env.sandbox()
    env.attach(net, a)
    eb = env.attach(net, b)
    assert a.can_ping(ip(eb))
    driver.delete_network(net.network_id)
    assert not Path(f"/sys/class/net/{vlan}").exists()


@pytest.mark.integration
def test_passthru_has_one_endpoint_with_the_parent_mac(env, driver):
    parent = env.parent_link()
    parent_mac = Path(f"/sys/class/net/{parent}/address").read_text().strip()
    net = env.network(driver, {"parent": parent, "macvlan_mode": "passthru"})
    a = env.sandbox()
    ep = env.endpoint(net)
    driver.join(JoinRequest(net.network_id, ep.endpoint_id, str(a.path)))
    assert a.links()["eth0"]["address"] == parent_mac
    with pytest.raises(Conflict):
        env.endpoint(net)


@pytest.mark.integration
def test_no_parent_means_an_internal_network_on_a_dummy(env, driver):
    try:
        net = env.network(driver, {})
    except NotSupported as exc:
        assert "dummy" in str(exc)
        assert env.leftovers() == ([], []) and driver.networks == {}
        pytest.skip("this kernel has no dummy interfaces")
    a = env.sandbox()
    ep = env.endpoint(net)
    assert driver.join(JoinRequest(net.network_id, ep.endpoint_id, str(a.path))).gateway == ""
