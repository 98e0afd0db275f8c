"""The composition root: config -> plugin registry -> drivers -> ``Engine`` -> app -> serve.

Everything the configuration selects is resolved in ``build_engine`` before any socket opens,
so a missing or broken driver stops the daemon with a message naming it (and the installed
alternatives) instead of failing on first use. Tests call ``build_engine`` with a temp
data-root; ``serve`` adds the pidfile, the listeners, signals and logging.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import resource
import signal
import socket
import ssl
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyd.config import DaemonConfig, ConfigError, parse_host, reload_config
from pyd.drivers.options import parse_size
from pyd.engine import Engine
from pyd.engine.authz import AuthzChain
from pyd.engine.images import ImageService
from pyd.engine.layers import LayerStore
from pyd.errors import DriverNotInstalled, InvalidOption, NotSupported, PluginError, PydError, Unavailable
from pyd.registry import Kind, PluginRegistry, installed_names

if TYPE_CHECKING:
    from pyd.drivers.authz import Authorizer

log = logging.getLogger(__name__)

# Tried in this order when ``storage-driver`` is not set (moby's priority list, trimmed to
# what pyd ships); any other installed graph driver comes after them, by name.
STORAGE_PRIORITY = ("overlay2", "vfs")
DEFAULT_EXEC_DRIVER = "native"
# Keys of ``log-opts`` that the core owns (they apply to every log driver).
CORE_LOG_OPTS = ("mode", "max-buffer-size")


class StartupError(PydError):
    """The daemon cannot start (e.g. the pidfile is held, a socket is in use)."""

    status = 500


# -- driver resolution --------------------------------------------------------------------------


def _graph_home(config: DaemonConfig, name: str) -> Path:
    # moby's layout: <data-root>/<driver> (e.g. /var/lib/pyd/overlay2)
    home = Path(config.data_root) / name
    home.mkdir(parents=True, exist_ok=True, mode=0o710)
    return home


def _has_state(config: DaemonConfig, name: str) -> bool:
    home = Path(config.data_root) / name
    try:
        return home.is_dir() and any(home.iterdir())
    except OSError:
        return False


def select_graph_driver(registry: PluginRegistry, config: DaemonConfig) -> Any | None:
    """The graph driver for ``storage-driver``, or the first of the priority list that works.

    * explicit name: any failure is fatal (not installed -> the installed ones are listed);
    * otherwise a driver with existing state in the data-root wins (as dockerd's "prior
      storage driver"); two such drivers is an error asking to choose;
    * otherwise the first installed driver whose init does not raise ``NotSupported``;
    * none installed: ``None`` (the daemon runs, but cannot store images).
    """
    opts = dict(config.storage_opts)
    if config.storage_driver:
        name = config.storage_driver
        installed = installed_names(Kind.GRAPHDRIVER)
        if name not in installed:
            # Before creating <data-root>/<name> for a typo; in the words users know.
            raise DriverNotInstalled("storage", name, installed)
        return registry.init_driver(Kind.GRAPHDRIVER, name, home=_graph_home(config, name), options=opts)
    installed = installed_names(Kind.GRAPHDRIVER)
    candidates = [n for n in STORAGE_PRIORITY if n in installed]
    candidates += [n for n in installed if n not in candidates]
    prior = [n for n in candidates if _has_state(config, n)]
    if len(prior) > 1:
        raise ConfigError(
            f"{config.data_root} contains state of several storage drivers ({', '.join(prior)}); "
            "choose one with --storage-driver (storage-driver in daemon.json)"
        )
    if prior:
        name = prior[0]
        log.info("found prior storage driver", extra={"plugin": f"graphdriver:{name}"})
        return registry.init_driver(Kind.GRAPHDRIVER, name, home=_graph_home(config, name), options=opts)
    reasons = []
    for name in candidates:
        try:
            return registry.init_driver(Kind.GRAPHDRIVER, name, home=_graph_home(config, name), options=opts)
        except InvalidOption:
            raise  # the user's storage-opts are wrong: say so, do not fall back
        except (NotSupported, PluginError) as exc:
            log.info("storage driver skipped: %s", exc, extra={"plugin": f"graphdriver:{name}"})
            reasons.append(f"{name}: {exc}")
    if reasons:
        raise Unavailable("no storage driver could be initialised: " + "; ".join(reasons))
    return None


def select_log_driver(registry: PluginRegistry, config: DaemonConfig) -> Any:
    """The ``log-driver`` (default json-file), with the daemon-wide ``log-opts`` validated:
    ``mode``/``max-buffer-size`` by the core, the rest by the driver's ``parse_options``."""
    name = config.log_driver
    driver = registry.init_driver(Kind.LOG, name, home=registry.home(Path(config.data_root), Kind.LOG, name))
    check_core_log_opts(config.log_opts)
    driver.parse_options({k: v for k, v in config.log_opts.items() if k not in CORE_LOG_OPTS})
    return driver


def check_core_log_opts(opts: dict[str, str]) -> None:
    """Docker's log ``mode`` (blocking|non-blocking) and ``max-buffer-size`` (a size)."""
    mode = opts.get("mode")
    if mode is not None and mode not in ("blocking", "non-blocking"):
        raise InvalidOption(f'invalid --log-opt: mode="{mode}"; valid values: blocking, non-blocking')
    size = opts.get("max-buffer-size")
    if size is not None:
        if mode != "non-blocking":
            raise InvalidOption('invalid --log-opt: max-buffer-size is only valid with mode=non-blocking')
        try:
            parse_size(size)
        except ValueError as exc:
            raise InvalidOption(f'invalid --log-opt: max-buffer-size="{size}" {exc}') from None


def load_authorizers(registry: PluginRegistry, config: DaemonConfig) -> AuthzChain:
    """The ``authorization-plugins``, in order; any failure stops the daemon (fail closed)."""
    seen: set[str] = set()
    chain: list[tuple[str, Authorizer]] = []
    installed = installed_names(Kind.AUTHZ)
    for name in config.authorization_plugins:
        if name in seen:
            raise ConfigError(f'authorization plugin "{name}" is listed twice in authorization-plugins')
        seen.add(name)
        if name not in installed:
            raise DriverNotInstalled("authorization", name, installed)
        try:
            authorizer = registry.init_driver(
                Kind.AUTHZ,
                name,
                home=registry.home(Path(config.data_root), Kind.AUTHZ, name),
                options=dict(config.authorization_opts.get(name, {})),
            )
        except PluginError:
            raise  # already names the plugin (and the installed ones, if it is missing)
        except PydError as exc:
            raise ConfigError(f'authorization plugin "{name}" failed to start: {exc}') from exc
        chain.append((name, authorizer))
    return AuthzChain(chain)


def select_exec_driver(registry: PluginRegistry, config: DaemonConfig, warnings: list[str]) -> Any | None:
    """``exec-driver`` if set (fatal on failure); else ``native`` when installed."""
    name = config.exec_driver or DEFAULT_EXEC_DRIVER
    explicit = bool(config.exec_driver)
    if not explicit and name not in installed_names(Kind.EXEC):
        warnings.append(f'WARNING: exec driver "{name}" is not installed: containers cannot run')
        return None
    kwargs = dict(home=registry.home(Path(config.exec_root), Kind.EXEC, name), options=dict(config.exec_opts))
    if explicit:
        return registry.init_driver(Kind.EXEC, name, **kwargs)
    try:
        return registry.init_driver(Kind.EXEC, name, **kwargs)
    except (NotSupported, PluginError) as exc:
        if isinstance(exc, InvalidOption):
            raise
        warnings.append(f"WARNING: exec driver {name} is unavailable: {exc}")
        return None


def check_cluster_store(config: DaemonConfig) -> None:
    """A ``cluster-store`` must name an installed kvstore plugin (its scheme); the store itself
    may be down now: the daemon connects when global networks need it."""
    if not config.cluster_store:
        return
    from pyd.engine.network_cluster import store_name

    name = store_name(config.cluster_store)
    installed = installed_names(Kind.KVSTORE)
    if name not in installed:
        raise DriverNotInstalled("kvstore", name, installed)


def build_engine(config: DaemonConfig) -> Engine:
    """Load every plugin the configuration selects and build the engine (no socket yet).

    Raises ``PydError`` subclasses whose message names the failing key, driver or plugin;
    the caller prints it and exits non-zero.

    Services are attached here (``engine.add_service(...)``) once their drivers exist; see
    ``pyd.engine`` for the two-line recipe.
    """
    registry = PluginRegistry()
    # Historic: plugins registered below still receive it when they register.
    registry.pm.hook.pyd_configure.call_historic(kwargs={"settings": config.settings()})
    for path, mode in ((config.data_root, 0o711), (config.exec_root, 0o700)):
        os.makedirs(path, mode=mode, exist_ok=True)

    warnings: list[str] = []
    graph = select_graph_driver(registry, config)
    if graph is None:
        warnings.append("WARNING: no storage driver is installed (pip install pyd-graphdriver-vfs or -overlay)")
    log_driver = select_log_driver(registry, config)
    authz = load_authorizers(registry, config)
    exec_driver = select_exec_driver(registry, config, warnings)
    registry.load_all(Kind.SECURITY)  # failures are recorded for `pyd plugin ls` only
    check_cluster_store(config)

    engine = Engine(config, registry, graph=graph, log_driver_name=config.log_driver, authz=authz)
    engine.log_driver = log_driver
    engine.exec_driver = exec_driver
    engine.warnings.extend(warnings)
    if graph is not None:  # the image store: graph driver -> layer store -> image service
        image_root = Path(config.data_root) / "image" / graph.name
        layers = engine.add_service("layers", LayerStore(graph, image_root))
        engine.add_service("images", ImageService(layers, image_root, events=engine.events))
    from pyd.engine.volumes import VolumeService

    engine.add_service("volumes", VolumeService(registry=registry, root=config.data_root, events=engine.events))
    from pyd.engine.networks import NetworkService

    # before containers: closed after them, so stopping containers can still release networks
    networks = engine.add_service("networks", NetworkService(config=config, registry=registry, events=engine.events, host_id=engine.id))
    from pyd.engine.containers import ContainerService

    containers = engine.add_service("containers", ContainerService(
        config=config, registry=registry, events=engine.events, layers=getattr(engine, "layers", None),
        images=getattr(engine, "images", None), exec_driver=exec_driver, log_driver=log_driver))
    if graph is not None:
        engine.images.containers_using = containers.using_image
    containers.mounts.attach(engine.volumes)  # volume mounts; the volume service's `users`
    from functools import partial

    from pyd.engine.container_network import container_ref

    containers.networks = networks
    networks.container_lookup = partial(container_ref, containers)
    log.info(
        "engine ready: storage=%s log=%s exec=%s authz=%s",
        engine.graph_name or "-",
        config.log_driver,
        getattr(exec_driver, "name", "-") if exec_driver is not None else "-",
        ",".join(authz.names) or "-",
    )
    return engine


# -- listeners ------------------------------------------------------------------------------------


def check_hosts(config: DaemonConfig) -> None:
    """Refuse what cannot be served safely: ``tcp://`` without TLS, missing TLS files (and
    a socket group that does not exist)."""
    socket_gid(config)
    for host in config.hosts:
        proto, addr, _ = parse_host(host)
        if proto != "tcp":
            continue
        if not (config.tlscert and config.tlskey):
            raise ConfigError(
                f"refusing to listen on {host} without TLS: give --tlscert and --tlskey "
                "(and --tlsverify --tlscacert to require client certificates), or use a unix socket"
            )
        for key in ("tlscert", "tlskey") + (("tlscacert",) if config.tlsverify else ()):
            if not os.path.isfile(config.get(key)):
                raise ConfigError(f'{key} "{config.get(key)}" does not exist')


def tls_context(config: DaemonConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config.tlscert, config.tlskey)
    if config.tlsverify:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=config.tlscacert)
    return ctx


