"""Signed envelopes: {"payload": {...}, "signature": b64, "key": "sha256:..."}. Stdlib only.

The signature covers the canonical JSON of the payload. The digest of a payload
(`sha256:` + hex of its canonical JSON) is what a kernel command line pins.
"""

import base64
import hashlib
import json

from netslate.onmachine import ed25519


class SignatureError(Exception):
    pass


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def fingerprint(public_key: bytes) -> str:
    return "sha256:" + hashlib.sha256(public_key).hexdigest()


def payload_digest(payload) -> str:
    return "sha256:" + hashlib.sha256(canonical(payload)).hexdigest()


def parse_public_key(text: str) -> bytes:
    """A public key as base64 (as served at /api/v1/keys)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise SignatureError(f"not a base64 Ed25519 public key: {exc}") from None
    if len(raw) != 32:
        raise SignatureError("an Ed25519 public key is 32 bytes")
    return raw


def open_envelope(envelope: dict, public_key: bytes) -> dict:
    """Return the payload if the envelope is signed by `public_key`; raise SignatureError otherwise."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("payload"), dict):
        raise SignatureError("malformed signed document: no payload")
    sig_text = envelope.get("signature")
    if not isinstance(sig_text, str):
        raise SignatureError("malformed signed document: no signature")
    try:
        signature = base64.b64decode(sig_text, validate=True)
    except ValueError:
        raise SignatureError("malformed signature encoding") from None
    if envelope.get("key") not in (None, fingerprint(public_key)):
        raise SignatureError(
            f"signed by key {envelope.get('key')}, but the trusted key is {fingerprint(public_key)}"
        )
    if not ed25519.verify(public_key, canonical(envelope["payload"]), signature):
        raise SignatureError("signature does not verify against the trusted key")
    return envelope["payload"]
