"""Conformance suite for volume drivers (``pyd.drivers.volume.VolumeDriver``).

Subclass ``VolumeDriverSuite`` in your plugin's tests::

    from pyd.testing.volume import VolumeDriverSuite

    class TestMyVolumes(VolumeDriverSuite):
        driver_name = "my-volumes"                      # the entry-point name
        persistent_options = {}                         # a volume whose data is kept
        mount_options = {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}  # a real mount
        bad_options = [{"no-such-key": "1"}, {"type": "tmpfs"}]

Every check loads the driver as the daemon does,
``PluginRegistry().init_driver(Kind.VOLUME, name, home=...)``, so it also proves the entry
point; a "restarted daemon" is a second driver loaded over the same home. The checks are marked
``integration`` and skip without root when ``needs_root`` is set (the default: most volume
drivers mount). After each check no mount may be left under the test's temporary directory.

What the suite expects (the contract of ``pyd.drivers.volume``):

* Names follow Docker's rule; a bad name is ``InvalidParameter`` naming it for every method,
  before anything touches the disk. Bad options are ``InvalidOption`` naming the key, and
  nothing is created.
* ``create`` is idempotent for the same options; other options for an existing name are a
  ``Conflict`` naming it. A missing volume is ``NotFound`` naming it.
* ``mount`` returns a directory, empty for a new volume (the core's copy-up relies on it);
  refs form a set (a second ``mount`` by the same ref counts once); the volume stays usable
  until the last ref is released. ``remove`` while mounted is a ``Conflict`` and loses nothing.
* Data written through ``mount``'s path (with ``persistent_options``) survives unmount, mount
  and a new driver instance; so do name, options, labels and ``created_at``.
* Calls on different volumes may run in parallel threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import pytest

from pyd.drivers.mounts import mounts_under as _mounts_under
from pyd.drivers.volume import VolumeRefs, capabilities_of
from pyd.errors import Conflict, InvalidOption, InvalidParameter, NotFound, NotSupported
from pyd.registry import Kind, PluginRegistry, list_installed

# Names Docker refuses ("[a-zA-Z0-9][a-zA-Z0-9_.-]+"), including ones that would escape home.
BAD_NAMES: tuple[str, ...] = (
    "", "a", "-x", ".hidden", "_x", "..", "../escape", "a/b", "/abs", "sp ace", "nl\n",
    "nul\x00x", "star*", "uni\u00e9", "x" * 256,
)
PROTOCOL_METHODS = ("parse_options", "create", "remove", "get", "list", "path", "mount", "unmount")


def mounts_under(path: str | Path) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    return _mounts_under(str(path))


def force_unmount(paths: Sequence[str]) -> None:
    """Lazily unmount ``paths`` (deepest first): cleanup after a failed check."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    for p in sorted(paths, key=len, reverse=True):
        libc.umount2(os.fsencode(p), 2)  # MNT_DETACH


