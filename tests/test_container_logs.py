"""Unit tests: the log pipeline (shim output file -> log writers) and the local log cache."""

from __future__ import annotations

import os
import threading
import time

import pytest

from pyd.drivers.execdriver import encode_log_record
from pyd.drivers.log import LogMessage, ReadConfig
from pyd.engine.container_logcache import CacheWriter, read_cache
from pyd.engine.container_logs import LogPipeline, read_position, unread_output
from pyd.engine.file_watch import FileWatcher


class ListWriter:
    def __init__(self, delay: float = 0.0) -> None:
        self.msgs: list[LogMessage] = []
        self.closed = False
        self.delay = delay

    def log(self, msg: LogMessage) -> None:
        if self.delay:
            time.sleep(self.delay)
        self.msgs.append(msg)

    def close(self) -> None:
        self.closed = True


def write(path, *lines: bytes, stream: str = "stdout") -> None:
    with open(path, "ab") as f:
        for i, line in enumerate(lines):
            f.write(encode_log_record(LogMessage(line, stream, time.time_ns() + i)))


@pytest.fixture
def watcher():
    w = FileWatcher()
    yield w
    w.close()


def run_pipeline(tmp_path, watcher, writer, **kw) -> LogPipeline:
    p = LogPipeline(container_id="c" * 64, container_dir=str(tmp_path), source=str(tmp_path / "stdio.log"),
                    writers=[writer], watcher=watcher, **kw)
    p.start()
    return p


def test_pipeline_delivers_follows_and_closes(tmp_path, watcher):
    src = tmp_path / "stdio.log"
    write(src, b"one\n", b"two\n")
    w = ListWriter()
    p = run_pipeline(tmp_path, watcher, w)
    p.sync()
    assert [m.line for m in w.msgs] == [b"one\n", b"two\n"]
    # a line being written (no newline yet) is not delivered
    with open(src, "ab") as f:
        f.write(encode_log_record(LogMessage(b"three\n", "stderr", 1))[:10])
    time.sleep(0.1)
    assert len(w.msgs) == 2
    with open(src, "ab") as f:
        f.write(encode_log_record(LogMessage(b"three\n", "stderr", 1))[10:])
    p.finish()
    assert p.closed.wait(5)
    assert [(m.line, m.stream) for m in w.msgs][-1] == (b"three\n", "stderr") and w.closed
    assert not unread_output(str(src), str(tmp_path))


def test_restart_resumes_without_loss_or_duplicates_across_rotation(tmp_path, watcher):
    src = tmp_path / "stdio.log"
    write(src, b"a\n", b"b\n")
    w1 = ListWriter()
    p = run_pipeline(tmp_path, watcher, w1)
    p.sync()
    p.stop()  # the daemon goes away; the log stays open
    p.join(5)
    assert not w1.closed and read_position(str(tmp_path))[1] == src.stat().st_size
    # meanwhile the shim writes more, rotates, and writes again
    write(src, b"c\n")
    os.rename(src, str(src) + ".1")
    write(src, b"d\n")
    assert unread_output(str(src), str(tmp_path))
    w2 = ListWriter()
    p2 = run_pipeline(tmp_path, watcher, w2)
    write(src, b"e\n")
    p2.sync()
    p2.finish()
    assert p2.closed.wait(5)
    assert [m.line for m in w1.msgs] == [b"a\n", b"b\n"]
    assert [m.line for m in w2.msgs] == [b"c\n", b"d\n", b"e\n"]


def test_non_blocking_mode_drops_and_counts(tmp_path, watcher):
    src = tmp_path / "stdio.log"
    write(src, *[b"x" * 100 + b"\n" for _ in range(200)])
    w = ListWriter(delay=0.01)
    p = run_pipeline(tmp_path, watcher, w, mode="non-blocking", max_buffer=1000)
    p.finish()
    assert p.closed.wait(10)
    assert p.dropped > 0 and len(w.msgs) + p.dropped == 200
    assert read_position(str(tmp_path))[1] == src.stat().st_size  # dropped lines are not re-read


def test_cache_reader_tail_since_and_follow(tmp_path):
    cw = CacheWriter(str(tmp_path), max_size=300, max_files=2)
    for i in range(10):
        cw.log(LogMessage(f"line {i}\n".encode(), "stdout" if i % 2 else "stderr", 1000 + i))
    got = list(read_cache(str(tmp_path), ReadConfig(tail=3), threading.Event()))
    assert [m.line for m in got] == [b"line 7\n", b"line 8\n", b"line 9\n"]
    got = list(read_cache(str(tmp_path), ReadConfig(since_nano=1008), threading.Event()))
    assert [m.time_nano for m in got] == [1008, 1009]
    assert os.path.exists(tmp_path / "container-cached.log.1")  # rotated, still read
    closed = threading.Event()
    cfg = ReadConfig(tail=0, follow=True)
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.extend(m.line for m in read_cache(str(tmp_path), cfg, closed)))
    t.start()
    time.sleep(0.1)
    cw.log(LogMessage(b"late\n", "stdout", 2000))
    time.sleep(0.2)
    closed.set()
    t.join(5)
    assert out == [b"late\n"]
