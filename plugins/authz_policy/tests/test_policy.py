from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pyd.drivers.authz import AuthzResult
from pyd.errors import InvalidOption
from pyd.registry import Kind, PluginRegistry
from pyd.testing.authz import AuthzSuite, authz_request

POLICY: dict[str, Any] = {
    "rules": [
        {"action": "allow", "uid": 0, "method": "DELETE"},
        {
            "action": "deny",
            "method": "POST",
            "path": "^/containers/create$",
            "body": {"HostConfig.Privileged": True},
            "reason": "privileged containers are not allowed",
        },
        {"action": "deny", "bind_sources": ["/etc"], "reason": "bind mounts of /etc are not allowed"},
        {"action": "deny", "method": "DELETE", "path": "^/containers/", "unless_uid": [0], "reason": "only root may remove containers"},
    ]
}


def write_policy(tmp_path: Path, policy: Any = POLICY) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    return path


def create(body: dict[str, Any], **kw: Any):
    return authz_request("POST", "/v1.41/containers/create?name=x", body, **kw)


class TestPolicyConformance(AuthzSuite):
    plugin_name = "policy"
    allowed = [
        authz_request("GET", "/v1.41/containers/json"),
        create({"Image": "busybox", "HostConfig": {"Privileged": False, "Binds": ["/srv/data:/data"]}}),
        authz_request("DELETE", "/v1.41/containers/web", uid=0, gid=0),
        authz_request("POST", "/v1.41/images/load", ...),  # a stream no rule needs to look into
    ]
    denied = [
        create({"Image": "busybox", "HostConfig": {"Privileged": True}}),
        create({"Image": "busybox", "HostConfig": {"Binds": ["/etc:/host-etc:ro"]}}),
        authz_request("DELETE", "/v1.41/containers/web", uid=1000),
    ]
    bad_input = [
        create(b'{"Image": "busybox", "HostConfig": {"Privileged": tr'),  # not JSON
        authz_request("DELETE", "/containers/web", uid=None, gid=None, user="client-cn"),  # no uid (TLS)
    ]
    bad_options = [{"no-such-key": "x"}, {"file": "/nonexistent/policy.json"}]

    def make_options(self, tmp_path: Path) -> dict[str, str]:
        return {"file": str(write_policy(tmp_path))}


@pytest.fixture
def make(tmp_path: Path, pyd_home: Path):
    def build(policy: Any) -> Any:
        return PluginRegistry().init_driver(
            Kind.AUTHZ, "policy", home=pyd_home, options={"file": str(write_policy(tmp_path, policy))}
        )

    return build


def decide(authz: Any, req: Any) -> AuthzResult:
    result = authz.authorize_request(req)
    assert isinstance(result, AuthzResult)
    return result


def test_first_matching_rule_decides_and_reason_is_the_message(make: Any) -> None:
    authz = make(POLICY)
    result = decide(authz, create({"HostConfig": {"Privileged": True}}))
    assert (result.allow, result.msg) == (False, "privileged containers are not allowed")
    # root's DELETE is allowed by rule 1 before rule 4 could deny it
    assert decide(authz, authz_request("DELETE", "/containers/x", uid=0)).allow


def test_body_keys_match_case_insensitively_as_dockerd_reads_them(make: Any) -> None:
    authz = make(POLICY)
    assert not decide(authz, create({"hostconfig": {"privileged": True}})).allow
    assert not decide(authz, create({"HostConfig": {"privileged": False, "Privileged": True}})).allow


def test_path_ignores_version_prefix_query_and_percent_escapes(make: Any) -> None:
    authz = make(POLICY)
    body = {"HostConfig": {"Privileged": True}}
    for uri in ("/containers/create", "/v1.24/containers/create?name=a", "/v1.41/containers/%63reate"):
        assert not decide(authz, authz_request("POST", uri, body)).allow, uri


@pytest.mark.parametrize(
    "body",
    [
        {"HostConfig": {"Binds": ["/etc/ssh:/x"]}},  # inside a protected path
        {"HostConfig": {"Binds": ["/:/host"]}},  # a parent of one
        {"HostConfig": {"Binds": ["/etc/../etc:/x:ro"]}},  # not normalised
        {"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/x"}]}},
        {"HostConfig": {"Mounts": [{"Type": "volume", "Source": "v", "Target": "/x", "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": {"type": "none", "o": "bind", "device": "/etc"}}}}]}},
    ],
)
def test_bind_sources_catch_every_way_to_mount_a_host_path(make: Any, body: dict[str, Any]) -> None:
    assert not decide(make(POLICY), create(body)).allow


