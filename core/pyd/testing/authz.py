"""Conformance suite for authorization plugins (``pyd.drivers.authz.Authorizer``).

Subclass ``AuthzSuite`` in your plugin's tests::

    from pyd.testing.authz import AuthzSuite, authz_request

    class TestMyAuthz(AuthzSuite):
        plugin_name = "my-authz"                        # the entry-point name
        allowed = [authz_request("GET", "/v1.41/containers/json")]
        denied = [authz_request("DELETE", "/v1.41/containers/x", uid=1000)]
        bad_options = [{"no-such-key": "x"}]

        def make_options(self, tmp_path):               # optional: files your options name
            return {"file": str(write_policy(tmp_path))}

Every check loads the plugin as the daemon does (``PluginRegistry().init_driver(Kind.AUTHZ,
name, home=..., options=...)``), so it also proves the entry point.

What the suite expects of an authorizer (the contract of ``pyd.drivers.authz``):

* ``authorize_request``/``authorize_response`` return an ``AuthzResult``; a deny carries a
  reason (it becomes ``authorization denied by plugin NAME: REASON``).
* They are called from several worker threads at once and give the same answer each time.
* Input they cannot judge (a body that is not JSON, a stream body shown as ``None``, an
  unknown user) is never a reason to allow what they would otherwise deny: list such
  requests in ``bad_input``; each must be denied (raising also counts: the chain denies).
* Bad options fail at init with ``InvalidOption`` naming the key.
* The init hook returns ``None`` for a name that is not the plugin's.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import pytest

from pyd.drivers.authz import AuthzRequest, AuthzResponse, AuthzResult, Authorizer
from pyd.engine.authz import AuthzChain
from pyd.errors import Forbidden, InvalidOption, PydError
from pyd.registry import Kind, PluginRegistry, list_installed


def authz_request(
    method: str,
    uri: str,
    body: Any = None,
    *,
    uid: int | None = 1000,
    gid: int | None = 1000,
    user: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> AuthzRequest:
    """An ``AuthzRequest`` as the daemon builds it. ``body``: a dict/list (sent as JSON),
    bytes (as is), or None for "no body" (``b""``); pass ``body=...`` (Ellipsis) for a stream
    body that plugins cannot see (``None``)."""
    if body is None:
        raw: bytes | None = b""
    elif body is ...:
        raw = None
    elif isinstance(body, bytes):
        raw = body
    else:
        raw = json.dumps(body).encode()
    if user is None:
        user = f"{uid}:{gid}" if uid is not None else ""
    hdrs = dict(headers or {})
    if raw:
        hdrs.setdefault("Content-Type", "application/json")
    return AuthzRequest(user=user, uid=uid, gid=gid, method=method, uri=uri, headers=hdrs, body=raw)


class AuthzSuite:
    """Checks every authorization plugin must pass. Set the class attributes."""

    plugin_name: ClassVar[str] = ""
    options: ClassVar[Mapping[str, str]] = {}
    allowed: ClassVar[Sequence[AuthzRequest]] = ()
    denied: ClassVar[Sequence[AuthzRequest]] = ()
    bad_input: ClassVar[Sequence[AuthzRequest]] = ()
    bad_options: ClassVar[Sequence[Mapping[str, str]]] = ()

    # -- helpers ------------------------------------------------------------------------------

    def make_options(self, tmp_path: Path) -> Mapping[str, str]:
        """The options a working authorizer is built with (override to write files)."""
        return dict(self.options)

    def new_authorizer(self, home: Path, options: Mapping[str, str]) -> Authorizer:
        assert self.plugin_name, f"{type(self).__name__}.plugin_name is not set"
        return PluginRegistry().init_driver(Kind.AUTHZ, self.plugin_name, home=home, options=dict(options))

    @pytest.fixture
    def authorizer(self, pyd_home: Path, tmp_path: Path) -> Authorizer:
        return self.new_authorizer(pyd_home, self.make_options(tmp_path))

    # -- loading ------------------------------------------------------------------------------

    def test_listed_as_installed(self) -> None:
        names = [p.name for p in list_installed([Kind.AUTHZ])]
        assert names.count(self.plugin_name) == 1, names

    def test_entry_point_resolves(self, authorizer: Authorizer) -> None:
        assert authorizer.name == self.plugin_name
        assert callable(getattr(authorizer, "authorize_request", None))
        assert callable(getattr(authorizer, "authorize_response", None))

    def test_init_hook_ignores_other_names(self, pyd_registry: PluginRegistry, pyd_home: Path, tmp_path: Path) -> None:
        module = pyd_registry.load(Kind.AUTHZ, self.plugin_name).module
        others = [p for p in pyd_registry.pm.get_plugins() if p is not module]
        caller = pyd_registry.pm.subset_hook_caller("pyd_authz_init", remove_plugins=others)
        got = caller(name=f"not-{self.plugin_name}", home=pyd_home, options=dict(self.make_options(tmp_path)))
        assert got is None

    def test_bad_options_fail_at_init_naming_the_key(self, pyd_home: Path) -> None:
        assert self.bad_options, "set bad_options to at least one invalid option set"
        for raw in self.bad_options:
            with pytest.raises(InvalidOption) as err:
                self.new_authorizer(pyd_home, raw)
            assert any(key in str(err.value) for key in raw), f"{raw}: {err.value}"

    # -- decisions ------------------------------------------------------------------------------

    def test_allowed_requests_are_allowed(self, authorizer: Authorizer) -> None:
        assert self.allowed, "set allowed to at least one request the plugin allows"
        for req in self.allowed:
            result = authorizer.authorize_request(req)
            assert isinstance(result, AuthzResult), result
            assert result.allow, f"{req.method} {req.uri} denied: {result.msg}"

    def test_denied_requests_are_denied_with_a_reason(self, authorizer: Authorizer) -> None:
        assert self.denied, "set denied to at least one request the plugin denies"
        for req in self.denied:
            result = authorizer.authorize_request(req)
            assert isinstance(result, AuthzResult), result
            assert not result.allow, f"{req.method} {req.uri} was allowed"
            assert result.msg.strip(), f"{req.method} {req.uri}: a deny needs a reason"

    def test_bad_input_is_denied(self, authorizer: Authorizer) -> None:
        for req in self.bad_input:
            try:
                result = authorizer.authorize_request(req)
            except PydError:
                continue  # the chain turns an exception into a deny
            assert isinstance(result, AuthzResult) and not result.allow, f"{req.method} {req.uri} body={req.body!r} was allowed"

    def test_response_hook_answers(self, authorizer: Authorizer) -> None:
        req = (self.allowed or self.denied)[0]
        for resp in (AuthzResponse(200, {"Content-Type": "application/json"}, b"{}\n"), AuthzResponse(200, {}, None)):
            result = authorizer.authorize_response(req, resp)
            assert isinstance(result, AuthzResult), result

    def test_answers_are_stable_across_threads(self, authorizer: Authorizer) -> None:
        reqs = list(self.allowed) + list(self.denied)
        expected = [authorizer.authorize_request(r).allow for r in reqs]
        with ThreadPoolExecutor(8) as pool:
            for _ in range(5):
                got = list(pool.map(lambda r: authorizer.authorize_request(r).allow, reqs))
                assert got == expected

    def test_chain_denies_naming_the_plugin(self, authorizer: Authorizer) -> None:
        chain = AuthzChain([(self.plugin_name, authorizer)])
        for req in self.allowed:
            asyncio.run(chain.check_request(req))
        for req in self.denied:
            with pytest.raises(Forbidden) as err:
                asyncio.run(chain.check_request(req))
            prefix = f"authorization denied by plugin {self.plugin_name}: "
            assert str(err.value).startswith(prefix) and len(str(err.value)) > len(prefix), str(err.value)
            assert err.value.status == 403
