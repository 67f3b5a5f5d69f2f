"""The body test (issue 11 #3): oversized and deeply nested bodies, with and without a token, against
`netslate serve` on loopback (its own process, so its memory is measured alone)."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from hostile_support import rss_kib, serve_process

MiB = 1024 * 1024
BIG = 200 * MiB
RSS_BOUND_KIB = 50 * 1024
# Manifest routes (operators publishing a version's chunk lists) take up to MANIFEST_LIMIT, which
# the server buffers: for them the bound is that limit plus the same margin.
MANIFEST_LIMIT = 64 * MiB  # netslate.server.limits.MANIFEST_LIMIT
MANIFEST_BOUND_KIB = (MANIFEST_LIMIT // 1024) + RSS_BOUND_KIB
MANIFEST_ROUTES = ("/api/v1/images/demo/versions",)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("bodies") / "data"
    with serve_process(data) as (url, proc, token):
        yield url, proc, token


def send_body(url: str, method: str, path: str, size: int, *, token: str | None = None, chunked: bool = False,
              content_type: str = "application/json", time_limit: float = 60.0) -> tuple[int, bytes, int]:
    """Stream `size` bytes of JSON-ish filler (Content-Length or chunked) until the server answers or
    stops reading; (status, answer, bytes sent). Bounded by `time_limit`."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Type: {content_type}", "Connection: close"]
    if token:
        head.append(f"Authorization: Bearer {token}")
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}")
    block = b"[" + b" " * (MiB - 2) + b"]"
    sent = 0
    answer = b""
    deadline = time.monotonic() + time_limit
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        s.settimeout(0.5)
        while sent < size and time.monotonic() < deadline:
            piece = block[: min(len(block), size - sent)]
            data = (b"%x\r\n" % len(piece) + piece + b"\r\n") if chunked else piece
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                break
            sent += len(piece)
            if sent % (8 * MiB) < MiB:  # now and then: has the server answered already?
                try:
                    s.setblocking(False)
                    answer += s.recv(65536)
                except (BlockingIOError, ConnectionResetError):
                    pass
                finally:
                    s.settimeout(0.5)
                if answer.startswith(b"HTTP/"):
                    break
        if chunked and sent >= size:
            try:
                s.sendall(b"0\r\n\r\n")
            except OSError:
                pass
        s.settimeout(10)
        while time.monotonic() < deadline + 10 and b"\r\n\r\n" not in answer:
            try:
                more = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not more:
                break
            answer += more
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, answer, sent


CASES = [
    # (what, method, path, with token, chunked, expected status)
    ("anonymous publish, Content-Length", "POST", "/api/v1/config/publish", False, False, {401, 413}),
    ("anonymous publish, chunked", "POST", "/api/v1/config/publish", False, True, {401, 413}),
    ("admin publish, Content-Length", "POST", "/api/v1/config/publish", True, False, {413}),
    ("admin publish, chunked", "POST", "/api/v1/config/publish", True, True, {413}),
    ("anonymous report, Content-Length", "POST", "/api/v1/machines/pc3/report", False, False, {413}),
    ("anonymous report, chunked", "POST", "/api/v1/machines/pc3/report", False, True, {413}),
    ("admin chunk upload, Content-Length", "PUT", "/api/v1/chunks/" + "0" * 64, True, False, {413}),
    ("admin chunk upload, chunked", "PUT", "/api/v1/chunks/" + "0" * 64, True, True, {413}),
    ("anonymous chunk upload, chunked", "PUT", "/api/v1/chunks/" + "0" * 64, False, True, {401}),
    ("admin manifest, chunked", "POST", "/api/v1/images/demo/versions", True, True, {413}),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_200_mb_body_is_refused_without_being_held(served, case):
    url, proc, token = served
    what, method, path, with_token, chunked, expected = case
    _, hwm_before = rss_kib(proc.pid)
    status, answer, sent = send_body(url, method, path, BIG, token=token if with_token else None, chunked=chunked)
    _, hwm_after = rss_kib(proc.pid)
    assert status in expected, (what, status, answer[:300], sent)
    if status == 413:
        assert b'"detail"' in answer and b"too large" in answer, answer[:300]
    bound = MANIFEST_BOUND_KIB if path in MANIFEST_ROUTES else RSS_BOUND_KIB
    assert hwm_after - hwm_before < bound, (what, "peak RSS grew by KiB", hwm_after - hwm_before, "bound", bound)
    GROWTH[what] = hwm_after - hwm_before
    assert httpx.get(url + "/healthz", timeout=10).status_code == 200


GROWTH: dict[str, int] = {}  # KiB per case, printed for docs/security.md with -s


def test_report_growth():
    print("\npeak RSS growth (KiB) per 200 MB body:", GROWTH)


def _deep(depth: int) -> bytes:
    return b'{"facts": ' + b"[" * depth + b"]" * depth + b"}"


DEEP = [
    # (what, method, path, with token, expected)
    ("anonymous report", "POST", "/api/v1/machines/pc3/report", False, 400),
    ("admin config set", "POST", "/api/v1/config/set", True, 400),
    ("admin config node", "PUT", "/api/v1/config/node?path=/", True, 400),
    ("admin config publish", "POST", "/api/v1/config/publish", True, 400),
    ("admin boot rule", "POST", "/api/v1/boot/rules", True, 400),
    ("anonymous config set", "POST", "/api/v1/config/set", False, 401),
    ("anonymous config node", "PUT", "/api/v1/config/node?path=/", False, 401),
]


@pytest.mark.parametrize("depth", [65, 1_000, 100_000])
@pytest.mark.parametrize("case", DEEP, ids=[c[0] for c in DEEP])
def test_deep_json_is_400_not_500(served, case, depth):
    url, _, token = served
    what, method, path, with_token, expected = case
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if with_token else {})}
    r = httpx.request(method, url + path, content=_deep(depth), headers=headers, timeout=30)
    assert r.status_code == expected, (what, depth, r.status_code, r.text[:300])
    assert r.json()["detail"]


def test_shallow_json_under_the_limit_still_reaches_the_route(served):
    """The limits refuse only what they must: a 900 KiB, 60-deep report from an unknown machine is
    handled by the route (its own answer, not 413/400 from the limits)."""
    url, _, _ = served
    facts = {"pad": "p" * (900 * 1024), "deep": json.loads("[" * 60 + "]" * 60)}
    r = httpx.post(url + "/api/v1/machines/pc3/report", json={"facts": facts}, timeout=30)
    assert r.status_code not in (413, 500), r.text[:300]
    assert "nested" not in r.text


def test_anonymous_bodies_on_role_routes_are_refused_before_reading(served):
    """Every route of the OpenAPI document that takes a body and needs a role answers 401 to an
    anonymous 1 MiB body (the limits know the role before reading); open ones never 401 here."""
    url, _, _ = served
    spec = httpx.get(url + "/api/v1/openapi.json", timeout=30).json()
    tried = refused = 0
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method.upper() not in ("POST", "PUT", "PATCH") or "requestBody" not in operation:
                continue
            concrete = path
            for p in operation.get("parameters", []):
                concrete = concrete.replace("{" + p["name"] + "}", "0" * 64 if "chunk" in p["name"] else "x1")
            status, answer, _ = send_body(url, method.upper(), concrete, MiB - 10, time_limit=20)
            tried += 1
            assert status != 500 and status != 0, (method, path, answer[:300])
            refused += status == 401
    assert tried >= 10 and refused >= 5, (tried, refused)
