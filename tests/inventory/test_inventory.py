"""The inventory's one resolver on a real SQLite data directory: every identifier form, MAC
notations, ambiguity and unknown identifiers; and `config place` by any identifier (both CLI modes)."""

import pytest

from netslate import inventory
from netslate.errors import NotFound, UserError
from netslate.inventory.idents import forms
from netslate.store.models import Machine

MAC = "52:54:00:ab:cd:01"
UUID = "4c4c4544-0042-3510-8051-b4c04f4e4a31"


@pytest.fixture
def pc(ctx):
    return inventory.add_machine(ctx, [MAC, "52:54:00:ab:cd:02"], uuid=UUID.upper(), serial="SN-4711", name="pc1")


def _id(ctx, ident):
    with ctx.db.session() as s:
        return inventory.resolve(s, ident).id


@pytest.mark.parametrize("ident", [
    "pc1", "SN-4711",
    MAC, MAC.upper(), MAC.replace(":", "-"), MAC.upper().replace(":", "-"), "525400abcd01", "5254.00ab.cd01",
    "01-52-54-00-ab-cd-01", " 52:54:00:AB:CD:02 ",
    UUID, UUID.upper(), "{" + UUID + "}", UUID.replace("-", ""),
    "mac:" + MAC, "uuid:" + UUID, "serial:SN-4711", "name:pc1",
])
def test_every_identifier_form_resolves(ctx, pc, ident):
    assert _id(ctx, ident) == pc["id"]


def test_ids_as_text_number_and_prefix(ctx, pc):
    assert _id(ctx, str(pc["id"])) == _id(ctx, pc["id"]) == _id(ctx, f"id:{pc['id']}") == pc["id"]


def test_stored_forms_are_normalized(ctx, pc):
    assert pc["macs"] == [MAC, "52:54:00:ab:cd:02"] and pc["uuid"] == UUID


def test_unknown_is_not_found_in_one_line(ctx, pc):
    for ident in ("pc2", "52:54:00:00:00:99", "00000000-0000-0000-0000-000000000000", "9999", "serial:nope"):
        with ctx.db.session() as s, pytest.raises(NotFound) as exc:
            inventory.resolve(s, ident)
        msg = str(exc.value)
        assert "no machine" in msg and "\n" not in msg and "MAC" in msg, msg


def test_malformed_identifiers_are_refused(ctx, pc):
    for ident in ("", "   ", "a/b;reboot", "mac:not-a-mac", "uuid:1234", "id:x"):
        with ctx.db.session() as s, pytest.raises(UserError) as exc:
            inventory.resolve(s, ident)
        assert "\n" not in str(exc.value)


def test_ambiguous_identifier_names_every_candidate(ctx, pc):
    # a machine whose serial is another machine's id, and one whose serial is another's name
    other = inventory.add_machine(ctx, ["52:54:00:ab:cd:03"], serial=str(pc["id"]), name="pc2")
    third = inventory.add_machine(ctx, ["52:54:00:ab:cd:04"], serial="pc2")
    with ctx.db.session() as s, pytest.raises(UserError) as exc:
        inventory.resolve(s, str(pc["id"]))
    msg = str(exc.value)
    assert not isinstance(exc.value, NotFound)
    assert f"machine {pc['id']} 'pc1' (by id)" in msg and f"machine {other['id']} 'pc2' (by serial)" in msg, msg
    assert "id:" in msg and "\n" not in msg
    with ctx.db.session() as s, pytest.raises(UserError, match="names 2 machines"):
        inventory.resolve(s, "pc2")
    # a prefix picks one reading; a number from a program is always an id
    assert _id(ctx, f"id:{pc['id']}") == pc["id"] and _id(ctx, f"serial:{pc['id']}") == other["id"]
    assert _id(ctx, pc["id"]) == pc["id"]
    assert _id(ctx, "name:pc2") == other["id"] and _id(ctx, "serial:pc2") == third["id"]


def test_same_serial_on_two_machines_is_ambiguous(ctx, pc):
    inventory.add_machine(ctx, ["52:54:00:ab:cd:05"], serial="SN-4711")
    with ctx.db.session() as s, pytest.raises(UserError, match="names 2 machines"):
        inventory.resolve(s, "SN-4711")


