"""What ``pyd create`` and ``pyd run`` do, without click: their options (as ``Opt`` tables) and
their flow. ``pyd.cli.run`` builds the click commands from the tables; ``pyd.cli.fast`` runs
the same flow straight from the command line.

``run`` follows the docker CLI's order (traces §1.3): create; attach (before the start, so no
output is missed; piped stdin is sent before the start and buffered by the daemon); wait with
``condition=removed`` for ``--rm`` (the daemon removes it) or ``next-exit``, whose headers
arrive at once; start; copy the streams; exit with the wait's ``StatusCode``.
Exit codes as docker's: the container's; 125 when the daemon refuses; 126 when the program
cannot be invoked; 127 when it is not found.
"""

from __future__ import annotations

import os
import signal

from pyd.cli.create_body import RunOptions, build_create_body
from pyd.cli.optspec import BOOL, FLAG, INT, MULTI, Opt
from pyd.cli.state import is_daemon_error, warn, write

TYPE_CHECKING = False  # typing itself costs an import on every invocation
if TYPE_CHECKING:
    from typing import Any, Callable

EXIT_DAEMON = 125
EXIT_CANNOT_INVOKE = 126
EXIT_NOT_FOUND = 127


class RunExit(Exception):
    """End the command with ``code`` (the message, if any, was printed already)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# The flags ``create`` and ``run`` share (docker's names), in --help order.
CREATE_OPTIONS = (
    Opt("--name", help="Assign a name to the container."),
    Opt("-i", "--interactive", kind=FLAG, help="Keep STDIN open even if not attached."),
    Opt("-t", "--tty", kind=FLAG, help="Allocate a pseudo-TTY."),
    Opt("-a", "--attach", "attach_streams", kind=MULTI, help="Attach to STDIN, STDOUT or STDERR."),
    Opt("-e", "--env", kind=MULTI, help="Set environment variables."),
    Opt("--env-file", kind=MULTI, help="Read in a file of environment variables."),
    Opt("-w", "--workdir", help="Working directory inside the container."),
    Opt("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>])."),
    Opt("-h", "--hostname", help="Container host name."),
    Opt("--domainname", help="Container NIS domain name."),
    Opt("--entrypoint", default=None, help="Overwrite the default ENTRYPOINT of the image."),
    Opt("-l", "--label", kind=MULTI, help="Set meta data on a container."),
    Opt("--restart", help="Restart policy: no, always, on-failure[:max-retries], unless-stopped."),
    Opt("--stop-signal", help="Signal to stop the container."),
    Opt("--stop-timeout", kind=INT, default=None, help="Timeout (in seconds) to stop a container."),
    Opt("--network", "--net", "network", help="Connect a container to a network (bridge, none, host, container:NAME or a network's name)."),
    Opt("--network-alias", "--net-alias", "network_alias", kind=MULTI, help="Add network-scoped alias for the container."),
    Opt("--ip", help="IPv4 address (e.g., 172.30.100.104)."),
    Opt("--link", kind=MULTI, help="Add link to another container (name[:alias])."),
    Opt("-m", "--memory", help="Memory limit."),
    Opt("--memory-swap", help="Swap limit equal to memory plus swap: '-1' to enable unlimited swap."),
    Opt("--cpus", help="Number of CPUs."),
    Opt("-c", "--cpu-shares", kind=INT, default=0, help="CPU shares (relative weight)."),
    Opt("--cpu-quota", kind=INT, default=0, help="Limit CPU CFS quota."),
    Opt("--cpu-period", kind=INT, default=0, help="Limit CPU CFS period."),
    Opt("--pids-limit", kind=INT, default=None, help="Tune container pids limit (set -1 for unlimited)."),
    Opt("--cap-add", kind=MULTI, help="Add Linux capabilities."),
    Opt("--cap-drop", kind=MULTI, help="Drop Linux capabilities."),
    Opt("--privileged", kind=FLAG, help="Give extended privileges to this container."),
    Opt("--security-opt", kind=MULTI, help="Security Options."),
    Opt("--read-only", kind=FLAG, help="Mount the container's root filesystem as read only."),
    Opt("--tmpfs", kind=MULTI, help="Mount a tmpfs directory."),
    Opt("--log-driver", help="Logging driver for the container."),
    Opt("--log-opt", kind=MULTI, help="Log driver options."),
    Opt("--init/--no-init", "init", kind=BOOL, default=None, help="Run an init inside the container."),
    Opt("--dns", kind=MULTI, help="Set custom DNS servers."),
    Opt("--dns-search", kind=MULTI, help="Set custom DNS search domains."),
    Opt("--dns-option", "--dns-opt", "dns_option", kind=MULTI, help="Set DNS options."),
    Opt("--add-host", kind=MULTI, help="Add a custom host-to-IP mapping (host:ip)."),
    Opt("--group-add", kind=MULTI, help="Add additional groups to join."),
    Opt("-v", "--volume", "volumes", kind=MULTI,
        help="Bind mount a volume or host path: NAME:/ctr, /host:/ctr, /ctr; options :ro, :nocopy, ..."),
    Opt("--mount", "mounts", kind=MULTI,
        help="Attach a filesystem mount: type=bind|volume|tmpfs,source=,target=,readonly,..."),
    Opt("--volumes-from", "volumes_from", kind=MULTI, help="Mount volumes from the specified container(s) (CTR[:ro|rw])."),
    Opt("--volume-driver", "volume_driver", help="Optional volume driver for the container."),
    Opt("--ulimit", "ulimits", kind=MULTI, help="Ulimit options."),
    Opt("--sysctl", "sysctls", kind=MULTI, help="Sysctl options."),
    Opt("--shm-size", help="Size of /dev/shm."),
    Opt("--oom-score-adj", kind=INT, default=0, help="Tune host's OOM preferences (-1000 to 1000)."),
    Opt("--ipc", help="IPC mode to use."),
    Opt("--pid", help="PID namespace to use."),
    Opt("--uts", help="UTS namespace to use."),
    Opt("--cgroupns", help="Cgroup namespace to use (host|private)."),
    Opt("-p", "--publish", kind=MULTI, help="Publish a container's port(s) to the host."),
    Opt("--expose", kind=MULTI, help="Expose a port or a range of ports."),
    Opt("-P", "--publish-all", kind=FLAG, help="Publish all exposed ports to random ports."),
    Opt("--platform", hidden=True),
    Opt("--pull", default="missing", hidden=True),
    Opt("-q", "--quiet", kind=FLAG, hidden=True),
)

# ``run``'s own flags, before the shared ones in --help.
RUN_OPTIONS = (
    Opt("-d", "--detach", kind=FLAG, help="Run container in background and print container ID."),
    Opt("--rm", kind=FLAG, help="Automatically remove the container when it exits."),
    Opt("--sig-proxy/--no-sig-proxy", kind=BOOL, default=True, help="Proxy received signals to the process."),
    Opt("--detach-keys", hidden=True),
)


def _fail(message: str, code: int) -> None:
    warn(message)
    raise RunExit(code)


def start_error_code(message: str) -> int:
    """The docker CLI's mapping of a start error to an exit code."""
    if "executable file not found" in message or "no such file or directory" in message:
        return EXIT_NOT_FOUND
    if "permission denied" in message or "is a directory" in message:
        return EXIT_CANNOT_INVOKE
    return EXIT_DAEMON


