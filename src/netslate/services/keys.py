"""The server's signing key (public half only)."""

from __future__ import annotations

from pydantic import BaseModel

from netslate.services.framework import Service, op


class PublicKey(BaseModel):
    algorithm: str
    public_key: str
    fingerprint: str


class KeyList(BaseModel):
    keys: list[PublicKey]


class KeysService(Service):
    noun = "keys"

    @op("GET", "/api/v1/keys")
    def list(self) -> KeyList:
        """The server's Ed25519 public key that signs manifests and bundles."""
        raise NotImplementedError


class LocalKeys(KeysService):
    def list(self) -> KeyList:
        key = self.parts.ctx.signing_key
        return KeyList(keys=[PublicKey(algorithm="ed25519", public_key=key.public_b64, fingerprint=key.fingerprint)])
