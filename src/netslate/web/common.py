"""What every page of the web console shares (the admin dashboard and the portal).

Handlers here are adapters: they find the caller (`server.auth.caller_of`: bearer token or the
`netslate_session` cookie), call `Services.local(parts, caller)` and render a template. Role checks
happen in the services (`@op(role=...)`); the pages only hide what the caller could not do anyway.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlsplit

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse

from netslate import __version__
from netslate.errors import Conflict, NotFound, UserError
from netslate.server.auth import caller_of, csrf_token_of
from netslate.services import Services
from netslate.services.framework import Caller, Forbidden
from netslate.web.assets import static_url, vendor_url

TEMPLATES = Path(__file__).parent / "templates"

env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,  # every value is escaped unless a template says otherwise (none does)
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
env.globals.update(static_url=static_url, vendor_url=vendor_url, version=__version__)
# JSON for reading, escaped like any other text (Jinja's tojson is for <script> blocks, which we never write)
env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


class LoginRequired(Exception):
    """A page needs a logged-in caller: answered with a redirect to /login?next=<this page>."""

    def __init__(self, next_path: str):
        self.next_path = next_path


class PortalOnly(Exception):
    """An end user (no admin/operator/viewer role) opened an admin page: answered with /portal."""


def caller(request: Request) -> Caller:
    return caller_of(request)


def services(request: Request) -> Services:
    """The local services for this request's caller; `Services.local` checks every operation's role."""
    return Services.local(request.app.state.parts, caller(request))


def here(request: Request) -> str:
    """This request's local path and query (for `next=`)."""
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def require_user(request: Request) -> Caller:
    """Someone logged in (any kind of user), else LoginRequired."""
    who = caller(request)
    if who.kind == "anonymous" or (who.role is None and who.kind != "user"):
        raise LoginRequired(here(request))
    return who


def require_staff(request: Request) -> Caller:
    """An admin, operator or viewer (the dashboard); an end user goes to the portal."""
    who = require_user(request)
    if who.role is None:
        raise PortalOnly()
    return who


_LOCAL_PATH = re.compile(r"/(?![/\\])[^\x00-\x20\\]*\Z")


def safe_next(value: str | None, default: str = "/") -> str:
    """`next=` only ever leads to a path of this server: '/x?y' yes; '//evil', 'https://evil', '/\\evil' no."""
    if not value or not _LOCAL_PATH.match(value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def login_url(next_path: str | None = None) -> str:
    return "/login" + (f"?next={quote(next_path, safe='/')}" if next_path and next_path != "/" else "")


def csrf_token(request: Request) -> str:
    """The session's CSRF token, for forms (`csrf_token` field) and htmx (`X-CSRF-Token` header)."""
    return csrf_token_of(request) or ""


# Scripts and styles only from this server, no inline script, no framing (the portal may widen
# connect-src for its console through `render(..., csp=...)`).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def read_only_since(request: Request) -> str | None:
    """HH:MM (this server's local time, as in the 503 line) while this branch server's central primary
    is out of reach (issue 15): every page says so in a banner; None otherwise."""
    parts = getattr(request.app.state, "parts", None)
    since = parts.ctx.db.down_since if parts is not None else None
    return time.strftime("%H:%M", time.localtime(since)) if since is not None else None


def render(request: Request, template: str, status: int = 200, csp: str = CSP, **context: Any) -> HTMLResponse:
    who = caller(request)
    context.setdefault("flash", None)
    context.setdefault("errors", [])
    context.setdefault("read_only_since", read_only_since(request))
    body = env.get_template(template).render(request=request, caller=who, csrf=csrf_token(request),
                                              path=request.url.path, **context)
    return HTMLResponse(body, status_code=status, headers={
        "Cache-Control": "no-store", "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"})


def error_page(request: Request, exc: Exception, back: str = "/") -> HTMLResponse:
    status = error_status(exc)
    heading = {401: "Log in first", 403: "Not allowed", 404: "Not found", 409: "Conflict", 429: "Too many attempts"}.get(status, "Refused")
    return render(request, "error.html", status=status, heading=heading, message=str(exc), back=back)


def redirect(url: str, status: int = 303) -> RedirectResponse:
    return RedirectResponse(url, status_code=status)


def error_status(exc: Exception) -> int:
    if isinstance(exc, Forbidden):
        return 403 if exc.authenticated else 401
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    status = getattr(exc, "status_code", None)  # e.g. Throttled → 429
    return status if isinstance(status, int) else 400


def attempt(fn: Callable[[], Any]) -> tuple[Any, UserError | None]:
    """Run one service call; (result, None) or (None, the user error) — pages show the message."""
    try:
        return fn(), None
    except UserError as exc:
        return None, exc


def install(app) -> None:
    """Exception handlers shared by every page."""

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired):
        return _go(request, login_url(exc.next_path))

    @app.exception_handler(PortalOnly)
    async def portal_only(request: Request, _exc: PortalOnly):
        return _go(request, "/portal")


def _go(request: Request, url: str):
    if request.headers.get("hx-request"):  # an htmx fragment request: the whole page goes, not the fragment
        return HTMLResponse("", headers={"HX-Redirect": url})
    return redirect(url)
