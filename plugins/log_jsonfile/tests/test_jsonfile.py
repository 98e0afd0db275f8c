"""json-file: the shared log driver suite, plus Docker's format, options and rotation."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from pyd.drivers.log import LogContext, LogMessage, LogReader, ReadConfig
from pyd.errors import InvalidOption, InvalidParameter
from pyd.registry import Kind, PluginRegistry
from pyd.testing.logdriver import BASE_NANO, LogDriverSuite, assert_messages, sample_messages
from pyd_log_jsonfile import JsonFileDriver
from pyd_log_jsonfile.jsonlog import decode_entry, encode_entry, format_time, parse_time


class TestJsonFileConformance(LogDriverSuite):
    driver_name = "json-file"
    good_options = {
        "max-size": "1m",
        "max-file": "3",
        "compress": "true",
        "labels": "com.example.a,com.example.b",
        "labels-regex": "^com\\.example\\.",
        "env": "HOME,LANG",
        "env-regex": "^APP_",
        "tag": "{{.Name}}/{{.ID}}",
    }
    bad_options = [
        {"max-size": "ten"},
        {"max-size": "0"},
        {"max-file": "0"},
        {"max-file": "three", "max-size": "1m"},
        {"max-file": "3"},  # without max-size
        {"compress": "maybe", "max-size": "1m", "max-file": "3"},
        {"compress": "true", "max-size": "1m"},  # nothing rotated to compress
        {"labels-regex": "("},
        {"tag": "{{.Nope}}"},
        {"mode": "non-blocking"},  # the core's key: removed before the driver sees options
    ]


class TestJsonFileConformanceRotating(LogDriverSuite):
    """The same suite while every few entries rotate into compressed files."""

    driver_name = "json-file"
    good_options = {"max-size": "1k"}
    bad_options = [{"max-size": "-2"}]
    io_options = {"max-size": "600", "max-file": "50", "compress": "true"}


@pytest.fixture
def driver(pyd_home: Path) -> JsonFileDriver:
    return PluginRegistry().init_driver(Kind.LOG, "json-file", home=pyd_home)


def write(driver: JsonFileDriver, ctx: LogContext, msgs: list[LogMessage], **raw: str) -> object:
    opts = driver.parse_options(raw)
    w = driver.open(ctx, opts)
    for m in msgs:
        w.log(m)
    w.close()
    return opts


def numbered(n: int, size: int = 60, start: int = BASE_NANO) -> list[LogMessage]:
    return [
        LogMessage(f"line {i:05d} ".encode() + b"." * (size - 12) + b"\n", ("stdout", "stderr")[i % 2], start + i * 1000)
        for i in range(n)
    ]


# -- the exact format -------------------------------------------------------------------------


def test_docker_line_format(driver: JsonFileDriver, pyd_log_context: Callable[..., LogContext]) -> None:
    ctx = pyd_log_context()
    write(
        driver,
        ctx,
        [
            LogMessage(b"hi\n", "stdout", 1_795_849_188_500_237_729),
            LogMessage(b"oops\n", "stderr", 1_795_849_189_500_000_000),
            LogMessage(b"no fraction\n", "stdout", 1_795_849_190_000_000_000),
            LogMessage(b"partial", "stdout", 1_795_849_190_000_000_100, partial=True),
            LogMessage(b"end of stream without newline", "stdout", 1_795_849_190_000_001_000),
        ],
    )
    path = Path(ctx.log_dir) / f"{ctx.container_id}-json.log"
    assert path.read_bytes().decode().splitlines() == [
        '{"log":"hi\\n","stream":"stdout","time":"2026-11-28T06:59:48.500237729Z"}',
        '{"log":"oops\\n","stream":"stderr","time":"2026-11-28T06:59:49.5Z"}',
        '{"log":"no fraction\\n","stream":"stdout","time":"2026-11-28T06:59:50Z"}',
        '{"log":"partial","stream":"stdout","time":"2026-11-28T06:59:50.0000001Z"}',
        '{"log":"end of stream without newline\\n","stream":"stdout","time":"2026-11-28T06:59:50.000001Z"}',
    ]
    assert oct(path.stat().st_mode & 0o777) == "0o640"


def test_escaping_matches_moby() -> None:
    line = 'a\tb "q" \\ <b>&\x1b\x7f \u00e9 \u2028\r\n'.encode() + b"\xff\xe2\x82!"
    assert encode_entry(line, "stderr", 0) == (
        b'{"log":"a\\u0009b \\"q\\" \\\\ \\u003cb\\u003e\\u0026\\u001b\x7f \xc3\xa9 \\u2028\\r\\n'
        b'\\ufffd\\ufffd\\ufffd!","stream":"stderr","time":"1970-01-01T00:00:00Z"}\n'
    )
    # What Docker would parse back: the standard JSON reading of the line.
    assert json.loads(encode_entry(b"<&>\n", "stdout", 0))["log"] == "<&>\n"


def test_time_round_trip() -> None:
    for ns in (0, 1, 10, 999_999_999, 1_795_849_188_500_237_729, 1_795_849_188_000_000_000):
        assert parse_time(format_time(ns)) == ns
    assert format_time(1_795_849_188_120_000_000) == "2026-11-28T06:59:48.12Z"
    assert parse_time("2026-11-28T07:59:48.5+01:00") == 1_795_849_188_500_000_000


def test_attrs_from_labels_env_and_tag(driver: JsonFileDriver, pyd_log_context: Callable[..., LogContext]) -> None:
    ctx = pyd_log_context(
        container_id="ab" * 32,
        container_name="/web",
        image="busybox:latest",
        labels={"com.example.a": "1", "com.example.zz": "2", "other": "3"},
        env=["APP_MODE=prod", "HOME=/root", "SECRET=x", "BROKEN"],
    )
    write(
        driver,
        ctx,
        [LogMessage(b"x\n", "stdout", 0)],
        labels="com.example.a,missing",
        **{"labels-regex": "zz$", "env": "HOME", "env-regex": "^APP_", "tag": "{{.Name}}/{{.ID}} {{.ImageName}}"},
    )
    raw = (Path(ctx.log_dir) / f"{ctx.container_id}-json.log").read_text()
    assert raw == (
        '{"log":"x\\n","stream":"stdout","attrs":{"APP_MODE":"prod","HOME":"/root",'
        '"com.example.a":"1","com.example.zz":"2","tag":"web/abababababab busybox:latest"},'
        '"time":"1970-01-01T00:00:00Z"}\n'
    )


def test_log_dir_defaults_to_home(driver: JsonFileDriver, pyd_home: Path) -> None:
    ctx = LogContext(container_id="c" * 64, container_name="x")
    write(driver, ctx, [LogMessage(b"x\n", "stdout", 0)])
    assert (pyd_home / ("c" * 64) / ("c" * 64 + "-json.log")).exists()
    with pytest.raises(InvalidParameter):
        driver.log_path(LogContext(container_id="../escape", container_name="x"))


# -- options ----------------------------------------------------------------------------------


def test_option_errors_name_the_key_value_and_valid_keys(driver: JsonFileDriver) -> None:
    with pytest.raises(InvalidOption) as err:
        driver.parse_options({"max-size": "ten"})
    assert str(err.value) == (
        'invalid --log-opt for log driver "json-file": max-size="ten" is not a size (e.g. 10m, 1g); '
        "valid keys: compress, env, env-regex, labels, labels-regex, max-file, max-size, tag"
    )
    with pytest.raises(InvalidOption, match='max-file="3" needs max-size'):
        driver.parse_options({"max-file": "3", "max-size": "-1"})


def test_option_values(driver: JsonFileDriver) -> None:
    opts = driver.parse_options({"max-size": "10m", "max-file": "5", "compress": "1"})
    assert (opts.max_size, opts.max_file, opts.compress) == (10 * 1024 * 1024, 5, True)
    assert driver.parse_options({"max-size": "-1"}).max_size == -1
    assert driver.parse_options({}).max_size == -1


# -- rotation ---------------------------------------------------------------------------------


def files_of(ctx: LogContext) -> list[str]:
    return sorted(os.listdir(ctx.log_dir))


def test_rotation_keeps_max_file_files(driver: JsonFileDriver, pyd_log_context: Callable[..., LogContext]) -> None:
    ctx = pyd_log_context()
    msgs = numbered(100)  # 100 entries of ~120 bytes
    opts = write(driver, ctx, msgs, **{"max-size": "1k", "max-file": "3"})
    base = f"{ctx.container_id}-json.log"
    assert files_of(ctx) == [base, base + ".1", base + ".2"]
    for name in files_of(ctx):
        size = (Path(ctx.log_dir) / name).stat().st_size
        assert size < 1024 + 200, (name, size)  # at most one entry past max-size
    # Reading returns the newest entries, in order, without gaps, across the three files.
    got = list(driver.read(ctx, opts, ReadConfig()))
    assert 16 <= len(got) < 100
    assert_messages(got, msgs[-len(got) :])


def test_max_file_one_truncates(driver: JsonFileDriver, pyd_log_context: Callable[..., LogContext]) -> None:
    ctx = pyd_log_context()
    opts = write(driver, ctx, numbered(50), **{"max-size": "1k", "max-file": "1"})
    assert files_of(ctx) == [f"{ctx.container_id}-json.log"]
    got = list(driver.read(ctx, opts, ReadConfig()))
    assert 0 < len(got) <= 10


def test_compress_produces_gzip_files(driver: JsonFileDriver, pyd_log_context: Callable[..., LogContext]) -> None:
    ctx = pyd_log_context()
    msgs = numbered(60)
    opts = write(driver, ctx, msgs, **{"max-size": "1k", "max-file": "4", "compress": "true"})
    base = f"{ctx.container_id}-json.log"
    assert files_of(ctx) == [base, base + ".1.gz", base + ".2.gz", base + ".3.gz"]
    with gzip.open(Path(ctx.log_dir) / (base + ".1.gz")) as f:
        lines = f.read().splitlines()
    assert lines and all(decode_entry(raw).stream in ("stdout", "stderr") for raw in lines)
    got = list(driver.read(ctx, opts, ReadConfig()))
    assert_messages(got, msgs[-len(got) :])
    assert_messages(list(driver.read(ctx, opts, ReadConfig(tail=25))), msgs[-25:])  # spans files
    first = len(msgs) - len(got) + 3  # a window that starts in the oldest compressed file
    t = msgs[first].time_nano
    window = ReadConfig(since_nano=t, until_nano=t + 9999)
    assert_messages(list(driver.read(ctx, opts, window)), msgs[first : first + 10])


def test_rotation_continues_after_reopen(driver: JsonFileDriver, pyd_log_context: Callable[..., LogContext]) -> None:
    ctx = pyd_log_context()
    raw = {"max-size": "1k", "max-file": "3"}
    write(driver, ctx, numbered(5), **raw)
    path = Path(ctx.log_dir) / f"{ctx.container_id}-json.log"
    entry = path.stat().st_size // 5
    write(driver, ctx, numbered(5, start=BASE_NANO + 10**9), **raw)  # a restarted container appends
    # The new writer counted the 5 entries already there: it rotated after 3 more (>= 1 KiB).
    assert entry * 8 >= 1024 > entry * 7
    assert Path(f"{path}.1").stat().st_size == entry * 8
    assert path.stat().st_size == entry * 2


def test_follow_survives_rotation(driver: JsonFileDriver, pyd_log_context: Callable[..., LogContext]) -> None:
    ctx = pyd_log_context()
    opts = driver.parse_options({"max-size": "1k", "max-file": "50", "compress": "true"})
    msgs = numbered(200)
    w = driver.open(ctx, opts)
    got: list[LogMessage] = []
    reader = threading.Thread(target=lambda: got.extend(driver.read(ctx, opts, ReadConfig(follow=True))), daemon=True)
    w.log(msgs[0])
    reader.start()
    for i, m in enumerate(msgs[1:]):
        w.log(m)
        if i % 37 == 0:
            time.sleep(0.01)  # let the reader fall behind across several rotations, sometimes
    w.close()
    reader.join(10)
    assert not reader.is_alive()
    assert_messages(got, msgs)
    assert len([n for n in files_of(ctx) if n.endswith(".gz")]) >= 15


def test_damaged_last_line_is_skipped(driver: JsonFileDriver, pyd_log_context: Callable[..., LogContext]) -> None:
    ctx = pyd_log_context()
    write(driver, ctx, numbered(2))
    path = Path(ctx.log_dir) / f"{ctx.container_id}-json.log"
    with open(path, "ab") as f:
        f.write(b'{"log":"cut sho')  # a crash in the middle of a write
    opts = write(driver, ctx, numbered(1, start=BASE_NANO + 10**9))
    got = list(driver.read(ctx, opts, ReadConfig()))
    assert_messages(got, numbered(2) + numbered(1, start=BASE_NANO + 10**9))


def test_follow_a_writer_in_another_process(
    driver: JsonFileDriver, pyd_log_context: Callable[..., LogContext], pyd_home: Path
) -> None:
    """The shim may run the writer: a follower here sees its lines, rotation, and its exit."""
    ctx = pyd_log_context()
    opts = driver.parse_options({"max-size": "2k", "max-file": "10"})
    script = f"""
