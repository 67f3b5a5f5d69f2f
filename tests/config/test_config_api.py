"""The config API over real HTTP: bundles (signature, ETag, long-poll, secrets), publish, canary,
rollback, conflicts, explain, and the guarantee that secrets never leak."""

import base64
import json
import logging
import threading
import time

import httpx
import pytest
from sqlalchemy import select

from netslate.agent.bundle import open_secrets
from netslate.config import generations
from netslate.context import Context
from netslate.crypto.envelope import open_envelope
from netslate.errors import Conflict
from netslate.store.models import AuditEntry, Machine

from nstest import run_cli

SECRET_A = "s3cret-for-site-a-only"
SECRET_M = "per-machine-secret-pc3"


def _machines(ctx, *specs):
    ids = {}
    with ctx.db.session() as s:
        for name, path in specs:
            m = Machine(name=name, tree_path=path, labels={"room": "r1"}, status={"facts": {"cpus": 2}})
            s.add(m)
            s.flush()
            ids[name] = m.id
    return ids


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

    def publish(self, message="change", **kw):
        return self.ok("POST", "/api/v1/config/publish", json={"message": message, **kw})

    def bundle(self, machine, credential=None, **kw):
        headers = kw.pop("headers", {})
        if credential:
            headers["Authorization"] = f"Bearer {credential}"
        return self.anon.get(f"/api/v1/machines/{machine}/bundle", headers=headers, **kw)

    def payload(self, machine, credential=None):
        """The verified payload; with a credential, its secrets opened as the agent opens them."""
        r = self.bundle(machine, credential)
        assert r.status_code == 200, r.text
        assert SECRET_A not in r.text and SECRET_M not in r.text  # secrets travel only sealed to the credential
        p = open_envelope(r.json(), self.key)
        if credential:
            p, problem = open_secrets(p, credential)
            assert problem is None, problem
        return p


@pytest.fixture
def world(live_server):
    ids = _machines(live_server.ctx, ("pc1", "/site-a/c1/pool-x"), ("pc2", "/site-b/c1"), ("pc3", "/site-a/c1/pool-x/lab"))
    api = Api(live_server)
    api.put("/", {"timezone": "UTC", "users": [{"name": "root", "password_hash": "$6$abc"}], "hostname": "{{ machine.name }}-{{ facts.cpus }}"})
    api.put("/site-a", {"timezone": "Europe/Paris", "secrets": {"db_password": SECRET_A}, "users+": [{"name": "alice", "uid": 1000}]})
    api.put("/site-a/c1/pool-x", {"sysctl": {"vm.swappiness": 10}})
    api.put("@pc3", {"secrets": {"api_key": SECRET_M}})
    api.publish("initial")
    return api, ids


def test_schema_is_published(live_server):
    s = httpx.get(live_server.url + "/api/v1/schema/config").json()
    assert {"hostname", "users", "files", "secrets", "health_checks", "network"} <= set(s["properties"])


