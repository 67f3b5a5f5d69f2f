"""IP pools for `network.mode: pool`: the pure allocator and validation, the real CLI, leases in
real signed bundles over HTTP (stable, unique under concurrency, released, exhaustion), and the
agent applying a leased address into a temporary root."""

import base64
import ipaddress
import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from netslate.agent import apply
from netslate.config import generations, ippools, ipranges, resolution, workingcopy
from netslate.config.models import IpLease
from netslate.crypto.envelope import open_envelope
from netslate.errors import UserError
from netslate.store.models import Machine

pytestmark = pytest.mark.timeout(180)


# ---------------------------------------------------------------- pure core


def test_lowest_free_walks_gaps_and_skips():
    assert ipranges.lowest_free(10, 20, []) == 10
    assert ipranges.lowest_free(10, 20, [10, 11, 13]) == 12
    assert ipranges.lowest_free(10, 20, [10, 11], skip=[12]) == 13
    assert ipranges.lowest_free(10, 12, [10, 11, 12]) is None
    assert ipranges.lowest_free(10, 12, [5, 10, 99], skip=[11]) == 12  # out-of-range values are ignored
    assert ipranges.lowest_free(10, 10, [], skip=[10]) is None


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 50), st.integers(0, 40), st.sets(st.integers(0, 100), max_size=60), st.sets(st.integers(0, 100), max_size=5))
def test_lowest_free_property(first, span, used, skip):
    last = first + span
    got = ipranges.lowest_free(first, last, used, skip)
    free = [n for n in range(first, last + 1) if n not in used and n not in skip]
    assert got == (free[0] if free else None)


def test_parse_pool_validation():
    p = ipranges.parse_pool("lab", "10.0.5.10-10.0.5.200", 24, "10.0.5.1", ["10.0.5.2", "10.0.5.3"])
    assert str(p.network) == "10.0.5.0/24" and p.size == 191 and p.dns == ("10.0.5.2", "10.0.5.3")
    # gateway inside the range is never leased and not counted
    g = ipranges.parse_pool("g", "10.0.6.1-10.0.6.3", 24, "10.0.6.1")
    assert g.size == 2 and ipranges.choose(g, []) == "10.0.6.2" and ipranges.choose(g, ["10.0.6.2", "10.0.6.3"]) is None
    bad = [
        (("bad name!", "10.0.0.10-10.0.0.20", 24), "invalid pool name"),
        (("x", "10.0.0.10", 24), "FIRST-LAST"),
        (("x", "10.0.0.10-nope", 24), "not an IP address"),
        (("x", "10.0.0.20-10.0.0.10", 24), "is after"),
        (("x", "10.0.0.10-10.0.1.10", 24), "does not fit"),
        (("x", "10.0.0.0-10.0.0.10", 24), "network or broadcast"),
        (("x", "10.0.0.10-10.0.0.255", 24), "network or broadcast"),
        (("x", "10.0.0.10-10.0.0.20", 33), "prefix must be"),
        (("x", "10.0.0.10-fd00::1", 24), "mixes"),
        (("x", "10.0.0.10-10.0.0.20", 24, "10.0.1.1"), "outside the subnet"),
        (("x", "10.0.0.10-10.0.0.20", 24, "10.0.0.255"), "broadcast"),
        (("x", "10.0.0.10-10.0.0.20", 24, None, ["dns.example"]), "not an IP address"),
    ]
    for args, msg in bad:
        with pytest.raises(UserError, match=msg):
            ipranges.parse_pool(*args)
    v6 = ipranges.parse_pool("v6", "fd00::10-fd00::ff", 64, "fd00::1")
    assert ipranges.choose(v6, ["fd00::10"]) == "fd00::11"


def test_overlap():
    a = ipranges.parse_pool("a", "10.0.0.10-10.0.0.20", 24)
    assert ipranges.overlaps(a, ipranges.parse_pool("b", "10.0.0.20-10.0.0.30", 24))
    assert ipranges.overlaps(a, ipranges.parse_pool("b", "10.0.0.1-10.0.0.250", 24))
    assert not ipranges.overlaps(a, ipranges.parse_pool("b", "10.0.0.21-10.0.0.30", 24))
    assert not ipranges.overlaps(a, ipranges.parse_pool("b", "fd00::10-fd00::20", 64))


