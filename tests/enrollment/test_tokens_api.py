"""One-time enrollment tokens through the CLI (local and --server) and the open exchange endpoint
`POST /api/v1/enroll/token` over real HTTP (issue 13 §4): shown once, exchanged once (409 after),
refused from another domain UUID (403), the credential authenticates the machine's bundle."""

import httpx

from netslate import inventory
from netslate.config import credentials
from netslate.enrollment import tokens


def test_machine_enroll_prints_a_one_time_token(cli, data_dir, ctx):
    assert cli("machine", "add", "--mac", "52:54:00:00:13:21", "--name", "pc1").code == 0
    r = cli("machine", "enroll", "pc1")
    assert r.code == 0, r.stderr
    tok = r.stdout.strip()
    assert tokens.TOKEN_RE.match(tok)
    j = cli("machine", "enroll", "pc1", "--ttl", "600", "--json")
    assert j.code == 0, j.stderr
    rec = j.json()
    assert tokens.TOKEN_RE.match(rec["token"]) and rec["kind"] == "token" and rec["used_at"] is None
    assert rec["machine_id"] == inventory.machine_id(ctx, "pc1")
    # the old admin path (a credential straight away) is unchanged
    assert cli("config", "enroll", "pc1", "--json").json()["credential"].startswith("nsm_")
    bad = cli("machine", "enroll", "nosuch")
    assert bad.code == 2 and "Traceback" not in bad.stderr
    bad = cli("machine", "enroll", "pc1", "--ttl", "5")
    assert bad.code == 2 and "60 to" in bad.stderr


def test_exchange_over_http(ctx, live_server):
    mid = inventory.add_machine(ctx, ["52:54:00:00:13:22"], name="pc2", actor="local:test")["id"]
    admin = {"Authorization": f"Bearer {live_server.admin_token}"}
    url = live_server.url
    made = httpx.post(f"{url}/api/v1/enroll-tokens", json={"machine": "pc2"}, headers=admin, timeout=10)
    assert made.status_code == 201, made.text
    tok = made.json()["token"]
    # listing never shows the token; creating needs a role
    listed = httpx.get(f"{url}/api/v1/enroll-tokens", headers=admin, timeout=10).json()
    assert listed and all(r["token"] is None for r in listed)
    assert httpx.post(f"{url}/api/v1/enroll-tokens", json={"machine": "pc2"}, timeout=10).status_code == 401

    # the machine: no API token needed
    r = httpx.post(f"{url}/api/v1/enroll/token", json={"token": tok, "macs": ["52:54:00:00:13:22"]}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["machine_id"] == mid and body["trust"] == "token" and body["credential"].startswith("nsm_")
    assert credentials.authenticate(ctx, body["credential"]).machine_id == mid
    b = httpx.get(f"{url}/api/v1/machines/{mid}/bundle", headers={"Authorization": f"Bearer {body['credential']}"}, timeout=10)
    assert b.status_code == 200, b.text

    again = httpx.post(f"{url}/api/v1/enroll/token", json={"token": tok}, timeout=10)
    assert again.status_code == 409 and "used already" in again.json()["detail"]
    assert httpx.post(f"{url}/api/v1/enroll/token", json={"token": tokens.new_token()}, timeout=10).status_code == 403
    assert httpx.post(f"{url}/api/v1/enroll/token", json={"token": "x"}, timeout=10).status_code == 403

    # a host token (admin only) bound to a domain UUID: refused from another UUID, then used by the right one
    uuid = "6a1f0d2c-3b4e-4f5a-8b9c-0d1e2f3a4b5c"
    host = httpx.post(f"{url}/api/v1/enroll-tokens", json={"domain_uuid": uuid, "kind": "host"}, headers=admin, timeout=10)
    assert host.status_code == 201, host.text
    htok = host.json()["token"]
    wrong = httpx.post(f"{url}/api/v1/enroll/token", json={"token": htok, "uuid": "6a1f0d2c-3b4e-4f5a-8b9c-000000000000"}, timeout=10)
    assert wrong.status_code == 403 and "another machine" in wrong.json()["detail"]
    ok = httpx.post(f"{url}/api/v1/enroll/token", json={"token": htok, "uuid": uuid.upper(), "macs": ["52:54:00:00:13:23"]}, timeout=10)
    assert ok.status_code == 200 and ok.json()["trust"] == "host"
    assert inventory.show_machine(ctx, ok.json()["machine_id"])["uuid"] == uuid
    # the audit log names the refusals and never holds a token
    from sqlalchemy import text

    with ctx.db.engine.connect() as c:
        log = repr(c.execute(text("SELECT actor, action, target, detail FROM audit_log")).all())
    assert "enrollment.token.refused.reuse" in log and "enrollment.token.refused.wrong-uuid" in log
    assert tok not in log and htok not in log and body["credential"] not in log
