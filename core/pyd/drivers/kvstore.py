"""KV store protocol for global-scope networking (libkv's Store, narrowed to what pyd uses).

Keys are ``/``-separated strings; values are bytes. Every method may raise ``Unavailable``
when the store cannot be reached; callers retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol


@dataclass
class KVPair:
    key: str
    value: bytes
    revision: int  # a store-wide modification revision; 0 means "absent" in CAS


@dataclass
class WatchEvent:
    kind: str  # "put" or "delete"
    pair: KVPair


class KVStore(Protocol):
    name: str

    def get(self, key: str) -> KVPair | None:
        ...

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Store ``value``; attach to ``lease`` (0: none). Return the new revision."""
        ...

    def delete(self, key: str) -> bool:
        """Return whether the key existed."""
        ...

    def list(self, prefix: str) -> list[KVPair]:
        ...

    def delete_prefix(self, prefix: str) -> int:
        ...

    def compare_and_swap(self, key: str, expected_revision: int, value: bytes, lease: int = 0) -> bool:
        """Put only if the key's revision is ``expected_revision`` (0: the key must be absent)."""
        ...

    def compare_and_delete(self, key: str, expected_revision: int) -> bool:
        ...

    def grant_lease(self, ttl: int) -> int:
        """Create a lease that expires ``ttl`` seconds after its last ``keepalive``."""
        ...

    def keepalive(self, lease: int) -> None:
        ...

    def revoke_lease(self, lease: int) -> None:
        ...

    def watch(self, prefix: str, start_revision: int = 0) -> Iterator[WatchEvent]:
        """Yield changes under ``prefix`` from ``start_revision`` on, blocking; survives reconnects
        (resumes from the last revision seen). Stops when ``close`` is called."""
        ...

    def close(self) -> None:
        ...


# -- helpers for store authors -------------------------------------------------------------------


def check_key(key: object) -> bytes:
    """A key as bytes; ``InvalidParameter`` unless it is a non-empty string."""
    from pyd.errors import InvalidParameter

    if not isinstance(key, str) or not key:
        raise InvalidParameter(f"kvstore key {key!r} is invalid: a non-empty string is required")
    return key.encode()


def check_value(value: object) -> bytes:
    """A value as bytes; ``InvalidParameter`` unless it is bytes-like."""
    from pyd.errors import InvalidParameter

    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidParameter(f"kvstore value must be bytes, not {type(value).__name__}")
    return bytes(value)
