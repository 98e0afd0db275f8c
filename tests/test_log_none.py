"""The core ``none`` log driver: the conformance suite plus "cannot read back"."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from pyd.drivers.log import LogContext, LogMessage, LogReader
from pyd.errors import InvalidOption
from pyd.registry import Kind, PluginRegistry, list_installed
from pyd.testing.logdriver import LogDriverSuite


class TestNoneConformance(LogDriverSuite):
    driver_name = "none"
    good_options: dict[str, str] = {}
    bad_options = [{"max-size": "10m"}, {"tag": "x"}]


def test_listed_as_core_plugin() -> None:
    rows = [p for p in list_installed([Kind.LOG]) if p.name == "none"]
    assert [(p.dist, p.target) for p in rows] == [("pyd", "pyd.builtin.log_none")]


def test_cannot_read_back(pyd_home: Path) -> None:
    driver = PluginRegistry().init_driver(Kind.LOG, "none", home=pyd_home)
    assert not isinstance(driver, LogReader)


def test_any_option_is_rejected_listing_none(pyd_home: Path) -> None:
    driver = PluginRegistry().init_driver(Kind.LOG, "none", home=pyd_home)
    with pytest.raises(InvalidOption) as err:
        driver.parse_options({"max-size": "10m"})
    assert str(err.value) == (
        'invalid --log-opt for log driver "none": unknown option "max-size"; valid keys: (none)'
    )


def test_writes_nothing(pyd_home: Path, pyd_log_context: Callable[..., LogContext]) -> None:
    driver = PluginRegistry().init_driver(Kind.LOG, "none", home=pyd_home)
    ctx = pyd_log_context()
    w = driver.open(ctx, driver.parse_options({}))
    w.log(LogMessage(b"secret\n", "stdout", 1))
    w.close()
    assert list(Path(ctx.log_dir).iterdir()) == [] and list(pyd_home.iterdir()) == []
