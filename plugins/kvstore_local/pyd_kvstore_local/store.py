"""The embedded KV store: one SQLite file (WAL) shared by every process that opens it.

Tables: ``meta`` (store id, revision counter, compacted revision), ``kv`` (key, value, mod
revision, lease), ``leases`` (id, ttl, wall-clock expiry) and ``changes`` (a bounded change
log that watchers poll). Every write is one ``BEGIN IMMEDIATE`` transaction, so processes on
the same file serialise through SQLite's lock and compare-and-swap is exact across them.

Leases expire lazily (every call first deletes the keys of leases past their expiry, logging
a ``delete`` for each) and through a sweeper thread, so watchers see expiries even when
nobody writes.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pyd.drivers.kvstore import KVPair, WatchEvent, check_key, check_value
from pyd.errors import InvalidParameter, NotFound, Unavailable

DB_NAME = "kv.db"
BUSY_TIMEOUT_MS = 5000  # the contract's ≤5 s per call
CHANGES_KEPT = 10000  # change-log rows kept for watchers that fall behind
COMPACT_EVERY = 256
POLL_INTERVAL = 0.05
SWEEP_INTERVAL = 0.5
BACKOFF_MAX = 2.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv(
    key BLOB PRIMARY KEY, value BLOB NOT NULL, mod_rev INTEGER NOT NULL,
    lease INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS leases(
    id INTEGER PRIMARY KEY AUTOINCREMENT, ttl INTEGER NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS leases_expires ON leases(expires);
CREATE TABLE IF NOT EXISTS changes(
    rev INTEGER PRIMARY KEY, kind TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL);
"""


def prefix_range(prefix: str) -> tuple[str, tuple[bytes, ...]]:
    """SQL condition and parameters for "key starts with ``prefix``" as an index range (etcd's
    range-end rule: the prefix with its last byte below 0xff incremented)."""
    start = prefix.encode()
    end = bytearray(start)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return "key >= ?", (start,)
    end[-1] += 1
    return "key >= ? AND key < ?", (start, bytes(end))


