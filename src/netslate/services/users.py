"""Local users (break-glass accounts) and `explain`: what any person resolves to, and why."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field

from netslate.errors import NotFound
from netslate.identity import directories, entitlements
from netslate.identity import users as part
from netslate.services.framework import Service, op


class LocalUserRecord(BaseModel):
    name: str
    role: str | None
    created_at: dt.datetime | str
    password_changed_at: dt.datetime | str


class UserCreate(BaseModel):
    name: str = Field(max_length=63)
    password: str = Field(max_length=1024)
    role: str | None = None


class GroupFound(BaseModel):
    name: str | None
    dn: str | None = None
    nested: bool = False
    registered: bool
    grants: list[str] = []


class Explanation(BaseModel):
    user: str
    found_in: str | None  # local | directory:NAME | None
    dn: str | None = None
    refused: str | None = None  # why the account may not log in (disabled, expired)
    role: str | None
    pools: list[str]
    groups: list[GroupFound]
    reasons: list[str]
    unavailable: list[str] = []  # directories that could not be asked


class UsersService(Service):
    noun = "users"

    @op("GET", "/api/v1/users", role="admin")
    def list(self) -> list[LocalUserRecord]:
        """List local users (names and roles; passwords are only kept as argon2 hashes)."""
        raise NotImplementedError

    @op("POST", "/api/v1/users", role="admin", status=201)
    def add(self, request: UserCreate) -> LocalUserRecord:
        """Add a local user."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/users/{name}", role="admin", status=204)
    def remove(self, name: str) -> None:
        """Remove a local user and end their sessions."""
        raise NotImplementedError

    @op("POST", "/api/v1/users/{name}/password", role="admin", status=204)
    def passwd(self, name: str, password: str) -> None:
        """Set a local user's password (ends their sessions)."""
        raise NotImplementedError

    @op("POST", "/api/v1/users/{name}/role", role="admin")
    def set_role(self, name: str, role: str | None = None) -> LocalUserRecord:
        """Set (or clear) a local user's role."""
        raise NotImplementedError

    @op("GET", "/api/v1/users/{name}/explain", role="admin")
    def explain(self, name: str) -> Explanation:
        """What a person resolves to: groups found, role, pools, and which entitlement gave what."""
        raise NotImplementedError


class LocalUsers(UsersService):
    def list(self) -> list[LocalUserRecord]:
        return [LocalUserRecord(**u) for u in part.list_users(self.parts.ctx)]

    def add(self, request: UserCreate) -> LocalUserRecord:
        return LocalUserRecord(**part.add_user(self.parts.ctx, request.name, request.password, request.role, actor=self.actor))

    def remove(self, name: str) -> None:
        part.remove_user(self.parts.ctx, name, actor=self.actor)

    def passwd(self, name: str, password: str) -> None:
        part.set_password(self.parts.ctx, name, password, actor=self.actor)

    def set_role(self, name: str, role: str | None = None) -> LocalUserRecord:
        return LocalUserRecord(**part.set_role(self.parts.ctx, name, role, actor=self.actor))

    def explain(self, name: str) -> Explanation:
        ctx = self.parts.ctx
        local = part.local_user(ctx, name)
        if local is not None:
            res = entitlements.resolve(ctx, name, [], local[1])
            return Explanation(user=name, found_in="local", role=res.role, pools=res.pools, groups=[], reasons=res.reasons)
        unavailable: list[str] = []
        for cfg in directories.settings(ctx):
            try:
                found = directories.lookup_user(cfg, name)
            except directories.DirectoryUnavailable as exc:
                unavailable.append(str(exc))
                continue
            if found is None:
                continue
            res = entitlements.resolve(ctx, name, found.groups)
            return Explanation(user=name, found_in=f"directory:{cfg.name}", dn=found.dn,
                               refused=directories.refusal(cfg, name, found.attributes), role=res.role, pools=res.pools,
                               groups=[GroupFound(**g) for g in res.groups], reasons=res.reasons, unavailable=unavailable)
        if unavailable:
            res = entitlements.resolve(ctx, name, [])
            return Explanation(user=name, found_in=None, role=res.role, pools=res.pools, groups=[],
                               reasons=res.reasons + [f"{name} was not found in the directories that answered"], unavailable=unavailable)
        raise NotFound(f"no local user and no directory entry named {name!r}")
