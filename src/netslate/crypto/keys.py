"""The server's Ed25519 signing key, created on first start with the private half at mode 0600,
and site-scoped signing (issue 15 §3, docs/security.md "Signing keys").

Files in `<data dir>/keys/`:

- `signing.key` (0600), `signing.pub`: the **root**. Every install made before site keys has
  exactly this key, and machines pin it (`netslate.key=`): it stays the root, nothing is re-enrolled.
- `site.key` (0600), `site.cert.json`, `root.pub`: a **site key** certified by the root
  (`netslate key site-cert SITE` where the root is; copy the three files here). A server with a
  site key signs with it, attaches the certificate (`"chain"`) and signs only payloads for its
  certificate's site; it never needs (and should not hold) the root's private half.

`SigningKey.public_*` and `fingerprint` always describe the key machines **pin** (the root), so a
boot script or `/api/v1/keys` never hands out a site key; `signer_fingerprint` is the key that
actually signs.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netslate.crypto.envelope import SignatureError, canonical, fingerprint, parse_public_key
from netslate.errors import Conflict, UserError
from netslate.fsutil import atomic_write
from netslate.onmachine import sitecert

SITE_KEY = "site.key"
SITE_CERT = "site.cert.json"
ROOT_PUB = "root.pub"


class SiteScopeError(Conflict):
    """A site key asked to sign for another site (the API answers 409)."""


def _raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass
class SigningKey:
    private: Ed25519PrivateKey
    cert: dict | None = None  # the root-signed site certificate (envelope) of a site key
    root: bytes | None = None  # the root public key, for a site key
    # latest root-signed revocation statement (envelope) to attach to site-scoped answers
    revocations: Callable[[], "dict | None"] | None = field(default=None, repr=False)

    @property
    def is_root(self) -> bool:
        return self.cert is None

    @property
    def site(self) -> str | None:
        """The certificate's site ("*": every site); None for the root (every site too)."""
        return None if self.cert is None else self.cert["payload"]["site"]

    @property
    def signer_public_bytes(self) -> bytes:
        return _raw_public(self.private)

    @property
    def signer_fingerprint(self) -> str:
        return fingerprint(self.signer_public_bytes)

    @property
    def public_bytes(self) -> bytes:
        """The key machines pin: the root."""
        return self.signer_public_bytes if self.root is None else self.root

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_bytes).decode("ascii")

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_bytes)

    def _envelope(self, payload: dict) -> dict:
        signature = self.private.sign(canonical(payload))
        env = {"payload": payload, "signature": base64.b64encode(signature).decode("ascii"), "key": self.signer_fingerprint}
        if self.cert is not None:
            env["chain"] = [copy.deepcopy(self.cert)]  # callers may edit what they get
        return env

    def sign(self, payload: dict) -> dict:
        """An envelope over `payload`. A site key signs only for its site: a payload naming another
        site is refused (SiteScopeError), one naming none gets the key's site."""
        site = self.site
        if site is not None and site != sitecert.ANY_SITE:
            said = payload.get("site", site)
            if said != site:
                raise SiteScopeError(f"this server's key signs for site {site} only, not for site {said or '(none)'}: ask a server of that site or the central site")
            payload = {**payload, "site": site} if "site" not in payload else payload
        env = self._envelope(payload)
        rev = self.revocations() if self.revocations is not None and self.cert is not None else None
        if rev is not None:  # machines learn of revoked site keys from every site-signed document
            env["revocations"] = rev
        return env

    def sign_site(self, payload: dict, site: str | None) -> dict:
        """A bundle or locate answer for `site` (the machine's site, None when unknown), with the
        latest revocation statement attached so machines learn of revoked site keys."""
        env = self.sign({**payload, "site": site})
        rev = self.revocations() if self.revocations is not None else None
        if rev is not None and "revocations" not in env:
            env["revocations"] = rev
        return env

    # ------------------------------------------------------------ root operations

    def require_root(self) -> None:
        if not self.is_root:
            raise UserError("this installation holds a site key, not the root: run this where the root key is "
                            "(keys/signing.key; see docs/security.md)")

    def issue_site_cert(self, site: str, serial: int, days: int, public_key: bytes | None = None,
                        now: float | None = None) -> tuple[dict, bytes | None]:
        """(root-signed certificate, PEM of a new site private key or None when `public_key` is given)."""
        self.require_root()
        if not 1 <= days <= 3650:
            raise UserError(f"--days must be 1..3650, got {days}")
        try:
            sitecert.check_site_name(site)
        except SignatureError:
            raise UserError(f"invalid site name {site!r}: use 1-63 letters, digits, '.', '_' or '-', or '*' for every site") from None
        pem = None
        if public_key is None:
            new = Ed25519PrivateKey.generate()
            public_key = _raw_public(new)
            pem = new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        now = time.time() if now is None else now
        payload = sitecert.cert_payload(site, public_key, serial, now - 300, now + days * 86400, self.public_bytes)
        return self._envelope(payload), pem

    def issue_revocations(self, number: int, revoked: list[dict], now: float | None = None) -> dict:
        self.require_root()
        return self._envelope(sitecert.revocations_payload(number, revoked, self.public_bytes, time.time() if now is None else now))


