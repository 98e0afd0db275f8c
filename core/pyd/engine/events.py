"""The event bus behind ``GET /events``: publish, history, subscriptions, Docker's filters.

Services publish ``pyd.types.Event`` from any thread; the bus stamps the time, keeps a
bounded history (for ``since``), calls the ``pyd_event`` hook in the event-loop thread, and
hands the event to every subscriber's queue. A subscriber that falls too far behind is
dropped (its stream ends) rather than silently missing events.

Filters follow moby's ``daemon/events/filter.go``: every filter key given must match; within
a key any value matches, except ``label``, where every value must match.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, AsyncIterator, Iterable, Mapping

from pyd.drivers.options import parse_duration
from pyd.errors import InvalidParameter
from pyd.types import Event

if TYPE_CHECKING:
    from pyd.registry import PluginRegistry

log = logging.getLogger(__name__)

FILTER_KEYS = frozenset(
    {"type", "event", "container", "image", "label", "network", "volume", "plugin", "daemon", "scope", "node", "config", "secret", "service"}
)
# Actions that carry a suffix ("exec_start: sh -c ...", "health_status: healthy"); a filter on
# the bare word matches them all.
_PREFIX_ACTIONS = frozenset({"exec_create", "exec_start", "exec_die", "health_status"})
_CLOSED = object()


class EventFilter:
    """Docker's event filters: ``{"type": {"container"}, "label": {"a=b"}, ...}``."""

    def __init__(self, filters: Mapping[str, Iterable[str]] | None = None) -> None:
        self.filters = {k: set(v) for k, v in (filters or {}).items() if v}
        unknown = sorted(set(self.filters) - FILTER_KEYS)
        if unknown:
            raise InvalidParameter(f"invalid filter '{unknown[0]}'")

    def _values(self, key: str) -> set[str] | None:
        return self.filters.get(key)

    @staticmethod
    def _fuzzy(values: set[str], *sources: str) -> bool:
        # moby FuzzyMatch: exact, or the source starts with the value (ID prefixes)
        return any(s and (s in values or any(s.startswith(v) for v in values)) for s in sources)

    def _actor(self, key: str, ev: Event) -> bool:
        values = self._values(key)
        if values is None:
            return True
        return self._fuzzy(values, ev.actor_id, ev.attributes.get("name", ""))

    def _event(self, ev: Event) -> bool:
        values = self._values("event")
        if values is None:
            return True
        if ev.action in values:
            return True
        head = ev.action.split(":", 1)[0]
        return head in values and head in _PREFIX_ACTIONS

    def _image(self, ev: Event) -> bool:
        values = self._values("image")
        if values is None:
            return True
        name = ev.attributes.get("name" if ev.type == "image" else "image", "")
        candidates = {ev.actor_id, name, _strip_tag(ev.actor_id), _strip_tag(name)}
        return bool(values & {c for c in candidates if c})

    def _labels(self, ev: Event) -> bool:
        values = self._values("label")
        if values is None:
            return True
        for item in values:
            key, sep, val = item.partition("=")
            if key not in ev.attributes or (sep and ev.attributes[key] != val):
                return False
        return True

    def _exact(self, key: str, source: str) -> bool:
        values = self._values(key)
        return values is None or source in values

    def match(self, ev: Event) -> bool:
        return (
            self._exact("type", ev.type)
            and self._exact("scope", ev.scope)
            and self._event(ev)
            and self._actor("container", ev)
            and self._actor("network", ev)
            and self._actor("volume", ev)
            and self._actor("plugin", ev)
            and self._actor("daemon", ev)
            and self._image(ev)
            and self._labels(ev)
        )


def _strip_tag(ref: str) -> str:
    """``busybox:local`` -> ``busybox``; leaves ``host:5000/x`` alone."""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    return ref[:colon] if colon > slash else ref


_UNIX_TS = re.compile(r"^(\d+)(?:\.(\d{1,9}))?$")


def parse_timestamp(value: str, *, now: float | None = None, name: str = "since") -> int:
    """Docker's ``since``/``until``: Unix seconds (``1700000000`` or ``1700000000.5``), an
    RFC 3339 time, or a Go duration meaning that long ago (``10m``). Returns Unix nanoseconds.
    """
    value = value.strip()
    m = _UNIX_TS.match(value)
    if m:
        frac = (m.group(2) or "").ljust(9, "0")
        return int(m.group(1)) * 1_000_000_000 + int(frac or 0)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return int(dt.timestamp() * 1_000_000_000)
    except ValueError:
        pass
    try:
        ago = parse_duration(value)
    except ValueError:
        raise InvalidParameter(
            f'invalid value for {name}: "{value}" is not a Unix timestamp, an RFC 3339 time or a duration (e.g. 10m)'
        ) from None
    return int(((time.time() if now is None else now) - ago) * 1_000_000_000)


