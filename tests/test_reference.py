"""Docker's reference grammar and normalisation, and the reference store."""

from __future__ import annotations

import json

import pytest

from pyd.engine.reference import (
    ReferenceStore,
    familiar_match,
    is_image_id,
    parse_normalized,
    parse_repo_tag,
)
from pyd.errors import Conflict, InvalidParameter, NotFound

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "text, full, familiar",
    [
        ("busybox", "docker.io/library/busybox", "busybox"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox", "busybox"),
        ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest", "busybox:latest"),
        ("index.docker.io/busybox", "docker.io/library/busybox", "busybox"),
        ("docker.io/foo/bar", "docker.io/foo/bar", "foo/bar"),
        ("foo/bar:v1", "docker.io/foo/bar:v1", "foo/bar:v1"),
        ("docker.io/library/a/b", "docker.io/library/a/b", "library/a/b"),
        ("localhost/foo", "localhost/foo", "localhost/foo"),
        ("localhost:5000/foo/bar:tag", "localhost:5000/foo/bar:tag", "localhost:5000/foo/bar:tag"),
        ("127.0.0.1:15000/trace/bb:v1", "127.0.0.1:15000/trace/bb:v1", "127.0.0.1:15000/trace/bb:v1"),
        ("example.com/a/b@" + DIGEST, "example.com/a/b@" + DIGEST, "example.com/a/b@" + DIGEST),
        ("busybox:v1@" + DIGEST, "docker.io/library/busybox:v1@" + DIGEST, "busybox:v1@" + DIGEST),
        ("Example.COM/x", "Example.COM/x", "Example.COM/x"),
        ("a__b/c-d---e_f.g", "docker.io/a__b/c-d---e_f.g", "a__b/c-d---e_f.g"),
        # not a valid domain, so all of it is the path (no docker.io), as distribution parses it
        ("a__b.c/x", "a__b.c/x", "a__b.c/x"),
        ("[::1]:5000/x:y", "[::1]:5000/x:y", "[::1]:5000/x:y"),
    ],
)
def test_normalisation(text, full, familiar):
    ref = parse_normalized(text)
    assert str(ref) == full
    assert ref.familiar() == familiar


def test_bare_name_gets_latest_only_when_asked():
    ref = parse_normalized("busybox")
    assert ref.name_only and ref.tag is None
    assert ref.tagged_or_latest().familiar() == "busybox:latest"
    assert str(ref.tagged_or_latest()) == "docker.io/library/busybox:latest"
    assert parse_normalized("x@" + DIGEST).tagged_or_latest().tag is None


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "at least one component"),
        ("Busybox", "must be lowercase"),
        ("foo/Bar:v1", "must be lowercase"),
        ("a:b:c", "invalid reference format"),
        ("-foo", "invalid reference format"),
        ("foo:", "invalid reference format"),
        ("foo/", "invalid reference format"),
        ("foo//bar", "invalid reference format"),
        ("foo/../bar", "invalid reference format"),
        ("foo:" + "t" * 129, "invalid reference format"),
        ("foo@sha256:abc", "invalid reference format"),
        ("foo bar", "invalid reference format"),
        ("ab" * 32, "cannot specify 64-byte hexadecimal strings"),
        ("x" * 256, "must not be more than 255 characters"),
    ],
)
def test_invalid_references_are_400_with_dockers_words(text, fragment):
    with pytest.raises(InvalidParameter) as exc:
        parse_normalized(text)
    assert fragment in str(exc.value)
    assert exc.value.status == 400


def test_repo_with_tag_inside_and_separate_tag():
    assert parse_repo_tag("trace-imp:file").familiar() == "trace-imp:file"
    assert parse_repo_tag("docker.io/library/trace-bb", "v1").familiar() == "trace-bb:v1"
    assert parse_repo_tag("x:old", "new").familiar() == "x:new"
    assert parse_repo_tag("x").familiar() == "x:latest"
    with pytest.raises(InvalidParameter, match="digest"):
        parse_repo_tag("x@" + DIGEST)
    with pytest.raises(InvalidParameter, match="tag format"):
        parse_repo_tag("x", "-bad")


def test_image_id_forms():
    assert is_image_id("ab" * 32) and is_image_id("sha256:" + "ab" * 32)
    assert not is_image_id("abc") and not is_image_id("busybox")


@pytest.mark.parametrize(
    "pattern, ref, hit",
    [
        ("busybox", "busybox:latest", True),
        ("busy*", "busybox:latest", True),
        ("busybox:l*", "busybox:latest", True),
        ("busybox:v*", "busybox:latest", False),
        ("*/bar", "foo/bar:1", True),
        ("*", "foo/bar:1", False),  # * does not cross "/"
        ("bus", "busybox:latest", False),
        ("127.0.0.1:15000/trace/*", "127.0.0.1:15000/trace/bb:v1", True),
        ("b[uv]sybox", "busybox:1", True),
    ],
)
def test_familiar_match(pattern, ref, hit):
    assert familiar_match(pattern, parse_normalized(ref)) is hit


def test_store_maps_tags_and_digests_and_persists(tmp_path):
    path = tmp_path / "repositories.json"
    store = ReferenceStore(path)
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    store.add(parse_normalized("busybox:latest"), a)
    store.add(parse_normalized("busybox:1"), a)
    store.add(parse_normalized("other:x"), b)
    store.add(parse_normalized("busybox@" + DIGEST), a)
    assert store.get(parse_normalized("busybox")) == a  # bare name means :latest
    assert [r.familiar() for r in store.references(a)] == [
        "busybox:1",
        "busybox:latest",
        "busybox@" + DIGEST,
    ]
    data = json.loads(path.read_text())
    assert data["Repositories"]["docker.io/library/busybox"]["docker.io/library/busybox:1"] == a
    again = ReferenceStore(path)
    assert again.get(parse_normalized("other:x")) == b
    assert {str(r) for r, _ in again.by_name("docker.io/library/busybox")} == {
        "docker.io/library/busybox:1",
        "docker.io/library/busybox:latest",
        "docker.io/library/busybox@" + DIGEST,
    }
    again.delete(parse_normalized("busybox:1"))
    assert ReferenceStore(path).get(parse_normalized("busybox:1")) is None
    with pytest.raises(NotFound, match="No such image: busybox:1"):
        again.delete(parse_normalized("busybox:1"))


def test_tags_move_only_with_force_and_digests_never(tmp_path):
    store = ReferenceStore(tmp_path / "r.json")
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    store.add(parse_normalized("x:1"), a)
    with pytest.raises(Conflict):
        store.add(parse_normalized("x:1"), b, force=False)
    store.add(parse_normalized("x:1"), b)
    assert store.get(parse_normalized("x:1")) == b
    store.add(parse_normalized("x@" + DIGEST), a)
    with pytest.raises(Conflict, match="Cannot overwrite digest"):
        store.add(parse_normalized("x@" + DIGEST), b)
    with pytest.raises(InvalidParameter):
        store.add(parse_normalized("x"), a)  # neither tag nor digest


def test_no_temp_files_are_left(tmp_path):
    store = ReferenceStore(tmp_path / "r.json")
    for i in range(5):
        store.add(parse_normalized(f"x:{i}"), "sha256:" + "a" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
