"""The fuzz run that stays (issue 11): schemathesis against the app's own OpenAPI document
(`/api/v1/openapi.json`), every operation, a bounded number of generated requests each (valid and
invalid ones), sent to a real server on loopback. Twice: with no token, and with the admin token.

It fails on
- any 5xx;
- an answer that does not match what the document declares (status code, content type, schema);
- without a token: an operation that needs a role (or any mutation not open by design) answering 2xx.

Bounded: EXAMPLES requests per operation and run (derandomized: the same requests every time;
NETSLATE_FUZZ_SEED=N picks another sequence, NETSLATE_FUZZ_EXAMPLES=N another count). Loopback only:
operations that make the server connect to an address taken from the request are excluded (EXCLUDED).
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance, status_code_conformance

from netslate.context import Context
from netslate.server.limits import _flat_routes, declared_role
from nstest import start_server

EXAMPLES = int(os.environ.get("NETSLATE_FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("NETSLATE_FUZZ_SEED")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MUTATIONS = {"POST", "PUT", "PATCH", "DELETE"}

# Operations not fuzzed, and why. Every one is a way out of loopback.
EXCLUDED: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/hosts"): "adds a libvirt host: the server connects to the URI in the body (qemu+ssh://, qemu+tcp://...)",
}
# Mutations that answer 2xx without a token on purpose.
OPEN_BY_DESIGN: dict[tuple[str, str], str] = {
    ("POST", "/chunks/pack"): "a read (many chunks in one answer), as open as GET /chunks/{chunk_id}",
    ("POST", "/api/v1/machines/{machine}/report"): "an agent's report: without a credential it is kept apart and flagged (issue 11 #2)",
    ("POST", "/api/v1/desktops/{ref}/ticket"): "checks its caller itself: the desktop's user or an admin",
    ("POST", "/api/v1/desktops/{ref}/browser-console"): "checks its caller itself: the desktop's user or an admin",
    ("POST", "/api/v1/auth/login"): "how a caller gets a session (user name and password)",
    ("POST", "/api/v1/auth/logout"): "ends the caller's own session; without one it changes nothing",
}
MAX_BUNDLE_WAIT = 1  # the bundle long-poll takes ?wait= up to 300 s: keep each request short

FIGURES: dict[str, Counter] = defaultdict(Counter)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """A server with one of most things, so the generated requests find something now and then."""
    tmp = tmp_path_factory.mktemp("fuzz")
    ctx = Context(tmp / "data").init()
    kernel = tmp / "vmlinuz"
    kernel.write_bytes(os.urandom(8192))
    ctx.library.import_files("demo", kernel=kernel, tag="stable", actor="local:test", warn=lambda _m: None)
    s = start_server(ctx)
    try:
        with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.admin_token}"}, timeout=30) as api:
            for method, path, body in (
                ("POST", "/api/v1/machines", {"name": "pc1", "macs": ["52:54:00:12:34:56"], "labels": {"room": "a1"}}),
                ("POST", "/api/v1/sites", {"name": "lab"}),
                ("POST", "/api/v1/sites/lab/subnets", {"cidr": "10.9.0.0/16"}),
                ("POST", "/api/v1/boot/profiles", {"name": "p1", "image": "demo", "ref": "stable"}),
                ("POST", "/api/v1/boot/rules", {"name": "r1", "profile": "p1", "selectors": {"mac": "52:54:00:12:34:56"}}),
                ("POST", "/api/v1/ippools", {"name": "pool1", "range": "10.9.1.10-10.9.1.20", "prefix": 24}),
                ("POST", "/api/v1/tokens", {"name": "viewer1", "role": "viewer"}),
            ):
                r = api.request(method, path, json=body)
                assert r.status_code in (200, 201), (path, r.status_code, r.text)
            r = api.put("/api/v1/config/node", params={"path": "/"}, json={"document": {"timezone": "UTC"}})
            assert r.status_code == 200, r.text
            assert api.post("/api/v1/config/publish", json={"message": "seed"}).status_code == 200
        yield s
    finally:
        s.stop()
        for who, c in FIGURES.items():
            print(f"\nfuzz figures ({who}): {dict(c)}")


def _failure(exc: BaseException) -> str:
    title = getattr(exc, "title", None) or type(exc).__name__
    message = " ".join((getattr(exc, "message", None) or str(exc)).split())
    return f"{title}: {message[:300]}"


def roles(app) -> dict[tuple[str, str], str | None]:
    """(METHOD, path template) → the least role the route declares (None: open or self-checked)."""
    out: dict[tuple[str, str], str | None] = {}
    for effective, declaring in _flat_routes(app.routes):
        for method in getattr(declaring, "methods", None) or ():
            out[(method, declaring.path)] = declared_role(declaring) or declared_role(effective)
    return out


def fuzz(srv, who: str) -> list[str]:
    headers = {"Authorization": f"Bearer {srv.admin_token}"} if who == "admin" else {}
    schema = schemathesis.openapi.from_url(f"{srv.url}/api/v1/openapi.json")
    role_of = roles(srv.app)
    assert role_of[("POST", "/api/v1/sites")] == "operator" and role_of[("PUT", "/api/v1/config/node")] == "operator"
    figures = FIGURES[who]
    failures: list[str] = []
    seen: set[tuple] = set()

    def one(case, key: tuple[str, str]) -> None:
        if key == ("DELETE", "/api/v1/tokens/{name}") and str((case.path_parameters or {}).get("name")) == "admin":
            return  # the run's own token
        if key[1] == "/api/v1/machines/{machine}/bundle" and case.query and "wait" in case.query:
            try:
                case.query["wait"] = min(float(case.query["wait"]), MAX_BUNDLE_WAIT)
            except (TypeError, ValueError):
                pass
        try:
            response = case.call(base_url=srv.url, headers=headers, timeout=60)
        except Exception as exc:  # noqa: BLE001 - a request the client itself could not build or send
            kind = type(exc).__name__
            figures[f"not sent ({kind})"] += 1
            if ("Timeout" in kind or "Connection" in kind) and (key, kind) not in seen:
                seen.add((key, kind))
                failures.append(f"{who}: {key[0]} {key[1]}: no answer ({kind}: {str(exc)[:200]})")
            return
        figures["cases"] += 1
        figures[f"status {response.status_code // 100}xx"] += 1
        problems = []
        try:
            case.validate_response(response, checks=CHECKS)
        except BaseExceptionGroup as group:  # schemathesis: one FailureGroup of every broken check
            problems += [_failure(e) for e in group.exceptions]
        except AssertionError as exc:  # one failure
            problems.append(_failure(exc))
        if who == "none" and 200 <= response.status_code < 300:
            role = role_of.get(key)
            if role is not None:
                problems.append(f"answered {response.status_code} without a token; the route needs {role}")
            elif key[0] in MUTATIONS and key not in OPEN_BY_DESIGN:
                problems.append(f"a mutation answered {response.status_code} without a token")
        for p in problems:
            figures["failures"] += 1
            sig = (key, p[:60], response.status_code)
            if sig in seen:
                continue
            seen.add(sig)
            failures.append(f"{who}: {key[0]} {key[1]} -> {response.status_code}: {p}\n    {case.as_curl_command(headers=headers)[:600]}"
                            f"\n    answer: {response.text[:300]!r}")

    for result in schema.get_all_operations():
        operation = result.ok()
        key = (operation.method.upper(), operation.path)
        if key in EXCLUDED:
            figures["operations excluded"] += 1
            continue
        figures["operations"] += 1
        assert key in role_of, f"{key} is in the document but not among the app's routes: the role check would miss it"
        strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=SEED is None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
        @given(case=strategy)
        def run(case):
            one(case, key)  # noqa: B023 - run() is called right here, in this iteration

        if SEED is not None:
            run = seed(int(SEED))(run)
        run()
    return failures


@pytest.mark.parametrize("who", ["none", "admin"])
def test_fuzz_the_openapi_document(srv, who):
    started = time.monotonic()
    failures = fuzz(srv, who)
    FIGURES[who]["seconds"] = round(time.monotonic() - started)
    assert FIGURES[who]["cases"] >= EXAMPLES * FIGURES[who]["operations"] // 2, f"too few requests were sent: {dict(FIGURES[who])}"
    assert not failures, f"{len(failures)} distinct failures ({dict(FIGURES[who])}):\n" + "\n".join(failures)
