"""API tokens with roles. Stored only as SHA-256; a server's first start writes its admin token file (0600)."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket

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


def ensure_admin_token(ctx, server_name: str | None = None) -> tuple[str, bool]:
    """Return (path of this data directory's admin token file, created now?). See `bootstrap_admin_token`."""
    made = bootstrap_admin_token(ctx, server_name)
    return made["path"], made["created"]


def bootstrap_admin_token(ctx, server_name: str | None = None) -> dict:
    """A server's admin token file (DATA/admin.token, 0600), made at its first start.

    Several servers may share one database (a second central server, a branch): starting one never
    removes or replaces a token. The first bootstrap token of a database is named `admin`; a later
    one (another server, or a data directory whose file was deleted) is `admin.SERVER` (`--server-name`,
    else the short hostname), `admin.SERVER-2`, ... whichever is free. A token of a lost file
    stays valid until `netslate token remove NAME`.

    Returns {"path", "created", "name" (None when the file existed), "taken": names tried that were in use}."""
    path = ctx.data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        return {"path": str(path), "created": False, "name": None, "taken": []}
    label = _label(server_name)
    taken: list[str] = []
    for name in ["admin", f"admin.{label}"] + [f"admin.{label}-{n}" for n in range(2, 100)]:
        try:
            token = create_token(ctx, name, "admin", actor="local:first-start")
        except Conflict:  # in use (or another server took it just now): the next name
            taken.append(name)
            continue
        atomic_write(path, (token + "\n").encode(), mode=0o600)
        return {"path": str(path), "created": True, "name": name, "taken": taken}
    raise UserError(f"no free admin token name for server {label!r} (admin.{label} ... -99 are taken): "
                    "remove unused ones with `netslate token remove NAME`")


def _label(server_name: str | None) -> str:
    """A token-name-safe label for this server: its name, else its short hostname."""
    raw = server_name or os.environ.get("NETSLATE_SERVER_NAME") or socket.gethostname().split(".")[0] or "server"
    label = re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-_")[:48] or "server"
    return label if label[0].isalnum() else "s" + label


def role_for(ctx, token: str | None) -> tuple[str, str] | None:
    """(name, role) of the token, or None."""
    if not token:
        return None
    with ctx.db.session() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.token_sha256 == token_hash(token)))
        return (row.name, row.role) if row else None
