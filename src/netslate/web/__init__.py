"""The web console: the admin dashboard (`/`, netslate.web.routes) and the end-user portal
(`/portal`, netslate.web.portal), server-rendered over the same services as the CLI and the API.

`include(app)` is called once by `netslate.server.app.create_app`.
"""

from __future__ import annotations

import importlib
import importlib.util

from fastapi import FastAPI

from netslate.web import assets, common, routes

# Page modules with a `router`, included in this order when present (the portal is built beside the dashboard).
OPTIONAL_PAGES = ("netslate.web.portal",)


def include(app: FastAPI) -> None:
    common.install(app)
    app.include_router(assets.router)
    app.include_router(routes.router)
    for name in OPTIONAL_PAGES:
        if importlib.util.find_spec(name) is not None:
            app.include_router(importlib.import_module(name).router)
