"""overlay2 against the shared graph-driver conformance suite."""

from __future__ import annotations

from pyd.testing.graphdriver import GraphDriverSuite


class TestOverlay2(GraphDriverSuite):
    driver_name = "overlay2"
    good_options = {"overlay2.override_kernel_check": "true"}
    bad_options = [
        {"overlay2.no_such_key": "1"},
        {"overlay2.size": "10G"},
        {"overlay2.size": "ten"},
        {"overlay2.override_kernel_check": "maybe"},
        {"size": "1G"},
    ]
