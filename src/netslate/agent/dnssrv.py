"""A minimal DNS client for `_netslate._tcp.<domain>` SRV lookups (RFC 1035, RFC 2782). Stdlib only.

`build_query` and `parse_response` are pure; `query` sends one UDP packet with a bounded timeout.
The parser is defensive: any malformed packet raises DnsError, never anything else. The answer's
records are tried in the order of `netslate.onmachine.srv.rfc2782_order`, the weighted choice the
server's discovery part uses too.
"""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass

from netslate.onmachine.srv import rfc2782_order

TYPE_A, TYPE_AAAA, TYPE_SRV = 1, 28, 33
CLASS_IN = 1
MAX_PACKET = 4096


class DnsError(Exception):
    pass


@dataclass(frozen=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str  # without the trailing dot; "" means "no service here" (RFC 2782 ".")


@dataclass
class Answer:
    rcode: int
    truncated: bool
    srv: list[Srv]
    addresses: dict[str, list[str]]  # name → A/AAAA addresses from answer + additional sections


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise DnsError(f"bad DNS label in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def build_query(name: str, qtype: int, qid: int) -> bytes:
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD set
    return header + encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


def _read_name(data: bytes, off: int) -> tuple[str, int]:
    """Decode a (possibly compressed) name at `off`; returns (name, offset after it)."""
    labels = []
    end = None
    jumps = 0
    while True:
        if off >= len(data):
            raise DnsError("name runs past the packet")
        n = data[off]
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(data):
                raise DnsError("truncated compression pointer")
            if end is None:
                end = off + 2
            off = ((n & 0x3F) << 8) | data[off + 1]
            jumps += 1
            if jumps > 32:
                raise DnsError("compression loop")
            continue
        if n & 0xC0:
            raise DnsError("unsupported label type")
        off += 1
        if n == 0:
            break
        if off + n > len(data):
            raise DnsError("label runs past the packet")
        labels.append(data[off:off + n].decode("ascii", "replace"))
        off += n
        if len(labels) > 127:
            raise DnsError("name too long")
    return ".".join(labels), (end if end is not None else off)


def parse_response(data: bytes, qid: int | None = None) -> Answer:
    if len(data) < 12:
        raise DnsError("packet shorter than a DNS header")
    rid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", data[:12])
    if qid is not None and rid != qid:
        raise DnsError("reply id does not match the query")
    if not flags & 0x8000:
        raise DnsError("not a response")
    off = 12
    for _ in range(qd):
        _, off = _read_name(data, off)
        off += 4
    srv: list[Srv] = []
    addrs: dict[str, list[str]] = {}
    for i in range(an + ns + ar):
        name, off = _read_name(data, off)
        if off + 10 > len(data):
            raise DnsError("record header runs past the packet")
        rtype, rclass, _ttl, rdlen = struct.unpack("!HHIH", data[off:off + 10])
        off += 10
        rdata_off = off
        off += rdlen
        if off > len(data):
            raise DnsError("record data runs past the packet")
        if rclass != CLASS_IN or an <= i < an + ns:  # skip the authority section (SOA etc.)
            continue
        key = name.lower()
        if rtype == TYPE_SRV:
            if rdlen < 7:
                raise DnsError("short SRV record")
            p, w, port = struct.unpack("!HHH", data[rdata_off:rdata_off + 6])
            target, _ = _read_name(data, rdata_off + 6)
            srv.append(Srv(p, w, port, target.lower()))
        elif rtype == TYPE_A and rdlen == 4:
            addrs.setdefault(key, []).append(socket.inet_ntop(socket.AF_INET, data[rdata_off:off]))
        elif rtype == TYPE_AAAA and rdlen == 16:
            a = socket.inet_ntop(socket.AF_INET6, data[rdata_off:off])
            if not a.lower().startswith("fe80:"):  # never use link-local addresses
                addrs.setdefault(key, []).append(a)
    return Answer(flags & 0x000F, bool(flags & 0x0200), srv, addrs)


def query(server: str, port: int, name: str, qtype: int, timeout: float = 2.0) -> Answer:
    """One UDP question to one nameserver; DnsError or OSError on failure."""
    qid = random.randrange(65536)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((server, port))
        s.send(build_query(name, qtype, qid))
        while True:  # ignore stray packets with other ids until the timeout
            data = s.recv(MAX_PACKET)
            try:
                return parse_response(data, qid)
            except DnsError as exc:
                if "id does not match" not in str(exc):
                    raise


def resolv_conf(text: str) -> tuple[list[str], list[str]]:
    """(nameservers, search domains) from resolv.conf text; `domain` counts as a search domain."""
    servers, search = [], []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) < 2:
            continue
        if parts[0] == "nameserver":
            servers.append(parts[1].split("%", 1)[0])
        elif parts[0] in ("search", "domain"):
            search.extend(p.rstrip(".") for p in parts[1:] if p.rstrip("."))
    return servers, search


def lookup_servers(domain: str, nameservers: list[tuple[str, int]], timeout: float = 2.0,
                   rng: random.Random | None = None) -> list[str]:
    """Base URLs from `_netslate._tcp.<domain>`, in RFC 2782 order. Empty when nothing answers."""
    name = f"_netslate._tcp.{domain.rstrip('.')}"
    for ns_host, ns_port in nameservers:
        try:
            ans = query(ns_host, ns_port, name, TYPE_SRV, timeout)
        except (OSError, DnsError):
            continue
        if ans.rcode not in (0, 3):  # SERVFAIL/REFUSED: try the next nameserver
            continue
        urls = []
        for rec in rfc2782_order(ans.srv, rng):
            addrs = ans.addresses.get(rec.target, [])
            if not addrs:
                for qtype in (TYPE_A, TYPE_AAAA):
                    try:
                        extra = query(ns_host, ns_port, rec.target, qtype, timeout)
                        addrs += extra.addresses.get(rec.target, [])
                    except (OSError, DnsError):
                        pass
            for a in addrs:
                host = f"[{a}]" if ":" in a else a
                u = f"http://{host}:{rec.port}"
                if u not in urls:
                    urls.append(u)
        return urls
    return []
