"""vfs against the shared graph-driver conformance suite."""

from __future__ import annotations

from pyd.testing.graphdriver import GraphDriverSuite


class TestVfs(GraphDriverSuite):
    driver_name = "vfs"
    good_options: dict[str, str] = {}
    bad_options = [{"no-such-key": "1"}, {"size": "10G"}, {"size": "ten"}, {"overlay2.size": "1G"}]
