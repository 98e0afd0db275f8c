"""IPAM driver protocol, modelled on libnetwork's ``ipamapi.Ipam``.

Allocations must be persistent (they survive a daemon restart) and never hand out one
address twice. The default driver ("default") is a core plugin; a global-scope one stores
its state in the KV store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol


@dataclass
class Pool:
    pool_id: str  # opaque to the core
    subnet: str  # CIDR


class IpamDriver(Protocol):
    name: str

    def request_pool(
        self, address_space: str, subnet: str = "", ip_range: str = "", options: Mapping[str, str] | None = None
    ) -> Pool:
        """Reserve ``subnet`` (or choose a free one when empty). ``Conflict`` if it overlaps a pool in use."""
        ...

    def release_pool(self, pool_id: str) -> None:
        ...

    def request_address(self, pool_id: str, address: str = "", options: Mapping[str, str] | None = None) -> str:
        """Allocate ``address`` (``Conflict`` if taken) or the next free one; return it as CIDR.

        ``options`` may say ``{"RequestAddressType": "com.docker.network.gateway"}``.
        ``Unavailable`` when the pool is exhausted.
        """
        ...

    def release_address(self, pool_id: str, address: str) -> None:
        """Free an address; freeing one that is not allocated is not an error."""
        ...
