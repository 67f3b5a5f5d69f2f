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
