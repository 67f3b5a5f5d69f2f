"""Discovery routes the generator cannot express: locate (answers for the TCP peer, with a
Cache-Control header) and the DNS exports (text/plain). Sites and servers are generated from
services/sites.py and services/servers.py."""

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from netslate.server.auth import caller_of
from netslate.services.servers import MAX_SERIAL, LocalServers

router = APIRouter(prefix="/api/v1", tags=["servers"])


def _servers(request: Request) -> LocalServers:
    return LocalServers(request.app.state.parts, caller_of(request))


@router.get("/locate")
def locate(request: Request, address: str | None = Query(None, description="Answer as if asked from this address (for checking)."),
           signed: bool = Query(False, description="Return a signed envelope {payload, signature, key}.")):
    """The servers this caller should use, closest first (same site, then RFC 2782 order)."""
    peer = request.client.host if request.client else None
    answer = _servers(request).locate(address, signed, peer=peer)
    ttl = answer.payload.ttl if signed else answer.ttl
    return JSONResponse(answer.model_dump(mode="json"), headers={"Cache-Control": f"max-age={ttl}"})


@router.get("/dns/export", response_class=PlainTextResponse)
def dns_export(request: Request, format: str = Query(..., pattern="^(bind|dnsmasq)$"), domain: str = Query(...),
               site: str | None = Query(None), serial: int = Query(1, ge=0, le=MAX_SERIAL)):
    """The same records the responder serves, for a site that runs its own BIND or dnsmasq."""
    return PlainTextResponse(_servers(request).dns_export(format, domain, site, serial))
