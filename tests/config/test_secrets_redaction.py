"""Issue 13 §5: a secret's value shows nowhere but inside the bundle sealed to its machine: not in the
API's answers, the web pages, the audit log, the server's log, error lines or the CLI's output."""

import json
import logging

import httpx
from sqlalchemy import select

from netslate import inventory
from netslate.agent.bundle import open_secrets
from netslate.store.models import AuditEntry

from nstest import run_cli

SECRET = "site-secret-0d5f2a77b1"
SECRET_M = "machine-secret-9e41c3aa08"
SECRET_V2 = "site-secret-v2-44be7c19"


def test_secret_values_appear_nowhere_else(live_server, caplog):
    caplog.set_level(logging.DEBUG)
    ctx = live_server.ctx
    inventory.add_machine(ctx, ["52:54:00:aa:bb:01"], name="pc1", group="/site-a")
    http = httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {live_server.admin_token}"}, timeout=60)
    anon = httpx.Client(base_url=live_server.url, timeout=60)

    def ok(method, path, **kw):
        r = http.request(method, path, **kw)
        assert r.status_code < 300, r.text
        return r

    ok("PUT", "/api/v1/config/node", params={"path": "/site-a"},
       json={"document": {"timezone": "UTC", "secrets": {"wifi": SECRET}, "secret_levels": {"wifi": "token"}}})
    ok("POST", "/api/v1/config/set", json={"path": "@pc1", "key": "secrets.api_key", "value": SECRET_M})
    ok("POST", "/api/v1/config/publish", json={"message": "secrets"})
    cred = ok("POST", "/api/v1/machines/pc1/enroll").json()["credential"]
    ok("POST", "/api/v1/config/set", json={"path": "/site-a", "key": "secrets.wifi", "value": SECRET_V2})
    outputs = {"diff-pending": http.get("/api/v1/config/diff").text}
    ok("POST", "/api/v1/config/publish", json={"message": "rotate wifi"})
    ok("POST", "/api/v1/config/rollback", json={"generation": 1, "message": "back"})
    # a value the schema refuses is not echoed in the error line
    bad = http.post("/api/v1/config/set", json={"path": "/", "key": "secrets.bad", "value": {"nested": SECRET}})
    assert bad.status_code == 400
    outputs["error"] = bad.text
    # the machine gets its secrets, sealed
    raw = anon.get("/api/v1/machines/pc1/bundle", headers={"Authorization": f"Bearer {cred}"})
    assert raw.status_code == 200 and SECRET not in raw.text and SECRET_M not in raw.text
    assert open_secrets(raw.json()["payload"], cred)[0]["document"]["secrets"] == {"wifi": SECRET, "api_key": SECRET_M}

    api = {
        "node": "/api/v1/config/node?path=/site-a", "machine-node": "/api/v1/config/node?path=@pc1",
        "node-gen1": "/api/v1/config/node?path=/site-a&generation=1", "explain": "/api/v1/machines/pc1/explain",
        "diff": "/api/v1/config/diff", "history": "/api/v1/config/history", "gen1": "/api/v1/config/generations/1",
        "gen2": "/api/v1/config/generations/2", "gen3": "/api/v1/config/generations/3", "machine": "/api/v1/machines/pc1",
        "machines": "/api/v1/machines", "fleet": "/api/v1/fleet", "audit": "/api/v1/audit",
        "bundle-operator": "/api/v1/machines/pc1/bundle",
    }
    for name, path in api.items():
        r = http.get(path)
        assert r.status_code == 200, (name, r.text)
        outputs[name] = r.text
    for path in ("/config", "/config/node?path=/site-a", "/config/node?path=@pc1", "/config/generations/2", "/machines/pc1", "/audit"):
        r = http.get(path)
        assert r.status_code == 200, (path, r.text[:200])
        outputs["web " + path] = r.text
    with ctx.db.session() as s:
        outputs["audit table"] = json.dumps([[a.actor, a.action, a.target, a.detail] for a in s.scalars(select(AuditEntry))])
    for args in (("config", "show", "/site-a"), ("config", "explain", "pc1", "--json"), ("config", "history"),
                 ("config", "diff"), ("machine", "show", "pc1", "--json"), ("audit", "--json")):
        r = run_cli(*args, data_dir=ctx.data_dir)
        outputs["cli " + " ".join(args)] = r.stdout + r.stderr
    outputs["server log"] = "\n".join(rec.getMessage() for rec in caplog.records)

    for where, text in outputs.items():
        for s in (SECRET, SECRET_M, SECRET_V2, cred):
            assert s not in text, f"{where} shows a secret"
    assert "<redacted>" in outputs["node"] and "<redacted>" in outputs["explain"] and "<redacted>" in outputs["gen2"]
    assert "<redacted>" in outputs["diff-pending"] and "&lt;redacted&gt;" in outputs["web /config/node?path=/site-a"]
    assert "config.publish" in outputs["audit table"] and "machine.credential.issue" in outputs["audit table"]
