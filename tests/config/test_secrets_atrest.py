"""Issue 13 §5: config secrets at rest. The database file (SQLite bytes, a PostgreSQL pg_dump) holds
no secret in clear; the KEK lives in DATA/keys; `netslate key rewrap` rotates it atomically."""

import logging
import os
import shutil
import subprocess

import pytest
from sqlalchemy import select

from netslate.agent.bundle import open_secrets
from netslate.config import bundles, credentials, generations, workingcopy
from netslate.config import secrets as config_secrets
from netslate.config.models import ConfigWorkingNode
from netslate.context import Context
from netslate.crypto import atrest
from netslate.errors import IntegrityError, UserError
from netslate.identity import directories
from netslate.store.models import AuditEntry, Machine

from test_store_postgresql import PG_BIN, postgres  # noqa: F401 (the throwaway PostgreSQL cluster fixture)

SECRET = "wifi-psk-7c1e0f3a-in-clear-never"
SECRET2 = "db-password-91d2b6e4-in-clear-never"


def _world(ctx):
    with ctx.db.session() as s:
        m = Machine(name="pc1", tree_path="/site-a")
        s.add(m)
        s.flush()
        mid = m.id
    workingcopy.put_node(ctx, "/site-a", {"timezone": "UTC", "secrets": {"wifi_psk": SECRET}}, "local:test")
    workingcopy.set_value(ctx, "@pc1", "secrets.db_password", SECRET2, "local:test")
    generations.publish(ctx, "with secrets", "local:test")
    return mid


def _files_hold(directory, needle: str) -> list[str]:
    """Files under `directory` (the keys excepted) whose bytes contain `needle`."""
    hits = []
    for root, _dirs, files in os.walk(directory):
        if os.path.basename(root) == "keys":
            continue
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                if needle.encode() in fh.read():
                    hits.append(p)
    return hits


def test_sqlite_database_file_holds_no_secret_in_clear(ctx, data_dir):
    mid = _world(ctx)
    cred = credentials.enroll(ctx, "pc1", "local:test")["credential"]
    env, _etag, _ = bundles.bundle(ctx, mid, cred)
    # the machine gets them (opened as the agent does) ...
    assert open_secrets(env["payload"], cred)[0]["document"]["secrets"] == {"wifi_psk": SECRET, "db_password": SECRET2}
    # ... and no file of the data directory holds them: database, WAL, everything but DATA/keys
    ctx.db.engine.dispose()
    assert _files_hold(data_dir, SECRET) == [] and _files_hold(data_dir, SECRET2) == []
    assert _files_hold(data_dir, cred) == []  # the credential is stored as a hash and a sealed key only
    # what is stored is the sealed form, naming the key id
    with ctx.db.session() as s:
        stored = s.get(ConfigWorkingNode, "/site-a").document["secrets"]["wifi_psk"]
    assert stored.startswith("nssealed:v2:s0:")
    assert (data_dir / "keys" / "secrets.key").stat().st_mode & 0o077 == 0
    # without the key file, the database alone opens nothing
    shutil.move(data_dir / "keys" / "secrets.key", data_dir / "secrets.key.away")
    atrest._cache.clear()
    with pytest.raises(IntegrityError):
        config_secrets.open_value(data_dir, "wifi_psk", stored)


def test_pg_dump_holds_no_secret_in_clear(postgres, tmp_path):  # noqa: F811
    ctx = Context(tmp_path / "data", postgres).init()
    mid = _world(ctx)
    cred = credentials.enroll(ctx, "pc1", "local:test")["credential"]
    env, _etag, _ = bundles.bundle(ctx, mid, cred)
    assert open_secrets(env["payload"], cred)[0]["document"]["secrets"]["wifi_psk"] == SECRET
    dump = subprocess.run([str(PG_BIN / "pg_dump"), "--dbname", postgres.replace("postgresql+psycopg", "postgresql")],
                          capture_output=True, check=True, timeout=120).stdout
    assert b"config_working" in dump and b"nssealed:v2:" in dump  # the dump has the rows, sealed
    assert SECRET.encode() not in dump and SECRET2.encode() not in dump and cred.encode() not in dump


def test_values_that_look_sealed_are_refused(ctx):
    with pytest.raises(UserError, match="may not start with"):
        workingcopy.put_node(ctx, "/", {"secrets": {"x": "nssealed:v2:s0:AAAA"}}, "local:test")
    with pytest.raises(UserError, match="may not start with"):
        workingcopy.set_value(ctx, "/", "secrets.x", "nssealed:whatever", "local:test")


