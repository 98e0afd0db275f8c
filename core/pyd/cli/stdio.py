"""Copying a container's stdio between the terminal and a hijacked connection (run, start -a,
attach, exec), as the docker CLI does.

* Output: 8-byte multiplexed frames without a TTY (stdout and stderr kept apart), raw bytes
  with one. Written straight to fds 1 and 2.
* Input: piped stdin is sent as it comes and then half-closed (end of stdin); with ``-t`` the
  terminal is put in raw mode and the daemon's pty echoes, and window-size changes are sent
  as ``resize`` (plus ``kill?signal=WINCH`` for a container, as the CLI does).
"""

from __future__ import annotations

import os
import signal
import struct
import sys

TYPE_CHECKING = False  # typing itself costs ~5 ms of every CLI invocation
if TYPE_CHECKING:
    import threading
    from typing import Any, Callable

_HEADER = struct.Struct(">BxxxI")
_READ = 65536


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BrokenPipeError:
            return
        view = view[n:]


class Demux:
    """Splits multiplexed frames into fds 1 and 2."""

    def __init__(self, out_fd: int = 1, err_fd: int = 2) -> None:
        self.buf = b""
        self.fds = {0: out_fd, 1: out_fd, 2: err_fd}

    def feed(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 8:
            stream, length = _HEADER.unpack_from(self.buf)
            if len(self.buf) < 8 + length:
                return
            payload = self.buf[8 : 8 + length]
            self.buf = self.buf[8 + length :]
            write_all(self.fds.get(stream, 1), payload)


def terminal_size(fd: int = 1) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
        return size.lines, size.columns
    except OSError:
        return 0, 0


class RawTerminal:
    """Puts the controlling terminal (stdin) in raw mode while a ``-t`` session runs."""

    def __init__(self) -> None:
        self.saved: Any = None

    def __enter__(self) -> "RawTerminal":
        if os.isatty(0):
            import termios
            import tty

            self.saved = termios.tcgetattr(0)
            tty.setraw(0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, self.saved)


def pump_stdin(hijacked: Any, *, half_close: bool = True) -> threading.Thread:
    """A daemon thread sending our stdin to the connection; at EOF it half-closes."""
    import threading  # only commands that send stdin need threads

    def run() -> None:
        try:
            while True:
                try:
                    data = os.read(0, _READ)
                except OSError:
                    data = b""
                if not data:
                    break
                hijacked.send(data)
        except OSError:
            return
        if half_close:
            hijacked.close_write()

    t = threading.Thread(target=run, name="stdin", daemon=True)
    t.start()
    return t


def copy_output(hijacked: Any, tty: bool) -> None:
    """Write everything the connection delivers until the daemon closes it."""
    demux = None if tty else Demux()
    pending = hijacked.pending()
    if pending:
        write_all(1, pending) if demux is None else demux.feed(pending)
    while True:
        try:
            data = hijacked.recv(_READ)
        except (ConnectionResetError, OSError):
            return
        if not data:
            return
        if demux is None:
            write_all(1, data)
        else:
            demux.feed(data)


def on_winch(resize: Callable[[int, int], None]) -> None:
    """Call ``resize(rows, cols)`` now and on every SIGWINCH."""

    def handler(*_: object) -> None:
        rows, cols = terminal_size()
        if rows and cols:
            try:
                resize(rows, cols)
            except Exception:  # a resize racing the exit is harmless
                pass

    import threading

    if hasattr(signal, "SIGWINCH") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGWINCH, handler)
    handler()


def stdin_is_tty() -> bool:
    return sys.stdin is not None and os.isatty(0)


def tty_session(client: Any, hijacked: Any, *, stdin: bool, resize_path: str = "") -> None:
    """A ``-t`` session: the terminal raw while output is copied, our window size sent to
    ``resize_path`` (``/containers/ID/resize``, ``/exec/ID/resize``) whenever it changes."""
    if resize_path:
        def resize(rows: int, cols: int) -> None:
            from pyd.client import Client

            # its own connection: the hijacked one carries the session
            c = Client(client.host, tls=client.tls, version=client.api_version)
            try:
                c.post(resize_path, params={"h": rows, "w": cols})
            finally:
                c.close()

        on_winch(resize)
    with RawTerminal():
        if stdin:
            pump_stdin(hijacked, half_close=False)
        copy_output(hijacked, True)
