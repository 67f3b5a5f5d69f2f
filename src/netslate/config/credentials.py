"""Per-machine credentials that unlock a machine's secrets in its bundle: issued once (`enroll`),
stored only as SHA-256, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets as pysecrets

from netslate import audit
from netslate.config import machines

PREFIX = "nsm_"


def credential_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def enroll(ctx, machine: str, actor: str) -> dict:
    """Issue a new per-machine credential (the old one stops working). Shown once; stored hashed."""
    token = PREFIX + pysecrets.token_urlsafe(32)
    with ctx.db.session() as s:
        m = machines.find(s, machine)
        replaced = machines.set_credential(s, m, credential_hash(token))
        audit.record(s, actor, "machine.enroll", f"machine/{m.id}", replaced=replaced)
        return {"id": m.id, "name": m.name, "credential": token, "replaced": replaced}


def credential_ok(m, token: str | None) -> bool:
    """Does `token` belong to machine `m` (anything with a `credential_sha256` attribute)?"""
    if not token or not m.credential_sha256:
        return False
    return hmac.compare_digest(m.credential_sha256, credential_hash(token))
