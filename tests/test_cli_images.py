"""``pyd images`` row building and progress rendering (pure client-side logic)."""

from __future__ import annotations

import time

import pytest

from pyd.cli import images as cli
from pyd.errors import PydError


def summary(**kw):
    base = {"Id": "sha256:" + "ab" * 32, "Created": int(time.time()) - 7200, "Size": 1982417,
            "SharedSize": -1, "Containers": -1, "RepoTags": None, "RepoDigests": None}
    base.update(kw)
    return base


def fields(rows):
    return [(r.Repository, r.Tag, r.Digest, r.ID) for r in rows]


def test_rows_per_repository_and_tag():
    s = summary(RepoTags=["busybox:latest", "busybox:1", "127.0.0.1:5000/x/y:v1"],
                RepoDigests=["busybox@sha256:" + "cd" * 32])
    assert fields(cli._rows([s], digests=False, no_trunc=False)) == [
        ("127.0.0.1:5000/x/y", "v1", "<none>", "abababababab"),
        ("busybox", "1", "<none>", "abababababab"),
        ("busybox", "latest", "<none>", "abababababab"),
    ]
    with_digests = fields(cli._rows([s], digests=True, no_trunc=True))
    assert with_digests[1] == ("busybox", "1", "sha256:" + "cd" * 32, "sha256:" + "ab" * 32)


def test_untagged_and_digest_only_rows():
    dangling = summary(RepoTags=["<none>:<none>"], RepoDigests=["<none>@<none>"])
    digest_only = summary(RepoDigests=["x/y@sha256:" + "ef" * 32])
    rows = cli._rows([dangling, digest_only], digests=False, no_trunc=False)
    assert [(r.Repository, r.Tag) for r in rows] == [("<none>", "<none>"), ("x/y", "<none>")]
    row = rows[0]
    assert row.Size == "1.98MB" and row.CreatedSince == "2 hours ago"
    assert row.SharedSize == "N/A" and row.Containers == "N/A"


@pytest.mark.parametrize(
    "ref, split",
    [
        ("busybox", ("busybox", "")),
        ("busybox:1", ("busybox", "1")),
        ("localhost:5000/a/b", ("localhost:5000/a/b", "")),
        ("localhost:5000/a/b:v2", ("localhost:5000/a/b", "v2")),
        ("a@sha256:" + "0" * 64, ("a@sha256:" + "0" * 64, "")),
    ],
)
def test_split_tag(ref, split):
    assert cli._split_tag(ref) == split


def test_progress_stream_on_a_terminal(capsys):
    msgs = [
        {"status": "Loading layer", "progressDetail": {"current": 500, "total": 1000}, "id": "abc"},
        {"status": "Loading layer", "progressDetail": {"current": 1000, "total": 1000}, "id": "abc"},
        {"stream": "Loaded image: x:1\n"},
    ]
    cli._show_stream(msgs, tty=True)
    out = capsys.readouterr().out
    assert out.count("\r") == 2 and "abc: Loading layer [" in out and "1kB/1kB" in out
    assert out.endswith("\nLoaded image: x:1\n")
    cli._show_stream(msgs, tty=False)
    assert capsys.readouterr().out == "abc: Loading layer\nabc: Loading layer\nLoaded image: x:1\n"
    with pytest.raises(PydError, match="boom"):
        cli._show_stream([{"errorDetail": {"message": "boom"}, "error": "boom"}], tty=True)
