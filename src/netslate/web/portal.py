"""The end-user portal (`/portal`): one card per entitled pool (or desktop of theirs), with its
state and "N of M free"; Connect (the browser console: netslate's noVNC relay), Open in Remote
Viewer (a `.vv` through the SPICE proxy), Reset and Release where the pool allows them.

Adapter only: every handler calls `pools.mine/request_mine` and `desktops.browser_console/
remote_viewer_file/reset_mine/release_mine`; who may do what is checked in those services.
A user with exactly one entitlement is connected straight away: the page's form submits itself
(`portal.js`), and the console's Back button lands on `/portal?stay=1`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from netslate.web.common import CSP, attempt, error_status, redirect, render, require_user, services

router = APIRouter(include_in_schema=False)

CONSOLE_TTL = 120
DONE = {"reset": "Your desktop was reset to a fresh start.", "release": "Your desktop was given back. Thank you."}
STATES = {
    "ready": "ready", "assigned": "ready for you", "in_use": "in use", "logged_off": "logged off",
    "resetting": "being reset", "provisioning": "starting", "error": "has a problem", "quarantine": "out of order",
    "unknown": "unreachable", "destroying": "being removed",
}


def _relay_origin(request: Request) -> str | None:
    port = request.app.state.parts.console_port
    return f"http://{request.url.hostname}:{port}" if port else None


def _csp(request: Request) -> str:
    """The portal's forms may be answered by a redirect to the console relay (another port)."""
    origin = _relay_origin(request)
    return CSP.replace("form-action 'self'", f"form-action 'self' {origin}") if origin else CSP


def _page(request: Request, cards, status: int = 200, errors=(), auto: str | None = None, flash: str | None = None):
    return render(request, "portal.html", status=status, csp=_csp(request), cards=cards or [], states=STATES,
                  errors=list(errors), auto=auto, flash=flash, console=bool(_relay_origin(request)))


@router.get("/portal", response_class=HTMLResponse)
def portal(request: Request, stay: bool = False, done: str = ""):
    require_user(request)
    cards, err = attempt(lambda: services(request).pools.mine())
    if err is not None:
        return _page(request, [], status=error_status(err), errors=[str(err)])
    entitled = [c for c in cards if c.entitled]
    auto = None
    if len(cards) == 1 and len(entitled) == 1 and not stay and not done and _relay_origin(request):
        auto = entitled[0].pool  # exactly one entitlement: straight in
    return _page(request, cards, auto=auto, flash=DONE.get(done))


def _fail(request: Request, exc) -> HTMLResponse:
    cards, _ = attempt(lambda: services(request).pools.mine())
    return _page(request, cards, status=error_status(exc), errors=[str(exc)])


@router.post("/portal/pools/{pool}/connect")
def connect(request: Request, pool: str):
    require_user(request)
    svc = services(request)
    desktop, err = attempt(lambda: svc.pools.request_mine(pool))
    if err is None:
        origin = request.app.state.parts.console_port
        console, err = attempt(lambda: svc.desktops.browser_console(str(desktop.id), CONSOLE_TTL, request.url.hostname, origin))
    if err is not None:
        return _fail(request, err)
    return redirect(console.url)


@router.post("/portal/pools/{pool}/remote-viewer")
def remote_viewer(request: Request, pool: str):
    require_user(request)
    svc = services(request)
    desktop, err = attempt(lambda: svc.pools.request_mine(pool))
    if err is None:
        vv, err = attempt(lambda: svc.desktops.remote_viewer_file(str(desktop.id), None, CONSOLE_TTL, request.url.hostname))
    if err is not None:
        return _fail(request, err)
    name, text = vv
    return PlainTextResponse(text, media_type="application/x-virt-viewer", headers={
        "Content-Disposition": f'attachment; filename="{name}.vv"', "Cache-Control": "no-store"})


@router.post("/portal/desktops/{ref}/reset")
def reset(request: Request, ref: str):
    require_user(request)
    _, err = attempt(lambda: services(request).desktops.reset_mine(ref))
    return _fail(request, err) if err is not None else redirect("/portal?stay=1&done=reset")


@router.post("/portal/desktops/{ref}/release")
def release(request: Request, ref: str):
    require_user(request)
    _, err = attempt(lambda: services(request).desktops.release_mine(ref))
    return _fail(request, err) if err is not None else redirect("/portal?stay=1&done=release")
