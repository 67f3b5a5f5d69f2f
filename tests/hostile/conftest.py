"""Fixtures of the hostile tests; the helpers they share are in hostile_support.py."""

from __future__ import annotations

import pytest

from hostile_support import KNOWN_MAC, api_client
from netslate.context import Context
from nstest import start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real server on loopback for a test module, with a machine the scripts are rendered for."""
    data = tmp_path_factory.mktemp("hostile") / "data"
    ctx = Context(data).init()
    srv = start_server(ctx)
    try:
        with api_client(srv) as c:
            r = c.post("/api/v1/machines", json={"macs": [KNOWN_MAC], "name": "known1"})
            assert r.status_code in (200, 201), r.text
        yield srv
    finally:
        srv.stop()
