"""Bearer tokens with roles. Tokens are stored only as SHA-256; the first start writes an admin token file."""

import hashlib
import os
import secrets
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select

from netslate.context import Context
from netslate.errors import Conflict, NotFound, UserError
from netslate.fsutil import atomic_write
from netslate.names import check_name
from netslate.store.models import ApiToken

ROLES = ("viewer", "operator", "admin")
ADMIN_TOKEN_FILE = "admin.token"


@dataclass(frozen=True)
class Principal:
    name: str
    role: str

    def has(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(ctx: Context, name: str, role: str) -> str:
    check_name(name, "token name")
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    token = "nst_" + secrets.token_urlsafe(32)
    with ctx.db.session() as s:
        if s.scalar(select(ApiToken).where(ApiToken.name == name)):
            raise Conflict(f"a token named {name!r} already exists")
        s.add(ApiToken(name=name, role=role, token_sha256=_hash(token)))
    return token


def list_tokens(ctx: Context) -> list[dict]:
    with ctx.db.session() as s:
        return [
            {"name": t.name, "role": t.role, "created_at": t.created_at.isoformat() + "Z"}
            for t in s.scalars(select(ApiToken).order_by(ApiToken.name))
        ]


def remove_token(ctx: Context, name: str) -> None:
    with ctx.db.session() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.name == name))
        if row is None:
            raise NotFound(f"no token named {name!r}")
        s.delete(row)


def ensure_admin_token(ctx: Context) -> tuple[str, bool]:
    """Return (path of the admin token file, created now?). Creates it on the first start only."""
    path = ctx.data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        return str(path), False
    with ctx.db.session() as s:
        existing = s.scalar(select(ApiToken).where(ApiToken.name == "admin"))
        if existing is not None:
            s.delete(existing)  # the file was removed: issue a fresh admin token
    token = create_token(ctx, "admin", "admin")
    atomic_write(path, (token + "\n").encode(), mode=0o600)
    return str(path), True


def principal_for(ctx: Context, token: str | None) -> Principal | None:
    if not token:
        return None
    with ctx.db.session() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.token_sha256 == _hash(token)))
        return Principal(row.name, row.role) if row else None


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


def require(role: str):
    """FastAPI dependency: the caller must hold a token with at least `role`."""

    def dependency(request: Request) -> Principal:
        ctx: Context = request.app.state.ctx
        principal = principal_for(ctx, _bearer(request))
        if principal is None:
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        if not principal.has(role):
            raise HTTPException(403, f"this needs the {role} role; token {principal.name!r} is {principal.role}")
        return principal

    return Depends(dependency)


def local_principal() -> Principal:
    """The local CLI acts with admin rights over its own data directory."""
    return Principal(os.environ.get("NETSLATE_ACTOR") or "local", "admin")
