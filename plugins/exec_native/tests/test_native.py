"""The exec driver conformance suite against the native driver, plus what is specific to it."""

from __future__ import annotations

from pyd.drivers.execdriver import ExecRequest
from pyd.testing.execdriver import ENV, ExecDriverSuite, read_all
from pyd_exec_native import cgroups


class TestNativeExecDriver(ExecDriverSuite):
    driver_name = "native"

    def test_init_and_exec_processes_are_in_every_hierarchy_of_the_cgroup(self, ctx) -> None:  # type: ignore[no-untyped-def]
        """init and exec processes move themselves into the container's cgroup (on v1 through
        ``tasks``, which takes no global lock): in every hierarchy, before they run anything."""
        layout = cgroups.detect()
        wanted = [c for c in cgroups.V1_CONTROLLERS if c in layout.mounts] if layout.version == 1 else [""]
        cid = ctx.create(["sleep", "60"])
        init_pid = ctx.driver.start(cid)
        exec_pid = ctx.driver.exec(cid, ExecRequest("e1", ["true"], env=ENV))  # held before its exec
        path = "/" + f"{ctx.tracker.cgroup_parent}/{cid}".strip("/")
        for pid in (init_pid, exec_pid):
            paths = _cgroup_paths(pid)
            assert {c: paths.get(c) for c in wanted} == {c: path for c in wanted}, pid
        read_all(ctx.driver.attach(cid, "e1"))  # lets the exec run and end
        assert ctx.driver.exec_state(cid, "e1").exit_code == 0


class TestNativeExecDriverShimExec(ExecDriverSuite):
    """The same suite with each shim started as its own interpreter (``shim-start=exec``)."""

    driver_name = "native"
    driver_options = {"shim-start": "exec"}


def _cgroup_paths(pid: int) -> dict[str, str]:
    """controller -> path of ``pid``'s cgroups (v2: the key "")."""
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out
