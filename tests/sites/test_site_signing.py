"""Site-scoped signing with real parts (issue 15 §3): `netslate key site-cert/revoke/import/list`
through the CLI (local and remote), and a real branch server holding a site key for site "b",
sharing central's database, whose bundles and locate answers the agent's verification code
(agent/bundle.py, agent/locate.py, agent/lkg.py) and the initramfs's (initramfs/mode_cache.py)
accept, and refuse after a revocation, with a forged certificate, or for another site's machine.
No VMs: the machine-side code is the stdlib code the agent and the initramfs run."""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from nstest import start_server
from netslate.agent import bundle, http as agent_http, lkg, locate
from netslate.context import Context
from netslate.crypto.keys import SigningKey
from netslate.discovery import store as discovery
from netslate.initramfs import mode_cache
from netslate.onmachine.envelope import SignatureError
from netslate.store.models import Machine


def _json(result):
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _install(src: Path, data_dir: Path) -> None:
    """What an operator does on the branch: copy site.key, site.cert.json and root.pub into keys/."""
    keys = data_dir / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    for name in ("site.key", "site.cert.json", "root.pub"):
        shutil.copy2(src / name, keys / name)


def test_key_site_cert_revoke_import_list(cli, data_dir, tmp_path):
    out = tmp_path / "b"
    made = _json(cli("key", "site-cert", "b", "--days", "30", "--out", str(out), "--json"))
    assert made["site"] == "b" and made["serial"] == 1 and not made["revoked"]
    assert (out / "site.key").stat().st_mode & 0o777 == 0o600
    cert = json.loads((out / "site.cert.json").read_text())
    assert cert["payload"]["key"] == made["key"] and cert["payload"]["kind"] == "netslate-site-cert/1"
    listed = _json(cli("key", "list", "--json"))
    root = listed["keys"][0]
    assert (out / "root.pub").read_text().strip() == root["public_key"]
    assert listed["root_private_here"] and listed["signer"] == {"fingerprint": root["fingerprint"], "site": None, "serial": None}
    assert [c["serial"] for c in listed["site_certs"]] == [1] and listed["revocations"] is None
    # a key made at the branch: only its public half travels
    branch_key = SigningKey.__new__(SigningKey)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    branch_key.private, branch_key.cert, branch_key.root = Ed25519PrivateKey.generate(), None, None
    pub = base64.b64encode(branch_key.signer_public_bytes).decode()
    star = _json(cli("key", "site-cert", "*", "--public-key", pub, "--json"))
    assert star["serial"] == 2 and star["site"] == "*" and star["key"] == branch_key.signer_fingerprint and star["written"] == []
    # mistakes: one line, exit 2
    for args, said in ((("key", "site-cert", "c"), "give --out DIR"), (("key", "site-cert", "c", "--public-key", "abc"), "--public-key must be"),
                       (("key", "site-cert", "bad/name", "--out", str(tmp_path / "x")), "invalid site name"),
                       (("key", "site-cert", "c", "--days", "0", "--out", str(tmp_path / "x")), "--days must be"),
                       (("key", "revoke", "nope"), "no site certificate for site 'nope'"),
                       (("key", "revoke", "77"), "no site certificate with serial 77")):
        r = cli(*args)
        assert r.code == 2 and said in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    # revoke: numbered, root-signed, monotonic
    rev = _json(cli("key", "revoke", "b", "--out", str(tmp_path / "rev1.json"), "--json"))
    assert rev["number"] == 1 and [r["serial"] for r in rev["revoked"]] == [1]
    rev2 = _json(cli("key", "revoke", "2", "--json"))
    assert rev2["number"] == 2 and [r["serial"] for r in rev2["revoked"]] == [1, 2]
    listed = _json(cli("key", "list", "--json"))
    assert listed["revocations"]["number"] == 2 and all(c["revoked"] for c in listed["site_certs"])
    r = cli("key", "import", str(tmp_path / "rev1.json"))
    assert r.code == 2 and "revocation list 1 is not newer than list 2 already here" in r.stderr
    r = cli("key", "import", str(out / "site.cert.json"))
    assert r.code == 2 and "serial 1 is already recorded" in r.stderr

    # the root kept offline (this data dir): central holds only a "*" site key and imports
    # what the root makes
    star_out = tmp_path / "central-keys"
    _json(cli("key", "site-cert", "*", "--out", str(star_out), "--json"))
    central = tmp_path / "central"
    _install(star_out, central)
    c_list = _json(cli("key", "list", "--json", data_dir=central))
    assert c_list["keys"][0]["fingerprint"] == root["fingerprint"]  # machines still pin the root
    assert not c_list["root_private_here"] and c_list["signer"]["site"] == "*" and c_list["signer"]["serial"] == 3
    r = cli("key", "site-cert", "b", "--out", str(tmp_path / "y"), data_dir=central)
    assert r.code == 2 and "holds a site key, not the root" in r.stderr
    r = cli("key", "revoke", "b", data_dir=central)
    assert r.code == 2 and "not the root" in r.stderr
    assert _json(cli("key", "import", str(out / "site.cert.json"), "--json", data_dir=central))["serial"] == 1
    assert _json(cli("key", "import", str(tmp_path / "rev1.json"), "--json", data_dir=central))["number"] == 1
    c_list = _json(cli("key", "list", "--json", data_dir=central))
    assert c_list["revocations"]["number"] == 1 and c_list["site_certs"][0]["revoked"]
    # a document the root did not sign is refused
    forged = SigningKey(Ed25519PrivateKey.generate()).issue_revocations(9, [])
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    r = cli("key", "import", str(tmp_path / "forged.json"), data_dir=central)
    assert r.code == 2 and "not signed by this installation's root key" in r.stderr


