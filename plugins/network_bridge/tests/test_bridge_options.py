"""Unit tests of the bridge driver's option parsing and helpers (no root, no kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyd.drivers.network import mac_from_ipv4
from pyd.errors import InvalidOption

from pyd_network_bridge import options
from pyd_network_bridge.driver import enable_ip_forward
from pyd_network_bridge.firewall import _parse_view


def test_parse_options_types_values():
    got = options.parse_options(
        {
            options.MTU: "1450",
            options.ENABLE_ICC: "false",
            options.ENABLE_IP_MASQUERADE: "1",
            options.HOST_BINDING_IPV4: "127.0.0.1",
            options.BRIDGE_NAME: "br-test.1",
        }
    )
    assert got == {
        options.MTU: 1450,
        options.ENABLE_ICC: False,
        options.ENABLE_IP_MASQUERADE: True,
        options.HOST_BINDING_IPV4: "127.0.0.1",
        options.BRIDGE_NAME: "br-test.1",
    }


@pytest.mark.parametrize(
    "key,value,says",
    [
        (options.MTU, "9x", "not an integer"),
        (options.MTU, "70000", "68 to 65535"),
        (options.BRIDGE_NAME, "x" * 16, "1 to 15"),
        (options.BRIDGE_NAME, "a b", "interface name"),
        (options.HOST_BINDING_IPV4, "::1", "IPv4"),
        (options.ENABLE_ICC, "maybe", "boolean"),
    ],
)
def test_bad_values_name_key_value_and_what_is_accepted(key, value, says):
    with pytest.raises(InvalidOption) as err:
        options.parse_options({key: value})
    msg = str(err.value)
    assert key in msg and value in msg and says in msg and "valid keys" in msg, msg


def test_unknown_key_lists_valid_keys():
    with pytest.raises(InvalidOption) as err:
        options.parse_options({"com.docker.network.bridge.nmae": "x"})
    msg = str(err.value)
    assert '"bridge"' in msg and options.BRIDGE_NAME in msg and options.MTU in msg


def test_coerce_accepts_parsed_and_raw_values():
    assert options.coerce_options({options.MTU: "1400", options.ENABLE_ICC: False}) == {
        options.MTU: 1400,
        options.ENABLE_ICC: False,
    }
    with pytest.raises(InvalidOption):
        options.coerce_options({"nope": 1})


def test_settings_defaults_and_errors():
    s = options.Settings.from_context({}, "pyd")
    assert (s.bridge, s.mtu, s.icc, s.ip_masq, s.ip, s.iptables, s.ip_forward) == (
        "pyd0", 1500, True, True, "", True, True
    )
    s = options.Settings.from_context({"bridge": "docker0", "mtu": 1400, "icc": "false", "iptables": False}, "pyd")
    assert (s.bridge, s.mtu, s.icc, s.iptables) == ("docker0", 1400, False, False)
    with pytest.raises(InvalidOption) as err:
        options.Settings.from_context({"mtu": "big"}, "pyd")
    assert 'mtu="big"' in str(err.value)


def test_docker_mac():
    assert mac_from_ipv4("172.17.0.2/16") == "02:42:ac:11:00:02"
    assert mac_from_ipv4("10.199.3.254") == "02:42:0a:c7:03:fe"


def test_enable_ip_forward_writes_only_when_off(tmp_path: Path):
    f = tmp_path / "net/ipv4/ip_forward"
    f.parent.mkdir(parents=True)
    f.write_text("0\n")
    assert enable_ip_forward(tmp_path) is True
    assert f.read_text().strip() == "1"
    assert enable_ip_forward(tmp_path) is False


def test_parse_table_view():
    doc = {
        "nftables": [
            {"metainfo": {}},
            {"table": {"family": "ip", "name": "pyd"}},
            {"set": {"name": "bridges", "elem": ["pyd0", "pyd-1"]}},
            {"map": {"name": "fwd_in", "elem": [["pyd0", {"jump": {"target": "n-abc-in"}}]]}},
            {"map": {"name": "post_out"}},
            {"chain": {"name": "n-abc-in"}},
            {"rule": {"chain": "published", "handle": 7, "comment": "abc e1"}},
            {"rule": {"chain": "forward", "handle": 8}},
        ]
    }
    v = _parse_view(doc)
    assert v.bridges == {"pyd0", "pyd-1"}
    assert v.maps == {"fwd_in": {"pyd0": "n-abc-in"}, "post_out": {}}
    assert v.chains == {"n-abc-in"} and v.published == [(7, "abc e1")]
