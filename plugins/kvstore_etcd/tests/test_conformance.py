"""The KV conformance suite against a real etcd (Debian's etcd-server) started by the tests,
plus what is specific to etcd: failover between endpoints, resynchronisation after compaction
and after etcd came back empty."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from pyd.errors import InvalidParameter
from pyd.registry import Kind, PluginRegistry
from pyd.testing.etcd import EtcdProcess, free_port, require_etcd
from pyd.testing.kvstore import KVStoreSuite, Watcher, summary

pytestmark = pytest.mark.integration


def new_etcd(root: Path) -> EtcdProcess:
    require_etcd()
    return EtcdProcess(root / "data", f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}")


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """A private etcd for one test (it may be stopped, wiped, compacted)."""
    server = new_etcd(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.kill()


def open_store(url: str, tmp_path: Path) -> Any:
    return PluginRegistry().init_driver(Kind.KVSTORE, "etcd", url=url, home=tmp_path)


class TestEtcdKVStore(KVStoreSuite):
    driver_name = "etcd"
    bad_urls = [
        "", "etcd://", "http://127.0.0.1:2379", "etcd://127.0.0.1", "etcd://127.0.0.1:0",
        "etcd://127.0.0.1:2379/path", "etcd://h:1,h", "consul://127.0.0.1:8500",
    ]
    unreachable_url = "etcd://127.0.0.1:1"

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
        """One etcd for the class; tests keep to their own key prefix."""
        etcd = new_etcd(tmp_path_factory.mktemp("etcd"))
        try:
            etcd.start()
            yield etcd
        finally:
            etcd.kill()

    @pytest.fixture
    def kv_url(self, server: EtcdProcess) -> str:
        if not server.running:  # an earlier test's outage left it down
            server.start()
        return server.url

    @pytest.fixture
    def kv_outage(self, server: EtcdProcess) -> Callable[[], contextlib.AbstractContextManager[Any]]:
        @contextlib.contextmanager
        def outage() -> Iterator[None]:
            server.stop()
            try:
                yield
            finally:
                server.start()

        return outage


def test_two_endpoints_fail_over_to_the_one_that_answers(etcd: EtcdProcess, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    live = etcd.url.split("://")[1]
    store = open_store(f"etcd://{dead},{live}", tmp_path)
    try:
        store.put("pyd/failover", b"1")
        assert store.get("pyd/failover").value == b"1"
        watcher = Watcher(store, "pyd/", 0)
        time.sleep(1.0)
        store.put("pyd/w", b"2")
        assert summary(watcher.wait_for(1, timeout=15)) == [("put", "pyd/w", b"2")]
    finally:
        store.close()


def test_a_compacted_start_revision_resynchronises(etcd: EtcdProcess, tmp_path: Path) -> None:
    store = open_store(etcd.url, tmp_path)
    try:
        r1 = store.put("pyd/c/a", b"1")
        store.put("pyd/c/b", b"2")
        store.delete("pyd/c/a")
        rev = store.put("pyd/other", b"x")
        body = json.dumps({"revision": str(rev), "physical": True}).encode()
        urllib.request.urlopen(etcd.client_url + "/v3/kv/compaction", body, timeout=5).read()
        watcher = Watcher(store, "pyd/c/", r1)
        assert summary(watcher.wait_for(1)) == [("put", "pyd/c/b", b"2")]
        store.put("pyd/c/d", b"3")
        assert summary(watcher.wait_for(2)[1:]) == [("put", "pyd/c/d", b"3")]
    finally:
        store.close()


def test_etcd_back_empty_makes_the_watcher_resynchronise(etcd: EtcdProcess, tmp_path: Path) -> None:
    store = open_store(etcd.url, tmp_path)
    watch_store = open_store(etcd.url, tmp_path)
    try:
        for i in range(5):
            store.put("pyd/e/seed", str(i).encode())
        start = store.put("pyd/e/gone", b"1")
        watcher = Watcher(watch_store, "pyd/e/", start)
        watcher.wait_for(1)
        etcd.stop()
        shutil.rmtree(etcd.data_dir)
        etcd.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                store.put("pyd/e/new", b"2")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        events = watcher.wait_for(3, timeout=20)
        assert ("delete", "pyd/e/gone", b"") in summary(events[1:])
        assert ("put", "pyd/e/new", b"2") in summary(events[1:])
    finally:
        watch_store.close()
        store.close()


def test_the_url_is_checked_before_anything_connects(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter) as err:
        open_store("etcd://127.0.0.1:2379,nohost", tmp_path)
    assert '"nohost"' in str(err.value) and "etcd://HOST:PORT" in str(err.value)
