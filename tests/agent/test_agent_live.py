"""The agent against a real server on loopback: fetch + verify + apply + lkg + report, refusals,
outages, hostile servers, long-poll follow, DNS SRV locate, fleet status and metrics."""

import json
import subprocess
import threading
import time

import httpx
import pytest

from netslate.agent import lkg
from netslate.agent.install import build_zipapp, install_into
from netslate.boot import store as bstore
from netslate.config import credentials
from netslate.crypto.keys import SigningKey
from nstest import free_port

from agent_support import DOC, MAC, Hostile, agent_for, make_root, publish, serve_on

pytestmark = pytest.mark.timeout(120)


def _signed_locate(url: str) -> bytes:
    """The real server's signed locate answer, for a hostile server to replay."""
    return httpx.get(f"{url}/api/v1/locate?signed=true", timeout=10).content


def _status(url: str, ident: str = "1") -> dict:
    return httpx.get(f"{url}/api/v1/machines/{ident}", timeout=10).json()["fleet"]


def test_fetch_verify_apply_report(ctx, world, live_server, tmp_path, cli):
    root = make_root(tmp_path)
    a = agent_for(root, live_server.url, ctx.signing_key.public_b64)
    out = a.run_once().report
    assert out["config_source"] == "server" and out["generation"] == world["generation"]
    assert all(v == "ok" for v in out["modules"].values()), out["modules"]
    assert (root / "etc/hostname").read_text() == "m1-host\n"  # template rendered by the server
    cpus = (root / "etc/netslate-test/facts.txt").read_text()
    assert cpus.strip() == "cpus=?"  # m1 is not enrolled: its (anonymous) facts never fill a signed bundle (issue 11 #2)
    assert lkg.last_generation(root / "netslate/lkg") == world["generation"]
    f = _status(live_server.url)
    assert f["state"] == "configured" and f["config_source"] == "server" and f["generation"] == world["generation"]
    assert f["flags"] == ["unauthenticated"] and f["healthy"] is True
    # second boot pass: nothing changes on disk
    again = agent_for(root, live_server.url, ctx.signing_key.public_b64).run_once().report
    assert again["changes"] == {} and again["config_source"] == "server"
    # the CLI shows the same (machine list --json and fleet status --json, local mode)
    rows = cli("machine", "list", "--json").json()
    assert rows[0]["fleet"]["state"] == "configured" and rows[0]["fleet"]["generation"] == world["generation"]
    fs = cli("fleet", "status", "--json").json()
    assert fs["summary"]["states"]["configured"] == 1 and fs["machines"][0]["config_source"] == "server"
    # a newer generation flags the machine as old until it applies it
    publish(ctx, DOC | {"sysctl": {"vm.swappiness": 20}}, "second")
    assert "old_generation" in _status(live_server.url)["flags"]
    metrics = httpx.get(f"{live_server.url}/metrics", timeout=10).text
    assert 'netslate_machine_config_generation{machine="1",name="m1"} 1.0' in metrics
    assert 'netslate_machine_config_generation_behind{machine="1",name="m1"} 1.0' in metrics
    assert 'netslate_machines{state="configured"} 1.0' in metrics
    assert 'netslate_machine_healthy{machine="1",name="m1"} 1.0' in metrics


def test_wrong_key_refused_nothing_applied(ctx, world, live_server, tmp_path):
    root = make_root(tmp_path)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = SigningKey(Ed25519PrivateKey.generate())
    out = agent_for(root, live_server.url, other.public_b64).run_once().report
    assert out["config_source"] == "none" and out["generation"] is None
    # the locate answer is refused already (signed by the server's key, not the pinned one)
    assert any("locate answer refused: signed by key" in p and "trusted key" in p for p in out["problems"]), out["problems"]
    assert any("image's defaults" in p for p in out["problems"])
    assert not (root / "etc/hostname").exists() and not (root / "netslate/lkg/bundle.json").exists()
    # a server whose answers it cannot verify gets nothing from it: the report waits in the queue,
    # for the next verified server (issue 15 §3: locate answers are signed too)
    queued = [json.loads(p.read_text()) for p in sorted((root / "netslate/lkg/queue").iterdir())]
    assert len(queued) == 1 and queued[0]["config_source"] == "none", queued
    assert _status(live_server.url)["state"] == "discovered"


