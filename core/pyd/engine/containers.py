"""The container service: records, lifecycle, restart policies, live-restore.

Records live under ``<data-root>/containers/<id>/`` (``container_record``); the exec driver
runs them (``pyd.drivers.execdriver``); the log pipeline (``container_logs``) feeds the log
driver. Every driver call runs in the service's thread pool with a deadline, serialised per
container by an asyncio lock; list and inspect read records only.

Lifecycle rules follow moby: ``start`` of a running container is 304, ``stop`` of a stopped
one 304; ``stop`` sends the stop signal, waits ``t`` seconds (default ``StopTimeout`` or 10),
then SIGKILL; an exit triggers the restart policy unless the container was stopped by hand;
``AutoRemove`` (``run --rm``) removes the container after it exits, in the daemon. A failed
create or start leaves nothing behind (no layer, mount, cgroup or shim).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal as _signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

from pyd.drivers.execdriver import CreateContainerRequest, StdioConfig
from pyd.drivers.log import LogContext, LogReader
from pyd.engine import container_network as netlink
from pyd.engine import container_views as views
from pyd.engine.container_config import (
    normalize_config,
    normalize_host_config,
    parse_signal,
)
from pyd.engine.container_defaults import DEFAULT_STOP_TIMEOUT
from pyd.engine.container_files import write_etc_files
from pyd.engine.container_exec import ExecService
from pyd.engine.container_index import ContainerIndex, new_id
from pyd.engine.container_io import ContainerIO
from pyd.engine.file_watch import FileWatcher
from pyd.engine.container_logcache import CacheWriter
from pyd.engine.container_logs import LogPipeline, unread_output
from pyd.engine.container_record import Container
from pyd.engine.container_runtime import (
    Runtime,
    WaitResult,
    exit_code_for_start_error,
    next_backoff,
    restart_on_daemon_start,
    should_restart,
)
from pyd.engine.container_spec import build_spec
from pyd.engine.container_state import now_nano
from pyd.engine.container_user import resolve_user_in_rootfs
from pyd.engine.container_volumes import ContainerMounts
from pyd.engine.rootfs_path import mkdir_all_in_root, open_in_root
from pyd.engine.store import validate_name
from pyd.errors import (
    Conflict,
    InvalidParameter,
    NotFound,
    NotModified,
    PydError,
    Unavailable,
)
from pyd.registry import Kind
from pyd.types import ContainerInfo

if TYPE_CHECKING:
    from pyd.config import DaemonConfig
    from pyd.engine.events import EventBus
    from pyd.engine.images import ImageService
    from pyd.engine.layers import LayerStore
    from pyd.registry import PluginRegistry

log = logging.getLogger(__name__)
T = TypeVar("T")

SHORT = 30.0  # deadline of a driver call that should be quick (seconds)
LONG = 120.0  # deadline of mounts, layer creation and removal
SHIM_LOG = "stdio.log"  # the shim's output file in the container directory
TRASH_PREFIX = ".removed-"  # a removed container's directory until its cleanup is done
ATTACH_FLUSH = 2.0  # how long an exit waits for attach streams to deliver the last output
MOUNT_POINTS_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")


class ContainerService(ContainerIO):
    """``/containers/*``. Methods are coroutines for the event loop unless noted."""

    def __init__(
        self,
        *,
        config: DaemonConfig,
        registry: PluginRegistry,
        events: EventBus,
        layers: LayerStore | None,
        images: ImageService | None,
        exec_driver: Any,
        log_driver: Any = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.events = events
        self.layers = layers
        self.images = images
        self.driver = exec_driver
        self.root = Path(config.data_root) / "containers"
        self.bundles = Path(config.exec_root) / "containers"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o710)
        self.bundles.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.index: ContainerIndex[Container] = ContainerIndex()
        self._rt: dict[str, Runtime] = {}
        self._log_drivers: dict[str, Any] = {}
        if log_driver is not None:
            self._log_drivers[config.log_driver] = log_driver
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="pyd-ctr")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: FileWatcher | None = None
        self._closing = False  # monitors stop reporting exits
        self._shutting_down = False  # exits no longer restart or auto-remove
        self._security_keys: list[str] | None = None
        self._purging: set[asyncio.Task[Any]] = set()
        self._mounted_for_purge: set[str] = set()  # exited --rm containers whose rootfs is still mounted
        self.execs = ExecService(self)
        self.networks: Any = None  # the NetworkService, set by the composition root
        self.mounts = ContainerMounts()  # volumes, binds, tmpfs; attached to the VolumeService by the composition root

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def watcher(self) -> FileWatcher:
        if self._watcher is None:
            self._watcher = FileWatcher()
        return self._watcher

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = SHORT, what: str = "") -> T:
        """Run a blocking call in the pool; ``Unavailable`` if it misses its deadline."""
        fut = self.loop.run_in_executor(self._pool, lambda: fn(*args))
        if timeout is None:
            return await fut
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            name = what or getattr(fn, "__qualname__", "driver call")
            raise Unavailable(f"{name} did not complete within {timeout:g}s") from None

    def _exec_driver(self) -> Any:
        if self.driver is None:
            raise Unavailable("no exec driver is available: install pyd-exec-native (see pyd info)")
        return self.driver

    def runtime(self, cid: str) -> Runtime:
        rt = self._rt.get(cid)
        if rt is None:
            rt = self._rt[cid] = Runtime()
        return rt

    def get(self, ref: str) -> Container:
        return self.index.get(ref)

    def security_keys(self) -> list[str]:
        if self._security_keys is None:
            keys: list[str] = []
            for result in self.registry.broadcast("pyd_security_opt_keys"):
                keys.extend(result or [])
            self._security_keys = sorted(set(keys))
        return self._security_keys

    def log_driver(self, name: str) -> Any:
        driver = self._log_drivers.get(name)
        if driver is None:
            driver = self.registry.init_driver(
                Kind.LOG, name, home=self.registry.home(Path(self.config.data_root), Kind.LOG, name)
            )
            self._log_drivers[name] = driver
        return driver

    def info(self, c: Container) -> ContainerInfo:
        return ContainerInfo(
            id=c.id,
            name=c.name,
            image=c.image_ref,
            labels=dict(c.config.get("Labels") or {}),
            security_opts=list(c.host_config.get("SecurityOpt") or []),
            privileged=bool(c.host_config.get("Privileged")),
            state_dir=c.dir,
            daemon_settings=self._settings(),
        )

    def _settings(self) -> dict[str, Any]:
        if not hasattr(self, "_settings_cache"):
            self._settings_cache = self.config.settings()
        return self._settings_cache

    def _emit(self, c: Container, action: str, **extra: str) -> None:
        attrs = dict(c.config.get("Labels") or {})
        attrs.update({"image": c.image_ref, "name": c.name})
        attrs.update(extra)
        self.events.emit("container", action, c.id, attrs)

    def contribute_info(self, info: dict[str, Any]) -> None:
        counts = {"running": 0, "paused": 0, "stopped": 0}
        for c in self.index:
            if c.state.paused:
                counts["paused"] += 1
            elif c.state.running:
                counts["running"] += 1
            else:
                counts["stopped"] += 1
        info["Containers"] = len(self.index)
        info["ContainersRunning"] = counts["running"]
        info["ContainersPaused"] = counts["paused"]
        info["ContainersStopped"] = counts["stopped"]

    def using_image(self, image_id: str) -> list[tuple[str, bool]]:
        """For the image service: (container ID, running) of containers made from ``image_id``."""
        return [(c.id, c.state.running) for c in self.index if c.image_id == image_id]

    # -- create ---------------------------------------------------------------------------------

    async def create(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /containers/create``: returns ``{"Id": ..., "Warnings": [...]}``."""
        if not isinstance(body, Mapping):
            raise InvalidParameter("invalid create body: expected a JSON object")
        image_ref = body.get("Image")
        if not image_ref or not isinstance(image_ref, str):
            raise InvalidParameter("Config.Image is required (the image to create the container from)")
        if name:
            name = validate_name("container", name)
        cid = new_id(self.index)  # type: ignore[arg-type]
        if not name:
            name = self.index.fresh_name()
        self.index.reserve(name, cid)  # before any await: a concurrent create sees the name taken
        try:
            return await self._create(cid, name, image_ref, body)
        except BaseException:
            if self.index.get_id(cid) is None:
                self.index.release(name)
            raise

    async def _create(self, cid: str, name: str, image_ref: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if self.images is None or self.layers is None:
            raise Unavailable("no storage driver is available: containers cannot be created")
        image = await self.run(self.images.resolve, image_ref)  # may wait for the store's lock
        img_cfg = image.config.get("config") or {}
        cfg = normalize_config(body, img_cfg, image_ref)
        hc_raw = body.get("HostConfig")
        result = normalize_host_config(
            hc_raw if isinstance(hc_raw, Mapping) else None,
            ncpu=os.cpu_count() or 1,
            default_log_driver=self.config.log_driver,
            default_log_opts={k: v for k, v in self.config.log_opts.items()},
            plugin_security_keys=self.security_keys(),
            runtime=getattr(self.driver, "name", "") or "",
        )
        hc = result.host_config
        # log options belong to the log driver: checked now, never at start
        ldriver = self.log_driver(result.log_driver)
        ldriver.parse_options(result.log_opts)
        mode = hc["NetworkMode"]
        if mode.startswith("container:"):
            self.get(mode.split(":", 1)[1])  # NotFound names it
        if not cfg.get("Hostname"):
            cfg["Hostname"] = os.uname().nodename if mode == "host" else cid[:12]
        c = Container(
            id=cid,
            name=name,
            dir=str(self.root / cid),
            created=now_nano(),
            path=(cfg.get("Entrypoint") or cfg.get("Cmd") or [""])[0],
            args=((cfg.get("Entrypoint") or []) + (cfg.get("Cmd") or []))[1:],
            config=cfg,
            host_config=hc,
            image_id=image.id,
            driver=self.layers.driver_name,
            pyd={
                "LogDriver": result.log_driver,
                "LogOpts": result.log_opts,
                "LogMode": result.log_mode,
                "LogMaxBuffer": result.log_max_buffer,
                "ImageTopChain": image.top_chain,
            },
        )
        c.log_path = os.path.join(c.dir, f"{cid}-json.log") if result.log_driver == "json-file" else ""
        # networks: NotFound/400 before anything is made; the record is written with the container's
        net_record = netlink.prepare_register(self, c, body)
        async with self.mounts.creating(c, self.get):  # mount plan + volumes; removed again on failure
            await self.run(self._validate_and_make, c, net_record, timeout=LONG, what="creating the container's filesystem")
        if net_record is not None:
            net_record.commit()
        self.index.add(cid, c, name)
        self.runtime(cid)
        self._emit(c, "create")
        return {"Id": cid, "Warnings": list(result.warnings)}

    def _validate_and_make(self, c: Container, net_record: Any = None) -> None:
        # one worker-thread hop for all: each hop costs latency on a busy machine, and the
        # records' fsyncs stay off the event loop
        self._validate_hook(c)
        self._make_on_disk(c, net_record)

    def _validate_hook(self, c: Container) -> None:
        # A plugin's InvalidParameter is the user's error (400); other failures name the plugin.
        hook = self.registry.pm.hook.pyd_container_validate
        for impl in reversed(hook.get_hookimpls()):
            try:
                impl.function(*[{"container": self.info(c)}[a] for a in impl.argnames])
            except PydError:
                raise
            except Exception as exc:
                raise PydError(f"security plugin {impl.plugin_name} failed to validate the container: {exc}") from exc

    def _make_on_disk(self, c: Container, net_record: Any = None) -> None:
        """Directory, rw layer, generated /etc files, the record and the network record
        (``netlink.prepare_register``); undone on failure."""
        assert self.layers is not None
        os.makedirs(c.dir, mode=0o710)
        made_layer = False
        try:
            # No init layer (it costs a mount and ~40 ms per create): the mount points for the
            # generated /etc files are made in the rw layer at start, and `diff` hides them.
            self.layers.create_rw(c.id, c.pyd.get("ImageTopChain"))
            made_layer = True
            self._etc_paths(c)
            c.save()
            if net_record is not None:
                net_record.write()
        except BaseException:
            if net_record is not None:
                try:
                    net_record.discard()
                except OSError:
                    log.exception("cannot remove the network record of the failed container %s", c.id[:12])
            if made_layer:
                try:
                    self.layers.remove_rw(c.id)
                except Exception:
                    log.exception("cannot remove the layer of the failed container %s", c.id[:12])
            shutil.rmtree(c.dir, ignore_errors=True)
            raise

    def _etc_paths(self, c: Container) -> None:
        mode = c.host_config.get("NetworkMode") or "default"
        if mode.startswith("container:"):
            other = self.index.get_id(self.index.id_of(mode.split(":", 1)[1]))
            if other is not None:  # share the other container's files, as Docker does
                c.hostname_path, c.hosts_path, c.resolv_conf_path = (
                    other.hostname_path, other.hosts_path, other.resolv_conf_path)
                return
        c.hostname_path = os.path.join(c.dir, "hostname")
        c.hosts_path = os.path.join(c.dir, "hosts")
        c.resolv_conf_path = os.path.join(c.dir, "resolv.conf")

    def _write_etc(self, c: Container, attached: Any = None) -> None:
        hc, cfg = c.host_config, c.config
        mode = hc.get("NetworkMode") or "default"
        if mode.startswith("container:"):
            self._etc_paths(c)
            return
        files = write_etc_files(
            c.dir,
            hostname=cfg.get("Hostname") or c.id[:12],
            domainname=cfg.get("Domainname") or "",
            network_mode=mode,
            dns=list(hc.get("Dns") or self.config.dns),
            dns_search=list(hc.get("DnsSearch") or self.config.dns_search),
            dns_options=list(hc.get("DnsOptions") or self.config.dns_opts),
            extra_hosts=hc.get("ExtraHosts"),
            ip=attached.ip if attached is not None else "",
        )
        netlink.apply_etc(files.resolv_conf, files.hosts, attached)  # embedded DNS, --link
        c.hostname_path, c.hosts_path, c.resolv_conf_path = files.hostname, files.hosts, files.resolv_conf

    # -- start ----------------------------------------------------------------------------------

    async def start(self, ref: str) -> None:
        c = self.get(ref)
        rt = self.runtime(c.id)
        async with rt.lock:
            await self._start_locked(c, rt)

    async def _start_locked(self, c: Container, rt: Runtime, *, restarting: bool = False) -> None:
        st = c.state
        if st.paused:
            raise Conflict("cannot start a paused container, try unpause instead")
        if st.running and not (restarting and st.restarting):
            raise NotModified(f"container {c.id} is already running")
        if st.removing or st.dead:
            raise Conflict(f"container {c.id} is marked for removal and cannot be started")
        driver = self._exec_driver()
        if rt.restart_task is not None and not restarting:
            rt.restart_task.cancel()
            rt.restart_task = None
        try:
            await self._start_process(c, rt, driver)
        except BaseException as exc:
            await asyncio.shield(netlink.detach(self, c.id))  # nothing half-made stays
            await asyncio.shield(self.mounts.release(c))
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            st.restarting = False
            st.running = False
            st.error = message
            st.exit_code = exit_code_for_start_error(message)
            self._save_quietly(c)
            for session in rt.pending_attach:
                session.cancel()
            rt.pending_attach.clear()
            if c.host_config.get("AutoRemove"):
                self.loop.create_task(self._auto_remove(c))
            raise

    async def _start_process(self, c: Container, rt: Runtime, driver: Any) -> None:
        assert self.layers is not None
        hc, cfg = c.host_config, c.config
        net_ns = None
        mode = hc.get("NetworkMode") or "default"
        if mode.startswith("container:"):
            other = self.get(mode.split(":", 1)[1])
            if not other.state.running or not other.state.pid:
                raise Conflict(f"cannot join network of a non running container: {other.id}")
            net_ns = f"/proc/{other.state.pid}/ns/net"
        attached = await netlink.attach(self, c)  # sandbox, endpoints, ports, DNS
        await self.mounts.mount(c)  # volumes (released by _start_locked if the start fails)
        rootfs, spec = await self.run(self._prepare_start, c, net_ns, attached, timeout=LONG, what="preparing the container's start")
        created = False
        try:
            log_path = os.path.join(c.dir, SHIM_LOG)
            cs = hc.get("ConsoleSize") or [0, 0]
            req = CreateContainerRequest(
                container_id=c.id,
                spec=spec,
                bundle_dir=str(self.bundles / c.id),
                stdio=StdioConfig(
                    open_stdin=bool(cfg.get("OpenStdin")),
                    stdin_once=bool(cfg.get("StdinOnce")),
                    tty=bool(cfg.get("Tty")),
                    console_size=(int(cs[0]), int(cs[1])),
                ),
                log_path=log_path,
            )
            if rt.pipeline is not None and not rt.pipeline.closed.is_set():
                # the previous run's output is still being delivered: finish it first, so the
                # new run gets its own writer (a restart right after a stop)
                rt.pipeline.finish()
                await self.run(rt.pipeline.closed.wait, 10.0, timeout=None)
            await self.run(driver.create, req, timeout=LONG, what="creating the container process")
            created = True
            self._start_pipeline(c, rt)
            sessions, rt.pending_attach = rt.pending_attach, []
            for session in sessions:
                await session.connect(self)
            pid = await self.run(driver.start, c.id, what="starting the container process")
        except BaseException:
            if created:
                try:
                    await self.run(self._force_delete, c.id, timeout=LONG)
                except Exception:
                    log.exception("cannot clean up the failed start of %s", c.id[:12])
                if rt.pipeline is not None:
                    rt.pipeline.finish()
            try:
                await self.run(self.layers.unmount, c.id, timeout=LONG)
            except Exception:
                log.exception("cannot unmount the failed start of %s", c.id[:12])
            raise
        rt.rootfs = rootfs
        rt.run_token += 1
        rt.exiting = False
        c.state.set_running(int(pid), now_nano())
        c.started_before = True
        c.manually_stopped = False
        # serialized here, written (fsync included) in a worker: the loop goes on serving
        await self.run(c.write_state, c.state_bytes(), timeout=None)
        self._emit(c, "start")
        self._monitor(c, rt)

    def _prepare_start(self, c: Container, net_ns: str | None, attached: Any = None) -> tuple[str, Any]:
        """Mount the rootfs, write the /etc files, build the spec, run the prepare hooks
        (one worker-thread hop); the mount is released again on failure."""
        assert self.layers is not None
        rootfs = self.layers.mount(c.id)
        try:
            self._write_etc(c, attached)
            spec = self._build_spec(c, rootfs, net_ns)
            netlink.adjust_spec(spec, attached)
            self._prepare_hook(c, spec)
            os.makedirs(self.bundles / c.id, mode=0o700, exist_ok=True)
        except BaseException:
            self.layers.unmount(c.id)
            raise
        return rootfs, spec

    def _force_delete(self, cid: str) -> None:
        """``delete`` that also ends a process the driver still reports as running (a start
        that failed may race the process's exit)."""
        driver = self._exec_driver()
        for attempt in range(3):
            try:
                driver.delete(cid)
                return
            except NotFound:
                return
            except Conflict:
                if attempt == 2:
                    raise
            try:
                driver.kill(cid, int(_signal.SIGKILL), True)
            except PydError:
                pass
            try:
                driver.wait(cid, 5.0)
            except PydError:
                pass

    def _build_spec(self, c: Container, rootfs: str, net_ns: str | None) -> Any:
        hc, cfg = c.host_config, c.config
        user = resolve_user_in_rootfs(rootfs, cfg.get("User") or "", hc.get("GroupAdd"))
        workdir = cfg.get("WorkingDir") or "/"
        if workdir != "/":
            mkdir_all_in_root(rootfs, workdir)
        init_binary = ""
        if hc.get("Init"):
            init_binary = _find_init()
            if not init_binary:
                raise InvalidParameter("--init: no init binary found on the host (install the Debian package tini)")
        etc = {
            "/etc/hostname": c.hostname_path,
            "/etc/hosts": c.hosts_path,
            "/etc/resolv.conf": c.resolv_conf_path,
        }
        # mount points for the generated files, in the rw layer (`diff` hides them)
        for dest in MOUNT_POINTS_FILES:
            _ensure_file(rootfs, dest)
        spec = build_spec(
            cid=c.id,
            config=cfg,
            hc=hc,
            rootfs=rootfs,
            user=user,
            etc_files=etc,
            plugin_security_keys=self.security_keys(),
            net_ns_path=net_ns,
            init_binary=init_binary,
        )
        self.mounts.apply(c, rootfs, spec)  # binds, volumes (with copy-up), --mount tmpfs
        return spec

    def _prepare_hook(self, c: Container, spec: Any) -> None:
        hook = self.registry.pm.hook.pyd_container_prepare
        info = self.info(c)
        for impl in reversed(hook.get_hookimpls()):
            args = {"container": info, "spec": spec}
            try:
                impl.function(*[args[a] for a in impl.argnames])
            except PydError:
                raise
            except Exception as exc:
                raise PydError(f"plugin {impl.plugin_name} failed to prepare the container: {exc}") from exc

    # -- the log pipeline ----------------------------------------------------------------------

    def _open_writers(self, c: Container) -> list[Any]:
        name = c.pyd.get("LogDriver") or self.config.log_driver
        driver = self.log_driver(name)
        opts = driver.parse_options(dict(c.pyd.get("LogOpts") or {}))
        ctx = self.log_context(c)
        writers = [driver.open(ctx, opts)]
        if not isinstance(driver, LogReader) and name != "none":
            writers.append(CacheWriter(c.dir))  # dual logging: `pyd logs` still works
        return writers

    def log_context(self, c: Container) -> LogContext:
        return LogContext(
            container_id=c.id,
            container_name=c.name,
            image=c.image_ref,
            labels=dict(c.config.get("Labels") or {}),
            env=list(c.config.get("Env") or []),
            log_dir=c.dir,
        )

    def _start_pipeline(self, c: Container, rt: Runtime) -> None:
        pipeline = LogPipeline(
            container_id=c.id,
            container_dir=c.dir,
            source=os.path.join(c.dir, SHIM_LOG),
            writers=self._open_writers(c),
            watcher=self.watcher,
            mode=c.pyd.get("LogMode") or "blocking",
            max_buffer=int(c.pyd.get("LogMaxBuffer") or 1 << 20),
        )
        pipeline.start()
        rt.pipeline = pipeline

    # -- exits ------------------------------------------------------------------------------------

    def _monitor(self, c: Container, rt: Runtime) -> None:
        """A thread blocks in the driver's ``wait`` and reports the exit to the loop."""
        token = rt.run_token
        driver = self.driver
        loop = self.loop

        def watch() -> None:
            state = None
            while not self._closing:
                try:
                    state = driver.wait(c.id)
                except Exception as exc:
                    log.warning("waiting for container %s failed: %s", c.id[:12], exc)
                    state = None
                    try:
                        state = driver.state(c.id)
                    except Exception:
                        break  # the shim is gone: treat as exited
                if state is None or state.status == "stopped":
                    break
                time.sleep(0.05)
            if self._closing:
                return
            loop.call_soon_threadsafe(lambda: loop.create_task(self._on_exit(c.id, token, state)))

        t = threading.Thread(target=watch, name=f"pyd-wait-{c.id[:12]}", daemon=True)
        rt.monitor = t
        t.start()

    async def _on_exit(self, cid: str, token: int, state: Any) -> None:
        c = self.index.get_id(cid)
        rt = self._rt.get(cid)
        if c is None or rt is None or token != rt.run_token or rt.exiting:
            return
        rt.exiting = True
        exit_code = 255 if state is None or state.exit_code is None else int(state.exit_code)
        oom = bool(state is not None and state.oom_killed)
        finished = (state.finished_at_nano if state is not None and state.finished_at_nano else 0) or now_nano()
        ran_for = (finished - c.state.started_at) / 1e9
        # let attach streams deliver the last output before the shim goes away
        if rt.attached:
            await asyncio.wait(list(rt.attached), timeout=ATTACH_FLUSH)
        if rt.pipeline is not None:
            rt.pipeline.finish()
            if rt.pipeline.dropped:
                c.pyd["LogDropped"] = int(c.pyd.get("LogDropped") or 0) + rt.pipeline.dropped
        auto_remove = bool(c.host_config.get("AutoRemove")) and not self._shutting_down
        steps = [self.run(self._force_delete, cid, timeout=LONG)]
        if rt.rootfs is not None:
            if auto_remove:
                # an overlay umount takes ~15 ms: the removal's background purge does it
                self._mounted_for_purge.add(cid)
            else:
                steps.append(self.run(self.layers.unmount, cid, timeout=LONG))  # type: ignore[union-attr]
            rt.rootfs = None
        net_release = asyncio.ensure_future(netlink.detach(self, cid))  # alongside the steps above
        for what, result in zip(("delete the exited container from the exec driver", "unmount the exited container"),
                                await asyncio.gather(*steps, return_exceptions=True)):
            if isinstance(result, BaseException):
                log.error("cannot %s %s: %s", what, cid[:12], result)
        try:
            await net_release
        except Exception:
            log.exception("cannot release the networking of the exited container %s", cid[:12])
        await self.mounts.release(c)  # volumes: the driver unmounts when the last user goes
        if self.execs is not None:
            self.execs.container_exited(cid)
        policy = c.host_config.get("RestartPolicy") or {}
        restart = (
            not self._shutting_down
            and should_restart(policy, exit_code, c.restart_count, c.manually_stopped)
            and not c.host_config.get("AutoRemove")
        )
        if restart:
            c.state.set_restarting(exit_code, finished)
            c.state.oom_killed = oom
        else:
            c.state.set_stopped(exit_code, finished, oom)
        if not auto_remove:  # (a crash before the removal: restore finds it exited and removes it)
            self._save_quietly(c)
        if oom:
            self._emit(c, "oom")
        self._emit(c, "die", exitCode=str(exit_code))
        rt.notify_exit(WaitResult(exit_code))
        if restart:
            delay, rt.backoff = next_backoff(rt.backoff, ran_for)
            rt.restart_task = self.loop.create_task(self._restart_later(c, rt, delay))
        elif auto_remove:
            await self._auto_remove(c)  # (at shutdown: done by the next restore)

    async def _restart_later(self, c: Container, rt: Runtime, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            async with rt.lock:
                if not c.state.restarting or self.index.get_id(c.id) is None:
                    return
                c.restart_count += 1
                rt.restart_task = None
                await self._start_locked(c, rt, restarting=True)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.warning("restarting container %s failed: %s", c.id[:12], exc)
            c.state.restarting = False
            c.state.running = False
            self._save_quietly(c)

    async def _auto_remove(self, c: Container) -> None:
        try:
            await self.remove(c.id, force=False, volumes=True)
        except NotFound:
            pass
        except Exception:
            log.exception("auto-removing container %s failed", c.id[:12])
            if c.id in self._mounted_for_purge and self.layers is not None:
                self._mounted_for_purge.discard(c.id)
                try:
                    await self.run(self.layers.unmount, c.id, timeout=LONG)
                except Exception:
                    log.exception("cannot unmount container %s", c.id[:12])

    def _save_quietly(self, c: Container) -> None:
        try:
            c.save_state()
        except OSError as exc:
            log.warning("cannot save the state of container %s: %s", c.id[:12], exc)

    # -- stop / kill / restart / pause ---------------------------------------------------------------

    def stop_signal(self, c: Container) -> int:
        sig = c.config.get("StopSignal")
        return parse_signal(sig) if sig else int(_signal.SIGTERM)

    async def stop(self, ref: str, timeout: int | None = None) -> None:
        c = self.get(ref)
        rt = self.runtime(c.id)
        async with rt.lock:
            await self._stop_locked(c, rt, timeout)

    async def _stop_locked(self, c: Container, rt: Runtime, timeout: int | None) -> None:
        if c.state.restarting:
            # a pending restart: cancel it; the container is already down
            if rt.restart_task is not None:
                rt.restart_task.cancel()
                rt.restart_task = None
            c.manually_stopped = True
            c.state.restarting = False
            c.state.running = False
            self._save_quietly(c)
            self._emit(c, "stop")
            return
        if not c.state.running:
            raise NotModified(f"container {c.id} is already stopped")
        c.manually_stopped = True
        self._save_quietly(c)
        if timeout is None:
            timeout = c.config.get("StopTimeout")
            timeout = DEFAULT_STOP_TIMEOUT if timeout is None else int(timeout)
        fut = self._exit_future(rt)
        await self._signal(c, self.stop_signal(c), unpause=True)
        self._emit(c, "kill", signal=str(self.stop_signal(c)))
        if timeout < 0:
            await fut
        else:
            try:
                await asyncio.wait_for(asyncio.shield(fut), timeout)
            except asyncio.TimeoutError:
                await self._signal(c, int(_signal.SIGKILL), unpause=True)
                self._emit(c, "kill", signal=str(int(_signal.SIGKILL)))
                try:
                    await asyncio.wait_for(asyncio.shield(fut), SHORT)
                except asyncio.TimeoutError:
                    raise Unavailable(f"container {c.id} did not exit within {SHORT:g}s of SIGKILL") from None
        self._emit(c, "stop")

    def _exit_future(self, rt: Runtime) -> asyncio.Future[WaitResult]:
        fut: asyncio.Future[WaitResult] = self.loop.create_future()
        rt.exit_waiters.append(fut)
        return fut

    async def _signal(self, c: Container, sig: int, *, unpause: bool = False) -> None:
        driver = self._exec_driver()
        try:
            await self.run(driver.kill, c.id, sig)
        except NotFound:
            pass  # it exited meanwhile; the monitor reports it
        if unpause and c.state.paused:
            try:
                await self.run(driver.resume, c.id)
            except (Conflict, NotFound):
                pass  # a SIGKILL to a frozen container already thawed it (or it is gone)
            c.state.paused = False
            self._save_quietly(c)

    async def kill(self, ref: str, signal: str | None = None) -> None:
        c = self.get(ref)
        rt = self.runtime(c.id)
        sig = parse_signal(signal) if signal else int(_signal.SIGKILL)
        async with rt.lock:
            if not c.state.running or c.state.restarting:
                raise Conflict(f"Cannot kill container: {ref}: Container {c.id} is not running")
            if sig == self.stop_signal(c):
                c.manually_stopped = True  # moby: the stop signal cancels the restart policy
                self._save_quietly(c)
            await self._signal(c, sig, unpause=sig == _signal.SIGKILL)
            self._emit(c, "kill", signal=str(sig))

    async def restart(self, ref: str, timeout: int | None = None) -> None:
        c = self.get(ref)
        rt = self.runtime(c.id)
        async with rt.lock:
            if c.state.running and not c.state.restarting:
                await self._stop_locked(c, rt, timeout)
            elif c.state.restarting:
                await self._stop_locked(c, rt, timeout)
            await self._start_locked(c, rt)
            self._emit(c, "restart")

    async def pause(self, ref: str) -> None:
        c = self.get(ref)
        async with self.runtime(c.id).lock:
            if not c.state.running or c.state.restarting:
                raise Conflict(f"Container {c.id} is not running")
            if c.state.paused:
                raise Conflict(f"Container {c.id} is already paused")
            await self.run(self._exec_driver().pause, c.id)
            c.state.paused = True
            self._save_quietly(c)
            self._emit(c, "pause")

    async def unpause(self, ref: str) -> None:
        c = self.get(ref)
        async with self.runtime(c.id).lock:
            if not c.state.paused:
                raise Conflict(f"Container {c.id} is not paused")
            await self.run(self._exec_driver().resume, c.id)
            c.state.paused = False
            self._save_quietly(c)
            self._emit(c, "unpause")

    # -- wait -------------------------------------------------------------------------------------

    def wait_future(self, ref: str, condition: str = "not-running") -> asyncio.Future[WaitResult]:
        """A future for ``POST /containers/{id}/wait``; errors (404, bad condition) raise now,
        before the reply headers go out."""
        condition = condition or "not-running"
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidParameter(f"invalid condition: {condition!r}; valid conditions: not-running, next-exit, removed")
        c = self.get(ref)
        rt = self.runtime(c.id)
        fut: asyncio.Future[WaitResult] = self.loop.create_future()
        if condition == "not-running" and not c.state.running:
            fut.set_result(WaitResult(c.state.exit_code, c.state.error or None))
        elif condition == "removed":
            rt.removed_waiters.append(fut)
        else:
            rt.exit_waiters.append(fut)
        return fut

    # -- remove / rename ----------------------------------------------------------------------------

    async def remove(self, ref: str, *, force: bool = False, volumes: bool = False) -> None:
        c = self.get(ref)
        rt = self.runtime(c.id)
        async with rt.lock:
            if c.state.removing:
                raise Conflict(f"removal of container {c.id} is already in progress")
            if c.state.running and not c.state.restarting:
                if c.state.paused and not force:
                    raise Conflict(
                        f"You cannot remove a paused container {c.id}. Unpause and then stop the container before attempting removal or force remove"
                    )
                if not force:
                    raise Conflict(
                        f"You cannot remove a running container {c.id}. Stop the container before attempting removal or force remove"
                    )
                c.manually_stopped = True
                fut = self._exit_future(rt)
                await self._signal(c, int(_signal.SIGKILL), unpause=True)
                self._emit(c, "kill", signal=str(int(_signal.SIGKILL)))
                try:
                    await asyncio.wait_for(asyncio.shield(fut), SHORT)
                except asyncio.TimeoutError:
                    raise Unavailable(f"container {c.id} did not exit after SIGKILL; not removed") from None
            if rt.restart_task is not None:
                rt.restart_task.cancel()
                rt.restart_task = None
            c.state.removing = True
            c.state.running = c.state.restarting = False
            try:
                await self._remove_on_disk(c, rt)
            except BaseException:
                c.state.removing = False
                c.state.dead = True
                self._save_quietly(c)
                raise
            await netlink.forget(self, c.id)
            await self.mounts.forget(c, remove_anonymous=volumes)  # rm -v: anonymous volumes only
            self.index.remove(c.id)
            self._rt.pop(c.id, None)
            if self.execs is not None:
                self.execs.container_removed(c.id)
            self._emit(c, "destroy")
            rt.notify_removed(WaitResult(c.state.exit_code, c.state.error or None))

    async def _remove_on_disk(self, c: Container, rt: Runtime) -> None:
        """Make the removal final at once (the record's directory is renamed away, so a
        restarted daemon no longer sees the container), then release the shim, the layer and
        the files in the background: ``run --rm`` need not wait for the layer's deletion.
        Whatever a crash interrupts is finished by the next ``restore``."""
        trash = str(self.root / f"{TRASH_PREFIX}{c.id}")
        pipeline = rt.pipeline

        def retire() -> None:
            if pipeline is not None:  # its last lines go to the log before the files move
                pipeline.finish()
                pipeline.closed.wait(10.0)
            os.rename(c.dir, trash)

        await self.run(retire, timeout=None)
        task = self.loop.create_task(self._purge(c.id, trash))
        self._purging.add(task)
        task.add_done_callback(self._purging.discard)

    async def _purge(self, cid: str, trash: str) -> None:
        try:
            await self.run(self._purge_sync, cid, trash, timeout=LONG, what="removing the container's files")
        except Exception:
            log.exception("cleaning up removed container %s failed (retried at the next start)", cid[:12])

    def _purge_sync(self, cid: str, trash: str) -> None:
        if self.driver is not None:
            self._force_delete(cid)
        if cid in self._mounted_for_purge and self.layers is not None:
            self._mounted_for_purge.discard(cid)
            self.layers.unmount(cid)
        if self.layers is not None:
            try:
                self.layers.remove_rw(cid)
            except NotFound:
                pass
        shutil.rmtree(trash, ignore_errors=True)
        shutil.rmtree(str(self.bundles / cid), ignore_errors=True)

    async def rename(self, ref: str, new_name: str) -> None:
        if not new_name:
            raise InvalidParameter("Neither old nor new names may be empty")
        new_name = validate_name("container", new_name)
        c = self.get(ref)
        if c.name == new_name:
            raise InvalidParameter("Renaming a container with the same name as its current name")
        old = c.name
        self.index.reserve(new_name, c.id)  # Conflict if taken
        self.index.release(old)
        c.name = new_name
        try:
            c.save_state()
        except BaseException:
            self.index.release(new_name)
            self.index.reserve(old, c.id)
            c.name = old
            raise
        netlink.renamed(self, c.id, new_name)
        self._emit(c, "rename", oldName="/" + old)

    # -- list / inspect / prune -------------------------------------------------------------------

    def _image_matches(self, value: str, c: Container) -> bool:
        if c.image_ref == value or c.image_id == value or c.image_id[7:].startswith(value.removeprefix("sha256:")):
            return True
        if self.images is None:
            return False
        try:
            return self.images.resolve(value).id == c.image_id
        except PydError:
            return False

    async def list(
        self, *, all: bool = False, limit: int = -1, size: bool = False, filters: Mapping[str, list[str]] | None = None
    ) -> list[dict[str, Any]]:
        filters = dict(filters or {})
        views.check_filters(filters)
        before = after = None
        if filters.get("before"):
            before = self.get(filters.pop("before")[0]).created
        if filters.get("since"):
            after = self.get(filters.pop("since")[0]).created
        items = sorted(self.index, key=lambda c: c.created, reverse=True)
        show_all = all or limit > 0 or before is not None or after is not None or bool(filters.get("status")) or bool(filters.get("exited"))
        out = []
        for c in items:
            if not show_all and not c.state.running:
                continue
            if not views.matches(c, filters, image_matches=self._image_matches, created_before=before, created_after=after):
                continue
            out.append(c)
            if limit > 0 and len(out) >= limit:
                break
        now = now_nano()
        if not size:
            return [netlink.decorate_list(self, c, views.list_entry(c, now_ns=now)) for c in out]
        sizes = [await self._sizes(c) for c in out]
        return [netlink.decorate_list(self, c, views.list_entry(c, s, now_ns=now)) for c, s in zip(out, sizes)]

    async def _sizes(self, c: Container) -> tuple[int, int]:
        assert self.layers is not None
        try:
            rw = await self.run(self.layers.rw_size, c.id, timeout=LONG)
        except PydError:
            rw = 0
        base = 0
        chain = c.pyd.get("ImageTopChain")
        if chain:
            try:
                base = await self.run(self.layers.size, chain)
            except PydError:
                base = 0
        return rw, rw + base

    async def inspect(self, ref: str, size: bool = False) -> dict[str, Any]:
        c = self.get(ref)
        graph: dict[str, Any] = {"Data": None, "Name": c.driver}
        if self.layers is not None:
            try:
                graph["Data"] = await self.run(self.layers.rw_metadata, c.id) or None
            except PydError:
                pass
        sizes = await self._sizes(c) if size else None
        return netlink.decorate_inspect(self, c, views.inspect(c, graph=graph, size=sizes))

    async def prune(self, filters: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
        filters = dict(filters or {})
        for key in filters:
            if key not in ("label", "label!", "until"):
                raise InvalidParameter(f"invalid filter '{key}'")
        until = None
        if filters.get("until"):
            from pyd.engine.events import parse_timestamp

            until = parse_timestamp(filters["until"][0], name="until")
        deleted, reclaimed = [], 0
        for c in list(self.index):
            if c.state.running or c.state.removing:
                continue
            labels = c.config.get("Labels") or {}
            if filters.get("label") and not views._labels_match(filters["label"], labels):
                continue
            if filters.get("label!") and any(views._labels_match([v], labels) for v in filters["label!"]):
                continue
            if until is not None and c.created > until:
                continue
            size = (await self._sizes(c))[0]
            try:
                await self.remove(c.id)
            except (NotFound, Conflict):
                continue
            deleted.append(c.id)
            reclaimed += size
        if deleted:
            self.events.emit("container", "prune", "", {"reclaimed": str(reclaimed)})
        return {"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    # -- daemon start and stop --------------------------------------------------------------------

    async def restore(self) -> None:
        """Load every record; reconnect to containers the exec driver still runs; reconcile the
        rest; resume log pipelines; restart what the restart policies say (moby's restore)."""
        self._loop = asyncio.get_running_loop()
        loaded: list[Container] = []
        for entry in sorted(self.root.iterdir()) if self.root.exists() else []:
            if entry.name.startswith(TRASH_PREFIX):  # a removal the last daemon did not finish
                await self._purge(entry.name[len(TRASH_PREFIX):], str(entry))
                continue
            if not (entry / "config.v2.json").exists():
                log.warning("removing incomplete container directory %s", entry)
                shutil.rmtree(entry, ignore_errors=True)
                continue
            try:
                c = await self.run(Container.load, str(entry))
            except (OSError, ValueError, KeyError) as exc:
                log.warning("skipping unreadable container %s: %s", entry.name, exc)
                continue
            try:
                self.index.add(c.id, c, c.name)
            except Conflict:
                log.warning("container %s has the name of another container; skipped", c.id[:12])
                continue
            self.runtime(c.id)
            self.mounts.register(c)  # its volumes are in use again
            loaded.append(c)
        alive: set[str] = set()
        if self.driver is not None:
            try:
                alive = set(await self.run(self.driver.list))
            except Exception:
                log.exception("cannot list the exec driver's containers")
        for cid in alive - {c.id for c in loaded}:
            log.warning("removing the leftover container process %s", cid[:12])
            try:
                await self.run(self.driver.kill, cid, int(_signal.SIGKILL))
            except Exception:
                pass
            try:
                await self.run(self.driver.delete, cid, timeout=LONG)
            except Exception:
                log.exception("cannot delete leftover container %s", cid[:12])
        to_start: list[Container] = []
        for c in loaded:
            try:
                await self._restore_one(c, c.id in alive)
            except Exception:
                log.exception("restoring container %s failed", c.id[:12])
            if not c.state.running and restart_on_daemon_start(c.host_config.get("RestartPolicy") or {}, c.manually_stopped):
                to_start.append(c)
            elif not c.state.running and c.host_config.get("AutoRemove"):
                self.loop.create_task(self._auto_remove(c))
        # networks: release the sandboxes of containers that died while the daemon was down
        await netlink.reconcile(self, [c.id for c in loaded if c.state.running])
        await self.mounts.reconcile(loaded)  # volume refs: only containers still running hold them
        for c in to_start:
            try:
                await self.start(c.id)
            except Exception as exc:
                log.warning("restarting container %s at daemon start failed: %s", c.id[:12], exc)

    async def _restore_one(self, c: Container, alive: bool) -> None:
        rt = self.runtime(c.id)
        st = c.state
        c.state.removing = False
        state = None
        if alive:
            try:
                state = await self.run(self.driver.state, c.id)
            except Exception as exc:
                log.warning("cannot read the state of container %s: %s", c.id[:12], exc)
        if state is not None and state.status in ("running", "paused"):
            # still running: take the mount reference back, reconnect pipeline and monitor
            assert self.layers is not None
            rt.rootfs = await self.run(self.layers.mount, c.id, timeout=LONG)
            if not st.running:
                st.set_running(state.pid, state.started_at_nano or now_nano())
            st.pid = state.pid
            st.paused = state.status == "paused"
            st.restarting = False
            rt.run_token += 1
            self._save_quietly(c)
            self._start_pipeline(c, rt)
            self._monitor(c, rt)
            return
        was_running = st.running
        if state is not None and state.status == "stopped":
            code = 255 if state.exit_code is None else int(state.exit_code)
            st.set_stopped(code, state.finished_at_nano or now_nano(), state.oom_killed)
            try:
                await self.run(self.driver.delete, c.id, timeout=LONG)
            except Exception:
                log.exception("cannot delete the exited container %s", c.id[:12])
        elif was_running:
            st.set_stopped(255, now_nano())
            st.error = "the container's process disappeared while the daemon was down"
        elif state is not None:  # created but never started: nothing to keep
            try:
                await self.run(self.driver.delete, c.id, timeout=LONG)
            except Exception:
                pass
        st.restarting = False
        self._save_quietly(c)
        if was_running:
            self._emit(c, "die", exitCode=str(st.exit_code))
        # the overlay mount of a container that was running outlives the daemon: release it
        if was_running and self.layers is not None:
            try:
                await self.run(self.layers.mount, c.id, timeout=LONG)
                await self.run(self.layers.unmount, c.id, timeout=LONG)
            except Exception:
                log.exception("cannot release the mount of container %s", c.id[:12])
        # output written while the daemon was down still goes to the log driver
        source = os.path.join(c.dir, SHIM_LOG)
        if unread_output(source, c.dir):
            self._start_pipeline(c, rt)
            assert rt.pipeline is not None
            rt.pipeline.finish()

    async def close(self) -> None:
        """Daemon shutdown: without live-restore, stop running containers (as dockerd does);
        either way, persist log offsets and leave shims running or gone cleanly."""
        self._shutting_down = True  # exits from here on trigger no restart policy
        if not self.config.live_restore:
            running = [c for c in self.index if c.state.running and not c.state.restarting]
            results = await asyncio.gather(*(self._shutdown_stop(c) for c in running), return_exceptions=True)
            for c, res in zip(running, results):
                if isinstance(res, BaseException):
                    log.warning("stopping container %s at shutdown failed: %s", c.id[:12], res)
        self._closing = True
        for cid, rt in list(self._rt.items()):
            if rt.restart_task is not None:
                rt.restart_task.cancel()
            if rt.pipeline is not None:
                if rt.pipeline.closed.is_set():
                    continue
                c = self.index.get_id(cid)
                if c is not None and not c.state.running:
                    rt.pipeline.finish()
                else:
                    rt.pipeline.stop()
        for rt in list(self._rt.values()):
            if rt.pipeline is not None:
                await self.run(rt.pipeline.join, 5.0, timeout=None)
        if self._purging:
            await asyncio.wait(list(self._purging), timeout=30)
        if self.execs is not None:
            self.execs.close()
        if self._watcher is not None:
            self._watcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _shutdown_stop(self, c: Container) -> None:
        rt = self.runtime(c.id)
        async with rt.lock:
            if not c.state.running:
                return
            timeout = c.config.get("StopTimeout")
            timeout = DEFAULT_STOP_TIMEOUT if timeout is None else int(timeout)
            timeout = min(timeout, max(1, self.config.shutdown_timeout - 1))
            fut = self._exit_future(rt)
            await self._signal(c, self.stop_signal(c), unpause=True)
            try:
                await asyncio.wait_for(asyncio.shield(fut), timeout)
            except asyncio.TimeoutError:
                await self._signal(c, int(_signal.SIGKILL), unpause=True)
                await asyncio.wait_for(asyncio.shield(fut), SHORT)


# -- helpers for the rootfs ---------------------------------------------------------------------


def _ensure_file(root: str, path: str) -> None:
    try:
        mkdir_all_in_root(root, os.path.dirname(path))
        fd = open_in_root(root, path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        os.close(fd)
    except OSError as exc:
        log.debug("cannot create mount point %s: %s", path, exc)


def _find_init() -> str:
    for candidate in ("/usr/bin/tini-static", "/usr/bin/tini", "/usr/bin/docker-init", "/usr/libexec/docker/docker-init"):
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return ""
