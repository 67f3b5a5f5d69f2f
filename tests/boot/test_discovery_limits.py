"""Limits on anonymous discovery at /boot/ipxe (issue 11 #11): the pure decision, the limiter's
log throttle, and a flood of distinct MACs through a real server on loopback."""

import logging
import time

import httpx
import pytest

from netslate import inventory
from netslate.boot import store
from netslate.boot.discovery_limits import Bucket, DiscoveryLimiter, Limits, admit, discovery_limits, source_key
from nstest import start_server

L = Limits(rate=2.0, burst=5, pending_max=100)


def test_admit_burst_then_rate():
    b, allowed = None, 0
    for _ in range(20):  # 20 requests at the same instant: the burst passes, no more
        v = admit(b, 100.0, 0, L)
        b = v.bucket
        allowed += v.allowed
        assert v.reason in (None, "rate")
    assert allowed == 5
    assert not admit(b, 100.4, 0, L).allowed  # 0.8 token after 0.4 s
    v = admit(b, 100.5, 0, L)  # 1 token after 0.5 s
    assert v.allowed and v.bucket.tokens == pytest.approx(0.0)
    assert admit(Bucket(0.0, 0.0), 1e6, 0, L).bucket.tokens == pytest.approx(4.0)  # refill stops at the burst


def test_admit_pending_cap_first_and_spends_nothing():
    v = admit(Bucket(3.0, 10.0), 10.0, 100, L)
    assert not v.allowed and v.reason == "pending" and v.bucket.tokens == 3.0
    assert admit(Bucket(3.0, 10.0), 10.0, 99, L).allowed
    assert not admit(None, 0.0, 0, Limits(rate=1, burst=1, pending_max=0)).allowed  # cap 0: no discovery at all


def test_admit_clock_going_back_refills_nothing():
    v = admit(Bucket(0.5, 50.0), 40.0, 0, L)
    assert not v.allowed and v.bucket.tokens == 0.5


def test_source_key():
    assert source_key("10.0.0.7") == "10.0.0.7"
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_key("::ffff:10.0.0.7") == "10.0.0.7"
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key(None) == source_key("") == "unknown"


def test_limits_from_options():
    assert discovery_limits({}) == Limits()
    assert discovery_limits({"discovery_rate": "0.5", "discovery_burst": 3, "discovery_pending_max": 7}) == Limits(0.5, 3, 7)
    for bad in ({"discovery_rate": 0}, {"discovery_burst": "x"}, {"discovery_pending_max": -1}):
        with pytest.raises(ValueError, match="discovery limits"):
            discovery_limits(bad)


def test_limiter_counts_pending_and_logs_one_line(caplog):
    now = [0.0]
    calls = []

    def count():
        calls.append(now[0])
        return 8

    lim = DiscoveryLimiter(count, Limits(rate=1.0, burst=100, pending_max=10), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="netslate.boot.discovery"):
        got = [lim.allow(f"10.0.0.{i}") for i in range(50)]
    assert got[:2] == [True, True] and not any(got[2:])  # 8 pending + 2 = the cap of 10
    assert lim.refused_total == {"rate": 0, "pending": 48}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "discovery cap: 10 machines wait for approval (limit 10)" in lines[0]
    assert len(calls) == 1  # the database is asked once, not per request
    # the rate limit of one source, and a second line only after LOG_EVERY seconds
    lim2 = DiscoveryLimiter(lambda: 0, Limits(rate=1.0, burst=2, pending_max=1000), clock=lambda: now[0])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="netslate.boot.discovery"):
        assert [lim2.allow("10.9.9.9") for _ in range(5)] == [True, True, False, False, False]
        assert lim2.allow("10.9.9.8")  # another source has its own bucket
        now[0] = 30.0
        lim2.allow("10.9.9.9"), [lim2.allow("10.9.9.9") for _ in range(40)]
        now[0] = 61.0
        lim2.allow("10.9.9.9"), [lim2.allow("10.9.9.9") for _ in range(40)]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("discovery rate limit: source 10.9.9.9" in x for x in lines), lines
    assert "; 1 unknown machine(s)" in lines[0] and "; 42 unknown machine(s)" in lines[1]  # every refusal counted once


def _q(mac):
    return {"mac": mac, "arch": "x86_64", "platform": "pcbios", "manufacturer": "QEMU", "product": "x"}


def _flood(url: str, local: str, start: int, count: int, deadline: float) -> int:
    """`count` requests with distinct MACs from address `local`; every answer must be a boot script."""
    sent = 0
    with httpx.Client(base_url=url, timeout=10, transport=httpx.HTTPTransport(local_address=local)) as c:
        for i in range(start, start + count):
            if time.monotonic() > deadline:
                break
            r = c.get("/boot/ipxe", params=_q(f"52:54:01:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"))
            assert r.status_code == 200 and r.text.startswith("#!ipxe\n"), (r.status_code, r.text[:200])
            sent += 1
    return sent


def test_flood_of_distinct_macs_is_capped_and_known_machines_boot(ctx, tmp_path, caplog):
    k, i = tmp_path / "k", tmp_path / "i"
    k.write_bytes(b"kernel" * 100)
    i.write_bytes(b"initrd" * 100)
    ctx.library.import_files("desk", kernel=k, initrd=i, tag="stable", warn=lambda m: None)
    store.add_profile(ctx, "desktop", image="desk", ref="stable")
    store.add_rule(ctx, "all", {}, "desktop")
    store.activate_rules(ctx)
    known = "52:54:00:aa:bb:01"
    inventory.add_machine(ctx, name="known1", macs=[known])  # approved at once

    srv = start_server(ctx, {"discovery_rate": 2, "discovery_burst": 10, "discovery_pending_max": 40})
    try:
        with caplog.at_level(logging.WARNING, logger="netslate.boot.discovery"):
            # one source, 200 distinct MACs as fast as it can: the burst plus the refill, no more
            t0 = time.monotonic()
            sent = _flood(srv.url, "127.0.0.1", 0, 200, t0 + 60)
            elapsed = time.monotonic() - t0
            pending = inventory.count_pending(ctx)
            assert sent == 200
            print(f"flood: {sent} requests from one source in {elapsed:.1f} s recorded {pending} machines")
            assert 10 <= pending <= 10 + 2 * elapsed + 1, (pending, elapsed)
            # many sources (127.0.0.2-9): each has a burst, but the pending cap holds for all
            for n in range(2, 10):
                _flood(srv.url, f"127.0.0.{n}", n * 1000, 30, t0 + 120)
            print(f"flood: after 8 more sources × 30 requests, {inventory.count_pending(ctx)} machines pending (cap 40)")
            assert inventory.count_pending(ctx) <= 40 + 1  # the cached count may admit one in flight
            # the known machine still boots its image
            r = httpx.get(f"{srv.url}/boot/ipxe", params=_q(known), timeout=10)
            assert r.status_code == 200 and f"kernel {srv.url}/images/desk/1/kernel" in r.text, r.text
        lines = [r.getMessage() for r in caplog.records if r.name == "netslate.boot.discovery"]
        assert any(x.startswith("discovery rate limit: source 127.0.0.1") for x in lines), lines
        assert any(x.startswith("discovery cap: ") for x in lines), lines
        assert len(lines) <= 4, lines  # one line per limit per minute, not one per request
    finally:
        srv.stop()
