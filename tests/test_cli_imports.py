"""The client path stays light: no aiohttp, pyroute2, pluggy, stevedore, engine or server.

Each check runs in a fresh interpreter and inspects ``sys.modules`` after the command ran.
Import time is recorded (``record_property`` and printed with ``-s``), not asserted.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("aiohttp", "pyroute2", "pluggy", "stevedore", "pyd.engine", "pyd.server", "pyd.registry",
         "pyd.daemon", "http.client", "email", "ssl", "asyncio")


def heavy_modules(names: list[str], allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(
        n for n in names
        if any(n == h or n.startswith(h + ".") for h in HEAVY)
        and not any(n == a or n.startswith(a + ".") for a in allowed)
    )


def run_cli(argv: list[str]) -> dict:
    code = textwrap.dedent(
        f"""
        import json, sys
        from pyd.cli.main import main
        try:
            main({argv!r})
        except SystemExit as exc:
            code = exc.code
        sys.__stdout__.write("\\n@@" + json.dumps({{"code": code, "modules": sorted(sys.modules)}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    result = json.loads(proc.stdout.rpartition("@@")[2])
    result["stderr"] = proc.stderr
    result["stdout"] = proc.stdout.rpartition("\n@@")[0]
    return result


def test_import_of_the_cli_is_light(record_property):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import pyd.cli.main"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    rows = [re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            for line in proc.stderr.splitlines()]
    imported = {m.group(4): int(m.group(2)) for m in rows if m}
    assert "pyd.cli.main" in imported
    record_property("import_pyd_cli_main_us", imported["pyd.cli.main"])
    print(f"\nimport pyd.cli.main: {imported['pyd.cli.main'] / 1000:.1f} ms cumulative "
          f"(click: {imported.get('click', 0) / 1000:.1f} ms)")
    assert heavy_modules(list(imported)) == []
    assert "socket" not in imported and "json" not in imported  # only commands that talk need them


@pytest.mark.parametrize(
    "argv",
    [["version"], ["info"], ["events", "--since", "10m"], ["version", "--format", "{{json .}}"]],
    ids=["version", "info", "events", "version-format"],
)
def test_commands_with_a_bad_host_import_nothing_heavy(tmp_path, argv):
    host = f"unix://{tmp_path}/nosuch.sock"
    result = run_cli(["-H", host, *argv])
    assert result["code"] == 1
    assert f"Cannot connect to the pyd daemon at {host}. Is the pyd daemon running?" in (
        result["stderr"])
    assert heavy_modules(result["modules"]) == []
    assert not [m for m in result["modules"] if m.startswith("pyd_")]  # no plugin module


def test_plugin_ls_reads_metadata_without_importing_plugins(tmp_path):
    result = run_cli(["-H", f"unix://{tmp_path}/nosuch.sock", "plugin", "ls"])
    assert result["code"] == 0, result["stderr"]
    assert "pyd" in result["stdout"]
    # pyd.registry (and through it pluggy) is the one extra this command needs
    assert heavy_modules(result["modules"], allowed=("pyd.registry", "pluggy", "email")) == []
    assert not [m for m in result["modules"] if m.startswith("pyd_")]
    assert not [m for m in result["modules"] if m.startswith("pyd.builtin.")]


def test_python_dash_m_entry_points():
    for module in ("pyd.cli.main", "pyd.cli"):
        proc = subprocess.run([sys.executable, "-m", module, "--version"],
                              capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stdout) == (0, "pyd version 0.1.0\n"), proc.stderr
