"""What ``pyd exec`` does, without click: its options (an ``Opt`` table) and its flow.
``pyd.cli.logs`` builds the click command from the table; ``pyd.cli.fast`` runs the flow
straight from the command line.
"""

from __future__ import annotations

import os

from pyd.cli.optspec import FLAG, MULTI, Opt
from pyd.cli.state import is_daemon_error, warn

TYPE_CHECKING = False  # typing itself costs an import on every invocation
if TYPE_CHECKING:
    from typing import Any, Callable

EXEC_OPTIONS = (
    Opt("-d", "--detach", kind=FLAG, help="Detached mode: run command in the background."),
    Opt("-i", "--interactive", kind=FLAG, help="Keep STDIN open even if not attached."),
    Opt("-t", "--tty", kind=FLAG, help="Allocate a pseudo-TTY."),
    Opt("-e", "--env", kind=MULTI, help="Set environment variables."),
    Opt("--env-file", kind=MULTI, help="Read in a file of environment variables."),
    Opt("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>])."),
    Opt("-w", "--workdir", help="Working directory inside the container."),
    Opt("--privileged", kind=FLAG, help="Give extended privileges to the command."),
    Opt("--detach-keys", hidden=True),
)


def exec_(
    get_client: Callable[[], Any],
    detach: bool,
    interactive: bool,
    tty: bool,
    env: tuple[str, ...],
    env_file: tuple[str, ...],
    user: str,
    workdir: str,
    privileged: bool,
    detach_keys: str,
    container: str,
    command: tuple[str, ...],
) -> int:
    """``pyd exec``: returns the exit code (the process's; 126 when it has none)."""
    from pyd.cli.create_body import parse_env_item, read_env_file
    from pyd.cli.stdio import copy_output, pump_stdin, tty_session
    from pyd.errors import PydError

    client = get_client()
    environ = os.environ
    envs = [e for path in env_file for e in read_env_file(path, environ)] + [parse_env_item(e, environ) for e in env]
    body = {
        "User": user,
        "Privileged": privileged,
        "Tty": tty,
        "AttachStdin": interactive and not detach,
        "AttachStdout": not detach,
        "AttachStderr": not detach,
        "Detach": detach,
        "DetachKeys": detach_keys,
        "Env": envs or None,
        "WorkingDir": workdir,
        "Cmd": list(command),
    }
    try:
        eid = client.post(f"/containers/{container}/exec", data=body)["Id"]
    except PydError as exc:
        if is_daemon_error(exc):
            warn(f"Error response from daemon: {exc}")
            return 1
        raise
    if detach:
        client.post(f"/exec/{eid}/start", data={"Detach": True, "Tty": tty})
        return 0
    hijacked = client.hijack("POST", f"/exec/{eid}/start", data={"Detach": False, "Tty": tty})
    if tty:
        tty_session(client, hijacked, stdin=interactive, resize_path=f"/exec/{eid}/resize")
    else:
        if interactive:
            pump_stdin(hijacked)
        else:
            hijacked.close_write()
        copy_output(hijacked, False)
    hijacked.close()
    code = client.get(f"/exec/{eid}/json").get("ExitCode")
    return 126 if code is None else int(code)
