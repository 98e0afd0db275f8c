"""The API server in-process (aiohttp's test server on a TCP loopback port): version
prefixes, error mapping, common headers, the authorization chain in the middleware."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pyd.config import load_config
from pyd.drivers.authz import AuthzRequest, AuthzResponse, AuthzResult
from pyd.engine import Engine
from pyd.engine.authz import AuthzChain
from pyd.errors import Conflict, NotFound, NotModified
from pyd.registry import PluginRegistry
from pyd.server.app import ENGINE, make_app
from pyd.server.http import json_response, open_stream, read_json, write_json
from pyd.types import Event


def make_engine(tmp_path: Path, authz: AuthzChain | None = None) -> Engine:
    cfg = load_config({"data-root": str(tmp_path / "data"), "exec-root": str(tmp_path / "exec")}, None)
    return Engine(cfg, PluginRegistry(), authz=authz)


async def boom(request: web.Request) -> web.Response:
    raise RuntimeError("secret internal detail")


async def conflict(request: web.Request) -> web.Response:
    raise Conflict("You cannot remove a running container abc")


async def missing(request: web.Request) -> web.Response:
    raise NotFound("No such container: nosuch")


async def already(request: web.Request) -> web.Response:
    raise NotModified()


async def create(request: web.Request) -> web.Response:
    body = await read_json(request, required=True)
    return json_response({"Got": body}, status=201)


async def stream(request: web.Request) -> web.StreamResponse:
    resp = await open_stream(request)
    await write_json(resp, {"status": "one"}, progress=True)
    await resp.write_eof()
    return resp


def run(tmp_path: Path, scenario: Callable[[TestClient, Engine], Awaitable[None]], authz: AuthzChain | None = None) -> None:
    async def main() -> None:
        engine = make_engine(tmp_path, authz)
        app = make_app(engine, route_modules=("pyd.server.routes.system",))  # plus the test routes below
        for path, handler in [("/boom", boom), ("/conflict", conflict), ("/missing", missing), ("/already", already), ("/stream", stream)]:
            app.router.add_get(path, handler)
        app.router.add_post("/containers/create", create)
        async with TestClient(TestServer(app)) as client:
            engine.events.attach_loop(asyncio.get_running_loop())
            await scenario(client, engine)
        await engine.close()

    asyncio.run(main())


COMMON = {"Api-Version": "1.41", "Docker-Experimental": "false", "Ostype": "linux"}


def test_ping_version_and_common_headers(tmp_path: Path) -> None:
    async def scenario(c: TestClient, engine: Engine) -> None:
        for method, path, body in [("GET", "/_ping", b"OK"), ("HEAD", "/_ping", b""), ("GET", "/v1.41/_ping", b"OK")]:
            r = await c.request(method, path)
            assert r.status == 200 and await r.read() == body
            assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert r.headers["Cache-Control"] == "no-cache, no-store, must-revalidate"
            for k, v in COMMON.items():
                assert r.headers[k] == v
            assert r.headers["Server"].startswith("pyd/")
        r = await c.get("/version")  # docker-py's first, unversioned request
        doc = await r.json()
        assert doc["ApiVersion"] == "1.41" and doc["MinAPIVersion"] == "1.12"
        assert doc["Components"][0]["Details"]["Experimental"] == "false"
        assert (await r.read()).endswith(b"}\n")

    run(tmp_path, scenario)


def test_version_prefix_rules(tmp_path: Path) -> None:
    async def scenario(c: TestClient, engine: Engine) -> None:
        r = await c.get("/v1.99/version")
        assert r.status == 400 and r.headers["Content-Type"] == "application/json"
        assert await r.json() == {"message": "client version 1.99 is too new. Maximum supported API version is 1.41"}
        r = await c.get("/v1.11/version")
        assert r.status == 400 and r.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert (await r.text()).startswith("client version 1.11 is too old. Minimum supported API version is 1.12")
        for v in ("1.12", "1.24", "1.41"):
            assert (await c.get(f"/v{v}/version")).status == 200

    run(tmp_path, scenario)


def test_errors_map_to_docker_shapes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(c: TestClient, engine: Engine) -> None:
        for path in ("/nonexistent", "/v1.41/nonexistent", "/v1.41/containers/create"):  # last: GET on a POST route
            r = await c.get(path)
            assert r.status == 404 and await r.read() == b'{"message":"page not found"}\n'
        r = await c.get("/v1.41/conflict")
        assert r.status == 409 and await r.json() == {"message": "You cannot remove a running container abc"}
        r = await c.get("/missing")
        assert r.status == 404 and await r.json() == {"message": "No such container: nosuch"}
        r = await c.get("/already")
        assert r.status == 304 and await r.read() == b"" and "Content-Type" not in r.headers
        r = await c.get("/boom")
        text = await r.text()
        assert r.status == 500 and "Traceback" not in text
        assert json.loads(text)["message"] == "internal error: RuntimeError: secret internal detail"
        for k, v in COMMON.items():
            assert r.headers[k] == v

    run(tmp_path, scenario)
    assert any("Traceback" in r.getMessage() or r.exc_info for r in caplog.records)


def test_malformed_bodies_are_4xx(tmp_path: Path) -> None:
    async def scenario(c: TestClient, engine: Engine) -> None:
        r = await c.post("/containers/create", data=b'{"Image": ', headers={"Content-Type": "application/json"})
        assert r.status == 400 and "invalid JSON" in (await r.json())["message"]
        r = await c.post("/containers/create", data=b"{}", headers={"Content-Type": "text/plain"})
        assert r.status == 400
        assert await r.json() == {"message": "Content-Type specified (text/plain) must be 'application/json'"}
        r = await c.post("/v1.41/containers/create", data=b'{"Image":"x"}', skip_auto_headers=["Content-Type"])  # accepted
        assert r.status == 201 and await r.json() == {"Got": {"Image": "x"}}
        r = await c.get("/events?since=yesterday")
        assert r.status == 400 and "since" in (await r.json())["message"]
        r = await c.get("/events?filters=notjson")
        assert r.status == 400

    run(tmp_path, scenario)


def test_info_shape(tmp_path: Path) -> None:
    async def scenario(c: TestClient, engine: Engine) -> None:
        info = await (await c.get("/v1.41/info")).json()
        for key in ("ID", "Containers", "Images", "Driver", "DriverStatus", "Plugins", "LoggingDriver", "CgroupDriver",
                    "CgroupVersion", "KernelVersion", "OperatingSystem", "OSType", "Architecture", "NCPU", "MemTotal",
                    "DockerRootDir", "Name", "Labels", "ServerVersion", "SecurityOptions", "LiveRestoreEnabled"):
            assert key in info, key
        assert set(info["Plugins"]) >= {"Volume", "Network", "Log", "Authorization"}
        assert "none" in info["Plugins"]["Log"] and info["Plugins"]["Authorization"] is None
        assert info["CgroupVersion"] in ("1", "2") and info["OSType"] == "linux"
        assert info["DockerRootDir"] == str(tmp_path / "data") and info["ID"] == engine.id

    run(tmp_path, scenario)


def test_events_stream_flushes_headers_then_events(tmp_path: Path) -> None:
    async def scenario(c: TestClient, engine: Engine) -> None:
        r = await c.get("/v1.41/events", params={"filters": json.dumps({"type": {"container": True}})})
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"  # before any event
        engine.events.publish(Event("image", "pull", "busybox"))
        engine.events.publish(Event("container", "start", "c1", {"name": "web", "image": "busybox"}))
        line = await asyncio.wait_for(r.content.readline(), 5)
        doc = json.loads(line)
        assert line.endswith(b"}\n") and doc["Action"] == "start" and doc["status"] == "start" and doc["from"] == "busybox"
        assert doc["Actor"] == {"ID": "c1", "Attributes": {"name": "web", "image": "busybox"}}
        r.close()
        now = int(time.time())
        r = await c.get(f"/events?since={now - 60}&until={now + 1}", params={"filters": json.dumps({"type": ["image"]})})
        body = await asyncio.wait_for(r.read(), 5)  # until bounds the stream
        assert [json.loads(l)["Action"] for l in body.splitlines()] == ["pull"]

    run(tmp_path, scenario)


class Recorder:
    """A fake authorizer: records what it was shown; denies by rule; may hang or raise."""

    def __init__(self, name: str, deny_path: str = "", deny_response_path: str = "", hang: float = 0.0, explode: bool = False) -> None:
        self.name = name
        self.deny_path, self.deny_response_path, self.hang, self.explode = deny_path, deny_response_path, hang, explode
        self.requests: list[AuthzRequest] = []
        self.responses: list[AuthzResponse] = []

    def authorize_request(self, req: AuthzRequest) -> AuthzResult:
        self.requests.append(req)
        if self.hang and "slow" in req.uri:
            time.sleep(self.hang)
        if self.explode:
            raise ValueError("plugin bug")
        if self.deny_path and self.deny_path in req.uri:
            return AuthzResult.denied("not you")
        return AuthzResult.allowed()

    def authorize_response(self, req: AuthzRequest, resp: AuthzResponse) -> AuthzResult:
        self.responses.append(resp)
        if self.deny_response_path and self.deny_response_path in req.uri:
            return AuthzResult.denied("cannot show that")
        return AuthzResult.allowed()


def test_authz_chain_in_the_middleware(tmp_path: Path) -> None:
    first = Recorder("first", deny_path="/conflict")
    second = Recorder("second", deny_path="/version", deny_response_path="/stream")
    chain = AuthzChain([("first", first), ("second", second)])

    async def scenario(c: TestClient, engine: Engine) -> None:
        r = await c.get("/v1.41/version")
        assert r.status == 403 and await r.json() == {"message": "authorization denied by plugin second: not you"}
        r = await c.get("/conflict")  # first deny wins: second never sees it
        assert (await r.json())["message"] == "authorization denied by plugin first: not you"
        assert not any("/conflict" in q.uri for q in second.requests)
        r = await c.post("/v1.41/containers/create?name=x", json={"Image": "busybox"})
        assert r.status == 201
        shown = first.requests[-1]
        assert shown.method == "POST" and shown.uri == "/v1.41/containers/create?name=x"
        assert json.loads(shown.body) == {"Image": "busybox"}
        assert first.responses[-1].status == 201 and json.loads(first.responses[-1].body)["Got"] == {"Image": "busybox"}
        r = await c.post("/containers/create", data=b"x" * (1024 * 1024 + 1), headers={"Content-Type": "application/json"})
        assert r.status == 403 and "larger than" in (await r.json())["message"]
        r = await c.post("/containers/create", data=b"\0" * 100, headers={"Content-Type": "application/x-tar"})
        assert first.requests[-1].body is None  # a stream is not shown
        r = await c.get("/stream")  # streamed response: response hook sees body None, may deny
        assert r.status == 403 and (await r.json())["message"] == "authorization denied by plugin second: cannot show that"
        assert second.responses[-1].body is None

    run(tmp_path, scenario, chain)


def test_authz_fails_closed_and_a_slow_plugin_blocks_only_its_request(tmp_path: Path) -> None:
    chain = AuthzChain([("slow", Recorder("slow", hang=1.5))], timeout=0.5)

    async def scenario(c: TestClient, engine: Engine) -> None:
        slow = asyncio.ensure_future(c.get("/_ping?slow=1"))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        r = await c.get("/_ping")
        assert r.status == 200 and time.monotonic() - t0 < 0.4  # not held up by the slow call
        r = await slow
        assert r.status == 403
        assert (await r.json())["message"] == "authorization denied by plugin slow: plugin did not answer within 0.5s"

    run(tmp_path, scenario, chain)
    chain = AuthzChain([("buggy", Recorder("buggy", explode=True))])

    async def scenario2(c: TestClient, engine: Engine) -> None:
        r = await c.get("/_ping")
        assert r.status == 403
        assert (await r.json())["message"] == "authorization denied by plugin buggy: plugin error: ValueError: plugin bug"

    run(tmp_path, scenario2, chain)