class Subscription:
    """One ``/events`` listener: an async iterator of events that ends at ``until``, when the
    bus closes, or when the subscriber fell too far behind."""

    def __init__(self, bus: EventBus, flt: EventFilter, until_nano: int, maxsize: int) -> None:
        self.bus = bus
        self.filter = flt
        self.until_nano = until_nano
        self.queue: asyncio.Queue[object] = asyncio.Queue(maxsize=maxsize)
        self.dropped = False
        self.live_from = 0  # events with a lower sequence number came through the replay
        self._ended = False

    def _offer(self, ev: object, seq: int | None = None) -> None:
        if self.dropped or (seq is not None and seq < self.live_from):
            return
        if ev is not _CLOSED and isinstance(ev, Event) and not self.filter.match(ev):
            return
        try:
            self.queue.put_nowait(ev)
        except asyncio.QueueFull:
            # The stream ends after what is queued: a gap would be silent, an end is not.
            self.dropped = True
            log.warning("dropping a slow events subscriber (%d events queued)", self.queue.qsize())
            self.bus._remove(self)

    async def next(self, poll: float | None = None) -> Event | None:
        """The next event, or None if ``poll`` seconds pass without one (so a caller can check
        on its client). Raises ``StopAsyncIteration`` once the subscription has ended."""
        if self._ended or (self.dropped and self.queue.empty()):
            self._end()
            raise StopAsyncIteration
        timeout = poll
        if self.until_nano:
            left = max(0.0, (self.until_nano - time.time_ns()) / 1e9)
            timeout = left if timeout is None else min(timeout, left)
        try:
            # Queued items first: with until in the past the timeout is 0, and a replay is
            # already in the queue.
            item = self.queue.get_nowait() if not self.queue.empty() else await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            if self.until_nano and time.time_ns() >= self.until_nano:
                self._end()
                raise StopAsyncIteration from None
            return None
        if item is _CLOSED or (self.until_nano and isinstance(item, Event) and item.time_nano > self.until_nano):
            self._end()
            raise StopAsyncIteration
        assert isinstance(item, Event)
        return item

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Event]:
        try:
            while True:
                try:
                    event = await self.next()
                except StopAsyncIteration:
                    return
                if event is not None:
                    yield event
        finally:
            self.close()

    def _end(self) -> None:
        self._ended = True
        self.close()

    def close(self) -> None:
        self.bus._remove(self)


class EventBus:
    """Publish/subscribe for lifecycle events with a bounded history.

    ``registry`` (optional) is used to call the ``pyd_event`` hook, isolated per plugin.
    Call ``attach_loop`` once the event loop runs (the daemon does); until then, and in unit
    tests without a loop, events are delivered in the publishing thread.
    """

    def __init__(self, registry: PluginRegistry | None = None, *, history: int = 1000, queue_size: int = 4096) -> None:
        self.registry = registry
        # (sequence number, event): the number tells a subscriber's replay from live delivery
        self.history: collections.deque[tuple[int, Event]] = collections.deque(maxlen=history)
        self._seq = 0
        self.queue_size = queue_size
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def listeners(self) -> int:
        return len(self._subs)

    def publish(self, event: Event) -> Event:
        """Stamp ``event`` (if its ``time_nano`` is 0), record it and deliver it. Thread-safe;
        never blocks. Returns the event."""
        if not event.time_nano:
            event.time_nano = time.time_ns()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                # Record now so a subscriber's replay sees it; deliver in the loop thread.
                seq = self._record(event)
                loop.call_soon_threadsafe(self._deliver, seq, event)
                return event
        self._deliver(self._record(event), event)
        return event

    def _record(self, event: Event) -> int:
        with self._lock:
            self._seq += 1
            self.history.append((self._seq, event))
            return self._seq

    def emit(self, type: str, action: str, actor_id: str, attributes: Mapping[str, str] | None = None, *, scope: str = "local") -> Event:
        """Shorthand for ``publish(Event(...))``."""
        return self.publish(Event(type, action, actor_id, dict(attributes or {}), scope))

    def _deliver(self, seq: int, event: Event) -> None:
        if self.registry is not None:
            self.registry.broadcast("pyd_event", event=event)
        for sub in list(self._subs):
            sub._offer(event, seq)

    def subscribe(
        self,
        filters: Mapping[str, Iterable[str]] | None = None,
        *,
        since_nano: int = 0,
        until_nano: int = 0,
    ) -> Subscription:
        """A subscription that first replays recorded events in ``[since, until]`` (when
        ``since`` is given) and then streams live ones; it ends at ``until`` (0: never).
        Must be called in the event-loop thread.
        """
        flt = EventFilter(filters)
        sub = Subscription(self, flt, until_nano, self.queue_size)
        with self._lock:
            replay = [e for _, e in self.history if since_nano and e.time_nano >= since_nano]
            sub.live_from = self._seq + 1
            if self._closed:
                sub.queue.put_nowait(_CLOSED)
            elif not until_nano or until_nano > time.time_ns():
                self._subs.append(sub)
        for ev in replay:
            if not until_nano or ev.time_nano <= until_nano:
                sub._offer(ev)
        if sub not in self._subs and not self._closed and not sub.dropped:
            sub.queue.put_nowait(_CLOSED)  # until is in the past: replay only
        return sub

    def since(self, since_nano: int, until_nano: int = 0, filters: Mapping[str, Iterable[str]] | None = None) -> list[Event]:
        """Recorded events in ``[since, until]`` that pass ``filters`` (no subscription)."""
        flt = EventFilter(filters)
        with self._lock:
            events = [e for _, e in self.history]
        return [e for e in events if e.time_nano >= since_nano and (not until_nano or e.time_nano <= until_nano) and flt.match(e)]

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def close(self) -> None:
        """End every subscription (daemon shutdown); later subscriptions end at once."""
        with self._lock:
            self._closed = True
            subs, self._subs = self._subs, []
        for sub in subs:
            try:
                sub.queue.put_nowait(_CLOSED)
            except asyncio.QueueFull:
                sub.dropped = True  # ends once the queue is drained
