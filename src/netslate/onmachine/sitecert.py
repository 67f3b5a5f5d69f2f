"""Site-scoped signing (issue 15 §3): root-signed site certificates and revocation statements.
Stdlib only: the agent, the initramfs and the server verify with this one module.

Machines pin one key, the **root** (`netslate.key=`). The root signs:

- a **site certificate**: an envelope whose payload is
  `{"kind": "netslate-site-cert/1", "site": "B", "public_key": B64, "key": "sha256:..", "serial": N,
    "not_before": "YYYY-MM-DDTHH:MM:SSZ", "not_after": "...", "root": "sha256:.."}`;
  site `"*"` is a key for every site (a central server when the root itself is kept offline);
- a **revocation statement**: `{"kind": "netslate-revocations/1", "number": N, "issued_at": ..,
  "root": .., "revoked": [{"serial": S, "site": .., "key": "sha256:.."}]}`. Numbers only grow;
  a machine keeps the highest it has seen and refuses an older list.

A branch server signs with its site key and adds `"chain": [certificate]` (and the latest
`"revocations"` statement) to the envelope. `open_signed` accepts:

- an envelope without a chain signed by the root (every envelope made before site keys: no
  machine is re-enrolled);
- an envelope with a chain whose certificate the root signed, in its validity window, not revoked,
  signed by the certificate's key, whose payload names the certificate's site (`payload["site"]`),
  and, when the machine knows its own site, that site.
"""

from __future__ import annotations

import base64
import calendar
import re
import time

from netslate.onmachine.envelope import SignatureError, fingerprint, open_envelope

CERT_KIND = "netslate-site-cert/1"
REVOCATIONS_KIND = "netslate-revocations/1"
ANY_SITE = "*"
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}|\*")  # netslate.names.check_name, or "*"


def format_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))


def parse_time(text) -> int:
    if not isinstance(text, str) or not _TIME.fullmatch(text):
        raise SignatureError(f"site certificate: bad time {str(text)[:30]!r}")
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def check_site_name(site) -> str:
    if not isinstance(site, str) or not _SITE.fullmatch(site):
        raise SignatureError(f"site certificate: bad site name {str(site)[:70]!r}")
    return site


def cert_payload(site: str, public_key: bytes, serial: int, not_before: float, not_after: float, root: bytes) -> dict:
    """The payload the root signs to certify `public_key` for `site` (pure)."""
    check_site_name(site)
    return {"kind": CERT_KIND, "site": site, "public_key": base64.b64encode(public_key).decode("ascii"),
            "key": fingerprint(public_key), "serial": int(serial), "not_before": format_time(not_before),
            "not_after": format_time(not_after), "root": fingerprint(root)}


def revocations_payload(number: int, revoked: list[dict], root: bytes, issued_at: float) -> dict:
    return {"kind": REVOCATIONS_KIND, "number": int(number), "issued_at": format_time(issued_at),
            "root": fingerprint(root), "revoked": sorted(revoked, key=lambda r: (r["serial"], r.get("key", "")))}


def open_cert(cert_envelope, root: bytes, now: float | None = None, root_name: str = "the pinned root") -> dict:
    """The certificate payload if the root signed it and it is valid now; SignatureError otherwise.
    `root_name` is how the messages call the root (a machine pins it; a server's `key import` owns it)."""
    try:
        cert = open_envelope(cert_envelope, root)
    except SignatureError as exc:
        raise SignatureError(f"site certificate not signed by {root_name}: {exc}") from None
    if cert.get("kind") != CERT_KIND:
        raise SignatureError(f"site certificate: wrong kind {str(cert.get('kind'))[:40]!r}")
    check_site_name(cert.get("site"))
    if not isinstance(cert.get("serial"), int) or isinstance(cert.get("serial"), bool):
        raise SignatureError("site certificate: no serial")
    try:
        key = base64.b64decode(str(cert.get("public_key")), validate=True)
    except ValueError:
        key = b""
    if len(key) != 32 or cert.get("key") != fingerprint(key):
        raise SignatureError("site certificate: bad public key")
    now = time.time() if now is None else now
    start, end = parse_time(cert.get("not_before")), parse_time(cert.get("not_after"))
    if now < start:
        raise SignatureError(f"site certificate {cert['serial']} for site {cert['site']} is not valid before {cert['not_before']}")
    if now > end:
        raise SignatureError(f"site certificate {cert['serial']} for site {cert['site']} expired at {cert['not_after']}")
    return cert


