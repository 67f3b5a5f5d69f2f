"""The TPM enrollment protocol end to end: real swtpm TPMs driven by the agent's code (tpm2-tools),
a real server on loopback. Enrol → pending → approve → ActivateCredential → quote → credential; boot
again without approval; replays refused; EK change held; revoked refused; a MAC/UUID spoofer
flagged and given nothing."""

from __future__ import annotations

import base64
import uuid as uuidlib

import httpx
import pytest
from nstest import run_cli

from netslate.agent import enroll as agent_enroll
from netslate.agent import runner
from netslate.agent import tpm as agent_tpm
from netslate.config import credentials
from netslate.enrollment import store as enrollment_store


def machine_facts(mac: str, uuid: str, serial: str = "SN-1") -> dict:
    return {"nics": [{"mac": mac, "physical": True}], "dmi": {"product_uuid": uuid, "product_serial": serial}}


@pytest.fixture
def world(ctx, live_server):
    class World:
        url = live_server.url
        admin = {"Authorization": f"Bearer {live_server.admin_token}"}

        def __init__(self):
            self.ctx = ctx
            self.remote_env = {"NETSLATE_SERVER": live_server.url, "NETSLATE_TOKEN": live_server.admin_token}

        def admin_post(self, path: str, body: dict | None = None) -> httpx.Response:
            return httpx.post(f"{self.url}{path}", json=body or {}, headers=self.admin, timeout=30)

        def get(self, path: str):
            r = httpx.get(f"{self.url}{path}", headers=self.admin, timeout=30)
            assert r.status_code == 200, r.text
            return r.json()

        def post(self, path: str, body: dict) -> httpx.Response:  # a machine: no token
            return httpx.post(f"{self.url}{path}", json=body, timeout=30)

        def enroll(self, tpm, facts) -> dict:
            return agent_enroll.tpm_enroll(self.url, facts, tpm.tcti, timeout=30)

        def fleet_flags(self, machine_id: int) -> list[str]:
            return next(m for m in self.get("/api/v1/fleet")["machines"] if m["id"] == machine_id)["flags"]

    return World()


def test_enroll_pending_approve_activate_then_every_boot_without_approval(world, swtpm_factory, data_dir):
    tpm = swtpm_factory()
    facts = machine_facts("52:54:00:13:00:01", str(uuidlib.uuid4()))
    first = world.enroll(tpm, facts)
    assert first["status"] == "pending" and "credential" not in first and not first.get("activate")
    machine_id = first["machine_id"]
    assert world.enroll(tpm, facts)["status"] == "pending"  # asking again changes nothing

    listed = run_cli("machine", "enrollments", "--json", env=world.remote_env)
    assert listed.code == 0, listed.stderr
    [row] = listed.json()
    assert row["machine_id"] == machine_id and row["status"] == "pending" and row["ek_cert"] and not row["activated"]

    approved = run_cli("machine", "approve", str(machine_id), "--json", data_dir=data_dir)
    assert approved.code == 0, approved.stderr

    got = world.enroll(tpm, facts)
    assert got["trust"] == "tpm" and got["machine_id"] == machine_id and got["credential"].startswith("nsm_")
    check = credentials.authenticate(world.ctx, got["credential"])
    assert check is not None and check.machine_id == machine_id and check.trust == "tpm" and check.expires_at is not None
    assert world.get(f"/api/v1/machines/{machine_id}")["trust"] == "tpm"
    [row] = world.get("/api/v1/enrollments")
    assert row["activated"] and row["status"] == "approved" and row["last_attested_at"]

    tpm.stop()
    tpm.start()  # the next boot: nothing stored on the machine, no admin
    again = world.enroll(tpm, facts)
    assert again["machine_id"] == machine_id and again["credential"] != got["credential"]
    assert credentials.authenticate(world.ctx, again["credential"]).trust == "tpm"
    assert "identity_conflict" not in world.fleet_flags(machine_id)


