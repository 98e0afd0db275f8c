"""The host network driver: the shared loading/option checks and its no-sandbox contract."""

from __future__ import annotations

import os
import secrets

import pytest

from pyd.drivers.network import EndpointRequest, JoinRequest, NetworkCreateRequest, PortBinding
from pyd.errors import Conflict
from pyd.testing.network import NetworkDriverBasicSuite


class TestHost(NetworkDriverBasicSuite):
    driver_name = "host"
    good_options = {}
    bad_options = [{"com.docker.network.driver.mtu": "1500"}, {"parent": "eth0"}]

    def test_shares_the_host_namespace_and_join_changes_nothing(self, driver):
        assert driver.shares_host_netns is True
        before = sorted(os.listdir("/sys/class/net"))
        nid, eid = secrets.token_hex(32), secrets.token_hex(32)
        driver.create_network(NetworkCreateRequest(nid, "host", {}))
        assert driver.create_endpoint(EndpointRequest(nid, eid, "")).mac_address == ""
        res = driver.join(JoinRequest(nid, eid, ""))
        assert res.gateway == ""
        assert driver.program_external_connectivity(nid, eid, [PortBinding(80, host_port=8080)]) == []
        driver.revoke_external_connectivity(nid, eid)
        driver.leave(nid, eid)
        driver.delete_endpoint(nid, eid)
        driver.delete_network(nid)
        driver.delete_network(nid)
        assert sorted(os.listdir("/sys/class/net")) == before

    def test_only_one_host_network(self, driver):
        first = NetworkCreateRequest(secrets.token_hex(32), "host", {})
        driver.create_network(first)
        driver.create_network(first)  # a retry is fine
        with pytest.raises(Conflict) as err:
            driver.create_network(NetworkCreateRequest(secrets.token_hex(32), "host2", {}))
        assert "only one instance of the host network" in str(err.value)
        driver.delete_network(first.network_id)
        driver.create_network(NetworkCreateRequest(secrets.token_hex(32), "host", {}))