def test_replayed_older_generation_refused(ctx, world, live_server, tmp_path):
    root = make_root(tmp_path)
    key = ctx.signing_key.public_b64
    # record generation 1 as a man in the middle would, then let the machine move to generation 2
    assert agent_for(root, live_server.url, key).run_once().report["generation"] == world["generation"]
    old_env = httpx.get(f"{live_server.url}/api/v1/machines/1/bundle", timeout=10).json()
    assert old_env["payload"]["generation"] == world["generation"]
    gen2 = publish(ctx, DOC | {"files": [{"path": "/etc/motd", "content": "gen2\n"}]}, "gen2")
    assert agent_for(root, live_server.url, key).run_once().report["generation"] == gen2
    mitm = Hostile("replay", json.dumps(old_env).encode(), locate=_signed_locate(live_server.url))
    try:
        out = agent_for(root, mitm.url, key).run_once().report
    finally:
        mitm.close()
    assert any("older than the last applied generation" in p for p in out["problems"])
    assert out["config_source"] == "cache" and out["generation"] == gen2  # the last-known-good, not the replay
    assert (root / "etc/motd").read_text() == "gen2\n"


def test_server_down_lkg_then_queued_reports_delivered(ctx, world, tmp_path):
    port = free_port()
    srv = serve_on(ctx, port)
    root = make_root(tmp_path)
    key = ctx.signing_key.public_b64
    assert agent_for(root, srv.url, key).run_once().report["config_source"] == "server"
    srv.stop()
    (root / "etc/motd").unlink()  # a fresh boot: the stateless root lost what the agent wrote
    t0 = time.monotonic()
    a = agent_for(root, srv.url, key, timeout=2.0)
    out = a.run_once().report
    assert time.monotonic() - t0 < 30
    assert out["config_source"] == "cache" and out["generation"] == world["generation"]
    assert (root / "etc/motd").read_text() == "welcome\n"  # applied from the last-known-good
    assert any("no server answered" in p for p in out["problems"])
    queued = sorted((root / "netslate/lkg/queue").iterdir())
    assert len(queued) == 1 and json.loads(queued[0].read_text())["config_source"] == "cache"
    srv2 = serve_on(ctx, port)  # the server comes back
    try:
        assert a.follow_step(wait=1) in ("applied", "unchanged")
        assert list((root / "netslate/lkg/queue").iterdir()) == []
        from netslate.composition import Parts
        from netslate.services.framework import plain
        from netslate.services.machines import LocalMachines

        m = plain(LocalMachines(Parts(ctx)).show("1"))
        with ctx.db.session() as s:
            from netslate.store.models import Machine

            history = s.get(Machine, 1).status["fleet"]["history"]
        assert any(h["queued"] and h["config_source"] == "cache" for h in history)
        assert m["fleet"]["config_source"] == "server"  # the follow step fetched from the server again
    finally:
        srv2.stop()


@pytest.mark.parametrize("mode", ["garbage", "hang", "trickle"])
def test_hostile_server_survived(ctx, world, live_server, tmp_path, mode):
    root = make_root(tmp_path)
    key = ctx.signing_key.public_b64
    bad = Hostile(mode, locate=_signed_locate(live_server.url))
    try:
        t0 = time.monotonic()
        out = agent_for(root, bad.url, key, timeout=1.5).run_once().report
        took = time.monotonic() - t0
        assert took < 20
        assert out["config_source"] == "none" and not (root / "etc/hostname").exists()
        assert any("not used" in p for p in out["problems"])
        # with a good server after it in the list the machine still gets its config
        out2 = agent_for(root, [bad.url, live_server.url], key, timeout=1.5).run_once().report
    finally:
        bad.close()
    assert out2["config_source"] in ("server", "cache")


def test_follow_long_poll_applies_live_and_flags_reboot(ctx, world, live_server, tmp_path):
    root = make_root(tmp_path)
    a = agent_for(root, live_server.url, ctx.signing_key.public_b64)
    a.run_once()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", a.follow_step(wait=20)))
    t.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    gen = publish(ctx, DOC | {"files": [{"path": "/etc/motd", "content": "live change\n"}], "network": {"mode": "dhcp"}}, "live")
    t.join(30)
    assert result["r"] == "applied" and time.monotonic() - t0 < 10
    assert (root / "etc/motd").read_text() == "live change\n"
    assert not (root / "etc/systemd/network").exists()  # network waits for the next boot
    f = _status(live_server.url)
    assert f["generation"] == gen and f["reboot_required"] == ["network"] and "reboot_required" in f["flags"]
    assert a.follow_step(wait=1) == "unchanged"