def test_bundle_is_signed_with_etag_and_image_pin(world, tmp_path):
    api, ids = world
    r = api.bundle("pc1")
    assert r.status_code == 200
    p = open_envelope(r.json(), api.key)
    assert p["kind"] == "netslate-bundle/1" and p["machine_id"] == ids["pc1"] and p["generation"] == 1
    assert p["issued_at"].endswith("Z") and p["image_pin"] is None  # no boot rule, pin or default profile
    doc = p["document"]
    assert doc["hostname"] == "pc1-2" and doc["timezone"] == "Europe/Paris" and doc["sysctl"] == {"vm.swappiness": 10}
    assert [u["name"] for u in doc["users"]] == ["root", "alice"]
    # tampering breaks the signature
    bad = r.json()
    bad["payload"]["document"]["timezone"] = "UTC"
    with pytest.raises(Exception):
        open_envelope(bad, api.key)
    # an explicit boot pin (netslate machine pin) is what the bundle carries; this machine has no MAC
    from netslate.boot import store as bstore

    ctx = api.srv.ctx
    kernel = tmp_path / "vmlinuz"
    for n in (1, 2):
        kernel.write_bytes(b"k%d" % n * 3000)
        ctx.library.import_files("desktop", kernel=kernel, tag="stable", warn=lambda m: None)
    bstore.pin_machine(ctx, "pc1", "desktop@1")
    assert api.payload("pc1")["image_pin"] == {"name": "desktop", "version": 1, "source": "boot pin",
                                               "digest": ctx.library.resolve("desktop", "1").manifest_digest}
    r = api.bundle("pc1")
    etag = r.headers["etag"]
    r2 = api.bundle("pc1", headers={"If-None-Match": etag})
    assert r2.status_code == 304 and r2.headers["etag"] == etag
    api.ok("POST", "/api/v1/config/set", json={"path": "/site-a", "key": "locale", "value": "fr_FR.UTF-8"})
    api.publish("locale")
    r3 = api.bundle("pc1", headers={"If-None-Match": etag})
    assert r3.status_code == 200 and r3.headers["etag"] != etag
    assert open_envelope(r3.json(), api.key)["document"]["locale"] == "fr_FR.UTF-8"


def test_secrets_only_for_the_enrolled_machine_and_never_leak(world, caplog):
    caplog.set_level(logging.DEBUG)
    api, ids = world
    cred1 = api.ok("POST", f"/api/v1/machines/{ids['pc1']}/enroll")["credential"]
    cred2 = api.ok("POST", f"/api/v1/machines/{ids['pc2']}/enroll")["credential"]
    cred3 = api.ok("POST", "/api/v1/machines/pc3/enroll")["credential"]
    # without a credential: every secret removed, and the bundle says so
    p = api.payload("pc1")
    assert "secrets" not in p["document"] and p["secrets_removed"] is True and p["authenticated"] is False
    # with its own credential: the secrets of the nodes above it, not another machine's
    p1 = api.payload("pc1", cred1)
    assert p1["document"]["secrets"] == {"db_password": SECRET_A} and p1["secrets_removed"] is False
    p3 = api.payload("pc3", cred3)
    assert p3["document"]["secrets"] == {"db_password": SECRET_A, "api_key": SECRET_M}
    # pc2 (site-b) never sees site-a's secret; a credential for another machine is refused
    p2 = api.payload("pc2", cred2)
    assert "secrets" not in p2["document"] and p2["secrets_removed"] is False
    assert api.bundle("pc1", cred2).status_code == 403
    assert api.bundle("pc1", "nst_not-a-token").status_code == 403
    # an operator token reads the bundle without secrets
    r = api.http.get(f"/api/v1/machines/{ids['pc3']}/bundle")
    assert r.status_code == 200 and r.json()["payload"]["secrets_removed"] is True
    # nothing else ever shows a secret value
    api.ok("POST", "/api/v1/config/set", json={"path": "/site-a", "key": "secrets.db_password", "value": SECRET_A + "-v2"})
    outputs = {
        "explain": api.anon.get("/api/v1/machines/pc3/explain").text,
        "node": api.anon.get("/api/v1/config/node", params={"path": "/site-a"}).text,
        "machine-node": api.anon.get("/api/v1/config/node", params={"path": "@pc3"}).text,
        "diff": api.anon.get("/api/v1/config/diff").text,
        "bundle-pc2": api.bundle("pc2", cred2).text,
    }
    api.publish("rotate")
    outputs["history"] = api.anon.get("/api/v1/config/history").text
    outputs["generation"] = api.anon.get("/api/v1/config/generations/2").text
    api.ok("POST", "/api/v1/config/rollback", json={"generation": 1, "message": "back"})
    with api.srv.ctx.db.session() as s:
        outputs["audit"] = json.dumps([[a.action, a.target, a.detail] for a in s.scalars(select(AuditEntry))])
    outputs["logs"] = "\n".join(r.getMessage() for r in caplog.records)
    outputs["cli-explain"] = run_cli("config", "explain", "pc3", "--json", data_dir=api.srv.ctx.data_dir).stdout
    outputs["cli-show"] = run_cli("config", "show", "/site-a", data_dir=api.srv.ctx.data_dir).stdout
    for where, text in outputs.items():
        assert SECRET_A not in text and SECRET_M not in text, where
    assert "<redacted>" in outputs["explain"] and "<redacted>" in outputs["diff"] and "<redacted>" in outputs["cli-show"]
    assert '"/secrets/db_password": "/site-a"' in outputs["explain"] or "/secrets/db_password" in json.loads(outputs["explain"])["sources"]
    # the machine still gets the value it is owed
    assert api.payload("pc3", cred3)["document"]["secrets"]["db_password"] == SECRET_A


