"""The real `netslate host|pool|desktop` commands: --json, one-line errors with exit 2, nothing half-made."""

import os
import re
import stat

import pytest

from netslate.context import Context
from netslate.desktops import pools
from netslate.errors import UserError

from desktops_fixtures import traversable


def test_cli_hosts_goldens_pools_and_bad_input(cli, data_dir, desktop_guest):
    traversable(data_dir)
    r = cli("host", "add", "bad", "http://example/x")
    assert r.code == 2 and "libvirt QEMU URI" in r.stderr and "Traceback" not in r.stderr
    r = cli("host", "add", "gone", "qemu+tcp://127.0.0.1:1/system")
    assert r.code == 2 and "cannot connect" in r.stderr
    r = cli("host", "add", "local", "qemu:///system", "--accel", "tcg", "--json")
    assert r.code == 0, r.stderr
    h = r.json()
    assert h["capacity"]["cpus"] >= 1 and h["capacity"]["memory_mib"] > 0 and h["capacity"]["domain_type"] == "qemu"
    assert "disk_dir_free" in h["capacity"] and "storage_pools" in h["capacity"]

    # golden images: versioned, raw converted to qcow2, stored read-only
    g1 = cli("desktop", "image", "import", "tiny", str(desktop_guest["v1"]), "--json").json()
    g2 = cli("desktop", "image", "import", "tiny", str(desktop_guest["v2"]), "--json").json()
    assert (g1["version"], g2["version"]) == (1, 2)
    assert g2["path"].endswith("golden/tiny/2.qcow2")
    assert not os.stat(g2["path"]).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    junk = data_dir / "junk.txt"
    junk.write_text("not a disk")
    r = cli("desktop", "image", "import", "tiny", str(junk))
    assert r.code == 2 and "format" in r.stderr

    base = ["pool", "create", "p", "--golden", "tiny@1", "--size", "2", "--spare", "1", "--max", "4", "--memory", "128",
            "--ip-range", "10.77.5.10-10.77.5.20"]
    bad = [
        (["--golden", "nope"], "no golden image"),
        (["--golden", "tiny@9"], "no golden image tiny@9"),
        (["--size", "9"], "above --max"),
        (["--ip-range", "10.77.5.10-10.77.5.11"], "fewer than --max"),
        (["--ip-range", "10.77.5.20-10.77.5.10"], "before the first"),
        (["--ip-range", "banana"], "FIRST-LAST"),
        (["--display", "vnc", "--usb-redirect", "2"], "need --display spice"),
        (["--persistence", "sometimes"], "choose none or persistent"),
        (["--assignment", "random"], "floating or dedicated"),
        (["--hosts", "nosuchhost"], "matches no registered host"),
        (["--network", "bridge:../x"], "invalid bridge name"),
        (["--memory", "1"], "--memory"),
    ]
    # two through the real command (exit code 2, one line), every case through the same function in-process
    for extra, msg in bad[:1]:
        r = cli(*base, *extra)
        assert r.code == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, (extra, r.stderr)
    ctx = Context(data_dir).init()
    for extra, msg in bad + [(["a/b"], "invalid pool name")]:
        kw = dict(name="p", golden_ref="tiny@1", size=2, spare=1, max_=4, vcpus=1, memory_mib=128, display="spice",
                  usb_redirect=0, smartcard=False, persistence="none", assignment="floating",
                  ip_range="10.77.5.10-10.77.5.20", hosts="*", actor="t")
        opt = {"--golden": "golden_ref", "--size": "size", "--ip-range": "ip_range", "--display": "display",
               "--usb-redirect": "usb_redirect", "--persistence": "persistence", "--assignment": "assignment",
               "--hosts": "hosts", "--network": "network", "--memory": "memory_mib"}
        if extra == ["a/b"]:
            kw["name"] = "a/b"
        for k, v in zip(extra[::2], extra[1::2]):
            kw[opt[k]] = int(v) if opt[k] in ("size", "usb_redirect", "memory_mib") else v
        with pytest.raises(UserError, match=re.escape(msg)):
            pools.create_pool(ctx, **kw)
    assert pools.list_pools(ctx) == []  # nothing half-made
    from netslate.desktops import golden
    with pytest.raises(UserError, match="invalid golden image name"):
        golden.import_disk(ctx, "../evil", desktop_guest["v1"], "t")

    p = cli(*base, "--usb-redirect", "3", "--smartcard", "--json")
    assert p.code == 0, p.stderr
    assert p.json()["usb_redirect"] == 3 and p.json()["smartcard"] is True
    with pytest.raises(UserError, match="overlaps pool p"):
        pools.create_pool(ctx, "q", "tiny", 1, 0, 1, 1, 128, "spice", 0, False, "none", "floating", "10.77.5.15-10.77.5.30", "*", "t")
    r = cli("pool", "resize", "p", "--size", "1", "--spare", "0", "--json")
    assert r.code == 0 and r.json()["size"] == 1
    with pytest.raises(UserError, match="fewer than --max"):
        pools.resize_pool(ctx, "p", "t", max_=50)
    r = cli("pool", "reconcile", "p", "--wait", "--json")
    assert r.code == 0 and len(r.json()["actions"]) == 1, r.stdout + r.stderr
    from netslate.desktops import allocation, hosts

    assert hosts.show_host(ctx, "local")["reachable"] is True
    ds = allocation.list_desktops(ctx)
    assert len(ds) == 1 and ds[0]["state"] == "ready"
    r = cli("desktop", "request", "p", "--user", "gina", "--json")
    assert r.code == 0 and r.json()["id"] == ds[0]["id"] and r.json()["user"] == "gina"
    show = pools.show_pool(ctx, "p")
    assert show["states"] == {"assigned": 1} and show["addresses_used"] == 1
    r = cli("pool", "rm", "p")
    assert r.code == 2 and "in use" in r.stderr
    r = cli("pool", "rm", "p", "--force", "--json")
    assert r.code == 0 and r.json()["destroyed"] == 1
    assert allocation.list_desktops(ctx) == []
    assert list((data_dir / "desktops" / "disks").iterdir()) == []
    assert cli("host", "rm", "local").code == 0


