"""A container as the engine keeps it, and its on-disk form under ``<data-root>/containers/<id>/``.

Two files, in Docker's shapes, each written atomically: ``config.v2.json`` (everything but the
HostConfig) and ``hostconfig.json``. ``inspect`` is a serialisation of this record, so what a
daemon restart reads back is exactly what clients saw. pyd's own bookkeeping (the log pipeline's
options, the rw layer, the exec driver) lives under the ``Pyd`` key of config.v2.json.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from pyd.engine.container_state import State, format_time, parse_time

CONFIG_FILE = "config.v2.json"
HOSTCONFIG_FILE = "hostconfig.json"


@dataclass
class Container:
    id: str
    name: str  # without the leading "/"
    dir: str
    created: int  # ns
    path: str
    args: list[str]
    config: dict[str, Any]
    host_config: dict[str, Any]
    image_id: str
    driver: str = ""
    state: State = field(default_factory=State)
    restart_count: int = 0
    started_before: bool = False
    manually_stopped: bool = False
    hostname_path: str = ""
    hosts_path: str = ""
    resolv_conf_path: str = ""
    log_path: str = ""
    # pyd's bookkeeping: log mode/buffer, the driver-validated log options, the exec driver, ...
    pyd: dict[str, Any] = field(default_factory=dict)
    exec_ids: list[str] = field(default_factory=list)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def image_ref(self) -> str:
        return str(self.config.get("Image") or "")

    def to_file(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Created": format_time(self.created),
            "Path": self.path,
            "Args": self.args,
            "Config": self.config,
            "State": self.state.to_docker(),
            "Image": self.image_id,
            "LogPath": self.log_path,
            "Name": "/" + self.name,
            "Driver": self.driver,
            "OS": "linux",
            "RestartCount": self.restart_count,
            "HasBeenStartedBefore": self.started_before,
            "HasBeenManuallyStopped": self.manually_stopped,
            "HostnamePath": self.hostname_path,
            "HostsPath": self.hosts_path,
            "ResolvConfPath": self.resolv_conf_path,
            "Pyd": self.pyd,
        }

    def save(self) -> None:
        """Write both files atomically and durably; hostconfig.json is renamed into place
        first, so a config.v2.json on disk always has its hostconfig.json. One directory
        fsync covers both renames (an fsync costs ~3 ms here, and create is on the hot path)."""
        _write_files(self.dir, [(HOSTCONFIG_FILE, _dumps(self.host_config)), (CONFIG_FILE, _dumps(self.to_file()))])

    def save_state(self) -> None:
        """Rewrite config.v2.json (state changes). The new content is fsynced before the
        rename, so either the old or the new record survives a crash, never a torn one; the
        directory is not synced: after a crash the older state may come back, and the restore
        reconciles it with the exec driver anyway."""
        self.write_state(self.state_bytes())

    def state_bytes(self) -> bytes:
        """config.v2.json as ``save_state`` writes it: made where the record is changed (the
        event loop), while ``write_state`` may then run in a worker thread."""
        return _dumps(self.to_file())

    def write_state(self, data: bytes) -> None:
        """The file part of ``save_state`` (its fsync included), for ``data`` from
        ``state_bytes``; any thread."""
        _write_files(self.dir, [(CONFIG_FILE, data)], sync_dir=False)

    @classmethod
    def load(cls, directory: str) -> "Container":
        with open(os.path.join(directory, CONFIG_FILE), "rb") as f:
            d = json.load(f)
        with open(os.path.join(directory, HOSTCONFIG_FILE), "rb") as f:
            hc = json.load(f)
        return cls(
            id=d["ID"],
            name=d["Name"].lstrip("/"),
            dir=directory,
            created=parse_time(d.get("Created")),
            path=d.get("Path", ""),
            args=list(d.get("Args") or []),
            config=d.get("Config") or {},
            host_config=hc,
            image_id=d.get("Image", ""),
            driver=d.get("Driver", ""),
            state=State.from_docker(d.get("State") or {}),
            restart_count=int(d.get("RestartCount") or 0),
            started_before=bool(d.get("HasBeenStartedBefore")),
            manually_stopped=bool(d.get("HasBeenManuallyStopped")),
            hostname_path=d.get("HostnamePath", ""),
            hosts_path=d.get("HostsPath", ""),
            resolv_conf_path=d.get("ResolvConfPath", ""),
            log_path=d.get("LogPath", ""),
            pyd=d.get("Pyd") or {},
        )


def _write_files(directory: str, files: list[tuple[str, bytes]], sync_dir: bool = True) -> None:
    temps: list[tuple[str, str]] = []
    try:
        for name, data in files:
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
            temps.append((tmp, name))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), 0o600)
                os.fsync(f.fileno())
        for tmp, name in temps:
            os.replace(tmp, os.path.join(directory, name))
        temps = []
    finally:
        for tmp, _ in temps:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    if sync_dir:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
