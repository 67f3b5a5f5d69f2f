"""Request limits in the ASGI layer, ahead of FastAPI (issue 11 #3, #7).

- **Size**: every request body has a limit chosen by its route class (`LIMITS`, first match wins):
  small for JSON, the chunk limit plus framing for chunk uploads, larger for image manifests and
  chunk-id lists. A `Content-Length` above the limit is answered 413 before a byte is read; a
  body streamed without one (chunked) is counted and cut off at the limit with 413.
- **Authentication first**: a request that carries a body to a route that needs a role is
  authorized here, before the body is read (FastAPI reads and parses a route's body before its
  dependencies run, and the generated routes authorize inside the endpoint). The role comes from
  the same declarations the routes use: `@op(role=...)` of a service contract, or
  `auth.require(role)` of a hand-written route; the caller from `auth.caller_of`. A route without
  a role (reports, consoles with their own tickets) is left to its own checks.
- **Depth**: JSON bodies of the small class are read (bounded) and refused with 400 when nested
  deeper than `MAX_JSON_DEPTH`, before any parser recurses into them.
- **Numbers**: integers the database cannot hold (> 2^63-1) in a path, query or body end in an
  `OverflowError` from the driver; it is answered 404 on reads (nothing can have that number)
  and 400 otherwise, never 500. A `RecursionError` that still gets through is 400.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from netslate.server.auth import caller_of, replay_body
from netslate.services.framework import Forbidden, Op, authorize

KiB, MiB = 1024, 1024 * 1024
JSON_LIMIT = 1 * MiB
CHUNK_UPLOAD_LIMIT = 16 * MiB + 64 * KiB  # MAX_UPLOAD_CHUNK of the images router + framing
MANIFEST_LIMIT = 64 * MiB  # a version's chunk lists / chunk-id lists: ~700 k chunks of 48 KiB (~33 GB image)
MAX_JSON_DEPTH = 64
GOLDEN_UPLOAD_LIMIT = 1024 * 1024 * MiB  # a golden disk (qcow2/raw) or its kernel/initrd, streamed: 1 TiB


@dataclass(frozen=True)
class Limit:
    kind: str  # json | upload | manifest
    methods: frozenset[str]
    path: re.Pattern
    max_bytes: int


def _limit(kind: str, methods: str, path: str, max_bytes: int) -> Limit:
    return Limit(kind, frozenset(methods.split()), re.compile(path), max_bytes)


# First match wins; anything else is JSON (or no body at all) and gets JSON_LIMIT.
LIMITS: tuple[Limit, ...] = (
    _limit("upload", "PUT", r"/api/v1/chunks/[^/]+\Z", CHUNK_UPLOAD_LIMIT),
    _limit("manifest", "POST", r"/api/v1/images/[^/]+/versions\Z", MANIFEST_LIMIT),
    _limit("manifest", "POST", r"/api/v1/chunks/missing\Z", MANIFEST_LIMIT),
    _limit("manifest", "POST", r"/chunks/pack\Z", 16 * MiB),
    _limit("upload", "POST", r"/api/v1/golden-image-uploads\Z", GOLDEN_UPLOAD_LIMIT),
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def limit_for(method: str, path: str) -> Limit:
    for lim in LIMITS:
        if method in lim.methods and lim.path.match(path):
            return lim
    return Limit("json", frozenset(), re.compile(""), JSON_LIMIT)


class BodyTooLarge(HTTPException):
    """Raised from the counting `receive`; an HTTPException so FastAPI's body parser passes it on."""

    def __init__(self, max_bytes: int):
        super().__init__(413, f"request body too large: this route takes at most {max_bytes} bytes")


def json_depth(data: bytes, limit: int) -> int:
    """Nesting depth of a JSON text, counted up to `limit + 1` (strings are skipped).

    C-speed passes: strings go, brackets become ( and ), and each pass removes the innermost
    pairs; the number of passes that empties it is the depth. Unbalanced text counts as too deep
    (it is not JSON either way)."""
    text = _JSON_STRING.sub(b"", data).translate(_BRACKETS, _NOT_BRACKETS)
    for depth in range(limit + 1):
        if not text:
            return depth
        text = text.replace(b"()", b"")
    return limit + 1