# ---------------------------------------------------------------- a real branch server


@pytest.fixture
def world(ctx, tmp_path):
    """Central (the root, in `ctx`) and a branch server for site b over the same database."""
    discovery.add_site(ctx, "a")
    discovery.add_site(ctx, "b")
    discovery.add_subnet(ctx, "a", "10.1.0.0/16")
    discovery.add_subnet(ctx, "b", "10.2.0.0/16")
    discovery.add_subnet(ctx, "b", "127.0.0.0/8")  # the test's own requests come from site b
    ids = {}
    with ctx.db.session() as s:
        for name, addr in (("pc-a", "10.1.0.5"), ("pc-b", "10.2.0.5")):
            m = Machine(name=name, tree_path="/", labels={}, status={}, ip_address=addr)
            s.add(m)
            s.flush()
            ids[name] = m.id
    central = start_server(ctx)
    httpx.put(f"{central.url}/api/v1/config/node", params={"path": "/"}, json={"document": {"timezone": "UTC"}},
              headers={"Authorization": f"Bearer {central.admin_token}"}, timeout=30).raise_for_status()
    httpx.post(f"{central.url}/api/v1/config/publish", json={"message": "initial"},
               headers={"Authorization": f"Bearer {central.admin_token}"}, timeout=30).raise_for_status()
    keys = tmp_path / "b-keys"
    root = ctx.signing_key
    cert, pem = root.issue_site_cert("b", 1, 30)
    from netslate.crypto import records
    from netslate.crypto.keys import write_site_files

    with ctx.db.session() as s:
        records.add_site_cert(s, cert)  # what `key site-cert` records (tested through the CLI above)

    write_site_files(keys, cert, pem, root.public_bytes)
    branch_dir = tmp_path / "branch"
    _install(keys, branch_dir)
    branch_ctx = Context(branch_dir, database_url=ctx.db.url).init()
    branch = start_server(branch_ctx, {"site": "b"})
    yield SimpleNamespace(ctx=ctx, central=central, branch=branch, branch_ctx=branch_ctx, ids=ids, root=root.public_bytes, tmp=tmp_path)
    branch.stop()
    central.stop()


