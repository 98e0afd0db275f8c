"""The ``default`` IPAM driver (a core plugin, see ``pyd.registry.CORE_PLUGINS``).

libnetwork's built-in allocator, re-done for pyd:

* Pools live in an *address space* (``LocalDefault``, ``GlobalDefault``, or any name); within
  one space no two pools overlap (``Conflict``). Pool IDs are ``<space>/<subnet>[/<ip_range>]``.
* With no subnet, the first free subnet of the default pools is chosen: Docker's local
  defaults (172.17.0.0/16 ... 172.31.0.0/16 as /16s, then 192.168.0.0/16 in /20s), and
  10.0.0.0/8 in /24s for ``GlobalDefault``. Whether a *given* subnet clashes with a host route
  is the network driver's check, not this one's; the network layer may pass the host's routes
  in ``pyd.ipam.exclude`` so that an automatic choice avoids them.
* Addresses: the lowest free address (or the next after the last one with
  ``com.docker.network.ipam.serial``), inside ``ip_range`` when the pool has one; a specific
  address only has to be inside the subnet (Docker's "static IPs outside the dynamic range").
  The gateway (``RequestAddressType: com.docker.network.gateway``) defaults to the first host
  address of the subnet. Network and broadcast addresses are never handed out.
* State is one JSON document written atomically (temp, fsync, rename) in ``home`` and reloaded
  by a new instance. With a KV store, the ``GlobalDefault`` space lives in the store instead and
  is changed with compare-and-swap, so daemons on several hosts share it.
* A lock makes every method safe to call from several threads.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence, TypeVar

from pyd.drivers.ipam import Pool
from pyd.drivers.state import atomic_write
from pyd.errors import Conflict, InvalidOption, InvalidParameter, NotFound, Unavailable
from pyd.hookspecs import hookimpl

if TYPE_CHECKING:
    from pyd.drivers.kvstore import KVStore

log = logging.getLogger(__name__)

NAME = "default"
LOCAL_SPACE = "LocalDefault"
GLOBAL_SPACE = "GlobalDefault"

# Option keys (Docker's where Docker has one).
REQUEST_ADDRESS_TYPE = "RequestAddressType"
GATEWAY = "com.docker.network.gateway"
SERIAL = "com.docker.network.ipam.serial"
# pyd's: CIDRs an automatically chosen subnet must not overlap (host routes, given by the
# network layer), comma-separated.
EXCLUDE = "pyd.ipam.exclude"
# pyd's: daemon.json ``default-address-pools`` as JSON ([{"base": CIDR, "size": N}, ...]),
# replacing the built-in defaults for this request.
DEFAULT_POOLS = "pyd.ipam.default-pools"
POOL_OPTIONS = (SERIAL, EXCLUDE, DEFAULT_POOLS)

# (base, prefix length of the subnets carved from it), in the order they are tried.
LOCAL_DEFAULT_POOLS: tuple[tuple[str, int], ...] = tuple(
    (f"172.{n}.0.0/16", 16) for n in range(17, 32)
) + (("192.168.0.0/16", 20),)
GLOBAL_DEFAULT_POOLS: tuple[tuple[str, int], ...] = (("10.0.0.0/8", 24),)

STATE_FILE = "state.json"
KV_PREFIX = "pyd/ipam/default/"
_CAS_ATTEMPTS = 50

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


@dataclass
class _Pool:
    space: str
    subnet: Network
    ip_range: Network | None
    serial: bool = False
    allocated: set[int] = field(default_factory=set)
    last: int = 0  # the last address handed out, for serial allocation

    @property
    def pool_id(self) -> str:
        rng = f"/{self.ip_range}" if self.ip_range is not None else ""
        return f"{self.space}/{self.subnet}{rng}"

    def host_bounds(self) -> tuple[int, int]:
        """First and last address that may be handed out in the subnet."""
        net = self.subnet
        first, last = int(net.network_address), int(net.broadcast_address)
        if net.version == 4 and net.prefixlen <= 30:
            return first + 1, last - 1  # skip network and broadcast
        if net.version == 6 and net.prefixlen <= 126:
            return first + 1, last  # skip the subnet-router anycast address
        return first, last

    def range_bounds(self) -> tuple[int, int]:
        lo, hi = self.host_bounds()
        if self.ip_range is not None:
            lo = max(lo, int(self.ip_range.network_address))
            hi = min(hi, int(self.ip_range.broadcast_address))
        return lo, hi

    def to_json(self) -> dict[str, object]:
        return {
            "space": self.space,
            "subnet": str(self.subnet),
            "ip_range": str(self.ip_range) if self.ip_range is not None else "",
            "serial": self.serial,
            "allocated": [str(ipaddress.ip_address(a)) for a in sorted(self.allocated)],
            "last": str(ipaddress.ip_address(self.last)) if self.last else "",
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> _Pool:
        rng = str(data.get("ip_range") or "")
        last = str(data.get("last") or "")
        return cls(
            space=str(data["space"]),
            subnet=ipaddress.ip_network(str(data["subnet"])),
            ip_range=ipaddress.ip_network(rng) if rng else None,
            serial=bool(data.get("serial", False)),
            allocated={int(ipaddress.ip_address(a)) for a in data.get("allocated", [])},  # type: ignore[union-attr]
            last=int(ipaddress.ip_address(last)) if last else 0,
        )


Pools = dict[str, _Pool]  # pool_id -> pool


def _dump(pools: Pools) -> bytes:
    doc = {"version": 1, "pools": {pid: p.to_json() for pid, p in sorted(pools.items())}}
    return json.dumps(doc, indent=1).encode()


def _load(data: bytes, where: str) -> Pools:
    try:
        doc = json.loads(data)
        return {pid: _Pool.from_json(p) for pid, p in doc.get("pools", {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Unavailable(f'ipam driver "{NAME}": state in {where} is unreadable: {exc}') from exc


def _network(value: str, what: str) -> Network:
    try:
        # strict=False: "172.28.5.0/16" means 172.28.0.0/16, as Docker's examples assume.
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise InvalidParameter(
            f'ipam driver "{NAME}": {what} "{value}" is not a CIDR (e.g. 172.28.0.0/16)'
        ) from None


def _split_pool_id(pool_id: str) -> str:
    space, sep, _ = pool_id.partition("/")
    if not sep or not space:
        raise NotFound(f'ipam driver "{NAME}": no such pool "{pool_id}"')
    return space


def _parse_default_pools(value: str) -> list[tuple[str, int]]:
    try:
        items = json.loads(value)
        pools = [(str(i["base"]), int(i["size"])) for i in items]
        for base, size in pools:
            net = ipaddress.ip_network(base)
            if not net.prefixlen <= size <= net.max_prefixlen:
                raise ValueError(f"size {size} does not fit base {base}")
        return pools
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidOption(
            f'invalid --ipam-opt for ipam driver "{NAME}": {DEFAULT_POOLS}="{value}" is not a list '
            f'of {{"base": CIDR, "size": N}} ({exc})'
        ) from None


class DefaultIpam:
    """``pyd.drivers.ipam.IpamDriver``: the built-in allocator."""

    name = NAME

    def __init__(
        self,
        home: Path,
        kvstore: KVStore | None = None,
        default_pools: Sequence[tuple[str, int]] = LOCAL_DEFAULT_POOLS,
        global_default_pools: Sequence[tuple[str, int]] = GLOBAL_DEFAULT_POOLS,
    ) -> None:
        self.home = Path(home)
        self.kvstore = kvstore
        self.default_pools = list(default_pools)
        self.global_default_pools = list(global_default_pools)
        self._lock = threading.RLock()
        self._path = self.home / STATE_FILE
        self.home.mkdir(parents=True, exist_ok=True)
        self._local: Pools = _load(self._path.read_bytes(), str(self._path)) if self._path.exists() else {}

    # -- state: one transaction per call ------------------------------------------------

    def _transact(self, space: str, fn: Callable[[Pools], T]) -> T:
        """Run ``fn`` on the pools of ``space``'s store and persist its changes.

        ``fn`` receives a private copy and may change it freely; the copy replaces the stored
        state only once it was written, so a failed write changes nothing.
        """
        with self._lock:
            if space == GLOBAL_SPACE and self.kvstore is not None:
                return self._transact_kv(fn)
            pools = copy.deepcopy(self._local)
            result = fn(pools)
            if pools != self._local:
                atomic_write(self._path, _dump(pools))
                self._local = pools
            return result

    def _transact_kv(self, fn: Callable[[Pools], T]) -> T:
        assert self.kvstore is not None
        key = KV_PREFIX + GLOBAL_SPACE
        for _ in range(_CAS_ATTEMPTS):
            pair = self.kvstore.get(key)
            before = _load(pair.value, f"kvstore key {key}") if pair is not None else {}
            pools = copy.deepcopy(before)
            result = fn(pools)
            if pools == before:
                return result
            if self.kvstore.compare_and_swap(key, pair.revision if pair else 0, _dump(pools)):
                return result
            # another host changed the space meanwhile: redo the work on its state
        raise Unavailable(
            f'ipam driver "{NAME}": could not update {GLOBAL_SPACE} in the KV store '
            f"(concurrent changes); try again"
        )

    def _read(self, space: str) -> Pools:
        with self._lock:
            if space == GLOBAL_SPACE and self.kvstore is not None:
                pair = self.kvstore.get(KV_PREFIX + GLOBAL_SPACE)
                return _load(pair.value, "kvstore") if pair is not None else {}
            return copy.deepcopy(self._local)

    # -- pools ----------------------------------------------------------------------------

    def request_pool(
        self,
        address_space: str,
        subnet: str = "",
        ip_range: str = "",
        options: Mapping[str, str] | None = None,
    ) -> Pool:
        space = address_space or LOCAL_SPACE
        if "/" in space:
            raise InvalidParameter(f'ipam driver "{NAME}": address space "{space}" must not contain "/"')
        opts = dict(options or {})
        unknown = sorted(set(opts) - set(POOL_OPTIONS))
        if unknown:
            raise InvalidOption(
                f'invalid --ipam-opt for ipam driver "{NAME}": unknown option "{unknown[0]}"; '
                f"valid keys: {', '.join(sorted(POOL_OPTIONS))}"
            )
        serial = opts.get(SERIAL, "").strip().lower() in ("1", "t", "true")
        exclude = [_network(c, EXCLUDE) for c in opts.get(EXCLUDE, "").split(",") if c.strip()]
        if DEFAULT_POOLS in opts:
            defaults = _parse_default_pools(opts[DEFAULT_POOLS])
        else:
            defaults = self.global_default_pools if space == GLOBAL_SPACE else self.default_pools
        want = _network(subnet, "subnet") if subnet else None
        rng = _network(ip_range, "ip_range") if ip_range else None
        if rng is not None and want is None:
            raise InvalidParameter(f'ipam driver "{NAME}": ip_range "{ip_range}" needs a subnet')
        if rng is not None and want is not None and (
            rng.version != want.version or not rng.subnet_of(want)  # type: ignore[arg-type]
        ):
            raise InvalidParameter(
                f'ipam driver "{NAME}": ip_range {rng} is not inside subnet {want}'
            )

        def reserve(pools: Pools) -> Pool:
            in_space = [p.subnet for p in pools.values() if p.space == space]
            if want is not None:
                for other in in_space:
                    if other.version == want.version and other.overlaps(want):  # type: ignore[arg-type]
                        raise Conflict(
                            f'ipam driver "{NAME}": pool {want} overlaps with pool {other} '
                            f'in address space "{space}"'
                        )
                chosen = want
            else:
                chosen = self._choose(defaults, in_space + exclude, space)
            pool = _Pool(space, chosen, rng, serial=serial)
            pools[pool.pool_id] = pool
            return Pool(pool_id=pool.pool_id, subnet=str(chosen))

        return self._transact(space, reserve)

    @staticmethod
    def _choose(defaults: Iterable[tuple[str, int]], taken: list[Network], space: str) -> Network:
        for base, size in defaults:
            for cand in ipaddress.ip_network(base).subnets(new_prefix=size):
                if not any(t.version == cand.version and t.overlaps(cand) for t in taken):  # type: ignore[arg-type]
                    return cand
        raise Unavailable(
            f'ipam driver "{NAME}": could not find an available, non-overlapping address pool '
            f'among the defaults to assign to the network (address space "{space}"); '
            "give a subnet, or remove unused networks"
        )

    def release_pool(self, pool_id: str) -> None:
        """Forget the pool and its addresses. Releasing an unknown pool is a no-op (retry-safe)."""
        space = _split_pool_id(pool_id)

        def release(pools: Pools) -> None:
            if pools.pop(pool_id, None) is None:
                log.debug("release of unknown pool %s", pool_id, extra={"driver": f"ipam:{NAME}"})

        self._transact(space, release)

    def pools(self, address_space: str = LOCAL_SPACE) -> list[Pool]:
        """The pools reserved in ``address_space`` (for inspection and tests)."""
        return [
            Pool(pool_id=pid, subnet=str(p.subnet))
            for pid, p in sorted(self._read(address_space).items())
            if p.space == address_space
        ]

    # -- addresses ------------------------------------------------------------------------

    def request_address(
        self, pool_id: str, address: str = "", options: Mapping[str, str] | None = None
    ) -> str:
        space = _split_pool_id(pool_id)
        opts = options or {}
        gateway = opts.get(REQUEST_ADDRESS_TYPE) == GATEWAY
        serial_opt = opts.get(SERIAL, "").strip().lower() in ("1", "t", "true")

        def allocate(pools: Pools) -> str:
            pool = pools.get(pool_id)
            if pool is None:
                raise NotFound(f'ipam driver "{NAME}": no such pool "{pool_id}"')
            if address:
                want = self._parse_address(pool, address)
                if want in pool.allocated:
                    raise Conflict(
                        f'ipam driver "{NAME}": address {ipaddress.ip_address(want)} is already '
                        f"in use in pool {pool.subnet}"
                    )
                ip = want
            else:
                # The gateway comes from the whole subnet, not the dynamic range.
                lo, hi = pool.host_bounds() if gateway else pool.range_bounds()
                start = pool.last + 1 if (pool.serial or serial_opt) and lo <= pool.last < hi else lo
                found = _first_free(pool.allocated, start, hi)
                if found is None and start > lo:
                    found = _first_free(pool.allocated, lo, start - 1)
                if found is None:
                    where = f"range {pool.ip_range} of " if pool.ip_range and not gateway else ""
                    raise Unavailable(
                        f'ipam driver "{NAME}": no available addresses in {where}pool {pool.subnet}'
                    )
                ip = found
            pool.allocated.add(ip)
            pool.last = ip
            return f"{ipaddress.ip_address(ip)}/{pool.subnet.prefixlen}"

        return self._transact(space, allocate)

    @staticmethod
    def _parse_address(pool: _Pool, address: str) -> int:
        try:
            ip = ipaddress.ip_interface(address.strip()).ip
        except ValueError:
            raise InvalidParameter(f'ipam driver "{NAME}": "{address}" is not an IP address') from None
        if ip.version != pool.subnet.version or ip not in pool.subnet:
            raise InvalidParameter(
                f'ipam driver "{NAME}": address {ip} is not in pool {pool.subnet}'
            )
        lo, hi = pool.host_bounds()
        if not lo <= int(ip) <= hi:
            raise InvalidParameter(
                f'ipam driver "{NAME}": address {ip} is the network or broadcast address of {pool.subnet}'
            )
        return int(ip)

    def release_address(self, pool_id: str, address: str) -> None:
        space = _split_pool_id(pool_id)
        try:
            ip = int(ipaddress.ip_interface(address.strip()).ip)
        except ValueError:
            raise InvalidParameter(f'ipam driver "{NAME}": "{address}" is not an IP address') from None

        def release(pools: Pools) -> None:
            pool = pools.get(pool_id)
            if pool is None:
                raise NotFound(f'ipam driver "{NAME}": no such pool "{pool_id}"')
            pool.allocated.discard(ip)

        self._transact(space, release)

    def addresses(self, pool_id: str) -> list[str]:
        """The addresses allocated in ``pool_id`` (for inspection and tests)."""
        pool = self._read(_split_pool_id(pool_id)).get(pool_id)
        if pool is None:
            raise NotFound(f'ipam driver "{NAME}": no such pool "{pool_id}"')
        return [str(ipaddress.ip_address(a)) for a in sorted(pool.allocated)]


def _first_free(allocated: set[int], lo: int, hi: int) -> int | None:
    """The lowest address in [lo, hi] not in ``allocated``; walks only the allocated ones."""
    if lo > hi:
        return None
    cand = lo
    for a in sorted(a for a in allocated if lo <= a <= hi):
        if a > cand:
            break
        cand = a + 1
    return cand if cand <= hi else None


@hookimpl
def pyd_ipam_init(name: str, home: Path, kvstore: KVStore | None) -> DefaultIpam | None:
    if name != NAME:
        return None
    return DefaultIpam(home, kvstore)
