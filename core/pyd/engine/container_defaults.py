"""Docker's defaults for a container: capabilities, masked paths, the full HostConfig shape.

Facts from moby (``oci/caps/defaults.go``, ``oci/defaults.go``, API v1.41 ``HostConfig``), so
that ``inspect`` shows the same keys and defaults a Docker user and the docker SDK expect.
"""

from __future__ import annotations

import json
from typing import Any

# The default capability set, every capability's name, and the masked and read-only paths
# are part of the exec-driver API, where plugins and the engine share one definition.
from pyd.drivers.execdriver import (
    CAPABILITY_NAMES as ALL_CAPABILITIES,
    DEFAULT_CAPABILITIES,
    DEFAULT_MASKED_PATHS as MASKED_PATHS,
    DEFAULT_READONLY_PATHS as READONLY_PATHS,
)

from pyd.engine.image_config import EMPTY_CONFIG as EMPTY_IMAGE_CONFIG

DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHM_SIZE = 64 * 1024 * 1024
DEFAULT_STOP_TIMEOUT = 10
MIN_MEMORY = 6 * 1024 * 1024  # Docker refuses smaller memory limits

# The Config keys inspect shows, in Docker's order, with their "unset" values.
_CONFIG_TEMPLATE: dict[str, Any] = {**EMPTY_IMAGE_CONFIG, "Labels": {}}  # a container always shows Labels
# Keys shown only when set (Go's omitempty).
CONFIG_OPTIONAL = ("ExposedPorts", "StopSignal", "StopTimeout", "Healthcheck", "ArgsEscaped", "MacAddress", "Shell")

_HOST_CONFIG_TEMPLATE: dict[str, Any] = {
    "Binds": None,
    "ContainerIDFile": "",
    "LogConfig": {"Type": "", "Config": {}},
    "NetworkMode": "default",
    "PortBindings": {},
    "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
    "AutoRemove": False,
    "VolumeDriver": "",
    "VolumesFrom": None,
    "CapAdd": None,
    "CapDrop": None,
    "CgroupnsMode": "private",
    "Dns": [],
    "DnsOptions": [],
    "DnsSearch": [],
    "ExtraHosts": None,
    "GroupAdd": None,
    "IpcMode": "private",
    "Cgroup": "",
    "Links": None,
    "OomScoreAdj": 0,
    "PidMode": "",
    "Privileged": False,
    "PublishAllPorts": False,
    "ReadonlyRootfs": False,
    "SecurityOpt": None,
    "UTSMode": "",
    "UsernsMode": "",
    "ShmSize": DEFAULT_SHM_SIZE,
    "Runtime": "",
    "ConsoleSize": [0, 0],
    "Isolation": "",
    "CpuShares": 0,
    "Memory": 0,
    "NanoCpus": 0,
    "CgroupParent": "",
    "BlkioWeight": 0,
    "BlkioWeightDevice": [],
    "BlkioDeviceReadBps": None,
    "BlkioDeviceWriteBps": None,
    "BlkioDeviceReadIOps": None,
    "BlkioDeviceWriteIOps": None,
    "CpuPeriod": 0,
    "CpuQuota": 0,
    "CpuRealtimePeriod": 0,
    "CpuRealtimeRuntime": 0,
    "CpusetCpus": "",
    "CpusetMems": "",
    "Devices": [],
    "DeviceCgroupRules": None,
    "DeviceRequests": None,
    "KernelMemory": 0,
    "KernelMemoryTCP": 0,
    "MemoryReservation": 0,
    "MemorySwap": 0,
    "MemorySwappiness": None,
    "OomKillDisable": False,
    "PidsLimit": None,
    "Ulimits": None,
    "CpuCount": 0,
    "CpuPercent": 0,
    "IOMaximumIOps": 0,
    "IOMaximumBandwidth": 0,
    "MaskedPaths": None,
    "ReadonlyPaths": None,
}
# HostConfig keys shown only when set.
HOST_CONFIG_OPTIONAL = ("Init", "Tmpfs", "Sysctls", "Mounts", "StorageOpt")


# Fresh copies come from JSON (the templates hold only dicts, lists and scalars): a third of
# copy.deepcopy's cost, on the path of every create.
_CONFIG_JSON = json.dumps(_CONFIG_TEMPLATE)
_HOST_CONFIG_JSON = json.dumps(_HOST_CONFIG_TEMPLATE)


def config_template() -> dict[str, Any]:
    return json.loads(_CONFIG_JSON)


def host_config_template() -> dict[str, Any]:
    return json.loads(_HOST_CONFIG_JSON)
