"""Step 2: verify a signed bundle (pure). Never apply anything that fails here.

Checks, in order: the envelope is signed by the key pinned at boot (the root), directly or by a
site key the root certified for this bundle's site and has not revoked (issue 15 §3,
`onmachine.sitecert`); it is a bundle; it is for this
machine; its generation is ≥ the last one applied (anti-rollback: a man in the middle replaying an
older signed bundle is refused; the server publishes a rollback as a *newer* generation).
Then `open_secrets` opens the secrets sealed to this machine's credential (issue 13).
"""

from __future__ import annotations

import base64
import json

from pathlib import Path

from netslate.agent.util import read_json, write_json
from netslate.onmachine import aead, sitecert
from netslate.onmachine.envelope import SignatureError

BUNDLE_KIND = "netslate-bundle/1"


class BundleRejected(Exception):
    pass


def verify(envelope, key: bytes | None, machine_id: int | None, last_generation: int | None, *,
           site: str | None = None, revocations: dict | None = None) -> dict:
    """The payload of a bundle we may apply, or BundleRejected(reason). `site`: the site this
    machine knows it is in (from its last verified bundle); `revocations`: the newest verified
    revocation statement it holds."""
    if key is None:
        raise BundleRejected("no key pinned at boot (netslate.key= or boot.json): refusing unverifiable config")
    try:
        payload = sitecert.open_signed(envelope, key, site=site, revocations=revocations)
    except SignatureError as exc:
        raise BundleRejected(f"bad signature: {exc}") from None
    if payload.get("kind") != BUNDLE_KIND:
        raise BundleRejected(f"not a bundle (kind {str(payload.get('kind'))[:40]!r})")
    gen = payload.get("generation")
    if not isinstance(gen, int) or gen < 0:
        raise BundleRejected("bundle has no valid generation")
    if machine_id is not None and payload.get("machine_id") != machine_id:
        raise BundleRejected(f"bundle is for machine {payload.get('machine_id')}, not {machine_id}")
    if not isinstance(payload.get("document"), dict):
        raise BundleRejected("bundle has no document")
    if last_generation is not None and gen < last_generation:
        raise BundleRejected(f"generation {gen} is older than the last applied generation {last_generation} (replay refused)")
    return payload


SECRETS_ALG = "chacha20-poly1305/hkdf-sha256"
BUNDLE_KEY_INFO = b"netslate bundle secrets v1"


def open_secrets(payload: dict, credential: str | None) -> tuple[dict, str | None]:
    """(payload, problem): the payload with its `sealed_secrets` opened into `document["secrets"]`.

    The server seals a bundle's secrets to this machine's credential (ChaCha20-Poly1305 under
    HKDF-SHA256(credential)); they never travel in the document itself. Without a sealed section the
    document has no secrets (the machine is owed none, or asked without its credential). A section
    that does not open (the credential changed since, say, a cached bundle) gives no secrets and a
    problem line; never a secret in a log or report.
    """
    sealed = payload.get("sealed_secrets")
    doc = {k: v for k, v in payload["document"].items() if k != "secrets"}
    out = {**payload, "document": doc}
    if not sealed:
        return out, None
    if not isinstance(sealed, dict) or sealed.get("alg") != SECRETS_ALG:
        return out, "bundle secrets use an unknown format: none applied"
    if not credential:
        return out, "the bundle holds secrets but this machine has no credential: none applied"
    try:
        nonce = base64.b64decode(sealed["nonce"], validate=True)
        data = base64.b64decode(sealed["data"], validate=True)
        key = aead.hkdf_sha256(credential.encode(), BUNDLE_KEY_INFO)
        aad = f"netslate-bundle-secrets/1:{payload['machine_id']}:{payload['generation']}".encode()
        values = json.loads(aead.decrypt(key, nonce, data, aad))
    except (KeyError, TypeError, ValueError, aead.InvalidTag):
        return out, "the bundle's secrets do not open with this machine's credential: none applied"
    if not isinstance(values, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
        return out, "the bundle's secrets are not a map of names to values: none applied"
    doc["secrets"] = values
    return out, None


REVOCATIONS_FILE = "revocations.json"


def load_revocations(path: Path, key: bytes | None) -> dict | None:
    """The revocation statement kept from earlier answers, if the pinned root signed it."""
    data = read_json(Path(path))
    if key is None or not isinstance(data, dict):
        return None
    try:
        return sitecert.open_revocations(data, key)
    except SignatureError:
        return None


def remember_revocations(path: Path, envelope, key: bytes | None, current: dict | None) -> dict | None:
    """The newest statement after `envelope`; a newer one is written to `path` (kept across restarts
    so an older list, replayed later, is refused)."""
    if key is None:
        return current
    newest = sitecert.newest_revocations(envelope, key, current)
    if newest is not None and (current is None or newest["number"] > current["number"]):
        try:
            write_json(Path(path), envelope["revocations"])
        except OSError:
            pass  # kept in memory for this run
    return newest
