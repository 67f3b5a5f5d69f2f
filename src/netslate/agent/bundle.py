"""Step 2: verify a signed bundle (pure). Never apply anything that fails here.

Checks, in order: the envelope is signed by the key pinned at boot; it is a bundle; it is for this
machine; its generation is ≥ the last one applied (anti-rollback: a man in the middle replaying an
older signed bundle is refused; the server publishes a rollback as a *newer* generation).
"""

from __future__ import annotations

from netslate.onmachine.envelope import SignatureError, open_envelope

BUNDLE_KIND = "netslate-bundle/1"


class BundleRejected(Exception):
    pass


def verify(envelope, key: bytes | None, machine_id: int | None, last_generation: int | None) -> dict:
    """The payload of a bundle we may apply, or BundleRejected(reason)."""
    if key is None:
        raise BundleRejected("no key pinned at boot (netslate.key= or boot.json): refusing unverifiable config")
    try:
        payload = open_envelope(envelope, key)
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