def test_srv_locate_and_cached_locate_list(ctx, world, live_server, tmp_path):
    from netslate.discovery import store as dstore
    from netslate.discovery.dns import DnsServer, Responder

    port = int(live_server.url.rsplit(":", 1)[1])
    dstore.register_server(ctx, "srv1", None, ["127.0.0.1"], port)
    dns = DnsServer(Responder(lambda: dstore.load_view(ctx), "fleet.test"), "127.0.0.1", 0).start()
    try:
        dns_port = dns.port
        root = make_root(tmp_path)
        a = agent_for(root, None, ctx.signing_key.public_b64, domain="fleet.test", nameserver=f"127.0.0.1:{dns_port}")
        out = a.run_once().report
    finally:
        dns.stop()
    assert out["config_source"] == "server" and out["server"] == live_server.url
    cached = json.loads((root / "netslate/lkg/locate.json").read_text())
    assert cached["answer"]["servers"][0]["urls"] == [live_server.url]
    # DNS gone, no boot list: the cached locate answer still finds the server
    b = agent_for(root, None, ctx.signing_key.public_b64, domain="fleet.test", nameserver="127.0.0.1:9")
    assert b.run_once().report["config_source"] == "server"


def test_identify_enrolled_report_needs_credential(ctx, world, live_server):
    r = httpx.get(f"{live_server.url}/api/v1/fleet/identify", params={"mac": [MAC.upper()]}, timeout=10)
    assert r.json() == {"id": 1, "name": "m1"}
    assert httpx.get(f"{live_server.url}/api/v1/fleet/identify", params={"mac": "52:54:00:00:00:99"}, timeout=10).status_code == 404
    cred = credentials.enroll(ctx, "m1", "test")["credential"]
    url = f"{live_server.url}/api/v1/machines/1/report"
    body = {"phase": "configured", "generation": 1, "config_source": "server", "modules": {}, "health": {"ok": True}}
    assert httpx.post(url, json=body, timeout=10).status_code == 403
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer nsm_wrong"}, timeout=10).status_code == 403
    ok = httpx.post(url, json=body, headers={"Authorization": f"Bearer {cred}"}, timeout=10)
    assert ok.status_code == 202 and ok.json()["authenticated"] is True
    assert "unauthenticated" not in _status(live_server.url)["flags"]
    assert httpx.post(url, json={"generation": "x"}, headers={"Authorization": f"Bearer {cred}"}, timeout=10).status_code == 400
    assert httpx.post(url, content=b"garbage", timeout=10).status_code == 400


