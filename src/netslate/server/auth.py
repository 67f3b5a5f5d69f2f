"""Who is calling: a bearer token, else the `netslate_session` cookie → a `Caller` with a role.

Token storage lives in `netslate.identity.tokens`, sessions in `netslate.identity.sessions`; role
checks live in `netslate.services.framework.authorize`, shared by every adapter.

CSRF is checked here, in one place for the API and the web pages (`CsrfGuard`, installed by
`create_app`): a request authenticated by the session cookie with an unsafe method (POST, PUT,
PATCH, DELETE) must carry the session's CSRF token in the `X-CSRF-Token` header or a
`csrf_token` form field, else 403. Bearer-token requests need none (a browser never adds them by
itself); the login routes need none (they take a password, not the cookie's authority).
"""

import dataclasses
from urllib.parse import parse_qs

from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from netslate.identity.tokens import bootstrap_admin_token, create_token, ensure_admin_token, list_tokens, remove_token  # noqa: F401  (used by tests and serve)
from netslate.identity import sessions
from netslate.identity.caller import local_principal  # noqa: F401  (lives there: the local CLI must not load FastAPI)
from netslate.identity.tokens import role_for
from netslate.services.framework import ANONYMOUS, Caller, Forbidden, Op, authorize

# Kept for callers that still say `Principal`: a Caller is what they get.
Principal = Caller


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


def principal_for(ctx, token: str | None) -> Caller | None:
    found = role_for(ctx, token)
    return Caller("token", found[0], found[1]) if found else None


SESSION_COOKIE = "netslate_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_EXEMPT = frozenset({"/api/v1/auth/login", "/login"})
MAX_FORM_BYTES = 1024 * 1024


def session_of(request: Request) -> "sessions.SessionInfo | None":
    """The live web session named by the request's cookie (None with a bearer token or no cookie)."""
    state = request.state
    if getattr(state, "session_looked_up", False):
        return state.session_info
    info = None
    if bearer(request) is None:
        info = sessions.lookup(request.app.state.ctx, request.cookies.get(SESSION_COOKIE))
    state.session_info, state.session_looked_up = info, True
    return info


def caller_of(request: Request) -> Caller:
    """The request's caller: bearer token, else the session cookie; anonymous when neither is valid."""
    cached = getattr(request.state, "caller", None)
    if cached is not None:
        return cached
    token = bearer(request)
    if token is not None:
        caller = principal_for(request.app.state.ctx, token) or ANONYMOUS
    else:
        info = session_of(request)
        caller = Caller("user", info.user, info.role, session=request.cookies.get(SESSION_COOKIE)) if info else ANONYMOUS
    caller = dataclasses.replace(caller, address=request.client.host if request.client is not None else None,
                                 transport="https" if request_is_https(request) else "http")
    request.state.caller = caller
    return caller


def csrf_token_of(request: Request) -> str | None:
    """The CSRF token of the request's session, for forms (`<input name="csrf_token">`)."""
    info = session_of(request)
    return info.csrf_token if info else None


def request_is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(response, result, secure: bool) -> None:
    """Put a LoginResult's session id in the cookie: HttpOnly, SameSite=Strict, Path=/, Secure under HTTPS.

    A browser-session cookie (no Max-Age): the server ends it at the idle or absolute time-out."""
    response.set_cookie(SESSION_COOKIE, result.session_id, httponly=True, samesite="strict", path="/", secure=secure)


def clear_session_cookie(response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


CSRF_REFUSED = "CSRF token missing or wrong: send your session's token in the X-CSRF-Token header or the csrf_token form field"


class CsrfGuard:
    """ASGI middleware: unsafe requests authenticated by the session cookie must carry its CSRF token."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS or scope["path"] in CSRF_EXEMPT:
            return await self.app(scope, receive, send)
        request = Request(scope)
        if bearer(request) is not None or SESSION_COOKIE not in request.cookies:
            return await self.app(scope, receive, send)
        info = await run_in_threadpool(session_of, request)
        if info is None:  # a stale cookie carries no authority: the request is anonymous
            return await self.app(scope, receive, send)
        given = request.headers.get(CSRF_HEADER)
        downstream = receive
        ctype = request.headers.get("content-type", "").lower()
        if not given and (ctype.startswith("application/x-www-form-urlencoded") or ctype.startswith("multipart/form-data")):
            body = await _read_body(receive, MAX_FORM_BYTES)
            if body is None:
                return await JSONResponse({"detail": "form too large"}, status_code=413)(scope, receive, send)
            given = await _form_field(scope, body, ctype)
            downstream = replay_body(body, receive)
        if not info.check_csrf(given):
            return await JSONResponse({"detail": CSRF_REFUSED}, status_code=403)(scope, receive, send)
        await self.app(scope, downstream, send)


async def _read_body(receive, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _form_field(scope, body: bytes, ctype: str) -> str | None:
    if ctype.startswith("application/x-www-form-urlencoded"):
        values = parse_qs(body.decode("latin-1"), keep_blank_values=True).get(CSRF_FIELD)
        return values[0] if values else None
    form_request = Request(scope, replay_body(body, None))
    try:
        form = await form_request.form()
        value = form.get(CSRF_FIELD)
        await form.close()
        return value if isinstance(value, str) else None
    except Exception:
        return None


def replay_body(body: bytes, receive):
    """An ASGI receive that hands on a body already read, then the real `receive` (None: a disconnect)."""
    sent = {"done": False}

    async def replay():
        if not sent["done"]:
            sent["done"] = True
            return {"type": "http.request", "body": body, "more_body": False}
        if receive is None:
            return {"type": "http.disconnect"}
        return await receive()

    return replay


def http_error(exc: Forbidden) -> HTTPException:
    if exc.authenticated:
        return HTTPException(403, str(exc))
    return HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"})


def require(role: str):
    """FastAPI dependency for hand-written routes: the caller must hold at least `role`."""

    def dependency(request: Request) -> Caller:
        caller = caller_of(request)
        try:
            authorize(caller, Op("GET", "", role))
        except Forbidden as exc:
            raise http_error(exc) from None
        return caller

    return Depends(dependency)




_bearer = bearer  # older routers' name; remove when the last hand-written router is converted
