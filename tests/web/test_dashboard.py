"""The admin dashboard in a real browser (headless Chromium) against a real server and a real slapd.

One world for the module: a data directory with 120 machines (some hostile text among their
facts, reports and configuration), the test slapd as the login directory, and its groups mapped to
roles (netslate-admins → admin, netslate-operators → operator, netslate-viewers → viewer).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from netslate.composition import Parts
from netslate.context import Context
from netslate.fleet import reports
from netslate.inventory import discover_machine
from netslate.services import Services
from netslate.services.machines import MachineCreate
from nstest import start_server
from webdirectory import ADMIN, use_test_directory
from webworld import alert_text, login, on_loopback, wait_for, wait_until

SCRIPT = "<script>alert('xss')</script>"


@pytest.fixture(scope="module")
def world(tmp_path_factory, ldap_world):
    ctx = Context(tmp_path_factory.mktemp("web") / "data").init()
    sv = Services.local(Parts(ctx), ADMIN)
    use_test_directory(sv, ldap_world)
    for i in range(120):
        sv.machines.add(MachineCreate(macs=[f"52:54:00:00:01:{i:02x}"], name=f"pc{i:03d}", labels={"room": f"r{i % 4}"},
                                      group=f"/site-{i % 2}/cluster-1/pool-{i % 3}"))
    held = [discover_machine(ctx, {"mac": f"52:54:00:00:02:{i:02x}", "product": SCRIPT if i == 0 else "Standard PC"}, "10.0.0.9")
            for i in range(3)]
    reports.ingest(ctx, "pc000", {"phase": "configured", "image": "desk", "version": 3, "image_source": "cache",
                                  "config_source": "cache", "generation": 1, "problems": [SCRIPT]}, None, "127.0.0.1")
    sv.config.set_value("/site-0", "extra.motd", SCRIPT)
    sv.config.publish(f"first {SCRIPT}")
    sv.config.set_value("/site-1", "timezone", "Europe/Paris")  # pending: something to publish
    server = start_server(ctx)
    yield {"url": server.url, "ctx": ctx, "sv": sv, "held": held, "ldap": ldap_world, "server": server}
    server.stop()


def session_of(browser) -> dict[str, str]:
    return {c["name"]: c["value"] for c in browser.get_cookies()}


def test_admin_logs_in_through_ldap_and_sees_the_fleet(world, page):
    login(page, world["url"], "ada", world["ldap"].passwords["ada"])
    assert urlsplit(page.current_url).path == "/"
    fleet = wait_for(page, "#fleet")
    assert page.find_element(By.CSS_SELECTOR, "[data-state=approved] .count").text == "119"
    assert page.find_element(By.CSS_SELECTOR, "[data-state=configured] .count").text == "1"  # pc000 reported
    assert page.find_element(By.CSS_SELECTOR, "[data-state=discovered] .count").text == "3"
    assert page.find_element(By.ID, "image-from-cache").text == "1" and page.find_element(By.ID, "config-from-cache").text == "1"
    assert "signing key" in page.find_element(By.ID, "health").text
    assert "ada" in page.find_element(By.CSS_SELECTOR, ".user").text and "admin" in page.find_element(By.CSS_SELECTOR, ".user").text
    assert fleet.is_displayed()
    # live: approving a held machine elsewhere shows up without a reload
    page.execute_script("window.__stillHere = true")
    world["sv"].machines.approve(f"id:{world['held'][2]}")
    wait_until(lambda: page.find_element(By.CSS_SELECTOR, "[data-state=approved] .count").text == "120", timeout=20,
               what="the fleet band to refresh")
    assert page.execute_script("return window.__stillHere === true")  # same page: no reload
    assert alert_text(page) is None


def test_end_user_goes_to_the_portal(world, page):
    login(page, world["url"], "alice", world["ldap"].passwords["alice"])
    assert urlsplit(page.current_url).path == "/portal"
    assert urlsplit(httpx.get(world["url"] + "/machines", cookies=session_of(page), follow_redirects=False).headers["location"]).path == "/portal"


def test_viewer_cannot_publish(world, page):
    login(page, world["url"], "vera", world["ldap"].passwords["vera"])
    page.get(world["url"] + "/config")
    wait_for(page, "#config-diff")  # there is something to publish
    assert page.find_elements(By.ID, "publish") == [] and page.find_elements(By.ID, "publish-form") == []
    token = page.find_element(By.CSS_SELECTOR, "meta[name=csrf-token]").get_attribute("content")
    before = world["sv"].config.status().latest
    r = httpx.post(world["url"] + "/config/publish", cookies=session_of(page), data={"csrf_token": token, "message": "sneaky"},
                   follow_redirects=False)
    assert r.status_code == 403 and "operator role" in r.text, (r.status_code, r.headers, r.text[:300])
    # the API says the same with the same session
    r = httpx.post(world["url"] + "/api/v1/config/publish", cookies=session_of(page), headers={"X-CSRF-Token": token},
                   json={"message": "sneaky"})
    assert r.status_code == 403
    assert world["sv"].config.status().latest == before
    # and no bulk-action checkboxes on the machine list
    page.get(world["url"] + "/machines")
    wait_for(page, "#machines")
    assert page.find_elements(By.CSS_SELECTOR, "input[name=id]") == []


def test_script_fields_are_shown_escaped(world, page):
    login(page, world["url"], "ada", world["ldap"].passwords["ada"])
    held = world["held"][0]
    page.get(f"{world['url']}/machines/id:{held}")  # discovery facts: product
    assert SCRIPT in wait_for(page, "#identity").text
    assert alert_text(page) is None
    page.get(world["url"] + "/machines/pc000")  # agent report problems, config value with its node
    assert SCRIPT in wait_for(page, "#problems").text
    assert alert_text(page) is None
    page.get(world["url"] + "/machines/pc002")
    assert SCRIPT in wait_for(page, "#config-values").text
    page.get(world["url"] + "/config")  # the publish message (a note)
    assert f"first {SCRIPT}" in wait_for(page, "#history").text
    page.get(world["url"] + "/config/node?path=/site-0")
    assert SCRIPT in wait_for(page, "#node-document").text
    # a label or a name holding <script> is refused by the service; the refusal is shown as text
    page.get(world["url"] + "/machines/pc001")
    field = wait_for(page, "#set-label")
    field.send_keys(f"note={SCRIPT}")
    field.submit()
    message = wait_for(page, "main p").text
    assert "invalid label value" in message and "script" in message
    assert alert_text(page) is None
    assert world["sv"].machines.show("pc001").labels == {"room": "r1"}
    assert "<script>" not in page.page_source.replace("&lt;script&gt;", "").split("<body", 1)[1].replace('<script src="', "")


def test_open_redirect_is_refused(world, page):
    for hostile in ("https://evil.example/", "//evil.example/", "/\\evil.example/", "https:/evil.example"):
        r = httpx.post(world["url"] + "/login", data={"username": "ada", "password": world["ldap"].passwords["ada"], "next": hostile},
                       follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/", (hostile, r.headers.get("location"))
    # in the browser: the hidden field carries the safe value, and the login ends on this server
    page.get(world["url"] + "/login?next=https://evil.example/")
    assert wait_for(page, "input[name=next]").get_attribute("value") == "/"
    login(page, world["url"], "ada", world["ldap"].passwords["ada"], next_path="https://evil.example/")
    assert on_loopback(page) and urlsplit(page.current_url).path == "/"
    # a local next= is kept
    page.delete_all_cookies()
    login(page, world["url"], "ada", world["ldap"].passwords["ada"], next_path="/audit?action=auth.")
    assert on_loopback(page) and urlsplit(page.current_url).path == "/audit"


def test_post_without_the_csrf_token_is_refused(world, page):
    login(page, world["url"], "oscar", world["ldap"].passwords["oscar"])
    held = world["held"][1]
    page.get(world["url"] + "/machines")
    wait_for(page, "#machines")
    # a POST from a page script that leaves the token out
    status = page.execute_script(
        "return fetch(arguments[0], {method: 'POST', credentials: 'same-origin', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: ''}).then(r => r.status)",
        f"/machines/id:{held}/approve")
    assert status == 403
    status = page.execute_script(
        "return fetch(arguments[0], {method: 'POST', credentials: 'same-origin', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'csrf_token=wrong'}).then(r => r.status)",
        f"/machines/id:{held}/approve")
    assert status == 403
    assert world["sv"].machines.show(f"id:{held}").approved is False
    # the page's own form carries it
    page.get(f"{world['url']}/machines/id:{held}")
    wait_for(page, "#approve").click()
    wait_until(lambda: "done=approved" in page.current_url, what="the approval")
    assert world["sv"].machines.show(f"id:{held}").approved is True


def test_pagination_and_filters_round_trip_through_the_url(world, page):
    login(page, world["url"], "vera", world["ldap"].passwords["vera"])
    page.get(world["url"] + "/machines")
    wait_for(page, "#f-site").send_keys("site-1")
    page.find_element(By.ID, "f-label").send_keys("room=r1")
    Select(page.find_element(By.ID, "f-sort")).select_by_value("-name")
    Select(page.find_element(By.ID, "f-limit")).select_by_visible_text("25")
    page.find_element(By.ID, "f-label").submit()
    wait_until(lambda: "site=site-1" in page.current_url, what="the filtered URL")
    query = parse_qs(urlsplit(page.current_url).query)
    assert query["site"] == ["site-1"] and query["label"] == ["room=r1"] and query["sort"] == ["-name"] and query["limit"] == ["25"]
    first = [r.text for r in page.find_elements(By.CSS_SELECTOR, "#machines tbody td:nth-child(2) a")]
    expected = [f"pc{i:03d}" for i in sorted((i for i in range(120) if i % 2 == 1 and i % 4 == 1), reverse=True)]
    assert first == expected[:25] and "of 30" in page.find_element(By.CSS_SELECTOR, ".pager").text
    page.find_element(By.CSS_SELECTOR, "a[rel=next]").click()
    wait_until(lambda: "offset=25" in page.current_url, what="page 2")
    assert parse_qs(urlsplit(page.current_url).query)["site"] == ["site-1"]
    second = [r.text for r in page.find_elements(By.CSS_SELECTOR, "#machines tbody td:nth-child(2) a")]
    assert second == expected[25:]
    # the URL alone gives the same page (bookmarks, shared links)
    url = page.current_url
    page.get(world["url"] + "/")
    page.get(url)
    assert [r.text for r in page.find_elements(By.CSS_SELECTOR, "#machines tbody td:nth-child(2) a")] == second
    assert page.find_element(By.ID, "f-site").get_attribute("value") == "site-1"
    # sorting by a column header keeps the filters
    page.find_element(By.LINK_TEXT, "Id").click()
    wait_until(lambda: "sort=id" in page.current_url or "sort=" not in page.current_url, what="sort by id")
    assert "site=site-1" in page.current_url


def test_bulk_action_reports_each_machine(world, page):
    login(page, world["url"], "oscar", world["ldap"].passwords["oscar"])
    page.get(world["url"] + "/machines?folder=/site-0/cluster-1/pool-0&sort=id&limit=25")
    boxes = page.find_elements(By.CSS_SELECTOR, "input[name=id]")[:3]
    for b in boxes:
        b.click()
    Select(page.find_element(By.ID, "bulk-action")).select_by_value("pin")
    page.find_element(By.ID, "bulk-image").send_keys("nosuchimage@1")
    page.find_element(By.CSS_SELECTOR, "#bulk button[type=submit]").click()
    page.switch_to.alert.accept()  # the confirmation
    items = wait_for(page, "#results").find_elements(By.TAG_NAME, "li")
    assert len(items) == 3 and all("bad" in i.get_attribute("class") for i in items)
    page.back()
    page.get(world["url"] + "/machines?folder=/site-0/cluster-1/pool-0&sort=id&limit=25")
    for b in page.find_elements(By.CSS_SELECTOR, "input[name=id]")[:2]:
        b.click()
    Select(page.find_element(By.ID, "bulk-action")).select_by_value("label")
    page.find_element(By.ID, "bulk-label").send_keys("batch=one")
    page.find_element(By.CSS_SELECTOR, "#bulk button[type=submit]").click()
    page.switch_to.alert.accept()
    items = wait_for(page, "#results").find_elements(By.TAG_NAME, "li")
    assert [i.get_attribute("class") for i in items] == ["ok", "ok"]
    assert world["sv"].machines.search(label="batch=one").total == 2