def test_agent_network_files_for_a_lease():
    lease = {"pool": "lab", "address": "10.0.5.10", "prefix": 24, "cidr": "10.0.5.10/24", "gateway": "10.0.5.1", "dns": ["10.0.5.2"]}
    files = apply.network_files({"mode": "pool", "pool": "lab", "lease": lease}, None)
    assert list(files) == ["10-netslate-default.network"]
    text = files["10-netslate-default.network"]
    assert "Type=ether" in text and "DHCP=no" in text and "Address=10.0.5.10/24" in text
    assert "Gateway=10.0.5.1" in text and "DNS=10.0.5.2" in text
    # named interfaces: the first one without its own addresses gets the lease; the document's DNS wins
    net = {"mode": "pool", "pool": "lab", "lease": lease,
           "interfaces": {"eth1": {"dhcp": True}, "eth0": {"mtu": 9000}, "a0": {"addresses": ["192.168.9.9/24"]}}}
    files = apply.network_files(net, {"servers": ["9.9.9.9"]})
    eth0 = files["10-netslate-eth0.network"]
    assert "Address=10.0.5.10/24" in eth0 and "MTUBytes=9000" in eth0 and "DNS=9.9.9.9" in eth0 and "DNS=10.0.5.2" not in eth0
    assert "Address=10.0.5.10/24" not in files["10-netslate-eth1.network"] and "DHCP=yes" in files["10-netslate-eth1.network"]
    assert "Address=192.168.9.9/24" in files["10-netslate-a0.network"]


def test_agent_pool_without_lease_is_a_module_error(tmp_path):
    doc = {"network": {"mode": "pool", "pool": "lab", "lease_error": "IP pool 'lab' is exhausted"}, "timezone": None}
    results, _ = apply.apply_all(doc, apply.Ctx(tmp_path))
    assert results["network"].startswith("error:") and "exhausted" in results["network"]
    assert not (tmp_path / "etc/systemd/network").exists()


# ---------------------------------------------------------------- database edge


def _machines(ctx, n, path="/lab", prefix="pc"):
    ids = []
    with ctx.db.session() as s:
        for i in range(n):
            m = Machine(name=f"{prefix}{i}", tree_path=path, labels={}, status={})
            s.add(m)
            s.flush()
            ids.append(m.id)
    return ids


def test_constraint_refuses_a_taken_address_and_allocation_retries(ctx, monkeypatch):
    ippools.add_pool(ctx, "lab", "10.0.5.10-10.0.5.20", 24, None, [], "t")
    a, b = _machines(ctx, 2)
    assert ippools.lease_for(ctx, a, "lab")["address"] == "10.0.5.10"
    # the database itself refuses a second machine on one address
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError):
        with ctx.db.session() as s:
            pool_id = s.scalar(select(IpLease.pool_id))
            s.add(IpLease(pool_id=pool_id, machine_id=b, address="10.0.5.10"))
    # a racing writer's view (simulated: the first choice is an address already taken) → retry
    real, calls = ippools.choose, []

    def stale_choice(spec, used):
        calls.append(1)
        return "10.0.5.10" if len(calls) == 1 else real(spec, used)

    monkeypatch.setattr(ippools, "choose", stale_choice)
    assert ippools.lease_for(ctx, b, "lab")["address"] == "10.0.5.11" and len(calls) == 2


def test_concurrent_processes_never_share_an_address(ctx, data_dir):
    ippools.add_pool(ctx, "lab", "10.0.5.10-10.0.5.29", 24, None, [], "t")
    ids = _machines(ctx, 24)
    code = (
        "import json, sys\n"
        "from netslate.context import Context\n"
        "from netslate.config import ippools\n"
        "ctx = Context(sys.argv[1]).init()\n"
        "out = {}\n"
        "for mid in json.loads(sys.argv[2]):\n"
        "    try:\n"
        "        out[mid] = ippools.lease_for(ctx, mid, 'lab')['address']\n"
        "    except ippools.PoolError as exc:\n"
        "        out[mid] = 'ERR ' + str(exc)\n"
        "print(json.dumps(out))\n"
    )
    # 3 processes × 2 threads-worth of work each, every machine asked for twice (stability under races)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(data_dir), json.dumps(ids[k::3] + ids[::-1][k::3])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(3)]
    results = {}
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        for mid, addr in json.loads(out).items():
            assert results.get(int(mid), addr) == addr or addr.startswith("ERR") or results[int(mid)].startswith("ERR")
            results.setdefault(int(mid), addr)
    with ctx.db.session() as s:
        rows = s.execute(select(IpLease.machine_id, IpLease.address)).all()
    addrs = [a for _, a in rows]
    assert len(rows) == 20 and len(set(addrs)) == 20  # the pool is full, each address once
    assert {a for a in addrs} == {f"10.0.5.{n}" for n in range(10, 30)}
    errors = [v for v in results.values() if v.startswith("ERR")]
    assert len([mid for mid in ids if mid not in {m for m, _ in rows}]) == 4
    assert errors and all("exhausted" in e for e in errors)
    # every process saw the same address for the same machine as the database holds
    held = dict(rows)
    for mid, addr in results.items():
        if not addr.startswith("ERR"):
            assert held[mid] == addr


