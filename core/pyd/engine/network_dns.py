"""The embedded DNS resolver (Docker's ``127.0.0.11`` model).

Containers on user-defined networks get ``nameserver 127.0.0.11`` in their resolv.conf. The
daemon listens on ``127.0.0.11:53`` (UDP and TCP) *inside each such container's network
namespace*: the sockets are created by a thread that entered the namespace
(``pyd.drivers.network.netns_call``) and then served by the daemon's asyncio loop; a socket
keeps its namespace for life, so one daemon serves every sandbox without a process each.

Answers come from a ``lookup`` callback (the network service knows which containers share a
network with the asking one): A records for container names, aliases and short IDs, PTR
records for their addresses; AAAA for a known name is an empty NOERROR (pyd networks are
IPv4), so resolvers do not fall back to a search domain. Everything else is forwarded as the
raw packet to the upstream servers (the container's ``--dns``, the daemon's ``dns``, or the
host's resolv.conf), from the daemon's own namespace, so a host-loopback resolver works too.

The message codec is the small subset of RFC 1035 a stub resolver needs (one question,
A/AAAA/PTR answers); no third-party DNS library.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Callable, Sequence

log = logging.getLogger(__name__)

DNS_ADDRESS = "127.0.0.11"
DNS_PORT = 53
TTL = 600
FORWARD_TIMEOUT = 2.0  # per upstream server
TCP_IDLE = 10.0
MAX_UDP = 4096

TYPE_A = 1
TYPE_PTR = 12
TYPE_AAAA = 28
CLASS_IN = 1

RCODE_OK = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5

_QR = 0x8000
_AA = 0x0400
_TC = 0x0200
_RD = 0x0100
_RA = 0x0080


class DNSFormatError(ValueError):
    """The packet is not a DNS query this resolver can read."""


@dataclass(frozen=True)
class Question:
    name: str  # lower case, without the trailing dot
    qtype: int
    qclass: int
    end: int  # offset just after the question in the packet


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    question: Question

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """A (possibly compressed) name at ``offset``; returns it and the offset after it."""
    labels: list[str] = []
    end = -1
    jumps = 0
    while True:
        if offset >= len(data):
            raise DNSFormatError("name runs past the end of the packet")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise DNSFormatError("truncated compression pointer")
            if end < 0:
                end = offset + 2
            jumps += 1
            if jumps > 16:
                raise DNSFormatError("compression loop")
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        if length & 0xC0:
            raise DNSFormatError("unsupported label type")
        offset += 1
        if length == 0:
            break
        label = data[offset : offset + length]
        if len(label) != length:
            raise DNSFormatError("label runs past the end of the packet")
        labels.append(label.decode("ascii", errors="replace"))
        offset += length
    name = ".".join(labels).lower()
    if len(name) > 253:
        raise DNSFormatError("name too long")
    return name, (end if end >= 0 else offset)


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        if not label:
            continue
        raw = label.encode("ascii", errors="replace")[:63]
        out.append(len(raw))
        out += raw
    out.append(0)
    return bytes(out)


def parse_query(data: bytes) -> Query:
    """The header and first question of ``data``; ``DNSFormatError`` if unreadable."""
    if len(data) < 12:
        raise DNSFormatError("shorter than a DNS header")
    qid, flags, qdcount = struct.unpack("!HHH", data[:6])
    if flags & _QR:
        raise DNSFormatError("not a query")
    if qdcount < 1:
        raise DNSFormatError("no question")
    name, off = _read_name(data, 12)
    if off + 4 > len(data):
        raise DNSFormatError("truncated question")
    qtype, qclass = struct.unpack("!HH", data[off : off + 4])
    return Query(qid, flags, Question(name, qtype, qclass, off + 4))


def build_reply(
    data: bytes, query: Query | None, rcode: int, answers: Sequence[tuple[int, bytes]] = (), ttl: int = TTL
) -> bytes:
    """A reply to ``data``: the question copied, ``answers`` as (type, rdata) for that name."""
    if query is None:  # unreadable: echo the ID with FORMERR and no question
        qid = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 0
        return struct.pack("!HHHHHH", qid, _QR | _RA | RCODE_FORMERR, 0, 0, 0, 0)
    flags = _QR | _AA | _RA | (query.flags & (_RD | 0x7800)) | (rcode & 0xF)
    head = struct.pack("!HHHHHH", query.id, flags, 1, len(answers), 0, 0)
    out = bytearray(head + data[12 : query.question.end])
    for rtype, rdata in answers:
        # 0xC00C: a pointer to the question's name at offset 12
        out += struct.pack("!HHHIH", 0xC00C, rtype, CLASS_IN, ttl, len(rdata)) + rdata
    return bytes(out)


def reverse_name_to_ip(name: str) -> str | None:
    """``2.0.18.172.in-addr.arpa`` -> ``172.18.0.2``; None for anything else."""
    suffix = ".in-addr.arpa"
    if not name.endswith(suffix):
        return None
    parts = name[: -len(suffix)].split(".")
    if len(parts) != 4:
        return None
    try:
        return str(ipaddress.IPv4Address(".".join(reversed(parts))))
    except ValueError:
        return None


# Resolution callbacks given by the network service, called in the event-loop thread (fast,
# no I/O): names -> IPv4 addresses visible to the asking container, and address -> name.
Lookup = Callable[[str], list[str]]
Reverse = Callable[[str], str | None]


class Resolver:
    """Answers one sandbox's queries: local names first, then the upstream servers."""

    def __init__(
        self,
        lookup: Lookup,
        reverse: Reverse,
        upstreams: Callable[[], Sequence[str]],
        *,
        forward: Callable[[], bool] = lambda: True,
        timeout: float = FORWARD_TIMEOUT,
    ) -> None:
        self.lookup = lookup
        self.reverse = reverse
        self.upstreams = upstreams
        self.forward = forward
        self.timeout = timeout

    def answer_locally(self, data: bytes) -> tuple[bytes | None, Query | None]:
        """(reply, query): a reply when the question is ours (or the packet is bad); else
        (None, query) and the caller forwards the packet."""
        try:
            query = parse_query(data)
        except DNSFormatError:
            return (build_reply(data, None, RCODE_FORMERR) if len(data) >= 2 else None), None
        q = query.question
        if query.opcode != 0:
            return build_reply(data, query, RCODE_NOTIMP), query
        if q.qclass != CLASS_IN:
            return None, query
        if q.qtype in (TYPE_A, TYPE_AAAA):
            ips = self.lookup(q.name)
            if ips:
                if q.qtype == TYPE_AAAA:
                    return build_reply(data, query, RCODE_OK), query  # known name, no IPv6
                answers = [(TYPE_A, ipaddress.IPv4Address(ip).packed) for ip in ips]
                return build_reply(data, query, RCODE_OK, answers), query
        elif q.qtype == TYPE_PTR:
            ip = reverse_name_to_ip(q.name)
            target = self.reverse(ip) if ip else None
            if target:
                return build_reply(data, query, RCODE_OK, [(TYPE_PTR, encode_name(target))]), query
        return None, query

    async def resolve(self, data: bytes, *, tcp: bool = False) -> bytes | None:
        reply, query = self.answer_locally(data)
        if reply is not None or query is None:
            return reply
        servers = list(self.upstreams()) if self.forward() else []
        for server in servers:
            try:
                if tcp:
                    return await _forward_tcp(server, data, self.timeout)
                return await _forward_udp(server, data, self.timeout)
            except (OSError, asyncio.TimeoutError, DNSFormatError) as exc:
                log.debug("DNS forward of %s to %s failed: %s", query.question.name, server, exc)
        # Nobody to ask (or nobody answered): SERVFAIL for names we do not know, as Docker.
        return build_reply(data, query, RCODE_SERVFAIL if servers else RCODE_REFUSED)


