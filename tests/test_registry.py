"""Plugin discovery and loading with throwaway distributions on sys.path, and how the
daemon's composition root (``build_engine``) selects drivers with them.

Each fake distribution is a ``<name>-1.0.dist-info`` directory (METADATA + entry_points.txt)
next to its module, in a temp directory prepended to sys.path: importlib.metadata and
stevedore find it exactly as they find an installed plugin.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from pyd.config import load_config
from pyd.errors import DriverNotInstalled, DuplicatePlugin, InvalidOption, NotSupported, PluginLoadError
from pyd.registry import Kind, PluginRegistry, installed_names, list_installed


class FakeDists:
    """Writes fake plugin distributions into one sys.path directory."""

    def __init__(self, root: Path, tag: str) -> None:
        self.root = root
        self.tag = tag  # keeps module and distribution names unique per test
        self.modules: list[str] = []

    def add(self, dist: str, group: str, entries: dict[str, str], modules: dict[str, str]) -> None:
        dist = f"{dist}-{self.tag}"
        info = self.root / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = [f"[{group}]"] + [f"{name} = {self.mod(target)}" for name, target in entries.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for module, source in modules.items():
            (self.root / f"{self.mod(module)}.py").write_text(textwrap.dedent(source))
            self.modules.append(self.mod(module))

    def mod(self, name: str) -> str:
        return f"{name}_{self.tag}"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDists]:
    root = tmp_path / "site"
    root.mkdir()
    dists = FakeDists(root, uuid.uuid4().hex[:8])
    monkeypatch.syspath_prepend(str(root))
    yield dists
    for m in dists.modules:
        sys.modules.pop(m, None)


GOOD_LOG = """
from pyd.hookspecs import hookimpl
from pyd.drivers.options import check_options
import sys
IMPORTED = True

class Driver:
    def __init__(self, name, home):
        self.name, self.home = name, home
    def parse_options(self, raw):
        return check_options(raw, {"level": str}, flag="--log-opt", driver=self.name, kind="log")
    def open(self, ctx, options):
        raise NotImplementedError

@hookimpl
def pyd_log_init(name, home):
    if name == "fake-log":
        return Driver(name, home)
