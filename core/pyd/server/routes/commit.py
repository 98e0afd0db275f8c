"""``POST /commit``: HTTP <-> ``pyd.engine.container_commit``.

Wire facts from the traces: the docker CLI sends everything in the query (``container``,
``repo``, ``tag``, ``comment``, ``author``, one ``changes`` per ``-c``, ``pause``) with an
empty body; docker-py sends a JSON body (the container ``Config`` to start from, ``{}`` when
none was given) and ``pause=True``. ``pause`` defaults to true when absent, as dockerd does
for API >= 1.13. The reply is ``201`` ``{"Id":"sha256:..."}``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pyd.engine.container_commit import CommitRequest, commit_container
from pyd.errors import InvalidParameter, Unavailable
from pyd.server.app import ENGINE
from pyd.server.http import json_response, query_bool, read_json


def _containers(request: web.Request) -> Any:
    svc = getattr(request.app[ENGINE], "containers", None)
    if svc is None:
        raise Unavailable("the container service is not available: nothing can be committed")
    return svc


async def commit(request: web.Request) -> web.Response:
    q = request.query
    body = await read_json(request)
    if body is not None and not isinstance(body, dict):
        raise InvalidParameter("invalid commit body: expected a container Config object")
    req = CommitRequest(
        container=q.get("container", ""),
        repo=q.get("repo", ""),
        tag=q.get("tag", ""),
        author=q.get("author", ""),
        comment=q.get("comment", ""),
        pause=query_bool(request, "pause", True) if q.get("pause", "") != "" else True,
        changes=tuple(q.getall("changes", [])),
        config=body,
    )
    image_id = await commit_container(_containers(request), req)
    return json_response({"Id": image_id}, status=201)


def setup(app: web.Application) -> None:
    app.router.add_post("/commit", commit)
