"""`netslate user|directory|entitlement` in both CLI modes (local data dir, and --server)."""

from __future__ import annotations

import subprocess
import sys

import httpx
from sqlalchemy import select

from ldapworld import _make_ca
from netslate.identity import entitlements
from netslate.store.models import AuditEntry


def _login(srv, username: str, password: str) -> httpx.Response:
    return httpx.post(f"{srv.url}/api/v1/auth/login", json={"username": username, "password": password}, timeout=30)


def _db_holds(data_dir, needle: str) -> bool:
    """Whether the database files hold `needle` in clear. Read in another process: closing a file
    descriptor of the database here would drop this process's SQLite locks (POSIX fcntl semantics),
    and the next CLI to exit would then remove the WAL under the test server's feet."""
    code = ("import sys, pathlib; d = pathlib.Path(sys.argv[1]); "
            "sys.exit(0 if any(sys.argv[2].encode() in p.read_bytes() for p in d.glob('netslate.db*')) else 1)")
    return subprocess.run([sys.executable, "-c", code, str(data_dir), needle]).returncode == 0


def test_local_users_add_passwd_rm(cli, data_dir, ctx):
    srv = cli.server_for(data_dir)  # logins go to a real server over the same data dir in both modes
    r = cli("user", "add", "rescue", "--role", "admin", "--password-stdin", "--json", input="first-password-1\n")
    assert r.code == 0, r.stderr
    assert r.json()["name"] == "rescue" and r.json()["role"] == "admin"
    r = cli("user", "add", "rescue", "--password-stdin", input="another-password\n")
    assert r.code == 2 and "already exists" in r.stderr, r.stderr
    r = cli("user", "add", "shorty", "--password-stdin", input="short\n")
    assert r.code == 2 and "at least 8 characters" in r.stderr, r.stderr
    r = cli("user", "add", "../x", "--password-stdin", input="long-enough-pw\n")
    assert r.code == 2 and "invalid user name" in r.stderr, r.stderr
    listed = cli("user", "list", "--json")
    assert listed.code == 0 and [u["name"] for u in listed.json()] == ["rescue"]
    assert "first-password-1" not in listed.stdout and "argon2" not in listed.stdout
    assert not _db_holds(data_dir, "first-password-1") and _db_holds(data_dir, "$argon2id$")

    before = _login(srv, "rescue", "first-password-1")
    assert before.status_code == 200 and before.json()["role"] == "admin"
    r = cli("user", "passwd", "rescue", "--password-stdin", input="second-password-2\n")
    assert r.code == 0, r.stderr
    assert _login(srv, "rescue", "first-password-1").status_code == 400
    assert _login(srv, "rescue", "second-password-2").status_code == 200
    old = httpx.get(f"{srv.url}/api/v1/auth/me", cookies={"netslate_session": before.json()["session_id"]}).json()
    assert old["kind"] == "anonymous"  # a new password ends the sessions opened with the old one
    r = cli("user", "role", "rescue", "viewer", "--json")
    assert r.code == 0 and r.json()["role"] == "viewer", r.stderr
    assert cli("user", "rm", "rescue").code == 0
    r = cli("user", "rm", "rescue")
    assert r.code == 2 and "no local user named 'rescue'" in r.stderr
    assert cli("user", "list", "--json").json() == []
    with ctx.db.session() as s:
        actions = [(e.action, e.actor) for e in s.scalars(select(AuditEntry).where(AuditEntry.action.like("user.%")))]
    expected_actor = "token:admin" if cli.mode == "remote" else None
    assert [a for a, _ in actions] == ["user.add", "user.passwd", "user.role", "user.remove"], actions
    if expected_actor:
        assert {actor for _, actor in actions} == {expected_actor}
    else:
        assert all(actor.startswith("local:") for _, actor in actions)


