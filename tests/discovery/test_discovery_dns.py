"""The real responder on loopback, asked by `dig` and dnspython from two source addresses
(127.0.0.2 → site north, 127.0.0.3 → site south), plus fuzzing with random bytes."""

import os
import random
import socket
import struct
import subprocess
import time
from collections import Counter

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from netslate.discovery import store
from netslate.discovery.dns import MAX_QUERY, CachedView, DnsServer, Responder

DOMAIN = "fleet.test"
SRV = f"_netslate._tcp.{DOMAIN}"
NORTH, SOUTH = "127.0.0.2", "127.0.0.3"


def _world(ctx, extra_servers: int = 0):
    store.add_site(ctx, "north")
    store.add_site(ctx, "south")
    store.add_site(ctx, "v6")
    store.add_subnet(ctx, "north", "127.0.0.2/32")
    store.add_subnet(ctx, "south", "127.0.0.3/32")
    store.add_subnet(ctx, "v6", "::1/128")
    store.register_server(ctx, "n1", "north", ["127.0.1.1"], 8080, weight=100)
    store.register_server(ctx, "n2", "north", ["127.0.1.2", "fe80::12"], 8081, weight=300)
    store.register_server(ctx, "s1", "south", ["127.0.2.1", "2001:db8::21", "fe80::21"], 8443)
    for i in range(extra_servers):
        store.register_server(ctx, f"x{i:03d}", "south", [f"127.0.3.{i + 1}", f"2001:db8::3:{i + 1}"], 9000)


@pytest.fixture
def responder(ctx):
    _world(ctx)
    view = CachedView(lambda: store.load_view(ctx), refresh=0.2)
    server = DnsServer(Responder(view, DOMAIN), "127.0.0.1", 0).start()
    yield server
    server.stop()
    view.stop()


