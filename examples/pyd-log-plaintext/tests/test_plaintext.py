"""pyd-log-plaintext's tests: pyd's shared suite, then what is particular to this driver.

Run them after installing the plugin (the suite loads it through its entry point):
    pip install ./examples/pyd-log-plaintext && python -m pytest examples/pyd-log-plaintext/tests
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from pyd.drivers.log import LogContext, LogMessage, ReadConfig
from pyd.errors import InvalidOption
from pyd.registry import Kind, PluginRegistry
from pyd.testing.logdriver import BASE_NANO, LogDriverSuite

# The suite loads the driver through its entry point, which exists only once this distribution
# is installed (pyd's own test run installs it just for tests/test_third_party_plugin.py).
pytest.importorskip("pyd_log_plaintext", reason="pyd-log-plaintext is not installed")


class TestPlaintextConformance(LogDriverSuite):
    driver_name = "plaintext"
    good_options = {"path": "/var/log/pyd-plaintext"}
    bad_options = [
        {"path": ""},
        {"path": "relative/logs"},
        {"path": "/var/log/../../etc"},
        {"path": "/etc/passwd"},  # exists and is not a directory
    ]


@pytest.fixture
def driver(pyd_home: Path):  # type: ignore[no-untyped-def]
    return PluginRegistry().init_driver(Kind.LOG, "plaintext", home=pyd_home)


def test_record_format(driver, pyd_log_context: Callable[..., LogContext]) -> None:  # type: ignore[no-untyped-def]
    ctx = pyd_log_context()
    w = driver.open(ctx, driver.parse_options({}))
    w.log(LogMessage(b"hello\n", "stdout", BASE_NANO))
    w.log(LogMessage(b"a long ", "stderr", BASE_NANO + 1, partial=True))
    w.log(LogMessage(b"line\n", "stderr", BASE_NANO + 2))
    w.log(LogMessage(b"\n", "stdout", 1_795_849_189_000_000_000))
    w.close()
    assert (Path(ctx.log_dir) / f"{ctx.container_id}.log").read_bytes() == (
        b"2026-11-28T06:59:48.500237729Z stdout hello\n"
        b"2026-11-28T06:59:48.500237730Z stderr+ a long \n"
        b"2026-11-28T06:59:48.500237731Z stderr line\n"
        b"2026-11-28T06:59:49.000000000Z stdout \n"
    )


def test_path_option_chooses_the_directory(
    driver, tmp_path: Path, pyd_log_context: Callable[..., LogContext]  # type: ignore[no-untyped-def]
) -> None:
    ctx = pyd_log_context()
    opts = driver.parse_options({"path": str(tmp_path / "elsewhere")})
    w = driver.open(ctx, opts)
    w.log(LogMessage(b"x\n", "stdout", BASE_NANO))
    w.close()
    assert (tmp_path / "elsewhere" / f"{ctx.container_id}.log").exists()
    assert list(Path(ctx.log_dir).iterdir()) == []
    assert [m.line for m in driver.read(ctx, opts, ReadConfig())] == [b"x\n"]


def test_option_error_message(driver) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidOption) as err:
        driver.parse_options({"path": "logs"})
    assert str(err.value) == (
        'invalid --log-opt for log driver "plaintext": path="logs" is not an absolute path '
        "(e.g. /var/log/pyd); valid keys: path"
    )
