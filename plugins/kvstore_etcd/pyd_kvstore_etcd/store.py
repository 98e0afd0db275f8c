"""The ``etcd`` KV store: ``pyd.drivers.kvstore.KVStore`` on etcd v3's JSON gateway.

Unary calls go through ``EtcdClient``; each ``watch`` holds its own streaming POST to
``/v3/watch`` and reconnects by itself (backoff, next endpoint), resuming at the revision after
the last one it delivered. When etcd cannot resume (revision compacted, or the store came back
with an older revision: restarted empty), the watcher resynchronises from a fresh range.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from typing import Any, Iterator

from pyd.drivers.kvstore import KVPair, WatchEvent, check_key, check_value
from pyd.errors import InvalidParameter, NotFound, Unavailable
from pyd_kvstore_etcd.client import (
    CONNECT_TIMEOUT,
    EtcdClient,
    b64,
    prefix_end,
    set_keepalive,
    unb64,
)

BACKOFF_START = 0.1
BACKOFF_MAX = 2.0


class _Resync(Exception):
    """etcd cannot replay from the revision asked for."""


class EtcdKVStore:
    name = "etcd"

    def __init__(self, url: str) -> None:
        self.client = EtcdClient(url)  # validates the url; connects lazily
        self.url = url
        self._watch_socks: set[socket.socket] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<EtcdKVStore {self.url}>"

    _key = staticmethod(check_key)

    @staticmethod
    def _value(value: bytes) -> str:
        return b64(check_value(value))

    @staticmethod
    def _pair(kv: dict[str, Any]) -> KVPair:
        return KVPair(unb64(kv["key"]).decode(), unb64(kv.get("value")), int(kv.get("mod_revision", 0)))

    def _lease_error(self, lease: int, exc: NotFound) -> NotFound:
        return NotFound(f"lease {lease} not found in cluster store {self.url} (expired or revoked)")

    # -- KVStore ------------------------------------------------------------------------

    def get(self, key: str) -> KVPair | None:
        doc = self.client.call("kv/range", {"key": b64(self._key(key))})
        kvs = doc.get("kvs") or []
        return self._pair(kvs[0]) if kvs else None

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": b64(self._key(key)), "value": self._value(value)}
        if lease:
            body["lease"] = str(lease)
        try:
            doc = self.client.call("kv/put", body)
        except NotFound as exc:
            raise self._lease_error(lease, exc) from None
        return int(doc["header"]["revision"])

    def delete(self, key: str) -> bool:
        doc = self.client.call("kv/deleterange", {"key": b64(self._key(key))})
        return int(doc.get("deleted", 0)) > 0

    def _range_prefix(self, prefix: str) -> tuple[list[KVPair], int]:
        start = prefix.encode() or b"\0"
        doc = self.client.call(
            "kv/range", {"key": b64(start), "range_end": b64(prefix_end(prefix.encode())), "sort_target": "KEY"}
        )
        return [self._pair(kv) for kv in doc.get("kvs") or []], int(doc["header"]["revision"])

    def list(self, prefix: str) -> list[KVPair]:
        return self._range_prefix(prefix)[0]

    def delete_prefix(self, prefix: str) -> int:
        doc = self.client.call(
            "kv/deleterange", {"key": b64(prefix.encode() or b"\0"), "range_end": b64(prefix_end(prefix.encode()))}
        )
        return int(doc.get("deleted", 0))

    @staticmethod
    def _compare(key: str, expected_revision: int) -> dict[str, Any]:
        if expected_revision == 0:  # absent: never created (or deleted since)
            return {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        return {"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": str(expected_revision)}

    def compare_and_swap(self, key: str, expected_revision: int, value: bytes, lease: int = 0) -> bool:
        k = b64(self._key(key))
        put: dict[str, Any] = {"key": k, "value": self._value(value)}
        if lease:
            put["lease"] = str(lease)
        try:
            doc = self.client.call(
                "kv/txn", {"compare": [self._compare(k, expected_revision)], "success": [{"request_put": put}]}
            )
        except NotFound as exc:
            raise self._lease_error(lease, exc) from None
        return bool(doc.get("succeeded"))

    def compare_and_delete(self, key: str, expected_revision: int) -> bool:
        if expected_revision == 0:
            return False
        k = b64(self._key(key))
        doc = self.client.call(
            "kv/txn",
            {"compare": [self._compare(k, expected_revision)], "success": [{"request_delete_range": {"key": k}}]},
        )
        return bool(doc.get("succeeded"))

    def grant_lease(self, ttl: int) -> int:
        if not isinstance(ttl, int) or ttl < 1:
            raise InvalidParameter(f"lease ttl {ttl!r} is invalid: a whole number of seconds >= 1 is required")
        doc = self.client.call("lease/grant", {"TTL": str(ttl)})
        if doc.get("error"):
            raise Unavailable(f"cluster store {self.url} refused a lease: {doc['error']}")
        return int(doc["ID"])

    def keepalive(self, lease: int) -> None:
        # The gateway streams keepalive responses; one request yields one line. A lease that
        # is gone answers TTL 0 (the field is then omitted).
        doc = self.client.call("lease/keepalive", {"ID": str(lease)})
        result = doc.get("result", doc)
        if int(result.get("TTL", 0)) <= 0:
            raise NotFound(f"lease {lease} not found in cluster store {self.url} (expired or revoked)")

    def revoke_lease(self, lease: int) -> None:
        """Delete the lease and its keys; a lease that is already gone is not an error."""
        try:
            self.client.call("lease/revoke", {"ID": str(lease)})
        except NotFound:
            pass

    def close(self) -> None:
        self.client.close()
        with self._lock:
            socks = list(self._watch_socks)
        for sock in socks:  # unblocks the watch threads' reads at once
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- watch --------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int = 0) -> Iterator[WatchEvent]:
        closed = self.client.closed
        next_rev = start_revision
        seen: dict[str, int] = {}  # keys under prefix this watcher believes exist
        backoff = BACKOFF_START
        endpoint = self.client.order()[0]
        while not closed.is_set():
            try:
                for kind, pair in self._stream(endpoint, prefix, next_rev):
                    if kind == "created":
                        if next_rev <= 0:
                            next_rev = pair.revision + 1
                        backoff = BACKOFF_START  # connected: the next outage starts afresh
                        continue
                    if kind == "put":
                        seen[pair.key] = pair.revision
                    else:
                        seen.pop(pair.key, None)
                    next_rev = pair.revision + 1
                    yield WatchEvent(kind, pair)
            except _Resync:
                try:
                    pairs, at = self._range_prefix(prefix)
                except Unavailable:
                    closed.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                current = {p.key for p in pairs}
                for key in sorted(set(seen) - current):
                    yield WatchEvent("delete", KVPair(key, b"", at))
                for pair in pairs:
                    yield WatchEvent("put", pair)
                seen = {p.key: p.revision for p in pairs}
                next_rev = at + 1
                continue
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                pass
            if closed.is_set():
                return
            endpoint = (endpoint + 1) % len(self.client.endpoints)  # failover
            closed.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _stream(self, index: int, prefix: str, start_revision: int) -> Iterator[tuple[str, KVPair]]:
        """One watch stream: ``("created", pair-with-header-revision)``, then events, until
        the connection ends (an ``OSError``/``HTTPException``) or ``_Resync``."""
        ep = self.client.endpoints[index]
        conn = http.client.HTTPConnection(ep.host, ep.port, timeout=CONNECT_TIMEOUT)
        sock: socket.socket | None = None
        try:
            conn.connect()
            sock = conn.sock
            assert sock is not None
            set_keepalive(sock)
            with self._lock:
                self._watch_socks.add(sock)
            if self.client.closed.is_set():
                return
            create: dict[str, Any] = {
                "key": b64(prefix.encode() or b"\0"),
                "range_end": b64(prefix_end(prefix.encode())),
            }
            if start_revision > 0:
                create["start_revision"] = str(start_revision)
            conn.request("POST", "/v3/watch", json.dumps({"create_request": create}), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise http.client.HTTPException(f"watch answered HTTP {resp.status}")
            sock.settimeout(None)  # events may be minutes apart; keepalive notices a dead peer
            while not self.client.closed.is_set():
                line = resp.readline()
                if not line:
                    raise ConnectionResetError("watch stream ended")
                if not line.strip():
                    continue
                doc = json.loads(line)
                if "error" in doc:
                    raise http.client.HTTPException(str(doc["error"]))
                msg = doc.get("result", {})
                header_rev = int(msg.get("header", {}).get("revision", 0))
                if msg.get("compact_revision") and int(msg["compact_revision"]) > 0:
                    raise _Resync()
                if msg.get("canceled"):
                    raise http.client.HTTPException(f"watch canceled: {msg.get('cancel_reason', '')}")
                if msg.get("created"):
                    # etcd came back with an older history (restarted empty): nothing to resume
                    if start_revision > 0 and header_rev < start_revision - 1:
                        raise _Resync()
                    yield "created", KVPair("", b"", header_rev)
                for ev in msg.get("events") or []:
                    kind = "delete" if ev.get("type") == "DELETE" else "put"
                    yield kind, self._pair(ev["kv"])
        finally:
            if sock is not None:
                with self._lock:
                    self._watch_socks.discard(sock)
            conn.close()