def test_zipapp_runs_with_stdlib_only_and_installs(ctx, world, live_server, tmp_path, cli):
    pyz = tmp_path / "netslate-agent.pyz"
    r = cli("agent", "zipapp", "--output", str(pyz), "--json")
    assert r.code == 0, r.stderr
    root = make_root(tmp_path)
    # -I -S: no site-packages, no user paths: only the standard library is importable
    proc = subprocess.run(["/usr/bin/python3", "-I", "-S", str(pyz), "run", "--once", "--json", "--root", str(root),
                           "--server", live_server.url, "--key", ctx.signing_key.public_b64, "--machine", "m1",
                           "--lkg-dir", "/netslate/lkg"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["config_source"] == "server"
    assert (root / "etc/hostname").read_text() == "m1-host\n"
    tree = tmp_path / "tree"
    install_into(tree)
    assert (tree / "usr/lib/netslate/netslate-agent.pyz").is_file()
    assert "netslate-agent.pyz" in (tree / "usr/bin/netslate-agent").read_text()
    link = tree / "etc/systemd/system/multi-user.target.wants/netslate-agent.service"
    assert link.is_symlink() and str(link.readlink()) == "/usr/lib/systemd/system/netslate-agent.service"
    assert "ExecStart=/usr/bin/netslate-agent run" in (tree / "usr/lib/systemd/system/netslate-agent.service").read_text()
    # the exit code says when the machine runs without any verified config
    proc = subprocess.run(["/usr/bin/python3", "-I", "-S", str(pyz), "run", "--once", "--root", str(tmp_path / "empty"),
                           "--server", "http://127.0.0.1:9", "--key", ctx.signing_key.public_b64, "--timeout", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4 and "image's defaults" in proc.stderr


def test_full_lkg_disk_is_reported_not_fatal(ctx, world, live_server, tmp_path):
    """A full NETSLATE disk: the config still applies, saving the last-known-good fails loudly."""
    root = make_root(tmp_path)
    disk = root / "netslate"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "netslate-test", str(disk)], check=True)
    try:
        (disk / "lkg").mkdir()
        with open(disk / "filler", "wb") as f:
            try:
                f.write(b"\0" * (1 << 20))
            except OSError:
                pass
        out = agent_for(root, live_server.url, ctx.signing_key.public_b64).run_once().report
        assert out["config_source"] == "server" and out["modules"]["files"] == "ok"
        assert out["modules"]["last_known_good"].startswith("error: saving to")
        assert not (disk / "lkg/bundle.json").exists()
        assert "module_errors" in _status(live_server.url)["flags"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_enrolled_machine_gets_secrets_and_reports_authenticated(ctx, world, live_server, tmp_path):
    publish(ctx, DOC | {"secrets": {"wifi_psk": "hunter2-secret"}}, "secret")
    bare = make_root(tmp_path, "bare")
    a = agent_for(bare, live_server.url, ctx.signing_key.public_b64)
    out = a.run_once().report
    assert out["config_source"] == "server" and not (bare / "run/netslate/secrets/wifi_psk").exists()
    # no TPM, no enrollment token: nothing to enroll with, so the machine stays at trust none (issue 13)
    assert a.enroller.method == "token" and a.enroller.state == "none" and a.credential() is None
    assert httpx.get(f"{live_server.url}/api/v1/machines/1", timeout=10).json()["trust"] == "none"
    cred = credentials.enroll(ctx, "m1", "test")["credential"]
    root = make_root(tmp_path)
    (root / "netslate/lkg").mkdir(parents=True)
    (root / "netslate/lkg/credential").write_text(cred + "\n")
    out = agent_for(root, live_server.url, ctx.signing_key.public_b64).run_once().report
    assert out["config_source"] == "server" and out["modules"]["secrets"] == "ok"
    assert (root / "run/netslate/secrets/wifi_psk").read_text() == "hunter2-secret"
    assert b"hunter2" not in (root / "netslate/lkg/bundle.json").read_bytes()  # kept sealed to the credential (issue 13)
    # the last-known-good bundle, read offline, still opens with the credential
    offline = agent_for(root, None, ctx.signing_key.public_b64).run_once().report
    assert offline["config_source"] == "cache" and offline["modules"]["secrets"] == "ok"
    assert (root / "run/netslate/secrets/wifi_psk").read_text() == "hunter2-secret"
    f = _status(live_server.url)
    assert f["authenticated"] is True and "unauthenticated" not in f["flags"]
    assert "hunter2" not in json.dumps(out) and "hunter2" not in httpx.get(f"{live_server.url}/api/v1/fleet", timeout=10).text
    # the machine without its credential can no longer report (and does not clog its queue)
    out = agent_for(bare, live_server.url, ctx.signing_key.public_b64).run_once().report
    assert any("report not accepted" in p for p in out["problems"])
    assert not (bare / "netslate/lkg/queue").exists() or list((bare / "netslate/lkg/queue").iterdir()) == []


def test_live_actions_in_private_namespaces(ctx, world, live_server, tmp_path):
    """The live path (kernel hostname, /proc/sys) for real, inside private UTS + mount namespaces so
    the host is untouched; systemd is hidden so no systemctl reaches the host's PID 1."""
    publish(ctx, DOC | {"sysctl": {"kernel.domainname": "lab.test"}}, "live sysctl")
    pyz = tmp_path / "a.pyz"
    build_zipapp(pyz)
    root = make_root(tmp_path)
    script = (f"mount -t tmpfs hide /run/systemd 2>/dev/null; "
              f"/usr/bin/python3 -I -S {pyz} run --once --live --root {root} --server {live_server.url} "
              f"--key {ctx.signing_key.public_b64} --machine m1 --lkg-dir /netslate/lkg || exit 9; "
              f"echo HOST=$(hostname) DOMAIN=$(cat /proc/sys/kernel/domainname)")
    host_before = open("/proc/sys/kernel/hostname").read()
    proc = subprocess.run(["unshare", "--uts", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HOST=m1-host DOMAIN=lab.test" in proc.stdout
    assert open("/proc/sys/kernel/hostname").read() == host_before  # the host kept its name
    assert (root / "etc/sysctl.d/90-netslate.conf").read_text().endswith("kernel.domainname = lab.test\n")
