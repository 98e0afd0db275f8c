"""Peer entries in the cluster store: publishing ours under a lease, watching everyone's.

Two daemon threads per driver, started with its first network:

* keepalive: renews the lease every heartbeat. When the lease is gone (the store was
  unreachable for longer than its TTL, or restarted empty) it grants a new one and puts our
  entries again; writes that failed while the store was down are retried here. When the
  store comes back after being unreachable it asks for a full resynchronisation.
* watch: one watch over ``pyd/overlay/peers/``. It starts from a full list and keeps a copy
  of every peer entry in the cluster; each change calls ``on_change`` with the network ids
  concerned (``None``: all), and the driver programs the difference.

The threads end when ``close()`` is called or when the KV store is closed (its watch ends).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from pyd.drivers.kvstore import KVStore, WatchEvent
from pyd.errors import NotFound, Unavailable

from pyd_network_overlay import cluster
from pyd_network_overlay.links import Peer

log = logging.getLogger(__name__)
_EXTRA = {"driver": "network:overlay"}


class PeerSync:
    def __init__(
        self, kv: KVStore, *, ttl: int, heartbeat: float, on_change: Callable[[set[str] | None], None]
    ) -> None:
        self.kv = kv
        self.ttl = ttl
        self.heartbeat = heartbeat
        self.on_change = on_change
        self._lock = threading.Lock()  # own, remote, pending deletes
        self._io = threading.Lock()  # serialises our writes (publish, withdraw, re-publish)
        self._apply = threading.Lock()  # a list and the events after it apply in order
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.lease = 0
        self.dirty = False  # some own entry may be missing in the store
        self.healthy = True
        self.own: dict[str, bytes] = {}
        self.pending_delete: set[str] = set()
        self.remote: dict[str, dict[str, Peer]] = {}  # network id -> endpoint id -> peer

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._threads or self._stop.is_set():
            return
        for target, name in ((self._watch_main, "overlay-watch"), (self._keepalive_main, "overlay-keepalive")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        """Stop both threads. The watch thread ends at its next event or when the store is
        closed. The lease is left to expire (containers may still run after a shutdown)."""
        self._stop.set()
        for t in self._threads:
            if t is not threading.current_thread() and t.name == "overlay-keepalive":
                t.join(timeout=1.0)

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    # -- our entries ------------------------------------------------------------------------

    def publish(self, key: str, value: bytes) -> None:
        """Put ``key`` with our lease. While the store is unreachable this only logs: the
        keepalive thread puts it when the store is back."""
        with self._lock:
            self.own[key] = value
            self.pending_delete.discard(key)
        try:
            with self._io:
                self._put(key, value)
        except Unavailable as exc:
            with self._lock:
                self.dirty = True
            log.warning("peer entry %s not published yet: %s", key, exc, extra=_EXTRA)

    def withdraw(self, key: str) -> None:
        with self._lock:
            self.own.pop(key, None)
        try:
            with self._io:
                self.kv.delete(key)
        except Unavailable as exc:
            with self._lock:
                self.pending_delete.add(key)
            log.warning("peer entry %s not removed yet: %s", key, exc, extra=_EXTRA)

    def owns(self, key: str) -> bool:
        with self._lock:
            return key in self.own

    def own_keys(self, prefix: str) -> list[str]:
        with self._lock:
            return [k for k in self.own if k.startswith(prefix)]

    def _put(self, key: str, value: bytes) -> None:
        if not self.lease:
            self.lease = self.kv.grant_lease(self.ttl)
        try:
            self.kv.put(key, value, lease=self.lease)
        except NotFound:  # the lease expired meanwhile
            self.lease = self.kv.grant_lease(self.ttl)
            self.kv.put(key, value, lease=self.lease)

    def beat(self) -> None:
        """One keepalive round (the keepalive thread calls it every heartbeat)."""
        try:
            with self._io:
                with self._lock:
                    own = dict(self.own)
                    deletes = set(self.pending_delete)
                    dirty = self.dirty
                if self.lease:
                    try:
                        self.kv.keepalive(self.lease)
                    except NotFound:
                        log.warning("lease of our peer entries expired; publishing them again", extra=_EXTRA)
                        self.lease = 0
                        dirty = True
                if dirty or (own and not self.lease):
                    with self._lock:
                        self.dirty = False
                    for key, value in own.items():
                        with self._lock:
                            still = self.own.get(key) == value
                        if still:
                            self._put(key, value)
                for key in deletes:
                    self.kv.delete(key)
                    with self._lock:
                        self.pending_delete.discard(key)
        except Unavailable as exc:
            with self._lock:
                self.dirty = self.dirty or bool(self.own)
            if self.healthy:
                log.warning("cluster store unreachable; will resynchronise when it is back: %s", exc, extra=_EXTRA)
            self.healthy = False
            return
        if not self.healthy:
            self.healthy = True
            log.info("cluster store reachable again; resynchronising peers", extra=_EXTRA)
            try:
                self.resync()
            except Unavailable:
                self.healthy = False

    def _keepalive_main(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self.beat()
            except Exception:  # never let the thread die: entries would expire
                log.exception("overlay keepalive failed", extra=_EXTRA)

    # -- everyone's entries -----------------------------------------------------------------

    def snapshot(self, network_id: str) -> dict[str, Peer]:
        """Remote peers of a network: entries that are not ours."""
        prefix = f"{cluster.PEERS}{network_id}/"
        with self._lock:
            return {
                ep: p for ep, p in self.remote.get(network_id, {}).items() if prefix + ep not in self.own
            }

    def resync(self) -> int:
        """Replace the copy with a fresh list of every peer entry; program all networks.
        Returns the revision to watch from."""
        with self._apply:
            pairs = self.kv.list(cluster.ROOT)
            remote: dict[str, dict[str, Peer]] = {}
            for pair in pairs:
                ids = cluster.split_peer_key(pair.key)
                peer = cluster.parse_peer(pair.value) if ids else None
                if ids and peer:
                    remote.setdefault(ids[0], {})[ids[1]] = peer
            with self._lock:
                self.remote = remote
            # Every key under pyd/overlay/ has a revision at most the store's current one, so
            # watching from just above the highest misses nothing; replayed events are harmless.
            start = max((p.revision for p in pairs), default=0) + 1
        self.on_change(None)
        return start

    def refresh(self, network_id: str) -> None:
        """A fresh list of one network's peers (after creating it here); programs it."""
        try:
            with self._apply:
                pairs = self.kv.list(f"{cluster.PEERS}{network_id}/")
                peers: dict[str, Peer] = {}
                for pair in pairs:
                    ids = cluster.split_peer_key(pair.key)
                    peer = cluster.parse_peer(pair.value) if ids else None
                    if ids and peer and ids[0] == network_id:
                        peers[ids[1]] = peer
                with self._lock:
                    self.remote[network_id] = peers
        except Unavailable as exc:
            log.warning("cannot list peers of network %s now (using what the watch saw): %s", network_id, exc,
                        extra=_EXTRA)
        self.on_change({network_id})

    def _event(self, ev: WatchEvent) -> str | None:
        ids = cluster.split_peer_key(ev.pair.key)
        if ids is None:
            return None
        net, ep = ids
        with self._apply, self._lock:
            if ev.kind == "delete":
                self.remote.get(net, {}).pop(ep, None)
            else:
                peer = cluster.parse_peer(ev.pair.value)
                if peer is None:
                    log.warning("ignoring malformed peer entry %s", ev.pair.key, extra=_EXTRA)
                    return None
                self.remote.setdefault(net, {})[ep] = peer
        return net

    def _watch_main(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                start = self.resync()
                for ev in self.kv.watch(cluster.PEERS, start):
                    if self._stop.is_set():
                        return
                    net = self._event(ev)
                    if net is not None:
                        self.on_change({net})
                    delay = 0.5
                break  # the generator ended: the store was closed
            except Unavailable as exc:
                log.info("peer watch waiting for the cluster store: %s", exc, extra=_EXTRA)
            except Exception:
                log.exception("peer watch failed; restarting it", extra=_EXTRA)
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, 10.0)
        self._stop.set()  # the store is closed: the keepalive thread ends too
