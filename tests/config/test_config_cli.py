"""The real `netslate config` CLI: local data directory and --server."""

import json
import os
import stat
import textwrap

from netslate.agent.bundle import open_secrets
from netslate.store.models import Machine
from netslate.context import Context


def _machine(data_dir, name, path):
    ctx = Context(data_dir).init()
    with ctx.db.session() as s:
        m = Machine(name=name, tree_path=path, labels={}, status={})
        s.add(m)
        s.flush()
        return m.id


def test_cli_workflow_local(cli, data_dir, tmp_path):
    _machine(data_dir, "pc1", "/")
    _machine(data_dir, "pc2", "/")
    r = cli("config", "place", "pc1", "/site-a/c1/pool-x")
    assert r.code == 0, r.stderr
    assert cli("config", "place", "pc1", "/bad path").code == 2
    assert cli("config", "set", "/", "timezone", "UTC").code == 0
    assert cli("config", "set", "/site-a", "sysctl[vm.swappiness]", "10").code == 0
    f = tmp_path / "pool.yaml"
    f.write_text(textwrap.dedent("""\
        users+:
          - name: alice
            uid: 1000
            groups: [wheel]
        health_checks:
          - name: nfs
            tcp: nfs.example:2049
        secrets:
          wifi_psk: hunter2-hunter2
        """))
    assert cli("config", "apply", "/site-a/c1/pool-x", str(f)).code == 0
    # bad input: one line, exit 2, nothing written
    bad = tmp_path / "bad.yaml"
    bad.write_text("users: [ {name: x\n")
    r = cli("config", "apply", "/site-a/c1/pool-x", str(bad))
    assert r.code == 2 and "not valid YAML at line" in r.stderr and "Traceback" not in r.stderr
    bad.write_text("timezone: 5\nunits: {enable: nope}\n")
    r = cli("config", "apply", "/site-a/c1/pool-x", str(bad))
    assert r.code == 2 and "/timezone" in r.stderr and "/units/enable" in r.stderr
    r = cli("config", "show", "/site-a/c1/pool-x", "--json")
    assert r.json()["document"]["secrets"] == {"wifi_psk": "<redacted>"} and r.json()["document"]["users+"][0]["name"] == "alice"
    d = cli("config", "diff", "--json").json()
    assert [n["node"] for n in d["nodes"]] == ["/", "/site-a", "/site-a/c1/pool-x"]
    assert d["effect"]["machines_changed"] == 2
    pc1 = next(m for m in d["effect"]["machines"] if m["name"] == "pc1")
    assert {c["key"] for c in pc1["changes"]} >= {"/timezone", "/sysctl/vm.swappiness", "/users", "/secrets/wifi_psk"}
    assert "hunter2" not in json.dumps(d)
    r = cli("config", "publish", "-m", "first")
    assert r.code == 0 and "generation 1" in r.stdout
    r = cli("config", "publish", "-m", "again")
    assert r.code == 2 and "nothing to publish" in r.stderr
    e = cli("config", "explain", "pc1", "--json").json()
    assert e["sources"]["/sysctl/vm.swappiness"] == "/site-a" and e["sources"]["/health_checks/0"] == "/site-a/c1/pool-x"
    assert cli("config", "set", "/", "timezone", "Europe/Berlin").code == 0
    assert cli("config", "publish", "-m", "berlin").code == 0
    h = cli("config", "history", "--json").json()
    assert [g["generation"] for g in h] == [2, 1] and h[0]["message"] == "berlin" and h[0]["current"]
    assert cli("config", "show", "/", "--generation", "1", "--json").json()["document"] == {"timezone": "UTC"}
    r = cli("config", "rollback", "1", "-m", "undo berlin", "--json")
    assert r.code == 0 and r.json()["generation"] == 3
    assert cli("config", "show", "/", "--json").json()["document"] == {"timezone": "UTC"}
    b = cli("config", "bundle", "pc1").json()
    assert b["payload"]["generation"] == 3 and b["payload"]["secrets_removed"] is True
    cred = cli("config", "enroll", "pc1", "--json").json()["credential"]
    r = cli("config", "bundle", "pc1", "--credential", cred)
    assert "hunter2-hunter2" not in r.stdout  # sealed to the credential
    b = r.json()
    assert open_secrets(b["payload"], cred)[0]["document"]["secrets"] == {"wifi_psk": "hunter2-hunter2"}
    assert cli("config", "explain", "nosuch").code == 2


