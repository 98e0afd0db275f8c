"""Conformance suite for IPAM drivers (``pyd.drivers.ipam.IpamDriver``).

Subclass ``IpamSuite`` in a test module and set ``driver_name`` (the entry-point name)::

    from pyd.testing.ipam import IpamSuite

    class TestMyIpam(IpamSuite):
        driver_name = "my-ipam"

Every check loads the driver the way the daemon does,
``PluginRegistry().init_driver(Kind.IPAM, name, home=..., kvstore=None)``, so the entry point
(or core plugin) itself is under test. A "restart" is a new registry over the same home.
The suite reserves subnets under ``base_subnet`` (a /16 of private space): pick another if
your driver shares state with something that already uses it.
"""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from pyd.drivers.ipam import IpamDriver
from pyd.errors import Conflict, InvalidParameter, NotFound, Unavailable
from pyd.registry import Kind, PluginRegistry

GATEWAY_OPTS = {"RequestAddressType": "com.docker.network.gateway"}


class IpamSuite:
    """Checks every IPAM driver must pass. Override the attributes, not the tests."""

    driver_name: str = ""
    address_space: str = "LocalDefault"
    # A /16 the suite carves its test subnets from.
    base_subnet: str = "10.213.0.0/16"
    # Whether request_pool without a subnet chooses one (Docker's default driver does).
    supports_auto_pool: bool = True
    # Whether the default gateway is the subnet's first host address (Docker's convention).
    gateway_is_first_host: bool = True

    # -- helpers --------------------------------------------------------------------------

    def new_driver(self, home: Path) -> IpamDriver:
        """A driver loaded through a fresh registry (a new daemon) over ``home``."""
        assert self.driver_name, f"{type(self).__name__}.driver_name is not set"
        return PluginRegistry().init_driver(Kind.IPAM, self.driver_name, home=home, kvstore=None)

    def subnet(self, index: int, prefix: int = 24) -> str:
        """The ``index``-th subnet of size ``prefix`` inside ``base_subnet``."""
        base = ipaddress.ip_network(self.base_subnet)
        for i, net in enumerate(base.subnets(new_prefix=prefix)):
            if i == index:
                return str(net)
        raise ValueError(f"{self.base_subnet} has no subnet #{index} of /{prefix}")

    @staticmethod
    def ip(cidr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_interface(cidr).ip

    @pytest.fixture
    def ipam(self, pyd_home: Path) -> IpamDriver:
        return self.new_driver(pyd_home)

    # -- loading --------------------------------------------------------------------------

    def test_entry_point_resolves(self, ipam: IpamDriver) -> None:
        assert ipam.name == self.driver_name
        for method in ("request_pool", "release_pool", "request_address", "release_address"):
            assert callable(getattr(ipam, method, None)), f"driver has no {method}()"

    def test_init_hook_ignores_other_names(self, pyd_registry: PluginRegistry, pyd_home: Path) -> None:
        module = pyd_registry.load(Kind.IPAM, self.driver_name).module
        other = f"not-{self.driver_name}"
        assert module.pyd_ipam_init(name=other, home=pyd_home, kvstore=None) is None

    # -- pools ----------------------------------------------------------------------------

    def test_request_and_release_pool(self, ipam: IpamDriver) -> None:
        subnet = self.subnet(0)
        pool = ipam.request_pool(self.address_space, subnet)
        assert ipaddress.ip_network(pool.subnet) == ipaddress.ip_network(subnet)
        assert pool.pool_id
        ipam.release_pool(pool.pool_id)
        again = ipam.request_pool(self.address_space, subnet)  # free again after release
        assert ipaddress.ip_network(again.subnet) == ipaddress.ip_network(subnet)

    def test_overlapping_pool_is_refused(self, ipam: IpamDriver) -> None:
        wide = self.subnet(1, prefix=20)
        ipam.request_pool(self.address_space, wide)
        inside = str(next(ipaddress.ip_network(wide).subnets(new_prefix=24)))
        for clash in (wide, inside, self.base_subnet):
            with pytest.raises(Conflict) as err:
                ipam.request_pool(self.address_space, clash)
            assert str(ipaddress.ip_network(wide)) in str(err.value) or clash in str(err.value)
        ipam.request_pool(self.address_space, self.subnet(2, prefix=20))  # a neighbour is fine

    def test_chosen_pools_do_not_overlap(self, ipam: IpamDriver) -> None:
        if not self.supports_auto_pool:
            pytest.skip("driver does not choose subnets")
        nets = [ipaddress.ip_network(ipam.request_pool(self.address_space).subnet) for _ in range(3)]
        for i, a in enumerate(nets):
            for b in nets[i + 1 :]:
                assert not a.overlaps(b), f"{a} and {b} were both handed out"  # type: ignore[arg-type]

    # -- addresses ------------------------------------------------------------------------

    def test_addresses_are_unique_and_inside_the_pool(self, ipam: IpamDriver) -> None:
        net = ipaddress.ip_network(self.subnet(3, prefix=28))
        pool = ipam.request_pool(self.address_space, str(net))
        got = [ipam.request_address(pool.pool_id) for _ in range(14)]  # a /28 has 14 hosts
        ips = [self.ip(a) for a in got]
        assert len(set(ips)) == 14
        for cidr, ip in zip(got, ips):
            assert ip in net
            assert ip not in (net.network_address, net.broadcast_address)
            assert ipaddress.ip_interface(cidr).network.prefixlen == net.prefixlen, cidr

    def test_concurrent_requests_never_share_an_address(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(self.address_space, self.subnet(4))
        batches = run_threads(lambda: [ipam.request_address(pool.pool_id) for _ in range(25)], 8)
        got = [a for batch in batches for a in batch]
        assert len(got) == 200
        assert len({self.ip(a) for a in got}) == 200, "an address was handed out twice"

    def test_exhausted_pool_is_unavailable(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(self.address_space, self.subnet(5, prefix=29))
        got = [ipam.request_address(pool.pool_id) for _ in range(6)]
        with pytest.raises(Unavailable):
            ipam.request_address(pool.pool_id)
        ipam.release_address(pool.pool_id, got[2])
        assert self.ip(ipam.request_address(pool.pool_id)) == self.ip(got[2])

    def test_specific_address(self, ipam: IpamDriver) -> None:
        net = ipaddress.ip_network(self.subnet(6))
        pool = ipam.request_pool(self.address_space, str(net))
        want = net.network_address + 77
        assert self.ip(ipam.request_address(pool.pool_id, str(want))) == want
        with pytest.raises(Conflict):
            ipam.request_address(pool.pool_id, str(want))
        with pytest.raises(InvalidParameter):
            ipam.request_address(pool.pool_id, str(net.network_address + 256))  # outside
        for _ in range(10):  # dynamic allocation steps around it
            assert self.ip(ipam.request_address(pool.pool_id)) != want
        ipam.release_address(pool.pool_id, f"{want}/{net.prefixlen}")
        ipam.release_address(pool.pool_id, str(want))  # releasing twice is not an error
        assert self.ip(ipam.request_address(pool.pool_id, str(want))) == want

    def test_unknown_pool_is_not_found(self, ipam: IpamDriver) -> None:
        with pytest.raises(NotFound):
            ipam.request_address(f"{self.address_space}/192.0.2.0/24")

    def test_ip_range_is_honoured(self, ipam: IpamDriver) -> None:
        net = ipaddress.ip_network(self.subnet(7))
        rng = ipaddress.ip_network(f"{net.network_address + 32}/28")
        pool = ipam.request_pool(self.address_space, str(net), str(rng))
        got = [self.ip(ipam.request_address(pool.pool_id)) for _ in range(16)]
        assert all(ip in rng for ip in got), got
        assert len(set(got)) == 16
        with pytest.raises(Unavailable):
            ipam.request_address(pool.pool_id)  # the range is full, the subnet is not
        static = net.network_address + 200  # a static address outside the range is allowed
        assert self.ip(ipam.request_address(pool.pool_id, str(static))) == static

    def test_ip_range_outside_subnet_is_refused(self, ipam: IpamDriver) -> None:
        with pytest.raises(InvalidParameter):
            ipam.request_pool(self.address_space, self.subnet(8), self.subnet(9, prefix=28))

    def test_gateway(self, ipam: IpamDriver) -> None:
        net = ipaddress.ip_network(self.subnet(10))
        rng = ipaddress.ip_network(f"{net.network_address + 128}/25")
        pool = ipam.request_pool(self.address_space, str(net), str(rng))
        gw = self.ip(ipam.request_address(pool.pool_id, options=GATEWAY_OPTS))
        assert gw in net
        if self.gateway_is_first_host:
            assert gw == net.network_address + 1
        others = {self.ip(ipam.request_address(pool.pool_id)) for _ in range(20)}
        assert gw not in others
        # An explicit gateway is an ordinary specific request.
        pool2 = ipam.request_pool(self.address_space, self.subnet(11))
        want = ipaddress.ip_network(pool2.subnet).network_address + 254
        assert self.ip(ipam.request_address(pool2.pool_id, str(want), GATEWAY_OPTS)) == want

    # -- persistence ----------------------------------------------------------------------

    def test_state_survives_a_restart(self, pyd_home: Path) -> None:
        first = self.new_driver(pyd_home)
        pool = first.request_pool(self.address_space, self.subnet(12))
        taken = {self.ip(first.request_address(pool.pool_id)) for _ in range(5)}
        released = self.ip(first.request_address(pool.pool_id))
        first.release_address(pool.pool_id, str(released))
        gone = first.request_pool(self.address_space, self.subnet(13))
        first.release_pool(gone.pool_id)

        second = self.new_driver(pyd_home)  # a new registry: what a restarted daemon gets
        assert second is not first
        with pytest.raises(Conflict):
            second.request_pool(self.address_space, self.subnet(12))
        for ip in taken:
            with pytest.raises(Conflict):
                second.request_address(pool.pool_id, str(ip))
        second.request_address(pool.pool_id, str(released))  # free before the restart: still free
        more = {self.ip(second.request_address(pool.pool_id)) for _ in range(5)}
        assert not more & (taken | {released})
        second.request_pool(self.address_space, self.subnet(13))  # released pool stays released


def run_threads(fn: Callable[[], Any], n: int) -> list[Any]:
    """Run ``fn`` in ``n`` threads at once; return results, re-raising the first error."""
    results: list[Any] = [None] * n
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return results

