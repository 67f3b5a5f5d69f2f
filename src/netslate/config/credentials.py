"""Machine credentials: the one place they are issued and checked (issue 13).

A credential is a bearer token `nsm_...` shown once. The server keeps its SHA-256 (to recognise it)
and the bundle key derived from it (`bundle_key`), sealed under the KEK (`crypto.atrest`), in
`machine_credentials`; never the token. Each credential carries the trust level the machine proved
when it got it (`token`: admin-issued or one-time enrollment token; `host`: a VM netslate created;
`tpm`: a TPM 2.0 challenge), and may expire (`ttl_seconds`: the per-boot credentials of TPM
machines). Issuing sets the machine's trust (`machines.trust`, through the inventory); revoking
every credential sets it back to `none`.

Bundles and reports present the credential as `Authorization: Bearer`; `authenticate` says whose it
is and at which level, or None (unknown, expired, revoked).

The bundle route checks a credential on every request, a machine long-polling every few seconds.
`checked` keeps a live credential's check and its bundle key for `CACHE_TTL` seconds per process
and database (keyed by the token's SHA-256, at most `CACHE_MAX` entries; never an unknown token).
Revoking or replacing a machine's credentials drops its entries in this process at once, and
rewrites `DATA/credentials.revoked`, whose change every process on the same data directory (the
other `serve --workers`, after a local `netslate machine revoke`) sees on its next check (one
`stat`) and empties its cache. Another server over the same database sees it within `CACHE_TTL`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import secrets as pysecrets
import threading
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, select, update
from sqlalchemy.orm import object_session

from netslate import audit, inventory
from netslate.config import machines
from netslate.config.generation_cache import per_database
from netslate.config.models import MachineCredential
from netslate.crypto import atrest
from netslate.errors import UserError
from netslate.fsutil import atomic_write
from netslate.store.db import utcnow

PREFIX = "nsm_"
TRUST_LEVELS = ("none", "token", "host", "tpm")  # weakest → strongest
RANK = {t: i for i, t in enumerate(TRUST_LEVELS)}
BUNDLE_KEY_INFO = b"netslate bundle secrets v1"
SEAL_PURPOSE = "machine-credential-bundle-key/"
MAX_TTL = 30 * 86400
PRUNE_AFTER = dt.timedelta(days=1)  # expired short-lived rows are deleted this long after expiry

_C = MachineCredential.__table__


@dataclass(frozen=True)
class CredentialCheck:
    machine_id: int
    trust: str
    expires_at: dt.datetime | None
    credential_id: int


CACHE_TTL = 5.0  # seconds a checked live credential is reused by this process (0: off)
CACHE_MAX = 4096


class CredentialCache:
    """token SHA-256 → (monotonic time stored, CredentialCheck, bundle key); bounded, short-lived."""

    def __init__(self, max_entries: int = CACHE_MAX):
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, CredentialCheck, bytes]] = {}
        self._lock = threading.Lock()
        self.mark: tuple[int, int] | None = None  # DATA/credentials.revoked as last seen

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(self, sha: str, now: float, ttl: float) -> tuple[CredentialCheck, bytes] | None:
        with self._lock:
            hit = self._entries.get(sha)
            if hit is None:
                return None
            if now - hit[0] > ttl:
                del self._entries[sha]
                return None
            return hit[1], hit[2]

    def put(self, sha: str, check: CredentialCheck, key: bytes, now: float) -> None:
        with self._lock:
            if sha not in self._entries and len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))  # the oldest stored
            self._entries[sha] = (now, check, key)

    def drop_machine(self, machine_id: int) -> None:
        with self._lock:
            for sha in [k for k, v in self._entries.items() if v[1].machine_id == machine_id]:
                del self._entries[sha]

    def __len__(self) -> int:
        return len(self._entries)


_caches: dict[str, CredentialCache] = {}
REVOKED_MARK = "credentials.revoked"


def _revoked_mark(ctx) -> tuple[int, int]:
    try:
        st = os.stat(ctx.data_dir / REVOKED_MARK)
    except FileNotFoundError:
        return (0, 0)
    return (st.st_ino, st.st_mtime_ns)


def _revoked(ctx, machine_id: int) -> None:
    """A machine's credentials were revoked or replaced: drop them here, and tell every process on
    this data directory (a new file: a new inode, whatever the clock's resolution)."""
    cache_for(ctx).drop_machine(machine_id)
    try:
        atomic_write(ctx.data_dir / REVOKED_MARK, pysecrets.token_hex(8).encode(), mode=0o600, durable=False)
    except OSError:  # the database is the truth; other processes then catch up within CACHE_TTL
        pass


def cache_for(ctx) -> CredentialCache:
    """This process's credential cache for ctx's database."""
    return per_database(_caches, ctx, CredentialCache)


def credential_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bundle_key(token: str) -> bytes:
    """HKDF-SHA256(token, info="netslate bundle secrets v1") → 32 bytes: the key a bundle's secrets are sealed to."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=BUNDLE_KEY_INFO).derive(token.encode())


def at_least(trust: str | None, minimum: str) -> bool:
    """Is `trust` at least `minimum` (none < token < host < tpm)?"""
    return RANK.get(trust or "none", 0) >= RANK.get(minimum, len(TRUST_LEVELS))


def _issue(s, ctx, m, trust: str, actor: str, ttl_seconds: int | None) -> tuple[str, bool]:
    if trust not in TRUST_LEVELS or trust == "none":
        raise UserError(f"a credential's trust level is one of token, host, tpm (not {trust!r})")
    if ttl_seconds is not None and not 1 <= ttl_seconds <= MAX_TTL:
        raise UserError(f"a credential's lifetime is 1 to {MAX_TTL} seconds")
    token = PREFIX + pysecrets.token_urlsafe(32)
    sha = credential_hash(token)
    now = utcnow()
    replaced = False
    if ttl_seconds is None:  # one long-lived credential per machine: the new one replaces the old
        replaced = bool(s.execute(update(MachineCredential).where(
            MachineCredential.machine_id == m.id, MachineCredential.expires_at.is_(None),
            MachineCredential.revoked_at.is_(None)).values(revoked_at=now)).rowcount)
        machines.set_credential(s, m, sha)
    s.execute(delete(MachineCredential).where(MachineCredential.machine_id == m.id,
                                              MachineCredential.expires_at.is_not(None),
                                              MachineCredential.expires_at < now - PRUNE_AFTER))
    sealed = atrest.seal(ctx.data_dir, base64.b64encode(bundle_key(token)).decode("ascii"), SEAL_PURPOSE + sha)
    row = MachineCredential(machine_id=m.id, sha256=sha, sealed_key=sealed, trust=trust, created_at=now,
                            created_by=actor[:128],
                            expires_at=now + dt.timedelta(seconds=ttl_seconds) if ttl_seconds is not None else None)
    s.add(row)
    inventory.set_trust(s, m, trust)
    s.flush()
    audit.record(s, actor, "machine.credential.issue", f"machine:{m.id}", credential=row.id, trust=trust,
                 ttl_seconds=ttl_seconds, replaced=replaced)
    return token, replaced


def issue(ctx, machine_id: int, trust: str, actor: str, ttl_seconds: int | None = None) -> str:
    """A new credential for the machine (shown once), at `trust`; `ttl_seconds` None = long-lived
    (replaces the machine's previous long-lived one). Sets the machine's trust level."""
    if trust not in TRUST_LEVELS or trust == "none":
        raise UserError(f"a credential's trust level is one of token, host, tpm (not {trust!r})")
    with ctx.db.session(write=True) as s:
        m = machines.find(s, machine_id)
        token, replaced = _issue(s, ctx, m, trust, actor, ttl_seconds)
        mid = m.id
    if replaced:
        _revoked(ctx, mid)  # after the commit: the replaced credential stops working at once
    return token


def enroll(ctx, machine: str, actor: str) -> dict:
    """An admin-issued long-lived credential at trust `token` (the old one stops working). Shown once."""
    with ctx.db.session(write=True) as s:
        m = machines.find(s, machine)
        token, replaced = _issue(s, ctx, m, "token", actor, None)
        out = {"id": m.id, "name": m.name, "credential": token, "replaced": replaced}
    if replaced:
        _revoked(ctx, out["id"])  # after the commit: the replaced credential stops working at once
    return out


def _check_row(row, now: dt.datetime) -> CredentialCheck | None:
    if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return CredentialCheck(machine_id=row.machine_id, trust=row.trust, expires_at=row.expires_at, credential_id=row.id)


def check(conn, token: str | None) -> CredentialCheck | None:
    """`authenticate` on an open connection or session (the bundle and report paths have one)."""
    if not token or not isinstance(token, str) or not token.startswith(PREFIX) or len(token) > 200:
        return None
    row = conn.execute(select(_C.c.id, _C.c.machine_id, _C.c.trust, _C.c.expires_at, _C.c.revoked_at)
                       .where(_C.c.sha256 == credential_hash(token))).first()
    return _check_row(row, utcnow())


def checked(ctx, conn, token: str | None) -> tuple[CredentialCheck | None, bytes | None]:
    """(`check`, `bundle_key(token)`) for a live credential, (None, None) otherwise; reused from
    this process's cache for CACHE_TTL seconds (see the module's docstring)."""
    if not token or not isinstance(token, str) or not token.startswith(PREFIX) or len(token) > 200:
        return None, None
    sha, now, ttl = credential_hash(token), time.monotonic(), CACHE_TTL
    cache = cache_for(ctx)
    mark = _revoked_mark(ctx)
    if mark != cache.mark:  # a revocation by this or another process on this data directory
        cache.clear()
        cache.mark = mark
    hit = cache.get(sha, now, ttl) if ttl > 0 else None
    if hit is not None:
        c, key = hit
        if c.expires_at is None or c.expires_at > utcnow():
            return c, key
        return None, None
    c = check(conn, token)
    if c is None:
        return None, None
    key = bundle_key(token)
    if ttl > 0 and _revoked_mark(ctx) == mark:  # no revocation since: one marked later clears it on the next check
        cache.put(sha, c, key, now)
    return c, key


def authenticate(ctx, token: str | None) -> CredentialCheck | None:
    """Whose credential `token` is, at which trust level; None if unknown, expired or revoked."""
    if not token or not token.startswith(PREFIX):
        return None
    with ctx.db.read_connection() as conn:
        return check(conn, token)


def revoke_all(ctx, machine_id: int, actor: str) -> int:
    """Revoke every credential of the machine; its trust goes back to `none`. Returns how many were live."""
    with ctx.db.session(write=True) as s:
        m = machines.find(s, machine_id)
        n = s.execute(update(MachineCredential).where(MachineCredential.machine_id == m.id,
                                                      MachineCredential.revoked_at.is_(None)).values(revoked_at=utcnow())).rowcount
        machines.set_credential(s, m, None)
        inventory.set_trust(s, m, "none")
        audit.record(s, actor, "machine.credential.revoke", f"machine:{m.id}", revoked=n)
        mid = m.id
    _revoked(ctx, mid)  # after the commit: at once on this data directory (other servers: within CACHE_TTL)
    return n


def enrolled(conn, machine_id: int) -> bool:
    """Does the machine hold any live credential (so its reports must carry one)?"""
    now = utcnow()
    row = conn.execute(select(_C.c.id).where(_C.c.machine_id == machine_id, _C.c.revoked_at.is_(None),
                                             (_C.c.expires_at.is_(None)) | (_C.c.expires_at > now)).limit(1)).first()
    return row is not None


def enrolled_among(conn, machine_ids) -> set[int]:
    """Which of these machines hold a live credential (`enrolled` for many at once, one query)."""
    now = utcnow()
    rows = conn.execute(select(_C.c.machine_id).distinct().where(
        _C.c.machine_id.in_(list(machine_ids)), _C.c.revoked_at.is_(None),
        (_C.c.expires_at.is_(None)) | (_C.c.expires_at > now)))
    return {r[0] for r in rows}


def credential_ok(m, token: str | None) -> bool:
    """Does `token` belong to machine `m`? (Kept for callers holding a machine row; prefer `check`.)"""
    s = object_session(m)
    c = check(s, token) if s is not None else None
    return c is not None and c.machine_id == m.id


def rewrap_secrets(ctx, rewrap_one) -> dict:
    """Seal every stored bundle key again with `rewrap_one(value, purpose)` (a KEK rotation), in one transaction."""
    n, in_use = 0, set()
    with ctx.db.session(write=True) as s:
        for row in s.scalars(select(MachineCredential).where(MachineCredential.sealed_key.is_not(None))):
            new = rewrap_one(row.sealed_key, SEAL_PURPOSE + row.sha256)
            if new != row.sealed_key:
                row.sealed_key = new
                n += 1
            in_use.add(atrest.kid_of(new))
    return {"rewrapped": n, "in_use": in_use}