# ---------------------------------------------------------------- CLI


def test_cli_ippool_commands(cli, ctx):
    r = cli("config", "ippool", "add", "lab", "--range", "10.0.5.10-10.0.5.20", "--prefix", "24", "--gateway", "10.0.5.1",
            "--dns", "10.0.5.2", "--dns", "10.0.5.3", "--json")
    assert r.code == 0, r.stderr
    assert r.json()["subnet"] == "10.0.5.0/24" and r.json()["size"] == 11 and r.json()["dns"] == ["10.0.5.2", "10.0.5.3"]
    # overlapping, gateway outside, duplicate: one clear line, exit 2, nothing written
    for args, msg in [
        (("other", "--range", "10.0.5.20-10.0.5.30", "--prefix", "24"), "overlaps pool 'lab'"),
        (("other", "--range", "10.0.6.10-10.0.6.30", "--prefix", "24", "--gateway", "10.0.7.1"), "outside the subnet"),
        (("lab", "--range", "10.0.8.10-10.0.8.30", "--prefix", "24"), "already exists"),
    ]:
        r = cli("config", "ippool", "add", *args)
        assert r.code == 2 and msg in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert cli("config", "ippool", "add", "v6", "--range", "fd00::10-fd00::ff", "--prefix", "64").code == 0
    rows = cli("config", "ippool", "list", "--json").json()
    assert [p["name"] for p in rows] == ["lab", "v6"] and rows[0]["leased"] == 0 and rows[0]["free"] == 11
    assert "lab" in cli("config", "ippool", "list").stdout
    (mid,) = _machines(ctx, 1)
    assert ippools.lease_for(ctx, mid, "lab")["address"] == "10.0.5.10"
    workingcopy.put_node(ctx, "/lab", {"network": {"mode": "pool", "pool": "lab"}}, "t")
    generations.publish(ctx, "pool", "t")  # the sweep after publish keeps pc0's lease: it still resolves to 'lab'
    r = cli("config", "explain", "pc0")
    assert r.code == 0 and "IP pool lab: 10.0.5.10/24" in r.stdout, r.stdout + r.stderr
    show = cli("config", "ippool", "show", "lab", "--json").json()
    assert show["leases"] == [{"address": "10.0.5.10", "machine_id": mid, "machine": "pc0", "leased_at": show["leases"][0]["leased_at"]}]
    r = cli("config", "ippool", "rm", "lab")
    assert r.code == 2 and "still has 1 lease" in r.stderr
    r = cli("config", "ippool", "release", "lab", "pc0", "--json")
    assert r.code == 0 and r.json()["address"] == "10.0.5.10"
    assert cli("config", "ippool", "release", "lab", "pc0").code == 2
    assert cli("config", "ippool", "show", "nope").code == 2
    assert cli("config", "ippool", "rm", "lab", "--json").json()["removed"] is True
    assert [p["name"] for p in cli("config", "ippool", "list", "--json").json()] == ["v6"]


# ---------------------------------------------------------------- real HTTP: bundles


class Api:
    def __init__(self, srv):
        self.srv = srv
        self.http = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.admin_token}"}, timeout=60)
        self.anon = httpx.Client(base_url=srv.url, timeout=60)
        self.key = base64.b64decode(self.anon.get("/api/v1/keys").json()["keys"][0]["public_key"])

    def ok(self, method, path, **kw):
        r = self.http.request(method, path, **kw)
        assert r.status_code < 300, r.text
        return r.json() if r.content else None

    def put(self, path, doc):
        return self.ok("PUT", "/api/v1/config/node", params={"path": path}, json={"document": doc})

    def publish(self, message="change"):
        return self.ok("POST", "/api/v1/config/publish", json={"message": message})

    def doc(self, machine):
        r = self.anon.get(f"/api/v1/machines/{machine}/bundle")
        assert r.status_code == 200, r.text
        return open_envelope(r.json(), self.key)["document"]


