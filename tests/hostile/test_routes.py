"""Smaller findings of issue 11 (#11) about routes, against a real server on loopback:
- the browser-console route checks who asks before it tells anything about the server's state;
- the OpenAPI document lists the error answers (400/401/403/404/409) of every operation, the
  hand-written routes too, and `/chunks/pack` documents the octets it returns.
"""

from __future__ import annotations

import httpx
import pytest

from netslate.context import Context
from nstest import start_server

ERRORS = {"400", "401", "403", "404", "409"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    ctx = Context(tmp_path_factory.mktemp("routes") / "data").init()
    s = start_server(ctx)  # no NETSLATE_CONSOLE_PORT: browser consoles are off
    try:
        yield s
    finally:
        s.stop()


def test_browser_console_checks_authentication_before_anything_else(srv):
    url = f"{srv.url}/api/v1/desktops/nosuch/browser-console"
    r = httpx.post(url, json={"ttl": 60}, timeout=30)
    assert r.status_code == 401, (r.status_code, r.text)  # was 409 "browser consoles are off"
    assert r.headers.get("www-authenticate") == "Bearer"
    r = httpx.post(url, json={"ttl": 60}, headers={"Authorization": "Bearer nst_not-a-token"}, timeout=30)
    assert r.status_code == 401, (r.status_code, r.text)
    # an admin is told the truth: there is no such desktop
    r = httpx.post(url, json={"ttl": 60}, headers={"Authorization": f"Bearer {srv.admin_token}"}, timeout=30)
    assert r.status_code == 404, (r.status_code, r.text)


def test_openapi_lists_error_answers_of_every_operation(srv):
    doc = httpx.get(f"{srv.url}/api/v1/openapi.json", timeout=30).json()
    missing = [f"{method.upper()} {path}: {sorted(ERRORS - set(op['responses']))}"
               for path, ops in doc["paths"].items() for method, op in ops.items() if not ERRORS <= set(op["responses"])]
    assert not missing, "operations without their error answers:\n" + "\n".join(missing)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for code in ERRORS:
                content = op["responses"][code].get("content", {})
                assert "application/json" in content, (method, path, code)


def test_chunk_pack_documents_the_octets_it_returns(srv):
    doc = httpx.get(f"{srv.url}/api/v1/openapi.json", timeout=30).json()
    ok = doc["paths"]["/chunks/pack"]["post"]["responses"]["200"]
    assert set(ok["content"]) == {"application/octet-stream"}, ok
    r = httpx.post(f"{srv.url}/chunks/pack", json={"ids": []}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream", (r.status_code, r.headers)
