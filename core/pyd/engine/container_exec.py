"""Exec instances (``POST /containers/{id}/exec``, ``/exec/{id}/start|json|resize``).

Kept in memory, as dockerd keeps them. The process is made by the exec driver when the exec
starts and runs its program once the client's stream is attached (so no output is lost);
its exit code is recorded before the stream is closed, because the docker CLI inspects the
exec right after the end of the stream.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from pyd.drivers.execdriver import ExecRequest
from pyd.engine.container_attach import AttachSession, ClientStream
from pyd.engine.container_config import replace_or_append_env
from pyd.engine.container_runtime import exit_code_for_start_error
from pyd.engine.container_spec import process_env
from pyd.engine.container_user import resolve_user_in_rootfs
from pyd.errors import Conflict, InvalidParameter, NotFound

if TYPE_CHECKING:
    from pyd.engine.containers import ContainerService

log = logging.getLogger(__name__)

EXIT_POLL = 0.02
DETACHED_POLL = 0.2


@dataclass
class ExecInstance:
    id: str
    container_id: str
    args: list[str]
    env: list[str] = field(default_factory=list)
    user: str = ""
    workdir: str = ""
    tty: bool = False
    privileged: bool = False
    attach_stdin: bool = False
    attach_stdout: bool = False
    attach_stderr: bool = False
    detach_keys: str = ""
    running: bool = False
    started: bool = False
    exit_code: int | None = None
    pid: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def to_docker(self) -> dict[str, Any]:
        pc: dict[str, Any] = {
            "tty": self.tty,
            "entrypoint": self.args[0] if self.args else "",
            "arguments": self.args[1:],
            "privileged": self.privileged,
        }
        if self.user:
            pc["user"] = self.user
        return {
            "ID": self.id,
            "Running": self.running,
            "ExitCode": self.exit_code,
            "ProcessConfig": pc,
            "OpenStdin": self.attach_stdin,
            "OpenStderr": self.attach_stderr,
            "OpenStdout": self.attach_stdout,
            "CanRemove": False,
            "ContainerID": self.container_id,
            "DetachKeys": self.detach_keys,
            "Pid": self.pid,
        }


class ExecService:
    def __init__(self, containers: ContainerService) -> None:
        self.containers = containers
        self._execs: dict[str, ExecInstance] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        containers.execs = self

    def get(self, eid: str) -> ExecInstance:
        ex = self._execs.get(eid)
        if ex is None:
            raise NotFound(f"No such exec instance: {eid}")
        return ex

    def _running_container(self, ref: str) -> Any:
        c = self.containers.get(ref)
        if not c.state.running or c.state.restarting:
            raise Conflict(f"Container {c.id} is not running")
        if c.state.paused:
            raise Conflict(f"Container {c.id} is paused, unpause the container before exec")
        return c

    def create(self, ref: str, body: Mapping[str, Any]) -> str:
        c = self._running_container(ref)
        cmd = body.get("Cmd")
        if isinstance(cmd, str):
            cmd = [cmd]
        if not cmd or not isinstance(cmd, list) or not all(isinstance(a, str) for a in cmd):
            raise InvalidParameter("No exec command specified")
        env = body.get("Env") or []
        if not isinstance(env, list):
            raise InvalidParameter("invalid Env: expected a list of strings")
        workdir = body.get("WorkingDir") or ""
        if workdir and not workdir.startswith("/"):
            raise InvalidParameter(f"the working directory '{workdir}' is invalid, it needs to be an absolute path")
        eid = secrets.token_hex(32)
        ex = ExecInstance(
            id=eid,
            container_id=c.id,
            args=list(cmd),
            env=[str(e) for e in env],
            user=str(body.get("User") or ""),
            workdir=workdir,
            tty=bool(body.get("Tty")),
            privileged=bool(body.get("Privileged")),
            attach_stdin=bool(body.get("AttachStdin")),
            attach_stdout=bool(body.get("AttachStdout")),
            attach_stderr=bool(body.get("AttachStderr")),
            detach_keys=str(body.get("DetachKeys") or ""),
        )
        self._execs[eid] = ex
        c.exec_ids.append(eid)
        self.containers._emit(c, f"exec_create: {' '.join(ex.args)}", execID=eid)
        return eid

    def inspect(self, eid: str) -> dict[str, Any]:
        return self.get(eid).to_docker()

    async def start(self, eid: str, *, detach: bool, tty: bool | None, client: ClientStream | None) -> None:
        """Start the exec; without ``detach``, stream its stdio with ``client`` until it exits."""
        ex = self.get(eid)
        if ex.started:
            raise Conflict(f"Error: Exec command {eid} is already running")
        c = self._running_container(ex.container_id)
        svc = self.containers
        driver = svc._exec_driver()
        rt = svc.runtime(c.id)
        if tty is not None:
            ex.tty = ex.tty or tty
        ex.started = True
        try:
            # one worker-thread hop for both: each hop costs latency on a busy machine
            ex.pid = int(await svc.run(lambda: driver.exec(c.id, self._request(c, rt.rootfs, ex, detach)),
                                       what="starting the exec process"))
        except Exception as exc:
            # like Docker: the exec is done, with 126/127 for a program that cannot run
            message = getattr(exc, "message", None) or str(exc)
            ex.exit_code = exit_code_for_start_error(message)
            ex.done.set()
            raise
        ex.running = True
        svc._emit(c, f"exec_start: {' '.join(ex.args)}", execID=eid)
        if detach or client is None:
            task = asyncio.ensure_future(self._watch(c, ex, DETACHED_POLL))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        session = AttachSession(
            client,
            container_id=c.id,
            exec_id=eid,
            stdin=ex.attach_stdin,
            stdout=ex.attach_stdout,
            stderr=ex.attach_stderr,
            tty=ex.tty,
        )
        await session.connect(svc)
        if session.sock is not None:
            await session.run()
        error = await self._watch(c, ex, EXIT_POLL)
        if error:  # the program could not be run: say why on the stream, as dockerd does
            data = f"OCI runtime exec failed: {error}: unknown\r\n".encode()
            try:
                await client.write(data if ex.tty else bytes([2, 0, 0, 0]) + len(data).to_bytes(4, "big") + data)
            except (ConnectionError, OSError):
                pass

    def _request(self, c: Any, rootfs: str | None, ex: ExecInstance, detach: bool) -> ExecRequest:
        user = None
        home = "/"
        spec = ex.user or c.config.get("User") or ""
        if rootfs:
            resolved = resolve_user_in_rootfs(rootfs, spec, c.host_config.get("GroupAdd") if not ex.user else None)
            user, home = resolved.user, resolved.home
        env = replace_or_append_env(process_env(c.config, ex.tty, home), ex.env)
        return ExecRequest(
            exec_id=ex.id,
            args=list(ex.args),
            env=env,
            cwd=ex.workdir,
            user=user,
            tty=ex.tty,
            open_stdin=ex.attach_stdin,
            privileged=ex.privileged,
            detach=detach,
        )

    async def _watch(self, c: Any, ex: ExecInstance, poll: float) -> str:
        """Record the exit code (the driver has it once the stream closed); return the
        driver's error text when the program could not be run."""
        driver = self.containers.driver
        while ex.running:
            try:
                st = await self.containers.run(driver.exec_state, c.id, ex.id)
            except NotFound:
                st = None
            except Exception as exc:
                log.debug("exec state of %s: %s", ex.id[:12], exc)
                st = None
            if st is None or st.status == "stopped":
                self._finish(c, ex, None if st is None else st.exit_code)
                return "" if st is None else getattr(st, "error", "")
            await asyncio.sleep(poll)
            poll = min(poll * 2, DETACHED_POLL)
        return ""

    def _finish(self, c: Any, ex: ExecInstance, code: int | None) -> None:
        if not ex.running:
            return
        ex.running = False
        ex.exit_code = 126 if code is None else int(code)
        ex.done.set()
        if ex.id in c.exec_ids:
            c.exec_ids.remove(ex.id)
        self.containers._emit(c, "exec_die", execID=ex.id, exitCode=str(ex.exit_code))

    async def resize(self, eid: str, height: int, width: int) -> None:
        ex = self.get(eid)
        if not ex.running:
            raise Conflict(f"Exec {eid} is not running")
        await self.containers.run(self.containers._exec_driver().resize, ex.container_id, height, width, eid)

    # -- container events -------------------------------------------------------------------------

    def container_exited(self, cid: str) -> None:
        c = self.containers.index.get_id(cid)
        for ex in list(self._execs.values()):
            if ex.container_id == cid and ex.running and c is not None:
                self._finish(c, ex, 137 if ex.exit_code is None else ex.exit_code)

    def container_removed(self, cid: str) -> None:
        for eid in [e for e, ex in self._execs.items() if ex.container_id == cid]:
            del self._execs[eid]

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
