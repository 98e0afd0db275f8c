"""overlay against the shared network-driver conformance suite, on one host.

The suite loads drivers without a KV store; ``OverlayEnv`` gives each loaded driver the
test's store and an exec-root under the test's tmp dir (where the network namespaces are
bind-mounted), and checks at the end that no namespace stayed mounted.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest
from overlay_testkv import make_kvstore

from pyd.drivers.network import JoinRequest, NetworkContext, NetworkDriver
from pyd.registry import Kind, PluginRegistry
from pyd.testing.network import NetEnv, NetworkDriverSuite


class OverlayEnv(NetEnv):
    kv: Any = None

    def load(
        self,
        name: str,
        settings: Mapping[str, object] | None = None,
        prefix: str | None = None,
        home: Path | None = None,
    ) -> Any:
        settings = {"exec-root": str(self.tmp / "exec"), **dict(settings or {})}
        ctx = NetworkContext(settings=settings, kvstore=self.kv, name_prefix=prefix or self.prefix)
        if home is not None:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
        return PluginRegistry().init_driver(Kind.NETWORK, name, home=home or self.home, context=ctx)

    def mounted_namespaces(self) -> list[str]:
        root = str(self.tmp / "exec")
        with open("/proc/self/mountinfo") as f:
            return [line.split()[4] for line in f if line.split()[4].startswith(root)]


class TestOverlay(NetworkDriverSuite):
    driver_name = "overlay"
    good_options = {"com.docker.network.driver.mtu": "1400"}
    bad_options = [
        {"com.docker.network.driver.mtu": "ten"},
        {"com.docker.network.driver.mtu": "20"},
        {"com.docker.network.driver.overlay.vxlanid_list": "0"},
        {"com.docker.network.driver.overlay.vxlanid_list": "16777216"},
        {"com.docker.network.driver.overlay.vxlanid_list": "4096,4097"},
        {"parent": "eth0"},
    ]

    def network_options(self, env: NetEnv) -> dict[str, str]:
        # A VNI of its own: another daemon on this host (other tests) may hold 4096 in the
        # host's namespace, where every VXLAN socket of this host lives.
        vni = str(random.randrange(1_000_000, 16_000_000))
        return {**self.good_options, "com.docker.network.driver.overlay.vxlanid_list": vni}

    @pytest.fixture
    def net_env(self, tmp_path: Path) -> Iterator[NetEnv]:
        if os.geteuid() != 0:
            pytest.skip("the network driver suite needs root")
        for tool in ("unshare", "nsenter", "busybox", "ip"):
            if shutil.which(tool) is None:
                pytest.skip(f"the network driver suite needs {tool}")
        env = OverlayEnv(tmp_path)
        env.kv = make_kvstore(tmp_path)
        try:
            yield env
        finally:
            env.close()
            env.kv.close()
            left = env.mounted_namespaces()
            for path in left:
                os.system(f"umount -l {path}")
            assert left == [], f"network namespaces left mounted: {left}"

    # Overlay networks give no default route: the engine adds a gateway bridge for that.
    def test_default_route_via_the_gateway(self, driver: NetworkDriver, net_env: NetEnv) -> None:
        net = self.make_network(net_env, driver)
        a = net_env.sandbox()
        ep = net_env.endpoint(net)
        res = driver.join(JoinRequest(net.network_id, ep.endpoint_id, str(a.path)))
        assert res.gateway == "" and res.mtu == 1400
        assert a.default_gateway() == ""
        assert a.links()["eth0"]["mtu"] == 1400
