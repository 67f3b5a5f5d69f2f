"""One-time enrollment tokens (issue 13 §3, §4) on a real database: stored hashed, single use (a
second use is refused, and of two concurrent uses exactly one wins), expiry, a token bound to a
domain UUID refused from another UUID, the credential issued at the right trust level."""

import threading

import pytest
from sqlalchemy import text

from netslate import inventory
from netslate.config import credentials
from netslate.enrollment import tokens
from netslate.errors import UserError

UUID = "8b6c3a4e-1f2d-4c5b-9a7e-0d1c2b3a4f5e"
OTHER = "11111111-2222-4333-8444-555555555555"


def _machine(ctx, name="pc1", mac="52:54:00:00:13:01", uuid=None):
    return inventory.add_machine(ctx, [mac], uuid=uuid, name=name, actor="local:test")["id"]


def test_admin_token_exchanged_once_for_a_token_level_credential(ctx):
    mid = _machine(ctx)
    t = tokens.create(ctx, "local:test", machine=mid)
    assert t["token"].startswith("nse_") and t["machine_id"] == mid and t["kind"] == "token"
    # stored only as its SHA-256
    with ctx.db.engine.connect() as c:
        rows = c.execute(text("SELECT * FROM enrollment_tokens")).all()
    assert t["token"] not in repr(rows) and tokens.token_hash(t["token"]) in repr(rows)
    got = tokens.exchange(ctx, t["token"], remote="127.0.0.1")
    assert got.machine_id == mid and got.trust == "token"
    check = credentials.authenticate(ctx, got.credential)
    assert check.machine_id == mid and check.trust == "token"
    assert inventory.show_machine(ctx, mid)["trust"] == "token"
    # used twice: refused, with a clear message, and the first credential keeps working
    with pytest.raises(tokens.TokenUsed, match="used already"):
        tokens.exchange(ctx, t["token"])
    assert credentials.authenticate(ctx, got.credential) is not None
    listed = tokens.list_tokens(ctx, machine=mid)
    assert listed[0]["used_at"] and "token" not in listed[0]


def test_unknown_malformed_and_expired_tokens_refused(ctx):
    mid = _machine(ctx)
    with pytest.raises(tokens.TokenRefused, match="unknown"):
        tokens.exchange(ctx, tokens.new_token())
    with pytest.raises(tokens.TokenRefused, match="not an enrollment token"):
        tokens.exchange(ctx, "nse_short")
    t = tokens.create(ctx, "local:test", machine=mid, ttl_seconds=60)
    with ctx.db.session() as s:
        s.execute(text("UPDATE enrollment_tokens SET expires_at = '2000-01-01 00:00:00'"))
    with pytest.raises(tokens.TokenRefused, match="expired"):
        tokens.exchange(ctx, t["token"])
    r = tokens.create(ctx, "local:test", machine=mid)
    tokens.revoke(ctx, r["id"], "local:test")
    with pytest.raises(tokens.TokenRefused, match="expired"):
        tokens.exchange(ctx, r["token"])
    with pytest.raises(UserError):
        tokens.create(ctx, "local:test")  # bound to nothing
    # tokens that ended more than a day ago are pruned when new ones are made (the one that
    # expired in 2000 went when `r` was made); the one revoked just now stays for a day
    ids = [x["id"] for x in tokens.list_tokens(ctx)]
    assert t["id"] not in ids and r["id"] in ids
    with pytest.raises(UserError):
        tokens.create(ctx, "local:test", machine=mid, kind="host")  # host tokens need the domain UUID


def test_host_token_bound_to_the_domain_uuid(ctx):
    t = tokens.create(ctx, "local:test", domain_uuid=UUID.upper(), kind="host")
    # another VM (another SMBIOS UUID, or none) cannot use it, and the refusal does not burn it
    with pytest.raises(tokens.TokenRefused, match="bound to another machine"):
        tokens.exchange(ctx, t["token"], uuid=OTHER, macs=["52:54:00:00:13:09"])
    with pytest.raises(tokens.TokenRefused, match="bound to another machine"):
        tokens.exchange(ctx, t["token"], uuid=None)
    # the VM itself: a machine is registered for its UUID (it never PXE-booted) at trust host
    got = tokens.exchange(ctx, t["token"], uuid=UUID, macs=["52:54:00:00:13:02"])
    assert got.trust == "host"
    m = inventory.show_machine(ctx, got.machine_id)
    assert m["uuid"] == UUID and m["trust"] == "host"
    assert credentials.authenticate(ctx, got.credential).trust == "host"
    with pytest.raises(tokens.TokenUsed):
        tokens.exchange(ctx, t["token"], uuid=UUID)
    # a machine the server knows already by that UUID gets the credential
    mid = _machine(ctx, "pc2", "52:54:00:00:13:03", uuid=OTHER)
    t2 = tokens.create(ctx, "local:test", domain_uuid=OTHER, kind="host")
    assert tokens.exchange(ctx, t2["token"], uuid=OTHER).machine_id == mid


def test_concurrent_double_use_exactly_one_wins(ctx):
    mid = _machine(ctx)
    for _round in range(3):
        t = tokens.create(ctx, "local:test", machine=mid)
        results: list = []
        barrier = threading.Barrier(4)

        def go():
            barrier.wait(timeout=10)
            try:
                results.append(tokens.exchange(ctx, t["token"]))
            except tokens.TokenUsed as exc:
                results.append(exc)

        threads = [threading.Thread(target=go) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=30)
        wins = [r for r in results if isinstance(r, tokens.Exchanged)]
        assert len(results) == 4 and len(wins) == 1, results


def test_oem_string_form():
    tok = tokens.new_token()
    assert tokens.TOKEN_RE.match(tok)
    assert tokens.oem_string(tok) == "netslate-enroll:" + tok
