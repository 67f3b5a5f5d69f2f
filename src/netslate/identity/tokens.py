"""API tokens with roles. Stored only as SHA-256; the first start writes an admin token file (0600)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select

from netslate import audit
from netslate.errors import Conflict, NotFound, UserError
from netslate.fsutil import atomic_write
from netslate.names import check_name
from netslate.store.models import ApiToken

ROLES = ("viewer", "operator", "admin")
ADMIN_TOKEN_FILE = "admin.token"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(ctx, name: str, role: str, actor: str | None = None) -> str:
    check_name(name, "token name")
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    token = "nst_" + secrets.token_urlsafe(32)
    with ctx.db.session() as s:
        if s.scalar(select(ApiToken).where(ApiToken.name == name)):
            raise Conflict(f"a token named {name!r} already exists")
        s.add(ApiToken(name=name, role=role, token_sha256=token_hash(token)))
        audit.record(s, actor or audit.default_actor(), "token.create", f"token:{name}", role=role)
    return token


def list_tokens(ctx) -> list[dict]:
    with ctx.db.session() as s:
        return [
            {"name": t.name, "role": t.role, "created_at": t.created_at.isoformat() + "Z"}
            for t in s.scalars(select(ApiToken).order_by(ApiToken.name))
        ]


def remove_token(ctx, name: str, actor: str | None = None) -> None:
    with ctx.db.session() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.name == name))
        if row is None:
            raise NotFound(f"no token named {name!r}")
        s.delete(row)
        audit.record(s, actor or audit.default_actor(), "token.remove", f"token:{name}")


def ensure_admin_token(ctx) -> tuple[str, bool]:
    """Return (path of the admin token file, created now?). Creates it on the first start only."""
    path = ctx.data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        return str(path), False
    with ctx.db.session() as s:
        existing = s.scalar(select(ApiToken).where(ApiToken.name == "admin"))
        if existing is not None:
            s.delete(existing)  # the file was removed: issue a fresh admin token
    token = create_token(ctx, "admin", "admin", actor="local:first-start")
    atomic_write(path, (token + "\n").encode(), mode=0o600)
    return str(path), True


def role_for(ctx, token: str | None) -> tuple[str, str] | None:
    """(name, role) of the token, or None."""
    if not token:
        return None
    with ctx.db.session() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.token_sha256 == token_hash(token)))
        return (row.name, row.role) if row else None
