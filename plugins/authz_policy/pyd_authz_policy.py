"""pyd authorization plugin ``policy``: allow or deny API requests by rules from a JSON file.

Enable it in daemon.json::

    "authorization-plugins": ["policy"],
    "authorization-opts": {"policy": {"file": "/etc/pyd/authz-policy.json"}}

The file holds ``{"default": "allow", "rules": [...]}``. Rules are tried in order; the first
rule whose conditions all hold decides (``allow`` or ``deny``); no rule -> ``default``. See
README.md for every condition. Decisions fail closed: a condition that cannot be evaluated
(the body is not valid JSON, the caller's uid is unknown) makes a ``deny`` rule apply and an
``allow`` rule not apply. A body the daemon does not show (``None``: an upload stream such as
a build context) holds no JSON settings, as no handler reads such a body as JSON, so
``body`` and ``bind_sources`` conditions are false for it.

The file is read once, when the daemon starts (restart the daemon to change the policy); a
file with an unknown key, a bad regular expression or a wrong type stops the daemon with a
message naming the rule and the key.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import unquote, urlsplit

from pyd.drivers.authz import AuthzRequest, AuthzResponse, AuthzResult
from pyd.drivers.options import check_options
from pyd.errors import InvalidOption
from pyd.hookspecs import hookimpl

NAME = "policy"
RULE_KEYS = (
    "action",
    "method",
    "path",
    "body",
    "bind_sources",
    "uid",
    "unless_uid",
    "user",
    "unless_user",
    "reason",
)
_VERSION_PREFIX = re.compile(r"^/v[0-9]+(?:\.[0-9]+)*(?=/)")
_UNKNOWN = None  # a condition that cannot be evaluated


def _error(where: str, msg: str) -> InvalidOption:
    return InvalidOption(f'authorization plugin "{NAME}": {where}: {msg}')


# -- the rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    index: int  # 1-based, for messages
    action: str  # "allow" | "deny"
    methods: frozenset[str] | None = None
    path: re.Pattern[str] | None = None
    body: tuple[tuple[str, Any], ...] | None = None
    bind_sources: tuple[str, ...] | None = None
    uids: frozenset[int] | None = None
    unless_uids: frozenset[int] | None = None
    users: frozenset[str] | None = None
    unless_users: frozenset[str] | None = None
    reason: str = ""

    def conditions(self, req: AuthzRequest, ctx: _RequestView) -> Iterator[bool | None]:
        """Each condition of the rule: True, False, or None when it cannot be evaluated."""
        if self.methods is not None:
            yield req.method.upper() in self.methods
        if self.path is not None:
            yield self.path.search(ctx.path) is not None
        if self.uids is not None:
            yield _UNKNOWN if req.uid is None else req.uid in self.uids
        if self.unless_uids is not None:
            yield _UNKNOWN if req.uid is None else req.uid not in self.unless_uids
        if self.users is not None:
            yield req.user in self.users
        if self.unless_users is not None:
            yield req.user not in self.unless_users
        if self.body is not None:
            doc = ctx.json
            if doc is _NOT_JSON:
                yield _UNKNOWN
            elif doc is _STREAM:
                yield False
            else:
                yield all(_lookup_equals(doc, key, want) for key, want in self.body)
        if self.bind_sources is not None:
            doc = ctx.json
            if doc is _NOT_JSON:
                yield _UNKNOWN
            elif doc is _STREAM:
                yield False
            else:
                yield any(_under_or_over(src, self.bind_sources) for src in _host_paths(doc))

    def applies(self, req: AuthzRequest, ctx: _RequestView) -> bool:
        unknown = False
        for result in self.conditions(req, ctx):
            if result is False:
                return False
            if result is None:
                unknown = True
        # Fail closed: what cannot be judged makes a deny apply and an allow not apply.
        return not unknown or self.action == "deny"

    def describe(self, req: AuthzRequest, ctx: _RequestView) -> str:
        return self.reason or f"rule {self.index} denies {req.method.upper()} {ctx.path}"


_NOT_JSON = object()
_STREAM = object()


class _RequestView:
    """What rules look at, computed once per request: the path without the version prefix
    and query, percent-decoded (as the router sees it); the body parsed as JSON."""

    def __init__(self, req: AuthzRequest) -> None:
        path = unquote(urlsplit(req.uri).path) or "/"
        self.path = _VERSION_PREFIX.sub("", path, count=1)
        self._body = req.body
        self._json: Any = ...

    @property
    def json(self) -> Any:
        if self._json is ...:
            body = self._body
            if body is None:
                # An upload stream (tar, import): the daemon shows every body a handler reads
                # as JSON, so this one carries no settings a rule could look for.
                self._json = _STREAM
            elif not body.strip():
                self._json = {}
            else:
                try:
                    self._json = json.loads(body)
                except (ValueError, UnicodeDecodeError):
                    self._json = _NOT_JSON
        return self._json


def _lookup_equals(doc: Any, dotted: str, want: Any) -> bool:
    """Does ``doc`` hold ``want`` at ``dotted`` (``"HostConfig.Privileged"``)? Keys match
    case-insensitively, as Go's JSON decoder (and so dockerd) reads them; if several keys
    differ only in case, any of them holding ``want`` counts."""
    level = [doc]
    for part in dotted.split("."):
        nxt = []
        for node in level:
            if isinstance(node, dict):
                nxt.extend(v for k, v in node.items() if isinstance(k, str) and k.lower() == part.lower())
        level = nxt
    return any(v == want for v in level)


def _ci(node: Mapping[str, Any], key: str) -> list[Any]:
    return [v for k, v in node.items() if isinstance(k, str) and k.lower() == key.lower()]


def _walk(doc: Any) -> Iterator[dict[str, Any]]:
    if isinstance(doc, dict):
        yield doc
        for v in doc.values():
            yield from _walk(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _walk(v)


def _host_paths(doc: Any) -> Iterator[str]:
    """Every host path a request body asks to mount, wherever it sits:

    * ``Binds: ["/src:/dst:ro"]`` (container create, old-API start);
    * ``Mounts: [{"Type": "bind", "Source": "/src"}]``;
    * volumes backed by a host directory: ``DriverOpts``/``DriverConfig.Options`` with
      ``o`` containing ``bind`` and a ``device`` (``docker volume create --opt o=bind
      --opt device=/etc``), which would otherwise be a way around a bind rule.
    """
    for node in _walk(doc):
        for binds in _ci(node, "Binds"):
            if isinstance(binds, list):
                for b in binds:
                    if isinstance(b, str) and b.startswith("/"):
                        yield b.split(":", 1)[0]
        for mounts in _ci(node, "Mounts"):
            if isinstance(mounts, list):
                for m in mounts:
                    if isinstance(m, dict) and any(str(t).lower() == "bind" for t in _ci(m, "Type")):
                        for src in _ci(m, "Source"):
                            if isinstance(src, str):
                                yield src
        for key in ("DriverOpts", "Options"):
            for opts in _ci(node, key):
                if isinstance(opts, dict):
                    o = " ".join(str(v) for v in _ci(opts, "o"))
                    if "bind" in o:  # bind, rbind
                        for dev in _ci(opts, "device"):
                            if isinstance(dev, str):
                                yield dev


def _under_or_over(source: str, protected: tuple[str, ...]) -> bool:
    """Is ``source`` one of ``protected``, inside one, or a parent of one (binding ``/``
    exposes ``/etc`` too)? Checked on the normalised path and on the resolved one
    (a symlink to a protected directory counts)."""
    candidates = {posixpath.normpath("/" + source.lstrip("/"))}
    try:
        candidates.add(os.path.realpath(source))
    except (OSError, ValueError):
        pass
    for cand in candidates:
        for p in protected:
            if cand == p or cand.startswith(p.rstrip("/") + "/") or p.startswith(cand.rstrip("/") + "/"):
                return True
    return False


# -- parsing the policy file ---------------------------------------------------------------------


def _str_set(where: str, key: str, value: Any, *, upper: bool = False) -> frozenset[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise _error(where, f'"{key}" must be a string or a non-empty list of strings')
    return frozenset(i.upper() if upper else i for i in items)


def _int_set(where: str, key: str, value: Any) -> frozenset[int]:
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise _error(where, f'"{key}" must be an integer or a non-empty list of integers')
    return frozenset(items)


def parse_rule(index: int, raw: Any, source: str = "policy") -> Rule:
    where = f"{source}: rule {index}"
    if not isinstance(raw, dict):
        raise _error(where, "a rule must be a JSON object")
    unknown = sorted(set(raw) - set(RULE_KEYS))
    if unknown:
        raise _error(where, f'unknown key "{unknown[0]}"; valid keys: {", ".join(RULE_KEYS)}')
    action = raw.get("action")
    if action not in ("allow", "deny"):
        raise _error(where, f'"action" must be "allow" or "deny", got {json.dumps(action)}')
    fields: dict[str, Any] = {"index": index, "action": action}
    if "method" in raw:
        fields["methods"] = _str_set(where, "method", raw["method"], upper=True)
    if "path" in raw:
        if not isinstance(raw["path"], str):
            raise _error(where, '"path" must be a regular expression string')
        try:
            fields["path"] = re.compile(raw["path"])
        except re.error as exc:
            raise _error(where, f'"path" is not a valid regular expression: {exc}') from None
    if "body" in raw:
        body = raw["body"]
        if not isinstance(body, dict) or not body or not all(isinstance(k, str) and k for k in body):
            raise _error(where, '"body" must be a non-empty object of "Dotted.Key": value')
        fields["body"] = tuple(body.items())
    if "bind_sources" in raw:
        srcs = _str_set(where, "bind_sources", raw["bind_sources"])
        if not all(s.startswith("/") for s in srcs):
            raise _error(where, '"bind_sources" must list absolute host paths')
        fields["bind_sources"] = tuple(sorted(posixpath.normpath(s) for s in srcs))
    if "uid" in raw:
        fields["uids"] = _int_set(where, "uid", raw["uid"])
    if "unless_uid" in raw:
        fields["unless_uids"] = _int_set(where, "unless_uid", raw["unless_uid"])
    if "user" in raw:
        fields["users"] = _str_set(where, "user", raw["user"])
    if "unless_user" in raw:
        fields["unless_users"] = _str_set(where, "unless_user", raw["unless_user"])
    if "reason" in raw:
        if not isinstance(raw["reason"], str):
            raise _error(where, '"reason" must be a string')
        fields["reason"] = raw["reason"]
    return Rule(**fields)


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    default: str = "allow"

    def decide(self, req: AuthzRequest) -> AuthzResult:
        ctx = _RequestView(req)
        for rule in self.rules:
            if rule.applies(req, ctx):
                if rule.action == "allow":
                    return AuthzResult.allowed()
                return AuthzResult.denied(rule.describe(req, ctx))
        if self.default == "allow":
            return AuthzResult.allowed()
        return AuthzResult.denied(f"no rule allows {req.method.upper()} {ctx.path} (default: deny)")


def parse_policy(doc: Any, source: str = "policy") -> Policy:
    if not isinstance(doc, dict):
        raise _error(source, "the policy must be a JSON object with a \"rules\" list")
    unknown = sorted(set(doc) - {"default", "rules"})
    if unknown:
        raise _error(source, f'unknown key "{unknown[0]}"; valid keys: default, rules')
    default = doc.get("default", "allow")
    if default not in ("allow", "deny"):
        raise _error(source, f'"default" must be "allow" or "deny", got {json.dumps(default)}')
    rules = doc.get("rules", [])
    if not isinstance(rules, list):
        raise _error(source, '"rules" must be a list')
    return Policy(tuple(parse_rule(i, r, source) for i, r in enumerate(rules, 1)), default)


def load_policy(path: str) -> Policy:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise _error(f'option file="{path}"', f"cannot read the policy file: {exc.strerror}") from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _error(path, f"invalid JSON: {exc}") from None
    return parse_policy(doc, path)


# -- the authorizer -------------------------------------------------------------------------------


class PolicyAuthorizer:
    """A ``pyd.drivers.authz.Authorizer`` applying a ``Policy`` (immutable: thread-safe)."""

    name = NAME

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def authorize_request(self, req: AuthzRequest) -> AuthzResult:
        return self.policy.decide(req)

    def authorize_response(self, req: AuthzRequest, resp: AuthzResponse) -> AuthzResult:
        # Rules judge requests only: a request that was allowed may see its answer.
        return AuthzResult.allowed()


def parse_options(raw: Mapping[str, str]) -> str:
    """``authorization-opts.policy``: ``{"file": "/path/to/policy.json"}`` (required)."""
    opts = check_options(raw, {"file": str}, flag="authorization-opts", driver=NAME, kind="authorization")
    if not opts.get("file"):
        raise InvalidOption(
            f'authorization plugin "{NAME}" needs the option "file": set authorization-opts '
            f'{{"{NAME}": {{"file": "/etc/pyd/authz-policy.json"}}}} in daemon.json'
        )
    return str(opts["file"])


@hookimpl
def pyd_authz_init(name: str, home: Path, options: Mapping[str, str]) -> PolicyAuthorizer | None:
    if name != NAME:
        return None
    return PolicyAuthorizer(load_policy(parse_options(options)))