def _get(url: str, **kw) -> httpx.Response:
    return httpx.get(url, timeout=30, **kw)


def _initramfs_reads(root: bytes, envelope: dict, lkg_dir: Path, revocations: dict | None = None):
    """What the cache-mode initramfs takes from the lkg the agent left on the NETSLATE disk."""
    lkg_dir.mkdir(parents=True, exist_ok=True)
    (lkg_dir / "bundle.json").write_text(json.dumps(envelope))
    if revocations is not None:
        (lkg_dir / "revocations.json").write_text(json.dumps(revocations))
    env = SimpleNamespace(key_bytes=root)
    return mode_cache.lkg_payload(env, SimpleNamespace(lkg=lkg_dir))


def test_branch_signs_its_own_site_and_machines_verify_the_chain(world):
    w = world
    assert _get(f"{w.branch.url}/api/v1/keys").json()["keys"][0]["public_key"] == base64.b64encode(w.root).decode()
    # a bundle for site b's machine: signed with b's key, the certificate attached
    r = _get(f"{w.branch.url}/api/v1/machines/{w.ids['pc-b']}/bundle")
    assert r.status_code == 200, r.text
    env = r.json()
    assert env["chain"][0]["payload"]["site"] == "b" and env["payload"]["site"] == "b"
    assert env["key"] != "sha256:" and env["key"] == w.branch_ctx.signing_key.signer_fingerprint
    payload = bundle.verify(env, w.root, w.ids["pc-b"], None)
    assert payload["generation"] >= 1
    assert _initramfs_reads(w.root, env, w.tmp / "lkg1")["machine_id"] == w.ids["pc-b"]
    # agent lkg: saved and read back
    lkg.save(w.tmp / "agent-lkg", env, payload)
    assert lkg.load(w.tmp / "agent-lkg", w.root, w.ids["pc-b"])[1]["site"] == "b"
    # the same machine asked of central: root-signed, no chain, its site named
    c = _get(f"{w.central.url}/api/v1/machines/{w.ids['pc-b']}/bundle").json()
    assert "chain" not in c and c["payload"]["site"] == "b" and bundle.verify(c, w.root, w.ids["pc-b"], None)
    # a machine of site a: the branch does not sign for it (one line, 409); central does
    r = _get(f"{w.branch.url}/api/v1/machines/{w.ids['pc-a']}/bundle")
    assert r.status_code == 409 and r.json()["detail"] == ("this server's key signs for site b only, not for site a: "
                                                           "ask a server of that site or the central site")
    c = _get(f"{w.central.url}/api/v1/machines/{w.ids['pc-a']}/bundle").json()
    assert bundle.verify(c, w.root, w.ids["pc-a"], None, site="a")["site"] == "a"
    # a b-signed bundle to a machine that knows it is in site a (its last bundle said so): refused
    with pytest.raises(bundle.BundleRejected, match="signed by the key of site b, but this machine is in site a"):
        bundle.verify(env, w.root, w.ids["pc-b"], None, site="a")

    # locate: the branch signs answers for clients of its site; the agent checks the chain
    agent_http.set_pin(None)
    ans = locate.probe(w.branch.url, 10, w.root)
    assert ans["site"] == "b"
    with pytest.raises(agent_http.HttpError, match="locate answer refused: signed by the key of site b, but this machine is in site a"):
        locate.probe(w.branch.url, 10, w.root, site="a")
    r = _get(f"{w.branch.url}/api/v1/locate", params={"signed": "true", "address": "10.1.0.9"})
    assert r.status_code == 409 and "signs for site b only, not for site a" in r.json()["detail"]
    found = locate.find([(w.branch.url, "boot"), (w.central.url, "boot")], 10, w.root, site="a")
    assert found.url == w.central.url and "this machine is in site a" in found.tried[0]["error"]


