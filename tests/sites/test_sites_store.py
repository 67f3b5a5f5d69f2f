"""Issue 15 §1 with real parts and no VMs: a central PostgreSQL primary and a branch hot standby
(pg_basebackup -R, a replication slot) in their own network namespaces, joined by a veth "WAN" the
test cuts; a real `netslate serve` in the branch namespace reading from the standby and writing to
the primary. During the cut reads work, a publish at central is not seen yet, an admin write fails
at once with the read-only message and telemetry lands in the outbox; after it, the publish arrives
and every event reaches central exactly once."""

import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text

from netslate.context import Context
from netslate.errors import UserError
from netslate.sites.lab import BRANCH_ADDR, NsWorker, SitesLab


MAC1 = "52:54:00:15:00:01"
MAC_NEW = "52:54:00:15:00:99"
BRANCH_PORT = 8080  # inside the lab's branch namespace


def _wait(what: str, probe, timeout: float = 90, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


class World:
    def __init__(self, lab: SitesLab, central: NsWorker, branch: NsWorker, cctx: Context, data: Path, ids: dict):
        self.lab, self.central, self.branch, self.cctx, self.data, self.ids = lab, central, branch, cctx, data, ids
        self.url = f"http://127.0.0.1:{BRANCH_PORT}"
        self.token = (data / "admin.token").read_text().strip() if (data / "admin.token").exists() else None

    def http(self, method: str, path: str, auth: bool = False, **kw) -> httpx.Response:
        """One request to the branch server, made from inside the branch namespace."""
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}

        def go():
            with httpx.Client(base_url=self.url, timeout=30) as c:  # a hang fails the test
                return c.request(method, path, headers=headers, **kw)
        return self.branch.call(go)

    def at_central(self, fn, *args):
        return self.central.call(fn, self.cctx, *args)

    def health(self) -> dict:
        return self.http("GET", "/healthz").json()

    def standby_generation(self) -> int:
        """The config generation the branch's standby has (what its reads see)."""
        return int(self.lab.psql(self.lab.branch, "SELECT current FROM config_state"))

    def bundle_generation(self) -> int:
        """The generation the branch serves to its machines (the signed bundle)."""
        r = self.http("GET", f"/api/v1/machines/{self.ids['m1']}/bundle")
        assert r.status_code == 200, r.text
        return r.json()["payload"]["generation"]


def _setup_central(ctx: Context) -> dict:
    from netslate import inventory
    from netslate.config import generations, workingcopy
    from netslate.discovery import store as sites

    ctx.init()  # migrations run here, on the primary
    sites.add_site(ctx, "branch", actor="local:test")
    m = inventory.add_machine(ctx, [MAC1], name="pc1", actor="local:test")
    workingcopy.set_value(ctx, "/", "locale", "C.UTF-8", actor="local:test")
    gen = generations.publish(ctx, "one", actor="local:test")
    return {"m1": m["id"], "gen1": gen["number"] if "number" in gen else gen["generation"]}


def _boot_events(ctx: Context, mac: str) -> int:
    from netslate.boot.models import BootEvent

    with ctx.db.session() as s:
        return s.scalar(select(func.count()).select_from(BootEvent).where(BootEvent.mac == mac)) or 0


def _reports(ctx: Context, machine_id: int) -> int:
    from netslate.store.models import AuditEntry

    with ctx.db.session() as s:
        return s.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == "fleet.report", AuditEntry.target == f"machine:{machine_id}")) or 0


def _machines_with_mac(ctx: Context, mac: str) -> int:
    from netslate.store.models import MachineMac

    with ctx.db.session() as s:
        return s.scalar(select(func.count()).select_from(MachineMac).where(MachineMac.mac == mac)) or 0


def _server_states(ctx: Context) -> dict:
    from netslate.store import outbox

    return outbox.server_states(ctx)


