"""The frame of the web console: static assets (versioned, cached, no CDN), the login page in a
real browser with htmx loaded under the CSP, redirects to /login, and `next=` kept local."""

import re

import httpx
import pytest

from netslate.web.common import safe_next
from webworld import wait_for, wait_until


@pytest.fixture
def server(live_server):
    return live_server


def test_assets_are_versioned_and_cached(server):
    html = httpx.get(server.url + "/login").text
    urls = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert any("/static/vendor/htmx.org@" in u for u in urls), urls
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html), "no external URL on a page"
    for u in urls:
        r = httpx.get(server.url + u)
        assert r.status_code == 200, u
        assert "immutable" in r.headers["cache-control"] and "max-age=31536000" in r.headers["cache-control"]
    # a version that is not installed is not served; nothing outside the whitelist either
    assert httpx.get(server.url + "/static/vendor/htmx.org@0.0.1/htmx.min.js").status_code == 404
    assert httpx.get(server.url + "/static/vendor/htmx.org@2.0.4/package.json").status_code == 404
    assert httpx.get(server.url + "/static/abc/..%2F__init__.py").status_code == 404


def test_pages_need_a_login(server):
    r = httpx.get(server.url + "/machines?state=held", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/machines%3Fstate%3Dheld"
    # a bearer token is a caller too (the API's admin token)
    r = httpx.get(server.url + "/", headers={"Authorization": f"Bearer {server.admin_token}"})
    assert r.status_code == 200 and "Dashboard" in r.text


@pytest.mark.parametrize("value, expected", [
    ("/machines?state=held", "/machines?state=held"), ("/", "/"), ("", "/"), (None, "/"),
    ("https://evil.example/", "/"), ("//evil.example/", "/"), ("/\\evil.example", "/"), ("\\\\evil", "/"),
    ("javascript:alert(1)", "/"), ("/ok\r\nSet-Cookie: x=1", "/"), ("evil.example", "/"), ("/%2F%2Fevil", "/%2F%2Fevil"),
])
def test_next_stays_local(value, expected):
    assert safe_next(value) == expected


def test_login_page_in_the_browser(server, page):
    page.get(server.url + "/")
    wait_for(page, "form[action='/login']")
    assert page.current_url.endswith("/login")
    assert page.find_element("css selector", "label[for=username]").text == "User name"
    wait_until(lambda: page.execute_script("return typeof window.htmx !== 'undefined'"), what="htmx loaded")
    problems = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
    assert problems == [], problems  # no CSP violation, no missing asset