_RUN_ONLY = ("detach", "rm", "sig_proxy", "detach_keys")


def options_from(kwargs: dict[str, Any]) -> RunOptions:
    k = dict(kwargs)
    for key in _RUN_ONLY + ("platform", "pull", "quiet"):
        k.pop(key, None)
    k["attach"] = list(k.pop("attach_streams", ()))
    k["labels"] = list(k.pop("label", ()))
    k["command"] = list(k.get("command") or ())
    for key in ("mounts", "volumes_from"):
        k[key] = list(k.get(key) or ())
    for key in ("env", "env_file", "cap_add", "cap_drop", "security_opt", "tmpfs", "log_opt", "dns", "dns_search",
                "dns_option", "add_host", "group_add", "volumes", "ulimits", "sysctls", "publish", "expose",
                "network_alias", "link"):
        k[key] = list(k.get(key) or ())
    return RunOptions(**k)


def create_container(client: Any, o: RunOptions, name: str) -> str:
    """POST /containers/create; daemon errors exit 125 with docker's message."""
    from pyd.errors import PydError

    try:
        body = build_create_body(o)
    except PydError as exc:
        _fail(_daemon_text(exc), EXIT_DAEMON)
    try:
        reply = client.post("/containers/create", params={"name": name} if name else None, data=body)
    except PydError as exc:
        if is_daemon_error(exc) and getattr(exc, "http_status", 0) == 404 and "No such image" in str(exc):
            warn(f"Unable to find image '{o.image}' locally")
        _fail(_daemon_text(exc), EXIT_DAEMON)
    for w in reply.get("Warnings") or []:
        warn(f"WARNING: {w}")
    return str(reply["Id"])