def _publish(ctx: Context, value: str) -> int:
    from netslate.config import generations, workingcopy

    workingcopy.set_value(ctx, "/", "locale", value, actor="local:test")
    gen = generations.publish(ctx, value, actor="local:test")
    return gen["number"] if "number" in gen else gen["generation"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    lab = SitesLab().start()
    central = NsWorker(lab.central)
    branch = NsWorker(lab.branch)
    try:
        cctx = Context(tmp_path_factory.mktemp("central"), lab.primary_url_central)
        ids = central.call(_setup_central, cctx)
        lab.wait_replayed()
        data = tmp_path_factory.mktemp("branch")
        log = data.parent / f"{data.name}-serve.log"
        proc = lab.netslate(lab.branch, "serve", "--listen", f"127.0.0.1:{BRANCH_PORT}", "--data-dir", str(data),
                     "--db-read", lab.standby_url_branch, "--db-write", lab.primary_url_branch,
                     "--site", "branch", "--advertise", BRANCH_ADDR, "--server-name", "branch1",
                     log=log, env={"NETSLATE_CENTRAL_CONNECT_TIMEOUT": "2", "NETSLATE_CENTRAL_STATEMENT_TIMEOUT": "10"})
        w = World(lab, central, branch, cctx, data, ids)

        def up():
            try:
                return w.http("GET", "/healthz").status_code == 200
            except httpx.HTTPError:
                return False
        try:
            _wait("branch server answers /healthz", up, timeout=120)
        except AssertionError:
            raise AssertionError(f"branch server did not start: {log.read_text()[-3000:]}") from None
        w.token = (data / "admin.token").read_text().strip()
        w.log = log
        w.proc = proc
        yield w
    finally:
        central.close()
        branch.close()
        lab.stop()


def test_branch_keeps_serving_through_a_wan_cut_and_catches_up(world):
    w = world
    m1 = w.ids["m1"]
    boots = 0

    def boot(mac=MAC1):
        r = w.http("GET", "/boot/ipxe", params={"mac": mac})
        assert r.status_code == 200, r.text
        assert r.text.startswith("#!ipxe")
        return r

    def report(phase):
        r = w.http("POST", f"/api/v1/machines/{m1}/report",
                   json={"phase": phase, "generation": 1, "config_source": "server", "image_source": "server"})
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] is True

    # -- normal operation: boot and bundle come from the branch, the report reaches central
    boot(); boots += 1
    assert w.bundle_generation() == w.ids["gen1"]
    report("configured")
    before_reports = 1
    _wait("boot event at central", lambda: w.at_central(_boot_events, MAC1) == boots)
    assert w.at_central(_reports, m1) == before_reports
    h = w.health()
    assert h["read_only"] is False and h["checks"]["central"]["standby"] is True

    # -- the WAN goes down
    w.lab.cut()
    try:
        # an admin write at the branch: refused with the one clear line (the first try waits out
        # the connect time-out, then the server knows it is read-only and refuses at once)
        for _ in range(2):
            r = w.http("POST", "/api/v1/sites", auth=True, json={"name": "during-cut"})
            assert r.status_code == 503, r.text
            assert r.json()["detail"].startswith("central site unreachable: this server is read-only since ")
        # reads keep working from the standby
        for _ in range(3):
            boot(); boots += 1
        assert w.bundle_generation() == w.ids["gen1"]
        assert w.http("GET", "/api/v1/sites/branch", auth=True).status_code == 200
        # a publish at central is not seen at the branch yet
        gen2 = w.at_central(_publish, "de_DE.UTF-8")
        assert gen2 > w.ids["gen1"]
        time.sleep(2)
        assert w.bundle_generation() == w.ids["gen1"]
        assert w.standby_generation() == w.ids["gen1"]
        # telemetry during the cut: boot events, a discovery, reports and a heartbeat, all queued
        boot(MAC_NEW)
        report("booting")
        report("configured")
        report("heartbeat")
        queued_reports = 2  # heartbeats refresh liveness only (no audit row)
        h = _wait("events in the outbox", lambda: (lambda h: h if h["checks"]["central"]["outbox"]["pending"] >= 4 else None)(w.health()))
        assert h["read_only"] is True and h["checks"]["central"]["read_only_since"]
        metrics = w.http("GET", "/metrics").text
        assert "netslate_read_only 1.0" in metrics and "netslate_outbox_pending_events" in metrics
        me = {x["name"]: x for x in w.http("GET", "/api/v1/servers", auth=True).json()}["branch1"]
        assert me["read_only"] is True and me["outbox_pending"] >= 4
        fleet = w.http("GET", "/api/v1/fleet", auth=True).json()
        assert fleet["branch"]["read_only"] is True and fleet["branch"]["read_only_since"]
        assert w.at_central(_boot_events, MAC1) == 1  # nothing arrived at central yet
        assert w.at_central(_machines_with_mac, MAC_NEW) == 0
    finally:
        w.lab.restore()

    # -- the link is back: the publish reaches the branch, the outbox drains, exactly once
    _wait("the publish replicated to the branch", lambda: w.bundle_generation() == gen2)
    h = _wait("outbox drained and writable again",
              lambda: (lambda h: h if not h["read_only"] and h["checks"]["central"]["outbox"]["pending"] == 0 else None)(w.health()))
    _wait("every boot event at central", lambda: w.at_central(_boot_events, MAC1) >= boots)
    time.sleep(1)  # anything counted twice would have landed by now too
    assert w.at_central(_boot_events, MAC1) == boots
    assert w.at_central(_boot_events, MAC_NEW) == 1
    assert w.at_central(_machines_with_mac, MAC_NEW) == 1
    assert w.at_central(_reports, m1) == before_reports + queued_reports
    # central sees the branch's own report of its state (server list)
    _wait("branch status at central", lambda: (lambda st: st.get("branch1", {}).get("read_only") is False
                                               and st["branch1"]["outbox_pending"] == 0)(w.at_central(_server_states)))
    # an admin write at the branch works again and is read back at once (read-your-writes)
    r = w.http("POST", "/api/v1/sites", auth=True, json={"name": "after-cut"})
    assert r.status_code == 201, r.text
    assert w.http("GET", "/api/v1/sites/after-cut", auth=True).status_code == 200