def test_revoked_site_key_is_refused_by_agent_and_initramfs(world):
    w = world
    before = _get(f"{w.branch.url}/api/v1/machines/{w.ids['pc-b']}/bundle").json()
    assert "revocations" not in before
    state = w.tmp / "agent-state"
    state.mkdir()
    rev_file = state / bundle.REVOCATIONS_FILE
    # revoke at central (the root); the statement reaches the branch through the database
    r = httpx.post(f"{w.central.url}/api/v1/keys/revocations", json={"target": "b"},  # one database: the newest admin token
                   headers={"Authorization": f"Bearer {w.branch.admin_token}"}, timeout=30)
    assert r.status_code == 201 and r.json()["number"] == 1
    deadline = time.monotonic() + 30  # the branch re-reads the list every few seconds
    while True:
        env = _get(f"{w.branch.url}/api/v1/machines/{w.ids['pc-b']}/bundle").json()
        if "revocations" in env or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert env["revocations"]["payload"]["number"] == 1
    with pytest.raises(bundle.BundleRejected, match=r"bad signature: site key 1 for site b is revoked \(revocation list 1\)"):
        bundle.verify(env, w.root, w.ids["pc-b"], None)
    assert _initramfs_reads(w.root, env, w.tmp / "lkg2") is None
    with pytest.raises(agent_http.HttpError, match="locate answer refused: site key 1 for site b is revoked"):
        locate.probe(w.branch.url, 10, w.root)
    # the agent keeps the list: the earlier bundle (no list attached) is refused now too, from the
    # network and from its lkg, and so is it by the initramfs reading the list the agent kept
    known = bundle.remember_revocations(rev_file, env, w.root, None)
    assert known["number"] == 1 and bundle.load_revocations(rev_file, w.root)["number"] == 1
    with pytest.raises(bundle.BundleRejected, match="revoked"):
        bundle.verify(before, w.root, w.ids["pc-b"], None, revocations=known)
    lkg.save(state, before, before["payload"])
    assert "revoked" in lkg.load(state, w.root, w.ids["pc-b"], known)[2]
    assert _initramfs_reads(w.root, before, w.tmp / "lkg3", json.loads(rev_file.read_text())) is None
    # an older list replayed later does not lower it; central (the root) still serves the machine
    c = _get(f"{w.central.url}/api/v1/machines/{w.ids['pc-b']}/bundle").json()
    assert bundle.verify(c, w.root, w.ids["pc-b"], None, revocations=known)["site"] == "b"


def test_forged_site_certificate_is_refused(world, ctx, tmp_path):
    """A server whose site key was certified by a key that is not the pinned root."""
    rogue = SigningKey.__new__(SigningKey)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    rogue.private, rogue.cert, rogue.root, rogue.revocations = Ed25519PrivateKey.generate(), None, None, None
    cert, pem = rogue.issue_site_cert("b", 1, 30)
    from netslate.crypto.keys import write_site_files

    write_site_files(tmp_path / "rogue-keys", cert, pem, rogue.public_bytes)
    rogue_dir = tmp_path / "rogue"
    _install(tmp_path / "rogue-keys", rogue_dir)
    rctx = Context(rogue_dir, database_url=ctx.db.url).init()
    srv = start_server(rctx, {"site": "b"})
    try:
        env = _get(f"{srv.url}/api/v1/machines/{world.ids['pc-b']}/bundle").json()
        assert env["chain"][0]["key"] == rogue.fingerprint
        with pytest.raises(bundle.BundleRejected, match="site certificate not signed by the pinned root"):
            bundle.verify(env, world.root, world.ids["pc-b"], None)
        assert _initramfs_reads(world.root, env, tmp_path / "lkg4") is None
        with pytest.raises(agent_http.HttpError, match="locate answer refused: site certificate not signed by the pinned root"):
            locate.probe(srv.url, 10, world.root)
    finally:
        srv.stop()
    with pytest.raises(SignatureError):
        from netslate.onmachine import sitecert

        sitecert.open_cert(cert, world.root)
