"""Pure core: subnet → site, ordering tiers, RFC 2782 weights, link-local filtering, exports."""

import random
from collections import Counter

import dns.rdatatype
import dns.zone
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netslate.discovery import core
from netslate.discovery.core import ServerInfo, SrvEntry, View


def _view():
    return View(
        sites=["north", "south", "v6"],
        subnets=[("10.0.0.0/8", "south"), ("10.1.0.0/16", "north"), ("10.1.2.0/24", "south"),
                 ("2001:db8:1::/48", "v6"), ("2001:db8:1:2::/64", "north")],
        servers=[
            ServerInfo("n1", "north", ("10.1.0.10",), 8080),
            ServerInfo("n2", "north", ("10.1.0.11", "fe80::11"), 8080, 0, 300),
            ServerInfo("s1", "south", ("10.2.0.10", "2001:db8:2::10", "fe80::10%eth0"), 8443, 1, 100),
            ServerInfo("ll", "south", ("fe80::99",), 8080),  # only link-local: never published
        ],
    )


def test_longest_prefix_wins_v4_and_v6():
    v = _view()
    assert v.site_for("10.1.2.3") == "south"  # /24 beats /16
    assert v.site_for("10.1.3.3") == "north"  # /16 beats /8
    assert v.site_for("10.200.0.1") == "south"
    assert v.site_for("192.0.2.1") is None
    assert v.site_for("2001:db8:1:2::5") == "north"
    assert v.site_for("2001:db8:1:3::5") == "v6"
    assert v.site_for("::ffff:10.1.3.3") == "north"  # from a dual-stack socket
    assert v.site_for("not-an-ip") is None


def test_same_site_first_then_others():
    v = _view()
    north = v.entries("north")
    assert [(e.server.name, e.priority) for e in north] == [("n1", 0), ("n2", 0), ("s1", 11)]
    south = v.entries("south")
    assert [(e.server.name, e.priority) for e in south] == [("s1", 1), ("n1", 10), ("n2", 10)]
    unknown = v.entries(None)
    assert {e.priority for e in unknown if e.server.site == "north"} == {10}
    for _ in range(50):
        order = [e.server.name for e in v.ordered("south", random.Random())]
        assert order[0] == "s1" and sorted(order[1:]) == ["n1", "n2"]


def test_link_local_never_published():
    v = _view()
    names = [s.name for s in v.servers]
    assert "ll" not in names
    for s in v.servers:
        for a in s.addresses:
            assert not a.lower().startswith("fe8"), a
    recs = core.render_bind(v, "t.test") + core.render_dnsmasq(v, "t.test")
    assert "fe80" not in recs
    assert core.publishable(["fe80::1", "FE80::2", "febf::1", "fec0::1", "127.0.0.1", "::", "ff02::1", "junk", "::ffff:10.0.0.1"]) == \
        ["fec0::1", "127.0.0.1", "10.0.0.1"]
    answer = core.locate_answer(v, "10.1.0.5", random.Random(1))
    assert "fe80" not in repr(answer)


def test_rfc2782_weights_statistically():
    # Two servers, weights 300:100 → the heavier one comes first 75% of the time (±3%, > 4 sigma).
    servers = [ServerInfo("a", "x", ("10.0.0.1",), 1, 0, 300), ServerInfo("b", "x", ("10.0.0.2",), 1, 0, 100)]
    entries = View(sites=["x"], servers=servers).entries("x")
    rng = random.Random(12345)
    n = 4000
    firsts = Counter(core.rfc2782_order(entries, rng)[0].server.name for _ in range(n))
    assert abs(firsts["a"] / n - 0.75) < 0.03, firsts
    # Weight 0 within a priority with weighted peers is picked first rarely (RFC 2782: "very small chance").
    zero = [SrvEntry(servers[0], 0, 1000), SrvEntry(servers[1], 0, 0)]
    firsts = Counter(core.rfc2782_order(zero, rng)[0].server.name for _ in range(n))
    assert firsts["b"] / n < 0.01, firsts
    # Priorities are never mixed up by weights.
    mixed = [SrvEntry(servers[0], 5, 65535), SrvEntry(servers[1], 1, 1)]
    assert all(core.rfc2782_order(mixed, rng)[0].server.name == "b" for _ in range(200))


def test_bad_input_is_clear():
    with pytest.raises(core.DiscoveryInputError, match="did you mean 10.1.0.0/24"):
        core.parse_cidr("10.1.0.5/24")
    with pytest.raises(core.DiscoveryInputError, match="not a CIDR"):
        core.parse_cidr("10.1.0.0")
    with pytest.raises(core.DiscoveryInputError, match="not a CIDR"):
        core.parse_cidr("300.1.0.0/8")
    assert str(core.parse_cidr("2001:DB8::/32")) == "2001:db8::/32"
    with pytest.raises(core.DiscoveryInputError):
        core.check_label("bad_name")
    with pytest.raises(core.DiscoveryInputError):
        core.check_domain("exa mple.org")
    assert core.check_domain("Example.ORG.") == "example.org"


