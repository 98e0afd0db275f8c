"""The CLI's global state and output helpers, without click.

``pyd.cli.fast`` runs the hot commands (``run``, ``exec``) without importing click (about
40 ms of every invocation), so what they share with the click commands lives here;
``pyd.cli.common`` re-exports it. Keep this module's imports to the standard library's
cheapest (``os``, ``sys``): the client is imported when a command first needs it.
"""

from __future__ import annotations

import os
import sys

from pyd.cli.optspec import FLAG, Opt

TYPE_CHECKING = False  # typing itself costs an import on every invocation
if TYPE_CHECKING:
    from pyd.client import Client, TLSConfig

# The options of ``pyd`` itself (before the command), in --help order; ``-v/--version`` is
# added by the click group (it acts at once).
GLOBAL_OPTIONS = (
    Opt("-H", "--host", default=None, metavar="HOST",
        help="Daemon socket to connect to: unix:///path or tcp://HOST:PORT "
        "[env PYD_HOST; default unix:///run/pyd/pyd.sock]"),
    Opt("-D", "--debug", kind=FLAG, help="Enable debug mode (tracebacks on errors)."),
    Opt("--tls", kind=FLAG, help="Use TLS; implied by --tlsverify."),
    Opt("--tlsverify", kind=FLAG, help="Use TLS and verify the remote [env PYD_TLS_VERIFY]."),
    Opt("--tlscacert", default=None, metavar="PATH", help="Trust certs signed only by this CA [~/.pyd/ca.pem]."),
    Opt("--tlscert", default=None, metavar="PATH", help="Path to TLS certificate file [~/.pyd/cert.pem]."),
    Opt("--tlskey", default=None, metavar="PATH", help="Path to TLS key file [~/.pyd/key.pem]."),
)


class CliState:
    """What the global options set (``ctx.obj``); builds the one ``Client`` of an invocation."""

    def __init__(self) -> None:
        self.host: str | None = None
        self.debug = False
        self.tls = False
        self.tlsverify = False
        self.tlscacert: str | None = None
        self.tlscert: str | None = None
        self.tlskey: str | None = None
        self._client: Client | None = None

    @property
    def resolved_host(self) -> str:
        """``-H``, else ``PYD_HOST``, else ``unix:///run/pyd/pyd.sock``."""
        from pyd.client import DEFAULT_HOST

        return self.host or os.environ.get("PYD_HOST") or DEFAULT_HOST

    def tls_config(self) -> TLSConfig | None:
        """TLS as docker decides it: ``--tlsverify`` (or ``PYD_TLS_VERIFY``) verifies the
        daemon; ``--tls`` encrypts without verifying. Files default to ``$PYD_CERT_PATH`` or
        ``~/.pyd`` (``ca.pem``, ``cert.pem``, ``key.pem``) when they exist there."""
        verify = self.tlsverify or bool(os.environ.get("PYD_TLS_VERIFY"))
        if not (self.tls or verify):
            return None
        from pyd.client import TLSConfig

        cert_dir = os.environ.get("PYD_CERT_PATH") or os.path.expanduser("~/.pyd")

        def pick(explicit: str | None, name: str) -> str | None:
            if explicit:
                return explicit
            path = os.path.join(cert_dir, name)
            return path if os.path.exists(path) else None

        return TLSConfig(
            verify=verify,
            ca=pick(self.tlscacert, "ca.pem"),
            cert=pick(self.tlscert, "cert.pem"),
            key=pick(self.tlskey, "key.pem"),
        )

    def client(self) -> Client:
        if self._client is None:
            from pyd.client import Client

            self._client = Client(
                self.resolved_host,
                tls=self.tls_config(),
                version=os.environ.get("PYD_API_VERSION") or None,
            )
        return self._client

    def set_globals(self, host: str | None, debug: bool, tls: bool, tlsverify: bool,
                    tlscacert: str | None, tlscert: str | None, tlskey: str | None) -> None:
        """What the ``GLOBAL_OPTIONS`` said (the click group, or the fast path)."""
        self.host = host
        self.debug = self.debug or debug
        self.tls = tls or tlsverify
        self.tlsverify = tlsverify
        self.tlscacert, self.tlscert, self.tlskey = tlscacert, tlscert, tlskey

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def is_daemon_error(exc: BaseException) -> bool:
    """True for an error the daemon answered with (the client sets ``http_status``)."""
    return getattr(exc, "http_status", None) is not None


def write(text: str) -> None:
    """Write to stdout and flush (streams are read line by line by scripts)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def warn(text: str) -> None:
    sys.stderr.write(text if text.endswith("\n") else text + "\n")
