"""pyd's ``local`` KV store (entry point ``pyd.kvstore: local``): the embedded single-host
store, SQLite in ``<data-root>/kvstore/local``, used when no ``cluster-store`` is set.
See README.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pyd.errors import InvalidParameter
from pyd.hookspecs import hookimpl

if TYPE_CHECKING:
    from pyd_kvstore_local.store import LocalKVStore


@hookimpl
def pyd_kvstore_init(name: str, url: str, home: Path) -> LocalKVStore | None:
    if name != "local":
        return None
    if url not in ("", "local://"):
        raise InvalidParameter(
            f'cluster-store "{url}" is invalid for the kvstore "local": it takes no address '
            '(it keeps its data under the data-root); use "" for the local store or '
            '"etcd://HOST:PORT[,HOST:PORT]" for etcd'
        )
    from pyd_kvstore_local.store import LocalKVStore

    return LocalKVStore(Path(home))
