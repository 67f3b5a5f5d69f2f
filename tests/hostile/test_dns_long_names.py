"""DNS log amplification (issue 11 #9): a query whose name is longer than 255 octets gets FORMERR
from the real responder on loopback, and the log gets at most one line per rate window."""

from __future__ import annotations

import logging
import socket
import struct
import time

from netslate.discovery import dns as dns_module, store
from netslate.discovery.dns import CachedView, DnsServer, Responder

LOG_WINDOW = getattr(dns_module, "LOG_WINDOW", 10.0)  # seconds per log line at most

DOMAIN = "fleet.test"
PACKETS = 200


def long_query(qid: int, labels: int = 5) -> bytes:
    """A ~330-byte query: five 63-octet labels under the domain, > 255 octets in all."""
    name = b"".join(bytes([63]) + b"a" * 63 for _ in range(labels))
    name += b"".join(bytes([len(p)]) + p.encode() for p in DOMAIN.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 33, 1)


def test_long_names_get_formerr_and_one_log_line(ctx, caplog):
    store.add_site(ctx, "north")
    store.register_server(ctx, "n1", "north", ["127.0.1.1"], 8080)
    view = CachedView(lambda: store.load_view(ctx), refresh=0.5)
    responder = Responder(view, DOMAIN)
    server = DnsServer(responder, "127.0.0.1", 0).start()
    caplog.set_level(logging.INFO, logger="netslate.discovery.dns")
    rcodes = []
    started = time.monotonic()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            for i in range(PACKETS):
                packet = long_query(i)
                assert len(packet) > 300
                s.sendto(packet, ("127.0.0.1", server.port))
                answer, _ = s.recvfrom(4096)
                assert struct.unpack("!H", answer[:2])[0] == i
                rcodes.append(answer[3] & 0x0F)
    finally:
        server.stop()
        view.stop()
    elapsed = time.monotonic() - started
    assert set(rcodes) == {1}, f"rcodes {sorted(set(rcodes))} (1 = FORMERR, 2 = SERVFAIL)"
    assert responder.stats["formerr"] == PACKETS and responder.stats["servfail"] == 0
    lines = [r for r in caplog.records if r.name == "netslate.discovery.dns"]
    windows = int(elapsed // LOG_WINDOW) + 1
    assert 1 <= len(lines) <= windows, [r.getMessage() for r in lines]
    assert all("Traceback" not in r.getMessage() and r.exc_info is None for r in lines)
    assert all(len(r.getMessage()) < 300 for r in lines)