def disk_state(root: Path) -> list[str]:
    """Every path below ``root``, to show that a refused call created nothing."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, n), root))
    return sorted(out)


def parse_rfc3339(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class VolumeDriverSuite:
    """Checks every volume driver must pass. Set the class attributes; do not override tests."""

    driver_name: ClassVar[str] = ""
    # Options of a volume whose data survives unmount/mount and a restart ({} for most).
    persistent_options: ClassVar[Mapping[str, str]] = {}
    # Options of a volume that is a real mount while in use (e.g. a tmpfs); {} if none.
    mount_options: ClassVar[Mapping[str, str]] = {}
    # Each must be refused with InvalidOption naming one of its keys.
    bad_options: ClassVar[Sequence[Mapping[str, str]]] = ({"no-such-option-xyz": "1"},)
    needs_root: ClassVar[bool] = True
    threads: ClassVar[int] = 8

    pytestmark = [pytest.mark.integration]

    # -- fixtures and helpers -------------------------------------------------------------

    def new_driver(self, home: Path) -> Any:
        """The driver loaded through a fresh registry (a new daemon) with ``home``."""
        assert self.driver_name, f"{type(self).__name__}.driver_name is not set"
        try:
            return PluginRegistry().init_driver(Kind.VOLUME, self.driver_name, home=home)
        except NotSupported as exc:
            pytest.skip(f'volume driver "{self.driver_name}" is not usable here: {exc}')

    @pytest.fixture
    def home(self, tmp_path: Path) -> Iterator[Path]:
        """``<data-root>/volumes``; after the test no mount may be left under ``tmp_path``."""
        if self.needs_root and os.geteuid() != 0:
            pytest.skip(f'the volume driver suite for "{self.driver_name}" needs root')
        home = tmp_path / "volumes"
        home.mkdir(mode=0o701)
        yield home
        left = mounts_under(tmp_path)
        force_unmount(left)
        assert not left, f"mounts left behind: {left}"

    @pytest.fixture
    def driver(self, home: Path) -> Any:
        return self.new_driver(home)

    @staticmethod
    def vname(prefix: str = "vol") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    @staticmethod
    def ref() -> str:
        return uuid.uuid4().hex + uuid.uuid4().hex  # like a container ID

    def option_sets(self) -> list[Mapping[str, str]]:
        sets = [self.persistent_options]
        if dict(self.mount_options) != dict(self.persistent_options):
            sets.append(self.mount_options)
        return sets

    # -- loading --------------------------------------------------------------------------

    def test_listed_as_installed(self) -> None:
        names = [p.name for p in list_installed([Kind.VOLUME])]
        assert names.count(self.driver_name) == 1, names

    def test_entry_point_resolves(self, driver: Any) -> None:
        assert driver.name == self.driver_name
        for method in PROTOCOL_METHODS:
            assert callable(getattr(driver, method, None)), f"driver lacks {method}()"

    def test_init_hook_ignores_other_names(self, home: Path) -> None:
        module = PluginRegistry().load(Kind.VOLUME, self.driver_name).module
        assert module.pyd_volume_init(name=f"not-{self.driver_name}", home=home) is None

    def test_capabilities_declare_a_scope(self, driver: Any) -> None:
        assert capabilities_of(driver).scope in ("local", "global")

    # -- options and names ----------------------------------------------------------------

    def test_unknown_option_is_rejected_listing_valid_keys(self, driver: Any, home: Path) -> None:
        before = disk_state(home)
        for call in (
            lambda: driver.parse_options({"no-such-option-xyz": "1"}),
            lambda: driver.create("badopt", {"no-such-option-xyz": "1"}, {}),
        ):
            with pytest.raises(InvalidOption) as err:
                call()
            msg = str(err.value)
            assert "no-such-option-xyz" in msg and "valid keys" in msg, msg
        assert disk_state(home) == before
        with pytest.raises(NotFound):
            driver.get("badopt")

    def test_bad_options_are_rejected_and_nothing_is_created(self, driver: Any, home: Path) -> None:
        assert self.bad_options, "set bad_options to at least one invalid option set"
        before = disk_state(home)
        for i, raw in enumerate(self.bad_options):
            with pytest.raises(InvalidOption) as err:
                driver.parse_options(dict(raw))
            assert any(key in str(err.value) for key in raw), f"{raw}: {err.value}"
            with pytest.raises(InvalidOption) as err:
                driver.create(f"bad-{i}", dict(raw), {})
            assert any(key in str(err.value) for key in raw), f"{raw}: {err.value}"
            with pytest.raises(NotFound):
                driver.get(f"bad-{i}")
        assert disk_state(home) == before, "a refused create left something on disk"
        assert driver.list() == []

    def test_good_options_parse_without_side_effects(self, driver: Any, home: Path) -> None:
        before = disk_state(home)
        for raw in self.option_sets():
            driver.parse_options(dict(raw))
        assert disk_state(home) == before, "parse_options must be pure"

    def test_bad_names_are_rejected_before_any_path_use(self, driver: Any, home: Path, tmp_path: Path) -> None:
        before, outside = disk_state(home), sorted(os.listdir(tmp_path))
        ref = self.ref()
        for name in BAD_NAMES:
            for verb, call in (
                ("create", lambda: driver.create(name, {}, {})),
                ("get", lambda: driver.get(name)),
                ("path", lambda: driver.path(name)),
                ("mount", lambda: driver.mount(name, ref)),
                ("unmount", lambda: driver.unmount(name, ref)),
                ("remove", lambda: driver.remove(name)),
            ):
                with pytest.raises(InvalidParameter) as err:
                    call()
                assert not isinstance(err.value, NotFound)
                if name and "\0" not in name:
                    assert name in str(err.value), f"{verb}({name!r}): {err.value}"
        assert disk_state(home) == before
        assert sorted(os.listdir(tmp_path)) == outside

    # -- lifecycle ------------------------------------------------------------------------

    def test_create_get_list_remove(self, driver: Any) -> None:
        name = self.vname()
        labels = {"com.example.tier": "db", "empty": ""}
        t0 = datetime.now(timezone.utc).replace(microsecond=0)
        info = driver.create(name, dict(self.persistent_options), labels)
        assert info.name == name
        assert dict(info.labels) == labels
        assert dict(info.options) == dict(self.persistent_options)
        assert info.mountpoint and info.mountpoint == driver.path(name)
        created = parse_rfc3339(info.created_at)
        assert created.tzinfo is not None, info.created_at
        assert t0 - timedelta(seconds=5) <= created <= datetime.now(timezone.utc) + timedelta(seconds=5)
        assert driver.get(name) == info
        assert [v.name for v in driver.list()] == [name]
        driver.remove(name)
        for call in (lambda: driver.get(name), lambda: driver.path(name), lambda: driver.remove(name)):
            with pytest.raises(NotFound) as err:
                call()
            assert name in str(err.value)
        assert driver.list() == []

    def test_list_is_sorted_by_name(self, driver: Any) -> None:
        names = [f"{c}{self.vname()}" for c in "cab"]
        for n in names:
            driver.create(n, dict(self.persistent_options), {})
        assert [v.name for v in driver.list()] == sorted(names)
        for n in names:
            driver.remove(n)

    def test_missing_volume_is_not_found_naming_it(self, driver: Any) -> None:
        name = self.vname("missing")
        with pytest.raises(NotFound) as err:
            driver.get(name)
        assert f"{name}: no such volume" in str(err.value)
        for call in (
            lambda: driver.remove(name),
            lambda: driver.mount(name, self.ref()),
            lambda: driver.unmount(name, self.ref()),
            lambda: driver.path(name),
        ):
            with pytest.raises(NotFound) as err:
                call()
            assert name in str(err.value)

    def test_create_is_idempotent_with_the_same_options(self, driver: Any) -> None:
        for opts in self.option_sets():
            name = self.vname()
            first = driver.create(name, dict(opts), {"a": "1"})
            again = driver.create(name, dict(opts), {"a": "1"})
            assert again == first
            # Docker keeps the first labels when the volume already exists
            assert dict(driver.create(name, dict(opts), {"b": "2"}).labels) == {"a": "1"}
            assert [v.name for v in driver.list()].count(name) == 1
            driver.remove(name)

    def test_create_with_other_options_is_a_conflict_naming_it(self, driver: Any) -> None:
        sets = self.option_sets()
        if len(sets) < 2:
            pytest.skip("needs persistent_options and mount_options that differ")
        name = self.vname()
        first = driver.create(name, dict(sets[0]), {})
        with pytest.raises(Conflict) as err:
            driver.create(name, dict(sets[1]), {})
        assert name in str(err.value)
        assert driver.get(name) == first
        driver.remove(name)

    # -- mounting -------------------------------------------------------------------------

    def test_a_new_volume_mounts_as_an_empty_directory(self, driver: Any) -> None:
        for opts in self.option_sets():
            name, ref = self.vname(), self.ref()
            driver.create(name, dict(opts), {})
            path = driver.mount(name, ref)
            try:
                assert path == driver.path(name)
                assert os.path.isdir(path)
                assert os.listdir(path) == [], "a new volume must be empty (copy-up depends on it)"
            finally:
                driver.unmount(name, ref)
            driver.remove(name)

    def test_data_persists_across_unmount_mount_and_a_new_driver(self, driver: Any, home: Path) -> None:
        name = self.vname()
        info = driver.create(name, dict(self.persistent_options), {"keep": "me"})
        ref = self.ref()
        path = Path(driver.mount(name, ref))
        (path / "sub").mkdir(mode=0o750)
        (path / "sub" / "file").write_bytes(b"payload\x00\xff")
        os.chmod(path / "sub" / "file", 0o640)
        driver.unmount(name, ref)

        path = Path(driver.mount(name, ref))
        assert (path / "sub" / "file").read_bytes() == b"payload\x00\xff"
        driver.unmount(name, ref)

        again = self.new_driver(home)  # a restarted daemon
        assert again.get(name) == info
        assert [v.name for v in again.list()] == [name]
        ref2 = self.ref()
        path = Path(again.mount(name, ref2))
        try:
            assert (path / "sub" / "file").read_bytes() == b"payload\x00\xff"
            assert (path / "sub" / "file").stat().st_mode & 0o777 == 0o640
        finally:
            again.unmount(name, ref2)
        again.remove(name)
        assert not os.path.exists(path)

    def test_two_refs_share_the_volume_until_the_last_lets_go(self, driver: Any) -> None:
        for opts in self.option_sets():
            name, a, b = self.vname(), self.ref(), self.ref()
            driver.create(name, dict(opts), {})
            pa, pb = driver.mount(name, a), driver.mount(name, b)
            assert pa == pb
            Path(pa, "shared").write_text("both see this")
            if isinstance(driver, VolumeRefs):
                assert driver.refs(name) == {a, b}
            driver.unmount(name, a)
            assert Path(pb, "shared").read_text() == "both see this", "unmount of one ref lost data"
            if isinstance(driver, VolumeRefs):
                assert driver.refs(name) == {b}
            with pytest.raises(Conflict):
                driver.remove(name)
            driver.unmount(name, b)
            if isinstance(driver, VolumeRefs):
                assert driver.refs(name) == frozenset()
            driver.remove(name)

    def test_mount_is_idempotent_per_ref(self, driver: Any) -> None:
        for opts in self.option_sets():
            name, ref = self.vname(), self.ref()
            driver.create(name, dict(opts), {})
            assert driver.mount(name, ref) == driver.mount(name, ref)
            driver.unmount(name, ref)  # once is enough: refs form a set
            driver.unmount(name, ref)  # releasing a ref that holds nothing is harmless
            driver.remove(name)

    def test_remove_while_mounted_is_a_conflict_and_loses_nothing(self, driver: Any) -> None:
        for opts in self.option_sets():
            name, ref = self.vname(), self.ref()
            info = driver.create(name, dict(opts), {})
            path = Path(driver.mount(name, ref))
            (path / "precious").write_text("do not lose me")
            with pytest.raises(Conflict) as err:
                driver.remove(name)
            assert name in str(err.value)
            assert (path / "precious").read_text() == "do not lose me"
            assert driver.get(name) == info
            driver.unmount(name, ref)
            driver.remove(name)
            with pytest.raises(NotFound):
                driver.get(name)

    def test_refs_survive_a_new_driver(self, driver: Any, home: Path) -> None:
        if not isinstance(driver, VolumeRefs):
            pytest.skip(f'volume driver "{self.driver_name}" does not report refs (VolumeRefs)')
        for opts in self.option_sets():
            name, ref = self.vname(), self.ref()
            driver.create(name, dict(opts), {})
            path = Path(driver.mount(name, ref))
            (path / "running").write_text("a container still uses me")
            again = self.new_driver(home)  # daemon restart, the container kept running
            assert again.refs(name) == {ref}
            with pytest.raises(Conflict):
                again.remove(name)
            assert Path(again.mount(name, ref)) == path  # restore re-takes the ref: no change
            assert (path / "running").read_text() == "a container still uses me"
            again.unmount(name, ref)
            assert again.refs(name) == frozenset()
            again.remove(name)

    # -- concurrency ----------------------------------------------------------------------

    def _in_threads(self, work: Any) -> None:
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                work(i)
            except BaseException as exc:  # reported in the test thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(self.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a driver call hung"
        if errors:
            raise errors[0]

    def test_threads_create_and_remove_different_volumes(self, driver: Any) -> None:
        kept: dict[str, str] = {}
        lock = threading.Lock()

        def work(i: int) -> None:
            for j in range(5):
                name, ref = f"t{i}-{j}-{uuid.uuid4().hex[:6]}", self.ref()
                driver.create(name, dict(self.persistent_options), {"i": str(i)})
                Path(driver.mount(name, ref), "who").write_text(name)
                driver.unmount(name, ref)
                if j % 2:
                    driver.remove(name)
                else:
                    with lock:
                        kept[name] = name

        self._in_threads(work)
        assert sorted(v.name for v in driver.list()) == sorted(kept)
        for name in kept:
            ref = self.ref()
            assert Path(driver.mount(name, ref), "who").read_text() == name
            driver.unmount(name, ref)
            driver.remove(name)

    def test_threads_mount_one_volume(self, driver: Any) -> None:
        for opts in self.option_sets():
            name = self.vname()
            driver.create(name, dict(opts), {})
            refs = [self.ref() for _ in range(self.threads)]
            paths: set[str] = set()

            def work(i: int) -> None:
                p = driver.mount(name, refs[i])
                Path(p, f"f{i}").write_text(str(i))
                paths.add(p)

            self._in_threads(work)
            assert len(paths) == 1
            assert sorted(os.listdir(paths.pop())) == sorted(f"f{i}" for i in range(self.threads))
            self._in_threads(lambda i: driver.unmount(name, refs[i]))
            driver.remove(name)
