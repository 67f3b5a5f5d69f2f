"""Integers above 2^63-1 (issue 11 #7): every route of the OpenAPI document with an integer path
parameter, and the routes the issue names, answer 404 or 400, never 500."""

from __future__ import annotations

import pytest

from hostile_support import api_client

BIG = ["9223372036854775808", "99999999999999999999999", "-9223372036854775809"]


def _int_routes(spec) -> list[tuple[str, str, list[str]]]:
    out = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            params = operation.get("parameters", [])
            ints = [p["name"] for p in params if p["in"] == "path" and p.get("schema", {}).get("type") == "integer"]
            if ints:
                out.append((method.upper(), path, ints))
    return out


@pytest.mark.parametrize("big", BIG)
def test_every_int_path_parameter(server, big):
    with api_client(server) as c:
        routes = _int_routes(c.get("/api/v1/openapi.json").json())
        assert routes, "no route with an integer path parameter: the OpenAPI document changed shape"
        for method, path, ints in routes:
            concrete = path
            for name in ints:
                concrete = concrete.replace("{" + name + "}", big)
            concrete = concrete.replace("{", "").replace("}", "")  # other params: their own names
            r = c.request(method, concrete, json={} if method in ("POST", "PUT", "PATCH") else None)
            assert r.status_code in (400, 404), (method, path, big, r.status_code, r.text[:300])


@pytest.mark.parametrize("big", BIG)
@pytest.mark.parametrize("path", [
    "/api/v1/config/generations/{big}",
    "/images/demo/{big}/manifest",
    "/images/demo/{big}/kernel",
    "/api/v1/images/demo/{big}",
    "/api/v1/machines/{big}",
    "/api/v1/machines/{big}/bundle",
    "/api/v1/machines/{big}/explain",
    "/api/v1/boot/explain/{big}",
    "/api/v1/fleet/identify?ident={big}",
    "/api/v1/desktops/{big}",
])
@pytest.mark.parametrize("token", ["admin", None])
def test_named_routes(server, path, big, token):
    with api_client(server, token) as c:
        r = c.get(path.format(big=big))
        assert r.status_code in (400, 404), (path, big, r.status_code, r.text[:300])
