"""Boot endpoints for firmware and iPXE, outside /api/v1: `/boot.ipxe` (the chain script) and
`/boot/ipxe` (the machine's script, text/plain, answered by an ASGI fast path ahead of the router).
They only translate HTTP to the process's one boot engine (`parts.boot_engine`); the boot API under
/api/v1/boot is generated from netslate.services.boot."""

import logging

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from netslate.boot import ipxe
from netslate.boot.engine import BootEngine
from netslate.boot.request import BadBootRequest, parse_boot_query
from netslate.errors import UserError

log = logging.getLogger("netslate.boot")
serving = APIRouter(tags=["boot"])
IPXE_TYPE = "text/plain; charset=utf-8"


def get_engine(app) -> BootEngine:
    return app.state.parts.boot_engine


def _remote(request: Request) -> str:
    return request.client.host if request.client else "?"


@serving.get("/boot.ipxe", response_class=PlainTextResponse)
def boot_chain(request: Request):
    engine = get_engine(request.app)
    try:
        base = engine.base_for(request.headers.get("host"), request.url.scheme)
    except UserError as exc:
        log.warning("refused /boot.ipxe from %s: %s", _remote(request), exc)
        return PlainTextResponse(f"bad request: {exc}\n", status_code=400)
    return PlainTextResponse(ipxe.chain_script(base, engine.retry), media_type=IPXE_TYPE)


async def boot_script(request: Request):
    """A plain Starlette route (no FastAPI validation layer): this is the hot path of a mass boot."""
    raw = request.scope.get("query_string", b"")
    try:
        q = parse_boot_query(raw)
    except BadBootRequest as exc:
        log.warning("refused boot request from %s: %s (query %r)", _remote(request), exc, raw[:200])
        return PlainTextResponse(f"bad request: {exc}\n", status_code=exc.status)
    engine = get_engine(request.app)
    host, remote, scheme = request.headers.get("host"), _remote(request), request.scope.get("scheme", "http")
    try:
        # Known machines are answered on the event loop (two indexed SQLite reads, no thread hop);
        # anything that must write first (discovery) goes to a worker thread.
        d = engine.serve(q, host, remote, scheme, may_write=False)
        if d is None:
            d = await run_in_threadpool(engine.serve, q, host, remote, scheme)
    except (ipxe.UnsafeValue, UserError) as exc:
        log.warning("refused boot request from %s: %s", _remote(request), exc)
        return PlainTextResponse(f"bad request: {exc}\n", status_code=400)
    return PlainTextResponse(d.script, media_type=IPXE_TYPE)


serving.add_route("/boot/ipxe", boot_script, methods=["GET"], include_in_schema=False)


class BootFastPath:
    """ASGI shortcut for GET /boot/ipxe, ahead of FastAPI's router: with every part's routes
    included, route matching alone cost more than building the script (measured: ~0.4 ms)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/boot/ipxe" and scope["method"] in ("GET", "HEAD"):
            response = await boot_script(Request(scope, receive))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

