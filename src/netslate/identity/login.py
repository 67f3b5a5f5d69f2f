"""Logging a person in and out: throttle, local user or directories (in order), session, audit.

Every login, failed login, refused login and logout is written to the audit log with the actor
`user:NAME`. Failures answer one plain sentence that does not say whether the name exists.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from netslate import audit
from netslate.errors import Throttled, UserError
from netslate.identity import directories, sessions, throttle
from netslate.identity.entitlements import Resolution, resolve
from netslate.identity.passwords import verify_password
from netslate.identity.users import local_user

log = logging.getLogger("netslate.identity")
MAX_USERNAME = 256
WRONG = "wrong user name or password"


@dataclass
class LoginOutcome:
    session_id: str
    csrf_token: str
    user: str
    role: str | None
    pools: list[str]
    expires_at: dt.datetime


def check_username(username: str) -> str:
    if not isinstance(username, str) or not username.strip():
        raise UserError("a user name is required")
    if len(username) > MAX_USERNAME or any(ord(c) < 32 or ord(c) == 127 for c in username):
        raise UserError(f"invalid user name: at most {MAX_USERNAME} printable characters")
    return username.strip()


def _actor(username: str) -> str:
    return f"user:{username}"[:128]


def _fail(ctx, username: str, address: str | None, reason: str, message: str = WRONG, action: str = "auth.login_failed"):
    with ctx.db.session() as s:
        throttle.record_failure(s, username, address)
        audit.record(s, _actor(username), action, _actor(username), address=address, reason=reason)
    raise UserError(message)


def authenticate(ctx, username: str, password: str) -> tuple[str, list[dict], str | None] | None:
    """(source, groups, local role) for a right password; None for a wrong one or an unknown name.

    Raises AccountRefused (disabled/expired) and DirectoryUnavailable (no directory answered)."""
    found = local_user(ctx, username)
    if found is not None:
        return ("local", [], found[1]) if verify_password(found[0], password) else None
    unavailable: list[str] = []
    for cfg in directories.settings(ctx):
        try:
            user = directories.authenticate(cfg, username, password)
        except directories.BadCredentials:
            return None
        except directories.DirectoryUnavailable as exc:
            log.warning("login: %s", exc)
            unavailable.append(str(exc))
            continue
        if user is not None:
            return f"directory:{cfg.name}", user.groups, None
    if unavailable:
        raise directories.DirectoryUnavailable("login is unavailable: " + "; ".join(unavailable))
    verify_password(None, password)  # an unknown name costs what a local user's check costs
    return None


def login(ctx, username: str, password: str, address: str | None, idle_seconds: int | None = None,
          max_seconds: int | None = None) -> LoginOutcome:
    username = check_username(username)
    try:
        with ctx.db.session() as s:
            throttle.check(s, username, address)
    except Throttled as exc:
        with ctx.db.session() as s:  # its own transaction: the refusal is recorded, then raised
            audit.record(s, _actor(username), "auth.login_throttled", _actor(username), address=address, detail=str(exc))
        raise
    if not isinstance(password, str) or not password or len(password) > 1024:
        _fail(ctx, username, address, "empty or oversized password")
    try:
        result = authenticate(ctx, username, password)
    except directories.AccountRefused as exc:
        _fail(ctx, username, address, str(exc), message=str(exc), action="auth.login_refused")
    if result is None:
        _fail(ctx, username, address, "wrong password or unknown user")
    source, groups, local_role = result
    with ctx.db.session(write=True) as s:
        resolution: Resolution = resolve(ctx, username, groups, local_role, s)
        session_id, csrf, expires = sessions.create_session(
            s, username, source, groups, address,
            idle_seconds or sessions.DEFAULT_IDLE_SECONDS, max_seconds or sessions.DEFAULT_MAX_SECONDS)
        throttle.clear_user(s, username)
        audit.record(s, _actor(username), "auth.login", _actor(username), address=address, source=source,
                     role=resolution.role, pools=resolution.pools, groups=[g["name"] for g in groups])
    return LoginOutcome(session_id, csrf, username, resolution.role, resolution.pools, expires)


def logout(ctx, session_id: str | None, address: str | None = None) -> str | None:
    with ctx.db.session() as s:
        user = sessions.end_session(ctx, session_id, s)
        if user is not None:
            audit.record(s, _actor(user), "auth.logout", _actor(user), address=address)
    return user
