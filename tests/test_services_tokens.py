def test_tokens_both_modes(cli):
    r = cli("token", "create", "ops", "--role", "operator", "--json")
    assert r.code == 0, r.stderr
    assert r.json()["token"].startswith("nst_")
    r = cli("token", "create", "ops", "--json")
    assert r.code == 2 and "already exists" in r.stderr, r.stderr
    names = [t["name"] for t in cli("token", "list", "--json").json()]
    assert "ops" in names
    assert cli("token", "rm", "ops").code == 0
    r = cli("token", "rm", "ops")
    assert r.code == 2 and "no token" in r.stderr
    k = cli("key", "show", "--json")
    assert k.code == 0 and k.json()["algorithm"] == "ed25519", k.stderr