def _poll(api, machine, etag, wait, out):
    t0 = time.monotonic()
    r = api.bundle(machine, headers={"If-None-Match": etag}, params={"wait": wait})
    out.append((r.status_code, time.monotonic() - t0, r, time.monotonic()))


def test_long_poll_wakes_on_publish(world):
    api, ids = world
    etag = api.bundle("pc1").headers["etag"]
    # nothing changes: the wait ends with 304 after the time asked for
    out = []
    _poll(api, "pc1", etag, 1.5, out)
    assert out[0][0] == 304 and 1.4 < out[0][1] < 6
    # a publish through the API wakes the waiter at once
    out = []
    t = threading.Thread(target=_poll, args=(api, "pc1", etag, 60, out))
    t.start()
    time.sleep(1.0)
    assert not out, "the long-poll returned before anything changed"
    api.ok("POST", "/api/v1/config/set", json={"path": "/", "key": "locale", "value": "C.UTF-8"})
    api.publish("wake")
    t.join(30)
    status, took, r, _ = out[0]
    assert status == 200 and took < 1.0 + 5
    assert open_envelope(r.json(), api.key)["generation"] == 2
    # a publish by another process (the local CLI on the same database) wakes it within seconds too
    etag = r.headers["etag"]
    out = []
    t = threading.Thread(target=_poll, args=(api, "pc1", etag, 60, out))
    t.start()
    time.sleep(0.5)
    d = api.srv.ctx.data_dir
    assert run_cli("config", "set", "/", "locale", "de_DE.UTF-8", data_dir=d).code == 0
    assert run_cli("config", "publish", "-m", "from the cli", data_dir=d).code == 0
    t_pub = time.monotonic()  # the publish committed before the CLI exited
    t.join(30)
    status, _, r, t_done = out[0]
    assert status == 200 and open_envelope(r.json(), api.key)["document"]["locale"] == "de_DE.UTF-8"
    assert t_done - t_pub < 4, "the other process's publish was not noticed within seconds"


def test_canary_then_promote(world):
    api, ids = world
    api.ok("POST", "/api/v1/config/set", json={"path": "/", "key": "ntp.servers", "value": ["ntp1.example"]})
    out = api.publish("canary ntp", canary="/site-a/c1/pool-x/lab")
    assert out["generation"] == 2 and out["current"] == 1
    assert api.payload("pc3")["generation"] == 2 and api.payload("pc3")["document"]["ntp"] == {"servers": ["ntp1.example"]}
    assert api.payload("pc1")["generation"] == 1 and "ntp" not in api.payload("pc1")["document"]
    assert api.payload("pc2")["generation"] == 1
    assert api.anon.get("/api/v1/machines/pc3/explain").json()["canary"] is True
    # another publish must wait for the canary to be promoted
    api.ok("POST", "/api/v1/config/set", json={"path": "/", "key": "locale", "value": "C"})
    r = api.http.post("/api/v1/config/publish", json={"message": "too early"})
    assert r.status_code == 409 and "canary" in r.json()["detail"]
    assert api.ok("POST", "/api/v1/config/promote")["current"] == 2
    assert api.payload("pc1")["generation"] == 2 and api.payload("pc2")["document"]["ntp"] == {"servers": ["ntp1.example"]}
    hist = api.anon.get("/api/v1/config/history").json()
    assert hist[0]["generation"] == 2 and hist[0]["canary_path"] == "/site-a/c1/pool-x/lab" and hist[0]["current"]


