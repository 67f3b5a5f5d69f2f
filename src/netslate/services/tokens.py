"""API tokens: create (shown once), list, revoke. Stored only as SHA-256."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel

from netslate.identity import tokens as store
from netslate.services.framework import Service, op


class Token(BaseModel):
    name: str
    role: str
    created_at: dt.datetime | str


class NewToken(BaseModel):
    name: str
    role: str
    token: str


class TokenRequest(BaseModel):
    name: str
    role: str = "viewer"


class TokensService(Service):
    noun = "tokens"

    @op("GET", "/api/v1/tokens", role="admin")
    def list(self) -> list[Token]:
        """List tokens (names and roles; secrets are never stored)."""
        raise NotImplementedError

    @op("POST", "/api/v1/tokens", role="admin", status=201)
    def create(self, request: TokenRequest) -> NewToken:
        """Create a token; its secret is shown once."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/tokens/{name}", role="admin", status=204)
    def remove(self, name: str) -> None:
        """Revoke a token."""
        raise NotImplementedError


class LocalTokens(TokensService):
    def list(self) -> list[Token]:
        return [Token(**t) for t in store.list_tokens(self.parts.ctx)]

    def create(self, request: TokenRequest) -> NewToken:
        secret = store.create_token(self.parts.ctx, request.name, request.role, actor=self.actor)
        return NewToken(name=request.name, role=request.role, token=secret)

    def remove(self, name: str) -> None:
        store.remove_token(self.parts.ctx, name, actor=self.actor)
