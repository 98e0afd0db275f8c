"""Reading a container's logs back (``GET /containers/{id}/logs``, ``attach?logs=1``).

From the log driver when it is a ``LogReader``, else from the local cache ("dual logging");
the ``none`` driver keeps nothing: ``configured logging driver does not support reading``.
The driver's reader is blocking, so it runs in a thread and hands messages to the event loop
through a bounded queue; ``cancel()`` (the client left) stops it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Iterator

from pyd.drivers.log import LogMessage, LogReader, ReadConfig
from pyd.engine.container_logcache import read_cache
from pyd.errors import NotSupported

_QUEUE = 256
_END = object()


class LogStream:
    """An async iterator of ``LogMessage``; ``tty`` tells the route how to frame them."""

    def __init__(self, source: Callable[[], Iterator[LogMessage]], cfg: ReadConfig, tty: bool) -> None:
        self.tty = tty
        self._cfg = cfg
        self._source = source
        self._queue: asyncio.Queue[Any] = asyncio.Queue(_QUEUE)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="pyd-logs-read", daemon=True)
        self._started = False

    def _put(self, item: Any) -> bool:
        """Hand one item to the loop, blocking while the queue is full; False once cancelled."""
        assert self._cfg.cancel is not None
        while not self._cfg.cancel.is_set():
            fut = asyncio.run_coroutine_threadsafe(self._offer(item), self._loop)
            try:
                if fut.result():
                    return True
            except Exception:  # the loop is closing
                return False
        return False

    async def _offer(self, item: Any) -> bool:
        try:
            await asyncio.wait_for(self._queue.put(item), 1.0)
            return True
        except asyncio.TimeoutError:
            return False

    def _run(self) -> None:
        gen = self._source()
        try:
            for msg in gen:
                if not self._put(msg):
                    return
        except Exception as exc:
            self._put(exc)
            return
        finally:
            close = getattr(gen, "close", None)
            if close is not None:  # finish the reader here, not in a later GC in another thread
                try:
                    close()
                except Exception:
                    pass
        self._put(_END)

    def __aiter__(self) -> "LogStream":
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    async def __anext__(self) -> LogMessage:
        item = await self._queue.get()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, Exception):
            raise item
        return item  # type: ignore[no-any-return]

    def cancel(self) -> None:
        """Stop reading (the client left); a consumer waiting for the next message ends."""
        assert self._cfg.cancel is not None
        self._cfg.cancel.set()
        try:
            self._queue.put_nowait(_END)
        except asyncio.QueueFull:
            pass  # the consumer is not waiting: it sees the end after the queued messages


def open_reader(
    *,
    driver: Any,
    driver_name: str,
    options: object,
    ctx: Any,
    cache_dir: str,
    cache_closed: threading.Event,
    cfg: ReadConfig,
    tty: bool,
) -> LogStream:
    cfg.cancel = cfg.cancel or threading.Event()
    if isinstance(driver, LogReader):
        def source() -> Iterator[LogMessage]:
            return iter(driver.read(ctx, options, cfg))
    elif driver_name == "none":
        raise NotSupported("configured logging driver does not support reading")
    else:
        def source() -> Iterator[LogMessage]:
            return read_cache(cache_dir, cfg, cache_closed)
    return LogStream(source, cfg, tty)
