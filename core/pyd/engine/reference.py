"""Docker image references: the grammar, Docker's normalisation, and the reference store.

The grammar is distribution's (``name[:tag][@digest]``, a name being an optional
``domain[:port]/`` and lowercase path components). Normalisation is Docker's: a name whose
first component has no ``.`` or ``:`` and is not ``localhost`` lives on ``docker.io``, and a
single-component name there lives under ``library/``. So ``busybox`` is
``docker.io/library/busybox:latest`` in full and ``busybox:latest`` when shown ("familiar").

The ``ReferenceStore`` maps full references to image IDs, persisted as one JSON file
(``repositories.json`` like moby's) rewritten atomically on every change.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from pyd.engine.store import atomic_write
from pyd.errors import Conflict, InvalidParameter, NotFound

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"

_NAME_SPLIT_RE = re.compile(rf"^(?:({_DOMAIN})/)?({_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)$")
_REFERENCE_RE = re.compile(rf"^({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?$")
_TAG_RE = re.compile(rf"^{_TAG}$")
_ID_RE = re.compile(r"^[a-f0-9]{64}$")
_SHA256_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_ANCHORED_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")


def _invalid(detail: str = "") -> InvalidParameter:
    return InvalidParameter("invalid reference format" + (f": {detail}" if detail else ""))


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised reference. ``tag`` and ``digest`` may both be None (name only)."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The full repository name, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}" if self.domain else self.path

    @property
    def familiar_name(self) -> str:
        """The name as Docker shows it, e.g. ``busybox`` or ``127.0.0.1:5000/x/y``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        path = self.path
        if path.startswith(OFFICIAL_REPO_PREFIX) and "/" not in path[len(OFFICIAL_REPO_PREFIX) :]:
            path = path[len(OFFICIAL_REPO_PREFIX) :]
        return path

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()

    def familiar(self) -> str:
        """``busybox:latest``, ``127.0.0.1:5000/x/y@sha256:...``."""
        return self.familiar_name + self._suffix()

    @property
    def name_only(self) -> bool:
        return self.tag is None and self.digest is None

    def with_tag(self, tag: str) -> Reference:
        if not _TAG_RE.match(tag):
            raise InvalidParameter(f'invalid tag format: "{tag}"')
        return replace(self, tag=tag, digest=None)

    def tagged_or_latest(self) -> Reference:
        """Docker's ``TagNameOnly``: a bare name gets ``:latest``."""
        return replace(self, tag=DEFAULT_TAG) if self.name_only else self

    def repository(self) -> Reference:
        return Reference(self.domain, self.path)


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse_normalized(s: str) -> Reference:
    """Parse a reference the way the docker CLI and daemon do (``ParseNormalizedNamed``).

    Raises ``InvalidParameter`` ("invalid reference format...") for anything outside the
    grammar, and for a bare 64-hex string (an image ID is not a repository name).
    """
    if _ID_RE.match(s):
        raise InvalidParameter(
            f"invalid repository name ({s}), cannot specify 64-byte hexadecimal strings"
        )
    if not s:
        raise _invalid("repository name must have at least one component")
    domain, remainder = _split_domain(s)
    remote = remainder.split("@", 1)[0]
    remote = remote.split(":", 1)[0] if ":" in remote else remote
    if remote.lower() != remote:
        raise _invalid(f"repository name ({remote}) must be lowercase")
    full = f"{domain}/{remainder}"
    m = _REFERENCE_RE.match(full)
    if m is None:
        if _REFERENCE_RE.match(full.lower()):
            raise _invalid("repository name must be lowercase")
        raise _invalid()
    name, tag, digest = m.group(1), m.group(2), m.group(3)
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise _invalid(f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters")
    split = _NAME_SPLIT_RE.match(name)
    assert split is not None  # the reference pattern matched
    dom, path = split.group(1) or "", split.group(2)
    if digest is not None and not digest.startswith("sha256:"):
        raise InvalidParameter(f"unsupported digest algorithm: {digest}")
    if digest is not None and not _SHA256_DIGEST_RE.match(digest):
        raise InvalidParameter("invalid digest format")
    return Reference(dom, path, tag, digest)


def parse_repo_tag(repo: str, tag: str = "") -> Reference:
    """``repo`` (which may carry its own ``:tag``) plus an optional separate ``tag``, as the
    import and tag endpoints receive them; the result is always tagged (default ``latest``).

    Digest references are refused: a tag cannot be created from one.
    """
    ref = parse_normalized(repo)
    if ref.digest is not None:
        raise InvalidParameter("refusing to create a tag with a digest reference")
    if tag:
        ref = ref.with_tag(tag)
    return ref.tagged_or_latest()


def is_image_id(s: str) -> bool:
    """A full 64-hex ID, with or without ``sha256:``."""
    return bool(_ID_RE.match(s) or _SHA256_DIGEST_RE.match(s))


def familiar_match(pattern: str, ref: Reference) -> bool:
    """Docker's ``FamiliarMatch``: Go ``path.Match`` of ``pattern`` against ``busybox:latest``,
    then against the familiar name alone. An invalid pattern raises ``InvalidParameter``."""
    rx = _glob_to_regex(pattern)
    return bool(rx.match(ref.familiar()) or rx.match(ref.familiar_name))


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Go's ``path.Match`` syntax: ``*`` and ``?`` never match ``/``; ``[...]``, ``[^...]``."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            i += 1
            if i >= n:
                raise InvalidParameter(f"invalid reference filter {pattern!r}: syntax error in pattern")
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                raise InvalidParameter(f"invalid reference filter {pattern!r}: syntax error in pattern")
            body = pattern[i + 1 : j]
            neg = body.startswith("^")
            if neg:
                body = body[1:]
            if not body:
                raise InvalidParameter(f"invalid reference filter {pattern!r}: syntax error in pattern")
            body = body.replace("\\", "\\\\")
            out.append(f"[{'^' if neg else ''}{body}]" if not neg else f"[^/{body}]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("^" + "".join(out) + "$")


# -- the reference store --------------------------------------------------------------------


class ReferenceStore:
    """Maps references (``docker.io/library/busybox:latest``, ``...@sha256:...``) to image IDs.

    One JSON file: ``{"Repositories": {name: {reference: image_id}}}``; every change rewrites
    it atomically, so a crash leaves either the old or the new mapping. Thread-safe.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._repos: dict[str, dict[str, str]] = {}
        self._parsed: dict[str, Reference] = {}  # parse cache: listing parses every key
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return
        except ValueError as exc:
            raise RuntimeError(f"reference store {self.path} is corrupt: {exc}") from exc
        repos = data.get("Repositories") or {}
        for name, refs in repos.items():
            self._repos[name] = {str(k): str(v) for k, v in (refs or {}).items()}

    def _save(self) -> None:
        data = {"Repositories": {n: r for n, r in sorted(self._repos.items()) if r}}
        atomic_write(self.path, json.dumps(data, separators=(",", ":")).encode())

    def add(self, ref: Reference, image_id: str, *, force: bool = True) -> None:
        """Point ``ref`` (tagged or digested) at ``image_id``.

        A tag already pointing elsewhere is moved only with ``force`` (the API always forces,
        as dockerd's tag endpoint does); a digest reference can never be moved.
        """
        if ref.name_only:
            raise InvalidParameter(f"reference {ref.familiar()} has neither a tag nor a digest")
        key = str(ref)
        with self._lock:
            repo = self._repos.setdefault(ref.name, {})
            old = repo.get(key)
            if old is not None and old != image_id:
                if ref.digest is not None:
                    raise Conflict(f"Cannot overwrite digest {ref.digest}")
                if not force:
                    raise Conflict(
                        f"tag {ref.familiar()} is already set to image {old}; "
                        "use force to replace it"
                    )
            if old == image_id:
                return
            repo[key] = image_id
            self._save()

    def delete(self, ref: Reference) -> None:
        ref = ref.tagged_or_latest()
        key = str(ref)
        with self._lock:
            repo = self._repos.get(ref.name) or {}
            if key not in repo:
                raise NotFound(f"No such image: {ref.familiar()}")
            del repo[key]
            if not repo:
                self._repos.pop(ref.name, None)
            self._save()

    def get(self, ref: Reference) -> str | None:
        ref = ref.tagged_or_latest()
        with self._lock:
            return (self._repos.get(ref.name) or {}).get(str(ref))

    def references(self, image_id: str) -> list[Reference]:
        """Every reference to ``image_id``, sorted by familiar string (as Docker lists them)."""
        with self._lock:
            keys = [k for refs in self._repos.values() for k, v in refs.items() if v == image_id]
        out = [self._parse(k) for k in keys]
        return sorted(out, key=lambda r: r.familiar())

    def _parse(self, key: str) -> Reference:
        ref = self._parsed.get(key)
        if ref is None:
            ref = self._parsed[key] = parse_normalized(key)
        return ref

    def by_name(self, name: str) -> list[tuple[Reference, str]]:
        """(reference, image ID) for every tag and digest of the repository ``name`` (full)."""
        with self._lock:
            items = list((self._repos.get(name) or {}).items())
        return sorted(((self._parse(k), v) for k, v in items), key=lambda t: t[0].familiar())

    def all(self) -> list[tuple[Reference, str]]:
        with self._lock:
            items = [(k, v) for refs in self._repos.values() for k, v in refs.items()]
        return [(self._parse(k), v) for k, v in items]

    def image_ids(self) -> set[str]:
        with self._lock:
            return {v for refs in self._repos.values() for v in refs.values()}
