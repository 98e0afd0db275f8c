"""Whole-suite check: the tests leave no network object of pyd behind.

Daemons under test use name prefixes ``pt<4 hex>`` (``pyd.testing.daemon``) and driver tests
``pyd<4 hex>`` (``pyd.testing.network``); at the end of the session every interface and
nftables table with such a name that was not there at its start is a leak: it is listed and the
run fails (the code that leaked it needs fixing), then removed so the machine stays clean.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

_TEST_NAME = re.compile(r"^(pt|pyd)[0-9a-f]{4}")


def _tables() -> set[str]:
    if os.geteuid() != 0 or shutil.which("nft") is None:
        return set()
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return {" ".join(line.split()[1:3]) for line in out.splitlines()
            if len(line.split()) == 3 and _TEST_NAME.match(line.split()[2])}


def _links() -> set[str]:
    try:
        return {n for n in os.listdir("/sys/class/net") if _TEST_NAME.match(n)}
    except OSError:
        return set()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = (_tables(), _links())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_BEFORE, (set(), set()))
    tables, links = _tables() - before[0], _links() - before[1]
    if not tables and not links:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"LEAK: the tests left nftables tables {sorted(tables)} and interfaces {sorted(links)}"
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(message, red=True)
    else:
        print(message)
    for table in tables:
        subprocess.run(["nft", "delete", "table", *table.split()], capture_output=True)
    for link in links:
        subprocess.run(["ip", "link", "del", link], capture_output=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[tuple[set[str], set[str]]]()
