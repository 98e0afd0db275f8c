"""pyd's ``etcd`` KV store (entry point ``pyd.kvstore: etcd``): a real etcd v3 cluster,
``cluster-store: etcd://HOST:PORT[,HOST:PORT]``, through etcd's JSON gateway over HTTP with
the standard library only. See README.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pyd.hookspecs import hookimpl

if TYPE_CHECKING:
    from pyd_kvstore_etcd.store import EtcdKVStore


@hookimpl
def pyd_kvstore_init(name: str, url: str, home: Path) -> EtcdKVStore | None:
    """Validates ``url`` only: etcd may be down at daemon start (calls raise Unavailable)."""
    if name != "etcd":
        return None
    from pyd_kvstore_etcd.store import EtcdKVStore

    return EtcdKVStore(url)
