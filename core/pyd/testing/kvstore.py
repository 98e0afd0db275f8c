"""Conformance suite for KV stores (``pyd.drivers.kvstore.KVStore``).

Subclass ``KVStoreSuite`` in your plugin's tests::

    from pyd.testing.kvstore import KVStoreSuite

    class TestMyStore(KVStoreSuite):
        driver_name = "mystore"                        # the entry-point name (pyd.kvstore)
        bad_urls = ["mystore://", "http://x:1"]         # refused with InvalidParameter naming them
        unreachable_url = "mystore://127.0.0.1:1"       # init works, calls raise Unavailable

        @pytest.fixture(scope="class")
        @classmethod
        def server(cls, tmp_path_factory):              # one server for the whole class
            ...

        @pytest.fixture
        def kv_url(self, server) -> str:                # the cluster-store value for each test
            return server.url

        @pytest.fixture
        def kv_outage(self, server):                    # optional: unreachable, then back
            @contextlib.contextmanager
            def outage():
                server.stop()
                try:
                    yield
                finally:
                    server.start()
            return outage

Every store is loaded as the daemon loads it,
``PluginRegistry().init_driver(Kind.KVSTORE, name, url=..., home=...)``, so the entry point is
proven too. Each test works under its own key prefix (``pyd-test/<hex>/``), so one server
serves every test; the prefix is deleted afterwards.

Fixtures a subclass may override:

``kv_url``
    The url passed to the init hook (default ``""``, an embedded store).
``kv_home``
    The store's home directory (default: a fresh ``<tmp>/kvstore/<name>``).
``kv_outage``
    A callable returning a context manager inside which the store cannot be reached, and
    after which it is reachable again with its data (stop/start the server; for an embedded
    store, move its file away and back). Default ``None``: the reconnect check is skipped.

What the suite expects (the contract of ``pyd.drivers.kvstore``): values are bytes; revisions
are store-wide and increase; ``compare_and_swap(key, 0, ...)`` creates only if absent;
prefixes are plain string prefixes (so callers end them with ``/``: ``a/b/`` never matches
``a/bc``); a key put with a lease vanishes after the TTL unless kept alive, and watchers see a
``delete``; ``keepalive`` of a lease that is gone raises ``NotFound``; ``watch`` yields changes
in revision order from ``start_revision`` (0: from now), survives outages by itself and ends
within a second of ``close``; compare-and-swap is exact between threads and between
processes; calls while the store is unreachable raise ``Unavailable`` naming it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import pytest

from pyd.drivers.kvstore import KVPair, KVStore, WatchEvent
from pyd.errors import InvalidParameter, NotFound, PydError, Unavailable
from pyd.registry import Kind, PluginRegistry, list_installed

PROTOCOL_METHODS = (
    "get", "put", "delete", "list", "delete_prefix", "compare_and_swap", "compare_and_delete",
    "grant_lease", "keepalive", "revoke_lease", "watch", "close",
)

# A child process of the multi-process check: load the store by its entry point, wait for
# "go" on stdin, then increment one counter ``n`` times with get + compare_and_swap loops.
_CAS_CHILD = r"""
import json, sys
from pathlib import Path
from pyd.registry import Kind, PluginRegistry
a = json.loads(sys.argv[1])
store = PluginRegistry().init_driver(Kind.KVSTORE, a["name"], url=a["url"], home=Path(a["home"]))
print("ready", flush=True)
sys.stdin.readline()
wrote, retries = [], 0
for _ in range(a["n"]):
    while True:
        pair = store.get(a["key"])
        value = int(pair.value) + 1 if pair else 1
        if store.compare_and_swap(a["key"], pair.revision if pair else 0, str(value).encode()):
            wrote.append(value)
            break
        retries += 1
