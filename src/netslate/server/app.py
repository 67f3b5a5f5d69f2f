"""The ASGI app. Routers are included here; each lives in netslate/server/routers/<noun>.py."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from netslate import __version__
from netslate.context import Context
from netslate.errors import Conflict, NotFound, UserError
from netslate.services.framework import Forbidden


def create_app(ctx: Context, options: dict | None = None) -> FastAPI:
    ctx.init()
    app = FastAPI(
        title="netslate",
        version=__version__,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    from netslate.composition import Parts

    app.state.parts = Parts(ctx, options)
    app.state.options = options or {}
    app.state.health = {}  # part name -> callable returning a dict; /healthz reports each

    @app.exception_handler(UserError)
    async def user_error(_request: Request, exc: UserError):
        if isinstance(exc, Forbidden):
            if exc.authenticated:
                return JSONResponse({"detail": str(exc)}, status_code=403)
            return JSONResponse({"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400
        return JSONResponse({"detail": str(exc)}, status_code=status)

    from netslate.server.routers import health, images

    app.include_router(health.router)
    include_services(app)
    app.include_router(images.api)
    app.include_router(images.serving)
    from netslate.discovery.service import install as install_discovery
    from netslate.server.routers import discovery as discovery_router

    app.include_router(discovery_router.router)
    install_discovery(app)
    from netslate.server.routers import config as config_router

    app.include_router(config_router.router)
    from netslate.server.routers import ippools as ippools_router

    app.include_router(ippools_router.router)
    from netslate.server.routers import boot as boot_router, machines as machines_router

    boot_router.install(app)
    app.include_router(machines_router.router)
    from netslate.boot.dnsmasq import install as install_dnsmasq

    install_dnsmasq(app, app.state.options)
    from netslate.desktops.background import install as install_desktops
    from netslate.server.routers import desktops as desktops_router

    app.include_router(desktops_router.router)
    install_desktops(app)
    from netslate.server.routers import fleet as fleet_router

    app.include_router(fleet_router.router)
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
    from netslate import services
    from netslate.server.auth import caller_of
    from netslate.services.framework import router_for

    for noun in services.NOUNS:
        local = services.local_class(noun)
        app.include_router(router_for(services.contract(noun), lambda request, caller, local=local: local(request.app.state.parts, caller), caller_of))