def test_forms_reads_every_interpretation():
    assert [f for f, _ in forms("12")] == ["id", "name", "serial"]
    assert ("mac", MAC) in forms("525400abcd01") and ("name", "525400abcd01") in forms("525400abcd01")
    assert forms(12) == [("id", 12)]
    assert forms("mac:5254.00ab.cd01") == [("mac", MAC)]
    assert [f for f, _ in forms("1" * 19)] == ["name", "serial"]  # too long for an id


def test_identify_and_discover(ctx, pc):
    with ctx.db.session() as s:
        assert inventory.identify(s, None, ["garbage", MAC.upper()], None).id == pc["id"]
        assert inventory.identify(s, None, [], UUID.upper()).id == pc["id"]
        assert inventory.identify(s, "nobody", [], None) is None
    mid = inventory.discover_machine(ctx, {"mac": "52:54:00:ab:cd:09", "uuid": None, "arch": "x86_64"}, "10.0.0.9")
    assert inventory.show_machine(ctx, "52-54-00-AB-CD-09")["state"] == "discovered"
    assert inventory.discover_machine(ctx, {"mac": "52:54:00:ab:cd:09", "uuid": None}, None) == mid  # the unique MAC wins
    # a known UUID seen from another NIC gets that MAC, not a second machine
    assert inventory.discover_machine(ctx, {"mac": "52:54:00:ab:cd:0a", "uuid": UUID}, None) == pc["id"]
    assert _id(ctx, "52:54:00:ab:cd:0a") == pc["id"]


def test_changes_move_the_generation_and_discovery_does_not(ctx):
    with ctx.db.session() as s:
        g0 = inventory.generation(s)
    m = inventory.add_machine(ctx, [MAC], name="pc1")
    inventory.label_machine(ctx, "pc1", {"room": "b1"}, [], group="/lab")
    with ctx.db.session() as s:
        g1 = inventory.generation(s)
        inventory.place(s, MAC, "/lab/b")
    with ctx.db.session() as s:
        g2 = inventory.generation(s)
        assert s.get(Machine, m["id"]).tree_path == "/lab/b"
    assert g0 < g1 < g2
    inventory.discover_machine(ctx, {"mac": "52:54:00:ab:cd:09"}, None)
    with ctx.db.session() as s:
        assert inventory.generation(s) == g2
    inventory.remove_machine(ctx, "pc1")
    with ctx.db.session() as s:
        assert inventory.generation(s) > g2


@pytest.mark.parametrize("how", ["mac", "uuid", "name", "id"])
def test_config_place_by_any_identifier(cli, ctx, pc, how):
    ident = {"mac": MAC.upper().replace(":", "-"), "uuid": UUID, "name": "pc1", "id": str(pc["id"])}[how]
    r = cli("config", "place", ident, "/site-a/pool", "--json")
    assert r.code == 0, r.stderr
    assert r.json()["id"] == pc["id"] and r.json()["tree_path"] == "/site-a/pool"
    assert inventory.show_machine(ctx, pc["id"])["group"] == "/site-a/pool"


def test_config_place_unknown_or_ambiguous_is_one_line(cli, ctx, pc):
    r = cli("config", "place", "52:54:00:00:00:99", "/site-a")
    assert r.code == 2 and "no machine" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    inventory.add_machine(ctx, ["52:54:00:ab:cd:03"], serial=str(pc["id"]))
    r = cli("config", "place", str(pc["id"]), "/site-a")
    assert r.code == 2 and "names 2 machines" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert inventory.show_machine(ctx, pc["id"])["group"] == "/"


def test_machine_cli_takes_every_form(cli, ctx, pc):
    for ident in ("SN-4711", "5254.00ab.cd01", UUID.upper(), f"id:{pc['id']}"):
        r = cli("machine", "show", ident, "--json")
        assert r.code == 0 and r.json()["id"] == pc["id"], r.stderr
    r = cli("machine", "show", "nobody")
    assert r.code == 2 and "no machine 'nobody'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
