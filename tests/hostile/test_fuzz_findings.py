"""Regression tests for what the fuzz run (test_fuzz.py) found, one request each, against a real
server on loopback. Each one answered 500 before its fix."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

from netslate.context import Context
from nstest import start_server

BAD_BASE_URLS = ["B*\u00bd\u0081\u00b5\U0007e19b\u00dc", "http://x/\nchain http://127.0.0.1:9/evil", "ftp://x", "http://[::1"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    ctx = Context(tmp_path_factory.mktemp("findings") / "data").init()
    s = start_server(ctx)
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.parametrize("base", BAD_BASE_URLS)
def test_a_bad_base_url_is_400_on_pxelinux_and_explain(srv, base):
    """Fuzz: GET /api/v1/boot/pxelinux?base_url=B*½... answered 500 (ipxe.UnsafeValue escaped)."""
    for path in ("/api/v1/boot/pxelinux", "/api/v1/boot/explain/52:54:00:12:34:56"):
        r = httpx.get(f"{srv.url}{path}?base_url={quote(base, safe='')}", timeout=30)
        assert r.status_code == 400, (path, base, r.status_code, r.text[:300])
        assert "base_url" in r.json()["detail"]


def test_a_good_base_url_is_used(srv):
    r = httpx.get(f"{srv.url}/api/v1/boot/explain/52:54:00:12:34:56", params={"base_url": "http://10.0.0.1:8080/"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["script"].startswith("#!ipxe")
