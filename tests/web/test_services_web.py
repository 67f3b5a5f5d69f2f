"""The service operations the dashboard added: a paginated, filtered, sorted machine list and the
audit log with filters — the same answers locally and over HTTP (the generated client)."""

import pytest

from netslate.composition import Parts
from netslate.errors import UserError
from netslate.services import Services
from netslate.services.framework import Caller, Forbidden
from netslate.services.machines import LabelChange, MachineCreate

ADMIN = Caller("local", "tester", "admin")


@pytest.fixture
def local(ctx):
    sv = Services.local(Parts(ctx), ADMIN)
    for i in range(30):
        sv.machines.add(MachineCreate(macs=[f"52:54:00:00:00:{i:02x}"], name=f"pc{i:02d}",
                                      labels={"room": "b12" if i % 2 else "a1"}, group=f"/site-{i % 3}/c1/p{i % 2}/lab"))
    return sv


@pytest.fixture
def remote(local, live_server):
    from netslate.cli.remote import ApiClient

    return Services.remote(ApiClient(live_server.url, live_server.admin_token))


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_search_filters_sorts_and_pages(mode, request):
    sv = request.getfixturevalue(mode)
    page = sv.machines.search(site="site-1", sort="-name", limit=4)
    assert page.total == 10 and [m.name for m in page.machines] == ["pc28", "pc25", "pc22", "pc19"]
    nxt = sv.machines.search(site="site-1", sort="-name", limit=4, offset=4)
    assert [m.name for m in nxt.machines] == ["pc16", "pc13", "pc10", "pc07"]
    assert sv.machines.search(label="room=b12", site="site-0").total == 5
    assert sv.machines.search(label="room").total == 30
    assert sv.machines.search(pool="p0", cluster="c1").total == 15
    assert sv.machines.search(cluster="p0").total == 0  # segments are exact: p0 is a pool, not a cluster
    assert sv.machines.search(folder="/site-2/c1").total == 10
    assert sv.machines.search(folder="/site-2/c").total == 0  # a folder, not a text prefix
    assert [m.name for m in sv.machines.search(mac="52-54-00-00-00-1A").machines] == ["pc26"]
    assert sv.machines.search(mac="00:1").total == 15  # partial, any notation: ...00:01 and ...00:10 to 00:1d
    assert sv.machines.search(text="pc2").total == 10
    assert sv.machines.search(state="approved").total == 30
    assert sv.machines.search(state="offline").total == 0
    with pytest.raises(UserError, match="unknown sort"):
        sv.machines.search(sort="macs; drop table")
    with pytest.raises(UserError, match="unknown state"):
        sv.machines.search(state="bogus")
    with pytest.raises(UserError, match="limit"):
        sv.machines.search(limit=100000)


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_audit_list_with_filters(mode, request, ctx):
    sv = request.getfixturevalue(mode)
    local = request.getfixturevalue("local")
    local.machines.approve("pc03")
    local.machines.label("pc04", LabelChange(set={"x": "1"}))
    everything = sv.audit.list(limit=500)
    assert everything.total >= 32 and everything.entries[0].id > everything.entries[-1].id  # newest first
    approvals = sv.audit.list(action="machine.approve")
    assert approvals.total == 1 and approvals.entries[0].target.startswith("machine:")
    assert sv.audit.list(action="machine.").total == 32
    assert sv.audit.list(actor="local:").total >= 32 and sv.audit.list(actor="user:").total == 0
    assert sv.audit.list(action="machine.add", limit=5, offset=5).entries[0].id < sv.audit.list(action="machine.add", limit=5).entries[-1].id
    with pytest.raises(UserError, match="ISO time"):
        sv.audit.list(since="yesterday")


def test_audit_needs_a_role(ctx):
    with pytest.raises(Forbidden):
        from netslate.services.framework import ANONYMOUS, authorize, operations
        from netslate.services.audit import AuditService

        authorize(ANONYMOUS, operations(AuditService)["list"])
