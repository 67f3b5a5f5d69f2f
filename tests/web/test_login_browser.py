"""Refused logins in a real browser (headless Chromium) against a real server and the test slapd:
a locked or expired directory account, and wrong passwords up to the throttle's limit.

Each test has its own data directory and server, so the failure counts (per user name and per
client address, in the database) of one test never reach another.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from selenium.webdriver.common.by import By

from netslate.composition import Parts
from netslate.context import Context
from netslate.identity import throttle
from netslate.server.auth import SESSION_COOKIE
from netslate.services import Services
from nstest import start_server
from webdirectory import ADMIN, use_test_directory
from webworld import login, wait_for

pytestmark = pytest.mark.timeout(180)  # slapd, server and browser are all local: minutes mean a hang


@pytest.fixture
def world(tmp_path, ldap_world):
    ctx = Context(tmp_path / "data").init()
    use_test_directory(Services.local(Parts(ctx), ADMIN), ldap_world)
    server = start_server(ctx)
    yield {"url": server.url, "ldap": ldap_world}
    server.stop()


def refusal_shown(page) -> str:
    """The login page, answered again with its error: the message, after checking the page around it."""
    assert urlsplit(page.current_url).path == "/login", page.current_url
    errors = page.find_elements(By.CSS_SELECTOR, "p.error")
    assert len(errors) == 1 and errors[0].is_displayed(), [e.text for e in errors]
    wait_for(page, "form[action='/login'] #password")  # the form is there again, for another try
    assert page.find_element(By.ID, "password").get_attribute("value") == ""  # the password is not sent back
    source = page.page_source
    assert "Traceback" not in source and "Internal Server Error" not in source
    assert SESSION_COOKIE not in {c["name"] for c in page.get_cookies()}
    return errors[0].text


def still_logged_out(page, url: str) -> None:
    page.get(url + "/")
    wait_for(page, "form[action='/login']")
    assert urlsplit(page.current_url).path == "/login"
    assert SESSION_COOKIE not in {c["name"] for c in page.get_cookies()}


def test_locked_and_expired_directory_users_cannot_log_in(world, page):
    ldap = world["ldap"]
    login(page, world["url"], "dave", ldap.passwords["dave"])
    assert refusal_shown(page) == "the account dave is locked in directory corp (pwdAccountLockedTime)"
    still_logged_out(page, world["url"])
    login(page, world["url"], "erin", ldap.passwords["erin"])
    assert refusal_shown(page) == "the account erin expired on 1970-01-02 in directory corp (shadowExpire)"
    still_logged_out(page, world["url"])
    # the same browser, the same server: a user in good standing gets in (the refusals were about the accounts)
    login(page, world["url"], "vera", ldap.passwords["vera"])
    assert urlsplit(page.current_url).path == "/"
    assert SESSION_COOKIE in {c["name"] for c in page.get_cookies()}


def test_repeated_wrong_passwords_are_throttled_even_the_right_one(world, page):
    ldap = world["ldap"]
    assert throttle.PER_USER < throttle.PER_ADDRESS  # the per-user limit is the one reached here
    for attempt in range(throttle.PER_USER):
        login(page, world["url"], "alice", f"not her password {attempt}")
        assert refusal_shown(page) == "wrong user name or password", attempt
    login(page, world["url"], "alice", "not her password again")
    message = refusal_shown(page)
    assert message.startswith("too many failed logins for alice: try again in ") and message.endswith(" s"), message
    assert 1 <= int(message.rsplit(" ", 2)[1]) <= throttle.WINDOW_SECONDS, message
    # the right password too, while throttled
    login(page, world["url"], "alice", ldap.passwords["alice"])
    assert refusal_shown(page).startswith("too many failed logins for alice: try again in ")
    still_logged_out(page, world["url"])
    # the limit is per user name: another user still gets in from this browser
    login(page, world["url"], "ada", ldap.passwords["ada"])
    assert urlsplit(page.current_url).path == "/"
