"""KV stores for the overlay driver's tests.

``make_kvstore`` gives the ``local`` kvstore plugin when it is installed (as the daemon would
use it on a single host), else ``MemoryKV``; ``PYD_OVERLAY_TEST_KV=memory`` forces the latter.

``MemoryKV`` is a small in-memory ``KVStore`` (one process, many threads):
Revisions, CAS, leases that expire, and watches that end on ``close()``. ``down = True``
makes every call raise ``Unavailable`` (a store outage); watches then deliver nothing until
it is back, as a reconnecting watch would.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from pyd.drivers.kvstore import KVPair, WatchEvent
from pyd.errors import NotFound, Unavailable
from pyd.registry import Kind, PluginRegistry, installed_names


def make_kvstore(tmp: Path) -> Any:
    if os.environ.get("PYD_OVERLAY_TEST_KV") != "memory" and "local" in installed_names(Kind.KVSTORE):
        home = tmp / "kvstore-local"
        home.mkdir(mode=0o700, exist_ok=True)
        return PluginRegistry().init_driver(Kind.KVSTORE, "local", url="", home=home)
    return MemoryKV()


class MemoryKV:
    name = "memory"

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._data: dict[str, KVPair] = {}
        self._owner: dict[str, int] = {}  # key -> lease
        self._leases: dict[int, tuple[int, float]] = {}  # id -> (ttl, deadline)
        self._ids = itertools.count(1)
        self._rev = 0
        self._log: list[tuple[int, WatchEvent]] = []
        self._closed = False
        self.down = False

    # -- internals (hold self._cond) --------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise Unavailable("memory store is closed")
        if self.down:
            raise Unavailable("memory store is unreachable: simulated outage")
        self._expire()

    def _expire(self) -> None:
        now = time.monotonic()
        for lease, (_, deadline) in list(self._leases.items()):
            if deadline <= now:
                self._drop_lease(lease)

    def _drop_lease(self, lease: int) -> None:
        self._leases.pop(lease, None)
        for key in [k for k, l in self._owner.items() if l == lease]:
            self._delete(key)

    def _put(self, key: str, value: bytes, lease: int) -> int:
        if lease and lease not in self._leases:
            raise NotFound(f"memory store: lease {lease} not found")
        self._rev += 1
        pair = KVPair(key, value, self._rev)
        self._data[key] = pair
        if lease:
            self._owner[key] = lease
        else:
            self._owner.pop(key, None)
        self._log.append((self._rev, WatchEvent("put", pair)))
        self._cond.notify_all()
        return self._rev

    def _delete(self, key: str) -> bool:
        pair = self._data.pop(key, None)
        self._owner.pop(key, None)
        if pair is None:
            return False
        self._rev += 1
        self._log.append((self._rev, WatchEvent("delete", KVPair(key, b"", self._rev))))
        self._cond.notify_all()
        return True

    # -- the protocol -----------------------------------------------------------------------

    def get(self, key: str) -> KVPair | None:
        with self._cond:
            self._check()
            return self._data.get(key)

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        with self._cond:
            self._check()
            return self._put(key, value, lease)

    def delete(self, key: str) -> bool:
        with self._cond:
            self._check()
            return self._delete(key)

    def list(self, prefix: str) -> list[KVPair]:
        with self._cond:
            self._check()
            return [p for k, p in sorted(self._data.items()) if k.startswith(prefix)]

    def delete_prefix(self, prefix: str) -> int:
        with self._cond:
            self._check()
            return sum(self._delete(k) for k in [k for k in self._data if k.startswith(prefix)])

    def compare_and_swap(self, key: str, expected_revision: int, value: bytes, lease: int = 0) -> bool:
        with self._cond:
            self._check()
            cur = self._data.get(key)
            if (cur.revision if cur else 0) != expected_revision:
                return False
            self._put(key, value, lease)
            return True

    def compare_and_delete(self, key: str, expected_revision: int) -> bool:
        with self._cond:
            self._check()
            cur = self._data.get(key)
            if cur is None or cur.revision != expected_revision:
                return False
            return self._delete(key)

    def grant_lease(self, ttl: int) -> int:
        with self._cond:
            self._check()
            lease = next(self._ids)
            self._leases[lease] = (ttl, time.monotonic() + ttl)
            return lease

    def keepalive(self, lease: int) -> None:
        with self._cond:
            self._check()
            if lease not in self._leases:
                raise NotFound(f"memory store: lease {lease} not found")
            ttl = self._leases[lease][0]
            self._leases[lease] = (ttl, time.monotonic() + ttl)

    def revoke_lease(self, lease: int) -> None:
        with self._cond:
            self._check()
            self._drop_lease(lease)

    def watch(self, prefix: str, start_revision: int = 0) -> Iterator[WatchEvent]:
        with self._cond:
            start = start_revision or self._rev + 1
        pos = 0
        while True:
            with self._cond:
                while not self._closed and (self.down or pos >= len(self._log)):
                    self._cond.wait(0.1)
                    if not self.down:
                        self._expire()
                if self._closed:
                    return
                batch, pos = self._log[pos:], len(self._log)
            for rev, ev in batch:
                if rev >= start and ev.pair.key.startswith(prefix):
                    yield ev

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