"""


def test_listing_reads_metadata_without_importing(fake: FakeDists) -> None:
    fake.add("fake-log", "pyd.log", {"fake-log": "fakelog"}, {"fakelog": GOOD_LOG})
    rows = [p for p in list_installed([Kind.LOG]) if p.name == "fake-log"]
    assert len(rows) == 1
    assert rows[0].dist == f"fake-log-{fake.tag}" and rows[0].version == "1.0"
    assert rows[0].target == fake.mod("fakelog")
    assert fake.mod("fakelog") not in sys.modules
    assert "fake-log" in installed_names(Kind.LOG) and "none" in installed_names(Kind.LOG)


def test_load_and_init_the_selected_driver(fake: FakeDists, tmp_path: Path) -> None:
    fake.add("fake-log", "pyd.log", {"fake-log": "fakelog"}, {"fakelog": GOOD_LOG})
    reg = PluginRegistry()
    driver = reg.init_driver(Kind.LOG, "fake-log", home=tmp_path)
    assert driver.name == "fake-log" and driver.home == tmp_path
    assert reg.init_driver(Kind.LOG, "fake-log", home=tmp_path) is driver  # one per daemon
    assert [r["state"] for r in reg.status() if r["name"] == "fake-log"] == ["loaded"]


def test_not_installed_lists_the_installed_names(fake: FakeDists) -> None:
    fake.add("fake-log", "pyd.log", {"fake-log": "fakelog"}, {"fakelog": GOOD_LOG})
    with pytest.raises(DriverNotInstalled) as err:
        PluginRegistry().load(Kind.LOG, "jsonfile")
    msg = str(err.value)
    assert msg.startswith('log driver "jsonfile" is not installed; available log drivers: ')
    assert "fake-log" in msg and "none" in msg


def test_two_distributions_claiming_one_name_is_an_error_naming_both(fake: FakeDists) -> None:
    fake.add("fake-a", "pyd.log", {"twin": "twin_a"}, {"twin_a": GOOD_LOG})
    fake.add("fake-b", "pyd.log", {"twin": "twin_b"}, {"twin_b": GOOD_LOG})
    with pytest.raises(DuplicatePlugin) as err:
        PluginRegistry().load(Kind.LOG, "twin")
    msg = str(err.value)
    assert fake.mod("twin_a") in msg and fake.mod("twin_b") in msg
    assert f"fake-a-{fake.tag}" in msg and f"fake-b-{fake.tag}" in msg
    assert fake.mod("twin_a") not in sys.modules and fake.mod("twin_b") not in sys.modules


def test_broken_plugin_is_isolated_and_reported(fake: FakeDists, tmp_path: Path) -> None:
    fake.add("fake-broken", "pyd.security", {"broken": "broken"}, {"broken": "raise RuntimeError('boom at import')\n"})
    fake.add("fake-ok", "pyd.security", {"fine": "fine"}, {"fine": "from pyd.hookspecs import hookimpl\n"})
    reg = PluginRegistry()
    loaded = reg.load_all(Kind.SECURITY)
    assert "fine" in [p.name for p in loaded] and "broken" not in [p.name for p in loaded]
    row = next(r for r in reg.status() if r["name"] == "broken")
    assert row["state"] == "failed" and "boom at import" in row["error"] and "RuntimeError" in row["error"]
    with pytest.raises(PluginLoadError) as err:
        reg.load(Kind.SECURITY, "broken")
    assert 'security plugin "broken"' in str(err.value)


def test_misspelt_hook_is_rejected(fake: FakeDists) -> None:
    source = GOOD_LOG + "\n@hookimpl\ndef pyd_log_intt(name, home):\n    return None\n"
    fake.add("fake-typo", "pyd.log", {"typo-log": "typo"}, {"typo": source})
    fake.add("fake-log", "pyd.log", {"fake-log": "fakelog"}, {"fakelog": GOOD_LOG})
    reg = PluginRegistry()
    with pytest.raises(PluginLoadError) as err:
        reg.load(Kind.LOG, "typo-log")
    assert "pyd_log_intt" in str(err.value)
    assert not any(m.__name__ == fake.mod("typo") for m in reg.pm.get_plugins())
    reg.load(Kind.LOG, "fake-log")  # the registry still works


def test_init_returning_none_is_a_load_error_naming_the_plugin(fake: FakeDists, tmp_path: Path) -> None:
    fake.add("fake-log", "pyd.log", {"other-name": "fakelog"}, {"fakelog": GOOD_LOG})  # answers only "fake-log"
    reg = PluginRegistry()
    with pytest.raises(PluginLoadError) as err:
        reg.init_driver(Kind.LOG, "other-name", home=tmp_path)
    assert '"other-name"' in str(err.value) and "returned None" in str(err.value)
    assert reg.try_init_driver(Kind.LOG, "other-name", home=tmp_path) is None


def test_a_plugin_cannot_answer_for_a_name_it_was_not_installed_under(fake: FakeDists, tmp_path: Path) -> None:
    greedy = """
from pyd.hookspecs import hookimpl
class D:
    name = "greedy"
@hookimpl
def pyd_log_init(name, home):
    return D()   # answers for every name
"""
    fake.add("fake-greedy", "pyd.log", {"greedy": "greedy"}, {"greedy": greedy})
    fake.add("fake-log", "pyd.log", {"fake-log": "fakelog"}, {"fakelog": GOOD_LOG})
    reg = PluginRegistry()
    reg.load(Kind.LOG, "greedy")
    assert reg.init_driver(Kind.LOG, "fake-log", home=tmp_path).name == "fake-log"


def test_not_supported_passes_through(fake: FakeDists, tmp_path: Path) -> None:
    source = """
from pyd.hookspecs import hookimpl
from pyd.errors import NotSupported
@hookimpl
def pyd_graphdriver_init(name, home, options):
    raise NotSupported("needs a kernel feature this host lacks")
