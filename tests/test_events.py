"""The event bus: Docker's filters (both encodings reach it as lists), since/until, history."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from pyd.engine.events import EventBus, EventFilter, parse_timestamp
from pyd.errors import InvalidParameter
from pyd.types import Event

CID = "77c780ad05e7" + "0" * 52


def ev(type: str = "container", action: str = "create", actor: str = CID, t: int = 0, **attrs: str) -> Event:
    return Event(type, action, actor, dict(attrs), time_nano=t)


@pytest.mark.parametrize(
    "filters, event, expected",
    [
        ({"type": ["container"]}, ev(), True),
        ({"type": ["image"]}, ev(), False),
        ({"event": ["create", "start"]}, ev(action="start"), True),
        ({"event": ["die"]}, ev(action="start"), False),
        ({"event": ["exec_start"]}, ev(action="exec_start: sh -c true"), True),
        ({"event": ["start"]}, ev(action="exec_start: sh"), False),
        ({"container": ["77c780"]}, ev(), True),  # ID prefix
        ({"container": ["web"]}, ev(name="web"), True),
        ({"container": ["db"]}, ev(name="web"), False),
        ({"container": ["web"]}, ev(type="network", actor="n1", action="connect", container=CID), False),
        ({"image": ["busybox"]}, ev(image="busybox:local"), True),  # tag stripped
        ({"image": ["busybox:local"]}, ev(image="busybox:local"), True),
        ({"image": ["alpine"]}, ev(image="busybox:local"), False),
        ({"image": ["busybox"]}, ev(type="image", action="tag", actor="sha256:ab", name="busybox:v1"), True),
        ({"label": ["trace=ev"]}, ev(trace="ev", name="x"), True),
        ({"label": ["trace"]}, ev(trace="other"), True),
        ({"label": ["trace=ev", "other"]}, ev(trace="ev"), False),  # every label must match
        ({"network": ["appnet"]}, ev(type="network", action="create", actor="f0c8", name="appnet"), True),
        ({"volume": ["data"]}, ev(type="volume", action="mount", actor="data"), True),
        ({"type": ["container"], "event": ["die"]}, ev(action="start"), False),
        ({"daemon": ["d1"]}, ev(type="daemon", action="reload", actor="d1"), True),
    ],
)
def test_docker_filters(filters: dict, event: Event, expected: bool) -> None:
    assert EventFilter(filters).match(event) is expected


def test_unknown_filter_is_a_400() -> None:
    with pytest.raises(InvalidParameter, match="invalid filter 'colour'"):
        EventFilter({"colour": ["red"]})


def test_parse_timestamp() -> None:
    assert parse_timestamp("1795850059") == 1795850059 * 10**9
    assert parse_timestamp("1795850059.5") == 1795850059 * 10**9 + 500_000_000
    assert parse_timestamp("2026-11-28T06:59:48Z") == 1795849188 * 10**9
    assert parse_timestamp("10m", now=1000.0) == int(400.0 * 10**9)
    with pytest.raises(InvalidParameter, match="until"):
        parse_timestamp("yesterday", name="until")


def test_publish_stamps_time_and_calls_hook() -> None:
    calls: list[Event] = []

    class Reg:
        def broadcast(self, hook: str, **kw: object) -> None:
            assert hook == "pyd_event"
            calls.append(kw["event"])  # type: ignore[arg-type]

    bus = EventBus(Reg())  # type: ignore[arg-type]
    before = time.time_ns()
    e = bus.publish(ev())
    assert before <= e.time_nano <= time.time_ns()
    assert calls == [e]


def test_history_is_bounded_and_since_filters() -> None:
    bus = EventBus(history=3)
    for i in range(5):
        bus.publish(ev(action=f"a{i}", t=(i + 1) * 10**9))
    assert [e.action for e in bus.since(0)] == ["a2", "a3", "a4"]
    assert [e.action for e in bus.since(4 * 10**9, 4 * 10**9)] == ["a3"]
    assert [e.action for e in bus.since(0, filters={"event": ["a4"]})] == ["a4"]


def collect(sub, n: int | None = None, timeout: float = 5.0) -> list[Event]:
    async def run() -> list[Event]:
        out: list[Event] = []
        async def drain() -> None:
            async for e in sub:
                out.append(e)
                if n is not None and len(out) == n:
                    return
        await asyncio.wait_for(drain(), timeout)
        return out
    return run


def test_replay_with_until_in_the_past_ends_the_stream() -> None:
    async def main() -> list[str]:
        bus = EventBus()
        bus.attach_loop(asyncio.get_running_loop())
        now = time.time_ns()
        bus.publish(ev(action="old", t=now - 5 * 10**9, trace="ev"))
        bus.publish(ev(action="in", t=now - 3 * 10**9, trace="ev"))
        bus.publish(ev(action="other-label", t=now - 3 * 10**9, trace="no"))
        bus.publish(ev(action="late", t=now - 1 * 10**9, trace="ev"))
        sub = bus.subscribe({"label": ["trace=ev"]}, since_nano=now - 4 * 10**9, until_nano=now - 2 * 10**9)
        return [e.action for e in await collect(sub)()]

    assert asyncio.run(main()) == ["in"]


def test_live_events_from_other_threads_and_no_duplicates_with_replay() -> None:
    async def main() -> list[str]:
        bus = EventBus()
        bus.attach_loop(asyncio.get_running_loop())
        bus.publish(ev(action="before"))
        sub = bus.subscribe(since_nano=1)
        t = threading.Thread(target=lambda: [bus.publish(ev(action=f"t{i}")) for i in range(3)])
        t.start()
        t.join()
        return [e.action for e in await collect(sub, 4)()]

    assert asyncio.run(main()) == ["before", "t0", "t1", "t2"]


def test_until_in_the_future_ends_on_time_and_close_ends_streams() -> None:
    async def main() -> tuple[float, list[str]]:
        bus = EventBus()
        bus.attach_loop(asyncio.get_running_loop())
        start = time.monotonic()
        sub = bus.subscribe(until_nano=time.time_ns() + 300_000_000)
        bus.publish(ev(action="live"))
        got = await collect(sub)()
        elapsed = time.monotonic() - start
        sub2 = bus.subscribe()
        asyncio.get_running_loop().call_later(0.05, bus.close)
        assert await collect(sub2)() == []
        assert bus.listeners == 0
        return elapsed, [e.action for e in got]

    elapsed, actions = asyncio.run(main())
    assert actions == ["live"] and 0.25 <= elapsed < 3


def test_slow_subscriber_is_dropped_not_silently_lossy() -> None:
    async def main() -> tuple[int, bool]:
        bus = EventBus(queue_size=4)
        bus.attach_loop(asyncio.get_running_loop())
        sub = bus.subscribe()
        for i in range(10):
            bus.publish(ev(action=f"e{i}"))
        got = await collect(sub)()
        return len(got), sub.dropped

    n, dropped = asyncio.run(main())
    assert dropped and n == 4  # what was queued, then the end
