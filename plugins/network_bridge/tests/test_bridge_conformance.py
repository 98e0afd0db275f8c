"""bridge against the shared network-driver conformance suite."""

from __future__ import annotations

from pyd.testing.network import NetworkDriverSuite


class TestBridge(NetworkDriverSuite):
    driver_name = "bridge"
    good_options = {
        "com.docker.network.driver.mtu": "1400",
        "com.docker.network.bridge.enable_icc": "true",
        "com.docker.network.bridge.enable_ip_masquerade": "true",
        "com.docker.network.bridge.host_binding_ipv4": "127.0.0.1",
    }
    bad_options = [
        {"com.docker.network.driver.mtu": "ten"},
        {"com.docker.network.driver.mtu": "20"},
        {"com.docker.network.bridge.enable_icc": "maybe"},
        {"com.docker.network.bridge.host_binding_ipv4": "localhost"},
        {"com.docker.network.bridge.name": "a-name-far-too-long"},
        {"com.docker.network.bridge.name": "bad/name"},
        {"parent": "eth0"},
    ]


class TestInternalBridge(TestBridge):
    create_args = {"internal": True}
