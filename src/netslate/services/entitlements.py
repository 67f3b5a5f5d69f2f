"""Entitlements: roles and desktop pools granted to directory groups or single users."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from netslate.desktops import pools as desktop_pools
from netslate.errors import NotFound
from netslate.identity import entitlements as part
from netslate.services.framework import Service, op


class EntitlementRecord(BaseModel):
    id: int
    subject_kind: str
    subject: str
    grant: str
    value: str


class EntitlementCreate(BaseModel):
    subject_kind: Literal["group", "user"]
    subject: str = Field(max_length=1024)
    grant: Literal["role", "pool"]
    value: str = Field(max_length=64)


class EntitlementsService(Service):
    noun = "entitlements"

    @op("GET", "/api/v1/entitlements", role="viewer")
    def list(self) -> list[EntitlementRecord]:
        """List entitlements (group or user → role or pool)."""
        raise NotImplementedError

    @op("POST", "/api/v1/entitlements", role="admin", status=201)
    def add(self, request: EntitlementCreate) -> EntitlementRecord:
        """Grant a role or a desktop pool to a directory group or a user."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/entitlements/{ident}", role="admin")
    def remove(self, ident: int) -> EntitlementRecord:
        """Remove an entitlement by its number."""
        raise NotImplementedError


class LocalEntitlements(EntitlementsService):
    def list(self) -> list[EntitlementRecord]:
        return [EntitlementRecord(**e) for e in part.list_entitlements(self.parts.ctx)]

    def add(self, request: EntitlementCreate) -> EntitlementRecord:
        r = request
        if r.grant == "pool" and r.value not in {p["name"] for p in desktop_pools.list_pools(self.parts.ctx)}:
            raise NotFound(f"no desktop pool named {r.value!r}: create it first (netslate pool create)")
        return EntitlementRecord(**part.add_entitlement(self.parts.ctx, r.subject_kind, r.subject, r.grant, r.value, actor=self.actor))

    def remove(self, ident: int) -> EntitlementRecord:
        return EntitlementRecord(**part.remove_entitlement(self.parts.ctx, ident, actor=self.actor))