def dig(port: int, *args: str, source: str = NORTH) -> str:
    out = subprocess.run(["dig", "-b", source, "@127.0.0.1", "-p", str(port), "+time=5", "+tries=1", *args],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def srv_lines(text: str) -> list[tuple[int, int, int, str]]:
    rows = []
    for line in text.strip().splitlines():
        p, w, port, target = line.split()
        rows.append((int(p), int(w), int(port), target))
    return rows


@pytest.mark.timeout(120)
def test_dig_answers_closest_site_first(responder):
    port = responder.port
    for transport in ("+notcp", "+tcp"):
        north = srv_lines(dig(port, "+short", transport, SRV, "SRV", source=NORTH))
        assert {r[3] for r in north[:2]} == {"n1.fleet.test.", "n2.fleet.test."}
        assert [r[0] for r in north] == [0, 0, 10]
        assert north[2] == (10, 100, 8443, "s1.fleet.test.")
        south = srv_lines(dig(port, "+short", transport, SRV, "SRV", source=SOUTH))
        assert south[0] == (0, 100, 8443, "s1.fleet.test.")
        assert [r[0] for r in south] == [0, 10, 10]
    # The full answer is authoritative and carries the targets' addresses, never link-local.
    full = dig(port, SRV, "SRV", source=SOUTH)
    assert "status: NOERROR" in full and " aa" in full.split("flags:")[1].split(";")[0]
    additional = full.split("ADDITIONAL SECTION:")[1]
    assert "127.0.2.1" in additional and "2001:db8::21" in additional and "127.0.1.2" in additional
    assert "fe80" not in full.lower()
    # A/AAAA for targets; link-local filtered; unknown names NXDOMAIN; foreign names REFUSED.
    assert dig(port, "+short", "s1.fleet.test", "AAAA").split() == ["2001:db8::21"]
    assert dig(port, "+short", "n2.fleet.test", "A").split() == ["127.0.1.2"]
    assert dig(port, "+short", "n2.fleet.test", "AAAA").split() == []
    assert "status: NXDOMAIN" in dig(port, "nope.fleet.test", "A")
    assert "status: REFUSED" in dig(port, "example.com", "A")
    assert "status: NOERROR" in dig(port, "fleet.test", "SOA")


@pytest.mark.timeout(120)
def test_dnspython_two_sources_and_weights(responder):
    port = responder.port
    q = dns.message.make_query(SRV, "SRV")
    for source, first_site_targets in ((NORTH, {"n1.fleet.test.", "n2.fleet.test."}), (SOUTH, {"s1.fleet.test."})):
        r = dns.query.udp(q, "127.0.0.1", port=port, source=source, timeout=5)
        assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
        rrs = list(r.answer[0]) if len(r.answer) == 1 else None
        # dnspython merges records into one rrset; the wire order is kept in the rrset.
        assert rrs is not None and len(rrs) == 3
        top = min(x.priority for x in rrs)
        assert {x.target.to_text() for x in rrs if x.priority == top} == first_site_targets
        r = dns.query.tcp(q, "127.0.0.1", port=port, source=source, timeout=5)
        assert {x.target.to_text() for x in r.answer[0] if x.priority == 0} == first_site_targets
    # RFC 2782 weights on the wire: n2 (300) comes before n1 (100) in ~75% of the answers.
    n = 600
    firsts = Counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((NORTH, 0))
        s.settimeout(5)
        for i in range(n):
            q.id = i
            s.sendto(q.to_wire(), ("127.0.0.1", port))
            r = dns.message.from_wire(s.recv(4096))
            firsts[next(iter(r.answer[0])).target.to_text()] += 1
    share = firsts["n2.fleet.test."] / n
    assert 0.68 < share < 0.82, firsts


@pytest.mark.timeout(120)
def test_bad_packets_never_crash(responder):
    port = responder.port
    rng = random.Random(4)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        s.connect(("127.0.0.1", port))
        # A header with a body that does not parse: FORMERR with the same id.
        bad = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\x3fabc"
        s.send(bad)
        r = s.recv(4096)
        assert r[:2] == b"\xbe\xef" and r[3] & 0x0F == dns.rcode.FORMERR and r[2] & 0x80
        # Two questions: FORMERR.
        two = dns.message.make_query(SRV, "SRV")
        two.question.append(dns.message.make_query("n1.fleet.test", "A").question[0])
        s.send(two.to_wire())
        assert dns.message.from_wire(s.recv(4096), question_only=True).rcode() == dns.rcode.FORMERR
        # Oversized and tiny packets are dropped without an answer.
        for blob in (os.urandom(MAX_QUERY + 1), b"\x01\x02\x03"):
            s.send(blob)
            with pytest.raises(socket.timeout):
                s.recv(4096)
        # 3000 random packets, many with a valid-looking header.
        s.settimeout(0)
        for i in range(3000):
            size = rng.randint(0, 600)
            blob = bytes(rng.getrandbits(8) for _ in range(size))
            if i % 2 and size >= 12:
                blob = struct.pack("!HHHHHH", i, 0x0100, 1, rng.randint(0, 3), rng.randint(0, 3), rng.randint(0, 3)) + blob[12:]
            s.send(blob)
            try:
                while True:
                    s.recv(4096)
            except (BlockingIOError, ConnectionRefusedError):
                pass
    # Garbage over TCP too: a huge length prefix and a truncated message.
    for payload in (b"\xff\xff" + os.urandom(100), b"\x00\x40" + os.urandom(10), os.urandom(500)):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as t:
            t.sendall(payload)
            t.shutdown(socket.SHUT_WR)
            t.settimeout(5)
            try:
                while t.recv(4096):
                    pass
            except (ConnectionResetError, socket.timeout):
                pass
    time.sleep(0.2)
    assert responder.running()
    stats = responder.responder.stats
    assert stats["formerr"] > 0 and stats["dropped"] > 0 and stats["servfail"] == 0, stats
    # Still answering correctly afterwards.
    assert srv_lines(dig(port, "+short", SRV, "SRV", source=SOUTH))[0][3] == "s1.fleet.test."


@pytest.mark.timeout(120)
def test_big_answer_truncates_over_udp_and_dig_retries_tcp(ctx):
    _world(ctx, extra_servers=40)
    view = CachedView(lambda: store.load_view(ctx), refresh=5)
    server = DnsServer(Responder(view, DOMAIN), "127.0.0.1", 0).start()
    try:
        q = dns.message.make_query(SRV, "SRV", use_edns=False)
        r = dns.query.udp(q, "127.0.0.1", port=server.port, source=SOUTH, timeout=5)
        assert r.flags & dns.flags.TC
        r = dns.query.tcp(q, "127.0.0.1", port=server.port, source=SOUTH, timeout=5)
        assert len(r.answer[0]) == 43 and not r.flags & dns.flags.TC
        out = dig(server.port, "+short", "+noedns", SRV, "SRV", source=SOUTH)
        assert len(srv_lines(out)) == 43  # dig fell back to TCP by itself
    finally:
        server.stop()
        view.stop()


@pytest.mark.timeout(120)
def test_view_follows_the_store(responder, ctx):
    port = responder.port
    assert "127.0.0.9" not in dig(port, "+short", SRV, "SRV", source=SOUTH)
    store.register_server(ctx, "s2", "south", ["127.0.0.9"], 8080, priority=0)
    deadline = time.time() + 5
    while time.time() < deadline:
        rows = srv_lines(dig(port, "+short", SRV, "SRV", source=SOUTH))
        if any(r[3] == "s2.fleet.test." for r in rows):
            break
        time.sleep(0.2)
    assert {r[3] for r in rows if r[0] == 0} == {"s1.fleet.test.", "s2.fleet.test."}
    # A server that stops heartbeating drops out.
    store.mark_stopped(ctx, "s2")
    time.sleep(0.6)
    assert "s2.fleet.test." not in dig(port, "+short", SRV, "SRV", source=SOUTH)


@pytest.mark.timeout(60)
def test_answer_cache_keeps_ids_and_sites_apart(responder):
    """Identical query bytes from different sites must get their own priorities, with their own id."""
    port = responder.port
    q = dns.message.make_query(SRV, "SRV", use_edns=False)
    expect = {NORTH: {"n1.fleet.test.": 0, "n2.fleet.test.": 0, "s1.fleet.test.": 10},
              "127.0.0.4": {"n1.fleet.test.": 10, "n2.fleet.test.": 10, "s1.fleet.test.": 10},
              SOUTH: {"n1.fleet.test.": 10, "n2.fleet.test.": 10, "s1.fleet.test.": 0}}
    socks = {}
    try:
        for src in expect:
            socks[src] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks[src].bind((src, 0))
            socks[src].settimeout(5)
        for i in range(150):
            src = list(expect)[i % 3]
            q.id = 1000 + i
            socks[src].sendto(q.to_wire(), ("127.0.0.1", port))
            r = dns.message.from_wire(socks[src].recv(4096))
            assert r.id == 1000 + i
            assert {x.target.to_text(): x.priority for x in r.answer[0]} == expect[src]
    finally:
        for s in socks.values():
            s.close()
    # Query case is echoed (0x20 randomisation by resolvers) even when answers come from the cache.
    rng = random.Random(3)
    for i in range(40):
        for qtype in ("SRV", "A"):
            plain = SRV if qtype == "SRV" else f"n1.{DOMAIN}"
            name = "".join(c.upper() if rng.random() < 0.5 else c for c in plain) if i else plain.upper()
            r = dns.query.udp(dns.message.make_query(name, qtype), "127.0.0.1", port=port, source=NORTH, timeout=5)
            assert r.question[0].name.to_text() == name + "."
            if qtype == "SRV":
                assert {x.target.to_text(): x.priority for x in r.answer[0]} == expect[NORTH]
                assert {rr.name.to_text().lower() for rr in r.additional} >= {"n1.fleet.test.", "s1.fleet.test."}
            else:
                assert [x.address for x in r.answer[0]] == ["127.0.1.1"]


@pytest.mark.timeout(60)
def test_edns_client_subnet_decides_the_site(responder):
    """A resolver at 127.0.0.2 (north) forwarding for a client in 127.0.0.3 (south) via ECS."""
    import dns.edns

    for ecs_addr, first in (("127.0.0.3", "s1.fleet.test."), ("127.0.0.2", None)):
        q = dns.message.make_query(SRV, "SRV", use_edns=0, options=[dns.edns.ECSOption(ecs_addr, 32)])
        r = dns.query.udp(q, "127.0.0.1", port=responder.port, source=NORTH, timeout=5)
        zero = {x.target.to_text() for x in r.answer[0] if x.priority == 0}
        assert zero == ({first} if first else {"n1.fleet.test.", "n2.fleet.test."})


def test_port_0_picks_again_when_the_udp_ports_number_is_taken_for_tcp(ctx, monkeypatch):
    """Port 0: the kernel picks a free UDP port; the same number may be in use for TCP by someone
    else (a CI run: another worker's listener). Then the server picks again instead of failing."""
    import netslate.discovery.dns as dnsmod

    _world(ctx)
    real_socket, blockers, taken = dnsmod._socket, [], []

    def socket_with_tcp_taken_once(host, port, kind, reuse_port=False):
        if kind == socket.SOCK_STREAM and not blockers:  # someone else listens on that TCP port first
            blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            blocker.bind((host, port))
            blocker.listen(1)
            blockers.append(blocker)
            taken.append(port)
        return real_socket(host, port, kind, reuse_port)

    monkeypatch.setattr(dnsmod, "_socket", socket_with_tcp_taken_once)
    view = CachedView(lambda: store.load_view(ctx), refresh=0.2)
    server = DnsServer(Responder(view, DOMAIN), "127.0.0.1", 0).start()
    try:
        assert taken and server.port != taken[0]
        assert srv_lines(dig(server.port, "+short", "+tcp", "SRV", SRV))  # TCP answers on the new port
        assert srv_lines(dig(server.port, "+short", "SRV", SRV))  # and UDP
    finally:
        server.stop()
        view.stop()
        for b in blockers:
            b.close()
    with pytest.raises(OSError):  # a fixed port in use still fails at start, loudly
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        try:
            DnsServer(Responder(view, DOMAIN), "127.0.0.1", busy.getsockname()[1]).start()
        finally:
            busy.close()