class _OneReply(asyncio.DatagramProtocol):
    def __init__(self, query_id: bytes) -> None:
        self.query_id = query_id
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if data[:2] == self.query_id and not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def _forward_udp(server: str, data: bytes, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _OneReply(data[:2]), remote_addr=(server, DNS_PORT), family=family
    )
    try:
        transport.sendto(data)
        return await asyncio.wait_for(proto.reply, timeout)
    finally:
        transport.close()


async def _forward_tcp(server: str, data: bytes, timeout: float) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(server, DNS_PORT), timeout)
    try:
        writer.write(struct.pack("!H", len(data)) + data)
        await writer.drain()
        size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), timeout))[0]
        return await asyncio.wait_for(reader.readexactly(size), timeout)
    finally:
        writer.close()


# -- serving in a sandbox -------------------------------------------------------------------------


def make_listen_sockets(address: str = DNS_ADDRESS, port: int = DNS_PORT) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to ``address:port`` in the *current thread's* network
    namespace (call it through ``netns_call``). ``lo`` must be up."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        udp.bind((address, port))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((address, port))
        tcp.listen(64)
        udp.setblocking(False)
        tcp.setblocking(False)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


class _UDPServer(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, tasks: set[asyncio.Task[None]]) -> None:
        self.resolver = resolver
        self.tasks = tasks
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reply = await self.resolver.resolve(data)
        except Exception:
            log.exception("embedded DNS: answering a query failed")
            return
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            if len(reply) > 512 and not _has_edns(data):
                reply = _truncate(reply)
            self.transport.sendto(reply, addr)


def _has_edns(data: bytes) -> bool:
    return len(data) >= 12 and struct.unpack("!H", data[10:12])[0] > 0


def _truncate(reply: bytes) -> bytes:
    """A UDP reply too large for a client without EDNS: header + question with TC set, so it
    asks again over TCP."""
    try:
        _, end = _read_name(reply, 12)
    except DNSFormatError:
        end = 12
    qid, flags = struct.unpack("!HH", reply[:4])
    head = struct.pack("!HHHHHH", qid, flags | _TC, 1 if end > 12 else 0, 0, 0, 0)
    return head + reply[12 : end + 4 if end > 12 else 12]


class SandboxDNS:
    """The resolver of one sandbox: its UDP endpoint and TCP server on the daemon's loop."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, udp_sock: socket.socket, tcp_sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _UDPServer(self.resolver, self._tasks), sock=udp_sock
            )
            self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp_sock)
        except BaseException:
            await self.close()
            udp_sock.close()
            tcp_sock.close()
            raise

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                data = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", head)[0]), TCP_IDLE)
                reply = await self.resolver.resolve(data, tcp=True)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("embedded DNS: a TCP query failed")
        finally:
            writer.close()

    async def close(self) -> None:
        if self._udp is not None:
            udp, self._udp = self._udp, None
            try:
                udp.close()
            except RuntimeError:  # its loop is gone: close the socket itself
                sock = udp.get_extra_info("socket")
                if sock is not None:
                    sock.close()
        if self._tcp is not None:
            tcp, self._tcp = self._tcp, None
            try:
                tcp.close()
                await asyncio.wait_for(tcp.wait_closed(), 1.0)
            except RuntimeError:  # its loop is gone: close the sockets themselves
                for sock in tcp.sockets:
                    sock.close()
            except (asyncio.TimeoutError, OSError):
                pass
        for task in list(self._tasks):
            task.cancel()
