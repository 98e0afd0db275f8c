"""Options, settings, VNI allocation and peer publishing/watching (no kernel objects)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from overlay_testkv import MemoryKV

from pyd.drivers.network import NetworkContext
from pyd.errors import Conflict, InvalidOption, InvalidParameter, NotSupported
from pyd.testing.network import wait_for

from pyd_network_overlay import cluster, options
from pyd_network_overlay.peers import PeerSync


# -- options and settings ---------------------------------------------------------------------


def test_options() -> None:
    assert options.parse_options({}) == {}
    parsed = options.parse_options(
        {"com.docker.network.driver.overlay.vxlanid_list": "5000", "com.docker.network.driver.mtu": "1400"}
    )
    assert parsed == {"com.docker.network.driver.overlay.vxlanid_list": 5000, "com.docker.network.driver.mtu": 1400}
    assert options.coerce_options(parsed) == parsed


@pytest.mark.parametrize("value", ["", "true", "false"])
def test_encrypted_is_refused_clearly(value: str) -> None:
    with pytest.raises(NotSupported) as err:
        options.parse_options({"encrypted": value})
    assert "encrypted overlay networks (IPsec) are not supported by pyd yet" in str(err.value)


def test_unknown_option_lists_valid_keys() -> None:
    with pytest.raises(InvalidOption) as err:
        options.parse_options({"parent": "eth0"})
    msg = str(err.value)
    assert '"parent"' in msg and "com.docker.network.driver.overlay.vxlanid_list" in msg
    assert "com.docker.network.driver.mtu" in msg


def test_settings_ttl_and_heartbeat() -> None:
    s = options.Settings.from_context({})
    assert (s.ttl, s.heartbeat) == (20, pytest.approx(20 / 3))
    s = options.Settings.from_context(
        {"cluster-store-opts": {"discovery.ttl": "30s", "discovery.heartbeat": 5}, "exec-root": "/run/x"}
    )
    assert (s.ttl, s.heartbeat, s.exec_root) == (30, 5.0, "/run/x")
    for bad in ({"discovery.ttl": "soon"}, {"discovery.ttl": "10", "discovery.heartbeat": "10"}):
        with pytest.raises(InvalidParameter) as err:
            options.Settings.from_context({"cluster-store-opts": bad})
        assert "discovery." in str(err.value)


def test_driver_needs_a_kvstore(tmp_path: Path) -> None:
    from pyd_network_overlay.driver import OverlayDriver

    with pytest.raises(NotSupported) as err:
        OverlayDriver(tmp_path, NetworkContext(kvstore=None, name_prefix="pyo"))
    assert "pyd-kvstore-local" in str(err.value) and "cluster-store" in str(err.value)


def test_vtep_from_cluster_advertise() -> None:
    from pyd_network_overlay.links import resolve_vtep

    assert resolve_vtep("127.0.0.1")[0] == "127.0.0.1"
    assert resolve_vtep("127.0.0.1:2376") == resolve_vtep("lo")
    with pytest.raises(InvalidParameter) as err:
        resolve_vtep("no-such-if0")
    assert "no-such-if0" in str(err.value)


# -- VNI allocation ---------------------------------------------------------------------------


def test_vni_is_allocated_from_4096_and_shared(kvstore: Any) -> None:
    assert cluster.network_vni(kvstore, "n1", "one", None) == (4096, True)
    assert cluster.network_vni(kvstore, "n1", "one", None) == (4096, False), "a second host finds it"
    assert cluster.network_vni(kvstore, "n2", "two", None) == (4097, True)
    assert cluster.network_vni(kvstore, "n3", "three", 5000) == (5000, True)
    with pytest.raises(Conflict) as err:
        cluster.network_vni(kvstore, "n4", "four", 4097)
    assert "4097" in str(err.value) and "n2" in str(err.value)
    with pytest.raises(Conflict):
        cluster.network_vni(kvstore, "n1", "one", 7000)
    cluster.forget(kvstore, "n1")
    assert kvstore.get("pyd/overlay/vni/4096") is None and kvstore.get("pyd/overlay/networks/n1") is None
    assert cluster.network_vni(kvstore, "n5", "five", None) == (4096, True), "a forgotten VNI is free again"


def test_concurrent_allocation_never_collides(kvstore: Any) -> None:
    results: dict[str, list[int]] = {}
    lock = threading.Lock()

    def host(h: int) -> None:
        for n in range(8):
            vni, _ = cluster.network_vni(kvstore, f"net{n}", f"net{n}", None)
            with lock:
                results.setdefault(f"net{n}", []).append(vni)

    threads = [threading.Thread(target=host, args=(h,)) for h in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_net = {n: set(v) for n, v in results.items()}
    assert all(len(v) == 1 for v in per_net.values()), f"hosts disagree: {per_net}"
    vnis = [v.pop() for v in per_net.values()]
    assert len(set(vnis)) == 8
    claims = {p.key: p.value.decode() for p in kvstore.list(cluster.VNI)}
    assert sorted(claims.values()) == sorted(per_net), f"stray VNI claims: {claims}"


# -- peers ------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[set[str] | None] = []

    def __call__(self, nets: set[str] | None) -> None:
        self.calls.append(nets)


def test_publish_watch_and_lease(memory_kv: MemoryKV) -> None:
    rec_a, rec_b = Recorder(), Recorder()
    a = PeerSync(memory_kv, ttl=2, heartbeat=0.3, on_change=rec_a)
    b = PeerSync(memory_kv, ttl=2, heartbeat=0.3, on_change=rec_b)
    try:
        a.start()
        b.start()
        a.publish(cluster.peer_key("n", "ea"), cluster.peer_value("10.0.0.2", "02:42:0a:00:00:02", "192.0.2.1"))
        assert wait_for(lambda: b.snapshot("n") == {"ea": ("10.0.0.2", "02:42:0a:00:00:02", "192.0.2.1")})
        assert a.snapshot("n") == {}, "own entries are not peers"
        assert {"n"} in rec_b.calls

        # The lease is lost: a publishes again under a new one at its next heartbeat.
        old = a.lease
        memory_kv.revoke_lease(old)
        assert wait_for(lambda: a.lease not in (0, old) and "ea" in b.snapshot("n"), timeout=3)

        # An outage: writes wait, the lease expires meanwhile; afterwards everything is back.
        memory_kv.down = True
        a.publish(cluster.peer_key("n", "eb"), cluster.peer_value("10.0.0.3", "02:42:0a:00:00:03", "192.0.2.1"))
        a.withdraw(cluster.peer_key("n", "ea"))
        with memory_kv._cond:
            memory_kv._drop_lease(a.lease)  # expired while unreachable
        memory_kv.down = False
        assert wait_for(lambda: set(b.snapshot("n")) == {"eb"}, timeout=4), b.snapshot("n")
        assert [p.key for p in memory_kv.list("pyd/overlay/peers/")] == ["pyd/overlay/peers/n/eb"]

        # A host that stops renewing loses its entries after the TTL.
        a.close()
        assert wait_for(lambda: b.snapshot("n") == {}, timeout=4)
    finally:
        a.close()
        b.close()
    memory_kv.close()


def test_watch_threads_end_when_the_store_closes(memory_kv: MemoryKV) -> None:
    sync = PeerSync(memory_kv, ttl=5, heartbeat=0.2, on_change=Recorder())
    sync.start()
    memory_kv.close()
    assert wait_for(lambda: not any(t.is_alive() for t in sync._threads), timeout=3)


def test_resync_after_missed_events(memory_kv: MemoryKV) -> None:
    rec = Recorder()
    sync = PeerSync(memory_kv, ttl=5, heartbeat=5, on_change=rec)
    memory_kv.put(cluster.peer_key("n", "x"), cluster.peer_value("10.0.0.9", "02:42:0a:00:00:09", "192.0.2.9"))
    memory_kv.put(cluster.peer_key("m", "y"), b"not json")
    start = sync.resync()
    assert sync.snapshot("n") == {"x": ("10.0.0.9", "02:42:0a:00:00:09", "192.0.2.9")}
    assert sync.snapshot("m") == {} and rec.calls == [None]
    assert start == max(p.revision for p in memory_kv.list("pyd/overlay/")) + 1
    assert json.loads(cluster.peer_value("1.2.3.4", "aa", "b")) == {"ip": "1.2.3.4", "mac": "aa", "vtep": "b"}
