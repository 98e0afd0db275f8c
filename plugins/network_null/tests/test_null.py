"""The null network driver (Docker's "none" network): only lo in the sandbox."""

from __future__ import annotations

import os
import secrets

import pytest

from pyd.drivers.network import EndpointRequest, JoinRequest, NetworkCreateRequest
from pyd.errors import Conflict, NotFound
from pyd.testing.network import NetworkDriverBasicSuite


class TestNull(NetworkDriverBasicSuite):
    driver_name = "null"
    good_options = {}
    bad_options = [{"com.docker.network.driver.mtu": "1500"}]

    @pytest.mark.integration
    def test_join_gives_only_lo_up(self, driver, net_env):
        if os.geteuid() != 0:
            pytest.skip("needs root")
        sb = net_env.sandbox()
        assert "UP" not in sb.links()["lo"]["flags"]  # a new namespace
        nid, eid = secrets.token_hex(32), secrets.token_hex(32)
        driver.create_network(NetworkCreateRequest(nid, "none", {}))
        driver.create_endpoint(EndpointRequest(nid, eid, ""))
        assert driver.join(JoinRequest(nid, eid, str(sb.path))).gateway == ""
        links = sb.links()
        assert sorted(links) == ["lo"] and "UP" in links["lo"]["flags"]
        assert sb.ping("127.0.0.1")
        assert sb.routes() == []
        driver.leave(nid, eid)
        driver.delete_endpoint(nid, eid)
        driver.delete_network(nid)
        with pytest.raises(NotFound):
            driver.join(JoinRequest(nid, eid, str(net_env.tmp / "no-such-netns")))

    def test_only_one_null_network(self, driver):
        driver.create_network(NetworkCreateRequest(secrets.token_hex(32), "none", {}))
        with pytest.raises(Conflict):
            driver.create_network(NetworkCreateRequest(secrets.token_hex(32), "none2", {}))
