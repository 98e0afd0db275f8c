"""Conformance suite for log drivers (``pyd.drivers.log.LogDriver`` and ``LogReader``).

Subclass ``LogDriverSuite`` in a test module of your plugin::

    from pyd.testing.logdriver import LogDriverSuite

    class TestJsonFile(LogDriverSuite):
        driver_name = "json-file"                       # the entry-point name
        good_options = {"max-size": "1m", "max-file": "3"}
        bad_options = [{"max-size": "ten"}, {"no-such-key": "x"}]

Every check loads the driver as the daemon does,
``PluginRegistry().init_driver(Kind.LOG, name, home=...)``, so it also proves the entry point.
Checks on reading run only when the driver is a ``LogReader``.

What the suite expects of a driver (the contract of ``pyd.drivers.log``):

* ``parse_options`` is pure, rejects unknown keys and bad values with ``InvalidOption`` whose
  message names the key, and its result is what ``open`` and ``read`` accept.
* ``open(ctx, opts).log(msg)`` takes any bytes: stdout and stderr lines, empty lines (``b"\\n"``),
  partial lines (``partial=True``, no newline), control characters, non-UTF-8 bytes.
* A reader returns what was written, in order, with the same stream, the same nanosecond
  timestamp and the same partial flag. Invalid UTF-8 may come back with each bad byte replaced
  by U+FFFD (text formats such as Docker's json-file do that); everything else comes back
  byte for byte.
* ``ReadConfig``: ``tail`` counts the last N messages of both streams together (``0``: none,
  ``< 0``: all) and is applied before ``since``/``until``, which are inclusive bounds in Unix
  nanoseconds. ``follow`` keeps yielding what is written after the read started and ends when
  the container's writer is closed (or when ``cancel`` is set); a follow on a log whose writer
  is already closed ends after the stored messages.
* ``close`` may be called more than once.

Override ``io_options`` (default ``{}``) for the options the write/read checks use.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import pytest

from pyd.drivers.log import LogContext, LogDriver, LogMessage, LogReader, ReadConfig
from pyd.errors import InvalidOption
from pyd.registry import Kind, PluginRegistry, list_installed

# A fixed base time (2026-11-28T06:59:48.500237729Z) so failures are reproducible.
BASE_NANO = 1_795_849_188_500_237_729
FOLLOW_TIMEOUT = 10.0


def sample_messages(base: int = BASE_NANO) -> list[LogMessage]:
    """Lines of every awkward kind, in time order: what a container may print."""
    lines: list[tuple[str, bytes, bool]] = [
        ("stdout", b"hello\n", False),
        ("stderr", b"an error\n", False),
        ("stdout", b"\n", False),  # an empty line
        ("stdout", b"part one, ", True),  # a long line cut by the shim...
        ("stdout", b"part two, ", True),
        ("stdout", b"the end\n", False),  # ...and its last piece
        ("stderr", b'tab\there "quoted" back\\slash <b>&amp; \x1b[31mred\x1b[0m\r\n', False),
        ("stdout", "h\u00e9llo w\u00f6rld \u2713 \u65e5\u672c \u2028 sep\n".encode(), False),
        ("stdout", b"\x00\x01\x7f control bytes\n", False),
        ("stderr", b"not utf-8: \xff\xfe \xc3( \xe2\x82\n", False),
        ("stdout", b"x" * 16384 + b"\n", False),
        ("stderr", b"last\n", False),
    ]
    out, t = [], base
    for i, (stream, line, partial) in enumerate(lines):
        if i == 4:
            t = (t // 10**9 + 1) * 10**9  # a whole second: Go's RFC3339Nano drops the fraction
        elif i == 5:
            t += 500_000_000  # ".5": trailing zeros trimmed
        elif i == 6:
            t += 120_000
        elif i:
            t += 1_234_567
        out.append(LogMessage(line=line, stream=stream, time_nano=t, partial=partial))
    return out


def go_lossy(line: bytes) -> bytes:
    """``line`` with each byte that is not valid UTF-8 replaced by U+FFFD (as Go's JSON does)."""
    text = line.decode("utf-8", "surrogateescape")
    return "".join("\ufffd" if "\udc80" <= c <= "\udcff" else c for c in text).encode()


def same_message(got: LogMessage, want: LogMessage) -> bool:
    return (
        got.stream == want.stream
        and got.time_nano == want.time_nano
        and got.partial == want.partial
        and got.line in (want.line, go_lossy(want.line))
    )


def assert_messages(got: Sequence[LogMessage], want: Sequence[LogMessage]) -> None:
    assert len(got) == len(want), (
        f"read {len(got)} messages, wrote {len(want)}:\n got {[m.line[:40] for m in got]}\n"
        f"want {[m.line[:40] for m in want]}"
    )
    for i, (g, w) in enumerate(zip(got, want)):
        assert same_message(g, w), f"message #{i} differs:\n got {g!r}\nwant {w!r}"


class LogDriverSuite:
    """Checks every log driver must pass. Set the class attributes; do not override tests."""

    driver_name: ClassVar[str] = ""
    good_options: ClassVar[Mapping[str, str]] = {}
    bad_options: ClassVar[Sequence[Mapping[str, str]]] = ()
    io_options: ClassVar[Mapping[str, str]] = {}

    # -- helpers --------------------------------------------------------------------------

    def new_driver(self, home: Path) -> LogDriver:
        """The driver loaded through a fresh registry (a new daemon) with ``home``."""
        assert self.driver_name, f"{type(self).__name__}.driver_name is not set"
        return PluginRegistry().init_driver(Kind.LOG, self.driver_name, home=home)

    @pytest.fixture
    def driver(self, pyd_home: Path) -> LogDriver:
        return self.new_driver(pyd_home)

    @pytest.fixture
    def reader(self, driver: LogDriver) -> LogDriver:
        if not isinstance(driver, LogReader):
            pytest.skip(f'log driver "{self.driver_name}" cannot read back (not a LogReader)')
        return driver

    def write(self, driver: LogDriver, ctx: LogContext, msgs: Iterable[LogMessage]) -> object:
        opts = driver.parse_options(dict(self.io_options))
        w = driver.open(ctx, opts)
        try:
            for m in msgs:
                w.log(m)
        finally:
            w.close()
        return opts

    def read(self, driver: LogDriver, ctx: LogContext, opts: object, **cfg: Any) -> list[LogMessage]:
        assert isinstance(driver, LogReader)
        return list(driver.read(ctx, opts, ReadConfig(**cfg)))

    # -- loading and options --------------------------------------------------------------

    def test_listed_as_installed(self) -> None:
        names = [p.name for p in list_installed([Kind.LOG])]
        assert names.count(self.driver_name) == 1, names

    def test_entry_point_resolves(self, driver: LogDriver) -> None:
        assert driver.name == self.driver_name
        assert callable(getattr(driver, "parse_options", None))
        assert callable(getattr(driver, "open", None))

    def test_init_hook_ignores_other_names(self, pyd_registry: PluginRegistry, pyd_home: Path) -> None:
        module = pyd_registry.load(Kind.LOG, self.driver_name).module
        assert module.pyd_log_init(name=f"not-{self.driver_name}", home=pyd_home) is None

    def test_unknown_option_is_rejected_listing_valid_keys(self, driver: LogDriver) -> None:
        with pytest.raises(InvalidOption) as err:
            driver.parse_options({"no-such-option-xyz": "1"})
        msg = str(err.value)
        assert "no-such-option-xyz" in msg and self.driver_name in msg and "valid keys" in msg, msg

    def test_bad_options_are_rejected_naming_the_key(self, driver: LogDriver) -> None:
        assert self.bad_options, "set bad_options to at least one invalid option set"
        for raw in self.bad_options:
            with pytest.raises(InvalidOption) as err:
                driver.parse_options(dict(raw))
            assert any(key in str(err.value) for key in raw), f"{raw}: {err.value}"

    def test_good_options_parse_without_side_effects(self, driver: LogDriver, pyd_home: Path) -> None:
        before = sorted(p.name for p in pyd_home.iterdir())
        driver.parse_options(dict(self.good_options))
        driver.parse_options({})
        driver.parse_options(dict(self.io_options))
        assert sorted(p.name for p in pyd_home.iterdir()) == before, "parse_options must be pure"

    # -- writing --------------------------------------------------------------------------

    def test_log_every_kind_of_line_and_close_twice(
        self, driver: LogDriver, pyd_log_context: Callable[..., LogContext]
    ) -> None:
        ctx = pyd_log_context()
        w = driver.open(ctx, driver.parse_options(dict(self.io_options)))
        for m in sample_messages():
            w.log(m)
        w.close()
        w.close()  # idempotent

    # -- reading (LogReader only) ---------------------------------------------------------

    def test_read_back_equals_written(
        self, reader: LogDriver, pyd_log_context: Callable[..., LogContext]
    ) -> None:
        ctx = pyd_log_context()
        msgs = sample_messages()
        opts = self.write(reader, ctx, msgs)
        assert_messages(self.read(reader, ctx, opts), msgs)

    def test_read_of_an_empty_log(self, reader: LogDriver, pyd_log_context: Callable[..., LogContext]) -> None:
        ctx = pyd_log_context()
        opts = self.write(reader, ctx, [])
        assert self.read(reader, ctx, opts) == []
        assert self.read(reader, ctx, opts, follow=True) == []  # writer closed: ends at once

    def test_containers_are_kept_apart(
        self, reader: LogDriver, pyd_log_context: Callable[..., LogContext]
    ) -> None:
        a, b = pyd_log_context(), pyd_log_context()
        ma = [LogMessage(b"from a\n", "stdout", BASE_NANO)]
        mb = [LogMessage(b"from b\n", "stderr", BASE_NANO + 1)]
        oa, ob = self.write(reader, a, ma), self.write(reader, b, mb)
        assert_messages(self.read(reader, a, oa), ma)
        assert_messages(self.read(reader, b, ob), mb)

    def test_reopen_appends_and_survives_a_new_driver(
        self, reader: LogDriver, pyd_home: Path, pyd_log_context: Callable[..., LogContext]
    ) -> None:
        ctx = pyd_log_context()
        first = sample_messages()[:4]
        second = sample_messages(BASE_NANO + 10**12)[4:]  # a container restart, later
        self.write(reader, ctx, first)
        opts = self.write(reader, ctx, second)
        again = self.new_driver(pyd_home)  # a restarted daemon
        assert_messages(self.read(again, ctx, opts), first + second)

    def test_tail(self, reader: LogDriver, pyd_log_context: Callable[..., LogContext]) -> None:
        ctx = pyd_log_context()
        msgs = sample_messages()
        opts = self.write(reader, ctx, msgs)
        assert_messages(self.read(reader, ctx, opts, tail=3), msgs[-3:])
        assert_messages(self.read(reader, ctx, opts, tail=1), msgs[-1:])
        assert self.read(reader, ctx, opts, tail=0) == []
        assert_messages(self.read(reader, ctx, opts, tail=1000), msgs)
        assert_messages(self.read(reader, ctx, opts, tail=-1), msgs)

    def test_since_and_until(self, reader: LogDriver, pyd_log_context: Callable[..., LogContext]) -> None:
        ctx = pyd_log_context()
        msgs = sample_messages()
        opts = self.write(reader, ctx, msgs)
        t = [m.time_nano for m in msgs]
        assert_messages(self.read(reader, ctx, opts, since_nano=t[5]), msgs[5:])  # inclusive
        assert_messages(self.read(reader, ctx, opts, since_nano=t[5] + 1), msgs[6:])
        assert_messages(self.read(reader, ctx, opts, until_nano=t[3]), msgs[:4])  # inclusive
        assert_messages(self.read(reader, ctx, opts, since_nano=t[2], until_nano=t[7]), msgs[2:8])
        assert self.read(reader, ctx, opts, since_nano=t[-1] + 1) == []
        # tail applies first, then the time window (Docker's order)
        assert_messages(self.read(reader, ctx, opts, tail=4, since_nano=t[-2]), msgs[-2:])

    def test_follow_gets_new_lines_and_ends_when_the_writer_closes(
        self, reader: LogDriver, pyd_log_context: Callable[..., LogContext]
    ) -> None:
        ctx = pyd_log_context()
        msgs = sample_messages()
        opts = reader.parse_options(dict(self.io_options))
        w = reader.open(ctx, opts)
        for m in msgs[:4]:
            w.log(m)
        follower = _Follower(reader, ctx, opts, ReadConfig(follow=True))
        try:
            follower.wait_for(4)
            for m in msgs[4:]:
                w.log(m)
            follower.wait_for(len(msgs))
            assert follower.alive(), "follow ended while the writer was still open"
        finally:
            w.close()
        follower.join()
        assert_messages(follower.got, msgs)

    def test_follow_with_tail_zero_gets_only_new_lines(
        self, reader: LogDriver, pyd_log_context: Callable[..., LogContext]
    ) -> None:
        ctx = pyd_log_context()
        msgs = sample_messages()
        opts = reader.parse_options(dict(self.io_options))
        w = reader.open(ctx, opts)
        try:
            for m in msgs[:3]:
                w.log(m)
            follower = _Follower(reader, ctx, opts, ReadConfig(follow=True, tail=0))
            follower.started.wait(FOLLOW_TIMEOUT)
            time.sleep(0.3)  # let the reader reach its wait for new lines
            for m in msgs[3:]:
                w.log(m)
            follower.wait_for(len(msgs) - 3)
        finally:
            w.close()
        follower.join()
        assert_messages(follower.got, msgs[3:])

    def test_follow_stops_when_cancelled(
        self, reader: LogDriver, pyd_log_context: Callable[..., LogContext]
    ) -> None:
        ctx = pyd_log_context()
        opts = reader.parse_options(dict(self.io_options))
        w = reader.open(ctx, opts)
        try:
            w.log(LogMessage(b"one\n", "stdout", BASE_NANO))
            cancel = threading.Event()
            follower = _Follower(reader, ctx, opts, ReadConfig(follow=True, cancel=cancel))
            follower.wait_for(1)
            cancel.set()  # the client went away; the writer stays open
            follower.join()
        finally:
            w.close()


class _Follower:
    """Consumes ``driver.read`` in a daemon thread, collecting messages."""

    def __init__(self, driver: Any, ctx: LogContext, opts: object, cfg: ReadConfig) -> None:
        self.got: list[LogMessage] = []
        self.error: BaseException | None = None
        self.started = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(driver, ctx, opts, cfg), daemon=True)
        self._thread.start()

    def _run(self, driver: Any, ctx: LogContext, opts: object, cfg: ReadConfig) -> None:
        try:
            it = driver.read(ctx, opts, cfg)
            self.started.set()
            for m in it:
                with self._cond:
                    self.got.append(m)
                    self._cond.notify_all()
        except BaseException as exc:  # re-raised in the test thread
            self.error = exc
        finally:
            self.started.set()
            with self._cond:
                self._cond.notify_all()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + FOLLOW_TIMEOUT
        with self._cond:
            while len(self.got) < n and self.error is None and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        if self.error is not None:
            raise self.error
        assert len(self.got) >= n, f"follow delivered {len(self.got)} of {n} messages"

    def join(self) -> None:
        self._thread.join(FOLLOW_TIMEOUT)
        assert not self._thread.is_alive(), "follow did not end"
        if self.error is not None:
            raise self.error