def _daemon_text(exc: BaseException, command: str = "run") -> str:
    """docker's reportError: ``docker: <message>.`` and a pointer to the help."""
    text = str(exc).rstrip(".")
    if is_daemon_error(exc):
        text = f"Error response from daemon: {text}"
    return f"pyd: {text}.\nSee 'pyd {command} --help'."


def create(get_client: Callable[[], Any], kwargs: dict[str, Any]) -> None:
    """``pyd create``: print the new container's ID. ``RunExit`` when it fails."""
    o = options_from(kwargs)
    cid = create_container(get_client(), o, o.name)
    write(cid + "\n")


def run(get_client: Callable[[], Any], kwargs: dict[str, Any]) -> int:
    """``pyd run``: returns the exit code (``RunExit`` when it ends early)."""
    detach, rm, sig_proxy = kwargs["detach"], kwargs["rm"], kwargs["sig_proxy"]
    o = options_from(kwargs)
    o.detach, o.rm = detach, rm
    if o.tty and not detach:
        from pyd.cli.stdio import terminal_size

        o.console_size = terminal_size()
    if o.tty and o.interactive and not os.isatty(0):
        _fail("the input device is not a TTY", 1)
    client = get_client()
    cid = create_container(client, o, o.name)
    return run_created(client, cid, o, sig_proxy=sig_proxy)


def run_created(client: Any, cid: str, o: RunOptions, *, sig_proxy: bool = True) -> int:
    from pyd.errors import PydError

    attach = not o.detach
    stdin = o.interactive and attach
    hijacked = None
    if attach:
        params = {"stream": 1, "stdout": 1, "stderr": 1}
        if stdin:
            params["stdin"] = 1
        try:
            hijacked = client.hijack("POST", f"/containers/{cid}/attach", params=params)
        except PydError as exc:
            _fail(_daemon_text(exc), EXIT_DAEMON)
        from pyd.cli.stdio import pump_stdin

        if stdin and not o.tty:
            pump_stdin(hijacked)  # sent before the start: the daemon keeps it
        elif not stdin:
            hijacked.close_write()
    condition = "removed" if o.rm else "next-exit"
    try:
        waiter = client.stream("POST", f"/containers/{cid}/wait", params={"condition": condition})
    except PydError as exc:
        _fail(_daemon_text(exc), EXIT_DAEMON)
    try:
        client.post(f"/containers/{cid}/start")
    except PydError as exc:
        text = str(exc)
        code = start_error_code(text)
        warn(_daemon_text(exc))
        if o.rm:  # the daemon removes it; the wait tells us when
            _wait_status(waiter, quiet=True)
        return code
    if o.detach:
        waiter.close()
        write(cid + "\n")
        return 0
    assert hijacked is not None
    from pyd.cli.stdio import copy_output, tty_session

    if o.tty:
        tty_session(client, hijacked, stdin=stdin, resize_path=f"/containers/{cid}/resize")
    else:
        if sig_proxy:
            _proxy_signals(client, cid)
        copy_output(hijacked, False)
    hijacked.close()
    return _wait_status(waiter)


def _wait_status(waiter: Any, quiet: bool = False) -> int:
    from pyd.errors import PydError

    try:
        for doc in waiter.iter_json():
            err = (doc.get("Error") or {}).get("Message") if isinstance(doc.get("Error"), dict) else None
            if err and not quiet:
                warn(err)
            return int(doc.get("StatusCode", 0))
    except PydError as exc:
        warn(_daemon_text(exc))
        return EXIT_DAEMON
    finally:
        waiter.close()
    return EXIT_DAEMON


def _proxy_signals(client: Any, cid: str) -> None:
    """Forward SIGINT/SIGTERM/SIGHUP/... to the container (docker's --sig-proxy)."""

    def handler(signum: int, _frame: Any) -> None:
        from pyd.client import Client

        c = Client(client.host, tls=client.tls, version=client.api_version)
        try:
            c.post(f"/containers/{cid}/kill", params={"signal": str(signum)})
        except Exception:
            pass
        finally:
            c.close()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        try:
            signal.signal(sig, handler)
        except (ValueError, OSError):
            pass