store.close()
print(json.dumps({"wrote": wrote, "retries": retries}), flush=True)
"""


@dataclass
class KVTarget:
    """Where a test's store lives: what the daemon would pass to the init hook, plus the
    test's own key prefix and the subclass's outage hook."""

    driver_name: str
    url: str
    home: Path
    prefix: str
    outage: Callable[[], AbstractContextManager[Any]] | None = None

    def open(self) -> KVStore:
        """A new store object loaded through a fresh registry (another daemon, or a restart)."""
        return PluginRegistry().init_driver(Kind.KVSTORE, self.driver_name, url=self.url, home=self.home)

    def key(self, rest: str) -> str:
        return self.prefix + rest


class Watcher:
    """Runs ``store.watch(...)`` in a thread (as the engine does) and collects the events."""

    def __init__(self, store: KVStore, prefix: str, start_revision: int = 0) -> None:
        self.events: list[WatchEvent] = []
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._gen = store.watch(prefix, start_revision)
        self.thread = threading.Thread(target=self._run, name="kv-watcher", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self._gen:
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            with self._cond:
                self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[WatchEvent]:
        """At least ``n`` events (a copy), or fail naming what arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.events) < n and self.error is None and self.thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            got = list(self.events)
        if self.error is not None:
            raise AssertionError(f"the watch generator raised {self.error!r}") from self.error
        assert len(got) >= n, f"expected {n} watch events within {timeout}s, got {summary(got)}"
        return got


def summary(events: Sequence[WatchEvent]) -> list[tuple[str, str, bytes]]:
    return [(e.kind, e.pair.key, e.pair.value) for e in events]


def replay(events: Sequence[WatchEvent]) -> dict[str, bytes]:
    """The key space a watcher reconstructs from its events."""
    state: dict[str, bytes] = {}
    for e in events:
        if e.kind == "put":
            state[e.pair.key] = e.pair.value
        else:
            state.pop(e.pair.key, None)
    return state


