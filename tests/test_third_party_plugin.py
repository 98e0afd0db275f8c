"""A third-party plugin, proven: ``examples/pyd-log-plaintext`` is pip-installed into this
environment, found through its entry point, passes the conformance kit, is selectable by a real
daemon, and ``pip uninstall`` removes it without a trace.

It changes the Python environment the tests run in, so it is an integration test; it always
uninstalls what it installed, also when it fails. If the example is already installed (someone
installed it by hand) the test is skipped rather than disturbing that install.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pyd-log-plaintext"
DIST = "pyd-log-plaintext"
MODULE = "pyd_log_plaintext"
DRIVER = "plaintext"

# Run in a fresh interpreter: what a new `pyd` process would see after the install.
_PROBE = textwrap.dedent(
    f"""
    import importlib.metadata as md, importlib.util, json, site, sys, sysconfig
    from pyd.registry import Kind, list_installed
    spec = importlib.util.find_spec({MODULE!r})
    try:
        files = [str(f.locate()) for f in md.distribution({DIST!r}).files or []]
    except md.PackageNotFoundError:
        files = None
    dirs = {{sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}}
    print(json.dumps({{
        "log": [[p.name, p.dist] for p in list_installed([Kind.LOG])],
        "origin": spec.origin if spec else None,
        "files": files,
        "site_dirs": sorted(dirs),
    }}))
    """
)


def probe(cwd: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=cwd, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(out.stdout)


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def leftovers(site_dirs: list[str]) -> list[str]:
    found: list[str] = []
    for d in map(Path, site_dirs):
        for pattern in (f"{MODULE}*", f"__pycache__/{MODULE}*", f"{MODULE.replace('_', '-')}*"):
            found += [str(p) for p in d.glob(pattern)]
        for pth in d.glob("*.pth"):
            if MODULE in pth.read_text(errors="replace") or "pyd-log-plaintext" in pth.read_text(errors="replace"):
                found.append(str(pth))
    return found


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A neutral working directory: the example's source must not shadow the installed module."""
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A copy of the example, so that building it leaves nothing in the repository."""
    src = tmp_path / "pyd-log-plaintext"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    return src


@pytest.fixture
def clean_environment(workdir: Path) -> Iterator[dict[str, Any]]:
    """The environment without the example; afterwards, whatever happened, it is removed again."""
    before = probe(workdir)
    if [DRIVER, DIST] in before["log"] or before["origin"]:
        pytest.skip(f"{DIST} is already installed here; this test installs and removes it itself")
    try:
        yield before
    finally:
        if probe(workdir)["files"] is not None:
            pip("uninstall", "-y", DIST)


def test_install_select_and_uninstall_without_a_trace(
    clean_environment: dict[str, Any], source: Path, workdir: Path, tmp_path: Path
) -> None:
    # 1. Installing the distribution is all it takes: no change to pyd.
    pip("install", "--no-deps", "--no-cache-dir", str(source))
    installed = probe(workdir)
    assert [DRIVER, DIST] in installed["log"]
    assert installed["origin"] and any(installed["origin"].startswith(d) for d in installed["site_dirs"])
    assert installed["files"]

    # 2. It passes pyd's conformance kit (its own tests subclass LogDriverSuite).
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", str(source / "tests")],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]

    # 3. A daemon lists it and can select it as its log driver.
    from pyd.testing.daemon import DaemonProcess, DaemonStartError

    with DaemonProcess(tmp_path / "daemon1", config={"log-driver": DRIVER}) as d:
        info = d.get_json("/info")
        assert DRIVER in info["Plugins"]["Log"]
        assert info["LoggingDriver"] == DRIVER
        ls = subprocess.run(
            [sys.executable, "-m", "pyd.cli.main", "-H", d.host, "plugin", "ls",
             "--format", "{{.Kind}} {{.Name}} {{.Distribution}} {{.Version}}"],
            capture_output=True, text=True, timeout=60, cwd=workdir,
        )
        assert ls.returncode == 0, ls.stderr
        assert f"log {DRIVER} {DIST} 0.1.0" in ls.stdout.splitlines()

    # 4. pip uninstall removes it without a trace.
    files = [f for f in installed["files"] if Path(f).exists()]
    assert files
    pip("uninstall", "-y", DIST)
    after = probe(workdir)
    assert [DRIVER, DIST] not in after["log"]
    assert after["origin"] is None and after["files"] is None
    assert [f for f in files if Path(f).exists()] == []
    assert leftovers(after["site_dirs"]) == []

    # 5. ...and a daemon configured for it now refuses to start, naming it and what is there.
    refused = DaemonProcess(tmp_path / "daemon2", config={"log-driver": DRIVER}, timeout=20)
    try:
        with pytest.raises(DaemonStartError) as err:
            refused.start()
    finally:
        refused.cleanup()
    assert DRIVER in str(err.value) and "none" in str(err.value)
    with DaemonProcess(tmp_path / "daemon3") as d:
        assert DRIVER not in d.get_json("/info")["Plugins"]["Log"]
