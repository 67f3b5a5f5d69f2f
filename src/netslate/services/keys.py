"""The server's signing key (public half only), and the key-encryption key of secrets at rest
(`rewrap`: a new KEK, every sealed value re-wrapped under it, the old one deleted; issue 13).

Site-scoped signing (issue 15 §3): the root certifies per-site keys (`site_cert`), revokes them
with numbered root-signed statements (`revoke`), and documents made where the root is kept offline
are brought in with `import_document`. `list` shows the root, this server's signer, the site
certificates and the revocation list.
"""

from __future__ import annotations

import base64

from pydantic import BaseModel

from netslate import audit
from netslate.config import credentials
from netslate.config import secrets as config_secrets
from netslate.crypto import atrest, records
from netslate.crypto.keys import verify_root_document
from netslate.errors import Conflict, NotFound, UserError
from netslate.onmachine import sitecert
from netslate.identity import directories
from netslate.services.framework import Service, op


class PublicKey(BaseModel):
    algorithm: str
    public_key: str
    fingerprint: str


class SiteCert(BaseModel):
    serial: int
    site: str  # "*": a key for every site
    key: str  # the site key's fingerprint
    public_key: str
    not_before: str
    not_after: str
    revoked: bool
    certificate: dict  # the root-signed envelope (site.cert.json)


class Signer(BaseModel):
    fingerprint: str  # the key that signs this server's answers
    site: str | None  # None: the root itself; else the site its certificate names
    serial: int | None


class Revocations(BaseModel):
    number: int
    issued_at: str
    revoked: list[dict]  # [{serial, site, key}]
    statement: dict  # the root-signed envelope (revocations.json)


class KeyList(BaseModel):
    keys: list[PublicKey]  # keys[0]: the root, the key machines pin (netslate.key=)
    root_private_here: bool = True  # this server holds the root's private half
    signer: Signer | None = None
    site_certs: list[SiteCert] = []
    revocations: Revocations | None = None


class SiteCertRequest(BaseModel):
    site: str
    days: int = 365
    public_key: str | None = None  # base64 Ed25519 key made at the branch; without it a key is made here


class SiteCertIssued(BaseModel):
    cert: SiteCert
    site_key_pem: str | None  # the new site private key (PEM), only when this call made it; shown once


class RevokeRequest(BaseModel):
    target: str  # a site name (every certificate of it) or a certificate serial


class ImportRequest(BaseModel):
    document: dict  # a root-signed site certificate or revocation statement


