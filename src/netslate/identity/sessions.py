"""Web sessions, kept on the server: the id (32 random bytes) is stored only as its SHA-256.

- A new id at every login; logout deletes the row.
- Idle time-out (default 30 min) and absolute time-out (default 12 h), fixed at login from the
  server options `session_idle_seconds` / `session_max_seconds`.
- The role is resolved again on every request from the groups found at login and the current
  entitlements, so removing an entitlement takes effect at once; removing a local user or
  changing its password ends its sessions.
- A CSRF token per session, compared in constant time (`netslate.server.auth` enforces it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select

from netslate.identity.caller import Caller
from netslate.identity.entitlements import Resolution, resolve
from netslate.identity.models import WebSession
from netslate.identity.users import local_user
from netslate.store.db import utcnow

DEFAULT_IDLE_SECONDS = 30 * 60
DEFAULT_MAX_SECONDS = 12 * 3600
TOUCH_EVERY_SECONDS = 15  # last_seen is written at most this often per session (or a quarter of the idle time-out)


def id_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True)
class SessionInfo:
    user: str
    source: str  # local | directory:NAME
    groups: list
    csrf_token: str
    role: str | None
    pools: list[str]
    created_at: dt.datetime
    expires_at: dt.datetime  # absolute
    idle_seconds: int

    def check_csrf(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf_token.encode(), given.encode())


def create_session(session, user: str, source: str, groups: list[dict], address: str | None,
                   idle_seconds: int = DEFAULT_IDLE_SECONDS, max_seconds: int = DEFAULT_MAX_SECONDS) -> tuple[str, str, dt.datetime]:
    """(session id, CSRF token, absolute expiry), inside the caller's transaction (with its audit entry)."""
    session_id = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    now = utcnow()
    expires = now + dt.timedelta(seconds=max_seconds)
    session.add(WebSession(id_sha256=id_hash(session_id), user=user, source=source, groups=groups, csrf_token=csrf,
                           address=address, created_at=now, last_seen=now, expires_at=expires, idle_seconds=idle_seconds))
    # Expired rows of anyone go now: the table only holds live sessions (and a few idle ones).
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    return session_id, csrf, expires


def _live(row: WebSession | None, now: dt.datetime) -> bool:
    return row is not None and now < row.expires_at and (now - row.last_seen).total_seconds() < row.idle_seconds


def lookup(ctx, session_id: str | None, touch: bool = True) -> SessionInfo | None:
    """The live session with this id (idle time-out refreshed), or None; a timed-out one is deleted."""
    if not session_id or len(session_id) > 128:
        return None
    now = utcnow()
    with ctx.db.session() as s:
        row = s.scalar(select(WebSession).where(WebSession.id_sha256 == id_hash(session_id)))
        if row is None:
            return None
        if not _live(row, now):
            s.delete(row)
            return None
        local_role = None
        if row.source == "local":
            found = local_user(ctx, row.user, s)
            if found is None:
                s.delete(row)
                return None
            local_role = found[1]
        res: Resolution = resolve(ctx, row.user, row.groups or [], local_role, s)
        if touch and (now - row.last_seen).total_seconds() >= min(TOUCH_EVERY_SECONDS, row.idle_seconds / 4):
            row.last_seen = now
        return SessionInfo(row.user, row.source, list(row.groups or []), row.csrf_token, res.role, res.pools,
                           row.created_at, row.expires_at, row.idle_seconds)


def session_caller(ctx, session_id: str | None) -> Caller | None:
    """`Caller("user", NAME, role)` of a live session (role None: pool entitlements only), else None."""
    info = lookup(ctx, session_id)
    return Caller("user", info.user, info.role) if info else None


def end_session(ctx, session_id: str | None, session=None) -> str | None:
    """Delete the session; the user it belonged to, or None."""
    if not session_id:
        return None
    if session is None:
        with ctx.db.session() as s:
            return end_session(ctx, session_id, s)
    row = session.scalar(select(WebSession).where(WebSession.id_sha256 == id_hash(session_id)))
    if row is None:
        return None
    session.delete(row)
    return row.user


def count_sessions(ctx, user: str) -> int:
    with ctx.db.session() as s:
        return len(list(s.scalars(select(WebSession.id).where(WebSession.user == user))))