def test_rollback_is_a_newer_generation_with_old_content(world):
    api, ids = world
    first = api.payload("pc1")["document"]
    api.ok("POST", "/api/v1/config/set", json={"path": "/site-a", "key": "timezone", "value": "Asia/Tokyo"})
    api.publish("tokyo")
    assert api.payload("pc1")["document"]["timezone"] == "Asia/Tokyo"
    out = api.ok("POST", "/api/v1/config/rollback", json={"generation": 1, "message": "tokyo was a mistake"})
    assert out["generation"] == 3 and out["rollback_of"] == 1 and out["working_copy_followed"]
    p = api.payload("pc1")
    assert p["generation"] == 3 and p["document"] == first
    g1 = api.anon.get("/api/v1/config/node", params={"path": "/site-a", "generation": 1}).json()["document"]
    g3 = api.anon.get("/api/v1/config/node", params={"path": "/site-a", "generation": 3}).json()["document"]
    assert g1 == g3 and g1["timezone"] == "Europe/Paris"
    assert api.anon.get("/api/v1/config/history").json()[0]["kind"] == "rollback"
    with api.srv.ctx.db.session() as s:
        acts = [a.action for a in s.scalars(select(AuditEntry).where(AuditEntry.action.like("config.%")))]
    assert acts.count("config.publish") == 2 and acts.count("config.rollback") == 1


def test_stale_working_copy_fails_cleanly(world):
    api, ids = world
    api.ok("POST", "/api/v1/config/set", json={"path": "/", "key": "locale", "value": "C"})
    r = api.http.post("/api/v1/config/publish", json={"message": "old view", "expect_base": 0})
    assert r.status_code == 409 and "expected" in r.json()["detail"]
    # pending edits + a rollback published meanwhile: the working copy is stale and is not merged silently
    out = api.ok("POST", "/api/v1/config/rollback", json={"generation": 0, "message": "empty"})
    assert out["working_copy_followed"] is False
    r = api.http.post("/api/v1/config/publish", json={"message": "stale"})
    assert r.status_code == 409 and "working copy is based on generation 1" in r.json()["detail"]
    assert api.anon.get("/api/v1/config/status").json()["latest"] == 2
    assert api.anon.get("/api/v1/config/diff").json()["stale"] is True
    api.ok("POST", "/api/v1/config/reset")
    assert api.anon.get("/api/v1/config/node", params={"path": "/"}).json()["document"] == {}


def test_invalid_document_rejected_and_nothing_lost(world):
    api, ids = world
    before = api.anon.get("/api/v1/config/node", params={"path": "/site-a"}).json()
    r = api.http.put("/api/v1/config/node", params={"path": "/site-a"},
                     json={"document": {"users": [{"name": "bob", "uid": "many"}], "network": {"mode": "carrier-pigeon"}}})
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert "/users/0/uid" in detail and "/network/mode" in detail and "carrier-pigeon" not in detail
    r = api.http.post("/api/v1/config/set", json={"path": "/site-a", "key": "files", "value": [{"path": "/etc/x", "template": "{% for %}"}]})
    assert r.status_code == 400 and "template does not parse" in r.json()["detail"]
    r = api.http.put("/api/v1/config/node", params={"path": "/../etc"}, json={"document": {}})
    assert r.status_code == 400
    # huge documents are refused: over the body limit before parsing, over the document limit after
    r = api.http.put("/api/v1/config/node", params={"path": "/site-a"}, json={"document": {"extra": {"x": "y" * 2_000_000}}})
    assert r.status_code == 413
    r = api.http.put("/api/v1/config/node", params={"path": "/site-a"}, json={"document": {"extra": {"x": "y" * 300_000}}})
    assert r.status_code == 400 and "limit" in r.json()["detail"]
    r = api.http.put("/api/v1/config/node", params={"path": "/site-a"}, json={"document": {"timezone": "UTC"}, "expect_revision": 0})
    assert r.status_code == 409
    assert api.anon.get("/api/v1/config/node", params={"path": "/site-a"}).json() == before
    # mutations need an operator token
    assert api.anon.post("/api/v1/config/publish", json={"message": "x"}).status_code == 401


