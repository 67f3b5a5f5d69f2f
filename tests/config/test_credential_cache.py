"""The bundle route's per-credential cache (config/credentials.checked): a live credential's check
and bundle key are reused for CACHE_TTL seconds per process, bounded, never for an unknown token;
a revocation or a replacement through this server takes effect at once."""

from __future__ import annotations

import datetime as dt

import httpx
from sqlalchemy import update

from netslate import inventory
from netslate.config import credentials, generations, workingcopy
from netslate.config.models import MachineCredential


def _world(ctx):
    m = inventory.add_machine(ctx, ["52:54:00:cc:00:01"], name="pc1")
    workingcopy.put_node(ctx, "/", {"secrets": {"wifi": "psk-1234"}}, "local:test")
    generations.publish(ctx, "one secret", "local:test")
    return m["id"], credentials.enroll(ctx, "pc1", "local:test")["credential"]


def _check(ctx, token):
    with ctx.db.read_connection() as conn:
        return credentials.checked(ctx, conn, token)


def test_checked_is_reused_then_expires(ctx, monkeypatch):
    mid, cred = _world(ctx)
    c, key = _check(ctx, cred)
    assert c.machine_id == mid and c.trust == "token" and key == credentials.bundle_key(cred)
    # revoked behind this process's back (another server, the local CLI): seen within CACHE_TTL
    with ctx.db.session(write=True) as s:
        s.execute(update(MachineCredential).where(MachineCredential.machine_id == mid).values(revoked_at=dt.datetime(2020, 1, 1)))
    assert _check(ctx, cred)[0] == c  # from the cache
    monkeypatch.setattr(credentials, "CACHE_TTL", 0.0)
    assert _check(ctx, cred) == (None, None)  # off: the database says revoked
    # an unknown token is never stored
    n = len(credentials.cache_for(ctx))
    assert _check(ctx, credentials.PREFIX + "x" * 43) == (None, None) and len(credentials.cache_for(ctx)) == n


def test_cache_is_bounded_and_ages_out():
    cache = credentials.CredentialCache(max_entries=3)
    check = credentials.CredentialCheck(machine_id=1, trust="token", expires_at=None, credential_id=1)
    for i in range(5):
        cache.put(f"h{i}", check, b"k", now=100.0 + i)
    assert len(cache) == 3 and cache.get("h0", 105.0, 5.0) is None and cache.get("h4", 105.0, 5.0) == (check, b"k")
    assert cache.get("h2", 108.0, 5.0) is None  # stored at 102, 6 s old
    cache.drop_machine(1)
    assert len(cache) == 0


def test_revoke_and_replace_through_this_server_take_effect_at_once(ctx, live_server):
    mid, cred = _world(ctx)
    url = f"{live_server.url}/api/v1/machines/{mid}/bundle"
    admin = {"Authorization": f"Bearer {live_server.admin_token}"}
    mine = {"Authorization": f"Bearer {cred}"}
    for _ in range(2):  # the second answer comes from the cache
        r = httpx.get(url, headers=mine, timeout=30)
        assert r.status_code == 200 and r.json()["payload"]["authenticated"] is True
    # replaced (enrolled again): the old credential stops at once
    r = httpx.post(f"{live_server.url}/api/v1/machines/{mid}/enroll", headers=admin, timeout=30)
    assert r.status_code == 200, r.text
    new = r.json()["credential"]
    assert httpx.get(url, headers=mine, timeout=30).status_code == 403
    assert httpx.get(url, headers={"Authorization": f"Bearer {new}"}, timeout=30).status_code == 200
    # revoked through the API: at once
    r = httpx.post(f"{live_server.url}/api/v1/machines/{mid}/revoke", headers=admin, timeout=30)
    assert r.status_code == 200, r.text
    assert httpx.get(url, headers={"Authorization": f"Bearer {new}"}, timeout=30).status_code == 403


def test_a_revocation_by_another_process_on_this_data_directory_takes_effect_at_once(ctx, data_dir):
    """`netslate machine revoke` run locally (another process, as the other `serve --workers` are)
    rewrites DATA/credentials.revoked; this process's next check sees it and reads the database."""
    from nstest import run_cli

    mid, cred = _world(ctx)
    assert _check(ctx, cred)[0].machine_id == mid
    assert _check(ctx, cred)[0] is not None  # from the cache
    r = run_cli("machine", "revoke", str(mid), "--json", data_dir=data_dir)
    assert r.code == 0, r.stderr
    assert (data_dir / credentials.REVOKED_MARK).stat().st_mode & 0o777 == 0o600
    assert _check(ctx, cred) == (None, None)
