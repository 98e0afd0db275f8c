"""Atomic metadata writes and Docker's name rules (checked before a name becomes a path)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pyd.engine.store import atomic_write, atomic_write_json, safe_join, validate_name
from pyd.errors import InvalidParameter


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "config.v2.json"
    atomic_write(path, b"old")
    atomic_write(path, b"new content")
    assert path.read_bytes() == b"new content"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["config.v2.json"]  # no temp file left behind
    atomic_write_json(path, {"a": [1, 2]})
    assert path.read_text() == '{"a":[1,2]}'


def test_failed_write_keeps_the_old_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    atomic_write(path, b"complete record")

    def crash(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        atomic_write(path, b"half")
    assert path.read_bytes() == b"complete record"
    assert os.listdir(tmp_path) == ["state.json"]


def test_runtime_records_are_atomic_without_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``durable=False`` (state a reboot makes obsolete): the same atomic replace, no fsync."""
    path = tmp_path / "sandbox.json"
    atomic_write(path, b"old")
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    atomic_write_json(path, {"sandbox": "/run/x"}, durable=False)
    assert path.read_text() == '{"sandbox":"/run/x"}' and not synced
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["sandbox.json"]
    atomic_write(path, b"config")
    assert len(synced) == 2  # the durable default: the file, then its directory


@pytest.mark.parametrize(
    "kind, name, ok",
    [
        ("container", "web", True),
        ("container", "/web", True),
        ("container", "my_app.1-x", True),
        ("container", "a", False),  # at least two characters, as Docker
        ("container", "-web", False),
        ("container", "../etc", False),
        ("container", "web/x", False),
        ("container", "w eb", False),
        ("container", "web\n", False),
        ("volume", "data", True),
        ("volume", "/data", False),
        ("volume", "..", False),
        ("volume", "a" * 256, False),
        ("network", "appnet", True),
        ("network", "n", True),
        ("network", "proj_default", True),
        ("network", "a/b", False),
        ("network", "", False),
        ("network", ".", False),
        ("image", "busybox", True),
        ("image", "busybox:local", True),
        ("image", "127.0.0.1:15000/trace/bb:v1", True),
        ("image", "busybox@sha256:" + "a" * 64, True),
        ("image", "BusyBox", False),
        ("image", "busybox:", False),
        ("image", "../x", False),
    ],
)
def test_validate_name(kind: str, name: str, ok: bool) -> None:
    if ok:
        assert validate_name(kind, name) == name.lstrip("/")
    else:
        with pytest.raises(InvalidParameter) as err:
            validate_name(kind, name)
        assert err.value.status == 400


def test_docker_wording() -> None:
    with pytest.raises(InvalidParameter, match=r"^Invalid container name \(a b\), only \[a-zA-Z0-9\]\[a-zA-Z0-9_.-\] are allowed$"):
        validate_name("container", "a b")
    with pytest.raises(InvalidParameter, match="includes invalid characters for a local volume name"):
        validate_name("volume", "a b")


def test_safe_join(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "containers", "abc") == tmp_path / "containers" / "abc"
    for bad in ("..", ".", "", "a/b", "a\0b"):
        with pytest.raises(InvalidParameter):
            safe_join(tmp_path, "containers", bad)
