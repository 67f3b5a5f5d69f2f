"""Issue 15 §4: SRV and locate list the client's branch servers first, central's second, other
branches' last (RFC 2782 priorities); without branch servers the order is what it always was.
Two branch sites and central, servers registered in the store, no VMs: the locate route of a real
server on loopback and the DNS responder answer from the same View."""

import datetime as dt

import dns.message
import dns.rdatatype
import httpx

from netslate.discovery import store
from netslate.discovery.dns import Responder
from netslate.store.db import utcnow
from netslate.store.outbox import ServerStatus


DOMAIN = "sites.example"


def _world(ctx):
    for site, net in (("hq", "10.0.0.0/16"), ("b1", "10.1.0.0/16"), ("b2", "10.2.0.0/16")):
        store.add_site(ctx, site, actor="local:test")
        store.add_subnet(ctx, site, net, actor="local:test")
    store.register_server(ctx, "c1", "hq", ["10.0.0.5"], 8080)
    store.register_server(ctx, "c2", "hq", ["10.0.0.6"], 8080, priority=1)
    store.register_server(ctx, "s1", "b1", ["10.1.0.5"], 8080)
    store.register_server(ctx, "s2", "b2", ["10.2.0.5"], 8080)


def _branch(ctx, *names, age: float = 0.0):
    """What a branch server's outbox Replayer writes at central every 5 s (its standby's state)."""
    with ctx.db.session() as s:
        for name in names:
            s.merge(ServerStatus(name=name, read_only=False, lag_seconds=0.0, outbox_pending=0,
                                 updated_at=utcnow() - dt.timedelta(seconds=age)))


def _locate(url: str, address: str) -> list[tuple[str, int]]:
    """(name, priority) in the answer's order; servers of one priority come in weighted-random
    order (RFC 2782), so ties are listed by name here after checking the priorities never drop."""
    r = httpx.get(f"{url}/api/v1/locate", params={"address": address}, timeout=30)
    assert r.status_code == 200, r.text
    got = [(s["name"], s["priority"]) for s in r.json()["servers"]]
    assert [p for _, p in got] == sorted(p for _, p in got), got
    return sorted(got, key=lambda x: (x[1], x[0]))


def _srv(ctx, client: str) -> list[tuple[str, int]]:
    responder = Responder(lambda: store.load_view(ctx), DOMAIN, cache=False)
    reply = dns.message.from_wire(responder.handle(dns.message.make_query(f"_netslate._tcp.{DOMAIN}", "SRV").to_wire(), client))
    rrs = [rr for rrset in reply.answer if rrset.rdtype == dns.rdatatype.SRV for rr in rrset]
    return sorted(((str(rr.target).split(".")[0], rr.priority) for rr in rrs), key=lambda x: (x[1], x[0]))


def test_branch_first_central_second_other_branches_last(ctx, live_server):
    _world(ctx)
    # no branch servers (one database, several sites): same site first, everything else second
    assert _locate(live_server.url, "10.1.7.7") == [("s1", 0), ("c1", 10), ("s2", 10), ("c2", 11)]
    # s1 and s2 are branch servers (they report their standby at central)
    _branch(ctx, "s1", "s2")
    for client, expected in (
        ("10.1.7.7", [("s1", 0), ("c1", 10), ("c2", 11), ("s2", 20)]),  # at branch b1
        ("10.2.7.7", [("s2", 0), ("c1", 10), ("c2", 11), ("s1", 20)]),  # at branch b2
        ("10.0.7.7", [("c1", 0), ("c2", 1), ("s1", 20), ("s2", 20)]),  # at central
        ("192.0.2.9", [("c1", 10), ("c2", 11), ("s1", 20), ("s2", 20)]),  # unknown subnet: central first
    ):
        assert _locate(live_server.url, client) == expected, client
        assert _srv(ctx, client) == expected, client
    # a branch server whose status report went stale with its heartbeat is left out altogether;
    # one whose status alone is stale (it runs on the primary now: promoted) ranks as central
    _branch(ctx, "s2", age=600)
    assert _locate(live_server.url, "10.1.7.7") == [("s1", 0), ("c1", 10), ("s2", 10), ("c2", 11)]


def _central_world(ctx):
    ctx.init()
    _world(ctx)


def _branch_view_during_cut(ctx, lab_cut):
    import time

    from sqlalchemy import func, select

    from netslate.discovery import core
    from netslate.discovery.models import DiscoveryServer

    ctx.init()
    lab_cut()
    assert ctx.db.probe_primary() is False and ctx.db.down_since is not None
    time.sleep(3)
    with ctx.db.read_session() as s:  # the standby: every heartbeat it has is older than 2 s now
        newest = s.scalar(select(func.max(DiscoveryServer.last_heartbeat)))
    assert (utcnow() - newest).total_seconds() > 2
    view = store.load_view(ctx, stale_after=2)
    return sorted(s.name for s in view.servers), [e["name"] for e in core.locate_answer(view, "10.1.7.7")["servers"]][:1]


def test_a_branch_cut_off_from_central_still_lists_servers(tmp_path):
    """During a WAN cut the branch's standby stops receiving heartbeats; liveness is judged as of
    the standby's last replayed transaction, so the branch keeps answering with itself first."""
    from netslate.context import Context
    from netslate.sites.lab import NsWorker, SitesLab

    lab = SitesLab().start()
    central, branch = NsWorker(lab.central), NsWorker(lab.branch)
    try:
        central.call(_central_world, Context(tmp_path / "central", lab.primary_url_central))
        lab.wait_replayed()
        bctx = Context(tmp_path / "branch", lab.primary_url_branch, lab.standby_url_branch)
        names, first = branch.call(_branch_view_during_cut, bctx, lab.cut)
        assert names == ["c1", "c2", "s1", "s2"]
        assert first == ["s1"]
    finally:
        lab.restore()
        central.close()
        branch.close()
        lab.stop()