def test_volume_create_backed_by_a_protected_host_dir_is_denied(make: Any) -> None:
    req = authz_request("POST", "/v1.41/volumes/create", {"Name": "sneaky", "Driver": "local", "DriverOpts": {"type": "none", "o": "bind", "device": "/etc"}})
    assert not decide(make(POLICY), req).allow


def test_named_volumes_and_other_host_paths_are_allowed(make: Any) -> None:
    authz = make(POLICY)
    assert decide(authz, create({"HostConfig": {"Binds": ["etc:/etc", "/etcetera:/x"]}})).allow


def test_symlink_to_a_protected_dir_is_denied(make: Any, tmp_path: Path) -> None:
    link = tmp_path / "innocent"
    os.symlink("/etc", link)
    assert not decide(make(POLICY), create({"HostConfig": {"Binds": [f"{link}:/x"]}})).allow


def test_unknown_conditions_never_make_an_allow_rule_apply(make: Any) -> None:
    authz = make({"default": "deny", "rules": [{"action": "allow", "uid": [0]}, {"action": "allow", "body": {"Image": "ok"}}]})
    assert decide(authz, authz_request("GET", "/info", uid=0)).allow
    assert not decide(authz, authz_request("GET", "/info", uid=None, user="cn")).allow
    assert decide(authz, create({"Image": "ok"}, uid=5)).allow
    assert not decide(authz, authz_request("POST", "/containers/create", b"not json", uid=5)).allow


def test_default_deny_names_the_request(make: Any) -> None:
    result = decide(make({"default": "deny", "rules": []}), authz_request("GET", "/v1.41/info"))
    assert not result.allow and result.msg == "no rule allows GET /info (default: deny)"


def test_user_conditions_match_tls_common_names(make: Any) -> None:
    authz = make({"rules": [{"action": "deny", "unless_user": ["admin"], "method": "POST"}]})
    assert decide(authz, authz_request("POST", "/containers/x/stop", uid=None, user="admin")).allow
    assert not decide(authz, authz_request("POST", "/containers/x/stop", uid=None, user="guest")).allow


def test_default_reason_names_the_rule(make: Any) -> None:
    result = decide(make({"rules": [{"action": "deny", "method": "post"}]}), authz_request("POST", "/v1.41/build?t=x", ...))
    assert result.msg == "rule 1 denies POST /build"


@pytest.mark.parametrize(
    "policy, words",
    [
        ({"rules": [{"action": "deny", "pathh": "^/x"}]}, ["rule 1", '"pathh"', "valid keys"]),
        ({"rules": [{"action": "maybe"}]}, ["rule 1", '"action"']),
        ({"rules": [{"action": "deny"}, {"action": "deny", "path": "(["}]}, ["rule 2", '"path"', "regular expression"]),
        ({"rules": [{"action": "deny", "uid": "root"}]}, ["rule 1", '"uid"', "integer"]),
        ({"rules": [{"action": "deny", "bind_sources": ["etc"]}]}, ["rule 1", "absolute"]),
        ({"rules": {}}, ['"rules"']),
        ({"default": "perhaps"}, ['"default"']),
        ({"rulez": []}, ['"rulez"']),
        ([], ["JSON object"]),
    ],
)
def test_bad_policy_files_fail_at_init_naming_rule_and_key(make: Any, policy: Any, words: list[str]) -> None:
    with pytest.raises(InvalidOption) as err:
        make(policy)
    for word in words:
        assert word in str(err.value), str(err.value)
    assert "policy.json" in str(err.value)


def test_missing_file_option_says_how_to_set_it(pyd_home: Path) -> None:
    with pytest.raises(InvalidOption) as err:
        PluginRegistry().init_driver(Kind.AUTHZ, "policy", home=pyd_home, options={})
    assert '"file"' in str(err.value) and "authorization-opts" in str(err.value)


def test_invalid_json_file_is_an_error(tmp_path: Path, pyd_home: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text("{rules: []}")
    with pytest.raises(InvalidOption) as err:
        PluginRegistry().init_driver(Kind.AUTHZ, "policy", home=pyd_home, options={"file": str(path)})
    assert "invalid JSON" in str(err.value) and str(path) in str(err.value)
