"""Container lifecycle commands: start, stop, restart, kill, pause, unpause, wait, rm, rename,
attach, port, container prune.

Commands that take several containers act on each and report failures per container on
stderr, exiting 1 if any failed (docker's behaviour).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import click

from pyd.cli import common


def _each(names: Iterable[str], action: Callable[[str], None], *, echo: bool = True) -> None:
    from pyd.errors import PydError

    failed = False
    for name in names:
        try:
            action(name)
        except PydError as exc:
            failed = True
            prefix = "Error response from daemon: " if common.is_daemon_error(exc) else "Error: "
            common.warn(prefix + str(exc))
            continue
        if echo:
            common.write(name + "\n")
    if failed:
        raise click.exceptions.Exit(1)


def _not_modified_ok(fn: Callable[[], Any]) -> None:
    from pyd.errors import NotModified

    try:
        fn()
    except NotModified:
        pass  # already in that state: docker prints the name too


@click.command("start")
@click.option("-a", "--attach", is_flag=True, help="Attach STDOUT/STDERR and forward signals.")
@click.option("-i", "--interactive", is_flag=True, help="Attach container's STDIN.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def start(ctx: click.Context, attach: bool, interactive: bool, containers: tuple[str, ...]) -> None:
    """Start one or more stopped containers."""
    client = common.get_client()
    if not (attach or interactive):
        _each(containers, lambda n: _not_modified_ok(lambda: client.post(f"/containers/{n}/start")))
        return
    if len(containers) > 1:
        raise click.UsageError("you cannot start and attach multiple containers at once")
    info = client.get(f"/containers/{containers[0]}/json")
    cid, tty = info["Id"], bool(info["Config"].get("Tty"))
    from pyd.cli.run import _wait_status
    from pyd.cli.stdio import copy_output, pump_stdin, tty_session

    params = {"stream": 1, "stdout": 1, "stderr": 1}
    if interactive:
        params["stdin"] = 1
    hijacked = client.hijack("POST", f"/containers/{cid}/attach", params=params)
    if interactive and not tty:
        pump_stdin(hijacked)
    elif not interactive:
        hijacked.close_write()
    waiter = client.stream("POST", f"/containers/{cid}/wait", params={"condition": "next-exit"})
    client.post(f"/containers/{cid}/start")
    if tty:
        tty_session(client, hijacked, stdin=interactive)
    else:
        copy_output(hijacked, False)
    hijacked.close()
    ctx.exit(_wait_status(waiter))


@click.command("stop")
@click.option("-t", "--time", "timeout", type=int, default=None, help="Seconds to wait for stop before killing it.")
@click.option("-s", "--signal", "signal_", default="", hidden=True)
@click.argument("containers", nargs=-1, required=True)
def stop(timeout: int | None, signal_: str, containers: tuple[str, ...]) -> None:
    """Stop one or more running containers."""
    client = common.get_client()
    params = {"t": timeout} if timeout is not None else None
    _each(containers, lambda n: _not_modified_ok(lambda: client.post(f"/containers/{n}/stop", params=params)))


@click.command("restart")
@click.option("-t", "--time", "timeout", type=int, default=None, help="Seconds to wait for stop before killing it.")
@click.argument("containers", nargs=-1, required=True)
def restart(timeout: int | None, containers: tuple[str, ...]) -> None:
    """Restart one or more containers."""
    client = common.get_client()
    params = {"t": timeout} if timeout is not None else None
    _each(containers, lambda n: client.post(f"/containers/{n}/restart", params=params))


@click.command("kill")
@click.option("-s", "--signal", "signal_", default="", help="Signal to send to the container.")
@click.argument("containers", nargs=-1, required=True)
def kill(signal_: str, containers: tuple[str, ...]) -> None:
    """Kill one or more running containers."""
    client = common.get_client()
    params = {"signal": signal_} if signal_ else None
    _each(containers, lambda n: client.post(f"/containers/{n}/kill", params=params))


@click.command("pause")
@click.argument("containers", nargs=-1, required=True)
def pause(containers: tuple[str, ...]) -> None:
    """Pause all processes within one or more containers."""
    client = common.get_client()
    _each(containers, lambda n: client.post(f"/containers/{n}/pause"))


@click.command("unpause")
@click.argument("containers", nargs=-1, required=True)
def unpause(containers: tuple[str, ...]) -> None:
    """Unpause all processes within one or more containers."""
    client = common.get_client()
    _each(containers, lambda n: client.post(f"/containers/{n}/unpause"))


@click.command("wait")
@click.argument("containers", nargs=-1, required=True)
def wait(containers: tuple[str, ...]) -> None:
    """Block until one or more containers stop, then print their exit codes."""
    client = common.get_client()

    def one(name: str) -> None:
        resp = client.stream("POST", f"/containers/{name}/wait")
        try:
            for doc in resp.iter_json():
                common.write(f"{doc.get('StatusCode', 0)}\n")
                break
        finally:
            resp.close()

    _each(containers, one, echo=False)


@click.command("rm")
@click.option("-f", "--force", is_flag=True, help="Force the removal of a running container (uses SIGKILL).")
@click.option("-v", "--volumes", is_flag=True, help="Remove anonymous volumes associated with the container.")
@click.option("-l", "--link", is_flag=True, hidden=True)
@click.argument("containers", nargs=-1, required=True)
def rm(force: bool, volumes: bool, link: bool, containers: tuple[str, ...]) -> None:
    """Remove one or more containers."""
    client = common.get_client()
    params: dict[str, Any] = {}
    if force:
        params["force"] = 1
    if volumes:
        params["v"] = 1
    _each(containers, lambda n: client.delete(f"/containers/{n}", params=params or None))


@click.command("rename")
@click.argument("container")
@click.argument("new_name")
def rename(container: str, new_name: str) -> None:
    """Rename a container."""
    common.get_client().post(f"/containers/{container}/rename", params={"name": new_name})


@click.command("attach")
@click.option("--no-stdin", is_flag=True, help="Do not attach STDIN.")
@click.option("--sig-proxy/--no-sig-proxy", default=True, help="Proxy all received signals to the process.")
@click.option("--detach-keys", default="", hidden=True)
@click.argument("container")
@click.pass_context
def attach(ctx: click.Context, no_stdin: bool, sig_proxy: bool, detach_keys: str, container: str) -> None:
    """Attach local standard input, output, and error streams to a running container."""
    client = common.get_client()
    from pyd.cli.run import _proxy_signals, _wait_status
    from pyd.cli.stdio import copy_output, pump_stdin, tty_session

    waiter = client.stream("POST", f"/containers/{container}/wait")
    info = client.get(f"/containers/{container}/json")
    if not info["State"].get("Running"):
        waiter.close()
        raise click.ClickException("You cannot attach to a stopped container, start it first")
    if info["State"].get("Paused"):
        waiter.close()
        raise click.ClickException("You cannot attach to a paused container, unpause it first")
    cid, tty = info["Id"], bool(info["Config"].get("Tty"))
    stdin = bool(info["Config"].get("OpenStdin")) and not no_stdin
    params = {"stream": 1, "stdout": 1, "stderr": 1}
    if stdin:
        params["stdin"] = 1
    hijacked = client.hijack("POST", f"/containers/{cid}/attach", params=params)
    if tty:
        tty_session(client, hijacked, stdin=stdin)
    else:
        if stdin:
            pump_stdin(hijacked)
        else:
            hijacked.close_write()
        if sig_proxy:
            _proxy_signals(client, cid)
        copy_output(hijacked, False)
    hijacked.close()
    ctx.exit(_wait_status(waiter))


@click.command("port")
@click.argument("container")
@click.argument("private_port", required=False)
def port(container: str, private_port: str | None) -> None:
    """List port mappings or a specific mapping for the container."""
    info = common.get_client().get(f"/containers/{container}/json")
    ports = (info.get("NetworkSettings") or {}).get("Ports") or {}
    if private_port:
        key = private_port if "/" in private_port else f"{private_port}/tcp"
        bindings = ports.get(key)
        if not bindings:
            raise click.ClickException(f"No public port '{key}' published for {container}")
        for b in bindings:
            common.write(f"{b.get('HostIp') or '0.0.0.0'}:{b.get('HostPort')}\n")
        return
    for key in sorted(ports):
        for b in ports[key] or []:
            common.write(f"{key} -> {b.get('HostIp') or '0.0.0.0'}:{b.get('HostPort')}\n")


@click.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@click.option("--filter", "filters", multiple=True, help="Provide filter values (e.g. 'until=<timestamp>').")
def prune(force: bool, filters: tuple[str, ...]) -> None:
    """Remove all stopped containers."""
    if not force:
        click.confirm("WARNING! This will remove all stopped containers.\nAre you sure you want to continue?", abort=True)
    reply = common.get_client().post("/containers/prune", params={"filters": common.parse_filters(filters)})
    deleted = reply.get("ContainersDeleted") or []
    if deleted:
        common.write("Deleted Containers:\n" + "".join(f"{d}\n" for d in deleted) + "\n")
    common.write(f"Total reclaimed space: {common.human_size(reply.get('SpaceReclaimed') or 0)}\n")
