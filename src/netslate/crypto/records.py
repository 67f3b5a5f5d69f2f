"""Where site certificates and the latest revocation statement are kept: two rows of the `settings`
table (public, root-signed documents), so they reach every branch with PostgreSQL's replication.

- `keys.site_certs`: JSON list of the certificate envelopes issued here or imported;
- `keys.revocations`: the newest root-signed revocation statement (envelope).
"""

from __future__ import annotations

import json

from netslate.store.models import Setting

CERTS = "keys.site_certs"
REVOCATIONS = "keys.revocations"


def _get(s, key: str, lock: bool = False):
    row = s.get(Setting, key, with_for_update=lock)
    return json.loads(row.value) if row is not None else None


def _put(s, key: str, value) -> None:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    row = s.get(Setting, key)
    if row is None:
        s.add(Setting(key=key, value=text))
    else:
        row.value = text


def site_certs(s) -> list[dict]:
    return _get(s, CERTS) or []


def add_site_cert(s, cert: dict) -> bool:
    """Record a certificate (False if the same serial is already there)."""
    certs = _get(s, CERTS, lock=True) or []
    serial = cert["payload"]["serial"]
    if any(c["payload"]["serial"] == serial for c in certs):
        return False
    _put(s, CERTS, certs + [cert])
    return True


def revocations(s) -> dict | None:
    return _get(s, REVOCATIONS)


def set_revocations(s, statement: dict) -> None:
    _put(s, REVOCATIONS, statement)
