"""Anonymous reports (issue 11 #2): for a machine that is not enrolled anyone can POST a report.
Its facts and the caller's address must never reach a signed bundle (template input) or the
machine's address (the site hint of `image_pin`); they are kept apart and the machine is flagged.
A report authenticated by the machine credential keeps filling templates. Real server on loopback.
"""

from __future__ import annotations

import json

import httpx
import pytest

from netslate.context import Context
from netslate.crypto.envelope import open_envelope
from nstest import start_server

TEMPLATE = "role={{ facts.role | default('none') }} ip={{ machine.ip_address }}\n"


@pytest.fixture
def srv(tmp_path):
    ctx = Context(tmp_path / "data").init()
    s = start_server(ctx)
    try:
        yield s
    finally:
        s.stop()


def _admin(srv) -> httpx.Client:
    return httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.admin_token}"}, timeout=30)


def _bundle(srv, machine: str, credential: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    r = httpx.get(f"{srv.url}/api/v1/machines/{machine}/bundle", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return open_envelope(r.json(), srv.ctx.signing_key.public_bytes)


def _role_file(payload: dict) -> str:
    return next(f["content"] for f in payload["document"]["files"] if f["path"] == "/etc/role")


def test_anonymous_report_never_reaches_the_bundle_and_is_flagged(srv):
    with _admin(srv) as api:
        assert api.post("/api/v1/machines", json={"name": "pc3", "macs": ["52:54:00:ab:00:03"]}).status_code == 201
        r = api.put("/api/v1/config/node", params={"path": "/"}, json={"document": {"files": [{"path": "/etc/role", "template": TEMPLATE}]}})
        assert r.status_code == 200, r.text
        assert api.post("/api/v1/config/publish", json={"message": "role file"}).status_code == 200

        # anyone, no credential
        r = httpx.post(f"{srv.url}/api/v1/machines/pc3/report", json={"phase": "configured", "config_source": "server",
                                                                       "facts": {"role": "ATTACKER"}}, timeout=30)
        assert r.status_code == 202, r.text
        assert r.json()["authenticated"] is False

        payload = _bundle(srv, "pc3")
        assert "ATTACKER" not in json.dumps(payload), "an anonymous report's facts were signed into the bundle"
        assert "127.0.0.1" not in json.dumps(payload), "an anonymous caller's address was signed into the bundle"
        assert _role_file(payload) == "role=none ip=None\n"

        machine = api.get("/api/v1/machines/pc3").json()
        assert machine["ip_address"] is None, "an anonymous caller's address became the machine's address (site hint)"
        fleet = machine["fleet"]
        assert "unauthenticated" in fleet["flags"] and fleet["authenticated"] is False
        assert fleet["unverified"]["facts"] == {"role": "ATTACKER"} and fleet["unverified"]["address"] == "127.0.0.1"
        row = next(m for m in api.get("/api/v1/fleet").json()["machines"] if m["name"] == "pc3")
        assert "unauthenticated" in row["flags"] and row["unverified"]["facts"] == {"role": "ATTACKER"}

        # enrolled: the machine's own (authenticated) report fills templates and the address, as before
        cred = api.post("/api/v1/machines/pc3/enroll").json()["credential"]
        r = httpx.post(f"{srv.url}/api/v1/machines/pc3/report", json={"phase": "configured", "config_source": "server",
                                                                       "facts": {"role": "web"}},
                       headers={"Authorization": f"Bearer {cred}"}, timeout=30)
        assert r.status_code == 202 and r.json()["authenticated"] is True, r.text
        assert _role_file(_bundle(srv, "pc3", cred)) == "role=web ip=127.0.0.1\n"
        fleet = api.get("/api/v1/machines/pc3").json()["fleet"]
        assert "unauthenticated" not in fleet["flags"] and fleet["unverified"] is None

        # and an anonymous report for the enrolled machine is refused, changing nothing
        r = httpx.post(f"{srv.url}/api/v1/machines/pc3/report", json={"facts": {"role": "ATTACKER"}}, timeout=30)
        assert r.status_code == 403
        assert _role_file(_bundle(srv, "pc3", cred)) == "role=web ip=127.0.0.1\n"


def test_facts_stored_by_old_anonymous_reports_move_out_of_the_template_input(tmp_path):
    """Databases written before the fix: facts whose last report was anonymous go to fleet.unverified."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from netslate.store.db import MIGRATIONS_DIR

    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    rows = {1: {"facts": {"role": "ATTACKER"}, "fleet": {"authenticated": False, "remote": "10.0.0.9", "received_at": "2026-01-01T00:00:00Z"}},
            2: {"facts": {"role": "web"}, "fleet": {"authenticated": True, "remote": "10.0.0.2"}}}
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001_core")
        for mid, status in rows.items():
            conn.execute(text("INSERT INTO machines (id, labels, tree_path, state, approved, status, first_seen, last_seen) "
                              "VALUES (:id, '{}', '/', 'approved', 1, :s, '2026-01-01', '2026-01-01')"), {"id": mid, "s": json.dumps(status)})
        command.upgrade(cfg, "heads")
        after = {mid: json.loads(s) for mid, s in conn.execute(text("SELECT id, status FROM machines"))}
    assert "facts" not in after[1]
    assert after[1]["fleet"]["unverified"] == {"received_at": "2026-01-01T00:00:00Z", "address": "10.0.0.9", "facts": {"role": "ATTACKER"}}
    assert after[2] == rows[2]