def test_directory_add_show_test_rm_and_explain(cli, data_dir, ctx, ldap_world, tmp_path):
    r = cli(*ldap_world.directory_args("corp"), "--json", input=ldap_world.bind_password + "\n")
    assert r.code == 0, r.stderr
    shown = cli("directory", "show", "corp", "--json")
    assert shown.code == 0 and shown.json()["bind_password_set"] is True
    assert shown.json()["tls"] == "ldaps" and shown.json()["ca_subject"] == "CN=netslate test CA"
    text = cli("directory", "show", "corp")
    for out in (r.stdout, shown.stdout, text.stdout, cli("directory", "list", "--json").stdout):
        assert ldap_world.bind_password not in out
    assert not _db_holds(data_dir, ldap_world.bind_password)  # sealed with DATA/keys/secrets.key
    assert _db_holds(data_dir, ldap_world.bind_dn)
    assert (data_dir / "keys" / "secrets.key").stat().st_mode & 0o077 == 0

    tested = cli("directory", "test", "corp", "--user", "bob", "--json")
    assert tested.code == 0, tested.stderr
    t = tested.json()
    assert t["ok"] and t["tls_version"].startswith("TLSv1.") and t["user_found"]
    assert [(g["name"], g["nested"]) for g in t["user"]["groups"]] == [("lab-b-students", False), ("lab-b-users", True)]
    assert "ok: corp at ldaps://" in cli("directory", "test", "corp").stdout

    # the certificate must be signed by the configured CA
    other = tmp_path / "other"
    other.mkdir()
    other_ca, _, _ = _make_ca(other)
    (other / "ca.pem").write_text(other_ca)
    args = ldap_world.directory_args("wrongca")
    args[args.index("--ca-file") + 1] = str(other / "ca.pem")
    assert cli(*args, input=ldap_world.bind_password + "\n").code == 0
    r = cli("directory", "test", "wrongca")
    assert r.code == 2 and "not signed by the configured CA" in r.stderr, r.stderr
    assert cli("directory", "rm", "wrongca").code == 0
    # plain LDAP is not offered
    plain = ldap_world.directory_args("plain", starttls=True) + ["--tls", "none"]
    r = cli(*plain, input="x\n")
    assert r.code == 2 and "plain LDAP is not offered" in r.stderr, r.stderr

    # entitlements: roles from the CLI; a pool must exist
    r = cli("entitlement", "add", "--group", "netslate-admins", "--role", "admin", "--json")
    assert r.code == 0 and r.json()["subject"] == "netslate-admins", r.stderr
    r = cli("entitlement", "add", "--group", "lab-b-users", "--pool", "no-such-pool")
    assert r.code == 2 and "no desktop pool named 'no-such-pool'" in r.stderr, r.stderr
    r = cli("entitlement", "add", "--group", "x", "--user", "y", "--role", "admin")
    assert r.code == 2 and "exactly one of --group and --user" in r.stderr
    entitlements.add_entitlement(ctx, "group", "lab-b-users", "pool", "lab-b", actor="local:test")  # (no pool made here)

    ex = cli("user", "explain", "bob", "--json")
    assert ex.code == 0, ex.stderr
    e = ex.json()
    assert e["found_in"] == "directory:corp" and e["role"] is None and e["pools"] == ["lab-b"]
    groups = {g["name"]: g for g in e["groups"]}
    assert groups["lab-b-users"]["registered"] and groups["lab-b-users"]["nested"] and groups["lab-b-users"]["grants"] == ["pool lab-b"]
    assert not groups["lab-b-students"]["registered"]
    out = cli("user", "explain", "bob").stdout
    assert "pools: lab-b" in out and "group lab-b-users → pool lab-b (entitlement #" in out
    assert "group lab-b-students (cn=lab-b-students,ou=groups,dc=netslate,dc=test): no entitlement names it, ignored" in out
    carol = cli("user", "explain", "carol")
    assert carol.code == 0 and "role: none" in carol.stdout and "pools: none" in carol.stdout
    assert "group coffee-club" in carol.stdout and "ignored" in carol.stdout
    assert "carol has no role and no pool" in carol.stdout
    ada = cli("user", "explain", "ada", "--json").json()
    assert ada["role"] == "admin" and any("group netslate-admins → role admin" in x for x in ada["reasons"])
    dave = cli("user", "explain", "dave", "--json").json()
    assert dave["refused"] == "the account dave is locked in directory corp (pwdAccountLockedTime)"
    r = cli("user", "explain", "nobody-at-all")
    assert r.code == 2 and "no local user and no directory entry named 'nobody-at-all'" in r.stderr

    listed = cli("entitlement", "list", "--json").json()
    assert [(x["subject"], x["grant"], x["value"]) for x in listed] == [("netslate-admins", "role", "admin"), ("lab-b-users", "pool", "lab-b")]
    assert cli("entitlement", "rm", str(listed[0]["id"])).code == 0
    r = cli("entitlement", "rm", str(listed[0]["id"]))
    assert r.code == 2 and "no entitlement #" in r.stderr
    assert cli("user", "explain", "ada", "--json").json()["role"] is None

    assert cli("directory", "rm", "corp").code == 0
    r = cli("directory", "show", "corp")
    assert r.code == 2 and "no directory named 'corp'" in r.stderr
