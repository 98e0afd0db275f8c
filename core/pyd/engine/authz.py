"""The authorization chain: the authorizers of ``authorization-plugins``, in that order.

moby's ``pkg/authorization`` with its sharp edges removed:

* fail closed: a plugin that raises, returns something that is not an ``AuthzResult``, or does
  not answer within its deadline denies the request;
* a plugin always sees the whole body it is shown: a JSON body larger than ``max_body`` is
  refused before any plugin runs (never passed on truncated); stream bodies (uploads) are
  shown as ``None``;
* each call runs in a worker thread with ``asyncio.wait_for``, so a slow plugin holds up only
  the request it is judging, never the event loop.

The deny message is moby's: ``authorization denied by plugin NAME: REASON`` (403).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Sequence

from pyd.drivers.authz import AuthzRequest, AuthzResponse, AuthzResult, Authorizer
from pyd.errors import Forbidden

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
MAX_BODY = 1024 * 1024  # 1 MiB, as moby's maxBodySize


class AuthzChain:
    """Calls each ``(name, authorizer)`` in order; the first deny wins."""

    def __init__(
        self,
        plugins: Sequence[tuple[str, Authorizer]] = (),
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_body: int = MAX_BODY,
    ) -> None:
        self.plugins = list(plugins)
        self.timeout = timeout
        self.max_body = max_body

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.plugins]

    def __bool__(self) -> bool:
        return bool(self.plugins)

    def __len__(self) -> int:
        return len(self.plugins)

    async def _ask(self, name: str, fn: Callable[..., Any], *args: Any) -> AuthzResult:
        try:
            result = await asyncio.wait_for(asyncio.to_thread(fn, *args), self.timeout)
        except asyncio.TimeoutError:
            log.error("authorization plugin timed out after %ss", self.timeout, extra={"plugin": f"authz:{name}"})
            return AuthzResult.denied(f"plugin did not answer within {self.timeout:g}s")
        except Exception as exc:
            log.exception("authorization plugin failed", extra={"plugin": f"authz:{name}"})
            return AuthzResult.denied(f"plugin error: {type(exc).__name__}: {exc}")
        if not isinstance(result, AuthzResult):
            log.error("authorization plugin returned %r, not an AuthzResult", result, extra={"plugin": f"authz:{name}"})
            return AuthzResult.denied("plugin returned an invalid answer")
        return result

    @staticmethod
    def _deny(name: str, result: AuthzResult) -> Forbidden:
        reason = result.msg or "request denied"
        return Forbidden(f"authorization denied by plugin {name}: {reason}")

    def body_too_large(self, size: int | None) -> Forbidden:
        amount = f" ({size} bytes)" if size is not None else ""
        return Forbidden(
            f"authorization denied: the request body{amount} is larger than the "
            f"{self.max_body} bytes that authorization plugins can be shown in full"
        )

    def check_body_size(self, size: int | None) -> None:
        """Refuse a body that plugins could not be shown in full (never pass it truncated)."""
        if self.plugins and size is not None and size > self.max_body:
            raise self.body_too_large(size)

    async def check_request(self, req: AuthzRequest) -> None:
        """Raise ``Forbidden`` if any plugin denies ``req``."""
        if req.body is not None:
            self.check_body_size(len(req.body))
        for name, plugin in self.plugins:
            result = await self._ask(name, plugin.authorize_request, req)
            if not result.allow:
                log.info("request denied: %s %s: %s", req.method, req.uri, result.msg, extra={"plugin": f"authz:{name}"})
                raise self._deny(name, result)

    async def check_response(self, req: AuthzRequest, resp: AuthzResponse) -> None:
        """Raise ``Forbidden`` if any plugin denies the response to ``req``."""
        for name, plugin in self.plugins:
            result = await self._ask(name, plugin.authorize_response, req, resp)
            if not result.allow:
                log.info("response denied: %s %s: %s", req.method, req.uri, result.msg, extra={"plugin": f"authz:{name}"})
                raise self._deny(name, result)
