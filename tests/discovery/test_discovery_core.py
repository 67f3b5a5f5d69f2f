"""Pure core: subnet → site, ordering tiers, RFC 2782 weights, link-local filtering, exports."""

import random
from collections import Counter

import dns.rdatatype
import dns.zone
import pytest

from netslate.discovery import core
from netslate.discovery.core import Entry, ServerInfo, View


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
    zero = [Entry(servers[0], 0, 1000), Entry(servers[1], 0, 0)]
    firsts = Counter(core.rfc2782_order(zero, rng)[0].server.name for _ in range(n))
    assert firsts["b"] / n < 0.01, firsts
    # Priorities are never mixed up by weights.
    mixed = [Entry(servers[0], 5, 65535), Entry(servers[1], 1, 1)]
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