def open_revocations(statement, root: bytes, root_name: str = "the pinned root") -> dict:
    """A revocation statement's payload if the root signed it; SignatureError otherwise."""
    try:
        rev = open_envelope(statement, root)
    except SignatureError as exc:
        raise SignatureError(f"revocation list not signed by {root_name}: {exc}") from None
    if rev.get("kind") != REVOCATIONS_KIND:
        raise SignatureError(f"revocation list: wrong kind {str(rev.get('kind'))[:40]!r}")
    n = rev.get("number")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or not isinstance(rev.get("revoked"), list):
        raise SignatureError("revocation list: no number or no list")
    return rev


def accept_revocations(statement, root: bytes, current: dict | None) -> dict:
    """The newest of `current` (an already verified payload, or None) and `statement`.
    A statement numbered below `current` is refused (SignatureError): a replayed older list."""
    rev = open_revocations(statement, root)
    if current is not None and rev["number"] < int(current.get("number", 0)):
        raise SignatureError(f"revocation list {rev['number']} is older than list {current['number']} already seen: refused")
    return rev


def is_revoked(cert: dict, revocations: dict | None) -> bool:
    for r in (revocations or {}).get("revoked") or []:
        if isinstance(r, dict) and (r.get("serial") == cert.get("serial") or r.get("key") == cert.get("key")):
            return True
    return False


def newest_revocations(envelope, root: bytes, current: dict | None) -> dict | None:
    """The revocation list that applies: the envelope's own statement when it verifies and is not
    older than `current`, else `current` (a bad or older attached list never lowers what we know)."""
    statement = envelope.get("revocations") if isinstance(envelope, dict) else None
    if statement is None:
        return current
    try:
        return accept_revocations(statement, root, current)
    except SignatureError:
        return current


def open_signed(envelope, root: bytes, *, site: str | None = None, revocations: dict | None = None,
                now: float | None = None) -> dict:
    """The payload of `envelope` if the pinned `root` vouches for it (directly or through a site
    certificate); SignatureError with one line otherwise.

    `site`: the site this machine knows it is in (None: not known; then only the certificate's own
    site is checked against the payload's). `revocations`: the newest verified statement the caller
    holds; a newer one attached to the envelope is used too (see `newest_revocations`)."""
    if not isinstance(envelope, dict):
        raise SignatureError("malformed signed document: not an object")
    chain = envelope.get("chain")
    if chain is None:
        return open_envelope(envelope, root)
    if not isinstance(chain, list) or len(chain) != 1:
        raise SignatureError("malformed signed document: the chain must hold exactly one site certificate")
    cert = open_cert(chain[0], root, now)
    rev = newest_revocations(envelope, root, revocations)
    if is_revoked(cert, rev):
        raise SignatureError(f"site key {cert['serial']} for site {cert['site']} is revoked (revocation list {rev['number']})")
    try:
        payload = open_envelope(envelope, base64.b64decode(cert["public_key"]))
    except SignatureError as exc:
        raise SignatureError(f"site {cert['site']}: {exc}") from None
    if cert["site"] != ANY_SITE:
        said = payload.get("site")
        if said != cert["site"]:
            raise SignatureError(f"signed by the key of site {cert['site']} for site {said!r}: a site key signs only for its own site")
        if site is not None and said != site:
            raise SignatureError(f"signed by the key of site {cert['site']}, but this machine is in site {site}")
    return payload