def test_replayed_activation_answer_and_quote_are_refused(world, swtpm_factory):
    tpm = swtpm_factory()
    facts = machine_facts("52:54:00:13:00:02", str(uuidlib.uuid4()))
    assert world.admin_post("/api/v1/enrollment-policies", {"kind": "subnet", "value": "127.0.0.0/8"}).status_code == 201
    with agent_tpm.Tpm(tpm.tcti) as t:
        step = world.post("/api/v1/enroll/tpm", agent_enroll.hello_body(t, facts)).json()
        assert step["status"] == "approved" and step["activate"]  # the subnet policy approved it
        a = step["activate"]
        secret = t.activate(agent_enroll.credential_file(base64.b64decode(a["credential_blob"]), base64.b64decode(a["encrypted_secret"])))
        answer = {"challenge": a["challenge"], "secret": base64.b64encode(secret).decode()}
        step = world.post("/api/v1/enroll/tpm/activate", answer)
        assert step.status_code == 200, step.text
        replay = world.post("/api/v1/enroll/tpm/activate", answer)
        assert replay.status_code == 403 and "replayed" in replay.json()["detail"]

        q = step.json()["quote"]
        attest, sig = t.quote(q["nonce"])
        quote = {"challenge": q["challenge"], "attest": base64.b64encode(attest).decode(), "signature": base64.b64encode(sig).decode()}
        ok = world.post("/api/v1/enroll/tpm/quote", quote)
        assert ok.status_code == 200 and ok.json()["trust"] == "tpm"
        replay = world.post("/api/v1/enroll/tpm/quote", quote)
        assert replay.status_code == 403 and "replayed" in replay.json()["detail"]

        # the old quote (old nonce) against a fresh challenge: refused, and that challenge is spent
        fresh = world.post("/api/v1/enroll/tpm", agent_enroll.hello_body(t, facts)).json()["quote"]
        old = world.post("/api/v1/enroll/tpm/quote", {**quote, "challenge": fresh["challenge"]})
        assert old.status_code == 403 and "nonce" in old.json()["detail"]
        attest, sig = t.quote(fresh["nonce"])
        late = world.post("/api/v1/enroll/tpm/quote", {"challenge": fresh["challenge"], "attest": base64.b64encode(attest).decode(),
                                                      "signature": base64.b64encode(sig).decode()})
        assert late.status_code == 403


def test_ek_change_is_held_for_approval(world, swtpm_factory, data_dir):
    facts = machine_facts("52:54:00:13:00:03", str(uuidlib.uuid4()))
    old_tpm = swtpm_factory("old")
    machine_id = world.enroll(old_tpm, facts)["machine_id"]
    assert world.admin_post(f"/api/v1/machines/{machine_id}/approve").status_code == 200
    assert world.enroll(old_tpm, facts)["trust"] == "tpm"

    new_tpm = swtpm_factory("new")  # the mainboard (and its TPM) was replaced: same MAC and UUID, another EK
    held = world.enroll(new_tpm, facts)
    assert held["status"] == "pending" and held["machine_id"] == machine_id and "credential" not in held
    assert held["flags"] == ["identity_conflict"]
    assert "identity_conflict" in world.fleet_flags(machine_id)

    approved = run_cli("machine", "approve", str(machine_id), "--json", data_dir=data_dir)
    assert approved.code == 0, approved.stderr
    assert world.enroll(new_tpm, facts)["trust"] == "tpm"
    with pytest.raises(agent_enroll.EnrollRefused, match="revoked"):
        world.enroll(old_tpm, facts)  # the replaced TPM's enrollment was revoked by the approval
    assert "identity_conflict" not in world.fleet_flags(machine_id)


def test_revoked_machine_is_refused(world, swtpm_factory, data_dir):
    tpm = swtpm_factory()
    facts = machine_facts("52:54:00:13:00:04", str(uuidlib.uuid4()))
    machine_id = world.enroll(tpm, facts)["machine_id"]
    world.admin_post(f"/api/v1/machines/{machine_id}/approve")
    token = world.enroll(tpm, facts)["credential"]
    assert credentials.authenticate(world.ctx, token) is not None

    out = run_cli("machine", "revoke", str(machine_id), "--json", data_dir=data_dir)
    assert out.code == 0, out.stderr
    assert out.json()["enrollments_revoked"] == 1 and out.json()["credentials_revoked"] >= 1
    assert credentials.authenticate(world.ctx, token) is None
    with pytest.raises(agent_enroll.EnrollRefused, match="revoked"):
        world.enroll(tpm, facts)
    assert world.get(f"/api/v1/machines/{machine_id}")["trust"] == "none"


def test_spoofer_with_the_same_mac_and_uuid_gets_nothing_and_is_flagged(world, swtpm_factory):
    mac, uuid = "52:54:00:13:00:05", str(uuidlib.uuid4())
    real, spoofer = swtpm_factory("real"), swtpm_factory("spoofer")
    machine_id = world.enroll(real, machine_facts(mac, uuid))["machine_id"]
    world.admin_post(f"/api/v1/machines/{machine_id}/approve")
    assert world.enroll(real, machine_facts(mac, uuid))["trust"] == "tpm"

    for _ in range(2):
        got = world.enroll(spoofer, machine_facts(mac, uuid, serial="SN-1"))
        assert got["status"] == "pending" and not got.get("activate") and not got.get("quote") and "credential" not in got
    assert "identity_conflict" in world.fleet_flags(machine_id)
    rows = world.get(f"/api/v1/enrollments?machine={machine_id}")
    assert [(r["status"], r["flags"]) for r in rows] == [("approved", []), ("pending", ["identity_conflict"])]
    # the spoofer cannot use the real machine's challenge either: ActivateCredential needs the real EK
    with agent_tpm.Tpm(real.tcti) as t:
        step = world.post("/api/v1/enroll/tpm", agent_enroll.hello_body(t, machine_facts(mac, uuid))).json()
    assert step["quote"]  # the real machine is activated: it gets a nonce to quote
    with agent_tpm.Tpm(spoofer.tcti) as t:
        attest, sig = t.quote(step["quote"]["nonce"])  # signed by the spoofer's AK
    r = world.post("/api/v1/enroll/tpm/quote", {"challenge": step["quote"]["challenge"], "attest": base64.b64encode(attest).decode(),
                                                "signature": base64.b64encode(sig).decode()})
    assert r.status_code == 403 and "signature" in r.json()["detail"]
    # and the real machine still authenticates
    assert world.enroll(real, machine_facts(mac, uuid))["trust"] == "tpm"