import sys, time
from pathlib import Path
from pyd.drivers.log import LogContext, LogMessage
from pyd_log_jsonfile import JsonFileDriver
d = JsonFileDriver(Path({str(pyd_home)!r}))
w = d.open(LogContext(container_id={ctx.container_id!r}, container_name="x", log_dir={ctx.log_dir!r}),
           d.parse_options({{"max-size": "2k", "max-file": "10"}}))
print("open", flush=True)
sys.stdin.readline()
for i in range(60):
    w.log(LogMessage(b"line %05d ................................................\\n" % i, "stdout", {BASE_NANO} + i))
    if i % 20 == 0:
        time.sleep(0.3)
w.close()
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == b"open\n"
        got: list[LogMessage] = []
        reader = threading.Thread(
            target=lambda: got.extend(driver.read(ctx, opts, ReadConfig(follow=True))), daemon=True
        )
        reader.start()
        time.sleep(0.2)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert proc.wait(20) == 0
        reader.join(10)
        assert not reader.is_alive(), "follow did not notice the writer process had gone"
        assert [m.time_nano - BASE_NANO for m in got] == list(range(60))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_is_a_log_reader(driver: JsonFileDriver) -> None:
    assert isinstance(driver, LogReader)


def test_sample_round_trip_is_lossy_only_for_invalid_utf8(
    driver: JsonFileDriver, pyd_log_context: Callable[..., LogContext]
) -> None:
    ctx = pyd_log_context()
    msgs = sample_messages()
    opts = write(driver, ctx, msgs)
    got = list(driver.read(ctx, opts, ReadConfig()))
    for g, w in zip(got, msgs):
        if b"not utf-8" in w.line:
            assert g.line == "not utf-8: \ufffd\ufffd \ufffd( \ufffd\ufffd\n".encode()
        else:
            assert g.line == w.line


