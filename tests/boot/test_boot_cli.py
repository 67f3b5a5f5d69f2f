"""The real `netslate machine ...` and `netslate boot ...` commands against a data directory."""

import pytest

from netslate import inventory
from netslate.boot import store
from netslate.composition import Parts
from netslate.services.framework import plain
from netslate.services.machines import LocalMachines
from netslate.store.models import AuditEntry

MAC_A, MAC_B = "52:54:00:aa:00:01", "52:54:00:bb:00:02"


def _image(ctx, tmp_path, versions=2):
    for i in range(versions):
        k = tmp_path / f"k{i}"
        k.write_bytes(b"K" * (100 + i))
        ctx.library.import_files("desk", kernel=k, tag="stable" if i == 0 else None, warn=lambda m: None)


def test_boot_cli_machines(cli, ctx, tmp_path):
    r = cli("machine", "add", "--mac", MAC_A, "--name", "pc1", "--label", "room=b12", "--group", "/lab/b", "--json")
    assert r.code == 0, r.stderr
    mid = r.json()["id"]
    assert r.json()["approved"] is True and r.json()["group"] == "/lab/b"
    r = cli("machine", "add", "--mac", MAC_A.upper().replace(":", "-"))
    assert r.code == 2 and "already belongs" in r.stderr and "Traceback" not in r.stderr
    assert [m["name"] for m in cli("machine", "list", "--json").json()] == ["pc1"]
    r = cli("machine", "label", "pc1", "role=kiosk", "--rm", "room", "--hostname", "pc1.lab", "--json")
    assert r.code == 0 and r.json()["labels"] == {"role": "kiosk"} and r.json()["hostname"] == "pc1.lab"
    _image(ctx, tmp_path)
    r = cli("machine", "pin", MAC_A, "desk@1", "--json")
    assert r.code == 0 and r.json()["pin"]["version"] == 1
    show = cli("machine", "show", str(mid), "--json").json()
    assert show["pin"]["image"] == "desk" and show["macs"] == [MAC_A]
    assert cli("machine", "unpin", "pc1").code == 0
    assert plain(LocalMachines(Parts(ctx)).show("pc1"))["pin"] is None
    # discovered machines are approved by id
    ctx.library  # noqa: B018
    mid2 = inventory.discover_machine(ctx, {"mac": MAC_B, "uuid": None, "arch": "x86_64"}, "127.0.0.1")
    assert cli("machine", "list", "--state", "discovered", "--json").json()[0]["id"] == mid2
    r = cli("machine", "approve", str(mid2), "--json")
    assert r.code == 0 and r.json()["state"] == "approved"
    assert cli("machine", "rm", str(mid2)).code == 0
    assert [m["id"] for m in inventory.list_machines(ctx)] == [mid]


def test_boot_cli_profiles_rules_activate_explain(cli, ctx, tmp_path):
    _image(ctx, tmp_path)
    assert cli("boot", "profile", "add", "desktop", "--image", "desk", "--ref", "stable", "--arg", "quiet", "--console", "ttyS0").code == 0
    store.add_profile(ctx, "disk", kind="local")
    r = cli("boot", "profile", "add", "evil", "--image", "desk", "--ref", "1", "--arg", "a;reboot")
    assert r.code == 2 and "not allowed" in r.stderr
    assert [p["name"] for p in cli("boot", "profile", "list", "--json").json()] == ["desktop", "disk"]

    inventory.add_machine(ctx, [MAC_A], labels={"room": "b12"})
    assert cli("boot", "rules", "add", "room", "label=room=b12", "--profile", "desktop", "--priority", "5").code == 0
    store.add_rule(ctx, "rest", {}, "disk")
    r = cli("boot", "rules", "add", "other", "arch=x86_64", "--profile", "disk", "--priority", "5")
    assert r.code == 2 and "ties with 'room'" in r.stderr

    working = cli("boot", "rules", "list", "--working", "--json").json()
    assert [x["name"] for x in working["rules"]] == ["room", "rest"]
    assert store.list_rules(ctx, "active")["rules"] == []
    assert "+ room" in cli("boot", "rules", "diff").stdout

    r = cli("boot", "rules", "activate", "--json")
    assert r.code == 0 and r.json()["active_version"] == 1 and r.json()["rules"] == 2
    with ctx.db.session() as s:
        audit = [a for a in s.query(AuditEntry).filter(AuditEntry.action == "boot.rules.activate")]
        assert len(audit) == 1 and sorted(x["name"] for x in audit[0].detail["diff"]["added"]) == ["rest", "room"]
    assert store.diff_rules(ctx)["changed_count"] == 0

    e = cli("boot", "explain", MAC_A, "--json", "--base-url", "http://10.9.8.7:8080").json()
    assert e["rule"] == "room" and e["profile"] == "desktop" and e["version"] == 1 and e["known"]
    assert "kernel http://10.9.8.7:8080/images/desk/1/kernel" in e["script"] and "console=ttyS0" in e["script"]
    assert "rule room" in e["reason"]
    r = cli("boot", "explain", "nonsense")
    assert r.code == 2 and "neither a MAC nor a UUID" in r.stderr

    # removing a rule changes only the working set until activation
    assert cli("boot", "rules", "rm", "room").code == 0
    assert [x["name"] for x in store.list_rules(ctx, "active")["rules"]] == ["room", "rest"]
    assert cli("boot", "rules", "diff", "--json").json()["removed"][0]["name"] == "room"
    with pytest.raises(store.Conflict, match="used by"):  # still in the active set
        store.remove_profile(ctx, "desktop")

    files = cli("boot", "pxelinux", "--base-url", "http://10.9.8.7:8080", "--json").json()
    assert "LOCALBOOT 0" in files["pxelinux.cfg/default"] and "KERNEL http://10.9.8.7:8080/images/desk/" in files["pxelinux.cfg/default"]
    assert "KERNEL http://10.9.8.7:8080/images/desk/1/kernel" in files["pxelinux.cfg/01-52-54-00-aa-00-01"]


