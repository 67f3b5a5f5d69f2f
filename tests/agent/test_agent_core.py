"""Pure tests of the agent's cores: boot info, locate order, SRV parsing, verification, apply, lkg, queue."""

import datetime as dt
import os
import random
import stat
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netslate.agent import apply, bootinfo, bundle, dnssrv, lkg, locate, reports
from netslate.agent.util import read_json
from netslate.crypto.keys import SigningKey
from netslate.fleet import core as fleet

from agent_support import make_root


def _key():
    return SigningKey(Ed25519PrivateKey.generate())


def _bundle(key: SigningKey, gen: int, machine_id: int = 1, doc: dict | None = None) -> dict:
    return key.sign({"kind": "netslate-bundle/1", "machine_id": machine_id, "generation": gen,
                     "document": doc if doc is not None else {"hostname": "a"}, "issued_at": "2026-01-01T00:00:00Z"})


# ---------------------------------------------------------------- boot info


def test_cmdline_and_bootjson_precedence():
    k1, k2 = _key(), _key()
    cmd = bootinfo.parse_cmdline(f'quiet netslate.server=10.0.0.1:8080,https://b.example netslate.key={k1.public_b64} '
                                 'netslate.image=desk@7 netslate.mode=ram netslate.machine=m1 root=/dev/x "x=a b"')
    assert cmd["server"] == "10.0.0.1:8080,https://b.example" and cmd["machine"] == "m1"
    info = bootinfo.combine(cmd, {"servers": ["http://10.0.0.9:8080", "http://10.0.0.1:8080"], "key": k2.public_b64,
                                  "image": "desk", "version": 8, "mode": "cache", "source": "cache",
                                  "booted_via": "local disk", "lkg_dir": "/netslate/lkg"}, {"domain": "lab.test"})
    assert info.servers == ["http://10.0.0.1:8080", "https://b.example", "http://10.0.0.9:8080"]
    assert info.key == k1.public_bytes  # the kernel command line wins over boot.json
    assert (info.image, info.version, info.mode, info.image_source) == ("desk", 8, "cache", "cache")
    assert info.lkg_dir == "/netslate/lkg" and info.domain == "lab.test" and info.booted_via == "local disk"
    bad = bootinfo.combine({"key": "not-base64!!"}, {}, {})
    assert bad.key is None and "not base64" in bad.problems[0]
    assert bootinfo.combine({"image": "x@3"}, None, None).version == 3


# ---------------------------------------------------------------- locate


def test_locate_candidates_order_and_dedupe():
    c = locate.candidates(["http://a:1", "http://b:1"], ["http://b:1", "http://c:1"], ["http://c:1", "http://d:1"])
    assert c == [("http://a:1", "boot"), ("http://b:1", "boot"), ("http://c:1", "cache"), ("http://d:1", "dns")]
    ans = {"servers": [{"urls": ["http://10.0.0.1:8080", "http://[2001:db8::1]:8080"]}, {"urls": ["http://10.0.1.1:8080"]}, "junk"]}
    assert locate.urls_from_locate(ans) == ["http://10.0.0.1:8080", "http://[2001:db8::1]:8080", "http://10.0.1.1:8080"]
    assert locate.urls_from_locate({"servers": "nope"}) == [] and locate.urls_from_locate(None) == []


def test_srv_order_rfc2782():
    recs = [dnssrv.Srv(20, 100, 1, "far"), dnssrv.Srv(10, 0, 1, "zero"), dnssrv.Srv(10, 300, 1, "heavy"),
            dnssrv.Srv(10, 100, 1, "light"), dnssrv.Srv(5, 0, 1, "")]
    firsts = {}
    rng = random.Random(7)
    for _ in range(2000):
        o = dnssrv.rfc2782_order(recs, rng)  # the on-machine library's function, as lookup_servers uses it
        assert [r.target for r in o][-1] == "far"  # higher priority value last
        assert "" not in [r.target for r in o]  # "." (no service) dropped
        firsts[o[0].target] = firsts.get(o[0].target, 0) + 1
    assert firsts["heavy"] > 2 * firsts["light"] > 0  # weights spread load ~3:1
    assert firsts.get("zero", 0) < firsts["light"]


def test_resolv_conf():
    ns, search = dnssrv.resolv_conf("# x\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\nsearch lab.test. corp.test\n")
    assert ns == ["10.0.0.53", "fe80::1"] and search == ["lab.test", "corp.test"]