class LocalKVStore:
    """``pyd.drivers.kvstore.KVStore`` on SQLite. Thread-safe: one connection behind a lock
    (calls are sub-millisecond); cross-process safe through SQLite's file locks."""

    name = "local"

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.path = self.home / DB_NAME
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._ino = 0
        self._closed = threading.Event()
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock:
            self._open(create=True)
        self._sweeper = threading.Thread(target=self._sweep, name="kvstore-local-sweeper", daemon=True)
        self._sweeper.start()

    def __repr__(self) -> str:
        return f"<LocalKVStore {self.path}>"

    # -- connection ---------------------------------------------------------------------

    def _unavailable(self, why: object) -> Unavailable:
        return Unavailable(f"cluster store local ({self.path}) is unreachable: {why}")

    def _open(self, create: bool = False) -> sqlite3.Connection:
        if not create and not self.path.exists():
            # Never recreate a file that vanished under a running store: that would silently
            # hand out revisions and names already used. The daemon's next start creates it.
            raise self._unavailable("the database file is missing")
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            for name, value in (("store_id", secrets.token_hex(8)), ("revision", 0), ("compacted", 0)):
                conn.execute("INSERT OR IGNORE INTO meta(name, value) VALUES (?, ?)", (name, value))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise self._unavailable(exc) from exc
        self._conn, self._ino = conn, os.stat(self.path).st_ino
        return conn

    def _connection(self) -> sqlite3.Connection:
        """The open connection, reopened when the file was replaced (restored from a backup,
        moved back after an outage); ``Unavailable`` while it is missing. Caller holds the lock."""
        if self._closed.is_set():
            raise self._unavailable("the store is closed")
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:
            ino = 0
        if self._conn is not None and ino == self._ino:
            return self._conn
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if ino == 0:
            raise self._unavailable("the database file is missing")
        return self._open()

    @contextmanager
    def _txn(self, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction; expired leases are swept first (the lazy half of expiry)."""
        with self._lock:
            conn = self._connection()
            try:
                if write or self._has_expired(conn):
                    conn.execute("BEGIN IMMEDIATE")
                    self._expire(conn)
                else:
                    conn.execute("BEGIN")
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise self._unavailable(exc) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise self._unavailable(exc) from exc
            except BaseException:
                self._rollback(conn)
                raise

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    # -- internals (inside a write transaction) -------------------------------------------

    @staticmethod
    def _has_expired(conn: sqlite3.Connection) -> bool:
        return conn.execute("SELECT 1 FROM leases WHERE expires <= ? LIMIT 1", (time.time(),)).fetchone() is not None

    def _expire(self, conn: sqlite3.Connection) -> None:
        for (lease,) in conn.execute("SELECT id FROM leases WHERE expires <= ?", (time.time(),)).fetchall():
            self._drop_lease(conn, lease)

    def _drop_lease(self, conn: sqlite3.Connection, lease: int) -> None:
        for (key,) in conn.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease,)).fetchall():
            self._delete_row(conn, key)
        conn.execute("DELETE FROM leases WHERE id = ?", (lease,))

    def _bump(self, conn: sqlite3.Connection) -> int:
        (rev,) = conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value").fetchone()
        if rev % COMPACT_EVERY == 0 and rev > CHANGES_KEPT:
            conn.execute("DELETE FROM changes WHERE rev <= ?", (rev - CHANGES_KEPT,))
            conn.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (rev - CHANGES_KEPT,))
        return int(rev)

    def _put_row(self, conn: sqlite3.Connection, key: bytes, value: bytes, lease: int) -> int:
        if lease and conn.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone() is None:
            raise NotFound(f"lease {lease} not found in cluster store local (expired or revoked)")
        rev = self._bump(conn)
        conn.execute("INSERT OR REPLACE INTO kv(key, value, mod_rev, lease) VALUES (?, ?, ?, ?)", (key, value, rev, lease))
        conn.execute("INSERT INTO changes(rev, kind, key, value) VALUES (?, 'put', ?, ?)", (rev, key, value))
        return rev

    def _delete_row(self, conn: sqlite3.Connection, key: bytes) -> int:
        rev = self._bump(conn)
        conn.execute("DELETE FROM kv WHERE key = ?", (key,))
        conn.execute("INSERT INTO changes(rev, kind, key, value) VALUES (?, 'delete', ?, x'')", (rev, key))
        return rev

    _key = staticmethod(check_key)
    _value = staticmethod(check_value)

    # -- KVStore ------------------------------------------------------------------------

    def get(self, key: str) -> KVPair | None:
        k = self._key(key)
        with self._txn(write=False) as conn:
            row = conn.execute("SELECT value, mod_rev FROM kv WHERE key = ?", (k,)).fetchone()
        return None if row is None else KVPair(key, bytes(row[0]), int(row[1]))

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        k, v = self._key(key), self._value(value)
        with self._txn(write=True) as conn:
            return self._put_row(conn, k, v, lease)

    def delete(self, key: str) -> bool:
        k = self._key(key)
        with self._txn(write=True) as conn:
            if conn.execute("SELECT 1 FROM kv WHERE key = ?", (k,)).fetchone() is None:
                return False
            self._delete_row(conn, k)
            return True

    def list(self, prefix: str) -> list[KVPair]:
        return self._snapshot(prefix)[0]

    def _snapshot(self, prefix: str) -> tuple[list[KVPair], int, str]:
        """The keys under ``prefix``, the store revision they were read at, the store id."""
        cond, params = prefix_range(prefix)
        with self._txn(write=False) as conn:
            rows = conn.execute(f"SELECT key, value, mod_rev FROM kv WHERE {cond} ORDER BY key", params).fetchall()
            meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        pairs = [KVPair(bytes(k).decode(), bytes(v), int(r)) for k, v, r in rows]
        return pairs, int(meta["revision"]), str(meta["store_id"])

    def delete_prefix(self, prefix: str) -> int:
        cond, params = prefix_range(prefix)
        with self._txn(write=True) as conn:
            keys = [k for (k,) in conn.execute(f"SELECT key FROM kv WHERE {cond} ORDER BY key", params).fetchall()]
            for k in keys:
                self._delete_row(conn, k)
        return len(keys)

    def compare_and_swap(self, key: str, expected_revision: int, value: bytes, lease: int = 0) -> bool:
        k, v = self._key(key), self._value(value)
        with self._txn(write=True) as conn:
            row = conn.execute("SELECT mod_rev FROM kv WHERE key = ?", (k,)).fetchone()
            if (int(row[0]) if row else 0) != expected_revision:
                return False
            self._put_row(conn, k, v, lease)
            return True

    def compare_and_delete(self, key: str, expected_revision: int) -> bool:
        k = self._key(key)
        with self._txn(write=True) as conn:
            row = conn.execute("SELECT mod_rev FROM kv WHERE key = ?", (k,)).fetchone()
            if row is None or int(row[0]) != expected_revision:
                return False
            self._delete_row(conn, k)
            return True

    def grant_lease(self, ttl: int) -> int:
        if not isinstance(ttl, int) or ttl < 1:
            raise InvalidParameter(f"lease ttl {ttl!r} is invalid: a whole number of seconds >= 1 is required")
        with self._txn(write=True) as conn:
            cur = conn.execute("INSERT INTO leases(ttl, expires) VALUES (?, ?)", (ttl, time.time() + ttl))
            return int(cur.lastrowid or 0)

    def keepalive(self, lease: int) -> None:
        with self._txn(write=True) as conn:  # expired leases were just dropped
            cur = conn.execute("UPDATE leases SET expires = ? + ttl WHERE id = ?", (time.time(), lease))
            if cur.rowcount == 0:
                raise NotFound(f"lease {lease} not found in cluster store local (expired or revoked)")

    def revoke_lease(self, lease: int) -> None:
        """Delete the lease and its keys; a lease that is already gone is not an error."""
        with self._txn(write=True) as conn:
            self._drop_lease(conn, lease)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- watch --------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int = 0) -> Iterator[WatchEvent]:
        """Poll the change log. ``start_revision`` 0 means "from now". When the log no longer
        holds the next revision (compacted) or the file is another store now (store id),
        resynchronise from a fresh ``list``."""
        cond, params = prefix_range(prefix)
        next_rev = start_revision
        store_id = ""
        seen: dict[str, int] = {}  # keys under prefix this watcher believes exist
        backoff = POLL_INTERVAL
        while not self._closed.is_set():
            try:
                with self._txn(write=False) as conn:
                    meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
                    rows = conn.execute(
                        f"SELECT rev, kind, key, value FROM changes WHERE rev >= ? AND {cond} ORDER BY rev LIMIT 512",
                        (next_rev, *params),
                    ).fetchall()
            except Unavailable:
                self._closed.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = POLL_INTERVAL
            rev, compacted, sid = int(meta["revision"]), int(meta["compacted"]), str(meta["store_id"])
            if not store_id:
                store_id = sid
                if next_rev <= 0:
                    next_rev = rev + 1
                    rows = []  # history the caller did not ask for
            if sid != store_id or next_rev <= compacted:
                try:
                    pairs, at, store_id = self._snapshot(prefix)
                except Unavailable:
                    continue
                current = {p.key: p for p in pairs}
                for key in sorted(set(seen) - set(current)):
                    yield WatchEvent("delete", KVPair(key, b"", at))
                for pair in pairs:
                    yield WatchEvent("put", pair)
                seen = {p.key: p.revision for p in pairs}
                next_rev = at + 1
                continue
            for r, kind, k, v in rows:
                key = bytes(k).decode()
                if kind == "put":
                    seen[key] = int(r)
                else:
                    seen.pop(key, None)
                next_rev = int(r) + 1
                yield WatchEvent(kind, KVPair(key, bytes(v), int(r)))
                if self._closed.is_set():
                    return
            if not rows:
                self._closed.wait(POLL_INTERVAL)

    # -- sweeper ------------------------------------------------------------------------

    def _sweep(self) -> None:
        while not self._closed.wait(SWEEP_INTERVAL):
            try:
                with self._lock:
                    if self._closed.is_set():
                        return
                    conn = self._connection()
                    if self._has_expired(conn):
                        with self._txn(write=True):
                            pass
            except (Unavailable, sqlite3.Error):
                pass  # an outage: the next sweep or call retries
