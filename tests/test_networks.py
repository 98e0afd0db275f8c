"""The network service: records, IPAM use, validation, restore, container attach/detach and
the embedded DNS, with fake network drivers (the boundary) and the real default IPAM.

Tests that make sandboxes (network namespaces) need root; the rest run anywhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from pyd.config import DaemonConfig
from pyd.drivers.network import EndpointInfo, JoinResult, PortBinding
from pyd.engine import network_dns as dns
from pyd.engine.events import EventBus
from pyd.engine.network_attach import ContainerNetSpec, ContainerRef
from pyd.engine.network_sandbox import is_netns
from pyd.engine.networks import NetworkService, name_prefix_for
from pyd.errors import Conflict, DriverNotInstalled, Forbidden, InvalidOption, InvalidParameter, NotFound, PydError
from pyd.registry import PluginRegistry
from pyd.server.http import parse_filters

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root (network namespaces)")


class FakeDriver:
    """Records every call; can be told to fail. ``shares_host_netns`` for the host driver."""

    scope = "local"

    def __init__(self, name: str, shares_host_netns: bool = False) -> None:
        self.name = name
        self.shares_host_netns = shares_host_netns
        self.calls: list[tuple[str, Any]] = []
        self.fail: dict[str, Exception] = {}

    def _rec(self, what: str, arg: Any) -> None:
        self.calls.append((what, arg))
        if what in self.fail:
            raise self.fail[what]

    def parse_options(self, raw: Any) -> dict[str, object]:
        self._rec("parse_options", dict(raw))
        bad = [k for k in raw if not k.startswith(("ok.", "com.docker.network."))]
        if bad:
            raise InvalidOption(f'invalid -o for network driver "{self.name}": unknown option "{bad[0]}"; valid keys: ok.*')
        return dict(raw)

    def create_network(self, req: Any) -> None:
        self._rec("create_network", req)

    def restore_network(self, req: Any) -> None:
        self._rec("restore_network", req)

    def delete_network(self, network_id: str) -> None:
        self._rec("delete_network", network_id)

    def create_endpoint(self, req: Any) -> EndpointInfo:
        self._rec("create_endpoint", req)
        return EndpointInfo(mac_address="02:42:00:00:00:01" if req.address else "")

    def delete_endpoint(self, network_id: str, endpoint_id: str) -> None:
        self._rec("delete_endpoint", endpoint_id)

    def join(self, req: Any) -> JoinResult:
        self._rec("join", req)
        return JoinResult(gateway="" if self.name in ("host", "null") else "gw")

    def leave(self, network_id: str, endpoint_id: str) -> None:
        self._rec("leave", endpoint_id)

    def program_external_connectivity(self, network_id: str, endpoint_id: str, ports: list[PortBinding]) -> list[PortBinding]:
        self._rec("program_external_connectivity", ports)
        return [PortBinding(p.container_port, p.proto, p.host_ip, p.host_port or 40000, "x") for p in ports]

    def revoke_external_connectivity(self, network_id: str, endpoint_id: str) -> None:
        self._rec("revoke_external_connectivity", endpoint_id)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    # whatever a failing test left: network namespaces bind-mounted under its directory
    from pyd.engine.network_sandbox import remove_netns

    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mountpoint = line.split()[4]
        if mountpoint.startswith(str(tmp_path) + "/") and " nsfs " in line:
            remove_netns(mountpoint)


def make_service(root: Path, drivers: dict[str, FakeDriver] | None = None, **cfg: Any) -> tuple[NetworkService, dict[str, FakeDriver]]:
    config = DaemonConfig(
        data_root=str(root / "data"),
        exec_root=str(root / "exec"),
        default_address_pools=({"base": "10.199.0.0/16", "size": 24},),
        **cfg,
    )
    drivers = drivers if drivers is not None else {
        "bridge": FakeDriver("bridge"), "host": FakeDriver("host", shares_host_netns=True), "null": FakeDriver("null"),
    }
    svc = NetworkService(config=config, registry=PluginRegistry(), events=EventBus(), name_prefix="pyt")
    svc._drivers.update(drivers)  # the boundary: drivers are faked, IPAM is the real default one
    return svc, drivers


@pytest.fixture
def svc(root: Path) -> Iterator[tuple[NetworkService, dict[str, FakeDriver]]]:
    s, drivers = make_service(root)
    yield s, drivers
    run(_cleanup(s))


async def _cleanup(s: NetworkService) -> None:
    for cid in list(s.cnets):
        await s.forget_container(cid)
    await s.close()


def ipam_pools(root: Path) -> dict[str, Any]:
    path = root / "data" / "ipam" / "default" / "state.json"
    return json.loads(path.read_text())["pools"] if path.exists() else {}


# -- names and the default networks -----------------------------------------------------------


def test_name_prefix_follows_the_bridge_setting() -> None:
    assert name_prefix_for("") == "pyd"
    assert name_prefix_for("pyd0") == "pyd"
    assert name_prefix_for("pt1a2b0") == "pt1a2b"
    assert name_prefix_for("br-lan") == "pyd" and name_prefix_for("none") == "pyd"


def test_predefined_networks_at_start(svc: Any, root: Path) -> None:
    s, drivers = svc

    async def go() -> list[dict[str, Any]]:
        await s.start()
        return await s.list()

    nets = {n["Name"]: n for n in run(go())}
    assert set(nets) == {"bridge", "host", "none"}
    bridge = nets["bridge"]
    assert bridge["Driver"] == "bridge" and bridge["IPAM"]["Options"] is None
    assert bridge["Options"]["com.docker.network.bridge.default_bridge"] == "true"
    assert bridge["Options"]["com.docker.network.bridge.name"] == "pyt0"
    # the daemon's default-address-pools decide the default subnet, shown without gateway
    subnet = ipaddress.ip_network(bridge["IPAM"]["Config"][0]["Subnet"])
    assert subnet.subnet_of(ipaddress.ip_network("10.199.0.0/16")) and list(bridge["IPAM"]["Config"][0]) == ["Subnet"]
    assert nets["host"]["IPAM"]["Config"] == [] and nets["none"]["Driver"] == "null"
    assert "create_network" in drivers["host"].names() and "create_network" in drivers["null"].names()


def test_bip_and_fixed_cidr_shape_the_default_bridge(root: Path) -> None:
    s, drivers = make_service(root, bip="10.199.77.1/24", fixed_cidr="10.199.77.128/25", mtu=1400)

    async def go() -> dict[str, Any]:
        await s.start()
        doc = await s.inspect("bridge")
        await s.close()
        return doc

    doc = run(go())
    assert doc["IPAM"]["Config"] == [{"Subnet": "10.199.77.0/24", "IPRange": "10.199.77.128/25"}]
    req = next(a for w, a in drivers["bridge"].calls if w == "create_network")
    assert req.ipv4[0].gateway == "10.199.77.1/24" and req.options["com.docker.network.driver.mtu"] == "1400"


def test_bridge_none_disables_the_default_network(root: Path) -> None:
    s, _ = make_service(root, bridge="none")
    names = run(_names(s))
    assert names == ["host", "none"]


async def _names(s: NetworkService) -> list[str]:
    await s.start()
    names = [n["Name"] for n in await s.list()]
    await s.close()
    return names


# -- create / inspect / list / remove -----------------------------------------------------------


def test_create_inspect_remove_with_ipam(svc: Any, root: Path) -> None:
    s, drivers = svc

    async def go() -> None:
        out = await s.create({
            "Name": "appnet", "Driver": "bridge", "Labels": {"a": "b"}, "Options": {"ok.mtu": "1400"},
            "IPAM": {"Driver": "default", "Options": {}, "Config": [
                {"Subnet": "10.199.50.0/24", "Gateway": "10.199.50.254", "IPRange": "10.199.50.128/25"}]},
            "Internal": True,
        })
        assert len(out["Id"]) == 64 and out["Warning"] == ""
        doc = await s.inspect("appnet")
        assert doc["Id"] == out["Id"] and doc["Internal"] is True and doc["Labels"] == {"a": "b"}
        assert doc["IPAM"] == {"Driver": "default", "Options": {}, "Config": [
            {"Subnet": "10.199.50.0/24", "IPRange": "10.199.50.128/25", "Gateway": "10.199.50.254"}]}
        assert doc["Containers"] == {} and doc["Options"] == {"ok.mtu": "1400"} and doc["Scope"] == "local"
        assert (await s.inspect(out["Id"][:8]))["Name"] == "appnet"  # an ID prefix
        req = next(a for w, a in drivers["bridge"].calls if w == "create_network" and a.name == "appnet")
        assert req.internal and req.ipv4[0].gateway == "10.199.50.254/24" and req.ipv4[0].ip_range == "10.199.50.128/25"
        assert any("10.199.50.0/24" in pid for pid in ipam_pools(root))
        await s.remove("appnet")
        assert not any("10.199.50.0/24" in pid for pid in ipam_pools(root))  # pool released
        assert ("delete_network", out["Id"]) in drivers["bridge"].calls
        with pytest.raises(NotFound, match="network appnet not found"):
            await s.inspect("appnet")

    run(go())


def test_create_errors_change_nothing(svc: Any, root: Path) -> None:
    s, drivers = svc

    async def go() -> None:
        await s.start()
        before = ipam_pools(root)
        await s.create({"Name": "dup"})
        with pytest.raises(Conflict, match="network with name dup already exists"):
            await s.create({"Name": "dup"})
        for name in ("bridge", "host", "none", "default"):
            with pytest.raises(Forbidden, match=f"predefined {name} network"):
                await s.create({"Name": name})
        with pytest.raises(InvalidOption, match='unknown option "bogus"'):
            await s.create({"Name": "bad-opt", "Options": {"bogus": "1"}})
        with pytest.raises(DriverNotInstalled) as err:
            await s.create({"Name": "x", "Driver": "no-such-driver"})
        assert "available network drivers:" in str(err.value) and "bridge" in str(err.value)
        with pytest.raises(InvalidParameter, match="no matching subnet for gateway"):
            await s.create({"Name": "x", "IPAM": {"Config": [{"Subnet": "10.199.51.0/24", "Gateway": "10.199.52.1"}]}})
        with pytest.raises(InvalidParameter, match="invalid network name"):
            await s.create({"Name": "a/b"})
        await s.create({"Name": "fixed", "IPAM": {"Config": [{"Subnet": "10.199.53.0/24"}]}})
        with pytest.raises(Conflict, match="overlaps"):
            await s.create({"Name": "overlap", "IPAM": {"Config": [{"Subnet": "10.199.53.128/25"}]}})
        drivers["bridge"].fail["create_network"] = PydError("kernel says no")
        with pytest.raises(PydError, match="kernel says no"):
            await s.create({"Name": "broken", "IPAM": {"Config": [{"Subnet": "10.199.54.0/24"}]}})
        del drivers["bridge"].fail["create_network"]
        names = [n["Name"] for n in await s.list()]
        assert "broken" not in names and "bad-opt" not in names and "overlap" not in names
        pools = ipam_pools(root)
        assert not any("10.199.54.0/24" in p for p in pools)  # the failed create gave its pool back
        assert len(pools) == len(before) + 2  # dup and fixed
        assert not [w for w, a in drivers["bridge"].calls if w == "create_network" and a.name == "bad-opt"]

    run(go())


def test_list_filters(svc: Any) -> None:
    s, _ = svc

    async def go() -> None:
        a = (await s.create({"Name": "front", "Labels": {"tier": "web"}}))["Id"]
        await s.create({"Name": "back", "Labels": {"tier": "db", "x": ""}})

        async def names(raw: str) -> list[str]:
            return [n["Name"] for n in await s.list(parse_filters(raw))]

        assert await names('{"label":{"tier=web":true}}') == ["front"]  # the CLI's encoding
        assert await names('{"label":["tier"]}') == ["back", "front"]  # docker-py's
        assert await names('{"name":["fro"]}') == ["front"]
        assert await names(json.dumps({"id": [a[:10]]})) == ["front"]
        assert await names('{"type":["builtin"]}') == ["bridge", "host", "none"]
        assert await names('{"type":["custom"],"driver":["bridge"]}') == ["back", "front"]
        assert await names('{"dangling":["true"]}') == ["back", "front"]
        assert await names('{"scope":["swarm"]}') == []
        with pytest.raises(InvalidParameter, match="invalid filter 'nope'"):
            await s.list({"nope": ["1"]})
        with pytest.raises(InvalidParameter):
            await s.list({"type": ["weird"]})
        pruned = await s.prune({"label": ["tier=db"]})
        assert pruned == {"NetworksDeleted": ["back"]}
        assert (await s.prune())["NetworksDeleted"] == ["front"]
        assert (await s.prune())["NetworksDeleted"] is None
        with pytest.raises(Forbidden, match="pre-defined network"):
            await s.remove("bridge")

    run(go())


def test_records_survive_a_restart_and_are_restored_first(root: Path) -> None:
    s1, _ = make_service(root)

    async def first() -> str:
        nid = (await s1.create({"Name": "keep", "IPAM": {"Config": [{"Subnet": "10.199.60.0/24"}]}}))["Id"]
        await s1.close()
        return nid

    nid = run(first())
    s2, drivers = make_service(root)

    async def second() -> None:
        await s2.start()
        doc = await s2.inspect("keep")
        assert doc["Id"] == nid and doc["IPAM"]["Config"][0]["Subnet"] == "10.199.60.0/24"
        restored = [a.network_id for w, a in drivers["bridge"].calls if w == "restore_network"]
        assert nid in restored  # handed back to the driver, not created anew
        assert not [w for w, a in drivers["bridge"].calls if w == "create_network" and a.network_id == nid]
        await s2.close()

    run(second())
    assert any("10.199.60.0/24" in p for p in ipam_pools(root))


def test_a_network_whose_driver_fails_is_restored_as_unavailable(root: Path) -> None:
    s1, _ = make_service(root)
    run(_create_and_close(s1, "flaky"))
    drivers = {"bridge": FakeDriver("bridge"), "host": FakeDriver("host", True), "null": FakeDriver("null")}
    drivers["bridge"].fail["restore_network"] = PydError("bridge module missing")
    s2, _ = make_service(root, drivers)

    async def go() -> None:
        await s2.start()  # the daemon still starts
        assert (await s2.inspect("flaky"))["Name"] == "flaky"
        s2.register_container(ContainerNetSpec("c" * 64, "c1", network_mode="flaky"))
        with pytest.raises(PydError, match="unavailable: bridge module missing"):
            await s2.attach_container(ContainerNetSpec("c" * 64, "c1", network_mode="flaky"))
        await s2.forget_container("c" * 64)
        await s2.close()

    if os.geteuid() == 0:
        run(go())


async def _create_and_close(s: NetworkService, name: str) -> None:
    await s.create({"Name": name})
    await s.close()


def test_close_releases_kernel_objects_of_unused_networks(svc: Any) -> None:
    s, drivers = svc

    async def go() -> None:
        nid = (await s.create({"Name": "idle"}))["Id"]
        await s.close()
        assert ("delete_network", nid) in drivers["bridge"].calls

    run(go())


# -- containers -----------------------------------------------------------------------------


CID1, CID2, CID3 = "1" * 64, "2" * 64, "3" * 64


def test_register_checks_networks_and_modes(svc: Any) -> None:
    s, _ = svc

    async def go() -> None:
        await s.start()
        await s.create({"Name": "user"})
        with pytest.raises(NotFound, match="network nosuch not found"):
            s.register_container(ContainerNetSpec(CID1, "a", network_mode="nosuch"))
        with pytest.raises(InvalidParameter, match="network-scoped alias is supported only"):
            s.register_container(ContainerNetSpec(CID1, "a", endpoints_config={"default": {"Aliases": ["x"]}}))
        with pytest.raises(InvalidParameter, match="user specified IP address is supported on user defined networks only"):
            s.register_container(ContainerNetSpec(CID1, "a", network_mode="bridge",
                                                  endpoints_config={"bridge": {"IPAMConfig": {"IPv4Address": "10.199.0.9"}}}))
        with pytest.raises(InvalidParameter, match="user configured subnets"):
            s.register_container(ContainerNetSpec(CID1, "a", network_mode="user",
                                                  endpoints_config={"user": {"IPAMConfig": {"IPv4Address": "10.199.1.9"}}}))
        with pytest.raises(InvalidParameter, match="private \\(none\\) mode"):
            s.register_container(ContainerNetSpec(CID1, "a", network_mode="none", endpoints_config={"user": {}}))
        with pytest.raises(InvalidParameter, match="invalid port"):
            s.register_container(ContainerNetSpec(CID1, "a", port_bindings={"80/icmp": [{}]}))
        s.register_container(ContainerNetSpec(CID1, "a", network_mode="user", endpoints_config={"user": {"Aliases": ["web"]}}))
        settings = s.container_settings(CID1)
        entry = settings["Networks"]["user"]
        assert entry["Aliases"] == ["web", CID1[:12]] and entry["IPAddress"] == "" and settings["SandboxKey"] == ""

    run(go())


@needs_root
def test_attach_detach_releases_everything(svc: Any, root: Path) -> None:
    s, drivers = svc

    async def go() -> None:
        await s.start()
        nid = (await s.create({"Name": "user", "IPAM": {"Config": [{"Subnet": "10.199.70.0/24"}]}}))["Id"]
        spec = ContainerNetSpec(CID1, "web", network_mode="user",
                                endpoints_config={"user": {"IPAMConfig": {"IPv4Address": "10.199.70.77"}}},
                                port_bindings={"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
                                exposed_ports=["80/tcp", "443/tcp"], dns_search=["example.test"])
        s.register_container(spec)
        att = await s.attach_container(spec)
        path = att.netns_path
        assert path == str(root / "exec" / "netns" / CID1) and is_netns(path)
        assert att.ip == "10.199.70.77" and not att.host_network
        assert att.resolv_conf is not None and "nameserver 127.0.0.11" in att.resolv_conf
        assert "search example.test" in att.resolv_conf and "ndots:0" in att.resolv_conf
        join = next(a for w, a in drivers["bridge"].calls if w == "join")
        assert join.ifname == "eth0" and join.netns_path == path
        ns = att.settings
        assert ns["Networks"]["user"]["IPAddress"] == "10.199.70.77" and ns["Networks"]["user"]["Gateway"] == "10.199.70.1"
        assert ns["Ports"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "40000"}], "443/tcp": None}
        assert s.container_ports(CID1)[0] == {"IP": "127.0.0.1", "PrivatePort": 80, "PublicPort": 40000, "Type": "tcp"}
        doc = await s.inspect("user")
        assert doc["Containers"][CID1]["IPv4Address"] == "10.199.70.77/24" and doc["Containers"][CID1]["Name"] == "web"
        with pytest.raises(Forbidden, match="has active endpoints"):
            await s.remove("user")
        pool = next(p for p in ipam_pools(root) if "10.199.70.0/24" in p)
        assert "10.199.70.77" in ipam_pools(root)[pool]["allocated"]
        # connect a second network live: eth1
        await s.create({"Name": "second"})
        await s.connect("second", "web", {"Aliases": ["w2"]})
        joins = [a for w, a in drivers["bridge"].calls if w == "join"]
        assert joins[-1].ifname == "eth1"
        with pytest.raises(Forbidden, match="already exists in network second"):
            await s.connect("second", "web")
        await s.disconnect("second", "web")
        with pytest.raises(PydError, match="is not connected to network second"):
            await s.disconnect("second", "web")
        await s.detach_container(CID1)
        assert not os.path.exists(path)
        assert "10.199.70.77" not in ipam_pools(root)[pool]["allocated"]
        calls = drivers["bridge"].names()
        assert calls.index("revoke_external_connectivity") < calls.index("leave", calls.index("revoke_external_connectivity"))
        assert not s.endpoints and not list((root / "data" / "network" / "files" / "endpoints").iterdir())
        await s.remove("user")
        await s.remove("second")
        acts = [(e.action, e.actor_id, e.attributes.get("container")) for _, e in s.events.history if e.type == "network"]
        assert ("create", nid, None) in acts and ("connect", nid, CID1) in acts
        assert ("disconnect", nid, CID1) in acts and ("destroy", nid, None) in acts

    run(go())


@needs_root
def test_a_failed_publish_undoes_the_start(svc: Any, root: Path) -> None:
    s, drivers = svc
    drivers["bridge"].fail["program_external_connectivity"] = Conflict("host port 127.0.0.1:8080/tcp is already in use")

    async def go() -> None:
        await s.start()
        spec = ContainerNetSpec(CID2, "pub", port_bindings={"80/tcp": [{"HostPort": "8080"}]})
        s.register_container(spec)
        with pytest.raises(Conflict, match="already in use"):
            await s.attach_container(spec)
        assert not os.path.exists(root / "exec" / "netns" / CID2)
        assert not s.endpoints
        bridge = next(p for p in ipam_pools(root).values() if p["subnet"].startswith("10.199."))
        assert bridge["allocated"] == [next(iter(bridge["allocated"]))]  # only the gateway
        assert "delete_endpoint" in drivers["bridge"].names()

    run(go())


@needs_root
def test_modes_none_host_and_container(svc: Any) -> None:
    s, drivers = svc

    async def go() -> None:
        await s.start()
        none = await s.attach_container(ContainerNetSpec(CID1, "n", network_mode="none"))
        assert none.netns_path and is_netns(none.netns_path) and none.ip == "" and none.resolv_conf is None
        assert next(a for w, a in drivers["null"].calls if w == "join").netns_path == none.netns_path
        host = await s.attach_container(ContainerNetSpec(CID2, "h", network_mode="host"))
        assert host.netns_path is None and host.host_network
        assert next(a for w, a in drivers["host"].calls if w == "join").netns_path == ""
        assert (await s.inspect("host"))["Containers"][CID2]["Name"] == "h"
        shared = await s.attach_container(ContainerNetSpec(CID3, "s", network_mode=f"container:{CID1}"))
        assert shared.netns_path is None and not shared.host_network
        with pytest.raises(InvalidParameter, match="private \\(none\\) mode"):
            await s.connect("bridge", "n")
        with pytest.raises(InvalidParameter, match="host network"):
            await s.connect("bridge", "h")
        await s.forget_container(CID1)
        assert not os.path.exists(none.netns_path)

    run(go())


@needs_root
def test_reconcile_and_restart_release_dead_sandboxes(root: Path) -> None:
    s1, _ = make_service(root)

    async def first() -> str:
        await s1.start()
        att = await s1.attach_container(ContainerNetSpec(CID1, "a"))
        await s1.attach_container(ContainerNetSpec(CID2, "b"))
        for d in list(s1._dns):
            await s1._stop_dns(d)
        return att.netns_path or ""

    path = run(first())  # the daemon "crashed": sandboxes and endpoints are still recorded
    # ... and a start it did not record: a namespace nobody knows
    from pyd.engine.network_sandbox import create_netns

    stray = str(root / "exec" / "netns" / ("9" * 64))
    create_netns(stray)
    s2, _ = make_service(root)

    async def second() -> None:
        await s2.start()
        assert not os.path.exists(stray)  # swept
        assert len(s2.endpoints) == 2  # live-restore: kept until the containers are known
        await s2.reconcile([CID2])  # CID1 died while the daemon was down
        assert not os.path.exists(path) and [e.container_id for e in s2.endpoints.values()] == [CID2]
        await s2.forget_container(CID2)
        await s2.forget_container(CID1)
        await s2.close()

    run(second())
    pools = ipam_pools(root)
    assert all(len(p["allocated"]) == 1 for p in pools.values())  # only gateways are left


# -- the embedded DNS ---------------------------------------------------------------------------


def query(name: str, qtype: int = dns.TYPE_A, qid: int = 0x1234) -> bytes:
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + dns.encode_name(name) + struct.pack("!HH", qtype, 1)


def answers(reply: bytes) -> tuple[int, list[str]]:
    rcode = struct.unpack("!H", reply[2:4])[0] & 0xF
    count = struct.unpack("!H", reply[6:8])[0]
    _, off = dns._read_name(reply, 12)
    off += 4
    out = []
    for _ in range(count):
        _, off = dns._read_name(reply, off)
        rtype, _, _, length = struct.unpack("!HHIH", reply[off:off + 10])
        data = reply[off + 10: off + 10 + length]
        out.append(str(ipaddress.IPv4Address(data)) if rtype == dns.TYPE_A else dns._read_name(reply, off + 10)[0])
        off += 10 + length
    return rcode, out


def test_dns_codec_and_local_answers() -> None:
    names = {"web": ["10.199.1.2", "10.199.1.3"]}
    r = dns.Resolver(lambda n: names.get(n, []), lambda ip: "web.net" if ip == "10.199.1.2" else None, lambda: [])
    reply, _ = r.answer_locally(query("WEB."))
    assert reply is not None and reply[:2] == b"\x12\x34" and answers(reply) == (0, ["10.199.1.2", "10.199.1.3"])
    reply, _ = r.answer_locally(query("web", dns.TYPE_AAAA))
    assert reply is not None and answers(reply) == (0, [])  # a known name: no IPv6, no error
    reply, _ = r.answer_locally(query("2.1.199.10.in-addr.arpa", dns.TYPE_PTR))
    assert reply is not None and answers(reply) == (0, ["web.net"])
    reply, q = r.answer_locally(query("elsewhere.test"))
    assert reply is None and q is not None and q.question.name == "elsewhere.test"
    assert asyncio.run(r.resolve(query("elsewhere.test"))) is not None  # nobody to ask: REFUSED
    with pytest.raises(dns.DNSFormatError):
        dns.parse_query(b"\x00\x01\x00")


def test_dns_forwards_unknown_names_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", 0))
    upstream.settimeout(5)
    monkeypatch.setattr(dns, "DNS_PORT", upstream.getsockname()[1])
    seen: list[str] = []

    def serve() -> None:  # a tiny upstream on loopback: elsewhere.test -> 10.199.9.9
        data, addr = upstream.recvfrom(512)
        q = dns.parse_query(data)
        seen.append(q.question.name)
        upstream.sendto(dns.build_reply(data, q, 0, [(dns.TYPE_A, ipaddress.IPv4Address("10.199.9.9").packed)]), addr)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    r = dns.Resolver(lambda n: [], lambda ip: None, lambda: ["127.0.0.1"])
    reply = asyncio.run(r.resolve(query("elsewhere.test")))
    t.join(5)
    upstream.close()
    assert seen == ["elsewhere.test"] and reply is not None and answers(reply) == (0, ["10.199.9.9"])


@needs_root
def test_dns_names_are_scoped_to_shared_user_networks(svc: Any) -> None:
    s, _ = svc

    async def go() -> None:
        await s.start()
        await s.create({"Name": "a-net"})
        await s.create({"Name": "b-net"})
        w = await s.attach_container(ContainerNetSpec(CID1, "web", network_mode="a-net",
                                                      endpoints_config={"a-net": {"Aliases": ["www"]}}))
        c = await s.attach_container(ContainerNetSpec(CID2, "client", network_mode="a-net"))
        o = await s.attach_container(ContainerNetSpec(CID3, "other", network_mode="b-net"))
        d = await s.attach_container(ContainerNetSpec("4" * 64, "default-one"))
        assert s.dns_lookup(CID2, "web") == [w.ip] and s.dns_lookup(CID2, "www") == [w.ip]
        assert s.dns_lookup(CID2, CID1[:12]) == [w.ip] and s.dns_lookup(CID2, "web.a-net") == [w.ip]
        assert s.dns_reverse(CID2, w.ip) == "web.a-net"
        assert s.dns_lookup(CID3, "web") == [] and s.dns_lookup(CID2, "other") == []
        assert d.resolv_conf is None and "4" * 64 not in s._dns  # default bridge: no embedded DNS
        assert CID2 in s._dns and CID3 in s._dns
        assert o.ip and c.ip
        await _cleanup(s)  # the DNS servers live on this loop

    run(go())


def test_connect_lookup_uses_the_container_service(svc: Any) -> None:
    s, _ = svc
    looked: list[str] = []

    def lookup(ref: str) -> ContainerRef:
        looked.append(ref)
        raise NotFound(f"No such container: {ref}")

    s.container_lookup = lookup

    async def go() -> None:
        await s.start()
        with pytest.raises(NotFound, match="No such container: ghost"):
            await s.connect("bridge", "ghost")

    run(go())
    assert looked == ["ghost"]


# -- the CLI's request building -------------------------------------------------------------------


def test_cli_pairs_ranges_gateways_and_aux_addresses_with_their_subnets() -> None:
    import click

    from pyd.cli.networks import NetworkRow, ipam_configs

    got = ipam_configs(("10.199.1.0/24", "10.199.2.0/24"), ("10.199.2.128/25",), ("10.199.1.254",), {"router": "10.199.2.1"})
    assert got == [
        {"Subnet": "10.199.1.0/24", "Gateway": "10.199.1.254"},
        {"Subnet": "10.199.2.0/24", "IPRange": "10.199.2.128/25", "AuxiliaryAddresses": {"router": "10.199.2.1"}},
    ]
    with pytest.raises(click.UsageError, match="no matching subnet for gateway 10.199.3.1"):
        ipam_configs(("10.199.1.0/24",), (), ("10.199.3.1",), {})
    with pytest.raises(click.UsageError, match="overlapping"):
        ipam_configs(("10.199.0.0/16", "10.199.1.0/24"), (), (), {})
    row = NetworkRow({"Id": "ab" * 32, "Name": "n", "Driver": "bridge", "Scope": "local", "Labels": {"b": "2", "a": "1"},
                      "Created": "2026-11-28T07:13:40.039493966Z"}, no_trunc=False)
    assert (row.ID, row.Labels, row.Label("a")) == ("ab" * 6, "a=1,b=2", "1")
    assert row.CreatedAt.startswith("2026-11-28")


def test_a_prepared_registration_is_written_then_committed(root: Path) -> None:
    """At create the container's network record is written (durably) in the create's worker
    thread; the service knows the container only after the commit; a failed create discards
    the record; a restarted service loads what was written."""
    s1, _ = make_service(root)
    records = root / "data" / "network" / "files" / "containers"

    async def first() -> None:
        await s1.start()
        await s1.create({"Name": "user", "IPAM": {"Config": [{"Subnet": "10.199.71.0/24"}]}})
        with pytest.raises(NotFound):
            s1.prepare_registration(ContainerNetSpec(CID1, "a", network_mode="nosuch"))
        reg = s1.prepare_registration(
            ContainerNetSpec(CID1, "web", network_mode="user", endpoints_config={"user": {"Aliases": ["w"]}})
        )
        assert CID1 not in s1.cnets and not (records / f"{CID1}.json").exists()
        await asyncio.to_thread(reg.write)
        assert (records / f"{CID1}.json").exists() and CID1 not in s1.cnets
        reg.commit()
        assert "w" in s1.cnets[CID1].attachments[0].aliases
        failed = s1.prepare_registration(ContainerNetSpec(CID2, "x"))
        failed.write()
        failed.discard()
        assert not (records / f"{CID2}.json").exists() and CID2 not in s1.cnets
        await s1.close()

    run(first())
    s2, _ = make_service(root)

    async def second() -> None:
        await s2.start()
        assert s2.cnets[CID1].name == "web" and "w" in s2.cnets[CID1].attachments[0].aliases
        assert CID2 not in s2.cnets
        await _cleanup(s2)

    run(second())
