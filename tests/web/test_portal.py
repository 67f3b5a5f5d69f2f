"""The end-user portal in a real browser: headless Chromium, a real server, a real slapd, and ONE real
desktop VM (TCG) shared by the whole module.

The world: pool lab-a (SPICE, max 1, the one VM, reset and release allowed) for group lab-a-users
(alice); lab-b (max 2, no desktop made) for the nested group lab-b-users (bob) and lab-c (max 3)
for the user bob; carol is entitled to lab-a and lab-c by name; nina is in no group. The hypervisor's
console address is 127.0.0.2 while the server is 127.0.0.1, so "no hypervisor address in the .vv"
means something.
"""

from __future__ import annotations

import configparser
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "desktops"))  # the desktop tests' helpers

from desktops_fixtures import URI, cleanup, ensure_libvirtd, traversable  # noqa: E402
from netslate.context import Context  # noqa: E402
from netslate.desktops import golden, hosts, pools, tinyguest  # noqa: E402
from netslate.desktops.actuator import Actuator  # noqa: E402
from netslate.desktops.models import Desktop  # noqa: E402
from netslate.identity import directories, entitlements  # noqa: E402
from netslate.store.models import AuditEntry  # noqa: E402
from nstest import free_port, start_server  # noqa: E402
from test_spice_proxy import _connect, spice_ticket_accepted  # noqa: E402
from webworld import login, wait_for, wait_until  # noqa: E402

HYPERVISOR = "127.0.0.2"
# kernel messages on the VGA console too, so the browser console has something to show
CMDLINE = "console=tty0 console=ttyS0 loglevel=4 panic=-1 rdinit=/init"


@pytest.fixture(scope="module")
def world(tmp_path_factory, ldap_world):
    ensure_libvirtd()
    root = tmp_path_factory.mktemp("portal")
    traversable(root)
    guest = root / "guest"
    guest.mkdir()
    kernel = guest / "vmlinuz"
    shutil.copy(tinyguest.kernel_path(), kernel)
    initrd = tinyguest.build_initramfs(guest / "initrd.gz")
    disk = tinyguest.build_golden(guest / "golden.qcow2", "v1")
    data = root / "data"
    data.mkdir()
    traversable(data)
    ctx = Context(data).init()
    hosts.add_host(ctx, "local", URI, "test", accel="tcg", max_starting=4, console_address=HYPERVISOR)
    golden.import_disk(ctx, "tiny", disk, "test", kernel=kernel, initrd=initrd, cmdline=CMDLINE)
    pools.create_pool(ctx, "lab-a", "tiny", 1, 0, 1, 1, 128, "spice", 0, False, "none", "floating",
                      "10.78.1.1-10.78.1.9", "*", "test", allow_reset=True, allow_release=True)
    pools.create_pool(ctx, "lab-b", "tiny", 0, 0, 2, 1, 128, "spice", 0, False, "none", "floating",
                      "10.78.2.1-10.78.2.9", "*", "test")
    pools.create_pool(ctx, "lab-c", "tiny", 0, 0, 3, 1, 128, "vnc", 0, False, "none", "floating",
                      "10.78.3.1-10.78.3.9", "*", "test")
    directories.add_directory(ctx, "corp", "ldap", ldap_world.uri, ldap_world.base_dn, ldap_world.bind_dn,
                              ldap_world.bind_password, ldap_world.ca_pem, actor="local:test")
    for kind, subject, pool in (("group", "lab-a-users", "lab-a"), ("group", "lab-b-users", "lab-b"),
                                ("user", "bob", "lab-c"), ("user", "carol", "lab-a"), ("user", "carol", "lab-c")):
        entitlements.add_entitlement(ctx, kind, subject, "pool", pool, actor="local:test")
    Actuator(ctx).reconcile("lab-a", wait=True, timeout=300)
    srv = start_server(ctx, {"desktops_console_port": free_port(), "desktops_console_listen": "127.0.0.1",
                             "desktops_spice_proxy_port": 0, "desktops_spice_proxy_listen": "127.0.0.1"})
    srv.ldap = ldap_world
    srv.downloads = root / "downloads"
    srv.downloads.mkdir()
    try:
        yield srv
    finally:
        srv.stop()
        cleanup(ctx)


