"""Desktop pools over HTTP: listings, requests, session events from the in-guest agent, consoles."""

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from netslate.server import auth

router = APIRouter(prefix="/api/v1", tags=["desktops"])


class RequestBody(BaseModel):
    user: str


class SessionBody(BaseModel):
    event: str
    user: str | None = None


class TicketBody(BaseModel):
    type: str | None = None
    ttl: int = 120


def _ctx(request: Request):
    return request.app.state.ctx


def _nudge(request: Request) -> None:
    loop = request.app.state.parts.desktops_loop
    if loop is not None:
        loop.nudge()


@router.get("/hosts")
def list_hosts(request: Request):
    from netslate.desktops.hosts import list_hosts

    return list_hosts(_ctx(request))


@router.get("/pools")
def list_pools(request: Request):
    from netslate.desktops.pools import list_pools

    return list_pools(_ctx(request))


@router.get("/pools/{name}")
def show_pool(name: str, request: Request):
    from netslate.desktops.pools import show_pool

    return show_pool(_ctx(request), name)


@router.post("/pools/{name}/request")
def request_desktop(name: str, body: RequestBody, request: Request, p=auth.require("operator")):
    from netslate.desktops.service import request_desktop

    data = request_desktop(_ctx(request), name, body.user)
    _nudge(request)  # refill the spare in the background
    return data


@router.get("/desktops")
def list_desktops(request: Request, pool: str | None = None, user: str | None = None):
    from netslate.desktops.service import list_desktops

    return list_desktops(_ctx(request), pool, user)


@router.get("/desktops/{ref}")
def show_desktop(ref: str, request: Request):
    from netslate.desktops.service import show_desktop

    return show_desktop(_ctx(request), ref)


@router.post("/desktops/{ref}/release")
def release(ref: str, request: Request, p=auth.require("operator")):
    from netslate.desktops.service import release_desktop

    data = release_desktop(_ctx(request), ref, p.name)
    _nudge(request)
    return data


@router.post("/desktops/{ref}/session")
def session(ref: str, body: SessionBody, request: Request, p=auth.require("operator")):
    """logon/logoff from the netslate agent inside the desktop."""
    from netslate.desktops.service import session_event

    data = session_event(_ctx(request), ref, body.event, body.user, p.name, source="agent")
    _nudge(request)
    return data


def _console_principal(request: Request, ref: str):
    from netslate.desktops.consoles import may_open_console
    from netslate.desktops.service import show_desktop

    principal = auth.principal_for(_ctx(request), auth._bearer(request))
    if principal is None:
        raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    d = show_desktop(_ctx(request), ref)
    if not may_open_console(principal.name, principal.has("admin"), d["user"]):
        raise HTTPException(403, f"only the desktop's user ({d['user'] or 'nobody'}) or an admin may open its console")
    return principal, d


@router.post("/desktops/{ref}/ticket")
def ticket(ref: str, body: TicketBody, request: Request):
    from netslate.desktops.consoles import issue_ticket

    principal, d = _console_principal(request, ref)
    return issue_ticket(_ctx(request), d["id"], body.type, principal.name, ttl=body.ttl, admin=principal.has("admin"))


@router.get("/desktops/{ref}/console.vv")
def console_vv(ref: str, request: Request, type: str | None = None, ttl: int = 120):
    from netslate.desktops.consoles import issue_ticket, vv_file

    principal, d = _console_principal(request, ref)
    t = issue_ticket(_ctx(request), d["id"], type, principal.name, ttl=ttl, admin=principal.has("admin"))
    return PlainTextResponse(
        vv_file(t), media_type="application/x-virt-viewer",
        headers={"Content-Disposition": f'attachment; filename="{d["name"]}.vv"', "Cache-Control": "no-store"},
    )


class BrowserBody(BaseModel):
    ttl: int = 120


@router.post("/desktops/{ref}/browser-console")
def browser_console(ref: str, body: BrowserBody, request: Request):
    """A noVNC page URL whose websocket relay holds a single-use token for this desktop's VNC ticket."""
    from netslate.desktops.consoles import issue_ticket
    from netslate.desktops.relay import browser_url, issue_relay_token
    from netslate.errors import Conflict

    port = request.app.state.parts.console_port
    if not port:
        raise Conflict("browser consoles are off: start the server with NETSLATE_CONSOLE_PORT set")
    principal, d = _console_principal(request, ref)
    t = issue_ticket(_ctx(request), d["id"], "vnc", principal.name, ttl=body.ttl, admin=principal.has("admin"))
    token = issue_relay_token(_ctx(request).data_dir, t["host"], t["port"], body.ttl)
    host = request.url.hostname or t["host"]
    return {"url": browser_url(host, port, token, t["password"], t["title"]), "relay_port": port, "token": token,
            "password": t["password"], "expires_at": t["expires_at"]}