"""
    fake.add("fake-g", "pyd.graphdriver", {"nope-fs": "nopefs"}, {"nopefs": source})
    reg = PluginRegistry()
    with pytest.raises(NotSupported, match="kernel feature"):
        reg.init_driver(Kind.GRAPHDRIVER, "nope-fs", home=tmp_path, options={})
    assert reg.try_init_driver(Kind.GRAPHDRIVER, "nope-fs", home=tmp_path, options={}) is None


def test_failing_historic_configure_is_that_plugins_load_error(fake: FakeDists) -> None:
    source = """
from pyd.hookspecs import hookimpl
@hookimpl
def pyd_configure(settings):
    raise ValueError("cannot configure")
"""
    fake.add("fake-sec", "pyd.security", {"badconf": "badconf"}, {"badconf": source})
    reg = PluginRegistry()
    reg.pm.hook.pyd_configure.call_historic(kwargs={"settings": {}})
    assert reg.try_load(Kind.SECURITY, "badconf") is None
    assert "cannot configure" in str(reg.failures[(Kind.SECURITY, "badconf")])
    assert not any(getattr(m, "__name__", "") == fake.mod("badconf") for m in reg.pm.get_plugins())


def test_broadcast_isolates_failures(fake: FakeDists, caplog: pytest.LogCaptureFixture) -> None:
    bad = "from pyd.hookspecs import hookimpl\n@hookimpl\ndef pyd_info(info):\n    raise KeyError('oops')\n"
    good = "from pyd.hookspecs import hookimpl\n@hookimpl\ndef pyd_info(info):\n    info['SecurityOptions'].append('name=fake')\n"
    fake.add("fake-s1", "pyd.security", {"s1": "s1"}, {"s1": bad})
    fake.add("fake-s2", "pyd.security", {"s2": "s2"}, {"s2": good})
    reg = PluginRegistry()
    reg.load_all(Kind.SECURITY)
    info: dict = {"SecurityOptions": []}
    with caplog.at_level(logging.ERROR):
        reg.broadcast("pyd_info", info=info)
    assert info["SecurityOptions"] == ["name=fake"]
    assert any(getattr(r, "plugin", "") == "security:s1" for r in caplog.records)


# -- build_engine: what the daemon selects -------------------------------------------------------


@pytest.fixture(autouse=True)
def no_exec_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    # Unit tests of driver selection must not start a real exec driver, installed or not.
    from pyd import daemon

    monkeypatch.setattr(daemon, "DEFAULT_EXEC_DRIVER", "not-installed-in-unit-tests")

GRAPH = """
from pyd.hookspecs import hookimpl
from pyd.errors import NotSupported, InvalidOption

class G:
    def __init__(self, name, home, options):
        self.name, self.home, self.options = name, home, options
        self.cleaned = False
    def status(self):
        return [("Backing Filesystem", "fake")]
    def cleanup(self):
        self.cleaned = True

@hookimpl
def pyd_graphdriver_init(name, home, options):
    if name == "{unsupported}":
        raise NotSupported("{unsupported} is not supported here")
    if options and set(options) - {{"size"}}:
        raise InvalidOption("unknown storage option for " + name + ": " + ",".join(sorted(options)))
    if name in ("{unsupported}", "{works}"):
        return G(name, home, options)