def test_bind_export_parses_as_a_zone():
    v = _view()
    text = core.render_bind(v, "t.test", site="south", serial=7)
    zone = dns.zone.from_text(text, origin="t.test.", relativize=False)
    srv = zone.find_rdataset("_netslate._tcp.t.test.", dns.rdatatype.SRV)
    got = sorted((r.priority, r.weight, r.port, r.target.to_text()) for r in srv)
    assert got == [(1, 100, 8443, "s1.t.test."), (10, 100, 8080, "n1.t.test."), (10, 300, 8080, "n2.t.test.")]
    aaaa = zone.find_rdataset("s1.t.test.", dns.rdatatype.AAAA)
    assert [r.address for r in aaaa] == ["2001:db8:2::10"]
    with pytest.raises(KeyError):
        zone.find_rdataset("ll.t.test.", dns.rdatatype.AAAA)
    with pytest.raises(core.DiscoveryInputError, match="no such site"):
        core.render_bind(v, "t.test", site="nowhere")


def test_dnsmasq_export_lines():
    lines = core.render_dnsmasq(_view(), "t.test", site="north").splitlines()
    assert "srv-host=_netslate._tcp.t.test,n1.t.test,8080,0,100" in lines
    assert "srv-host=_netslate._tcp.t.test,s1.t.test,8443,11,100" in lines
    assert "host-record=s1.t.test,10.2.0.10,2001:db8:2::10" in lines
    assert "host-record=n2.t.test,10.1.0.11" in lines


def test_two_live_servers_cannot_share_a_name(ctx):
    from netslate.discovery import store
    from netslate.errors import Conflict

    store.add_site(ctx, "north")
    row = store.register_server(ctx, "alpha", "north", ["10.0.0.1", "fe80::1"], 8080)
    assert row["addresses"] == ["10.0.0.1"]
    store.register_server(ctx, "alpha", "north", ["10.0.0.1"], 8080)  # the same server restarting
    with pytest.raises(Conflict, match="in use by a live server"):
        store.register_server(ctx, "alpha", "north", ["10.0.0.2"], 8080)
    store.mark_stopped(ctx, "alpha")
    assert store.register_server(ctx, "alpha", None, ["10.0.0.2"], 8080)["addresses"] == ["10.0.0.2"]
    with pytest.raises(Exception, match="no such site"):
        store.register_server(ctx, "beta", "nowhere", ["10.0.0.3"], 8080)


@settings(max_examples=300, deadline=None)
@given(
    subnets=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32), st.sampled_from(["a", "b", "c"])), max_size=12),
    addrs=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20),
)
def test_subnet_map_equals_brute_force(subnets, addrs):
    import ipaddress

    nets = {}
    for value, plen, site in subnets:
        net = ipaddress.ip_network((value, plen), strict=False)
        nets.setdefault(str(net), site)  # one site per CIDR, as the store enforces
    m = View(sites=["a", "b", "c"], subnets=list(nets.items()))
    for a in addrs:
        addr = ipaddress.IPv4Address(a)
        matches = [(ipaddress.ip_network(c).prefixlen, s) for c, s in nets.items() if addr in ipaddress.ip_network(c)]
        expected = max(matches)[1] if matches else None
        assert m.site_for(str(addr)) == expected


def test_heartbeat_thread_keeps_row_fresh_and_reregisters(ctx, monkeypatch):
    """The service's heartbeat (interval shortened) refreshes the row, and puts it back after
    an operator removed it while the server runs; stop() makes it not alive at once."""
    import time

    from netslate.discovery import store
    from netslate.discovery.runtime import DiscoveryRuntime

    monkeypatch.setattr(store, "HEARTBEAT_INTERVAL", 0.2)
    store.add_site(ctx, "north")
    svc = DiscoveryRuntime(ctx, {"discovery_register": True, "site": "north", "server_name": "hb",
                                 "advertise": ["10.0.0.9"], "listen": ("0.0.0.0", 8080)})
    svc.start()
    try:
        first = store.list_servers(ctx)[0]["last_heartbeat"]
        time.sleep(0.7)
        assert store.list_servers(ctx)[0]["last_heartbeat"] > first
        store.remove_server(ctx, "hb")
        time.sleep(0.7)
        rows = store.list_servers(ctx)
        assert [r["name"] for r in rows] == ["hb"] and rows[0]["alive"]
        assert svc.health_registration()["ok"]
    finally:
        svc.stop()
    assert not store.list_servers(ctx)[0]["alive"]
    assert store.load_view(ctx).servers == []
