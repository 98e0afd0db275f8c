"""``-o`` options of overlay networks (Docker's keys) and the daemon settings the driver reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from pyd.drivers.options import check_options, parse_duration
from pyd.errors import InvalidParameter, NotSupported

DRIVER = "overlay"
VXLANID_LIST = "com.docker.network.driver.overlay.vxlanid_list"
MTU = "com.docker.network.driver.mtu"
ENCRYPTED = "encrypted"

VNI_MIN = 1
VNI_MAX = (1 << 24) - 1
MTU_MIN = 68
MTU_MAX = 65535
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
DEFAULT_TTL = 20


def parse_vxlanid_list(value: str) -> int:
    """Docker takes one VNI per subnet; pyd makes one VXLAN device per network, so one VNI."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if len(items) != 1:
        raise ValueError("must be exactly one VXLAN ID (pyd uses one VNI per network)")
    try:
        vni = int(items[0])
    except ValueError:
        raise ValueError(f"is not a VXLAN ID ({VNI_MIN} to {VNI_MAX})") from None
    if not VNI_MIN <= vni <= VNI_MAX:
        raise ValueError(f"is outside the VXLAN ID range {VNI_MIN} to {VNI_MAX}")
    return vni


def parse_mtu(value: str) -> int:
    try:
        mtu = int(value.strip())
    except ValueError:
        raise ValueError(f"is not an MTU (an integer from {MTU_MIN} to {MTU_MAX})") from None
    if not MTU_MIN <= mtu <= MTU_MAX:
        raise ValueError(f"is outside {MTU_MIN} to {MTU_MAX}")
    return mtu


PARSERS: dict[str, Callable[[str], object]] = {VXLANID_LIST: parse_vxlanid_list, MTU: parse_mtu}


def parse_options(raw: Mapping[str, str]) -> dict[str, object]:
    if ENCRYPTED in raw:
        raise NotSupported(
            f'overlay network option "{ENCRYPTED}": encrypted overlay networks (IPsec) are not supported by pyd yet'
        )
    return check_options(raw, PARSERS, flag="-o", driver=DRIVER, kind="network")


def coerce_options(options: Mapping[str, object]) -> dict[str, object]:
    """Accept parsed values or raw strings (the core may persist raw options)."""
    return parse_options({k: str(v) for k, v in options.items()})


@dataclass(frozen=True)
class Settings:
    """The daemon settings (daemon.json names) this driver reads."""

    exec_root: str = ""
    cluster_advertise: str = ""
    ttl: int = DEFAULT_TTL  # lease TTL of our peer entries (seconds)
    heartbeat: float = DEFAULT_TTL / 3  # keepalive period (seconds)
    mtu: int = 0  # daemon-wide mtu: the underlay MTU when no underlay interface is known

    @classmethod
    def from_context(cls, settings: Mapping[str, object]) -> Settings:
        opts = settings.get("cluster-store-opts") or {}
        if not isinstance(opts, Mapping):
            raise InvalidParameter(f"cluster-store-opts must be an object of strings, not {opts!r}")
        ttl = _seconds("discovery.ttl", opts.get("discovery.ttl"), DEFAULT_TTL)
        heartbeat = _seconds("discovery.heartbeat", opts.get("discovery.heartbeat"), ttl / 3)
        ttl_i = max(1, round(ttl))
        if heartbeat <= 0 or heartbeat >= ttl_i:
            raise InvalidParameter(
                f"cluster-store-opts: discovery.heartbeat ({heartbeat:g}s) must be above 0 and below "
                f"discovery.ttl ({ttl_i}s)"
            )
        mtu = settings.get("mtu") or 0
        return cls(
            exec_root=str(settings.get("exec-root") or ""),
            cluster_advertise=str(settings.get("cluster-advertise") or "").strip(),
            ttl=ttl_i,
            heartbeat=heartbeat,
            mtu=int(mtu) if isinstance(mtu, (int, str)) and str(mtu).isdigit() else 0,
        )


def _seconds(key: str, value: object, default: float) -> float:
    """Seconds as a number or string: ``20``, ``"20"``, ``"1m"`` (Go duration)."""
    if value is None or value == "":
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        secs = float(value)
    else:
        text = str(value).strip()
        try:
            secs = float(text)
        except ValueError:
            try:
                secs = parse_duration(text)
            except ValueError:
                raise InvalidParameter(
                    f'cluster-store-opts: {key}="{value}" is not a number of seconds or a duration (e.g. 20, 30s)'
                ) from None
    if secs <= 0:
        raise InvalidParameter(f'cluster-store-opts: {key}="{value}" must be positive')
    return secs
