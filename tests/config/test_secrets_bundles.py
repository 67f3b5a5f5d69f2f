"""Issue 13 §1/§5: secrets travel only sealed to a machine's credential, and only those at or below
its trust level. A bundle for a `none` machine (asked for by id, MAC, UUID) carries no secret."""

import datetime as dt
import json

import pytest
from sqlalchemy import update

from netslate import inventory
from netslate.agent.bundle import open_secrets
from netslate.config import bundles, credentials, generations, workingcopy
from netslate.config.models import MachineCredential
from netslate.errors import UserError

S_TOKEN = "token-level-3f9a1c"
S_HOST = "host-level-8b27de"
S_TPM = "tpm-level-51c0aa"
ALL = (S_TOKEN, S_HOST, S_TPM)


@pytest.fixture
def world(ctx):
    m = inventory.add_machine(ctx, ["52:54:00:12:34:56"], uuid="6b1e1c7e-7a39-4a0b-9d36-2f5a0f0e1a01", name="pc1")
    other = inventory.add_machine(ctx, ["52:54:00:12:34:57"], name="pc2")
    workingcopy.put_node(ctx, "/", {"timezone": "UTC", "secrets": {"wifi": S_TOKEN, "join": S_HOST, "vpn": S_TPM},
                                    "secret_levels": {"join": "host", "vpn": "tpm"}}, "local:test")
    generations.publish(ctx, "secrets at three levels", "local:test")
    return ctx, m["id"], other["id"]


def _payload(ctx, ident, cred=None):
    env, etag, _ = bundles.bundle(ctx, ident, cred)
    text = json.dumps(env)
    for s in ALL:
        assert s not in text  # never in clear in a bundle, whoever asks
    return env["payload"], etag


def test_bundles_for_a_none_machine_carry_no_secret(world):
    ctx, mid, _ = world
    assert inventory.show_machine(ctx, mid)["trust"] == "none"
    for ident in (mid, "pc1", "52:54:00:12:34:56", "6b1e1c7e-7a39-4a0b-9d36-2f5a0f0e1a01"):
        p, _ = _payload(ctx, ident)
        assert p["sealed_secrets"] is None and "secrets" not in p["document"] and "secret_levels" not in p["document"]
        assert p["authenticated"] is False and p["trust"] == "none"
        assert p["secrets_removed"] is True and p["secrets_withheld"] == ["join", "vpn", "wifi"]
    # a credential that is not a credential, or another machine's, changes nothing
    p, _ = _payload(ctx, mid, "nsm_forged")
    assert p["sealed_secrets"] is None
    cred2 = credentials.enroll(ctx, "pc2", "local:test")["credential"]
    p, _ = _payload(ctx, mid, cred2)
    assert p["sealed_secrets"] is None and p["authenticated"] is False


@pytest.mark.parametrize("trust,owed", [("token", {"wifi": S_TOKEN}),
                                        ("host", {"wifi": S_TOKEN, "join": S_HOST}),
                                        ("tpm", {"wifi": S_TOKEN, "join": S_HOST, "vpn": S_TPM})])
def test_secrets_at_or_below_the_credentials_trust(world, trust, owed):
    ctx, mid, _ = world
    cred = credentials.issue(ctx, mid, trust, "local:test")
    assert inventory.show_machine(ctx, mid)["trust"] == trust
    p, etag = _payload(ctx, mid, cred)
    assert p["trust"] == trust and p["authenticated"] is True
    opened, problem = open_secrets(p, cred)
    assert problem is None and opened["document"]["secrets"] == owed
    assert p["secrets_withheld"] == sorted({"wifi", "join", "vpn"} - set(owed))
    assert _payload(ctx, mid, cred)[1] == etag  # sealing is deterministic: the long-poll ETag holds still
    # another credential does not open it; the agent applies no secret and says why
    opened, problem = open_secrets(p, credentials.PREFIX + "x" * 43)
    assert "secrets" not in opened["document"] and "do not open" in problem
    opened, problem = open_secrets(p, None)
    assert "secrets" not in opened["document"] and "no credential" in problem


def test_expired_and_revoked_credentials_get_no_secrets(world):
    ctx, mid, _ = world
    short = credentials.issue(ctx, mid, "tpm", "local:test", ttl_seconds=300)
    long = credentials.enroll(ctx, "pc1", "local:test")["credential"]
    assert credentials.authenticate(ctx, short).trust == "tpm" and credentials.authenticate(ctx, long).trust == "token"
    with ctx.db.session() as s:
        s.execute(update(MachineCredential).where(MachineCredential.expires_at.is_not(None))
                  .values(expires_at=dt.datetime(2000, 1, 1)))
    assert credentials.authenticate(ctx, short) is None
    assert _payload(ctx, mid, short)[0]["sealed_secrets"] is None
    assert open_secrets(_payload(ctx, mid, long)[0], long)[0]["document"]["secrets"] == {"wifi": S_TOKEN}
    # a new long-lived credential replaces the old one
    newer = credentials.enroll(ctx, "pc1", "local:test")
    assert newer["replaced"] is True and credentials.authenticate(ctx, long) is None
    assert credentials.revoke_all(ctx, mid, "local:test") == 1
    assert credentials.authenticate(ctx, newer["credential"]) is None
    assert inventory.show_machine(ctx, mid)["trust"] == "none"
    assert _payload(ctx, mid, newer["credential"])[0]["sealed_secrets"] is None


def test_levels_are_checked(ctx):
    with pytest.raises(UserError, match="secret_levels"):
        workingcopy.put_node(ctx, "/", {"secrets": {"x": "y"}, "secret_levels": {"x": "none"}}, "local:test")
    with pytest.raises(UserError, match="trust level"):
        credentials.issue(ctx, 1, "none", "local:test")
    assert credentials.at_least("tpm", "host") and not credentials.at_least("token", "host") and not credentials.at_least(None, "token")
