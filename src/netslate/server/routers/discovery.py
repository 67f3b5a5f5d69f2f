"""Discovery API: sites and subnets, registered servers, locate, and DNS exports."""

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from netslate.discovery import core, store
from netslate.errors import UserError
from netslate.server import auth

router = APIRouter(prefix="/api/v1", tags=["discovery"])


class SiteRequest(BaseModel):
    name: str
    description: str = ""


class SubnetRequest(BaseModel):
    cidr: str


def _ctx(request: Request):
    return request.app.state.ctx


@router.get("/sites")
def list_sites(request: Request):
    return store.list_sites(_ctx(request))


@router.post("/sites", status_code=201)
def add_site(body: SiteRequest, request: Request, p=auth.require("operator")):
    return store.add_site(_ctx(request), body.name, body.description, actor=p.name)


@router.get("/sites/{name}")
def show_site(name: str, request: Request):
    return store.show_site(_ctx(request), name)


@router.delete("/sites/{name}", status_code=204)
def remove_site(name: str, request: Request, p=auth.require("operator")):
    store.remove_site(_ctx(request), name, actor=p.name)


@router.post("/sites/{name}/subnets", status_code=201)
def add_subnet(name: str, body: SubnetRequest, request: Request, p=auth.require("operator")):
    return store.add_subnet(_ctx(request), name, body.cidr, actor=p.name)


@router.delete("/sites/{name}/subnets")
def remove_subnet(name: str, request: Request, cidr: str = Query(...), p=auth.require("operator")):
    return store.remove_subnet(_ctx(request), name, cidr, actor=p.name)


@router.get("/servers")
def list_servers(request: Request):
    return store.list_servers(_ctx(request))


@router.delete("/servers/{name}", status_code=204)
def remove_server(name: str, request: Request, p=auth.require("operator")):
    store.remove_server(_ctx(request), name, actor=p.name)


@router.get("/locate")
def locate(request: Request, address: str | None = Query(None, description="Answer as if asked from this address (for checking)."),
           signed: bool = Query(False, description="Return a signed envelope {payload, signature, key}.")):
    """The servers this caller should use, closest first (same site, then RFC 2782 order)."""
    client = address if address is not None else (request.client.host if request.client else None)
    if address is not None:
        try:
            core.parse_address(address)
        except core.DiscoveryInputError as exc:
            raise UserError(str(exc)) from None
    if client is not None and client.startswith("::ffff:"):
        client = client[7:]
    answer = core.locate_answer(store.load_view(_ctx(request)), client)
    body = _ctx(request).signing_key.sign(answer) if signed else answer
    return JSONResponse(body, headers={"Cache-Control": f"max-age={answer['ttl']}"})


@router.get("/dns/export")
def dns_export(request: Request, format: str = Query(..., pattern="^(bind|dnsmasq)$"), domain: str = Query(...),
               site: str | None = Query(None), serial: int = Query(1, ge=0, le=4294967295)):
    """The same records the responder serves, for a site that runs its own BIND or dnsmasq."""
    view = store.load_view(_ctx(request))
    try:
        text = core.render_bind(view, domain, site=site, serial=serial) if format == "bind" else core.render_dnsmasq(view, domain, site=site)
    except core.DiscoveryInputError as exc:
        raise UserError(str(exc)) from None
    return PlainTextResponse(text)