def test_golden_from_netslate_image(dctx, desktop_guest, tmp_path):
    """An image version (rootfs dir → filesystem image + kernel + initrd) becomes a golden disk that a desktop boots."""
    import subprocess

    from netslate.desktops import allocation, golden
    from netslate.desktops.actuator import Actuator

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("from-image\n")
    v = dctx.library.import_files("deskimg", rootfs=root, kernel=desktop_guest["kernel"], initrd=desktop_guest["initrd"],
                                  warn=lambda m: None)
    g = golden.from_image(dctx, "fromimg", f"deskimg@{v['version']}", "test")
    assert g["version"] == 1 and g["kernel"] and g["initrd"] and "root=/dev/vda" in g["cmdline"]
    assert g["source"].startswith(f"image:deskimg@{v['version']} sha256:")
    # the disk holds the rootfs filesystem image byte for byte (then zero padding)
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", g["path"], str(raw)], check=True)
    rec = dctx.library.resolve("deskimg", str(v["version"])).artifacts["rootfs"]
    data = raw.read_bytes()
    assert data[: rec["size"]] == b"".join(dctx.library.read_range(rec, 0, rec["size"]))
    pools.create_pool(dctx, "fi", "fromimg", 1, 0, 1, 1, 128, "vnc", 0, False, "none", "floating",
                      "10.77.8.1-10.77.8.9", "*", "test")
    Actuator(dctx).reconcile("fi", wait=True)
    d = allocation.list_desktops(dctx, "fi")
    assert len(d) == 1 and d[0]["state"] == "ready"
    # the desktop boots the image's own kernel + initrd, which mounts the image's EROFS root from its disk
    from desktops_fixtures import wait_serial

    wait_serial(dctx, d[0]["name"], r"NETSLATE-IMAGE-ROOT-HOSTNAME=from-image")


def test_request_errors_full_host_unreachable_host_unknown_pool(dctx):
    from sqlalchemy import update

    from netslate.desktops import allocation
    from netslate.desktops.models import DesktopHost
    from netslate.errors import Conflict, NotFound

    with pytest.raises(NotFound, match="no pool named"):
        allocation.request_desktop(dctx, "nope", "u")
    pools.create_pool(dctx, "huge", "tiny", 0, 0, 1, 1, 1024 * 1024, "vnc", 0, False, "none", "floating",
                      "10.77.9.1-10.77.9.9", "*", "test")
    with pytest.raises(Conflict, match="MiB free"):
        allocation.request_desktop(dctx, "huge", "u")
    with dctx.db.session() as s:
        s.execute(update(DesktopHost).values(uri="qemu+tcp://127.0.0.1:1/system"))
    pools.resize_pool(dctx, "huge", "test")
    with pytest.raises(Conflict, match="no reachable host"):
        allocation.request_desktop(dctx, "huge", "u")
    assert allocation.list_desktops(dctx) == []  # nothing half-made
    with pytest.raises(UserError, match="invalid user name"):
        allocation.request_desktop(dctx, "huge", "../x")


def test_release_resets_now_locally_and_remotely(cli, data_dir, desktop_guest):
    """`desktop release` does the same work in both modes: the desktop is reset at once and comes back
    ready for the next user (before the service layer, the remote command only marked it logged off)."""
    from desktops_fixtures import cleanup, setup_installation

    ctx = setup_installation(data_dir, desktop_guest)
    try:
        r = cli("pool", "create", "rel", "--golden", "tiny", "--size", "1", "--spare", "1", "--max", "2", "--memory", "128",
                "--display", "vnc", "--ip-range", "10.77.6.1-10.77.6.9", "--json")
        assert r.code == 0, r.stderr
        assert cli("pool", "reconcile", "rel", "--wait", "--json").code == 0
        got = cli("desktop", "request", "rel", "--user", "hank", "--json").json()
        assert got["user"] == "hank"
        r = cli("desktop", "release", str(got["id"]), "--json")
        assert r.code == 0, r.stderr
        d = r.json()
        assert d["id"] == got["id"] and d["state"] == "ready" and d["user"] is None, d
        assert d["started_at"] > got["started_at"]  # its domain was started again: the reset happened
        assert cli("desktop", "show", str(got["id"]), "--json").json()["state"] == "ready"
    finally:
        cleanup(ctx)
