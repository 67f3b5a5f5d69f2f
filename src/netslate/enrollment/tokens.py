"""One-time enrollment tokens (issue 13 §3, §4): how a machine without a TPM gets its credential.

Two kinds, one table (`enrollment_tokens`):
- **admin tokens** (`netslate machine enroll ID`): bound to one machine, entered on it by hand (the
  console, or `netslate-enroll.token` on the NETSLATE disk or the ESP). Exchanged at trust `token`.
- **host tokens**: made by netslate itself when it defines a VM (desktops, diskless pools, the
  demo), bound to the domain's UUID and put in its SMBIOS type 11 OEM strings
  (`netslate-enroll:TOKEN`), which only the guest can read. Exchanged at trust `host`.

A token is `nse_` + 256 random bits, shown once and stored only as SHA-256. It expires (default one
hour for admin tokens, a day for host tokens) and is good for one exchange: the exchange marks it
used with a conditional UPDATE (`used_at IS NULL`), so of two concurrent exchanges exactly one
wins; the other, and any later one, is refused (409). A token bound to a domain UUID is refused
(403) from a machine reporting another SMBIOS UUID.

The credential comes from `config.credentials.issue` (the one place credentials are made).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets as pysecrets
from dataclasses import dataclass

from sqlalchemy import delete, select, update

from netslate import audit, inventory
from netslate.config import credentials
from netslate.enrollment.models import EnrollmentToken
from netslate.errors import Conflict, NotFound, UserError
from netslate.store.db import utcnow

PREFIX = "nse_"
OEM_PREFIX = "netslate-enroll:"  # the SMBIOS type 11 string: netslate-enroll:nse_...
TOKEN_FILE = "netslate-enroll.token"  # on the NETSLATE disk or the ESP
TOKEN_RE = re.compile(r"^nse_[A-Za-z0-9_-]{43}\Z")
ADMIN_TTL = 3600
HOST_TTL = 86400
MAX_TTL = 30 * 86400
PRUNE_AFTER = dt.timedelta(days=1)
KINDS = {"token": "token", "host": "host"}  # token kind → the trust level its exchange gives


class TokenRefused(UserError):
    """The token is unknown, expired or bound elsewhere (HTTP 403)."""

    http_status = 403


class TokenUsed(Conflict):
    """The token was exchanged already (HTTP 409)."""


class NeedsTls(UserError):
    """A token sent over plain HTTP to a server with a TLS listener (HTTP 426 Upgrade Required)."""

    http_status = 426


@dataclass(frozen=True)
class Exchanged:
    machine_id: int
    credential: str
    trust: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return PREFIX + pysecrets.token_urlsafe(32)


def oem_string(token: str) -> str:
    """What goes into the domain's SMBIOS type 11 entry."""
    return OEM_PREFIX + token


def _norm_uuid(uuid: str | None) -> str | None:
    if not uuid:
        return None
    try:
        return inventory.normalize_uuid(uuid)
    except UserError:
        return None


def _row_dict(row: EnrollmentToken, token: str | None = None) -> dict:
    d = {"id": row.id, "kind": row.kind, "machine_id": row.machine_id, "domain_uuid": row.domain_uuid,
         "created_at": row.created_at.isoformat() + "Z", "expires_at": row.expires_at.isoformat() + "Z",
         "used_at": row.used_at.isoformat() + "Z" if row.used_at else None}
    if token is not None:
        d["token"] = token
    return d


def create(ctx, actor: str, machine: str | int | None = None, domain_uuid: str | None = None, kind: str = "token",
           ttl_seconds: int | None = None) -> dict:
    """A new one-time token (in the answer once, stored hashed). `kind` token (admin) or host
    (netslate made the VM: `domain_uuid` required). Bound to `machine` and/or `domain_uuid`."""
    if kind not in KINDS:
        raise UserError(f"an enrollment token's kind is token or host, not {kind!r}")
    uuid = None
    if domain_uuid is not None:
        uuid = _norm_uuid(domain_uuid)
        if uuid is None:
            raise UserError(f"{domain_uuid!r:.60} is not a UUID")
    if kind == "host" and uuid is None:
        raise UserError("a host token is bound to the domain UUID of the VM netslate defines")
    if machine is None and uuid is None:
        raise UserError("an enrollment token is bound to a machine or a domain UUID")
    ttl = ttl_seconds if ttl_seconds is not None else (HOST_TTL if kind == "host" else ADMIN_TTL)
    if not 60 <= ttl <= MAX_TTL:
        raise UserError(f"an enrollment token lives 60 to {MAX_TTL} seconds")
    token = new_token()
    now = utcnow()
    with ctx.db.session(write=True) as s:
        mid = inventory.resolve(s, machine).id if machine is not None else None
        row = EnrollmentToken(sha256=token_hash(token), kind=kind, machine_id=mid, domain_uuid=uuid,
                              created_by=actor[:128], created_at=now, expires_at=now + dt.timedelta(seconds=ttl))
        s.add(row)
        # tokens that ended (used or expired) more than a day ago are of no more use to anyone
        s.execute(delete(EnrollmentToken).where(EnrollmentToken.expires_at < now - PRUNE_AFTER))
        s.flush()
        audit.record(s, actor, "enrollment.token.create", f"machine:{mid}" if mid else f"domain:{uuid}",
                     token=row.id, kind=kind, ttl_seconds=ttl)
        return _row_dict(row, token)