def _replay_twice(ctx: Context, machine_id: int) -> tuple[dict, dict, int, int]:
    """The crash case: an event applied on the primary but still in the outbox is replayed again."""
    from netslate.store import outbox

    box = ctx.outbox
    body = {"phase": "configured", "generation": 1}
    payload = {"machine_id": machine_id, "body": body, "authenticated": False, "remote": None,
               "at": "2026-01-01T00:00:00"}
    before = _reports(ctx, machine_id)
    eid = box.append("fleet.report", payload)
    first = outbox.drain(ctx)
    box.append("fleet.report", payload, event_id=eid)  # the same event again
    second = outbox.drain(ctx)
    return first, second, before, _reports(ctx, machine_id)


def test_outbox_replay_is_idempotent_and_standby_reads(world, tmp_path):
    """A branch Context in this process (inside the branch namespace): reads go to the standby,
    a replayed event id is applied once."""
    w = world

    def run():
        ctx = Context(tmp_path / "b2", w.lab.primary_url_branch, w.lab.standby_url_branch)
        ctx.init()  # the schema is current on the primary; waits for it on the standby
        with ctx.db.read_session() as s:
            assert s.execute(text("SELECT pg_is_in_recovery()")).scalar() is True
        with ctx.db.session() as s:
            assert s.execute(text("SELECT pg_is_in_recovery()")).scalar() is False
        status = ctx.db.replica_status()
        assert status["standby"] is True and status["read_only"] is False
        # a server on a standby without the schema it needs refuses to start, in one line
        with pytest.raises(UserError, match="the standby has not got the schema this netslate needs .missing 9999_future"):
            ctx.db.wait_for_schema({"9999_future"}, timeout=1)
        return _replay_twice(ctx, w.ids["m1"])

    first, second, before, after = w.branch.call(run)
    assert first["applied"] == 1 and first["left"] == 0
    assert second["duplicates"] == 1 and second["applied"] == 0
    assert after == before + 1


def test_runbook_promote_the_branch_when_central_is_lost(world):
    """docs/sites.md, runbook steps 1-4 (runs last: it ends the world's replication for good)."""
    w = world
    lab = w.lab
    # 1. the central site is lost (and fenced: its PostgreSQL stops)
    lab.pg(lab.central, str(lab.bin / "pg_ctl"), "-D", str(lab.primary_dir), "-m", "immediate", "stop")
    # 2. promote the branch's standby
    assert lab.psql(lab.branch, "SELECT pg_promote(wait => true)") == "t"
    assert lab.psql(lab.branch, "SELECT pg_is_in_recovery()") == "f"
    # 3. the branch server restarts as a central server over it (no --db-read)
    w.proc.terminate()
    w.proc.wait(30)
    w.proc = lab.netslate(lab.branch, "serve", "--listen", f"127.0.0.1:{BRANCH_PORT}", "--data-dir", str(w.data),
                          "--database-url", lab.standby_url_branch, "--site", "branch", "--server-name", "branch1",
                          log=w.log)

    def up():
        try:
            return w.http("GET", "/healthz").status_code == 200
        except httpx.HTTPError:
            return False
    _wait("promoted branch server answers", up, timeout=120)
    # 4. writable: an admin write and its read-back; boot scripts as before
    h = w.health()
    assert h["read_only"] is False and "central" not in h["checks"]
    r = w.http("POST", "/api/v1/sites", auth=True, json={"name": "promote-check"})
    assert r.status_code == 201, r.text
    assert w.http("GET", "/api/v1/sites/promote-check", auth=True).status_code == 200
    assert w.http("GET", "/boot/ipxe", params={"mac": MAC1}).status_code == 200
