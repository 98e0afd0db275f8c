"""The KV conformance suite against the embedded SQLite store, plus what is specific to it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from pyd.errors import Unavailable
from pyd.registry import Kind, PluginRegistry
from pyd.testing.kvstore import KVStoreSuite, Watcher, summary


class TestLocalKVStore(KVStoreSuite):
    driver_name = "local"
    bad_urls = ["etcd://127.0.0.1:2379", "/var/lib/pyd/kv.db"]
    lease_ttl = 1
    lease_slack = 2.0

    @pytest.fixture
    def kv_outage(self, kv_home: Path) -> Callable[[], contextlib.AbstractContextManager[Any]]:
        """The database file is moved away (the store refuses rather than start empty), then back."""
        db = kv_home / "kv.db"

        @contextlib.contextmanager
        def outage() -> Iterator[None]:
            os.rename(db, db.with_name("kv.db.away"))
            try:
                yield
            finally:
                os.rename(db.with_name("kv.db.away"), db)

        return outage


def open_store(home: Path) -> Any:
    return PluginRegistry().init_driver(Kind.KVSTORE, "local", url="", home=home)


def test_a_restarted_store_keeps_data_and_revisions(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    rev = store.put("pyd/k", b"v")
    lease = store.grant_lease(60)
    store.put("pyd/leased", b"v", lease=lease)
    store.close()
    again = open_store(tmp_path)
    try:
        assert again.get("pyd/k").value == b"v"
        assert again.get("pyd/leased") is not None, "a lease must outlive a daemon restart until its TTL"
        again.keepalive(lease)
        assert again.put("pyd/k", b"w") > rev
    finally:
        again.close()


def test_old_change_log_rows_are_compacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyd_kvstore_local.store as impl

    monkeypatch.setattr(impl, "CHANGES_KEPT", 50)
    monkeypatch.setattr(impl, "COMPACT_EVERY", 10)
    store = open_store(tmp_path)
    try:
        for i in range(200):
            store.put("pyd/c", str(i).encode())
        with sqlite3.connect(tmp_path / "kv.db") as db:
            (rows,) = db.execute("SELECT COUNT(*) FROM changes").fetchone()
        assert rows <= 60
        # a watcher asking for a compacted revision is resynchronised, not left behind
        watcher = Watcher(store, "pyd/", 1)
        assert summary(watcher.wait_for(1)) == [("put", "pyd/c", b"199")]
    finally:
        store.close()


def test_a_missing_database_is_unavailable_not_recreated(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        store.put("pyd/k", b"v")
        os.rename(tmp_path / "kv.db", tmp_path / "moved")
        with pytest.raises(Unavailable) as err:
            store.get("pyd/k")
        assert str(tmp_path / "kv.db") in str(err.value)
        assert not (tmp_path / "kv.db").exists()
    finally:
        store.close()
