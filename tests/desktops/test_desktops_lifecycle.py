"""Pools on a real libvirtd with real TCG guests: fill, request, reset, concurrency, restarts, host loss."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
from sqlalchemy import select, update

from desktops_fixtures import our_domains, wait_serial
from netslate.desktops import addresses, allocation, golden, pools
from netslate.desktops.actuator import Actuator, installation_id
from netslate.desktops.models import Desktop, DesktopAddress, DesktopHost
from netslate.errors import Conflict


def mkpool(ctx, name="p", size=2, spare=1, max_=4, persistence="none", assignment="floating", ip="10.77.0.10-10.77.0.20", grace=0.0):
    return pools.create_pool(ctx, name, "tiny", size, spare, max_, 1, 128, "spice", 2, False, persistence, assignment,
                             ip, "*", "test", grace_seconds=grace)


def invariants(ctx) -> list[Desktop]:
    """No orphans: domains, disk directories and addresses all belong to desktop rows, and back."""
    prefix = f"ns-{installation_id(ctx)}-"
    with ctx.db.session() as s:
        ds = list(s.scalars(select(Desktop)))
        addrs = list(s.scalars(select(DesktopAddress)))
    names = {d.name for d in ds}
    assert our_domains(prefix) == names
    disk_dirs = {p.name for p in (ctx.data_dir / "desktops" / "disks").iterdir()}
    assert disk_dirs == names
    assert {a.desktop_id for a in addrs} == {d.id for d in ds}
    assert len({a.ip for a in addrs}) == len(addrs)
    return ds


def test_pool_fills_request_takes_prestarted_and_spare_refills(dctx):
    mkpool(dctx)
    Actuator(dctx).reconcile("p", wait=True)
    ds = invariants(dctx)
    assert len(ds) == 2 and {d.state for d in ds} == {"ready"}
    ready_ids = {d.id for d in ds}
    t0 = time.monotonic()
    got = allocation.request_desktop(dctx, "p", "alice")
    took = time.monotonic() - t0
    assert got["id"] in ready_ids and got["state"] == "assigned" and got["user"] == "alice"
    assert got["ip"].startswith("10.77.0.")
    print(f"request with a prestarted spare took {took:.3f}s")
    # same user again: the same desktop (an open claim is not doubled)
    assert allocation.request_desktop(dctx, "p", "alice")["id"] == got["id"]
    bob = allocation.request_desktop(dctx, "p", "bob")
    assert bob["id"] != got["id"] and bob["id"] in ready_ids
    Actuator(dctx).reconcile("p", wait=True)  # 2 claimed + 1 spare
    ds = invariants(dctx)
    assert len(ds) == 3
    assert sorted(d.state for d in ds) == ["assigned", "assigned", "ready"]
    # the DHCP reservations the dnsmasq renderer reads: one per desktop, (mac, ip, hostname)
    res = addresses.desktop_reservations(dctx)
    assert sorted(r[0] for r in res) == sorted(d.mac for d in ds)
    assert all(ip.startswith("10.77.0.") and host.startswith("ns-") for _, ip, host in res)


def test_reset_after_logoff_discards_written_file_and_new_golden_rolls(dctx, live_server, desktop_guest):
    mkpool(dctx, size=1, spare=0, max_=2)
    eng = Actuator(dctx)
    eng.reconcile("p", wait=True)
    d = allocation.request_desktop(dctx, "p", "dora")
    first = wait_serial(dctx, d["name"], r"NETSLATE-SCRATCH-WRITTEN=\S+")
    assert "NETSLATE-GOLDEN=v1" in first and "NETSLATE-SCRATCH-ABSENT" in first
    # the guest's write landed in the desktop's own overlay, not in the golden image
    m = subprocess.run(["qemu-img", "map", "-U", "--output=json", d["disk"]], capture_output=True, text=True, check=True)
    assert any(e["data"] and e["depth"] == 0 for e in json.loads(m.stdout))
    h = {"Authorization": f"Bearer {live_server.admin_token}"}
    r = httpx.post(f"{live_server.url}/api/v1/desktops/{d['id']}/session", json={"event": "logon", "user": "dora"}, headers=h)
    assert r.status_code == 200 and r.json()["state"] == "in_use"
    r = httpx.post(f"{live_server.url}/api/v1/desktops/{d['id']}/session", json={"event": "logoff"}, headers=h)
    assert r.status_code == 200 and r.json()["state"] == "logged_off"
    eng.reconcile("p", wait=True)  # grace 0: reset now
    after = allocation.show_desktop(dctx, d["id"])
    assert after["state"] == "ready" and after["user"] is None and after["ip"] == d["ip"]
    second = wait_serial(dctx, d["name"], r"NETSLATE-SCRATCH-WRITTEN=\S+")
    assert "NETSLATE-SCRATCH-ABSENT" in second and "NETSLATE-SCRATCH-PRESENT" not in second
    # a new golden version rolls through the unclaimed desktop (raw input converted to qcow2)
    g2 = golden.import_disk(dctx, "tiny", desktop_guest["v2"], "test", kernel=desktop_guest["kernel"],
                            initrd=desktop_guest["initrd"], cmdline=golden.resolve(dctx, "tiny", 1).cmdline)
    assert g2["version"] == 2 and g2["path"].endswith("/tiny/2.qcow2")
    assert golden.qemu_img_info(__import__("pathlib").Path(g2["path"]))["format"] == "qcow2"
    eng.reconcile("p", wait=True)
    rolled = allocation.show_desktop(dctx, d["id"])
    assert rolled["golden_version"] == 2
    info = golden.qemu_img_info(__import__("pathlib").Path(rolled["disk"]))
    assert info["backing-filename"] == g2["path"]
    invariants(dctx)


def test_concurrent_requests_get_distinct_addresses(dctx):
    mkpool(dctx, size=0, spare=0, max_=4, ip="10.77.1.1-10.77.1.4")
    results, errors = [], []

    def go(user):
        try:
            results.append(allocation.request_desktop(dctx, "p", user))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(f"u{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len({r["ip"] for r in results}) == 4 and len({r["id"] for r in results}) == 4
    # the pool is full now: a clear error, nothing half-made
    try:
        allocation.request_desktop(dctx, "p", "u9")
        raise AssertionError("a fifth request should fail")
    except Conflict as exc:
        assert "full" in str(exc)
    invariants(dctx)


def test_address_allocator_unique_under_concurrency_and_exhaustion(ctx):
    # many threads race for 8 addresses through the real database: the unique constraint decides
    got, errors = [], []

    def alloc(i):
        try:
            got.append(addresses.allocate(ctx.db.session, "q", "10.9.0.1", "10.9.0.8", None, f"52:54:00:00:00:{i:02x}", f"h{i}"))
        except Conflict as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=alloc, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == [f"10.9.0.{i}" for i in range(1, 9)]
    assert len(errors) == 2 and all("exhausted" in e for e in errors)


def test_killed_mid_provisioning_then_restart_leaves_no_orphans(dctx, data_dir):
    mkpool(dctx, size=4, spare=0, max_=4)
    env = dict(os.environ, NETSLATE_DATA_DIR=str(data_dir))
    proc = subprocess.Popen([sys.executable, "-m", "netslate", "pool", "reconcile", "p", "--json"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    killed_with = None
    while time.time() < deadline and proc.poll() is None:
        with dctx.db.session() as s:
            rows = list(s.scalars(select(Desktop)))
        if len(rows) >= 2:  # the second desktop is on its way: kill now
            killed_with = len(rows)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(30)
    assert killed_with is not None, "reconcile finished before it could be killed"
    with dctx.db.session() as s:
        states = [d.state for d in s.scalars(select(Desktop))]
    assert states  # something was half-way
    Actuator(dctx).reconcile("p", wait=True)  # the "restart"
    ds = invariants(dctx)
    assert len(ds) == 4 and {d.state for d in ds} == {"ready"}
    # an orphan domain, disk directory and address that no row owns are cleaned up too
    prefix = f"ns-{installation_id(dctx)}-"
    (dctx.data_dir / "desktops" / "disks" / f"{prefix}p-99").mkdir()
    with dctx.db.session() as s:
        s.add(DesktopAddress(ip="10.77.0.99", pool_name="p", desktop_id=None, mac="52:54:00:99:99:99", hostname="x"))
    Actuator(dctx).reconcile("p")
    invariants(dctx)


def test_unreachable_host_marks_desktops_unknown_not_deleted(dctx):
    mkpool(dctx, size=1, spare=0, max_=1)
    eng = Actuator(dctx)
    eng.reconcile("p", wait=True)
    d = allocation.request_desktop(dctx, "p", "erin")
    with dctx.db.session() as s:
        s.execute(update(DesktopHost).values(uri="qemu+tcp://127.0.0.1:1/system"))
    eng.reconcile("p")
    gone = allocation.show_desktop(dctx, d["id"])
    assert gone["state"] == "unknown" and gone["prior_state"] == "assigned" and gone["user"] == "erin"
    with dctx.db.session() as s:
        assert s.scalar(select(DesktopHost)).reachable is False
    with dctx.db.session() as s:
        s.execute(update(DesktopHost).values(uri="qemu:///system"))
    eng.reconcile("p", wait=True)
    back = allocation.show_desktop(dctx, d["id"])
    assert back["state"] == "assigned" and back["user"] == "erin" and back["id"] == d["id"]
    invariants(dctx)


def test_server_loop_fills_pool_and_console_events_drive_logon_logoff(dctx, data_dir):
    """`netslate serve`'s background loop, libvirt graphics events, the HTTP API and the remote CLI."""
    from nstest import run_cli, start_server
    from desktops_fixtures import vnc_session

    mkpool(dctx, size=1, spare=1, max_=3)
    srv = start_server(dctx, {"desktops_reconcile": True, "desktops_reconcile_interval": 1})
    try:
        def wait_for(pred, what, timeout=90):
            deadline = time.time() + timeout
            while time.time() < deadline:
                got = pred()
                if got:
                    return got
                time.sleep(0.3)
            raise AssertionError(f"timed out waiting for {what}")

        wait_for(lambda: [d["state"] for d in allocation.list_desktops(dctx, "p")] == ["ready"], "pool fill")  # max(size 1, 0 claimed + spare 1)
        r = run_cli("--server", srv.url, "--token", srv.admin_token, "desktop", "request", "p", "--user", "kim", "--json")
        assert r.code == 0, r.stderr
        d = r.json()
        assert d["user"] == "kim" and d["state"] == "assigned"
        listed = httpx.get(f"{srv.url}/api/v1/desktops", params={"user": "kim"}).json()
        assert [x["id"] for x in listed] == [d["id"]]
        # the loop refills the spare: 1 claimed + 1 spare
        wait_for(lambda: len(allocation.list_desktops(dctx, "p")) == 2 and
                 len([x for x in allocation.list_desktops(dctx, "p") if x["state"] == "ready"]) == 1, "spare refill")
        admin = {"Authorization": f"Bearer {srv.admin_token}"}
        t = httpx.post(f"{srv.url}/api/v1/desktops/{d['id']}/ticket", json={"type": "vnc", "ttl": 60}, headers=admin).json()
        sock = vnc_session(t["host"], t["port"], t["password"])
        assert sock is not None
        wait_for(lambda: allocation.show_desktop(dctx, d["id"])["state"] == "in_use", "console logon event")
        sock.close()
        # disconnect → logoff (the session came from the console) → grace 0 → reset by the loop
        wait_for(lambda: (lambda x: x["state"] == "ready" and x["user"] is None)(allocation.show_desktop(dctx, d["id"])),
                 "console logoff and reset")
    finally:
        srv.stop()


def test_libvirtd_restart_keeps_desktops(dctx):
    """libvirtd restarts under netslate: transient domains keep running, the next pass reconnects and changes nothing."""
    from desktops_fixtures import ensure_libvirtd

    mkpool(dctx, size=2, spare=0, max_=2)
    eng = Actuator(dctx)
    eng.reconcile("p", wait=True)
    before = {d.name: d.state for d in invariants(dctx)}
    pid = int(open("/run/libvirtd.pid").read().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
            time.sleep(0.2)
        except ProcessLookupError:
            break
    # while it is down: the host is unreachable, the desktops become unknown, nothing is deleted
    eng.reconcile("p")
    assert {d["state"] for d in allocation.list_desktops(dctx, "p")} == {"unknown"}
    ensure_libvirtd()
    result = eng.reconcile("p", wait=True)
    assert all("host local is back" in a for a in result["actions"]), result
    after = {d.name: d.state for d in invariants(dctx)}
    assert after == before
