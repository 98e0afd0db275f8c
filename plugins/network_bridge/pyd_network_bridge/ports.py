"""Host-port reservations for published ports.

Published ports are DNAT rules, so nothing would listen on the host port and nothing would
stop another process (or container) from taking it. The driver therefore binds a socket to
each published ``host_ip:host_port`` and holds it while the port is published (moby 28 does
the same): a port already bound elsewhere fails here with ``EADDRINUSE`` before any rule is
written, a later ``bind`` by another program fails instead of being silently shadowed, and
port 0 lets the kernel choose a free port from the ephemeral range
(``net.ipv4.ip_local_port_range``). TCP sockets are bound, never listened on: connections
are rewritten by the DNAT rules before they could reach them.
"""

from __future__ import annotations

import errno
import socket

_SOCK = {
    "tcp": (socket.SOCK_STREAM, socket.IPPROTO_TCP),
    "udp": (socket.SOCK_DGRAM, socket.IPPROTO_UDP),
    "sctp": (socket.SOCK_SEQPACKET, getattr(socket, "IPPROTO_SCTP", 132)),
}


class PortInUse(Exception):
    pass


def reserve(proto: str, host_ip: str, port: int) -> socket.socket:
    """Bind ``host_ip:port`` (``""`` = all addresses) for ``proto``; return the socket.

    ``PortInUse`` if it is taken, ``OSError`` for other failures (e.g. EADDRNOTAVAIL when
    ``host_ip`` is not an address of this host).
    """
    kind, number = _SOCK[proto]
    sock = socket.socket(socket.AF_INET, kind, number)
    try:
        if proto == "udp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.bind((host_ip or "0.0.0.0", port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(str(exc)) from exc
        raise
    return sock