_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.S)
_BRACKETS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def _detail(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


# ---------------------------------------------------------------- who may send a body


def _flat_routes(routes):
    """(route to match, route that declares) for every route, through included routers."""
    try:  # FastAPI >= 0.16x keeps included routers whole and resolves them per request
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI copies every route into app.routes
        for r in routes:
            yield r, r
        return
    for c in iter_route_contexts(routes):
        effective = getattr(c, "starlette_route", None) or c.original_route
        yield effective, c.original_route


def declared_role(route) -> str | None:
    """The least role a route needs, from its declaration; None: open or checked by the route itself."""
    name = getattr(route, "name", "") or ""
    if "." in name:  # generated from a service contract: "<noun>.<method>"
        from netslate import services
        from netslate.services.framework import operations

        noun, method = name.split(".", 1)
        if noun in services.NOUNS:
            operation = operations(services.contract(noun)).get(method)
            if operation is not None:
                return operation.role
    dependant = getattr(route, "dependant", None)
    for dep in getattr(dependant, "dependencies", []) or []:
        call = getattr(dep, "call", None)
        if call is not None and getattr(call, "__qualname__", "").startswith("require."):
            role = inspect.getclosurevars(call).nonlocals.get("role")
            if isinstance(role, str):
                return role
    return None


def route_role(app, scope) -> str | None:
    from starlette.routing import Match

    for effective, declaring in _flat_routes(app.routes):
        try:
            match, _ = effective.matches(scope)
        except Exception:
            continue
        if match == Match.FULL:
            return declared_role(declaring) or declared_role(effective)
    return None


# ---------------------------------------------------------------- the middleware


class RequestLimits:
    def __init__(self, app, fastapi_app=None, max_depth: int = MAX_JSON_DEPTH):
        self.app = app
        self.fastapi_app = fastapi_app
        self.max_depth = max_depth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        lim = limit_for(method, path)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        length_raw = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        length = None
        if length_raw is not None:
            try:
                length = int(length_raw)
            except ValueError:
                return await _detail(400, "bad Content-Length")(scope, receive, send)
            if length < 0:
                return await _detail(400, "bad Content-Length")(scope, receive, send)
            if length > lim.max_bytes:
                return await _detail(413, BodyTooLarge(lim.max_bytes).detail)(scope, receive, send)
        has_body = chunked or bool(length)
        if has_body and method in BODY_METHODS and self.fastapi_app is not None:
            role = route_role(self.fastapi_app, scope)
            if role is not None:
                request = Request(scope)
                caller = await run_in_threadpool(caller_of, request)
                try:
                    authorize(caller, Op(method, path, role))
                except Forbidden as exc:
                    if exc.authenticated:
                        return await _detail(403, str(exc))(scope, receive, send)
                    return await _detail(401, str(exc), {"WWW-Authenticate": "Bearer"})(scope, receive, send)

        counted = {"n": 0}

        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                counted["n"] += len(message.get("body", b""))
                if counted["n"] > lim.max_bytes:
                    raise BodyTooLarge(lim.max_bytes)
            return message

        started = {"v": False}

        async def watching_send(message):
            if message["type"] == "http.response.start":
                started["v"] = True
            await send(message)

        downstream_receive = counting_receive
        if has_body and lim.kind == "json":
            try:
                body = await _read_all(counting_receive)
            except BodyTooLarge as exc:
                return await _detail(413, exc.detail)(scope, receive, send)
            if body is None:
                return  # the client went away
            content_type = headers.get(b"content-type", b"").lower()
            if (not content_type or b"json" in content_type) and json_depth(body, self.max_depth) > self.max_depth:
                return await _detail(400, f"JSON nested deeper than {self.max_depth} levels (or unbalanced)")(scope, receive, send)
            downstream_receive = replay_body(body, receive)
        try:
            await self.app(scope, downstream_receive, watching_send)
        except BodyTooLarge as exc:
            if started["v"]:
                raise
            await _detail(413, exc.detail)(scope, receive, send)


async def _read_all(receive) -> bytes | None:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


# ---------------------------------------------------------------- exception handlers


async def _overflow(request: Request, _exc: OverflowError):
    if request.method in ("GET", "HEAD"):
        return _detail(404, "not found: a number in the request is larger than any stored one (at most 2^63-1)")
    return _detail(400, "a number in the request is out of range (at most 2^63-1)")


async def _recursion(_request: Request, _exc: RecursionError):
    return _detail(400, f"input nested too deeply (at most {MAX_JSON_DEPTH} levels)")


async def _body_too_large(_request: Request, exc: BodyTooLarge):
    return _detail(413, exc.detail)


def install(app) -> None:
    """Called by create_app after every router is included: the limits run outermost."""
    app.add_exception_handler(OverflowError, _overflow)
    app.add_exception_handler(RecursionError, _recursion)
    app.add_exception_handler(BodyTooLarge, _body_too_large)
    app.add_middleware(RequestLimits, fastapi_app=app)


__all__ = ["install", "RequestLimits", "LIMITS", "limit_for", "json_depth", "declared_role"]