@pytest.fixture
def pool_world(live_server):
    api = Api(live_server)
    r = api.anon.post("/api/v1/ippools", json={"name": "lab", "range": "10.0.5.10-10.0.5.13", "prefix": 24})
    assert r.status_code in (401, 403)  # mutations need an operator
    api.ok("POST", "/api/v1/ippools", json={"name": "lab", "range": "10.0.5.10-10.0.5.13", "prefix": 24,
                                            "gateway": "10.0.5.1", "dns": ["10.0.5.2"]})
    r = api.http.post("/api/v1/ippools", json={"name": "x", "range": "10.0.5.12-10.0.5.40", "prefix": 24})
    assert r.status_code == 409 and "overlaps" in r.json()["detail"]
    ids = _machines(live_server.ctx, 6, "/lab")
    other = _machines(live_server.ctx, 1, "/office", prefix="office")
    api.put("/", {"timezone": "UTC"})
    api.put("/lab", {"network": {"mode": "pool", "pool": "lab"}})
    api.publish("lab machines lease addresses")
    return api, ids, other[0]


def test_bundle_carries_a_stable_unique_lease(pool_world):
    api, ids, office = pool_world
    net = api.doc("pc0")["network"]
    assert net["lease"] == {"pool": "lab", "address": "10.0.5.10", "prefix": 24, "cidr": "10.0.5.10/24",
                            "gateway": "10.0.5.1", "dns": ["10.0.5.2"]}
    assert api.doc("pc1")["network"]["lease"]["address"] == "10.0.5.11"
    assert "network" not in api.doc(office)
    # stable across requests and generations
    api.put("/", {"timezone": "Europe/Paris"})
    api.publish("tz")
    assert api.doc("pc1")["network"]["lease"]["address"] == "10.0.5.11"
    assert api.doc("pc0")["network"]["lease"]["address"] == "10.0.5.10"
    # ETag is stable while the lease is
    r1 = api.anon.get("/api/v1/machines/pc0/bundle")
    r2 = api.anon.get("/api/v1/machines/pc0/bundle", headers={"If-None-Match": r1.headers["etag"]})
    assert r2.status_code == 304
    # explain shows the lease; API show lists it
    ex = api.ok("GET", "/api/v1/machines/pc0/explain")
    assert ex["ip_lease"]["address"] == "10.0.5.10" and ex["document"]["network"] == {"mode": "pool", "pool": "lab"}
    shown = api.ok("GET", "/api/v1/ippools/lab")
    assert [x["machine"] for x in shown["leases"]] == ["pc0", "pc1"] and shown["free"] == 2


