"""The daemon's side of multi-host networking: the KV store, global networks and endpoints.

* The store is the ``pyd.kvstore`` plugin named by ``cluster-store``'s scheme
  (``etcd://h:p`` → ``etcd``); without a ``cluster-store`` the embedded ``local`` store serves
  a single host. It is made on first use (``KVProxy``), so a daemon without global networks
  never loads a KV plugin, and a store that is down at start only fails the calls that need it.
* Global-scope networks live in the store (``pyd/networks/<id>``, names made unique by a CAS
  create of ``pyd/network-names/<name>``); every daemon watches that prefix and adopts or drops
  them (``NetworkService.adopt_global`` / ``drop_global``).
* Endpoints on global networks are published under ``pyd/endpoints/<net>/<ep>`` with this
  daemon's lease: other hosts resolve names from them, ``network rm`` sees endpoints anywhere,
  and a host that dies has its entries expire with the lease.

Blocking store calls run in threads (the watch has its own); results reach the event loop
through ``run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from pyd.errors import Conflict, DriverNotInstalled, InvalidParameter, NotFound, PydError, Unavailable
from pyd.registry import Kind, installed_names

if TYPE_CHECKING:
    from pyd.config import DaemonConfig
    from pyd.drivers.kvstore import KVStore
    from pyd.registry import PluginRegistry

log = logging.getLogger(__name__)

NETWORKS = "pyd/networks/"
NAMES = "pyd/network-names/"
ENDPOINTS = "pyd/endpoints/"
DEFAULT_TTL = 20
RETRY = 2.0  # seconds between attempts to reach a store that is down


def store_name(url: str) -> str:
    """The kvstore plugin for a ``cluster-store`` url: its scheme, ``local`` when empty."""
    if not url:
        return "local"
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme or not rest:
        raise InvalidParameter(f'invalid cluster-store "{url}": expected SCHEME://HOST:PORT (e.g. etcd://127.0.0.1:2379)')
    return scheme


def lease_timing(opts: dict[str, str]) -> tuple[int, float]:
    """(TTL, heartbeat) from ``cluster-store-opts`` (``discovery.ttl``, ``discovery.heartbeat``)."""
    ttl = int(opts.get("discovery.ttl") or DEFAULT_TTL)
    beat = float(opts.get("discovery.heartbeat") or max(1.0, ttl / 3))
    return ttl, min(beat, max(1.0, ttl / 2))


class KVProxy:
    """A ``KVStore`` made on first use; every method forwards to it.

    Making it may fail (plugin missing, bad url): the error is raised by that call and the
    next call tries again, so installing the plugin needs no daemon restart.
    """

    def __init__(self, config: DaemonConfig, registry: PluginRegistry, data_root: Path) -> None:
        self.url = config.cluster_store
        self.name = store_name(self.url) if self.url else "local"
        self._registry, self._data_root = registry, data_root
        self._store: KVStore | None = None
        self._closed = False
        self._lock = threading.Lock()

    def store(self) -> KVStore:
        with self._lock:
            if self._closed:
                raise Unavailable("the cluster store is closed: the daemon is shutting down")
            if self._store is None:
                installed = installed_names(Kind.KVSTORE)
                if self.name not in installed:
                    raise DriverNotInstalled("kvstore", self.name, installed)
                home = self._registry.home(self._data_root, Kind.KVSTORE, self.name)
                self._store = self._registry.init_driver(Kind.KVSTORE, self.name, url=self.url, home=home)
            return self._store

    @property
    def started(self) -> bool:
        return self._store is not None

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.store(), attr)

    def close(self) -> None:
        with self._lock:
            store, self._store, self._closed = self._store, None, True
        if store is not None:
            store.close()


class ClusterSync:
    """Publishes this host's global endpoints and follows the cluster's global networks."""

    def __init__(self, kv: KVProxy, opts: dict[str, str], host: str | None = None) -> None:
        self.kv = kv
        self.host = host or socket.gethostname()
        self.ttl, self.heartbeat = lease_timing(opts)
        self.remote: dict[str, dict[str, dict[str, Any]]] = {}  # network id -> endpoint id -> entry
        self._mine: dict[str, bytes] = {}  # key -> value of our endpoint entries
        # changes the store missed while it was away, replayed in order when it is back
        self._pending: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = []
        self._lease = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_network: Callable[[str, dict[str, Any] | None], Any] | None = None
        self._seen_networks: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(
        self, loop: asyncio.AbstractEventLoop, on_network: Callable[[str, dict[str, Any] | None], Any],
        known: Iterable[str] = (),
    ) -> bool:
        """Start the watch and keepalive threads; False if they run already.
        ``on_network(id, record or None)`` is a coroutine function run on ``loop`` for every
        network put or delete; ``known`` are the global networks this host has records of
        (those missing from the store were removed meanwhile and are dropped)."""
        if self._threads:
            return False
        self._seen_networks.update(known)
        self._loop, self._on_network = loop, on_network
        for target, name in ((self._watch_networks, "pyd-kv-networks"), (self._watch_endpoints, "pyd-kv-endpoints"),
                             (self._keepalive, "pyd-kv-lease")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return True

    def close(self) -> None:
        """Stop the threads; the lease is kept (it expires unless a restarted daemon renews
        it by publishing again), so containers that outlive the daemon stay reachable."""
        self._stop.set()
        self.kv.close()  # ends blocked watches
        for t in self._threads:
            t.join(timeout=2)
        self._threads.clear()

    # -- networks ----------------------------------------------------------------------------------

    def claim_name(self, name: str, network_id: str) -> None:
        if not self.kv.compare_and_swap(NAMES + name, 0, network_id.encode()):
            raise Conflict(f"network with name {name} already exists")

    def release_name(self, name: str, network_id: str) -> None:
        pair = self.kv.get(NAMES + name)
        if pair is not None and pair.value.decode() == network_id:
            self.kv.compare_and_delete(NAMES + name, pair.revision)

    def publish_network(self, network_id: str, record: dict[str, Any]) -> None:
        self.kv.put(NETWORKS + network_id, json.dumps(record).encode())

    def unpublish_network(self, network_id: str, name: str) -> None:
        self.kv.delete(NETWORKS + network_id)
        self.release_name(name, network_id)

    def list_networks(self) -> dict[str, dict[str, Any]]:
        out = {}
        for pair in self.kv.list(NETWORKS):
            try:
                out[pair.key[len(NETWORKS):]] = json.loads(pair.value)
            except ValueError:
                log.warning("ignoring a malformed network record in the cluster store: %s", pair.key)
        return out

    def endpoints_of(self, network_id: str) -> list[dict[str, Any]]:
        """Every endpoint of a global network in the cluster (store read: fresh)."""
        out = []
        for pair in self.kv.list(f"{ENDPOINTS}{network_id}/"):
            try:
                out.append(json.loads(pair.value))
            except ValueError:
                continue
        return out

    # -- endpoints ---------------------------------------------------------------------------------

    def publish_endpoint(self, network_id: str, endpoint_id: str, entry: dict[str, Any]) -> None:
        key = f"{ENDPOINTS}{network_id}/{endpoint_id}"
        value = json.dumps({**entry, "host": self.host}).encode()
        with self._lock:
            self._mine[key] = value
        try:
            self.kv.put(key, value, lease=self._ensure_lease())
        except PydError as exc:  # published again when the store is back
            log.warning("cannot publish endpoint %s in the cluster store: %s", endpoint_id[:12], exc)

    def withdraw_endpoint(self, network_id: str, endpoint_id: str) -> None:
        key = f"{ENDPOINTS}{network_id}/{endpoint_id}"
        with self._lock:
            self._mine.pop(key, None)
        try:
            self.kv.delete(key)
        except PydError as exc:
            log.warning("cannot withdraw endpoint %s from the cluster store now (retried when it is back): %s",
                        endpoint_id[:12], exc)
            self.defer(f"withdrawing endpoint {endpoint_id[:12]}", self.kv.delete, key)

    def defer(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` once the store answers again (e.g. an address release or a
        withdrawal that failed while it was away); ``NotFound`` counts as done."""
        with self._lock:
            self._pending.append((what, fn, args))

    def _replay(self) -> None:
        with self._lock:
            pending = list(self._pending)
        for item in pending:
            what, fn, args = item
            try:
                fn(*args)
            except NotFound:
                pass
            except PydError as exc:
                log.debug("%s: the cluster store is still away: %s", what, exc)
                return  # keep the order: the rest waits too
            except Exception:
                log.exception("%s failed; dropped", what)
            else:
                log.info("%s: done now that the cluster store is back", what)
            with self._lock:
                self._pending.remove(item)

    def _ensure_lease(self) -> int:
        with self._lock:
            if not self._lease:
                self._lease = self.kv.grant_lease(self.ttl)
            return self._lease

    def _republish(self) -> None:
        with self._lock:
            self._lease = 0
            mine = dict(self._mine)
        lease = self._ensure_lease()
        for key, value in mine.items():
            self.kv.put(key, value, lease=lease)

    def _keepalive(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with self._lock:
                lease, pending, missed = self._lease, bool(self._mine), bool(self._pending)
            if missed:
                self._replay()
            try:
                if lease:
                    self.kv.keepalive(lease)
                elif pending:
                    self._republish()
            except NotFound:  # expired while the store or this daemon was away
                try:
                    self._republish()
                except PydError as exc:
                    log.warning("cannot renew this host's endpoints in the cluster store: %s", exc)
            except PydError as exc:
                log.debug("cluster store keepalive failed: %s", exc)

    # -- watches -----------------------------------------------------------------------------------

    def _watch(self, prefix: str, initial: Callable[[], int], handle: Callable[[str, str, bytes], None]) -> None:
        """list + watch ``prefix`` until closed; a store that is down is retried."""
        while not self._stop.is_set():
            try:
                start = initial()
                for ev in self.kv.watch(prefix, start):
                    if self._stop.is_set():
                        return
                    handle(ev.kind, ev.pair.key, ev.pair.value)
                return  # the store was closed
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.debug("watch of %s failed, retrying: %s", prefix, exc)
                self._stop.wait(RETRY)

    def _watch_networks(self) -> None:
        def initial() -> int:
            pairs = self.kv.list(NETWORKS)
            current = {p.key[len(NETWORKS):] for p in pairs}
            for nid in self._seen_networks - current:
                self._deliver(nid, None)
            for p in pairs:
                self._handle_network("put", p.key, p.value)
            return max((p.revision for p in pairs), default=0) + 1

        self._watch(NETWORKS, initial, self._handle_network)

    def _handle_network(self, kind: str, key: str, value: bytes) -> None:
        nid = key[len(NETWORKS):]
        if kind == "delete":
            self._seen_networks.discard(nid)
            self._deliver(nid, None)
            return
        try:
            record = json.loads(value)
        except ValueError:
            return
        self._seen_networks.add(nid)
        self._deliver(nid, record)

    def _deliver(self, nid: str, record: dict[str, Any] | None) -> None:
        if self._loop is None or self._on_network is None or self._loop.is_closed():
            return
        fut = asyncio.run_coroutine_threadsafe(self._on_network(nid, record), self._loop)
        try:
            fut.result(timeout=150)  # in order: a delete never overtakes its create
        except Exception as exc:
            log.warning("cannot apply the cluster's change of network %s: %s", nid[:12], exc)

    def _watch_endpoints(self) -> None:
        def initial() -> int:
            pairs = self.kv.list(ENDPOINTS)
            fresh: dict[str, dict[str, dict[str, Any]]] = {}
            for p in pairs:
                self._put_remote(fresh, p.key, p.value)
            self.remote = fresh
            return max((p.revision for p in pairs), default=0) + 1

        def handle(kind: str, key: str, value: bytes) -> None:
            if kind == "delete":
                nid, _, eid = key[len(ENDPOINTS):].partition("/")
                self.remote.get(nid, {}).pop(eid, None)
            else:
                self._put_remote(self.remote, key, value)

        self._watch(ENDPOINTS, initial, handle)

    def _put_remote(self, into: dict[str, dict[str, dict[str, Any]]], key: str, value: bytes) -> None:
        nid, _, eid = key[len(ENDPOINTS):].partition("/")
        try:
            entry = json.loads(value)
        except ValueError:
            return
        if entry.get("host") != self.host:
            into.setdefault(nid, {})[eid] = entry

    def remote_endpoints(self, network_id: str) -> Iterable[dict[str, Any]]:
        return list(self.remote.get(network_id, {}).values())
