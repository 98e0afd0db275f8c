"""The exec driver conformance suite against the native driver, plus what is specific to it."""

from __future__ import annotations

from pyd.testing.execdriver import ExecDriverSuite


class TestNativeExecDriver(ExecDriverSuite):
    driver_name = "native"


class TestNativeExecDriverShimExec(ExecDriverSuite):
    """The same suite with each shim started as its own interpreter (``shim-start=exec``)."""

    driver_name = "native"
    driver_options = {"shim-start": "exec"}
