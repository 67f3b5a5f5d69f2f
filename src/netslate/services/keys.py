"""The server's signing key (public half only), and the key-encryption key of secrets at rest
(`rewrap`: a new KEK, every sealed value re-wrapped under it, the old one deleted; issue 13)."""

from __future__ import annotations

from pydantic import BaseModel

from netslate import audit
from netslate.config import credentials
from netslate.config import secrets as config_secrets
from netslate.crypto import atrest
from netslate.identity import directories
from netslate.services.framework import Service, op


class PublicKey(BaseModel):
    algorithm: str
    public_key: str
    fingerprint: str


class KeyList(BaseModel):
    keys: list[PublicKey]


class Rewrapped(BaseModel):
    key_id: str  # the new key-encryption key, now current
    rewrapped: int  # sealed values re-wrapped (config secrets, credential bundle keys, directory bind passwords)
    retired: list[str]  # old key ids whose key files were deleted


class KeysService(Service):
    noun = "keys"

    @op("GET", "/api/v1/keys")
    def list(self) -> KeyList:
        """The server's Ed25519 public key that signs manifests and bundles."""
        raise NotImplementedError

    @op("POST", "/api/v1/keys/rewrap", role="admin")
    def rewrap(self) -> Rewrapped:
        """Make a new key-encryption key and re-wrap every secret stored in the database under it."""
        raise NotImplementedError


class LocalKeys(KeysService):
    def rewrap(self) -> Rewrapped:
        ctx = self.parts.ctx
        out = atrest.rotate(ctx.data_dir, [
            lambda one: config_secrets.rewrap_secrets(ctx, one),
            lambda one: credentials.rewrap_secrets(ctx, one),
            lambda one: directories.rewrap_secrets(ctx, one),
        ])
        with ctx.db.session() as s:
            audit.record(s, self.actor, "keys.rewrap", "keys/secrets", **out)
        return Rewrapped(**out)

    def list(self) -> KeyList:
        key = self.parts.ctx.signing_key
        return KeyList(keys=[PublicKey(algorithm="ed25519", public_key=key.public_b64, fingerprint=key.fingerprint)])
