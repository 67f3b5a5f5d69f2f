"""Who is calling: bearer tokens (and, later, web sessions) → a `Caller` with a role.

Token storage lives in `netslate.identity.tokens`; role checks live in
`netslate.services.framework.authorize`, shared by every adapter.
"""

import dataclasses
import getpass
import os

from fastapi import Depends, HTTPException, Request

from netslate.identity.tokens import create_token, ensure_admin_token, list_tokens, remove_token  # noqa: F401  (used by tests and serve)
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


def caller_of(request: Request) -> Caller:
    """The request's caller; anonymous when no valid credential came with it."""
    cached = getattr(request.state, "caller", None)
    if cached is not None:
        return cached
    caller = principal_for(request.app.state.ctx, bearer(request)) or ANONYMOUS
    if request.client is not None:
        caller = dataclasses.replace(caller, address=request.client.host)
    request.state.caller = caller
    return caller


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


def local_principal() -> Caller:
    """The local CLI acts with admin rights over its own data directory."""
    return Caller("local", os.environ.get("NETSLATE_ACTOR") or getpass.getuser(), "admin")


_bearer = bearer  # older routers' name; remove when the last hand-written router is converted