def test_srv_parse_real_responder_packet(ctx):
    from netslate.discovery import store
    from netslate.discovery.dns import Responder

    store.add_site(ctx, "north")
    store.add_subnet(ctx, "north", "127.0.0.2/32")
    store.register_server(ctx, "n1", "north", ["127.0.1.1", "fe80::12"], 8080)
    store.register_server(ctx, "s1", None, ["127.0.2.1", "2001:db8::21"], 8443)
    r = Responder(lambda: store.load_view(ctx), "fleet.test")
    q = dnssrv.build_query("_netslate._tcp.fleet.test", dnssrv.TYPE_SRV, 4242)
    data = r.handle(q, "127.0.0.2")
    ans = dnssrv.parse_response(data, 4242)
    assert ans.rcode == 0
    targets = {s.target: s for s in ans.srv}
    assert len(targets) == 2
    n1 = next(s for s in ans.srv if s.target.startswith("n1."))
    s1 = next(s for s in ans.srv if s.target.startswith("s1."))
    assert n1.port == 8080 and s1.port == 8443 and n1.priority < s1.priority  # own site first
    assert ans.addresses[n1.target] == ["127.0.1.1"]  # link-local never used
    assert set(ans.addresses[s1.target]) == {"127.0.2.1", "2001:db8::21"}
    with pytest.raises(dnssrv.DnsError):
        dnssrv.parse_response(data, 4243)  # wrong id
    nx = dnssrv.parse_response(r.handle(dnssrv.build_query("_netslate._tcp.other.test", dnssrv.TYPE_SRV, 9), "127.0.0.2"), 9)
    assert nx.srv == []


def test_srv_parser_never_crashes_on_garbage():
    rng = random.Random(1)
    good = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + dnssrv.encode_name("a.b") + b"\x00\x21\x00\x01"
    loop = struct.pack("!HHHHHH", 1, 0x8180, 0, 1, 0, 0) + b"\xc0\x0c"  # pointer to itself
    for data in [b"", b"\x00" * 11, loop, good, good[:-3]] + [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(500)]:
        try:
            dnssrv.parse_response(data)
        except dnssrv.DnsError:
            pass


# ---------------------------------------------------------------- verification


def test_bundle_verify_signature_machine_and_rollback():
    k, other = _key(), _key()
    env = _bundle(k, 5)
    assert bundle.verify(env, k.public_bytes, 1, 5)["generation"] == 5  # equal generation is fine
    with pytest.raises(bundle.BundleRejected, match="signature|key"):
        bundle.verify(env, other.public_bytes, 1, None)
    with pytest.raises(bundle.BundleRejected, match="older"):
        bundle.verify(env, k.public_bytes, 1, 6)
    with pytest.raises(bundle.BundleRejected, match="machine"):
        bundle.verify(env, k.public_bytes, 2, None)
    with pytest.raises(bundle.BundleRejected, match="no key"):
        bundle.verify(env, None, 1, None)
    tampered = dict(env, payload=dict(env["payload"], generation=99))
    with pytest.raises(bundle.BundleRejected):
        bundle.verify(tampered, k.public_bytes, 1, None)
    with pytest.raises(bundle.BundleRejected, match="not a bundle"):
        bundle.verify(k.sign({"kind": "netslate-manifest/1", "generation": 1}), k.public_bytes, 1, None)


def test_lkg_roundtrip_damage_and_forgery(tmp_path):
    k, other = _key(), _key()
    env = _bundle(k, 3)
    lkg.save(tmp_path, env, env["payload"])
    assert stat.S_IMODE(os.stat(tmp_path / "bundle.json").st_mode) == 0o600
    assert lkg.last_generation(tmp_path) == 3
    e, p, why = lkg.load(tmp_path, k.public_bytes, 1)
    assert p["generation"] == 3 and why is None
    assert lkg.load(tmp_path, other.public_bytes, 1)[1] is None  # re-verified with the pinned key
    (tmp_path / "bundle.json").write_text('{"payload": {"gen')  # damaged disk
    e, p, why = lkg.load(tmp_path, k.public_bytes, 1)
    assert p is None and "damaged" in why
    assert lkg.load(tmp_path / "nothing", k.public_bytes, 1)[2] == "no last-known-good bundle"


# ---------------------------------------------------------------- apply