class Imported(BaseModel):
    kind: str
    serial: int | None = None
    number: int | None = None


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

    @op("POST", "/api/v1/keys/site-certs", role="admin", status=201)
    def site_cert(self, request: SiteCertRequest) -> SiteCertIssued:
        """Certify a site signing key with the root (the root's private half must be here)."""
        raise NotImplementedError

    @op("POST", "/api/v1/keys/revocations", role="admin", status=201)
    def revoke(self, request: RevokeRequest) -> Revocations:
        """A new root-signed revocation statement (number + 1) adding a site's certificates or one serial."""
        raise NotImplementedError

    @op("POST", "/api/v1/keys/import", role="admin")
    def import_document(self, request: ImportRequest) -> Imported:
        """Record a site certificate or a revocation statement made where the root is kept offline."""
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
        ctx = self.parts.ctx
        key = ctx.signing_key
        with ctx.db.read_session() as s:
            certs, rev = records.site_certs(s), records.revocations(s)
        rev_payload = rev["payload"] if rev else None
        return KeyList(
            keys=[PublicKey(algorithm="ed25519", public_key=key.public_b64, fingerprint=key.fingerprint)],
            root_private_here=key.is_root,
            signer=Signer(fingerprint=key.signer_fingerprint, site=key.site,
                          serial=None if key.is_root else key.cert["payload"]["serial"]),
            site_certs=[_cert(c, rev_payload) for c in certs],
            revocations=_revocations(rev),
        )

    def site_cert(self, request: SiteCertRequest) -> SiteCertIssued:
        ctx = self.parts.ctx
        key = ctx.signing_key
        key.require_root()
        public = None
        if request.public_key is not None:
            try:
                public = sitecert_public(request.public_key)
            except ValueError as exc:
                raise UserError(str(exc)) from None
        with ctx.db.session() as s:
            certs = records.site_certs(s)
            serial = max((c["payload"]["serial"] for c in certs), default=0) + 1
            cert, pem = key.issue_site_cert(request.site, serial, request.days, public)
            if not records.add_site_cert(s, cert):
                raise Conflict(f"site certificate serial {serial} was just issued by another request: try again")
            p = cert["payload"]
            audit.record(s, self.actor, "keys.site_cert", f"site/{p['site']}", serial=serial, key=p["key"], not_after=p["not_after"])
        return SiteCertIssued(cert=_cert(cert, None), site_key_pem=pem.decode() if pem else None)

    def revoke(self, request: RevokeRequest) -> Revocations:
        ctx = self.parts.ctx
        key = ctx.signing_key
        key.require_root()
        target = request.target.strip()
        with ctx.db.session() as s:
            certs = records.site_certs(s)
            current = records.revocations(s)
            have = list((current or {"payload": {"revoked": []}})["payload"]["revoked"])
            if target.isdigit():
                hit = [c["payload"] for c in certs if c["payload"]["serial"] == int(target)]
            else:
                hit = [c["payload"] for c in certs if c["payload"]["site"] == target]
            if not hit:
                raise NotFound(f"no site certificate {'with serial ' + target if target.isdigit() else 'for site ' + repr(target)} (see `netslate key list`)")
            known = {r["serial"] for r in have}
            have += [{"serial": c["serial"], "site": c["site"], "key": c["key"]} for c in hit if c["serial"] not in known]
            number = (current["payload"]["number"] if current else 0) + 1
            statement = key.issue_revocations(number, have)
            records.set_revocations(s, statement)
            audit.record(s, self.actor, "keys.revoke", f"keys/revocations/{number}", revoked=target,
                         serials=sorted(c["serial"] for c in hit))
        return _revocations(statement)

    def import_document(self, request: ImportRequest) -> Imported:
        ctx = self.parts.ctx
        root = ctx.signing_key.public_bytes
        kind = request.document.get("payload", {}).get("kind") if isinstance(request.document.get("payload"), dict) else None
        with ctx.db.session() as s:
            if kind == sitecert.CERT_KIND:
                p = verify_root_document(request.document, root, sitecert.CERT_KIND)
                if not records.add_site_cert(s, request.document):
                    raise Conflict(f"site certificate serial {p['serial']} is already recorded")
                audit.record(s, self.actor, "keys.import", f"site/{p['site']}", serial=p["serial"], key=p["key"])
                return Imported(kind=kind, serial=p["serial"])
            p = verify_root_document(request.document, root, sitecert.REVOCATIONS_KIND)
            current = records.revocations(s)
            if current is not None and p["number"] <= current["payload"]["number"]:
                raise Conflict(f"revocation list {p['number']} is not newer than list {current['payload']['number']} already here")
            records.set_revocations(s, request.document)
            audit.record(s, self.actor, "keys.import", f"keys/revocations/{p['number']}", serials=[r.get("serial") for r in p["revoked"]])
            return Imported(kind=sitecert.REVOCATIONS_KIND, number=p["number"])


def sitecert_public(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError("--public-key must be a base64 Ed25519 public key (32 bytes)")
    return raw


def _cert(env: dict, rev_payload: dict | None) -> SiteCert:
    p = env["payload"]
    return SiteCert(serial=p["serial"], site=p["site"], key=p["key"], public_key=p["public_key"], not_before=p["not_before"],
                    not_after=p["not_after"], revoked=sitecert.is_revoked(p, rev_payload), certificate=env)


def _revocations(env: dict | None) -> Revocations | None:
    if env is None:
        return None
    p = env["payload"]
    return Revocations(number=p["number"], issued_at=p["issued_at"], revoked=p["revoked"], statement=env)