@pytest.fixture(autouse=True)
def _quiet_browser_log(browser):
    """The browser is shared: what noVNC or a refused request logged here stays out of later tests."""
    yield
    browser.get_log("browser")


def _login(page, world, user):
    login(page, world.url, user, world.ldap.passwords[user])


def _lab_a(world) -> Desktop:
    with world.ctx.db.session() as s:
        d = s.scalar(select(Desktop).where(Desktop.pool_name == "lab-a", Desktop.state != "destroying"))
        s.expunge(d)
        return d


def _resets(world) -> int:
    with world.ctx.db.session() as s:
        return len(list(s.scalars(select(AuditEntry).where(AuditEntry.action == "desktop.reset"))))


def _canvas_shows_the_desktop(page) -> None:
    """noVNC connected to the real VM and its canvas holds a real picture (not one flat colour)."""
    try:
        wait_until(lambda: "vnc_lite.html" in page.current_url, timeout=30, what="the noVNC page")
    except AssertionError:
        raise AssertionError(f"not on the noVNC page: {page.current_url} {page.get_log('browser')} "
                             f"{page.find_element('css selector', 'main').text!r}") from None
    wait_until(lambda: "Connected" in (page.execute_script(
        "var s = document.getElementById('status'); return s ? s.textContent : ''") or ""), timeout=60,
        what="noVNC connected")
    colours = """
        var c = document.querySelector('#screen canvas'); if (!c || !c.width) return 0;
        var d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, seen = {};
        for (var i = 0; i < d.length; i += 4 * 97) seen[d[i] + ',' + d[i+1] + ',' + d[i+2]] = 1;
        return Object.keys(seen).length;"""
    wait_until(lambda: page.execute_script(colours) > 1, timeout=120, what="frames of the desktop on the canvas")


def test_user_in_no_group_sees_nothing(world, page):
    _login(page, world, "nina")
    wait_for(page, "#no-desktops")
    assert page.current_url == world.url + "/portal"
    assert "You have no desktops" in page.page_source and not page.find_elements("css selector", ".pool-card")


def test_end_user_sees_only_entitled_pools_at_phone_width(world, page):
    _login(page, world, "bob")  # lab-b through a nested group, lab-c by name: two pools, not straight in
    cards = {c.get_attribute("data-pool"): c.text for c in page.find_elements("css selector", ".pool-card")}
    assert sorted(cards) == ["lab-b", "lab-c"]
    assert "2 of 2 free" in cards["lab-b"] and "3 of 3 free" in cards["lab-c"]
    assert "Open in Remote Viewer" in cards["lab-b"] and "Open in Remote Viewer" not in cards["lab-c"]  # VNC pool
    assert "Reset" not in cards["lab-b"]  # not allowed there, and bob has no desktop
    # the service refuses a pool bob is not entitled to, whatever the page shows
    web = httpx.Client(base_url=world.url, cookies={"netslate_session": page.get_cookie("netslate_session")["value"]})
    r = web.post("/api/v1/my/pools/lab-a/desktop", headers={"X-CSRF-Token": page.execute_script(
        "return document.querySelector('meta[name=csrf-token]').content")})
    assert r.status_code == 403 and "lab-a" in r.json()["detail"]
    # usable on a phone: the viewport meta, and nothing wider than the screen
    page.set_window_size(390, 844)
    try:
        page.get(world.url + "/portal")
        wait_for(page, ".pool-card")
        assert page.find_element("css selector", "meta[name=viewport]").get_attribute("content").startswith("width=device-width")
        assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        widths = page.execute_script("return [...document.querySelectorAll('.pool-card')].map(c => c.getBoundingClientRect().width)")
        assert all(w <= 390 for w in widths)
    finally:
        page.set_window_size(1280, 900)


