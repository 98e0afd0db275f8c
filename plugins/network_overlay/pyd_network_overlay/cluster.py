"""The overlay driver's keys in the cluster KV store, and VNI allocation.

``pyd/overlay/vni/<vni>``            network id: the claim on a VNI (CAS create)
``pyd/overlay/networks/<id>``        {"vni": N}: what every host uses for the network
``pyd/overlay/peers/<id>/<ep-id>``   {"ip", "mac", "vtep"}, with the publishing host's lease

Allocation takes no lock that a crash could leave held: a host claims the lowest free VNI
from 4096 up (as Docker) by create-if-absent, then records it for the network the same way;
a host that loses the second race drops its claim and uses the winner's VNI.
"""

from __future__ import annotations

import json
from typing import Any

from pyd.drivers.kvstore import KVStore
from pyd.errors import Conflict, Unavailable

ROOT = "pyd/overlay/"
VNI = ROOT + "vni/"
NETWORKS = ROOT + "networks/"
PEERS = ROOT + "peers/"

VNI_FIRST = 4096
VNI_LAST = (1 << 24) - 1
_ATTEMPTS = 64


def peer_key(network_id: str, endpoint_id: str) -> str:
    return f"{PEERS}{network_id}/{endpoint_id}"


def split_peer_key(key: str) -> tuple[str, str] | None:
    if not key.startswith(PEERS):
        return None
    net, _, ep = key[len(PEERS) :].partition("/")
    return (net, ep) if net and ep and "/" not in ep else None


def peer_value(ip: str, mac: str, vtep: str) -> bytes:
    return json.dumps({"ip": ip, "mac": mac, "vtep": vtep}, sort_keys=True).encode()


def parse_peer(value: bytes) -> tuple[str, str, str] | None:
    try:
        d: Any = json.loads(value)
        ip = str(d.get("ip", "")).split("/")[0]
        return ip, str(d["mac"]).lower(), str(d.get("vtep", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def network_vni(kv: KVStore, network_id: str, name: str, fixed: int | None) -> tuple[int, bool]:
    """The network's VNI, allocating it if no host did yet. Returns ``(vni, allocated_here)``.

    ``Conflict``: ``fixed`` is taken by another network, or differs from the one the network
    already has. ``Unavailable`` passes through (the store is down)."""
    for _ in range(_ATTEMPTS):
        current = kv.get(NETWORKS + network_id)
        if current is not None:
            vni = int(json.loads(current.value)["vni"])
            if fixed is not None and fixed != vni:
                raise Conflict(
                    f'overlay network "{name}": it already has VXLAN ID {vni} in the cluster store, not {fixed}'
                )
            return vni, False
        vni = fixed if fixed is not None else _free_vni(kv)
        if not _claim(kv, vni, network_id):
            if fixed is not None:
                owner = kv.get(VNI + str(vni))
                raise Conflict(
                    f'overlay network "{name}": VXLAN ID {vni} is in use by network '
                    f"{owner.value.decode() if owner else 'another network'}"
                )
            continue  # another host took it first: pick again
        if kv.compare_and_swap(NETWORKS + network_id, 0, json.dumps({"vni": vni}).encode()):
            return vni, True
        # Another host recorded a VNI for this network first: drop our claim if it differs.
        winner = kv.get(NETWORKS + network_id)
        if winner is not None and int(json.loads(winner.value)["vni"]) != vni:
            _release(kv, vni, network_id)
    raise Unavailable(f'overlay network "{name}": could not allocate a VXLAN ID (too much contention)')


def _free_vni(kv: KVStore) -> int:
    used = set()
    for pair in kv.list(VNI):
        try:
            used.add(int(pair.key[len(VNI) :]))
        except ValueError:
            continue
    vni = VNI_FIRST
    while vni in used:
        vni += 1
    if vni > VNI_LAST:
        raise Conflict(f"no free VXLAN ID left between {VNI_FIRST} and {VNI_LAST}")
    return vni


def _claim(kv: KVStore, vni: int, network_id: str) -> bool:
    key = VNI + str(vni)
    if kv.compare_and_swap(key, 0, network_id.encode()):
        return True
    pair = kv.get(key)
    return pair is not None and pair.value.decode() == network_id  # ours already (a retry)


def _release(kv: KVStore, vni: int, network_id: str) -> None:
    pair = kv.get(VNI + str(vni))
    if pair is not None and pair.value.decode() == network_id:
        kv.compare_and_delete(pair.key, pair.revision)


def forget(kv: KVStore, network_id: str) -> None:
    """Free the network's cluster-wide state: its VNI claim(s), its record, stale peers."""
    for pair in kv.list(VNI):
        if pair.value.decode(errors="replace") == network_id:
            kv.compare_and_delete(pair.key, pair.revision)
    kv.delete(NETWORKS + network_id)
    kv.delete_prefix(f"{PEERS}{network_id}/")