FULL = {
    "hostname": "pc-07.lab.test",
    "timezone": "Europe/Paris",
    "locale": "en_GB.UTF-8",
    "users": [{"name": "alice", "groups": ["wheel", "users"], "ssh_keys": ["ssh-ed25519 AAAA alice"],
               "password_hash": "$6$abc$def"}, {"name": "bob", "uid": 2001}],
    "files": [{"path": "/etc/motd", "content": "hi\n", "mode": "0640", "owner": "alice"},
              {"path": "/opt/x/run.sh", "content": "#!/bin/sh\n", "mode": "0755"}],
    "secrets": {"wifi_psk": "s3cret"},
    "units": {"enable": ["ssh.service"], "mask": ["bluetooth.service"]},
    "sysctl": {"vm.swappiness": 10, "net.ipv4.ip_forward": True},
    "mounts": [{"what": "nfs:/home", "where": "/home/shared", "type": "nfs4", "options": "rw"}],
    "network": {"mode": "static", "interfaces": {"eth0": {"addresses": ["10.0.0.5/24"], "gateway": "10.0.0.1", "mtu": 9000}}},
    "dns": {"servers": ["10.0.0.53"], "search": ["lab.test"]},
    "ntp": {"servers": ["ntp.lab.test"]},
}


def test_apply_everything_then_nothing_changes(tmp_path):
    root = make_root(tmp_path)
    (root / "usr/share/zoneinfo/Europe").mkdir(parents=True)
    (root / "usr/share/zoneinfo/Europe/Paris").write_text("TZif")
    c = apply.Ctx(root)
    results, changes = apply.apply_all(FULL, c)
    assert all(v == "ok" for v in results.values()), results
    assert set(results) == set(apply.MODULES) - {"kernel_args"}
    assert (root / "etc/hostname").read_text() == "pc-07.lab.test\n"
    assert "127.0.1.1\tpc-07.lab.test\tpc-07" in (root / "etc/hosts").read_text()
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/Europe/Paris"
    passwd = (root / "etc/passwd").read_text()
    assert "alice:x:1000:1000:netslate-managed:/home/alice:" in passwd and "bob:x:2001:2001:" in passwd
    assert "alice:$6$abc$def:" in (root / "etc/shadow").read_text()
    group = (root / "etc/group").read_text()
    assert "users:x:100:alice" in group and "wheel:x:" in group and "alice:x:1000:" in group
    ak = root / "home/alice/.ssh/authorized_keys"
    assert ak.read_text() == "ssh-ed25519 AAAA alice\n" and stat.S_IMODE(ak.stat().st_mode) == 0o600 and ak.stat().st_uid == 1000
    motd = root / "etc/motd"
    assert stat.S_IMODE(motd.stat().st_mode) == 0o640 and motd.stat().st_uid == 1000
    assert stat.S_IMODE((root / "opt/x/run.sh").stat().st_mode) == 0o755
    assert (root / "run/netslate/secrets/wifi_psk").read_text() == "s3cret"
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/ssh.service") == "/usr/lib/systemd/system/ssh.service"
    assert os.readlink(root / "etc/systemd/system/bluetooth.service") == "/dev/null"
    assert (root / "etc/sysctl.d/90-netslate.conf").read_text().splitlines()[1:] == ["net.ipv4.ip_forward = 1", "vm.swappiness = 10"]
    mount = (root / "etc/systemd/system/home-shared.mount").read_text()
    assert "What=nfs:/home" in mount and "Type=nfs4" in mount and "After=network-online.target" in mount
    assert (root / "etc/systemd/system/remote-fs.target.wants/home-shared.mount").is_symlink()
    net = (root / "etc/systemd/network/10-netslate-eth0.network").read_text()
    for line in ("Name=eth0", "DHCP=no", "Address=10.0.0.5/24", "Gateway=10.0.0.1", "DNS=10.0.0.53", "Domains=lab.test", "MTUBytes=9000"):
        assert line in net
    assert "NTP=ntp.lab.test" in (root / "etc/systemd/timesyncd.conf.d/50-netslate.conf").read_text()
    assert ["systemctl", "daemon-reload"] in c.actions and ["networkctl", "reload"] in c.actions  # recorded, not run
    # idempotent: the same document again changes nothing and runs nothing
    c2 = apply.Ctx(root, previous=FULL)
    results2, changes2 = apply.apply_all(FULL, c2)
    assert all(v == "ok" for v in results2.values()) and changes2 == {} and c2.actions == []