def eventually(check: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (waited {timeout}s)")
        time.sleep(step)


class KVStoreSuite:
    """Checks every KV store must pass. Set the class attributes, override the fixtures
    ``kv_url``/``kv_home``/``kv_outage`` as needed; do not override the tests."""

    driver_name: ClassVar[str] = ""
    # Each must be refused by the init hook with InvalidParameter naming the url.
    bad_urls: ClassVar[Sequence[str]] = ()
    # A well-formed url nothing answers at ("" to skip): init must work, calls raise Unavailable.
    unreachable_url: ClassVar[str] = ""
    # Lease TTL used by the lease checks; etcd rounds TTLs below ~2 s up to its minimum.
    lease_ttl: ClassVar[int] = 2
    # Seconds a lease may outlive its TTL before its keys are gone (expiry checks are periodic).
    lease_slack: ClassVar[float] = 3.0
    processes: ClassVar[int] = 4
    increments: ClassVar[int] = 25

    # -- fixtures -----------------------------------------------------------------------

    @pytest.fixture
    def kv_url(self) -> str:
        return ""

    @pytest.fixture
    def kv_home(self, tmp_path: Path) -> Path:
        home = tmp_path / "kvstore" / (self.driver_name or "store")
        home.mkdir(parents=True, mode=0o700)
        return home

    @pytest.fixture
    def kv_outage(self) -> Callable[[], AbstractContextManager[Any]] | None:
        return None

    @pytest.fixture
    def kv(self, kv_url: str, kv_home: Path, kv_outage: Any) -> KVTarget:
        assert self.driver_name, f"{type(self).__name__}.driver_name is not set"
        return KVTarget(self.driver_name, kv_url, kv_home, f"pyd-test/{uuid.uuid4().hex[:12]}/", kv_outage)

    @pytest.fixture
    def store(self, kv: KVTarget) -> Iterator[KVStore]:
        store = kv.open()
        yield store
        try:
            store.delete_prefix(kv.prefix)
        except PydError:
            pass  # the server may be the reason the test failed
        store.close()

    @pytest.fixture
    def opened(self, kv: KVTarget) -> Iterator[Callable[[], KVStore]]:
        """Open more store objects for one test; all are closed afterwards."""
        stores: list[KVStore] = []

        def open_one() -> KVStore:
            stores.append(kv.open())
            return stores[-1]

        yield open_one
        for s in stores:
            s.close()

    # -- loading ------------------------------------------------------------------------

    def test_entry_point_is_installed_and_the_store_has_the_protocol(self, store: KVStore) -> None:
        names = [p.name for p in list_installed([Kind.KVSTORE])]
        assert self.driver_name in names, f"no pyd.kvstore entry point {self.driver_name!r}: {names}"
        for method in PROTOCOL_METHODS:
            assert callable(getattr(store, method, None)), f"the store has no {method}()"
        assert store.name == self.driver_name

    def test_bad_urls_are_refused_naming_them(self, kv_home: Path) -> None:
        if not self.bad_urls:
            pytest.skip(f"{type(self).__name__}.bad_urls is empty")
        for url in self.bad_urls:
            with pytest.raises(InvalidParameter) as err:
                PluginRegistry().init_driver(Kind.KVSTORE, self.driver_name, url=url, home=kv_home)
            assert url in str(err.value), f"{url!r}: {err.value}"

    def test_init_does_not_need_the_store_and_calls_say_it_is_unreachable(self, kv_home: Path) -> None:
        if not self.unreachable_url:
            pytest.skip(f"{type(self).__name__}.unreachable_url is not set")
        store = PluginRegistry().init_driver(Kind.KVSTORE, self.driver_name, url=self.unreachable_url, home=kv_home)
        try:
            for call in (lambda: store.get("pyd-test/x"), lambda: store.put("pyd-test/x", b"1")):
                t0 = time.monotonic()
                with pytest.raises(Unavailable) as err:
                    call()
                assert time.monotonic() - t0 < 6.0, "a call to an unreachable store must time out within 5 s"
                assert self.unreachable_url in str(err.value) or self.unreachable_url.split("://")[-1] in str(err.value)
        finally:
            store.close()

    # -- basic operations ---------------------------------------------------------------

    def test_put_get_delete(self, store: KVStore, kv: KVTarget) -> None:
        key = kv.key("x/one")
        assert store.get(key) is None
        value = b"\x00binary\xff" + bytes(range(256))
        rev = store.put(key, value)
        assert isinstance(rev, int) and rev > 0
        assert store.get(key) == KVPair(key, value, rev)
        assert store.delete(key) is True
        assert store.get(key) is None
        assert store.delete(key) is False
        empty = kv.key("x/empty")
        store.put(empty, b"")
        got = store.get(empty)
        assert got is not None and got.value == b""

    def test_revisions_are_store_wide_and_increase(self, store: KVStore, kv: KVTarget) -> None:
        a, b = kv.key("rev/a"), kv.key("rev/b")
        r1 = store.put(a, b"1")
        r2 = store.put(b, b"1")
        r3 = store.put(a, b"2")
        assert r1 < r2 < r3
        assert store.get(a).revision == r3  # type: ignore[union-attr]
        assert store.get(b).revision == r2  # type: ignore[union-attr]
        store.delete(b)
        assert store.put(b, b"3") > r3

    def test_list_and_delete_prefix_never_match_a_sibling(self, store: KVStore, kv: KVTarget) -> None:
        keys = ["a/b", "a/b/c", "a/b/d/e", "a/bc", "a/bc/x", "a/c"]
        for k in keys:
            store.put(kv.key(k), k.encode())
        got = store.list(kv.key("a/b/"))
        assert [p.key for p in got] == [kv.key("a/b/c"), kv.key("a/b/d/e")]
        assert [p.value for p in got] == [b"a/b/c", b"a/b/d/e"]
        assert all(p.revision > 0 for p in got)
        assert [p.key for p in store.list(kv.key(""))] == [kv.key(k) for k in keys]
        assert store.list(kv.key("nothing/")) == []
        assert store.delete_prefix(kv.key("a/b/")) == 2
        assert [p.key for p in store.list(kv.key(""))] == [kv.key(k) for k in ("a/b", "a/bc", "a/bc/x", "a/c")]
        assert store.delete_prefix(kv.key("a/b/")) == 0

    def test_compare_and_swap(self, store: KVStore, kv: KVTarget) -> None:
        key = kv.key("cas/k")
        assert store.compare_and_swap(key, 0, b"first") is True  # create-if-absent
        first = store.get(key)
        assert first is not None and first.value == b"first"
        assert store.compare_and_swap(key, 0, b"again") is False  # exists now
        assert store.compare_and_swap(key, first.revision + 1000, b"x") is False
        assert store.compare_and_swap(key, first.revision, b"second") is True
        second = store.get(key)
        assert second is not None and second.value == b"second" and second.revision > first.revision
        assert store.compare_and_swap(key, first.revision, b"stale") is False
        assert store.get(key) == second
        assert store.compare_and_swap(kv.key("cas/absent"), 5, b"x") is False
        assert store.get(kv.key("cas/absent")) is None

    def test_compare_and_delete(self, store: KVStore, kv: KVTarget) -> None:
        key = kv.key("cad/k")
        rev = store.put(key, b"v")
        assert store.compare_and_delete(key, rev + 1000) is False
        assert store.get(key) == KVPair(key, b"v", rev)
        assert store.compare_and_delete(key, rev) is True
        assert store.get(key) is None
        assert store.compare_and_delete(key, rev) is False

    def test_a_second_store_object_sees_the_same_data(self, store: KVStore, kv: KVTarget, opened: Any) -> None:
        rev = store.put(kv.key("shared"), b"from one")
        other = opened()
        assert other.get(kv.key("shared")) == KVPair(kv.key("shared"), b"from one", rev)
        assert other.compare_and_swap(kv.key("shared"), rev, b"from two")
        assert store.get(kv.key("shared")).value == b"from two"  # type: ignore[union-attr]

    # -- leases -------------------------------------------------------------------------

    def test_a_leased_key_vanishes_after_the_ttl_and_watchers_see_a_delete(self, store: KVStore, kv: KVTarget, opened: Any) -> None:
        start = store.put(kv.key("lease/plain"), b"stays")
        watcher = Watcher(opened(), kv.key("lease/"), start)
        lease = store.grant_lease(self.lease_ttl)
        key = kv.key("lease/k")
        store.put(key, b"alive", lease=lease)
        assert store.get(key) is not None
        t0 = time.monotonic()
        eventually(lambda: store.get(key) is None, self.lease_ttl + self.lease_slack, "the leased key is still there")
        assert time.monotonic() - t0 >= self.lease_ttl - 1.2, "the key vanished well before its TTL"
        assert store.get(kv.key("lease/plain")) is not None, "a key without a lease must stay"
        events = watcher.wait_for(3)
        assert summary(events[:3]) == [
            ("put", kv.key("lease/plain"), b"stays"), ("put", key, b"alive"), ("delete", key, b"")
        ]
        with pytest.raises(NotFound) as err:
            store.keepalive(lease)
        assert str(lease) in str(err.value)

    def test_keepalive_keeps_a_leased_key(self, store: KVStore, kv: KVTarget) -> None:
        lease = store.grant_lease(self.lease_ttl)
        key = kv.key("lease/kept")
        store.put(key, b"v", lease=lease)
        deadline = time.monotonic() + 2 * self.lease_ttl + 1
        while time.monotonic() < deadline:
            store.keepalive(lease)
            time.sleep(self.lease_ttl / 4)
            assert store.get(key) is not None, "a kept-alive key vanished"
        eventually(lambda: store.get(key) is None, self.lease_ttl + self.lease_slack, "the key outlived its lease")

    def test_revoke_drops_the_keys_and_keepalive_then_raises_not_found(self, store: KVStore, kv: KVTarget) -> None:
        lease = store.grant_lease(30)
        keys = [kv.key(f"lease/r{i}") for i in range(3)]
        for k in keys:
            store.put(k, b"v", lease=lease)
        other = store.grant_lease(30)
        store.put(kv.key("lease/other"), b"v", lease=other)
        store.revoke_lease(lease)
        assert [store.get(k) for k in keys] == [None, None, None]
        assert store.get(kv.key("lease/other")) is not None, "revoke dropped another lease's key"
        with pytest.raises(NotFound):
            store.keepalive(lease)
        store.revoke_lease(other)

    def test_put_with_a_lease_that_is_gone_raises_not_found(self, store: KVStore, kv: KVTarget) -> None:
        lease = store.grant_lease(30)
        store.revoke_lease(lease)
        with pytest.raises(NotFound):
            store.put(kv.key("lease/orphan"), b"v", lease=lease)
        assert store.get(kv.key("lease/orphan")) is None

    # -- watch --------------------------------------------------------------------------

    def test_watch_replays_from_a_start_revision_in_order_then_follows(self, store: KVStore, kv: KVTarget, opened: Any) -> None:
        p = kv.key("w/")
        r1 = store.put(p + "a", b"1")
        store.put(p + "b", b"2")
        store.delete(p + "a")
        store.put(kv.key("wx"), b"sibling")  # not under "w/"
        watcher = Watcher(opened(), p, r1)
        events = watcher.wait_for(3)
        assert summary(events) == [("put", p + "a", b"1"), ("put", p + "b", b"2"), ("delete", p + "a", b"")]
        assert events[0].pair.revision == r1
        assert [e.pair.revision for e in events] == sorted({e.pair.revision for e in events})
        store.put(kv.key("wy"), b"sibling")
        store.put(p + "c/d", b"3")
        store.delete_prefix(p)
        events = watcher.wait_for(6)
        assert sorted(summary(events[3:])[1:]) == [("delete", p + "b", b""), ("delete", p + "c/d", b"")]
        assert summary(events[3:4]) == [("put", p + "c/d", b"3")]
        assert len(events) == 6, summary(events)
        assert replay(events) == {}

    def test_watch_from_now_skips_history(self, store: KVStore, kv: KVTarget, opened: Any) -> None:
        p = kv.key("now/")
        store.put(p + "old", b"old")
        watcher = Watcher(opened(), p, 0)
        time.sleep(0.5)  # the watch has started
        rev = store.put(p + "new", b"new")
        events = watcher.wait_for(1)
        time.sleep(0.3)
        assert summary(watcher.events) == [("put", p + "new", b"new")]
        assert events[0].pair.revision == rev

    def test_close_ends_a_blocked_watch_within_a_second(self, kv: KVTarget) -> None:
        store = kv.open()
        watcher = Watcher(store, kv.key("blocked/"), 0)
        time.sleep(0.5)
        assert watcher.thread.is_alive()
        t0 = time.monotonic()
        store.close()
        watcher.thread.join(3)
        took = time.monotonic() - t0
        assert not watcher.thread.is_alive(), "close() did not end the watch"
        assert took <= 1.2, f"close() took {took:.2f}s to end the watch"
        assert watcher.error is None, watcher.error

    def test_watch_is_delivered_after_a_reconnect(self, store: KVStore, kv: KVTarget, opened: Any) -> None:
        if kv.outage is None:
            pytest.skip(
                f"{type(self).__name__} provides no kv_outage fixture (a context manager making "
                "the store unreachable and then reachable again)"
            )
        p = kv.key("re/")
        r0 = store.put(p + "before", b"0")
        watcher = Watcher(opened(), p, r0)
        watcher.wait_for(1)
        with kv.outage():
            t0 = time.monotonic()
            with pytest.raises(Unavailable) as err:
                store.get(p + "before")
            assert time.monotonic() - t0 < 6.0, "a call to an unreachable store must time out within 5 s"
            msg = str(err.value)
            assert (kv.url and kv.url.split("://")[-1].split(",")[0] in msg) or self.driver_name in msg, msg
            time.sleep(1.5)  # the watcher notices and starts reconnecting
        deadline = time.monotonic() + 30
        while True:
            try:
                store.put(p + "after", b"1")
                break
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        store.delete(p + "before")
        store.put(p + "after2", b"2")
        events = watcher.wait_for(4, timeout=30)
        eventually(
            lambda: replay(watcher.events) == {p + "after": b"1", p + "after2": b"2"},
            10, f"the watcher's view differs from the store: {summary(watcher.events)}",
        )
        later = summary(watcher.events)
        wanted = [("put", p + "after", b"1"), ("delete", p + "before", b""), ("put", p + "after2", b"2")]
        it = iter(later)
        assert all(w in it for w in wanted), f"events after the outage out of order: {later}"
        assert events[0].pair.key == p + "before"

    # -- concurrency --------------------------------------------------------------------

    def test_threads_increment_one_counter_with_cas(self, store: KVStore, kv: KVTarget) -> None:
        key, errors = kv.key("counter-threads"), []

        def work() -> None:
            try:
                for _ in range(self.increments):
                    while True:
                        pair = store.get(key)
                        n = int(pair.value) + 1 if pair else 1
                        if store.compare_and_swap(key, pair.revision if pair else 0, str(n).encode()):
                            break
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(self.processes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a store call hung"
        assert not errors, errors
        assert store.get(key).value == str(self.processes * self.increments).encode()  # type: ignore[union-attr]

    def test_processes_increment_one_counter_with_cas(self, store: KVStore, kv: KVTarget) -> None:
        key = kv.key("counter-processes")
        args = json.dumps({"name": self.driver_name, "url": kv.url, "home": str(kv.home), "key": key, "n": self.increments})
        procs = [
            subprocess.Popen([sys.executable, "-c", _CAS_CHILD, args], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(self.processes)
        ]
        try:
            for proc in procs:  # every child has loaded the store before any starts
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr.read()  # type: ignore[union-attr]
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            results = []
            for proc in procs:
                out, errout = proc.communicate(timeout=120)
                assert proc.returncode == 0, errout
                results.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        total = self.processes * self.increments
        assert store.get(key).value == str(total).encode()  # type: ignore[union-attr]
        wrote = sorted(v for r in results for v in r["wrote"])
        assert wrote == list(range(1, total + 1)), "two processes won the same compare-and-swap"
