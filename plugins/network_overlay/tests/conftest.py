"""Fixtures of the overlay driver's tests: a KV store for the driver (see ``overlay_testkv.py``).

``kvstore``: the ``local`` kvstore plugin when installed, else the in-memory store.
``memory_kv``: always the in-memory store (tests that simulate outages and lost leases).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib adds no test dirs

from overlay_testkv import MemoryKV, make_kvstore  # noqa: E402


@pytest.fixture
def kvstore(tmp_path: Path) -> Iterator[Any]:
    kv = make_kvstore(tmp_path)
    try:
        yield kv
    finally:
        kv.close()


@pytest.fixture
def memory_kv() -> Iterator[MemoryKV]:
    kv = MemoryKV()
    try:
        yield kv
    finally:
        kv.close()
