"""The ASGI app: the generated service routers, the hand-written ones (firmware, streams,
machine-facing routes), and the composition root's background services in one lifespan."""

import contextlib

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from netslate import __version__, services, web
from netslate.composition import Parts
from netslate.context import Context
from netslate.errors import Conflict, NotFound, Throttled, UserError
from netslate.server import limits
from netslate.server.auth import CsrfGuard, caller_of
from netslate.server.routers import boot, config, desktops, discovery, fleet, health, images
from netslate.services.framework import ERROR_RESPONSES, Forbidden, router_for

# Routes the service contracts cannot express: firmware and iPXE paths outside /api/v1, chunk and
# artifact streams, uploads, the agent's long-poll and reports, consoles.
HAND_WRITTEN = (
    health.router, images.api, images.serving, discovery.router, config.router,
    boot.serving, desktops.router, fleet.router,
)


def create_app(ctx: Context, options: dict | None = None) -> FastAPI:
    ctx.init()
    parts = Parts(ctx, options)
    _ = parts.dnsmasq  # the boot settings are checked now: a bad --boot-interface is one line, not a failed start-up

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await run_in_threadpool(parts.start_background)
        try:
            yield
        finally:
            await run_in_threadpool(parts.stop_background)

    app = FastAPI(
        title="netslate",
        version=__version__,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.state.parts = parts
    app.state.options = parts.options

    @app.exception_handler(UserError)
    async def user_error(_request: Request, exc: UserError):
        if isinstance(exc, Forbidden):
            if exc.authenticated:
                return JSONResponse({"detail": str(exc)}, status_code=403)
            return JSONResponse({"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if isinstance(exc, Throttled):
            return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after)})
        status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else getattr(exc, "http_status", 400)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    for router in HAND_WRITTEN:  # their error answers documented like the generated routes'
        app.include_router(router, responses=ERROR_RESPONSES)
    include_services(app)
    web.include(app)  # the web console: dashboard, portal, login pages, static assets
    app.add_middleware(CsrfGuard)  # session-cookie requests: the CSRF token, checked in this one place
    app.add_middleware(boot.BootFastPath)
    limits.install(app)  # outermost: body size, auth before the body, JSON depth, big integers
    return app


def app_from_environment() -> FastAPI:
    """uvicorn factory for `netslate serve --workers N`: settings come from NETSLATE_SERVE_SETTINGS."""
    import json
    import os

    settings = json.loads(os.environ["NETSLATE_SERVE_SETTINGS"])
    options = settings["options"]
    if isinstance(options.get("listen"), list):
        options["listen"] = tuple(options["listen"])
    return create_app(Context(settings["data_dir"], settings["database_url"]), options)


def include_services(app: FastAPI) -> None:
    """One generated router per service contract; each request gets the local service as its caller."""
    for noun in services.NOUNS:
        local = services.local_class(noun)
        app.include_router(router_for(services.contract(noun), lambda request, caller, local=local: local(request.app.state.parts, caller), caller_of))
