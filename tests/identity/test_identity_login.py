"""People log in through a real slapd (LDAPS) against a real server on loopback: roles from
groups, nested groups → pools, refused accounts, throttling, filter escaping, CSRF, sessions."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from sqlalchemy import select, update

from netslate.identity import directories, entitlements, users
from netslate.identity.models import WebSession
from netslate.identity.sessions import id_hash
from netslate.store.db import utcnow
from netslate.store.models import AuditEntry
from nstest import start_server


def setup_identity(ctx, world, starttls: bool = False) -> None:
    directories.add_directory(ctx, "corp", "ldap", world.starttls_uri if starttls else world.uri, world.base_dn, world.bind_dn,
                              world.bind_password, world.ca_pem, actor="local:test")
    for group, grant, value in (("netslate-admins", "role", "admin"), ("netslate-operators", "role", "operator"),
                                ("netslate-viewers", "role", "viewer"), ("lab-a-users", "pool", "lab-a"),
                                (f"cn=lab-b-users,ou=groups,{world.base_dn}", "pool", "lab-b")):
        entitlements.add_entitlement(ctx, "group", group, grant, value, actor="local:test")


@pytest.fixture
def server(ctx, ldap_world):
    setup_identity(ctx, ldap_world)
    srv = start_server(ctx)
    yield srv
    srv.stop()


def login(srv, username: str, password: str) -> httpx.Response:
    return httpx.post(f"{srv.url}/api/v1/auth/login", json={"username": username, "password": password}, timeout=30)


def browser(srv, result: dict) -> httpx.Client:
    """A client that, like a browser, sends only the session cookie."""
    client = httpx.Client(base_url=srv.url, timeout=30)
    client.cookies.set("netslate_session", result["session_id"])
    return client


def audit(ctx, action: str) -> list[AuditEntry]:
    with ctx.db.session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


def test_admin_logs_in_through_ldap_role_from_group_and_creates_a_token(server, ldap_world):
    r = login(server, "ada", ldap_world.passwords["ada"])
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["user"] == "ada" and result["role"] == "admin"
    with browser(server, result) as web:
        me = web.get("/api/v1/auth/me").json()
        assert me == {"user": "ada", "kind": "user", "role": "admin", "groups": ["netslate-admins"], "pools": []}
        made = web.post("/api/v1/tokens", json={"name": "from-web", "role": "viewer"}, headers={"X-CSRF-Token": result["csrf_token"]})
        assert made.status_code == 201, made.text
        assert made.json()["token"].startswith("nst_")
    created = audit(server.ctx, "token.create")
    assert created[-1].actor == "user:ada" and created[-1].target == "token:from-web"
    entry = audit(server.ctx, "auth.login")[-1]
    assert entry.actor == "user:ada" and entry.detail["role"] == "admin" and entry.detail["source"] == "directory:corp"
    assert entry.detail["address"] == "127.0.0.1"


def test_operator_and_viewer_roles(server, ldap_world):
    assert login(server, "oscar", ldap_world.passwords["oscar"]).json()["role"] == "operator"
    viewer = login(server, "vera", ldap_world.passwords["vera"]).json()
    assert viewer["role"] == "viewer"
    with browser(server, viewer) as web:  # a viewer may not create tokens, CSRF token or not
        r = web.post("/api/v1/tokens", json={"name": "nope", "role": "viewer"}, headers={"X-CSRF-Token": viewer["csrf_token"]})
        assert r.status_code == 403 and "admin role" in r.json()["detail"], r.text


def test_nested_group_gives_the_pool_and_no_role(server, ldap_world):
    result = login(server, "bob", ldap_world.passwords["bob"]).json()
    assert result["role"] is None
    with browser(server, result) as web:
        me = web.get("/api/v1/auth/me").json()
        assert me["pools"] == ["lab-b"] and me["role"] is None
        assert set(me["groups"]) == {"lab-b-students", "lab-b-users"}
        r = web.post("/api/v1/tokens", json={"name": "x", "role": "viewer"}, headers={"X-CSRF-Token": result["csrf_token"]})
        assert r.status_code == 403 and "user:bob has no role" in r.json()["detail"], r.text
    alice = login(server, "alice", ldap_world.passwords["alice"]).json()
    with browser(server, alice) as web:
        assert web.get("/api/v1/auth/me").json()["pools"] == ["lab-a"]


def test_a_user_in_no_registered_group_gets_no_role_and_no_pool(server, ldap_world):
    for name in ("carol", "nina"):  # carol's coffee-club is named by no entitlement; nina has no group
        result = login(server, name, ldap_world.passwords[name]).json()
        assert result["role"] is None
        with browser(server, result) as web:
            me = web.get("/api/v1/auth/me").json()
            assert me["role"] is None and me["pools"] == []
            assert web.get("/api/v1/users/x/explain").status_code == 403


def test_disabled_and_expired_accounts_are_refused_with_a_clear_message(server, ldap_world):
    r = login(server, "dave", ldap_world.passwords["dave"])
    assert r.status_code == 400
    assert r.json()["detail"] == "the account dave is locked in directory corp (pwdAccountLockedTime)"
    r = login(server, "erin", ldap_world.passwords["erin"])
    assert r.status_code == 400
    assert r.json()["detail"] == "the account erin expired on 1970-01-02 in directory corp (shadowExpire)"
    refused = audit(server.ctx, "auth.login_refused")
    assert [e.actor for e in refused] == ["user:dave", "user:erin"]
    assert not audit(server.ctx, "auth.login")


def test_wrong_passwords_are_throttled_per_user_and_per_address(server, ldap_world):
    for _ in range(5):
        r = login(server, "alice", "not her password")
        assert r.status_code == 400 and r.json()["detail"] == "wrong user name or password"
    r = login(server, "alice", ldap_world.passwords["alice"])  # the right password too, while throttled
    assert r.status_code == 429, r.text
    assert r.json()["detail"].startswith("too many failed logins for alice: try again in ")
    assert 1 <= int(r.headers["retry-after"]) <= 300
    assert login(server, "bob", ldap_world.passwords["bob"]).status_code == 200  # another user is not held
    # per address: 20 failures from 127.0.0.1 in the window, whatever the names
    for i in range(15):
        assert login(server, f"ghost{i}", "x" * 10).status_code == 400
    r = login(server, "oscar", ldap_world.passwords["oscar"])
    assert r.status_code == 429 and "from 127.0.0.1" in r.json()["detail"], r.text
    assert len(audit(server.ctx, "auth.login_failed")) == 20
    assert audit(server.ctx, "auth.login_throttled")[-1].actor == "user:oscar"


def test_ldap_filter_characters_in_the_user_name_are_escaped(server, ldap_world):
    alice = ldap_world.passwords["alice"]
    for name in ("al*", "*", "alice)(uid=*", "*)(uid=*))(|(uid=*", ldap_world.hostile):
        r = login(server, name, alice)
        assert r.status_code == 400 and r.json()["detail"] == "wrong user name or password", (name, r.text)
    # the user whose uid holds the characters logs in as exactly that one entry
    r = login(server, ldap_world.hostile, ldap_world.passwords[ldap_world.hostile])
    assert r.status_code == 200, r.text
    assert r.json()["user"] == ldap_world.hostile and r.json()["role"] is None


def test_csrf_token_required_for_cookie_posts(server, ldap_world):
    result = login(server, "ada", ldap_world.passwords["ada"]).json()
    with browser(server, result) as web:
        r = web.post("/api/v1/tokens", json={"name": "t1", "role": "viewer"})
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
        r = web.post("/api/v1/tokens", json={"name": "t1", "role": "viewer"}, headers={"X-CSRF-Token": "wrong" + result["csrf_token"]})
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
        r = web.delete("/api/v1/tokens/admin")
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
        r = web.post("/api/v1/tokens", json={"name": "t1", "role": "viewer"}, headers={"X-CSRF-Token": result["csrf_token"]})
        assert r.status_code == 201, r.text
        assert web.get("/api/v1/auth/me").status_code == 200  # reads need no token
        # the web pages are behind the same guard; the form field works as the header does
        r = web.post("/logout", data={})
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
        assert web.get("/api/v1/auth/me").json()["user"] == "ada"
        r = web.post("/logout", data={"csrf_token": result["csrf_token"]})
        assert r.status_code in (302, 303), r.text
        assert "netslate_session" in r.headers.get("set-cookie", "")  # cleared
        web.cookies.set("netslate_session", result["session_id"])  # the old id, replayed
        assert web.get("/api/v1/auth/me").json()["kind"] == "anonymous"
    # a bearer token needs no CSRF token
    r = httpx.post(f"{server.url}/api/v1/tokens", json={"name": "t2", "role": "viewer"},
                   headers={"Authorization": f"Bearer {server.admin_token}"})
    assert r.status_code == 201, r.text
    assert [e.actor for e in audit(server.ctx, "auth.logout")] == ["user:ada"]


def test_new_session_id_at_every_login_and_a_made_up_cookie_is_nobody(server, ldap_world):
    first = login(server, "vera", ldap_world.passwords["vera"]).json()
    with browser(server, first) as web:  # logging in again from a browser that holds a session
        second = web.post("/api/v1/auth/login", json={"username": "vera", "password": ldap_world.passwords["vera"]}).json()
    assert second["session_id"] != first["session_id"] and second["csrf_token"] != first["csrf_token"]
    with browser(server, {"session_id": "attacker-chosen-value"}) as web:
        assert web.get("/api/v1/auth/me").json()["kind"] == "anonymous"
    with server.ctx.db.session() as s:  # only hashes are stored
        stored = set(s.scalars(select(WebSession.id_sha256)))
    assert {id_hash(first["session_id"]), id_hash(second["session_id"])} <= stored
    assert first["session_id"] not in stored


def test_idle_and_absolute_time_outs(ctx, ldap_world):
    setup_identity(ctx, ldap_world)
    srv = start_server(ctx, {"session_idle_seconds": 600, "session_max_seconds": 3600})
    try:
        idle = login(srv, "vera", ldap_world.passwords["vera"]).json()
        absolute = login(srv, "oscar", ldap_world.passwords["oscar"]).json()
        expires = dt.datetime.fromisoformat(absolute["expires_at"].replace("Z", "+00:00"))
        assert 3590 <= (expires - dt.datetime.now(dt.timezone.utc)).total_seconds() <= 3600
        with ctx.db.session() as s:
            assert {r.idle_seconds for r in s.scalars(select(WebSession))} == {600}
            # vera was last seen 601 s ago; oscar was seen now but his session is past its absolute end
            s.execute(update(WebSession).where(WebSession.id_sha256 == id_hash(idle["session_id"]))
                      .values(last_seen=utcnow() - dt.timedelta(seconds=601)))
            s.execute(update(WebSession).where(WebSession.id_sha256 == id_hash(absolute["session_id"]))
                      .values(expires_at=utcnow() - dt.timedelta(seconds=1)))
        for result in (idle, absolute):
            with browser(srv, result) as web:
                assert web.get("/api/v1/auth/me").json()["kind"] == "anonymous"
        with ctx.db.session() as s:  # timed-out sessions are deleted when seen
            assert list(s.scalars(select(WebSession))) == []
        fresh = login(srv, "vera", ldap_world.passwords["vera"]).json()
        with browser(srv, fresh) as web:  # within the idle time-out, use keeps the session alive
            with ctx.db.session() as s:
                s.execute(update(WebSession).values(last_seen=utcnow() - dt.timedelta(seconds=599)))
            assert web.get("/api/v1/auth/me").json()["user"] == "vera"
            with ctx.db.session() as s:
                assert (utcnow() - s.scalar(select(WebSession.last_seen))).total_seconds() < 5
    finally:
        srv.stop()


def test_starttls_directory_and_a_local_break_glass_admin(ctx, ldap_world):
    setup_identity(ctx, ldap_world, starttls=True)
    users.add_user(ctx, "rescue", "break-glass-pw", "admin", actor="local:test")
    srv = start_server(ctx)
    try:
        assert login(srv, "ada", ldap_world.passwords["ada"]).json()["role"] == "admin"
        local = login(srv, "rescue", "break-glass-pw").json()
        assert local["role"] == "admin"
        with browser(srv, local) as web:
            assert web.get("/api/v1/auth/me").json() == {"user": "rescue", "kind": "user", "role": "admin", "groups": [], "pools": []}
            users.remove_user(ctx, "rescue", actor="local:test")  # removing the user ends the session
            assert web.get("/api/v1/auth/me").json()["kind"] == "anonymous"
        assert login(srv, "rescue", "break-glass-pw").status_code == 400
    finally:
        srv.stop()


def test_removing_an_entitlement_takes_effect_at_once(server, ldap_world):
    result = login(server, "alice", ldap_world.passwords["alice"]).json()
    with browser(server, result) as web:
        assert web.get("/api/v1/auth/me").json()["pools"] == ["lab-a"]
        ident = next(e["id"] for e in entitlements.list_entitlements(server.ctx) if e["value"] == "lab-a")
        entitlements.remove_entitlement(server.ctx, ident, actor="local:test")
        assert web.get("/api/v1/auth/me").json()["pools"] == []
