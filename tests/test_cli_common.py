"""Shared CLI helpers (pyd.cli.common): sizes, durations, IDs, filters, timestamps."""

from __future__ import annotations

import time

import pytest

from pyd.cli import common
from pyd.errors import InvalidParameter


def test_human_size_is_dockers_decimal_humansize():
    assert [common.human_size(n) for n in (0, 999, 1000, 1982417, 17856781, 4.3e9, 1e30)] == [
        "0B", "999B", "1kB", "1.98MB", "17.9MB", "4.3GB", "1e+06YB"]
    assert common.human_size(1982417, precision=4) == "1.982MB"


def test_bytes_size_is_dockers_binary_bytessize():
    assert common.bytes_size(25276514304) == "23.54GiB"
    assert common.bytes_size(1024) == "1KiB"
    assert common.bytes_size(512) == "512B"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "Less than a second"), (1, "1 second"), (59, "59 seconds"),
        (60, "About a minute"), (5 * 60, "5 minutes"), (3600, "About an hour"),
        (2 * 3600, "2 hours"), (47 * 3600, "47 hours"), (3 * 86400, "3 days"),
        (15 * 86400, "2 weeks"), (70 * 86400, "2 months"), (800 * 86400, "2 years"),
    ],
)
def test_human_duration(seconds, text):
    assert common.human_duration(seconds) == text


def test_time_ago_and_short_id():
    assert common.time_ago(1000, now=1000 + 7200) == "2 hours ago"
    assert common.short_id("sha256:8023" + "a" * 60) == "8023aaaaaaaa"
    assert common.short_id("77c780ad05e7" + "b" * 52) == "77c780ad05e7"
    assert common.short_id("sha256:abc", no_trunc=True) == "sha256:abc"


def test_parse_filters_builds_dockers_map_of_bools():
    assert common.parse_filters([]) is None
    assert common.parse_filters(["label=trace=ev", "status=running", "status=exited"]) == {
        "label": {"trace=ev": True}, "status": {"running": True, "exited": True}}
    with pytest.raises(InvalidParameter, match="expected name=value"):
        common.parse_filters(["dangling"])


def test_parse_timestamp_like_dockers_gettimestamp(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        now = 1795850062.0
        assert common.parse_timestamp("1795850059", now) == "1795850059"
        assert common.parse_timestamp("1795850059.5", now) == "1795850059.5"
        assert common.parse_timestamp("10m", now) == str(int(now - 600))
        assert common.parse_timestamp("1h30m", now) == str(int(now - 5400))
        assert common.parse_timestamp("2026-11-28T06:59:48Z", now) == "1795849188.000000000"
        assert common.parse_timestamp("2026-11-28T06:59:48.500237729Z", now) == (
            "1795849188.500237729")
        assert common.parse_timestamp("2026-11-28T07:59:48+01:00", now) == "1795849188.000000000"
        assert common.parse_timestamp("2026-11-28", now) == "1795824000.000000000"  # local (UTC)
        for bad in ("yesterday", "2026-13-01", "10x"):
            with pytest.raises(InvalidParameter):
                common.parse_timestamp(bad, now)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_local_time_is_rfc3339_nano_with_zone(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    assert common.local_time(1795850060, 807693882) == "2026-11-28T07:14:20.807693882Z"
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        assert common.local_time(1795850060, 5) == "2026-11-28T08:14:20.000000005+01:00"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