def test_reapplying_the_same_value_changes_nothing(ctx):
    _world(ctx)
    workingcopy.put_node(ctx, "/site-a", {"timezone": "UTC", "secrets": {"wifi_psk": SECRET}}, "local:test")
    assert workingcopy.diff(ctx)["nodes"] == []
    shown = workingcopy.get_node(ctx, "/site-a")["document"]  # applied back as shown: the stored value stays
    workingcopy.put_node(ctx, "/site-a", shown, "local:test")
    assert workingcopy.diff(ctx)["nodes"] == []
    workingcopy.set_value(ctx, "/site-a", "secrets.wifi_psk", SECRET + "-v2", "local:test")
    changes = workingcopy.diff(ctx)["nodes"][0]["changes"]
    assert changes == [{"key": "/secrets/wifi_psk", "old": "<redacted>", "new": "<redacted>"}]
    # `config edit` run locally sees the value in clear; everything else the redacted form
    assert workingcopy.get_node(ctx, "/site-a", reveal=True)["document"]["secrets"] == {"wifi_psk": SECRET + "-v2"}
    assert workingcopy.get_node(ctx, "/site-a")["document"]["secrets"] == {"wifi_psk": "<redacted>"}


def _passes(ctx):
    return [lambda one: config_secrets.rewrap_secrets(ctx, one), lambda one: credentials.rewrap_secrets(ctx, one),
            lambda one: directories.rewrap_secrets(ctx, one)]


def test_rewrap_rotates_the_kek_and_a_crash_leaves_every_value_readable(ctx, data_dir):
    mid = _world(ctx)
    cred = credentials.enroll(ctx, "pc1", "local:test")["credential"]
    bundles.bundle(ctx, mid, cred)  # the generation is cached in this process, sealed under s0

    # a crash half-way (after the config secrets, before the credentials): both keys stay, all opens
    def crash(_one):
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        atrest.rotate(data_dir, [_passes(ctx)[0], crash])
    kids = atrest.key_ids(data_dir)
    assert len(kids) == 2 and kids[0] != "s0" and (data_dir / "keys" / "secrets.key").exists()
    env, _, _ = bundles.bundle(ctx, mid, cred)
    assert open_secrets(env["payload"], cred)[0]["document"]["secrets"]["wifi_psk"] == SECRET

    # the re-run completes: every value under one new key, the old keys deleted
    out = atrest.rotate(data_dir, _passes(ctx))
    assert out["key_id"] == atrest.current_kid(data_dir) and set(out["retired"]) == set(kids)
    assert atrest.key_ids(data_dir) == [out["key_id"]] and not (data_dir / "keys" / "secrets.key").exists()
    with ctx.db.session() as s:
        docs = [r.document for r in s.scalars(select(ConfigWorkingNode))]
    sealed = [v for d in docs for v in (d.get("secrets") or {}).values()]
    assert sealed and all(v.startswith(f"nssealed:v2:{out['key_id']}:") for v in sealed)
    # bundles still open (the process's cached generation is read again), and the DB holds no clear value
    env, _, _ = bundles.bundle(ctx, mid, cred)
    assert open_secrets(env["payload"], cred)[0]["document"]["secrets"] == {"wifi_psk": SECRET, "db_password": SECRET2}
    ctx.db.engine.dispose()
    assert _files_hold(data_dir, SECRET) == []


def test_key_rewrap_command_both_modes_admin_only(cli, ctx, data_dir, caplog):
    caplog.set_level(logging.DEBUG)
    _world(ctx)
    r = cli("key", "rewrap", "--json")
    assert r.code == 0, r.stderr
    out = r.json()
    assert out["rewrapped"] == 4 and out["retired"] == ["s0"]  # two secrets, in the working copy and generation 1
    assert cli("key", "rewrap").code == 0
    assert "re-wrapped" in cli("key", "rewrap").stdout
    with ctx.db.session() as s:
        audit = [(a.action, a.detail) for a in s.scalars(select(AuditEntry).where(AuditEntry.action == "keys.rewrap"))]
    assert len(audit) == 3 and audit[0][1]["key_id"] == out["key_id"]
    if cli.mode == "remote":
        viewer = cli("token", "create", "v1", "--role", "viewer", "--json").json()["token"]
        r = cli("key", "rewrap", env={"NETSLATE_TOKEN": viewer})
        assert r.code != 0 and "admin" in (r.stderr + r.stdout)
    assert SECRET not in "\n".join(rec.getMessage() for rec in caplog.records)