"""


@pytest.fixture
def graphs(fake: FakeDists, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    unsupported, works = f"g1-{fake.tag}", f"g2-{fake.tag}"
    fake.add("fake-graph", "pyd.graphdriver", {unsupported: "graphs", works: "graphs"},
             {"graphs": GRAPH.format(unsupported=unsupported, works=works)})
    from pyd import daemon

    monkeypatch.setattr(daemon, "STORAGE_PRIORITY", (unsupported, works))
    return unsupported, works


def config(tmp_path: Path, **flags: object):
    base = {"data-root": str(tmp_path / "data"), "exec-root": str(tmp_path / "exec"), "log-driver": "none"}
    base.update({k.replace("_", "-"): v for k, v in flags.items()})
    return load_config(base, None)


def test_storage_falls_back_past_not_supported(graphs: tuple[str, str], tmp_path: Path) -> None:
    from pyd.daemon import build_engine

    unsupported, works = graphs
    engine = build_engine(config(tmp_path))
    assert engine.graph_name == works
    assert engine.graph.home == tmp_path / "data" / works  # <data-root>/<driver>
    info = asyncio.run(engine.info())
    assert info["Driver"] == works and info["DriverStatus"] == [["Backing Filesystem", "fake"]]
    assert works in info["Plugins"]["Storage"] and "none" in info["Plugins"]["Log"]
    asyncio.run(engine.close())
    assert engine.graph.cleaned


def test_explicit_storage_driver_must_work(graphs: tuple[str, str], tmp_path: Path) -> None:
    from pyd.daemon import build_engine

    unsupported, works = graphs
    with pytest.raises(NotSupported):
        build_engine(config(tmp_path, storage_driver=unsupported))
    with pytest.raises(DriverNotInstalled) as err:
        build_engine(config(tmp_path, storage_driver="nosuch"))
    assert str(err.value).startswith('storage driver "nosuch" is not installed; available storage drivers: ')
    assert works in str(err.value)
    assert not (tmp_path / "data" / "nosuch").exists()


def test_bad_storage_opts_stop_the_fallback(graphs: tuple[str, str], tmp_path: Path) -> None:
    from pyd.daemon import build_engine

    with pytest.raises(InvalidOption, match="bogus"):
        build_engine(config(tmp_path, storage_opts=["bogus=1"]))


def test_prior_state_selects_the_driver(graphs: tuple[str, str], tmp_path: Path) -> None:
    from pyd.daemon import build_engine

    unsupported, works = graphs
    (tmp_path / "data" / unsupported / "layer").mkdir(parents=True)
    with pytest.raises(NotSupported):  # its state is there: no silent switch to another driver
        build_engine(config(tmp_path))


def test_log_opts_are_validated_by_the_driver_and_core(fake: FakeDists, tmp_path: Path) -> None:
    from pyd.daemon import build_engine

    fake.add("fake-log", "pyd.log", {"fake-log": "fakelog"}, {"fakelog": GOOD_LOG})
    engine = build_engine(config(tmp_path, log_driver="fake-log", log_opts={"level": "x", "mode": "non-blocking", "max-buffer-size": "4m"}))
    assert engine.log_driver_name == "fake-log"
    asyncio.run(engine.close())
    with pytest.raises(InvalidOption, match="nope"):
        build_engine(config(tmp_path, log_driver="fake-log", log_opts={"nope": "1"}))
    with pytest.raises(InvalidOption, match="mode"):
        build_engine(config(tmp_path, log_driver="fake-log", log_opts={"mode": "sometimes"}))
    with pytest.raises(DriverNotInstalled, match="available log drivers: .*fake-log"):
        build_engine(config(tmp_path, log_driver="fake-lgo"))


def test_authz_plugins_load_in_order_and_a_missing_one_stops_startup(fake: FakeDists, tmp_path: Path) -> None:
    from pyd.daemon import build_engine

    source = """
from pyd.hookspecs import hookimpl
from pyd.drivers.authz import AuthzResult
class A:
    def __init__(self, name, options):
        self.name, self.options = name, options
    def authorize_request(self, req):
        return AuthzResult.allowed()
    def authorize_response(self, req, resp):
        return AuthzResult.allowed()
@hookimpl
def pyd_authz_init(name, home, options):
    return A(name, options)
"""
    fake.add("fake-authz", "pyd.authz", {"zeta": "authzmod", "alpha": "authzmod"}, {"authzmod": source})
    engine = build_engine(config(tmp_path, authorization_plugins=["zeta", "alpha"], authorization_opts={"alpha": {"k": "v"}}))
    assert engine.authz.names == ["zeta", "alpha"]
    assert engine.authz.plugins[1][1].options == {"k": "v"}
    asyncio.run(engine.close())
    with pytest.raises(DriverNotInstalled) as err:
        build_engine(config(tmp_path, authorization_plugins=["zeta", "missing-one"]))
    assert str(err.value).startswith('authorization driver "missing-one" is not installed; available authorization drivers: ')
    assert "alpha" in str(err.value)
