"""Local users: break-glass accounts in the database, argon2id-hashed, with an optional role."""

from __future__ import annotations

from sqlalchemy import delete, select

from netslate import audit
from netslate.errors import Conflict, NotFound, UserError
from netslate.identity.caller import ROLES
from netslate.identity.models import LocalUser, WebSession
from netslate.identity.passwords import hash_password
from netslate.names import check_name
from netslate.store.db import utcnow


def _check_role(role: str | None) -> str | None:
    if role in (None, "", "none"):
        return None
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}: choose one of {', '.join(ROLES)} or none")
    return role


def add_user(ctx, name: str, password: str, role: str | None, actor: str) -> dict:
    check_name(name, "user name")
    role = _check_role(role)
    digest = hash_password(password)  # outside the transaction: ~50 ms of argon2
    with ctx.db.session(write=True) as s:
        if s.scalar(select(LocalUser).where(LocalUser.name == name)):
            raise Conflict(f"a local user named {name!r} already exists")
        row = LocalUser(name=name, password_hash=digest, role=role)
        s.add(row)
        s.flush()
        audit.record(s, actor, "user.add", f"user:{name}", role=role)
        return _plain(row)


def list_users(ctx) -> list[dict]:
    with ctx.db.session() as s:
        return [_plain(r) for r in s.scalars(select(LocalUser).order_by(LocalUser.name))]


def remove_user(ctx, name: str, actor: str) -> None:
    with ctx.db.session(write=True) as s:
        row = _get_user(s, name)
        s.delete(row)
        ended = _end_local_sessions(s, name)
        audit.record(s, actor, "user.remove", f"user:{name}", sessions_ended=ended)


def set_password(ctx, name: str, password: str, actor: str) -> None:
    """A new password ends the user's open sessions."""
    digest = hash_password(password)
    with ctx.db.session(write=True) as s:
        row = _get_user(s, name)
        row.password_hash = digest
        row.password_changed_at = utcnow()
        ended = _end_local_sessions(s, name)
        audit.record(s, actor, "user.passwd", f"user:{name}", sessions_ended=ended)


def set_role(ctx, name: str, role: str | None, actor: str) -> dict:
    role = _check_role(role)
    with ctx.db.session(write=True) as s:
        row = _get_user(s, name)
        row.role = role
        audit.record(s, actor, "user.role", f"user:{name}", role=role)
        return _plain(row)


def local_user(ctx, name: str, session=None) -> tuple[str, str | None] | None:
    """(password hash, role) of a local user, or None."""
    if session is None:
        with ctx.db.session() as s:
            return local_user(ctx, name, s)
    row = session.scalar(select(LocalUser).where(LocalUser.name == name))
    return (row.password_hash, row.role) if row else None


def _get_user(s, name: str) -> LocalUser:
    row = s.scalar(select(LocalUser).where(LocalUser.name == name))
    if row is None:
        raise NotFound(f"no local user named {name!r}")
    return row


def _end_local_sessions(s, name: str) -> int:
    """End the web sessions a local user opened with their password; how many there were."""
    return s.execute(delete(WebSession).where(WebSession.user == name, WebSession.source == "local")).rowcount


def _plain(row: LocalUser) -> dict:
    return {"name": row.name, "role": row.role, "created_at": row.created_at, "password_changed_at": row.password_changed_at}
