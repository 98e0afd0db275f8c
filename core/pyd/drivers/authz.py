"""Authorization plugin protocol, modelled on moby's ``pkg/authorization``.

The daemon calls every authorizer listed in ``authorization-plugins``, in that order, for each
API request before it is served (``authorize_request``) and again with the response before it is
sent (``authorize_response``). The first deny wins; an exception or a deadline overrun counts as
a deny (fail closed). Calls run in worker threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol


@dataclass
class AuthzRequest:
    user: str  # "uid:gid" from SO_PEERCRED on the unix socket, or the TLS client CN
    uid: int | None
    gid: int | None
    method: str
    uri: str  # path and query as sent, e.g. "/v1.41/containers/create?name=x"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None  # None when the body is a stream (uploads); JSON bodies in full


@dataclass
class AuthzResponse:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None  # None for streamed responses


@dataclass
class AuthzResult:
    allow: bool
    msg: str = ""

    @classmethod
    def allowed(cls) -> "AuthzResult":
        return cls(True)

    @classmethod
    def denied(cls, msg: str) -> "AuthzResult":
        return cls(False, msg)


class Authorizer(Protocol):
    name: str

    def authorize_request(self, req: AuthzRequest) -> AuthzResult:
        ...

    def authorize_response(self, req: AuthzRequest, resp: AuthzResponse) -> AuthzResult:
        ...
