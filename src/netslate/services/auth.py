"""Logging people in and out (web sessions), and who the caller is.

The login answer carries the session id and its CSRF token; the web adapter puts the id in the
`netslate_session` cookie (`netslate.server.auth.set_session_cookie`). Failed logins answer 400
with one sentence, throttled ones 429 (`netslate.errors.Throttled`).
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field

from netslate.identity import login as part
from netslate.identity import sessions
from netslate.services.framework import Service, op


class LoginRequest(BaseModel):
    username: str = Field(max_length=256)
    password: str = Field(max_length=1024)


class LoginResult(BaseModel):
    session_id: str
    csrf_token: str
    user: str
    role: str | None
    expires_at: dt.datetime


class Me(BaseModel):
    user: str
    kind: str  # user | token | local | machine | anonymous
    role: str | None
    groups: list[str] = []
    pools: list[str] = []


class AuthService(Service):
    noun = "auth"

    @op("POST", "/api/v1/auth/login", throttled=True)
    def login(self, request: LoginRequest) -> LoginResult:
        """Log in with a local or directory account: a new server-side session."""
        raise NotImplementedError

    @op("POST", "/api/v1/auth/logout")
    def logout(self) -> None:
        """End the caller's web session (nothing for a token)."""
        raise NotImplementedError

    @op("GET", "/api/v1/auth/me")
    def me(self) -> Me:
        """Who the caller is: role, directory groups and entitled desktop pools."""
        raise NotImplementedError


class LocalAuth(AuthService):
    def login(self, request: LoginRequest) -> LoginResult:
        options = getattr(self.parts, "options", None) or {}
        out = part.login(self.parts.ctx, request.username, request.password, self.caller.address,
                         idle_seconds=options.get("session_idle_seconds"), max_seconds=options.get("session_max_seconds"))
        return LoginResult(session_id=out.session_id, csrf_token=out.csrf_token, user=out.user, role=out.role,
                           expires_at=out.expires_at.replace(tzinfo=dt.timezone.utc))

    def logout(self) -> None:
        if self.caller.kind == "user" and self.caller.session:
            part.logout(self.parts.ctx, self.caller.session, self.caller.address)
        return None

    def me(self) -> Me:
        c = self.caller
        if c.kind == "user" and c.session:
            info = sessions.lookup(self.parts.ctx, c.session, touch=False)
            if info is not None:
                return Me(user=info.user, kind="user", role=info.role, groups=[g.get("name") for g in info.groups], pools=info.pools)
        return Me(user=c.name, kind=c.kind, role=c.role)
