"""The container service's stream endpoints: attach, resize, logs, top, stats, changes, export.

A mixin of ``ContainerService`` (it uses the service's index, runtime table and pool).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from typing import TYPE_CHECKING, Any, AsyncIterator

from pyd.drivers.log import ReadConfig
from pyd.engine.container_attach import AttachSession, ClientStream
from pyd.engine.container_logread import LogStream, open_reader
from pyd.engine.container_state import ZERO_TIME, format_time
from pyd.errors import Conflict, InvalidParameter, PydError

if TYPE_CHECKING:
    from pyd.engine.container_record import Container
    from pyd.engine.container_runtime import Runtime


class ContainerIO:
    # -- attach ---------------------------------------------------------------------------------

    async def attach(
        self: Any,
        ref: str,
        client: ClientStream,
        *,
        stream: bool = False,
        stdin: bool = False,
        stdout: bool = False,
        stderr: bool = False,
        logs: bool = False,
    ) -> None:
        c: Container = self.get(ref)
        rt: Runtime = self.runtime(c.id)
        tty = bool(c.config.get("Tty"))
        if logs:
            reader = await self.logs(c.id, tail=-1, since=0, until=0, follow=False)
            wanted = {s for s, on in (("stdout", stdout), ("stderr", stderr)) if on}
            try:
                async for msg in reader:
                    if msg.stream in wanted:
                        await client.write(msg.line if tty else _frame(msg.stream, msg.line))
            finally:
                reader.cancel()
        if not stream:
            return
        session = AttachSession(
            client,
            container_id=c.id,
            stdin=stdin and bool(c.config.get("OpenStdin")),
            stdout=stdout,
            stderr=stderr,
            tty=tty,
        )
        self._emit(c, "attach")
        if c.state.running and not c.state.restarting:
            await session.connect(self)
        else:
            # not started yet (docker run, start -a): connect when the start creates the process
            rt.pending_attach.append(session)
        try:
            if not await session.wait_connected():
                return
        finally:
            if session in rt.pending_attach:
                rt.pending_attach.remove(session)
        task = asyncio.current_task()
        assert task is not None
        rt.attached.add(task)
        try:
            await session.run()
        finally:
            rt.attached.discard(task)

    async def resize(self: Any, ref: str, height: int, width: int) -> None:
        c: Container = self.get(ref)
        if not c.state.running:
            raise Conflict(f"Container {c.id} is not running")
        if height < 0 or width < 0:
            raise InvalidParameter("invalid resize: height and width must be positive")
        await self.run(self._exec_driver().resize, c.id, height, width)

    # -- logs -------------------------------------------------------------------------------------

    async def logs(self: Any, ref: str, *, tail: int, since: int, until: int, follow: bool) -> LogStream:
        c: Container = self.get(ref)
        rt: Runtime = self.runtime(c.id)
        name = c.pyd.get("LogDriver") or self.config.log_driver
        driver = self.log_driver(name)
        options = driver.parse_options(dict(c.pyd.get("LogOpts") or {}))
        if rt.pipeline is not None and not rt.pipeline.closed.is_set():
            # output the shim already wrote must be in the log before we read it
            await self.run(rt.pipeline.sync, 2.0, timeout=None)
        cfg = ReadConfig(tail=tail, since_nano=since, until_nano=until, follow=follow)
        return open_reader(
            driver=driver,
            driver_name=name,
            options=options,
            ctx=self.log_context(c),
            cache_dir=c.dir,
            cache_closed=rt.log_closed,
            cfg=cfg,
            tty=bool(c.config.get("Tty")),
        )

    # -- top, stats, changes ------------------------------------------------------------------------

    def _require_running(self: Any, c: Container) -> None:
        if not c.state.running or c.state.restarting or not c.state.pid:
            raise Conflict(f"Container {c.id} is not running")

    async def top(self: Any, ref: str, ps_args: str = "") -> dict[str, Any]:
        c: Container = self.get(ref)
        self._require_running(c)
        return await self.run(_top, c.state.pid, ps_args or "-ef")

    def stats(self: Any, ref: str, *, stream: bool = True, one_shot: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Samples once a second (one, taken over a second, without ``stream``)."""
        c: Container = self.get(ref)
        return self._stats(c, stream, one_shot)

    async def _stats(self: Any, c: Container, stream: bool, one_shot: bool) -> AsyncIterator[dict[str, Any]]:
        driver = self._exec_driver()
        pre: dict[str, Any] | None = None
        if not stream and not one_shot:
            # like dockerd: precpu_stats is a sample taken one second before
            pre = await self._sample(driver, c)
            await asyncio.sleep(1.0)
        while True:
            cur = await self._sample(driver, c)
            doc = dict(cur)
            doc["preread"] = pre["read"] if pre else ZERO_TIME
            doc["precpu_stats"] = pre["cpu_stats"] if pre else {
                "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
                "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
            }
            yield doc
            if not stream:
                return
            pre = cur
            await asyncio.sleep(1.0)

    async def _sample(self: Any, driver: Any, c: Container) -> dict[str, Any]:
        if c.state.running and not c.state.restarting:
            try:
                raw = dict(await self.run(driver.stats, c.id))
            except Conflict:
                raw = {}
        else:
            raw = {}
        raw.setdefault("read", format_time(time.time_ns()))
        raw.setdefault("pids_stats", {})
        raw.setdefault("blkio_stats", {k: [] for k in (
            "io_service_bytes_recursive", "io_serviced_recursive", "io_queue_recursive", "io_service_time_recursive",
            "io_wait_time_recursive", "io_merged_recursive", "io_time_recursive", "sectors_recursive")})
        raw.setdefault("num_procs", 0)
        raw.setdefault("storage_stats", {})
        raw.setdefault("cpu_stats", {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
                                     "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}})
        raw.setdefault("memory_stats", {})
        raw["name"] = "/" + c.name
        raw["id"] = c.id
        if (c.host_config.get("NetworkMode") or "default") not in ("host",):
            raw.setdefault("networks", _net_stats(c.state.pid) if c.state.running else {})
        return raw

    async def changes(self: Any, ref: str) -> list[dict[str, Any]]:
        c: Container = self.get(ref)
        if self.layers is None:
            return []
        changes = await self.run(self.layers.rw_changes, c.id, timeout=120.0)
        return [{"Path": ch.path, "Kind": int(ch.kind)} for ch in hide_mount_points(changes)]

    # -- files (cp, export) -------------------------------------------------------------------

    async def export(self: Any, ref: str) -> AsyncIterator[bytes]:
        from pyd.engine.container_files_io import export_rootfs

        return export_rootfs(self, self.get(ref))

    async def path_stat(self: Any, ref: str, path: str) -> str:
        from pyd.engine.container_files_io import path_stat

        return await path_stat(self, ref, path)

    async def archive(self: Any, ref: str, path: str) -> tuple[str, AsyncIterator[bytes]]:
        from pyd.engine.container_files_io import get_archive

        return await get_archive(self, ref, path)

    async def extract(self: Any, ref: str, path: str, content: Any, *, no_overwrite_dir_non_dir: bool = False) -> None:
        from pyd.engine.container_files_io import put_archive

        await put_archive(self, ref, path, content, no_overwrite_dir_non_dir=no_overwrite_dir_non_dir)


_MOUNT_POINTS = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")


def hide_mount_points(changes: list[Any]) -> list[Any]:
    """Drop the mount points pyd makes for the generated /etc files (Docker keeps them in an
    init layer below the container's, so its ``diff`` never shows them), and ``/etc`` itself
    when nothing else in it changed."""
    out = [ch for ch in changes if ch.path not in _MOUNT_POINTS]
    if not any(ch.path.startswith("/etc/") for ch in out):
        out = [ch for ch in out if not (ch.path == "/etc" and int(ch.kind) == 0)]
    return out


def _frame(stream: str, data: bytes) -> bytes:
    import struct

    return struct.pack(">BxxxI", 2 if stream == "stderr" else 1, len(data)) + data


def _pids_in_namespace(pid: int) -> list[int]:
    """Host pids of every process in the pid namespace of ``pid`` (the container's)."""
    try:
        target = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return [pid]
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") == target:
                out.append(int(entry))
        except OSError:
            continue
    return sorted(out)


def _top(pid: int, ps_args: str) -> dict[str, Any]:
    """``ps`` on the host, keeping the container's processes (what dockerd does)."""
    args = ps_args.split()
    try:
        out = subprocess.run(["ps", *args], capture_output=True, text=True, timeout=10, check=True).stdout
    except FileNotFoundError:
        raise PydError("ps is not installed on the host (Debian package procps)") from None
    except subprocess.CalledProcessError as exc:
        raise InvalidParameter(f"ps: {exc.stderr.strip() or exc}") from None
    lines = out.splitlines()
    if not lines:
        return {"Titles": [], "Processes": []}
    titles = lines[0].split()
    try:
        pid_col = titles.index("PID")
    except ValueError:
        raise InvalidParameter(f"Couldn't find PID field in ps output (ps_args: {ps_args})") from None
    pids = set(_pids_in_namespace(pid))
    procs = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        if len(fields) <= pid_col:
            continue
        try:
            if int(fields[pid_col]) in pids:
                procs.append(fields)
        except ValueError:
            continue
    return {"Processes": procs, "Titles": titles}


def _net_stats(pid: int) -> dict[str, Any]:
    """Interface counters of the container's network namespace (``/proc/PID/net/dev``)."""
    out: dict[str, Any] = {}
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        name = name.strip()
        if name == "lo":
            continue
        v = [int(x) for x in rest.split()]
        if len(v) >= 16:
            out[name] = {"rx_bytes": v[0], "rx_packets": v[1], "rx_errors": v[2], "rx_dropped": v[3],
                         "tx_bytes": v[8], "tx_packets": v[9], "tx_errors": v[10], "tx_dropped": v[11]}
    return out
