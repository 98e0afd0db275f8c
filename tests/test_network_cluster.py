"""Global-scope networks across daemons: two network services share one KV store.

The boundary is faked twice: network drivers record their calls (as in test_networks.py)
and the KV store is an in-memory one with the protocol's semantics (revisions, CAS, leases,
blocking watch). The real stores run their own conformance suite (pyd.testing.kvstore) and
the multi-host integration tests drive real daemons, etcd and VXLAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from pyd.drivers.kvstore import KVPair, WatchEvent
from pyd.drivers.network import JoinResult
from pyd.engine.network_attach import ContainerNetSpec
from pyd.engine.networks import NetworkService
from pyd.errors import Conflict, Forbidden, NotFound, Unavailable

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: share test_networks' fakes
from test_networks import FakeDriver, make_service, root  # noqa: E402,F401  (root is a fixture)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root (network namespaces)")


class MemoryKV:
    """A KVStore in memory: one store-wide revision, leases without timers (``expire``)."""

    name = "memory"

    def __init__(self) -> None:
        self.data: dict[str, KVPair] = {}
        self.lease_of: dict[str, int] = {}
        self.leases: set[int] = set()
        self.rev = 0
        self.log: list[WatchEvent] = []
        self.down = False
        self.closed = False
        self.cond = threading.Condition()

    def _check(self) -> None:
        if self.down:
            raise Unavailable("cluster store memory:// is unreachable: connection refused")

    def _event(self, kind: str, pair: KVPair) -> None:
        self.log.append(WatchEvent(kind, pair))
        self.cond.notify_all()

    def get(self, key: str) -> KVPair | None:
        self._check()
        return self.data.get(key)

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self._check()
        with self.cond:
            self.rev += 1
            self.data[key] = KVPair(key, value, self.rev)
            if lease:
                self.lease_of[key] = lease
            self._event("put", self.data[key])
            return self.rev

    def delete(self, key: str) -> bool:
        self._check()
        with self.cond:
            pair = self.data.pop(key, None)
            self.lease_of.pop(key, None)
            if pair is None:
                return False
            self.rev += 1
            self._event("delete", KVPair(key, b"", self.rev))
            return True

    def list(self, prefix: str) -> list[KVPair]:
        self._check()
        return [p for k, p in sorted(self.data.items()) if k.startswith(prefix)]

    def delete_prefix(self, prefix: str) -> int:
        return sum(self.delete(p.key) for p in self.list(prefix))

    def compare_and_swap(self, key: str, expected_revision: int, value: bytes, lease: int = 0) -> bool:
        self._check()
        with self.cond:
            pair = self.data.get(key)
            if (pair.revision if pair else 0) != expected_revision:
                return False
            self.put(key, value, lease)
            return True

    def compare_and_delete(self, key: str, expected_revision: int) -> bool:
        self._check()
        with self.cond:
            pair = self.data.get(key)
            if pair is None or pair.revision != expected_revision:
                return False
            return self.delete(key)

    def grant_lease(self, ttl: int) -> int:
        self._check()
        lease = 100 + self.rev * 1000 + len(self.leases)  # never reused
        self.leases.add(lease)
        return lease

    def keepalive(self, lease: int) -> None:
        self._check()
        if lease not in self.leases:
            raise NotFound(f"lease {lease} not found")

    def revoke_lease(self, lease: int) -> None:
        self.expire(lease)

    def expire(self, lease: int) -> None:
        with self.cond:
            self.leases.discard(lease)
            for key in [k for k, v in self.lease_of.items() if v == lease]:
                self.delete(key)

    def watch(self, prefix: str, start_revision: int = 0, stopped: Any = None) -> Iterator[WatchEvent]:
        seen = 0
        while True:
            with self.cond:
                while not (stopped or (lambda: self.closed))() and seen >= len(self.log):
                    self.cond.wait(0.2)
                if (stopped or (lambda: self.closed))():
                    return
                batch, seen = self.log[seen:], len(self.log)
            for ev in batch:
                if ev.pair.key.startswith(prefix) and ev.pair.revision >= start_revision:
                    yield ev

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class HostView:
    """One daemon's handle on the shared store: closing it ends only that daemon's watches."""

    def __init__(self, shared: MemoryKV) -> None:
        self.shared, self.closed = shared, False

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.shared, attr)

    def watch(self, prefix: str, start_revision: int = 0) -> Iterator[WatchEvent]:
        return self.shared.watch(prefix, start_revision, lambda: self.closed)

    def close(self) -> None:
        self.closed = True


class OverlayFake(FakeDriver):
    scope = "global"
    needs_gateway_bridge = True

    def join(self, req: Any) -> JoinResult:
        self._rec("join", req)
        return JoinResult(gateway="")

    def forget_network(self, network_id: str) -> None:
        self._rec("forget_network", network_id)


def host(root: Path, name: str, kv: MemoryKV) -> tuple[NetworkService, dict[str, FakeDriver]]:
    drivers = {"bridge": FakeDriver("bridge"), "null": FakeDriver("null"), "overlay": OverlayFake("overlay")}
    svc, drivers = make_service(root / name, drivers, cluster_store="memory://kv:1")
    svc.kv._store = HostView(kv)  # type: ignore[assignment]  # the boundary: the store is in memory
    svc.cluster.host = name
    return svc, drivers


@contextlib.asynccontextmanager
async def started(root: Path, kv: MemoryKV, *names: str) -> AsyncIterator[list[tuple[NetworkService, dict[str, FakeDriver]]]]:
    """Network services on hosts ``names`` sharing ``kv``: started, then closed (containers first)."""
    hosts = [host(root, name, kv) for name in names]
    try:
        for svc, _ in hosts:
            await svc.start()
        yield hosts
    finally:
        for svc, _ in hosts:
            for cid in list(svc.cnets):
                await svc.forget_container(cid)
            await svc.close()


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def names_of(svc: NetworkService) -> set[str]:
    return {r.name for r in svc.networks.values()}


async def start_container(svc: NetworkService, cid: str, name: str, network: str) -> None:
    spec = ContainerNetSpec(cid, name, name, network_mode=network)
    svc.register_container(spec)
    await svc.attach_container(spec)


def test_a_global_network_is_shared_by_every_host(root: Path) -> None:  # noqa: F811
    kv = MemoryKV()

    async def main() -> None:
        async with started(root, kv, "a", "b") as [(a, da), (b, db)]:
            created = await a.create({"Name": "ov", "Driver": "overlay"})
            await until(lambda: any(c[0] == "create_network" for c in db["overlay"].calls))
            doc = await b.inspect("ov")
            assert doc["Id"] == created["Id"] and doc["Scope"] == "global"
            assert [c[1].network_id for c in db["overlay"].calls if c[0] == "create_network"] == [created["Id"]]
            # the subnet came from the shared global space
            assert doc["IPAM"]["Config"][0]["Subnet"] == (await a.inspect("ov"))["IPAM"]["Config"][0]["Subnet"]
            # names are unique in the cluster, also when the other host asks
            with pytest.raises(Conflict, match="network with name ov already exists"):
                await b.create({"Name": "ov", "Driver": "overlay"})
            # a daemon that starts later adopts what exists
            c, dc = host(root, "c", kv)
            await c.start()
            await until(lambda: "ov" in names_of(c))
            await c.close()
            # removed on a: gone on b, and nothing of it is left in the store
            await a.remove("ov")
            await until(lambda: "ov" not in names_of(b))
            assert ("delete_network", created["Id"]) in db["overlay"].calls
            assert ("forget_network", created["Id"]) in da["overlay"].calls
            assert not [k for k in kv.data if k.startswith(("pyd/networks/", "pyd/network-names/", "pyd/endpoints/"))]

    asyncio.run(main())


@needs_root
def test_endpoints_resolve_across_hosts_and_block_removal(root: Path) -> None:  # noqa: F811
    kv = MemoryKV()

    async def main() -> None:
        async with started(root, kv, "a", "b") as [(a, da), (b, db)]:
            await a.create({"Name": "ov", "Driver": "overlay"})
            await until(lambda: "ov" in names_of(b))
            await start_container(a, "a" * 64, "web", "ov")
            await start_container(b, "b" * 64, "client", "ov")
            ip_a = a.endpoints[a.cnets["a" * 64].endpoints[a.find("ov").id]].ip
            ip_b = b.endpoints[b.cnets["b" * 64].endpoints[b.find("ov").id]].ip
            assert ip_a and ip_b and ip_a != ip_b  # one global pool, two hosts
            # names of the other host's containers resolve, and back
            await until(lambda: b.dns_lookup("b" * 64, "web") == [ip_a])
            assert b.dns_lookup("b" * 64, "aaaaaaaaaaaa") == [ip_a]
            assert b.dns_reverse("b" * 64, ip_a) == "web.ov"
            # the way out: each container also joined its host's gateway bridge (hidden in inspect)
            gw = a.find("pyt_gwbridge")
            assert gw.id in a.cnets["a" * 64].endpoints
            assert list(a.container_settings("a" * 64)["Networks"]) == ["ov"]
            assert a.dns_lookup("a" * 64, "client") == [ip_b]
            # in use on b only: a cannot remove it
            await a.detach_container("a" * 64)
            with pytest.raises(Forbidden, match="active endpoints"):
                await a.remove("ov")
            await b.detach_container("b" * 64)
            assert not kv.list("pyd/endpoints/")
            await a.remove("ov")
            await until(lambda: "ov" not in names_of(b))

    asyncio.run(main())


def test_an_unreachable_store_fails_creation_cleanly(root: Path) -> None:  # noqa: F811
    kv = MemoryKV()

    async def main() -> None:
        a, da = host(root, "a", kv)
        await a.start()
        try:
            kv.down = True
            with pytest.raises(Unavailable, match="unreachable"):
                await a.create({"Name": "ov", "Driver": "overlay"})
            assert "ov" not in names_of(a)
            assert not [c for c in da["overlay"].calls if c[0] == "create_network"]
            kv.down = False
            await a.create({"Name": "ov", "Driver": "overlay"})
            assert "ov" in names_of(a)
        finally:
            await a.close()

    asyncio.run(main())


def test_expired_endpoints_are_published_again(root: Path) -> None:  # noqa: F811
    kv = MemoryKV()
    a, _ = host(root, "a", kv)
    a.cluster.heartbeat = 0.05
    a.cluster.publish_endpoint("n1", "e1", {"name": "web", "ip": "10.0.0.2"})
    lease = kv.lease_of["pyd/endpoints/n1/e1"]
    loop = asyncio.new_event_loop()
    try:
        a.cluster.start(loop, lambda nid, rec: asyncio.sleep(0))
        kv.expire(lease)  # e.g. the store was away longer than the TTL
        deadline = time.monotonic() + 5
        while "pyd/endpoints/n1/e1" not in kv.data and time.monotonic() < deadline:
            time.sleep(0.02)
        assert kv.data["pyd/endpoints/n1/e1"].value.startswith(b'{"name": "web"')
        assert kv.lease_of["pyd/endpoints/n1/e1"] != lease
    finally:
        a.cluster.close()
        loop.close()


def test_a_network_removed_while_a_daemon_was_down_is_dropped_at_its_start(root: Path) -> None:  # noqa: F811
    kv = MemoryKV()

    async def main() -> None:
        a, _ = host(root, "a", kv)
        b, _ = host(root, "b", kv)
        await a.start()
        await b.start()
        try:
            created = await a.create({"Name": "ov", "Driver": "overlay"})
            await until(lambda: "ov" in names_of(b))
            await b.close()
            await a.remove("ov")
            b, db = host(root, "b", kv)  # b starts again from its records
            await b.start()
            await until(lambda: "ov" not in names_of(b))
            assert ("delete_network", created["Id"]) in db["overlay"].calls
            assert not (root / "b" / "data" / "network" / "files" / "networks" / f"{created['Id']}.json").exists()
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


@needs_root
def test_a_container_removed_while_the_store_is_away_is_withdrawn_when_it_is_back(root: Path) -> None:  # noqa: F811
    kv = MemoryKV()

    async def main() -> None:
        a, _ = host(root, "a", kv)
        a.cluster.heartbeat = 0.05
        await a.start()
        try:
            await a.create({"Name": "ov", "Driver": "overlay"})
            await start_container(a, "a" * 64, "web", "ov")
            ip = a.endpoints[a.cnets["a" * 64].endpoints[a.find("ov").id]].ip
            def allocated() -> bool:
                pools = json.loads(kv.data["pyd/ipam/default/GlobalDefault"].value)["pools"]
                return any(ip in p["allocated"] for p in pools.values())

            assert kv.list("pyd/endpoints/") and allocated()
            kv.down = True
            await a.forget_container("a" * 64)  # succeeds: the store's part is left for later
            assert kv.data.keys() >= {"pyd/ipam/default/GlobalDefault"} and allocated()
            kv.down = False
            await until(lambda: not kv.list("pyd/endpoints/") and not allocated())
        finally:
            await a.close()

    asyncio.run(main())