def test_single_entitlement_goes_straight_in_and_connect_shows_the_desktop(world, page):
    _login(page, world, "alice")  # lab-a only: connected straight away
    _canvas_shows_the_desktop(page)
    assert _lab_a(world).user == "alice"
    # Back from the console: the portal list, not connected again; Connect opens the console
    page.get(world.url + "/portal?stay=1")
    card = wait_for(page, "#pool-lab-a")
    assert "0 of 1 free" in card.text and "is ready for you" in card.text or "is in use" in card.text
    card.find_element("css selector", "button.connect-btn").click()
    _canvas_shows_the_desktop(page)


def test_remote_viewer_file_points_at_the_proxy(world, page):
    _login(page, world, "alice")
    page.get(world.url + "/portal?stay=1")
    page.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(world.downloads)})
    wait_for(page, "#pool-lab-a button.vv-btn").click()
    vv_path = wait_until(lambda: next((p for p in world.downloads.glob("*.vv")), None), timeout=30, what="the .vv download")
    text = vv_path.read_text()
    assert HYPERVISOR not in text  # the hypervisor's address is nowhere in the file
    cp = configparser.ConfigParser(interpolation=None)
    cp.read_string(text)
    vv = cp["virt-viewer"]
    port = world.app.state.parts.spice_proxy.port
    assert vv["proxy"] == f"http://127.0.0.1:{port}" and vv["host"].endswith(".invalid")
    # and it works: through the proxy, QEMU's SPICE server takes the file's password
    head, s = _connect(port, f"CONNECT {vv['host']}:{vv['port']} HTTP/1.0\r\n\r\n".encode(), timeout=30)
    try:
        assert head.startswith(b"HTTP/1.1 200"), head
        assert spice_ticket_accepted(s, vv["password"]) is True
    finally:
        s.close()


def test_reset_asks_first_and_keeps_the_desktop_on_cancel(world, page):
    _login(page, world, "alice")
    page.get(world.url + "/portal?stay=1")
    before, resets = _lab_a(world), _resets(world)
    wait_for(page, "#pool-lab-a button.reset-btn").click()
    alert = wait_until(lambda: _alert(page), what="the confirmation")
    assert "lost" in alert.text and "lab-a" in alert.text
    alert.dismiss()  # cancel: nothing happens
    time.sleep(1)
    assert _resets(world) == resets and _lab_a(world).started_at == before.started_at
    page.find_element("css selector", "#pool-lab-a button.reset-btn").click()
    wait_until(lambda: _alert(page), what="the confirmation").accept()
    wait_until(lambda: "done=reset" in page.current_url, timeout=180, what="the reset")
    assert "reset to a fresh start" in page.page_source
    after = _lab_a(world)
    assert _resets(world) == resets + 1 and after.user == "alice" and after.started_at != before.started_at


def test_a_full_pool_says_so_in_plain_words(world, page):
    _login(page, world, "carol")  # lab-a (held by alice) and lab-c
    card = wait_for(page, "#pool-lab-a")
    assert "0 of 1 free" in card.text and "All 1 desktops of lab-a are in use." in card.text
    assert not card.find_elements("css selector", "button.connect-btn")
    web = httpx.Client(base_url=world.url, cookies={"netslate_session": page.get_cookie("netslate_session")["value"]})
    r = web.post("/portal/pools/lab-a/connect", data={"csrf_token": page.execute_script(
        "return document.querySelector('meta[name=csrf-token]').content")})
    assert r.status_code == 409 and "all 1 desktops of lab-a are in use" in r.text


def _alert(page):
    try:
        return page.switch_to.alert
    except Exception:
        return None