@pytest.mark.parametrize("compress", ["false", "true"])
def test_follower_catches_up_over_many_rotations(
    driver: JsonFileDriver, pyd_log_context: Callable[..., LogContext], compress: str
) -> None:
    """A follower that stalls while the file rotates many times still gets every line."""
    ctx = pyd_log_context()
    opts = driver.parse_options({"max-size": "1k", "max-file": "40", "compress": compress})
    msgs = numbered(150)
    w = driver.open(ctx, opts)
    w.log(msgs[0])
    it = driver.read(ctx, opts, ReadConfig(follow=True))
    got = [next(it)]  # the follower is now positioned in the first file...
    for m in msgs[1:]:  # ...and sleeps through ~15 rotations
        w.log(m)
    w.close()
    got += list(it)
    assert_messages(got, msgs)


def test_follower_whose_file_was_deleted_goes_on(
    driver: JsonFileDriver, pyd_log_context: Callable[..., LogContext]
) -> None:
    ctx = pyd_log_context()
    opts = driver.parse_options({"max-size": "1k", "max-file": "2"})
    msgs = numbered(100)
    w = driver.open(ctx, opts)
    w.log(msgs[0])
    it = driver.read(ctx, opts, ReadConfig(follow=True))
    got = [next(it)]
    for m in msgs[1:]:
        w.log(m)
    w.close()
    got += list(it)
    # Lines in files deleted meanwhile are lost (as in Docker); the rest arrives in order.
    times = [m.time_nano for m in got]
    assert times == sorted(times) and got[-1].time_nano == msgs[-1].time_nano