def test_site_policy_by_ek_approves_without_an_admin(world, swtpm_factory, data_dir):
    tpm = swtpm_factory()
    with agent_tpm.Tpm(tpm.tcti) as t:
        from netslate.enrollment import tpm as server_tpm

        fingerprint = server_tpm.parse_public(t.ek_public()).fingerprint
    added = run_cli("machine", "enrollment-policy", "add", "ek", fingerprint, "--json", env=world.remote_env)
    assert added.code == 0, added.stderr
    bad = run_cli("machine", "enrollment-policy", "add", "subnet", "10.0.0.0/33", data_dir=data_dir)
    assert bad.code == 2 and "not a subnet" in bad.stderr and "Traceback" not in bad.stderr
    got = world.enroll(tpm, machine_facts("52:54:00:13:00:06", str(uuidlib.uuid4())))
    assert got["trust"] == "tpm"
    [row] = world.get("/api/v1/enrollments")
    assert row["approved_by"] == "policy:ek"
    listed = run_cli("machine", "enrollment-policy", "list", "--json", data_dir=data_dir)
    assert [p["kind"] for p in listed.json()] == ["ek"]


def test_agent_stores_the_credential_where_it_reads_it(world, swtpm_factory, tmp_path, monkeypatch):
    tpm = swtpm_factory()
    world.admin_post("/api/v1/enrollment-policies", {"kind": "subnet", "value": "127.0.0.1/32"})
    monkeypatch.setenv("NETSLATE_TPM_TCTI", tpm.tcti)
    root = tmp_path / "root"
    root.mkdir()
    agent = runner.Agent(runner.Options(root=root, lkg_dir="/var/lib/netslate/lkg", servers=[world.url], timeout=30))
    agent.url = world.url
    agent.facts = machine_facts("52:54:00:13:00:07", str(uuidlib.uuid4()))
    assert agent.enroller.method == "tpm" and agent.enroller.due()
    agent._enroll()
    assert agent.enroller.state == "enrolled" and not agent.problems
    cred = agent.credential()
    assert cred and credentials.authenticate(world.ctx, cred).trust == "tpm"
    assert (agent.lkg_dir / "credential").stat().st_mode & 0o777 == 0o600
    assert not agent.enroller.due()  # fresh: not before half its lifetime


def test_bad_input_is_one_line_400(world):
    r = world.post("/api/v1/enroll/tpm", {"ek_public": "not base64!", "ak_public": "AAAA", "macs": ["52:54:00:13:00:08"]})
    assert r.status_code == 400 and "base64" in r.json()["detail"]
    r = world.post("/api/v1/enroll/tpm", {"ek_public": base64.b64encode(b"\x00\x01" * 20).decode(), "ak_public": "AAAA", "macs": []})
    assert r.status_code == 400
    r = world.post("/api/v1/enroll/tpm/activate", {"challenge": "0" * 32, "secret": "AAAA"})
    assert r.status_code == 403 and r.json()["detail"] == "unknown challenge"
    r = world.post("/api/v1/enrollment-policies", {"kind": "subnet", "value": "10.0.0.0/8"})
    assert r.status_code == 401  # admin operations need a token
    assert enrollment_store.POLICY_KINDS == ("ek", "serial", "subnet")


def test_agent_stops_reporting_waits_for_approval_once_approved(world, swtpm_factory, tmp_path, monkeypatch):
    """The pending line of the first try leaves the agent's problems when a later try enrolls."""
    tpm = swtpm_factory()
    monkeypatch.setenv("NETSLATE_TPM_TCTI", tpm.tcti)
    root = tmp_path / "root"
    root.mkdir()
    agent = runner.Agent(runner.Options(root=root, lkg_dir="/var/lib/netslate/lkg", servers=[world.url], timeout=30))
    agent.url = world.url
    agent.facts = machine_facts("52:54:00:13:00:09", str(uuidlib.uuid4()))
    agent._enroll()
    assert agent.enroller.state == "pending"
    assert [p for p in agent.problems if "waits for approval" in p], agent.problems
    pending = [row["machine_id"] for row in world.get("/api/v1/enrollments") if row["status"] == "pending"]
    assert len(pending) == 1
    assert world.admin_post(f"/api/v1/machines/{pending[0]}/enrollment/approve").status_code == 200
    assert not agent.enroller.due()  # pending: the next try waits PENDING_RETRY; pretend it has passed
    agent.enroller.last_try -= agent_enroll.PENDING_RETRY + 1
    agent._enroll()
    assert agent.enroller.state == "enrolled"
    assert not [p for p in agent.problems if "enrollment" in p], agent.problems
