"""Issue 13 §1: every machine shows its trust level (none < token < host < tpm) in `machine
list/show`, `fleet status`, the API and the dashboard's machine list."""

import httpx

from netslate.config import credentials


def test_trust_level_shown_everywhere(cli, ctx, data_dir):
    assert cli("machine", "add", "--mac", "52:54:00:00:13:01", "--name", "pc1").code == 0
    assert cli("machine", "add", "--mac", "52:54:00:00:13:02", "--name", "pc2").code == 0
    assert [m["trust"] for m in cli("machine", "list", "--json").json()] == ["none", "none"]
    assert cli("config", "enroll", "pc1").code == 0
    assert cli("machine", "show", "pc1", "--json").json()["trust"] == "token"
    credentials.issue(ctx, cli("machine", "show", "pc2", "--json").json()["id"], "tpm", "local:test", ttl_seconds=600)
    fleet = {m["name"]: m for m in cli("fleet", "status", "--json").json()["machines"]}
    assert fleet["pc1"]["trust"] == "token" and fleet["pc2"]["trust"] == "tpm"
    table = cli("fleet", "status").stdout
    assert "trust" in table and "tpm" in table
    assert "trust" in cli("machine", "list").stdout and "trust: token" in cli("machine", "show", "pc1").stdout
    if cli.mode == "remote":
        srv = cli.server_for(data_dir)
        page = httpx.get(srv.url + "/machines", headers={"Authorization": f"Bearer {srv.admin_token}"}, timeout=60).text
        assert 'data-trust="token"' in page and 'data-trust="tpm"' in page
        detail = httpx.get(srv.url + "/machines/pc2", headers={"Authorization": f"Bearer {srv.admin_token}"}, timeout=60).text
        assert 'data-trust="tpm"' in detail
    credentials.revoke_all(ctx, cli("machine", "show", "pc2", "--json").json()["id"], "local:test")
    assert cli("machine", "show", "pc2", "--json").json()["trust"] == "none"