def test_concurrent_bundle_requests_and_exhaustion(pool_world):
    api, ids, _ = pool_world
    results, errors = {}, []

    def fetch(name):
        try:
            c = httpx.Client(base_url=api.srv.url, timeout=60)
            for _ in range(3):
                r = c.get(f"/api/v1/machines/{name}/bundle")
                assert r.status_code == 200, r.text
                net = open_envelope(r.json(), api.key)["document"]["network"]
                results.setdefault(name, set()).add(net.get("lease", {}).get("address") or "ERR " + net["lease_error"])
        except Exception as exc:  # reported below; a thread's assert would be lost otherwise
            errors.append(repr(exc))

    threads = [threading.Thread(target=fetch, args=(f"pc{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert all(len(v) == 1 for v in results.values()), results  # same machine → same answer every time
    got = [next(iter(v)) for v in results.values()]
    leased = sorted(a for a in got if not a.startswith("ERR"))
    assert leased == ["10.0.5.10", "10.0.5.11", "10.0.5.12", "10.0.5.13"]
    errs = [a for a in got if a.startswith("ERR")]
    assert len(errs) == 2 and all("IP pool 'lab' is exhausted: all 4 addresses are leased" in e for e in errs)
    loser = next(n for n, v in results.items() if next(iter(v)).startswith("ERR"))
    ex = api.ok("GET", f"/api/v1/machines/{loser}/explain")
    assert "exhausted" in ex["ip_lease"]["error"]


def test_leases_are_released_on_remove_and_when_a_machine_leaves_the_pool(pool_world):
    api, ids, _ = pool_world
    for i in range(4):
        api.doc(f"pc{i}")
    assert "lease_error" in api.doc("pc4")["network"]
    # removing a machine frees its address (foreign key cascade)
    api.ok("DELETE", "/api/v1/machines/pc1")
    assert api.doc("pc4")["network"]["lease"]["address"] == "10.0.5.11"
    # a machine placed outside the pool's subtree loses its lease at once (sweep after place)
    api.ok("POST", "/api/v1/machines/pc2/place", json={"path": "/office"})
    assert "network" not in api.doc("pc2")
    assert "pc2" not in [x["machine"] for x in api.ok("GET", "/api/v1/ippools/lab")["leases"]]
    assert api.doc("pc5")["network"]["lease"]["address"] == "10.0.5.12"
    # a publish that moves machines off pool mode releases their leases (sweep after publish)
    api.put("@pc0", {"network": {"mode": "dhcp"}})
    api.publish("pc0 back to dhcp")
    leases = api.ok("GET", "/api/v1/ippools/lab")["leases"]
    assert [x["machine"] for x in leases] == ["pc4", "pc5", "pc3"] and "10.0.5.10" not in [x["address"] for x in leases]
    net = api.doc("pc0")["network"]
    assert net["mode"] == "dhcp" and "lease" not in net and "lease_error" not in net  # maps merge: 'pool' stays, unused
    # stale leases are reclaimed when the pool would otherwise be exhausted (even without a sweep)
    with api.srv.ctx.db.session() as s:
        mid = s.scalar(select(Machine.id).where(Machine.name == "pc2"))
        pool_id = s.scalar(select(IpLease.pool_id))
        s.add(IpLease(pool_id=pool_id, machine_id=mid, address="10.0.5.10"))  # pc2 is in /office: stale
    with api.srv.ctx.db.session() as s:
        new = Machine(name="pc9", tree_path="/lab", labels={}, status={})
        s.add(new)
    assert api.doc("pc9")["network"]["lease"]["address"] == "10.0.5.10"
    # operator release: the machine's next bundle leases the lowest free address again
    api.ok("DELETE", "/api/v1/ippools/lab/leases/pc9")
    assert api.doc("pc9")["network"]["lease"]["address"] == "10.0.5.10"
    # an unknown pool is a clear error in the bundle, not a failed request
    api.put("/lab", {"network": {"mode": "pool", "pool": "nope"}})
    api.publish("typo")
    assert "IP pool 'nope' does not exist" in api.doc("pc9")["network"]["lease_error"]
    assert api.ok("GET", "/api/v1/ippools/lab")["leased"] == 0  # all moved off 'lab' → released by the sweep


def test_agent_applies_the_leased_address_into_a_root(pool_world, tmp_path):
    api, ids, _ = pool_world
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    key = api.anon.get("/api/v1/keys").json()["keys"][0]["public_key"]
    cmd = [sys.executable, "-m", "netslate.agent", "run", "--root", str(root), "--server", api.srv.url, "--key", key,
           "--machine", "pc3", "--once", "--json", "--lkg-dir", "/netslate/lkg", "--timeout", "10"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["modules"]["network"] == "ok", out["modules"]
    text = (root / "etc/systemd/network/10-netslate-default.network").read_text()
    assert "Address=10.0.5.10/24" in text and "Gateway=10.0.5.1" in text and "DNS=10.0.5.2" in text and "DHCP=no" in text
    # a second run changes nothing and keeps the address (the lease is stable)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (root / "etc/systemd/network/10-netslate-default.network").read_text() == text
    assert generations.status(api.srv.ctx)["current"] >= 1 and resolution.pool_name({"network": {"mode": "pool", "pool": "lab"}}) == "lab"


def test_cli_ippool_remote_mode(live_server, tmp_path):
    from nstest import run_cli

    env = {"NETSLATE_SERVER": live_server.url, "NETSLATE_TOKEN": live_server.admin_token}
    r = run_cli("config", "ippool", "add", "lab", "--range", "10.0.5.10-10.0.5.20", "--prefix", "24", "--json",
                data_dir=tmp_path / "unused", env=env)
    assert r.code == 0, r.stderr
    r = run_cli("config", "ippool", "add", "bad", "--range", "10.0.5.15-10.0.5.30", "--prefix", "24", data_dir=tmp_path / "unused", env=env)
    assert r.code == 2 and "overlaps pool 'lab'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("config", "ippool", "list", "--json", data_dir=tmp_path / "unused", env={"NETSLATE_SERVER": live_server.url})
    assert r.code == 0 and [p["name"] for p in r.json()] == ["lab"]
    # without a token the server refuses a change
    r = run_cli("config", "ippool", "rm", "lab", data_dir=tmp_path / "unused", env={"NETSLATE_SERVER": live_server.url})
    assert r.code == 2 and "40" in r.stderr
    assert ippools.list_pools(live_server.ctx)[0]["name"] == "lab"
