"""The built-in DNS responder (dnslib): `_netslate._tcp.<domain>` SRV, A/AAAA for the targets.

`Responder.handle(packet, client)` turns one query into one answer (or None = drop) using a
`core.View`; `DnsServer` runs it on UDP and TCP in an asyncio loop of its own thread, so the web
server and the responder never block each other's event loops. Bad packets never raise out of
`handle`: garbage is dropped, a parsable header with a bad body gets FORMERR.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import random
import socket
import struct
import threading
import time
from typing import Callable

from dnslib import AAAA, CLASS, EDNS0, QTYPE, RCODE, RR, SOA, SRV, A, DNSError, DNSHeader, DNSRecord

from netslate.discovery import core

log = logging.getLogger("netslate.discovery.dns")

MAX_QUERY = 1232  # bytes; a real query is < 300. Bigger UDP packets are dropped, bigger TCP ones close
MAX_UDP_REPLY = 1232  # our EDNS buffer size (the DNS flag day 2020 value)
TCP_IDLE = 10.0  # seconds a TCP client may stay silent
MAX_TCP_CLIENTS = 256
CACHE_SIZE = 4096  # finished answers kept per view
ECS_OPTION = 8  # EDNS Client Subnet (RFC 7871): lets a resolver tell us where the client is
MAX_NAME = 255  # octets of a name on the wire (RFC 1035 3.1); longer ones are FORMERR
LOG_WINDOW = 10.0  # seconds: at most one log line per kind of bad packet per window (sources can be spoofed)


class RateLimitedLog:
    """One log line per kind per `window` seconds; the next line says how many were held back."""

    def __init__(self, logger: logging.Logger, window: float = LOG_WINDOW, clock: Callable[[], float] = time.monotonic):
        self.logger, self.window, self.clock = logger, window, clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str, *args) -> bool:
        now = self.clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.window:
                self._held[kind] = self._held.get(kind, 0) + 1
                return False
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        suffix = f" ({held} more like it in the last {self.window:g} s not logged)" if held else ""
        self.logger.warning(message + suffix, *args)
        return True


def name_octets(name) -> int:
    """Length on the wire of a dnslib DNSLabel: a length octet per label, the label, the root octet."""
    return sum(len(part) + 1 for part in name.label) + 1


class Responder:
    def __init__(self, view: Callable[[], core.View], domain: str, ttl: int = core.DNS_TTL,
                 rng: random.Random | None = None, cache: bool = True):
        self._view = view
        self.cache = cache  # False only to measure the uncached path
        self.domain = core.check_domain(domain)
        self.ttl = ttl
        self.rng = rng or random.Random()
        self.srv_name = core.srv_name(self.domain)
        self.stats = {"queries": 0, "dropped": 0, "formerr": 0, "refused": 0, "nxdomain": 0, "noerror": 0, "servfail": 0}
        self._cache: dict = {}  # (query bytes after id, udp, site, server order) -> answer after id
        self._known: dict = {}  # (query bytes after id, udp) -> (kind, ecs address, rcode, answer)
        self._cache_view = None
        self._rrs: dict = {}
        self._rr_view = None
        self._soa = SOA(f"ns.{self.domain}.", f"hostmaster.{self.domain}.", (1, 3600, 600, 604800, ttl))
        self.log = RateLimitedLog(log)

    # ------------------------------------------------------------ one packet

    def handle(self, data: bytes, client: str, udp: bool = True) -> bytes | None:
        self.stats["queries"] += 1
        try:
            return self._handle(bytes(data), client, udp)
        except Exception as exc:  # never let a packet take the responder down; one line, rate-limited
            self.log.warning("servfail", "DNS query from %s failed: %s: %.200s", client, type(exc).__name__, exc)
            self.stats["servfail"] += 1
            try:
                return self._error(data, RCODE.SERVFAIL)
            except Exception:
                return None

    def _error(self, data: bytes, rcode: int) -> bytes | None:
        if len(data) < 12:
            return None
        qid, flags = struct.unpack("!HH", data[:4])
        # Keep opcode and RD; set QR; no question section (we could not parse it).
        out_flags = 0x8000 | (flags & 0x7900) | rcode
        return struct.pack("!HHHHHH", qid, out_flags, 0, 0, 0, 0)

    def _handle(self, data: bytes, client: str, udp: bool) -> bytes | None:
        if len(data) < 12 or len(data) > MAX_QUERY or data[2] & 0x80:
            # Too short for a header, oversized, or a response (answering it could loop): drop.
            self.stats["dropped"] += 1
            return None
        # Fast path: the same query bytes (after the id) were answered before from this view.
        # Skips dnslib's parser; SRV answers still get a fresh site lookup and RFC 2782 order.
        view = self._view()
        qkey = _query_key(data)
        if qkey is not None and self._cache_view is view:
            key, qend = qkey
            known = self._known.get((key, udp))
            if known is not None:
                kind, ecs, rcode, body = known
                if kind == "srv":
                    site = view.site_for(ecs if ecs is not None else client)
                    order = tuple(e.server.name for e in view.ordered(site, self.rng))
                    body = self._cache.get((key, udp, site, order))  # same order, other site: other priorities
                if body is not None:
                    self.stats["nxdomain" if rcode == RCODE.NXDOMAIN else "noerror"] += 1
                    # Our id, the cached header, the question exactly as asked (letter case kept),
                    # the cached rest: compression pointers still hold, the name has the same length.
                    return data[:2] + body[:10] + data[12:qend] + body[qend - 2:]
        try:
            req = DNSRecord.parse(data)
        except (DNSError, Exception):
            self.stats["formerr"] += 1
            return self._error(data, RCODE.FORMERR)
        if req.header.opcode != 0:
            return self._error(data, RCODE.NOTIMP)
        if len(req.questions) != 1:
            self.stats["formerr"] += 1
            return self._error(data, RCODE.FORMERR)
        if any(name_octets(x.qname) > MAX_NAME for x in req.questions) or any(name_octets(x.rname) > MAX_NAME for x in [*req.rr, *req.auth, *req.ar]):
            self.stats["formerr"] += 1
            self.log.warning("long-name", "DNS query from %s refused (FORMERR): a name longer than %d octets", client, MAX_NAME)
            return self._error(data, RCODE.FORMERR)
        q = req.q
        reply = DNSRecord(DNSHeader(id=req.header.id, qr=1, aa=1, ra=0, rd=req.header.rd), q=q)
        opt = next((r for r in req.ar if r.rtype == QTYPE.OPT), None)
        limit = 512
        if opt is not None:
            limit = max(512, min(int(opt.rclass), MAX_UDP_REPLY))
            reply.add_ar(EDNS0(udp_len=MAX_UDP_REPLY))
        qname = str(q.qname).rstrip(".").lower()
        if q.qclass not in (CLASS.IN, 255) or not (qname == self.domain or qname.endswith("." + self.domain)):
            self.stats["refused"] += 1
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            return reply.pack()
        entries = site = None
        ecs = self._ecs(opt)
        if qname == self.srv_name and q.qtype in (QTYPE.SRV, QTYPE.ANY):
            site = view.site_for(ecs if ecs is not None else client)
            entries = view.ordered(site, self.rng)
        rcode = self._answer(reply, qname, q.qtype, view, entries)
        reply.header.rcode = rcode
        self.stats["nxdomain" if rcode == RCODE.NXDOMAIN else "noerror"] += 1
        packed = self._finish(reply, limit, udp)
        # Packing with dnslib costs more than everything else and answers repeat (same view, same
        # query bytes, one of a few orders), so finished answers are kept without their id.
        if self._cache_view is not view:
            self._cache, self._known, self._cache_view = {}, {}, view
        if len(self._cache) >= CACHE_SIZE or len(self._known) >= CACHE_SIZE:
            self._cache.clear()
            self._known.clear()
        if self.cache and qkey is not None and bytes(packed[12:qkey[1]]) == data[12:qkey[1]]:
            key = qkey[0]
            if entries is None:
                self._known[(key, udp)] = ("static", None, rcode, bytes(packed[2:]))
            else:
                self._known[(key, udp)] = ("srv", ecs, rcode, None)
                self._cache[(key, udp, site, tuple(e.server.name for e in entries))] = bytes(packed[2:])
        return bytes(packed)

    def _finish(self, reply: DNSRecord, limit: int, udp: bool) -> bytes:
        packed = reply.pack()
        if udp and len(packed) > limit:
            # Drop the additional addresses first (clients can ask for them), then truncate.
            reply.ar = [r for r in reply.ar if r.rtype == QTYPE.OPT]
            packed = reply.pack()
            if len(packed) > limit:
                reply.rr, reply.auth = [], []
                reply.header.tc = 1
                packed = reply.pack()
        return packed

    def _ecs(self, opt) -> str | None:
        """The client address an EDNS Client Subnet option carries, if any."""
        if opt is not None:
            for o in getattr(opt, "rdata", None) or []:
                if getattr(o, "code", None) == ECS_OPTION:
                    return _ecs_address(bytes(o.data))
        return None

    def _answer(self, reply: DNSRecord, qname: str, qtype: int, view: core.View, entries: list[core.SrvEntry] | None) -> int:
        ttl = self.ttl
        if qname == self.srv_name:
            if entries is not None:
                if self._rr_view is not view:  # RR objects are immutable once built: reuse per view
                    self._rrs, self._rr_view = {}, view
                for e in entries:
                    k = ("SRV", e.server.name, e.priority, e.weight)
                    rr = self._rrs.get(k)
                    if rr is None:
                        target = core.target_name(e.server.name, self.domain)
                        rr = self._rrs[k] = RR(self.srv_name + ".", QTYPE.SRV, ttl=ttl, rdata=SRV(e.priority, e.weight, e.server.port, target + "."))
                    reply.add_answer(rr)
                for e in entries:
                    addrs = self._rrs.get(e.server.name)
                    if addrs is None:
                        addrs = self._rrs[e.server.name] = []
                        self._addresses(addrs.append, e.server, None)
                    for rr in addrs:
                        reply.add_ar(rr)
            if not reply.rr:
                self._nodata(reply)
            return RCODE.NOERROR
        suffix = "." + self.domain
        if qname.endswith(suffix):
            server = view.server(qname[: -len(suffix)])
            if server is not None:
                want = {QTYPE.A: "A", QTYPE.AAAA: "AAAA", QTYPE.ANY: None}.get(qtype, "none")
                if want != "none":
                    self._addresses(reply.add_answer, server, want)
                if not reply.rr:
                    self._nodata(reply)
                return RCODE.NOERROR
        if qname == self.domain:
            if qtype in (QTYPE.SOA, QTYPE.ANY):
                reply.add_answer(RR(self.domain + ".", QTYPE.SOA, ttl=ttl, rdata=self._soa))
            else:
                self._nodata(reply)
            return RCODE.NOERROR
        if self.srv_name.endswith("." + qname):  # an empty non-terminal such as _tcp.<domain>
            self._nodata(reply)
            return RCODE.NOERROR
        self._nodata(reply)
        return RCODE.NXDOMAIN

    def _addresses(self, add, server: core.ServerInfo, want: str | None) -> None:
        name = core.target_name(server.name, self.domain) + "."
        for a in server.addresses:  # already filtered by core.View: never link-local
            if ":" in a:
                if want in (None, "AAAA"):
                    add(RR(name, QTYPE.AAAA, ttl=self.ttl, rdata=AAAA(a)))
            elif want in (None, "A"):
                add(RR(name, QTYPE.A, ttl=self.ttl, rdata=A(a)))

    def _nodata(self, reply: DNSRecord) -> None:
        reply.add_auth(RR(self.domain + ".", QTYPE.SOA, ttl=self.ttl, rdata=self._soa))


def _query_key(data: bytes) -> tuple[bytes, int] | None:
    """The query without its id and with the question name in lower case (resolvers randomise
    the case, RFC draft "0x20"), plus the offset where the question section ends. None when the
    question is not a plain uncompressed name (then the answer is simply not cached)."""
    i, n = 12, len(data)
    while True:
        if i >= n:
            return None
        length = data[i]
        if length == 0:
            break
        if length > 63:  # a compression pointer or a reserved label type in a question
            return None
        i += length + 1
    qend = i + 1 + 4
    if qend > n:
        return None
    # Length bytes are <= 63, below 'A' (65), so lower() only touches letters of the labels.
    return data[2:12] + data[12:i].lower() + data[i:], qend


def _ecs_address(data: bytes) -> str | None:
    """The address inside an EDNS Client Subnet option (family, source prefix, scope, address)."""
    if len(data) < 4:
        return None
    family, source = struct.unpack("!HB", data[:3])
    raw = data[4:]
    try:
        if family == 1 and source <= 32 and len(raw) <= 4:
            return str(ipaddress.IPv4Address(raw.ljust(4, b"\0")))
        if family == 2 and source <= 128 and len(raw) <= 16:
            return str(ipaddress.IPv6Address(raw.ljust(16, b"\0")))
    except ValueError:
        return None
    return None


# ---------------------------------------------------------------- the network edge


def parse_hostport(value: str, default_port: int = 53) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT, or a bare HOST (port 53). `[::]:53` listens dual-stack."""
    v = value.strip()
    if v.startswith("["):
        host, _, rest = v[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif v.count(":") == 1:
        host, _, port = v.partition(":")
    else:
        host, port = v, ""
    if port and not port.isdigit():
        raise core.DiscoveryInputError(f"--dns-listen wants HOST:PORT, got {value!r}")
    host = host or "::"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise core.DiscoveryInputError(f"--dns-listen wants an IP address, got {host!r}") from None
    p = int(port) if port else default_port
    if not 0 < p < 65536:
        raise core.DiscoveryInputError(f"invalid port in {value!r}")
    return host, p


def _socket(host: str, port: int, kind: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    if reuse_port:  # several uvicorn workers share the port; the kernel spreads queries over them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if kind == socket.SOCK_STREAM:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and ipaddress.ip_address(host).is_unspecified:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual-stack on [::]
    if kind == socket.SOCK_DGRAM:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _peer(addr) -> str:
    host = addr[0]
    return host.split("%", 1)[0]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder):
        self.responder = responder
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        out = self.responder.handle(data, _peer(addr), udp=True)
        if out is not None:
            self.transport.sendto(out, addr)

    def error_received(self, exc):  # ICMP errors from earlier sends: nothing to do
        pass


PORT_0_ATTEMPTS = 32  # port 0: fresh picks when the UDP port's number is taken for TCP


class DnsServer:
    """UDP + TCP on one address, in a thread with its own asyncio loop."""

    def __init__(self, responder: Responder, host: str, port: int, reuse_port: bool = False):
        self.responder = responder
        self.host, self.port = host, port
        self.reuse_port = reuse_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._tcp_clients = 0
        self.started_at: float | None = None

    def start(self) -> "DnsServer":
        # Bind here so "address in use" fails `netslate serve` at startup, loudly.
        udp, tcp = self._bind_pair()
        self.port = udp.getsockname()[1]
        tcp.listen(128)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(udp, tcp), name="netslate-dns", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("DNS responder did not start")
        self.started_at = time.time()
        return self

    def _bind_pair(self) -> tuple[socket.socket, socket.socket]:
        """UDP and TCP on the same port. Port 0: the kernel picks a free UDP port, whose number
        may be taken for TCP by someone else; then another pick (bounded), never a wrong answer."""
        attempt = 0
        while True:
            attempt += 1
            udp = _socket(self.host, self.port, socket.SOCK_DGRAM, self.reuse_port)
            try:
                return udp, _socket(self.host, udp.getsockname()[1], socket.SOCK_STREAM, self.reuse_port)
            except OSError as exc:
                udp.close()
                if self.port or exc.errno != errno.EADDRINUSE or attempt == PORT_0_ATTEMPTS:
                    raise

    def _run(self, udp: socket.socket, tcp: socket.socket) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)

        async def setup():
            await loop.create_datagram_endpoint(lambda: _Udp(self.responder), sock=udp)
            self._tcp_server = await asyncio.start_server(self._tcp_client, sock=tcp)

        loop.run_until_complete(setup())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._tcp_server.close()
            loop.run_until_complete(self._tcp_server.wait_closed())
            loop.close()

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_clients >= MAX_TCP_CLIENTS:
            writer.close()
            return
        self._tcp_clients += 1
        peer = _peer(writer.get_extra_info("peername") or ("",))
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                (length,) = struct.unpack("!H", head)
                if length > MAX_QUERY:
                    self.responder.stats["dropped"] += 1
                    break
                data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE)
                out = self.responder.handle(data, peer, udp=False)
                if out is None:
                    break
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._tcp_clients -= 1
            writer.close()

    def running(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


class CachedView:
    """The View for the responder, reloaded from the store at most every `refresh` seconds, in the
    background, so a query never waits for the database (a stale view is served meanwhile)."""

    def __init__(self, load: Callable[[], core.View], refresh: float = 2.0):
        self._load = load
        self.refresh = refresh
        self._view = load()
        self.loaded_at = time.monotonic()
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="netslate-dns-view", daemon=True)
        self._thread.start()

    def __call__(self) -> core.View:
        return self._view

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh):
            try:
                self._view = self._load()
                self.loaded_at = time.monotonic()
                self.error = None
            except Exception as exc:  # keep serving the last view; health shows the error
                self.error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
