"""The core ``default`` IPAM driver: the conformance suite plus what is specific to it."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Iterator

import pytest

from pyd.builtin.ipam_default import (
    DEFAULT_POOLS,
    EXCLUDE,
    GLOBAL_SPACE,
    KV_PREFIX,
    LOCAL_SPACE,
    SERIAL,
    STATE_FILE,
    DefaultIpam,
)
from pyd.drivers.kvstore import KVPair
from pyd.errors import Conflict, InvalidOption, InvalidParameter, Unavailable
from pyd.registry import Kind, PluginRegistry, list_installed
from pyd.testing.ipam import GATEWAY_OPTS, IpamSuite, run_threads


class TestDefaultIpamConformance(IpamSuite):
    driver_name = "default"


def test_listed_as_core_plugin() -> None:
    rows = [p for p in list_installed([Kind.IPAM]) if p.name == "default"]
    assert [(p.dist, p.target) for p in rows] == [("pyd", "pyd.builtin.ipam_default")]


@pytest.fixture
def ipam(pyd_home: Path) -> DefaultIpam:
    return PluginRegistry().init_driver(Kind.IPAM, "default", home=pyd_home, kvstore=None)


def net(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr)


def test_default_pools_follow_docker(ipam: DefaultIpam) -> None:
    # 172.17 .. 172.31 as /16s, then 192.168.0.0/16 in /20s.
    got = [ipam.request_pool(LOCAL_SPACE).subnet for _ in range(17)]
    assert got[:15] == [f"172.{n}.0.0/16" for n in range(17, 32)]
    assert got[15:] == ["192.168.0.0/20", "192.168.16.0/20"]


def test_default_choice_skips_pools_in_use(ipam: DefaultIpam) -> None:
    ipam.request_pool(LOCAL_SPACE, "172.17.0.0/16")  # the bridge's bip
    ipam.request_pool(LOCAL_SPACE, "172.18.5.0/24")  # a user subnet inside the next default
    assert ipam.request_pool(LOCAL_SPACE).subnet == "172.19.0.0/16"


def test_default_choice_avoids_excluded_routes(ipam: DefaultIpam) -> None:
    pool = ipam.request_pool(LOCAL_SPACE, options={EXCLUDE: "172.16.0.0/12, 192.168.0.0/19"})
    assert pool.subnet == "192.168.32.0/20"


def test_caller_may_give_a_subnet_that_overlaps_excludes(ipam: DefaultIpam) -> None:
    # Host-route checks of a given subnet belong to the network driver.
    pool = ipam.request_pool(LOCAL_SPACE, "172.17.0.0/16", options={EXCLUDE: "172.16.0.0/12"})
    assert pool.subnet == "172.17.0.0/16"


def test_defaults_exhausted_is_unavailable(pyd_home: Path) -> None:
    ipam = DefaultIpam(pyd_home, default_pools=[("10.99.0.0/23", 24)])
    ipam.request_pool(LOCAL_SPACE)
    ipam.request_pool(LOCAL_SPACE)
    with pytest.raises(Unavailable, match="non-overlapping"):
        ipam.request_pool(LOCAL_SPACE)


def test_default_address_pools_option(ipam: DefaultIpam) -> None:
    opts = {DEFAULT_POOLS: json.dumps([{"base": "10.50.0.0/16", "size": 24}])}
    assert ipam.request_pool(LOCAL_SPACE, options=opts).subnet == "10.50.0.0/24"
    assert ipam.request_pool(LOCAL_SPACE, options=opts).subnet == "10.50.1.0/24"
    with pytest.raises(InvalidOption, match="default-pools"):
        ipam.request_pool(LOCAL_SPACE, options={DEFAULT_POOLS: '[{"base": "10.0.0.0/16", "size": 8}]'})


def test_unknown_pool_option_is_rejected_with_valid_keys(ipam: DefaultIpam) -> None:
    with pytest.raises(InvalidOption) as err:
        ipam.request_pool(LOCAL_SPACE, "10.60.0.0/24", options={"colour": "blue"})
    assert '"colour"' in str(err.value) and SERIAL in str(err.value)
    assert ipam.pools(LOCAL_SPACE) == []  # nothing was reserved


def test_bad_cidrs_are_invalid_parameters(ipam: DefaultIpam) -> None:
    with pytest.raises(InvalidParameter, match='"10.0.0.300/24" is not a CIDR'):
        ipam.request_pool(LOCAL_SPACE, "10.0.0.300/24")
    with pytest.raises(InvalidParameter, match="needs a subnet"):
        ipam.request_pool(LOCAL_SPACE, ip_range="10.0.0.0/28")


def test_address_spaces_are_separate(ipam: DefaultIpam) -> None:
    ipam.request_pool(LOCAL_SPACE, "10.70.0.0/24")
    ipam.request_pool("other", "10.70.0.0/24")  # no conflict across spaces
    with pytest.raises(Conflict):
        ipam.request_pool("other", "10.70.0.0/25")


def test_gateway_and_address_format(ipam: DefaultIpam) -> None:
    pool = ipam.request_pool(LOCAL_SPACE, "172.29.0.0/16")
    assert pool.pool_id == "LocalDefault/172.29.0.0/16"
    assert ipam.request_address(pool.pool_id, options=GATEWAY_OPTS) == "172.29.0.1/16"
    assert ipam.request_address(pool.pool_id) == "172.29.0.2/16"


def test_lowest_free_address_is_reused(ipam: DefaultIpam) -> None:
    pool = ipam.request_pool(LOCAL_SPACE, "10.71.0.0/24")
    a = [ipam.request_address(pool.pool_id) for _ in range(3)]
    ipam.release_address(pool.pool_id, a[0])
    assert ipam.request_address(pool.pool_id) == a[0]


def test_serial_allocation_does_not_reuse_at_once(ipam: DefaultIpam) -> None:
    pool = ipam.request_pool(LOCAL_SPACE, "10.72.0.0/29", options={SERIAL: "true"})
    a = [ipam.request_address(pool.pool_id) for _ in range(3)]
    ipam.release_address(pool.pool_id, a[0])
    assert ipam.request_address(pool.pool_id) == "10.72.0.4/29"
    ipam.request_address(pool.pool_id)
    ipam.request_address(pool.pool_id)
    assert ipam.request_address(pool.pool_id) == a[0]  # wraps around to the freed one


def test_network_and_broadcast_are_refused(ipam: DefaultIpam) -> None:
    pool = ipam.request_pool(LOCAL_SPACE, "10.73.0.0/24")
    for bad in ("10.73.0.0", "10.73.0.255"):
        with pytest.raises(InvalidParameter, match="network or broadcast"):
            ipam.request_address(pool.pool_id, bad)


def test_ipv6_pool(ipam: DefaultIpam) -> None:
    pool = ipam.request_pool(LOCAL_SPACE, "fd00:abcd::/64")
    assert ipam.request_address(pool.pool_id, options=GATEWAY_OPTS) == "fd00:abcd::1/64"
    assert ipam.request_address(pool.pool_id) == "fd00:abcd::2/64"
    ipam.request_pool(LOCAL_SPACE, "10.74.0.0/24")  # v4 and v6 never overlap
    with pytest.raises(Conflict):
        ipam.request_pool(LOCAL_SPACE, "fd00:abcd::/48")


def test_release_pool_frees_subnet_and_is_retry_safe(ipam: DefaultIpam) -> None:
    pool = ipam.request_pool(LOCAL_SPACE, "10.75.0.0/24")
    ipam.request_address(pool.pool_id)
    ipam.release_pool(pool.pool_id)
    ipam.release_pool(pool.pool_id)  # a retried call after a timeout
    again = ipam.request_pool(LOCAL_SPACE, "10.75.0.0/24")
    assert ipam.request_address(again.pool_id) == "10.75.0.1/24"  # no stale allocations


def test_state_file_is_written_atomically(ipam: DefaultIpam, pyd_home: Path) -> None:
    pool = ipam.request_pool(LOCAL_SPACE, "10.76.0.0/24")
    ipam.request_address(pool.pool_id)
    doc = json.loads((pyd_home / STATE_FILE).read_text())
    assert doc["pools"][pool.pool_id]["allocated"] == ["10.76.0.1"]
    assert sorted(os.listdir(pyd_home)) == [STATE_FILE]  # no temp files left behind


def test_failed_write_changes_nothing(ipam: DefaultIpam, pyd_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = ipam.request_pool(LOCAL_SPACE, "10.77.0.0/24")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        ipam.request_address(pool.pool_id)
    monkeypatch.undo()
    assert ipam.addresses(pool.pool_id) == []
    assert sorted(os.listdir(pyd_home)) == [STATE_FILE]
    assert ipam.request_address(pool.pool_id) == "10.77.0.1/24"


def test_unreadable_state_is_reported(pyd_home: Path) -> None:
    (pyd_home / STATE_FILE).write_text("{not json")
    with pytest.raises(Unavailable, match="unreadable"):
        DefaultIpam(pyd_home)


# -- GlobalDefault in a KV store ---------------------------------------------------------


class DictKV:
    """A KV store boundary faked with a dict: enough of the protocol for CAS transactions."""

    name = "dict"

    def __init__(self) -> None:
        self.data: dict[str, KVPair] = {}
        self.revision = 0
        self.cas_failures = 0  # make the next N compare_and_swap calls lose a race

    def get(self, key: str) -> KVPair | None:
        return self.data.get(key)

    def compare_and_swap(self, key: str, expected_revision: int, value: bytes, lease: int = 0) -> bool:
        current = self.data.get(key)
        if self.cas_failures:
            self.cas_failures -= 1
            return False
        if (current.revision if current else 0) != expected_revision:
            return False
        self.revision += 1
        self.data[key] = KVPair(key, value, self.revision)
        return True


@pytest.fixture
def kv() -> Iterator[DictKV]:
    yield DictKV()


def test_global_space_is_shared_through_the_kvstore(tmp_path: Path, kv: DictKV) -> None:
    host_a = DefaultIpam(tmp_path / "a", kvstore=kv)  # type: ignore[arg-type]
    host_b = DefaultIpam(tmp_path / "b", kvstore=kv)  # type: ignore[arg-type]
    pa = host_a.request_pool(GLOBAL_SPACE)
    assert pa.subnet == "10.0.0.0/24"  # Docker's global default: 10.0.0.0/8 in /24s
    assert host_b.request_pool(GLOBAL_SPACE).subnet == "10.0.1.0/24"
    with pytest.raises(Conflict):
        host_b.request_pool(GLOBAL_SPACE, "10.0.0.0/16")
    addrs = run_threads(lambda: host_a.request_address(pa.pool_id), 4) + run_threads(
        lambda: host_b.request_address(pa.pool_id), 4
    )
    assert len(set(addrs)) == 8
    assert KV_PREFIX + GLOBAL_SPACE in kv.data
    assert not (tmp_path / "a" / STATE_FILE).exists()  # global state is not kept locally


def test_kvstore_cas_race_is_retried(tmp_path: Path, kv: DictKV) -> None:
    ipam = DefaultIpam(tmp_path, kvstore=kv)  # type: ignore[arg-type]
    kv.cas_failures = 3
    assert ipam.request_pool(GLOBAL_SPACE, "10.9.0.0/24").subnet == "10.9.0.0/24"
    kv.cas_failures = 1000
    with pytest.raises(Unavailable, match="concurrent"):
        ipam.request_pool(GLOBAL_SPACE, "10.9.1.0/24")