def test_apply_removals_and_module_isolation(tmp_path):
    root = make_root(tmp_path)
    apply.apply_all(FULL | {"timezone": None}, apply.Ctx(root))
    new = {"users": [{"name": "bob", "uid": 2001}], "files": [{"path": "/opt/x/run.sh", "content": "#!/bin/sh\n", "mode": "0755"}],
           "units": {"enable": ["ssh.service", "nosuch.service"]}, "kernel_args": ["quiet"]}
    c = apply.Ctx(root, previous=FULL, kernel_cmdline=["ro"])
    results, changes = apply.apply_all(new, c)
    assert "alice" not in (root / "etc/passwd").read_text() and "alice" not in (root / "etc/group").read_text().split("users:x:100:")[1]
    assert not (root / "etc/motd").exists() and not (root / "run/netslate/secrets/wifi_psk").exists()
    assert not (root / "etc/systemd/system/bluetooth.service").is_symlink()  # unmasked
    assert not (root / "etc/systemd/system/home-shared.mount").exists()
    assert not (root / "etc/systemd/network/10-netslate-eth0.network").exists()
    assert not (root / "etc/sysctl.d/90-netslate.conf").exists()
    assert results["units"].startswith("error: nosuch.service") and results["users"] == "ok" and results["files"] == "ok"
    assert results["kernel_args"].startswith("error:") and c.reboot_required == ["kernel_args"]
    assert apply.apply_all({"timezone": "Mars/Base"}, apply.Ctx(root))[0]["timezone"].startswith("error: timezone Mars/Base")
    assert apply.apply_all({"mounts": [{"what": "x", "where": "/", "type": "ext4"}]}, apply.Ctx(root))[0]["mounts"].startswith("error: refusing")


def test_changed_modules_and_live_safety():
    old = {"files": [{"path": "/a", "content": "1"}], "network": {"mode": "dhcp"}, "sysctl": {"a.b": 1}}
    new = {"files": [{"path": "/a", "content": "2"}], "network": {"mode": "dhcp"}, "dns": {"servers": ["1.1.1.1"]}, "sysctl": {"a.b": 1}}
    ch = apply.changed_modules(old, new)
    assert ch == ["files", "network"]
    assert [m for m in ch if m not in apply.LIVE_SAFE] == ["network"]
    assert apply.network_files({"mode": "dhcp"}, None) == {"10-netslate-default.network": "[Match]\nType=ether\nName=en* eth*\n\n[Network]\nDHCP=yes\n"}
    assert apply.unit_escape_path("/home/a b") == "home-a\\x20b"


# ---------------------------------------------------------------- reports queue


def test_report_queue_order_bound_and_damage(tmp_path, monkeypatch):
    monkeypatch.setattr(reports, "MAX_QUEUED", 5)
    for i in range(8):
        reports.enqueue(tmp_path, {"n": i})
    items = reports.pending(tmp_path)
    assert [read_json(p)["n"] for p in items] == [3, 4, 5, 6, 7]  # oldest dropped, order kept
    items[0].write_text("{broken")
    sent = []
    monkeypatch.setattr(reports, "send", lambda url, mid, body, cred, timeout: sent.append(body["n"]))
    assert reports.flush(tmp_path, "http://x", 1, None) == 4 and sent == [4, 5, 6, 7]
    assert reports.pending(tmp_path) == []


# ---------------------------------------------------------------- fleet state (server-side core)


def test_fleet_state_and_flags():
    now = dt.datetime(2026, 1, 1, 12, 0, 0)
    rep = fleet.clean_report({"phase": "configured", "generation": 3, "config_source": "cache", "image_source": "cache",
                              "booted_via": "local disk", "modules": {"files": "ok"}, "health": {"ok": True, "checks": []}, "sent_at": 100.0, "uptime_s": 60})
    f, cur = fleet.merge_report(None, rep, now - dt.timedelta(minutes=1), True, "10.0.0.5")
    assert cur and f["booted_at"] == "2026-01-01T11:58:00Z"
    assert fleet.view(f, True, None, 3, now)["booted_via"] == "local disk"
    assert fleet.clean_report({"booted_via": "floppy"})["booted_via"] is None  # only network | local disk
    assert fleet.derive_state(f, True, None, now) == "configured"
    assert fleet.derive_state(f, True, now - dt.timedelta(seconds=10), now) == "booting"  # PXE boot after the report
    assert fleet.derive_state(f, True, None, now + dt.timedelta(minutes=10)) == "offline"
    assert fleet.derive_state(None, False, None, now) == "discovered"
    assert fleet.flags(f, 4) == ["old_generation", "image_from_cache", "config_from_cache"]
    bad = fleet.clean_report({"modules": {"units": "error: x"}, "config_source": "server", "health": {"ok": True}})
    assert fleet.reported_state(bad) == "degraded"
    older = fleet.clean_report({"phase": "configured", "generation": 2, "config_source": "cache", "sent_at": 50.0, "queued": True})
    f2, cur2 = fleet.merge_report(f, older, now, True, None)
    assert not cur2 and f2["generation"] == 3 and f2["history"][-1]["queued"] is True
    for junk in ([], {"generation": -1}, {"config_source": "x"}, {"phase": "dancing"}, {"modules": []}):
        with pytest.raises(fleet.BadReport):
            fleet.clean_report(junk)