def test_cli_edit_uses_editor_and_detects_concurrent_change(cli, data_dir, tmp_path):
    editor = tmp_path / "ed.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/UTC/Europe\\/Oslo/' \"$1\"\n")
    editor.chmod(editor.stat().st_mode | stat.S_IXUSR)
    assert cli("config", "set", "/", "timezone", "UTC").code == 0
    r = cli("config", "edit", "/", env={"EDITOR": str(editor)})
    assert r.code == 0, r.stderr
    assert cli("config", "show", "/", "--json").json()["document"] == {"timezone": "Europe/Oslo"}
    # someone changes the node while the editor is open: the save is refused
    racer = tmp_path / "race.sh"
    racer.write_text(f"#!/bin/sh\nNETSLATE_DATA_DIR={data_dir} {os.sys.executable} -m netslate config set / locale C >/dev/null\n"
                     "sed -i 's/Oslo/Rome/' \"$1\"\n")
    racer.chmod(racer.stat().st_mode | stat.S_IXUSR)
    r = cli("config", "edit", "/", env={"EDITOR": str(racer)})
    assert r.code == 2 and "changed in the working copy while you edited it" in r.stderr
    assert cli("config", "show", "/", "--json").json()["document"] == {"timezone": "Europe/Oslo", "locale": "C"}


def test_cli_remote_mode(live_server, tmp_path):
    from nstest import run_cli

    ctx = live_server.ctx
    with ctx.db.session() as s:
        s.add(Machine(name="pc9", tree_path="/", labels={}, status={}))
    env = {"NETSLATE_SERVER": live_server.url, "NETSLATE_TOKEN": live_server.admin_token}

    def rcli(*a):
        return run_cli(*a, data_dir=tmp_path / "unused", env=env)

    assert rcli("config", "set", "/lab", "locale", "C.UTF-8").code == 0
    assert rcli("config", "place", "pc9", "/lab/c/p").code == 0
    d = rcli("config", "diff", "--json").json()
    assert d["effect"]["machines_changed"] == 1
    r = rcli("config", "publish", "-m", "remote", "--canary", "/lab", "--json")
    assert r.code == 0 and r.json()["canary"] == {"generation": 1, "path": "/lab"}
    assert rcli("config", "status", "--json").json()["canary"] == {"generation": 1, "path": "/lab"}
    assert rcli("config", "promote").code == 0
    e = rcli("config", "explain", "pc9", "--json").json()
    assert e["sources"] == {"/locale": "/lab"} and e["generation"] == 1
    r = rcli("config", "publish", "-m", "nothing")
    assert r.code == 2 and "nothing to publish" in r.stderr
    r = run_cli("config", "publish", "-m", "x", data_dir=tmp_path / "unused", env={"NETSLATE_SERVER": live_server.url})
    assert r.code == 2 and "401" in r.stderr


def test_cli_same_answer_locally_and_remotely(cli, data_dir):
    """Found moving config onto the service layer: each of these behaved differently locally and over --server."""
    # --limit 0: the local CLI printed an empty history, the server answered 422; now one line, exit 2, both ways
    r = cli("config", "history", "--limit", "0")
    assert r.code == 2 and "limit must be between 1 and 10000" in r.stderr and "Traceback" not in r.stderr, r.stderr
    # a YAML value JSON cannot carry (a date): one line locally, a traceback in the HTTP client remotely
    r = cli("config", "set", "/", "extra.when", "2024-01-01")
    assert r.code == 2 and "not plain JSON data" in r.stderr and "Traceback" not in r.stderr, r.stderr
    f = data_dir.parent / "dated.yaml"
    f.write_text("extra: {when: 2024-01-01}\n")
    r = cli("config", "apply", "/", str(f))
    assert r.code == 2 and "not plain JSON data" in r.stderr and "Traceback" not in r.stderr, r.stderr
    # audit actors follow one convention: local:USER on the data directory, token:NAME through a server (was api:NAME)
    assert cli("config", "set", "/", "timezone", "UTC").code == 0
    assert cli("config", "publish", "-m", "actor").code == 0
    author = cli("config", "history", "--json").json()[0]["author"]
    assert author.startswith("token:" if cli.mode == "remote" else "local:"), author