def _load_private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 key")
    return key


def _load_site(keys_dir: Path) -> SigningKey:
    """The site key, its certificate and the root public key; one clear line when they disagree."""
    where = keys_dir / SITE_CERT
    try:
        cert = json.loads(where.read_text())
        root = parse_public_key((keys_dir / ROOT_PUB).read_text())
        private = _load_private(keys_dir / SITE_KEY)
        payload = sitecert.open_cert(cert, root)
    except FileNotFoundError as exc:
        raise UserError(f"site key incomplete: {exc.filename} is missing (site.key, site.cert.json and root.pub go together)") from None
    except (ValueError, SignatureError) as exc:
        raise UserError(f"site key in {keys_dir} unusable: {exc}") from None
    if payload["key"] != fingerprint(_raw_public(private)):
        raise UserError(f"{where}: the certificate is for key {payload['key']}, not for {keys_dir / SITE_KEY}")
    return SigningKey(private, cert=cert, root=root)


def write_site_files(out_dir: Path, cert: dict, pem: bytes | None, root_public: bytes) -> list[str]:
    """Write what a branch server's keys directory needs: site.cert.json, root.pub and (0600) site.key."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if pem is not None:
        atomic_write(out_dir / SITE_KEY, pem, mode=0o600)
        written.append(str(out_dir / SITE_KEY))
    atomic_write(out_dir / SITE_CERT, json.dumps(cert, indent=1, sort_keys=True).encode() + b"\n", mode=0o644)
    atomic_write(out_dir / ROOT_PUB, (base64.b64encode(root_public).decode() + "\n").encode(), mode=0o644)
    written += [str(out_dir / SITE_CERT), str(out_dir / ROOT_PUB)]
    return written


def verify_root_document(doc, root: bytes, kind: str) -> dict:
    """Payload of a root-signed certificate or revocation statement given to `key import`: the checks
    a machine makes (onmachine/sitecert), a refusal as one UserError line."""
    opener = sitecert.open_cert if kind == sitecert.CERT_KIND else sitecert.open_revocations
    try:
        return opener(doc, root, root_name="this installation's root key")
    except SignatureError as exc:
        raise UserError(f"key import refused: {exc}") from None


def load_or_create(keys_dir: Path) -> SigningKey:
    keys_dir = Path(keys_dir)
    if (keys_dir / SITE_CERT).exists() or (keys_dir / SITE_KEY).exists():
        return _load_site(keys_dir)
    private_path = keys_dir / "signing.key"
    if private_path.exists():
        return SigningKey(_load_private(private_path))
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write(private_path, pem, mode=0o600)
    signing = SigningKey(key)
    atomic_write(keys_dir / "signing.pub", (signing.public_b64 + "\n").encode(), mode=0o644)
    return signing