def test_runaway_template_stopped_and_server_keeps_serving(world):
    api, ids = world
    api.put("/site-b", {"files": [{"path": "/etc/loop", "template": "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}"}]})
    api.publish("bad template")
    t0 = time.monotonic()
    r = api.bundle("pc2")
    assert r.status_code == 400 and "stopped" in r.json()["detail"] and "/files/0" in r.json()["detail"]
    assert time.monotonic() - t0 < 5
    assert api.bundle("pc1").status_code == 200


def test_explain_names_the_source_of_every_leaf(world):
    api, ids = world
    e = api.anon.get("/api/v1/machines/pc3/explain").json()
    assert [c["node"] for c in e["chain"]] == ["/", "/site-a", "/site-a/c1/pool-x", "@pc3"]
    assert e["sources"]["/timezone"] == "/site-a" and e["sources"]["/users/0"] == "/" and e["sources"]["/users/1"] == "/site-a"
    assert e["sources"]["/sysctl/vm.swappiness"] == "/site-a/c1/pool-x" and e["sources"]["/secrets/api_key"] == "@pc3"
    assert e["document"]["secrets"] == {"db_password": "<redacted>", "api_key": "<redacted>"}


def test_concurrent_publishes_exactly_one_wins(world):
    """Four server-independent processes publish the same working copy at the same moment (SQLite)."""
    api, ids = world
    d = api.srv.ctx.data_dir
    api.ok("POST", "/api/v1/config/set", json={"path": "/", "key": "locale", "value": "C"})
    import subprocess
    import sys
    import os

    env = dict(os.environ, NETSLATE_DATA_DIR=str(d))
    env.pop("NETSLATE_SERVER", None)
    # each process gets ready (imports, opens the database, reads its base), then all go at once
    barrier = d.parent / "race"
    barrier.mkdir()
    code = (
        "import os,sys,time\n"
        "from netslate.context import Context\n"
        "from netslate.config import generations\n"
        "from netslate.errors import Conflict\n"
        f"ctx = Context({str(d)!r}).init()\n"
        "base = generations.status(ctx)['working_base']\n"
        f"open(os.path.join({str(barrier)!r}, 'ready-' + sys.argv[1]), 'w').close()\n"
        "deadline = time.time() + 120\n"
        f"while not os.path.exists(os.path.join({str(barrier)!r}, 'go')) and time.time() < deadline:\n"
        "    time.sleep(0.001)\n"
        "try:\n"
        "    print('WON', generations.publish(ctx, 'race', 'racer', expect_base=base)['generation'])\n"
        "except Conflict as e:\n"
        "    print('LOST', e)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(4)]
    deadline = time.time() + 120
    while len(list(barrier.glob("ready-*"))) < 4 and time.time() < deadline:
        time.sleep(0.05)
    (barrier / "go").touch()
    outs = [p.communicate(timeout=120) for p in procs]
    lines = [o[0].strip() for o in outs]
    assert sum(l.startswith("WON") for l in lines) == 1, (lines, [o[1][-500:] for o in outs])
    assert sum(l.startswith("LOST") for l in lines) == 3, (lines, [o[1][-800:] for o in outs])
    hist = api.anon.get("/api/v1/config/history").json()
    assert [h["generation"] for h in hist] == [2, 1]