def list_tokens(ctx, machine: str | int | None = None) -> list[dict]:
    """Tokens (never the token itself), newest first."""
    with ctx.db.session() as s:
        q = select(EnrollmentToken).order_by(EnrollmentToken.id.desc())
        if machine is not None:
            q = q.where(EnrollmentToken.machine_id == inventory.resolve(s, machine).id)
        return [_row_dict(r) for r in s.scalars(q)]


def revoke(ctx, token_id: int, actor: str) -> dict:
    """End an unused token now (it can no longer be exchanged)."""
    with ctx.db.session(write=True) as s:
        row = s.get(EnrollmentToken, token_id)
        if row is None:
            raise NotFound(f"no enrollment token {token_id}")
        now = utcnow()
        if row.used_at is None and row.expires_at > now:
            row.expires_at = now
        audit.record(s, actor, "enrollment.token.revoke", f"enrollment-token:{row.id}")
        return _row_dict(row)


def exchange(ctx, token: str, uuid: str | None = None, macs: list[str] | None = None, remote: str | None = None,
             in_clear: bool = False) -> Exchanged:
    """Trade a one-time token for a long-lived machine credential (once). `uuid`/`macs`: what the
    machine reports about itself (a domain-bound token needs the matching SMBIOS UUID).
    `in_clear`: the request came over plain HTTP to a server that has a TLS listener. No credential
    is issued in clear then (NeedsTls), and the token, which crossed the network in clear, is spent
    so whoever saw it cannot trade it over TLS."""
    if not isinstance(token, str) or not TOKEN_RE.match(token):
        raise TokenRefused("not an enrollment token (nse_ followed by 43 characters)")
    sha = token_hash(token)
    now = utcnow()
    if in_clear:
        with ctx.db.session(write=True) as s:
            row = s.scalar(select(EnrollmentToken).where(EnrollmentToken.sha256 == sha))
            if row is not None and s.execute(update(EnrollmentToken).where(EnrollmentToken.id == row.id, EnrollmentToken.used_at.is_(None))
                                             .values(used_at=now, used_from=(remote or "")[:45] or None)).rowcount == 1:
                audit.record(s, "anonymous", "enrollment.token.refused.plain-http", f"enrollment-token:{row.id}", remote=remote)
        raise NeedsTls("this server issues machine credentials only over HTTPS (its TLS listener); the token crossed "
                       "the network in clear and is spent: make a new one (netslate machine enroll)")
    claimed = _norm_uuid(uuid)
    refused: tuple[UserError, str, int, dict] | None = None
    with ctx.db.session(write=True) as s:
        row = s.scalar(select(EnrollmentToken).where(EnrollmentToken.sha256 == sha))
        if row is None or not hmac.compare_digest(row.sha256, sha):
            raise TokenRefused("unknown enrollment token")
        if row.used_at is not None:
            refused = (TokenUsed(f"this enrollment token was used already (at {row.used_at.isoformat()}Z); "
                                 "ask for a new one (netslate machine enroll)"), "reuse", row.id, {})
        elif row.expires_at <= now:
            refused = (TokenRefused(f"this enrollment token expired at {row.expires_at.isoformat()}Z"), "expired", row.id, {})
        elif row.domain_uuid and row.domain_uuid != claimed:
            refused = (TokenRefused("this enrollment token is bound to another machine (its SMBIOS UUID differs)"),
                       "wrong-uuid", row.id, {"claimed": claimed})
        else:
            # Single use: only one transaction can flip used_at from NULL.
            won = s.execute(update(EnrollmentToken).where(EnrollmentToken.id == row.id, EnrollmentToken.used_at.is_(None))
                            .values(used_at=now, used_from=(remote or "")[:45] or None)).rowcount
            if won != 1:
                refused = (TokenUsed("this enrollment token was used already; ask for a new one (netslate machine enroll)"),
                           "reuse", row.id, {})
        kind, mid, token_id, domain_uuid = row.kind, row.machine_id, row.id, row.domain_uuid
        if refused is None and mid is None:
            m = inventory.by_uuid(s, domain_uuid)
            mid = m.id if m is not None else None
    if refused is not None:
        exc, what, tid, detail = refused
        with ctx.db.session() as s:  # the refusal is audited (the transaction above saw nothing to write)
            audit.record(s, "anonymous", f"enrollment.token.refused.{what}", f"enrollment-token:{tid}", remote=remote, **detail)
        raise exc
    if mid is None:
        # A VM netslate defined that never PXE-booted: register it now (its UUID is netslate's own).
        mid = _register(ctx, domain_uuid, macs or [], token_id)
    cred = credentials.issue(ctx, mid, KINDS[kind], f"machine:{mid}")
    with ctx.db.session(write=True) as s:
        s.execute(update(EnrollmentToken).where(EnrollmentToken.id == token_id).values(used_by=mid))
        audit.record(s, f"machine:{mid}", "enrollment.token.exchange", f"machine:{mid}", token=token_id,
                     trust=KINDS[kind], remote=remote)
    return Exchanged(mid, cred, KINDS[kind])


def _register(ctx, uuid: str, macs: list[str], token_id: int) -> int:
    good = []
    for mac in macs[:8]:
        try:
            good.append(inventory.normalize_mac(mac))
        except UserError:
            continue
    try:
        return inventory.add_machine(ctx, good, uuid=uuid, actor=f"enrollment-token:{token_id}")["id"]
    except Conflict:
        try:
            return inventory.add_machine(ctx, [], uuid=uuid, actor=f"enrollment-token:{token_id}")["id"]
        except Conflict:
            return inventory.machine_id(ctx, f"uuid:{uuid}")