def test_boot_cli_policy_and_events(cli, ctx):
    r = cli("boot", "policy", "set", "hold", "--retry-seconds", "15", "--json")
    assert r.code == 0 and r.json() == {"site": "default", "policy": "hold", "retry_seconds": 15, "default_profile": None}
    with pytest.raises(store.UserError):
        store.set_policy(ctx, "sometimes")
    with pytest.raises(store.UserError):
        store.set_policy(ctx, "hold", site="../x")
    store.set_policy(ctx, "boot-default", site="paris")
    assert {p["site"]: p["policy"] for p in cli("boot", "policy", "list", "--json").json()} == {"default": "hold", "paris": "boot-default"}
    # events written by a server appear in the CLI
    from netslate.boot.engine import BootEngine

    eng = BootEngine(ctx)
    d = eng.serve({"mac": MAC_A, "uuid": None, "serial": None, "manufacturer": None, "product": None, "arch": "x86_64",
                   "platform": "efi", "asset": None}, "127.0.0.1:9", "127.0.0.1")
    assert d.kind == "hold"
    assert eng.events.flush()
    ev = cli("boot", "events", "--json").json()
    assert len(ev) == 1 and ev[0]["mac"] == MAC_A and ev[0]["kind"] == "hold" and ev[0]["machine"] is not None
    assert store.list_events(ctx, machine=MAC_A)[0]["id"] == ev[0]["id"]


def test_boot_cli_remote(live_server, tmp_path):
    from nstest import run_cli

    ctx = live_server.ctx
    _image(ctx, tmp_path, versions=1)
    store.add_profile(ctx, "desktop", image="desk", ref="stable")
    g = ["--server", live_server.url, "--token", live_server.admin_token]
    r = run_cli(*g, "machine", "add", "--mac", MAC_A, "--json")
    assert r.code == 0, r.stderr
    r = run_cli(*g, "boot", "rules", "add", "a", f"mac={MAC_A}", "--profile", "desktop", "--json")
    assert r.code == 0, r.stderr
    r = run_cli("--server", live_server.url, "boot", "rules", "activate")  # no token: refused, one line
    assert r.code == 2 and "401" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(*g, "boot", "explain", MAC_A, "--json")
    assert r.code == 0 and r.json()["rule"] is None  # not active yet
    assert store.activate_rules(ctx)["active_version"] == 1
    r = run_cli(*g, "boot", "explain", MAC_A, "--json")
    assert r.json()["rule"] == "a" and f"kernel {live_server.url}/images/desk/1/kernel" in r.json()["script"]


def test_boot_cli_explain_a_held_machine_says_why(cli):
    """A held machine's explanation has a reason like every other (it had none), in both modes."""
    assert cli("boot", "policy", "set", "hold").code == 0
    r = cli("boot", "explain", MAC_B, "--json")
    assert r.code == 0, r.stderr
    e = r.json()
    assert e["kind"] == "hold" and not e["known"] and "hold policy of site default" in e["reason"]
    assert "waiting for approval" in e["script"]
    r = cli("boot", "explain", MAC_B)  # the table view prints the same reason
    assert r.code == 0 and "hold policy of site default" in r.stdout


def test_boot_cli_site_loader(cli, tmp_path):
    """`boot site-loader` writes a site's sites.ipxe: every server in the given order, each chained
    for /boot.ipxe only (never an iPXE binary); bad input is one line, exit 2, and writes nothing."""
    branch, central = "http://10.1.0.2:8080", "http://10.9.0.1:8080"
    r = cli("boot", "site-loader", "--server", branch, "--server", central, "--json")
    assert r.code == 0, r.stderr
    d = r.json()
    assert d["servers"] == [branch, central] and d["attempts"] == 6
    chains = [line for line in d["script"].splitlines() if line.startswith("chain ")]
    assert [c.split()[3] for c in chains] == [f"{branch}/boot.ipxe", f"{central}/boot.ipxe"]
    out = tmp_path / "sites.ipxe"
    r = cli("boot", "site-loader", "--server", central, "--server", branch, "--attempts", "3", "-o", str(out))
    assert r.code == 0, r.stderr
    text = out.read_text()
    assert text.startswith("#!ipxe\n") and "iseq ${ns_try} 3 && goto ns_giveup ||" in text
    assert text.index(central) < text.index(branch)
    bad = tmp_path / "bad.ipxe"
    for args in (["--server", "http://a b"], ["--server", "http://x\nchain http://evil/"], ["--server", branch, "--server", branch],
                 ["--server", branch, "--attempts", "0"], ["--server", "ftp://x"]):
        r = cli("boot", "site-loader", *args, "-o", str(bad))
        assert r.code == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not bad.exists()


def test_an_error_line_keeps_its_brackets(cli):
    """Error lines are text, not Rich markup: "http[s]://" and a name like "[bold]x" print as given."""
    r = cli("boot", "site-loader", "--server", "http://a b")
    assert r.code == 2 and "want http[s]://HOST[:PORT]" in r.stderr, r.stderr
    r = cli("image", "show", "[bold]x")
    assert r.code == 2 and "'[bold]x'" in r.stderr, r.stderr
