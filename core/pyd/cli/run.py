"""``pyd create`` and ``pyd run``.

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
import sys
from typing import Any, Callable

import click

from pyd.cli import common
from pyd.cli.create_body import RunOptions, build_create_body

EXIT_DAEMON = 125
EXIT_CANNOT_INVOKE = 126
EXIT_NOT_FOUND = 127


class CliExit(click.exceptions.Exit):
    pass


def _fail(message: str, code: int) -> None:
    common.warn(message)
    raise CliExit(code)


def start_error_code(message: str) -> int:
    """The docker CLI's mapping of a start error to an exit code."""
    if "executable file not found" in message or "no such file or directory" in message:
        return EXIT_NOT_FOUND
    if "permission denied" in message or "is a directory" in message:
        return EXIT_CANNOT_INVOKE
    return EXIT_DAEMON


def create_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The flags ``create`` and ``run`` share (docker's names)."""
    opts = [
        click.option("--name", default="", help="Assign a name to the container."),
        click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open even if not attached."),
        click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY."),
        click.option("-a", "--attach", "attach_streams", multiple=True, help="Attach to STDIN, STDOUT or STDERR."),
        click.option("-e", "--env", multiple=True, help="Set environment variables."),
        click.option("--env-file", multiple=True, help="Read in a file of environment variables."),
        click.option("-w", "--workdir", default="", help="Working directory inside the container."),
        click.option("-u", "--user", default="", help="Username or UID (format: <name|uid>[:<group|gid>])."),
        click.option("-h", "--hostname", default="", help="Container host name."),
        click.option("--domainname", default="", help="Container NIS domain name."),
        click.option("--entrypoint", default=None, help="Overwrite the default ENTRYPOINT of the image."),
        click.option("-l", "--label", multiple=True, help="Set meta data on a container."),
        click.option("--restart", default="", help="Restart policy: no, always, on-failure[:max-retries], unless-stopped."),
        click.option("--stop-signal", default="", help="Signal to stop the container."),
        click.option("--stop-timeout", type=int, default=None, help="Timeout (in seconds) to stop a container."),
        click.option("--network", "--net", "network", default="", help="Connect a container to a network (bridge, none, host, container:NAME or a network's name)."),
        click.option("--network-alias", "--net-alias", "network_alias", multiple=True, help="Add network-scoped alias for the container."),
        click.option("--ip", default="", help="IPv4 address (e.g., 172.30.100.104)."),
        click.option("--link", multiple=True, help="Add link to another container (name[:alias])."),
        click.option("-m", "--memory", default="", help="Memory limit."),
        click.option("--memory-swap", default="", help="Swap limit equal to memory plus swap: '-1' to enable unlimited swap."),
        click.option("--cpus", default="", help="Number of CPUs."),
        click.option("-c", "--cpu-shares", type=int, default=0, help="CPU shares (relative weight)."),
        click.option("--cpu-quota", type=int, default=0, help="Limit CPU CFS quota."),
        click.option("--cpu-period", type=int, default=0, help="Limit CPU CFS period."),
        click.option("--pids-limit", type=int, default=None, help="Tune container pids limit (set -1 for unlimited)."),
        click.option("--cap-add", multiple=True, help="Add Linux capabilities."),
        click.option("--cap-drop", multiple=True, help="Drop Linux capabilities."),
        click.option("--privileged", is_flag=True, help="Give extended privileges to this container."),
        click.option("--security-opt", multiple=True, help="Security Options."),
        click.option("--read-only", is_flag=True, help="Mount the container's root filesystem as read only."),
        click.option("--tmpfs", multiple=True, help="Mount a tmpfs directory."),
        click.option("--log-driver", default="", help="Logging driver for the container."),
        click.option("--log-opt", multiple=True, help="Log driver options."),
        click.option("--init/--no-init", "init", default=None, help="Run an init inside the container."),
        click.option("--dns", multiple=True, help="Set custom DNS servers."),
        click.option("--dns-search", multiple=True, help="Set custom DNS search domains."),
        click.option("--dns-option", "--dns-opt", "dns_option", multiple=True, help="Set DNS options."),
        click.option("--add-host", multiple=True, help="Add a custom host-to-IP mapping (host:ip)."),
        click.option("--group-add", multiple=True, help="Add additional groups to join."),
        click.option("-v", "--volume", "volumes", multiple=True,
                     help="Bind mount a volume or host path: NAME:/ctr, /host:/ctr, /ctr; options :ro, :nocopy, ..."),
        click.option("--mount", "mounts", multiple=True,
                     help="Attach a filesystem mount: type=bind|volume|tmpfs,source=,target=,readonly,..."),
        click.option("--volumes-from", "volumes_from", multiple=True, help="Mount volumes from the specified container(s) (CTR[:ro|rw])."),
        click.option("--volume-driver", "volume_driver", default="", help="Optional volume driver for the container."),
        click.option("--ulimit", "ulimits", multiple=True, help="Ulimit options."),
        click.option("--sysctl", "sysctls", multiple=True, help="Sysctl options."),
        click.option("--shm-size", default="", help="Size of /dev/shm."),
        click.option("--oom-score-adj", type=int, default=0, help="Tune host's OOM preferences (-1000 to 1000)."),
        click.option("--ipc", default="", help="IPC mode to use."),
        click.option("--pid", default="", help="PID namespace to use."),
        click.option("--uts", default="", help="UTS namespace to use."),
        click.option("--cgroupns", default="", help="Cgroup namespace to use (host|private)."),
        click.option("-p", "--publish", multiple=True, help="Publish a container's port(s) to the host."),
        click.option("--expose", multiple=True, help="Expose a port or a range of ports."),
        click.option("-P", "--publish-all", is_flag=True, help="Publish all exposed ports to random ports."),
        click.option("--platform", default="", hidden=True),
        click.option("--pull", default="missing", hidden=True),
        click.option("-q", "--quiet", is_flag=True, hidden=True),
        click.argument("image"),
        click.argument("command", nargs=-1, type=click.UNPROCESSED),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


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
        if common.is_daemon_error(exc) and getattr(exc, "http_status", 0) == 404 and "No such image" in str(exc):
            common.warn(f"Unable to find image '{o.image}' locally")
        _fail(_daemon_text(exc), EXIT_DAEMON)
    for w in reply.get("Warnings") or []:
        common.warn(f"WARNING: {w}")
    return str(reply["Id"])


def _daemon_text(exc: BaseException, command: str = "run") -> str:
    """docker's reportError: ``docker: <message>.`` and a pointer to the help."""
    text = str(exc).rstrip(".")
    if common.is_daemon_error(exc):
        text = f"Error response from daemon: {text}"
    return f"pyd: {text}.\nSee 'pyd {command} --help'."


@click.command("create", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": False})
@create_options
def create(**kwargs: Any) -> None:
    """Create a new container."""
    o = options_from(kwargs)
    cid = create_container(common.get_client(), o, o.name)
    common.write(cid + "\n")


@click.command("run", context_settings={"allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Run container in background and print container ID.")
@click.option("--rm", is_flag=True, help="Automatically remove the container when it exits.")
@click.option("--sig-proxy/--no-sig-proxy", default=True, help="Proxy received signals to the process.")
@click.option("--detach-keys", default="", hidden=True)
@create_options
@click.pass_context
def run(ctx: click.Context, **kwargs: Any) -> None:
    """Run a command in a new container."""
    detach, rm, sig_proxy = kwargs["detach"], kwargs["rm"], kwargs["sig_proxy"]
    o = options_from(kwargs)
    o.detach, o.rm = detach, rm
    if o.tty and not detach:
        from pyd.cli.stdio import terminal_size

        o.console_size = terminal_size()
    if o.tty and o.interactive and not os.isatty(0):
        _fail("the input device is not a TTY", 1)
    client = common.get_client()
    cid = create_container(client, o, o.name)
    code = run_created(client, cid, o, sig_proxy=sig_proxy)
    ctx.exit(code)


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
        common.warn(_daemon_text(exc))
        if o.rm:  # the daemon removes it; the wait tells us when
            _wait_status(waiter, quiet=True)
        return code
    if o.detach:
        waiter.close()
        common.write(cid + "\n")
        return 0
    assert hijacked is not None
    from pyd.cli.stdio import RawTerminal, copy_output, on_winch, pump_stdin

    if o.tty:
        def resize(rows: int, cols: int) -> None:
            from pyd.client import Client

            c = Client(client.host, tls=client.tls, version=client.api_version)
            try:
                c.post(f"/containers/{cid}/resize", params={"h": rows, "w": cols})
            finally:
                c.close()

        on_winch(resize)
        with RawTerminal():
            if stdin:
                pump_stdin(hijacked, half_close=False)
            copy_output(hijacked, True)
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
                common.warn(err)
            return int(doc.get("StatusCode", 0))
    except PydError as exc:
        common.warn(_daemon_text(exc))
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