def socket_gid(config: DaemonConfig) -> int | None:
    """The gid for unix sockets: ``group`` (dockerd's ``-G``, default "pyd"). A missing
    default group is fine (root-only socket); a group the user named must exist."""
    import grp

    try:
        return grp.getgrnam(config.group).gr_gid if config.group else None
    except KeyError:
        if "group" in config.flags or config.group != "pyd":
            raise ConfigError(f'group "{config.group}" (-G/--group) does not exist') from None
        return None


def unix_listener(path: str, gid: int | None = None) -> socket.socket:
    """A listening-ready unix socket at ``path`` (mode 0660, group ``gid``, parent created).

    A stale socket (nobody answers) is removed; a live one means another daemon: refuse.
    """
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(f"cannot listen on unix://{path}: the path exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: its daemon is gone
        else:
            raise StartupError(f"cannot listen on unix://{path}: another daemon is already listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)  # created 0660 from the start: no window with a wider mode
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o660)
    if gid is not None:
        os.chown(path, 0, gid)
    return sock


def tcp_listener(addr: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((addr, port))
    return sock


# -- pidfile --------------------------------------------------------------------------------------


class PidFile:
    """``pidfile`` held with an exclusive ``flock`` for the daemon's life.

    A crashed daemon's file is stale (its lock died with it) and is taken over; a live
    daemon's is refused, naming its pid.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise StartupError(
                    f"pid file found, ensure pyd is not running or delete {self.path} (held by pid {other or '?'})"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


# -- logging --------------------------------------------------------------------------------------

_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


class LogfmtFormatter(logging.Formatter):
    """dockerd-style lines: ``time="..." level=info msg="..." plugin=log:json-file``.

    Extra fields given with ``extra={...}`` (``plugin``, ``driver``, ...) are appended.
    """

    def format(self, record: logging.LogRecord) -> str:
        t = self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}"
        level = {"WARNING": "warning", "CRITICAL": "fatal"}.get(record.levelname, record.levelname.lower())
        parts = [f"time={_q(t)}", f"level={level}", f"msg={_q(record.getMessage())}"]
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                parts.append(f"{key}={_q(str(value))}")
        if record.levelno <= logging.DEBUG or record.levelno >= logging.ERROR:
            parts.append(f"logger={record.name}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _q(value: str) -> str:
    if value and all(c.isalnum() or c in "-_.:/,=@+" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL}


def setup_logging(config: DaemonConfig) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_pyd", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LogfmtFormatter())
        handler._pyd = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    apply_log_level(config)


def apply_log_level(config: DaemonConfig) -> None:
    level = logging.DEBUG if config.debug else _LEVELS[config.log_level]
    logging.getLogger().setLevel(level)
    # aiohttp's access log is noise unless debugging
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if config.debug else logging.WARNING)


# -- serving --------------------------------------------------------------------------------------


def _raise_fd_limit() -> None:
    """Many idle clients (docker-py keeps one socket per URL) need many descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def reload(engine: Engine) -> None:
    """SIGHUP: re-read daemon.json and apply the reloadable keys (dockerd's rules)."""
    try:
        result = reload_config(engine.config)
    except PydError as exc:
        log.error("reloading the configuration failed; keeping the current one: %s", exc)
        return
    engine.config = result.config
    apply_log_level(result.config)
    if result.ignored:
        log.warning("configuration keys changed that need a restart: %s", ", ".join(result.ignored))
    log.info("reloaded configuration%s", (": " + ", ".join(result.changed)) if result.changed else " (no changes)")
    engine.events.emit(
        "daemon",
        "reload",
        engine.id,
        {"name": socket.gethostname(), **{k: _attr(engine.config.get(k)) for k in result.changed}},
    )


def _attr(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(map(str, value)) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


async def _serve(engine: Engine) -> None:
    from aiohttp import web

    from pyd.server.app import make_app

    config = engine.config
    loop = asyncio.get_running_loop()
    engine.events.attach_loop(loop)
    app = make_app(engine)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=5.0,  # in-flight requests get this long once listeners close
        access_log=logging.getLogger("aiohttp.access"),
        keepalive_timeout=75.0,  # idle keep-alive connections cost one fd each, nothing else
    )
    await runner.setup()
    unix_paths: list[str] = []
    try:
        for host in config.hosts:
            proto, addr, port = parse_host(host)
            if proto == "unix":
                sock = unix_listener(addr, socket_gid(config))
                unix_paths.append(addr)
                site: web.BaseSite = web.SockSite(runner, sock, backlog=1024)
            else:
                site = web.SockSite(runner, tcp_listener(addr, port), ssl_context=tls_context(config), backlog=1024)
            await site.start()
            log.info("API listen on %s", host)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload, engine)
        log.info("daemon has completed initialization")
        await stop.wait()
        log.info("processing signal, shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        engine.events.close()  # ends /events streams so their connections can close
        await runner.cleanup()
        for path in unix_paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        await engine.close()
        log.info("daemon shutdown complete")


def validate(config: DaemonConfig) -> None:
    """``pyd daemon --validate``: the config is valid and every selected driver loads."""
    check_hosts(config)
    engine = build_engine(config)
    asyncio.run(engine.close())


def serve(config: DaemonConfig) -> int:
    """Run the daemon until SIGTERM/SIGINT; return the exit status (0).

    Order: logging, pidfile (refuse a second daemon), drivers (``build_engine``), listeners.
    A failure before serving raises its ``PydError`` (naming what is wrong) after undoing
    what was done; ``pyd daemon`` prints it as ``Error: ...`` and exits 1.
    """
    setup_logging(config)
    _raise_fd_limit()
    check_hosts(config)
    pidfile = PidFile(config.pidfile)
    pidfile.acquire()
    try:
        engine = build_engine(config)
        try:
            asyncio.run(_serve(engine))
        except OSError as exc:  # bind/listen failures: address in use, permissions
            raise StartupError(f"cannot listen: {exc}") from exc
    finally:
        pidfile.release()
    return 0
