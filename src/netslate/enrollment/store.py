"""The enrollment tables' transactions: TPM enrollments, single-use challenges, site policies.

Challenges are consumed with one conditional UPDATE (`used_at IS NULL AND expires_at > now`), so a
challenge answers once even when two requests race for it, and an answer that comes back a second
time (a replay) finds it used.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
import secrets as pysecrets
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlalchemy.orm import Session

from netslate import audit
from netslate.enrollment.models import EnrollmentChallenge, EnrollmentPolicy, EnrollmentTpm
from netslate.errors import Conflict, NotFound, UserError

STATUSES = ("pending", "approved", "revoked")
POLICY_KINDS = ("ek", "serial", "subnet")
CHALLENGE_TTL = dt.timedelta(minutes=5)
PRUNE_AFTER = dt.timedelta(hours=1)  # used or expired challenges are deleted this long after expiry
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_SERIAL = re.compile(r"[\x21-\x7e]{1,128}\Z")


class EnrollmentRefused(UserError):
    """The machine may not have a credential: revoked, unknown or replayed challenge, bad proof (403)."""

    http_status = 403


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() + "Z" if t else None


def record(row: EnrollmentTpm) -> dict[str, Any]:
    """An enrollment as the API shows it (public keys only: nothing here is secret)."""
    return {
        "id": row.id, "machine_id": row.machine_id, "status": row.status, "flags": list(row.flags or []),
        "ek_sha256": row.ek_sha256, "ek_cert": bool(row.ek_cert), "ak_name": row.ak_name,
        "activated": row.activated_ak is not None and row.activated_ak == row.ak_name,
        "claimed": dict(row.claimed or {}), "remote": row.remote, "approved_by": row.approved_by,
        "created_at": _iso(row.created_at), "approved_at": _iso(row.approved_at),
        "activated_at": _iso(row.activated_at), "last_attested_at": _iso(row.last_attested_at),
    }


# ---------------------------------------------------------------- enrollments


def by_ek(s: Session, ek_sha256: str) -> EnrollmentTpm | None:
    return s.scalar(select(EnrollmentTpm).where(EnrollmentTpm.ek_sha256 == ek_sha256))


def of_machine(s: Session, machine_id: int) -> list[EnrollmentTpm]:
    return list(s.scalars(select(EnrollmentTpm).where(EnrollmentTpm.machine_id == machine_id).order_by(EnrollmentTpm.id)))


def get(s: Session, enrollment_id: int) -> EnrollmentTpm:
    row = s.get(EnrollmentTpm, enrollment_id)
    if row is None:
        raise NotFound(f"no TPM enrollment {enrollment_id}")
    return row


def create(s: Session, **fields) -> EnrollmentTpm:
    row = EnrollmentTpm(**fields)
    s.add(row)
    try:
        s.flush()
    except DbIntegrityError:
        raise Conflict("this TPM is enrolling from another request right now; try again") from None
    return row


def list_enrollments(ctx, machine_id: int | None = None, status: str | None = None) -> list[dict]:
    if status is not None and status not in STATUSES:
        raise UserError(f"unknown status {status!r}: choose one of {', '.join(STATUSES)}")
    with ctx.db.session() as s:
        q = select(EnrollmentTpm).order_by(EnrollmentTpm.id)
        if machine_id is not None:
            q = q.where(EnrollmentTpm.machine_id == machine_id)
        if status is not None:
            q = q.where(EnrollmentTpm.status == status)
        return [record(r) for r in s.scalars(q)]


def identity_flags(s: Session, machine_ids: list[int] | None = None) -> dict[int, list[str]]:
    """Machine id → flags of its enrollments still waiting (e.g. `identity_conflict`), for the fleet view."""
    q = select(EnrollmentTpm.machine_id, EnrollmentTpm.flags).where(EnrollmentTpm.status == "pending")
    if machine_ids is not None:
        q = q.where(EnrollmentTpm.machine_id.in_(machine_ids))
    out: dict[int, list[str]] = {}
    for machine_id, flags in s.execute(q):
        for f in flags or []:
            if f not in out.setdefault(machine_id, []):
                out[machine_id].append(f)
    return out


# ---------------------------------------------------------------- challenges


def new_challenge(s: Session, row: EnrollmentTpm, kind: str, *, expect: bytes | None = None,
                  nonce: bytes | None = None, ttl: dt.timedelta = CHALLENGE_TTL) -> EnrollmentChallenge:
    t = now()
    s.execute(delete(EnrollmentChallenge).where(EnrollmentChallenge.expires_at < t - PRUNE_AFTER))
    c = EnrollmentChallenge(handle=pysecrets.token_hex(16), enrollment_id=row.id, kind=kind, ak_name=row.ak_name,
                            expect_sha256=hashlib.sha256(expect).hexdigest() if expect is not None else None,
                            nonce=nonce.hex() if nonce is not None else None, expires_at=t + ttl, created_at=t)
    s.add(c)
    s.flush()
    return c


def consume(ctx, handle: str, kind: str) -> dict[str, Any]:
    """Use a challenge once (its own transaction, committed even if the answer turns out wrong)."""
    if not isinstance(handle, str) or not re.fullmatch(r"[0-9a-f]{32}", handle):
        raise EnrollmentRefused("unknown challenge")
    t = now()
    refusal = None
    with ctx.db.session() as s:
        done = s.execute(update(EnrollmentChallenge).where(
            EnrollmentChallenge.handle == handle, EnrollmentChallenge.kind == kind,
            EnrollmentChallenge.used_at.is_(None), EnrollmentChallenge.expires_at > t).values(used_at=t)).rowcount
        c = s.scalar(select(EnrollmentChallenge).where(EnrollmentChallenge.handle == handle))
        if not done:
            if c is None or c.kind != kind:
                refusal = "unknown challenge"
            elif c.used_at is not None:
                refusal = "this challenge was answered already (a replayed answer)"
                machine = _machine_of(s, c)
                audit.record(s, f"machine:{machine}", "enrollment.tpm.replay", f"machine:{machine}", kind=kind)
            else:
                refusal = "this challenge has expired; start again"
        else:
            result = {"enrollment_id": c.enrollment_id, "ak_name": c.ak_name, "expect_sha256": c.expect_sha256, "nonce": c.nonce}
    if refusal:
        raise EnrollmentRefused(refusal)
    return result


def _machine_of(s: Session, c: EnrollmentChallenge) -> int | None:
    row = s.get(EnrollmentTpm, c.enrollment_id)
    return row.machine_id if row is not None else None


# ---------------------------------------------------------------- site policies


def check_policy(kind: str, value: str) -> str:
    if kind not in POLICY_KINDS:
        raise UserError(f"unknown policy kind {kind!r}: choose one of {', '.join(POLICY_KINDS)}")
    value = value.strip()
    if kind == "ek":
        value = value.lower()
        if not _HEX64.match(value):
            raise UserError("an EK policy names the EK's SHA-256 fingerprint (64 hex digits, `machine enrollments` shows it)")
    elif kind == "serial":
        if not _SERIAL.match(value):
            raise UserError("a serial is 1 to 128 printable characters without spaces")
    else:
        try:
            value = str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise UserError(f"not a subnet: {value!r} (e.g. 10.0.0.0/24)") from None
    return value


def add_policy(ctx, kind: str, value: str, actor: str) -> dict:
    value = check_policy(kind, value)
    try:
        with ctx.db.session() as s:
            if s.scalar(select(EnrollmentPolicy).where(EnrollmentPolicy.kind == kind, EnrollmentPolicy.value == value)):
                raise Conflict(f"the {kind} policy {value} exists already")
            p = EnrollmentPolicy(kind=kind, value=value, created_by=actor[:128], created_at=now())
            s.add(p)
            s.flush()
            audit.record(s, actor, "enrollment.policy.add", f"enrollment-policy:{p.id}", kind=kind, value=value)
            return _policy(p)
    except DbIntegrityError:
        raise Conflict(f"the {kind} policy {value} exists already") from None


def remove_policy(ctx, policy_id: int, actor: str) -> dict:
    with ctx.db.session() as s:
        p = s.get(EnrollmentPolicy, policy_id)
        if p is None:
            raise NotFound(f"no enrollment policy {policy_id}")
        out = _policy(p)
        s.delete(p)
        audit.record(s, actor, "enrollment.policy.rm", f"enrollment-policy:{policy_id}", kind=p.kind, value=p.value)
        return out


def list_policies(ctx) -> list[dict]:
    with ctx.db.session() as s:
        return [_policy(p) for p in s.scalars(select(EnrollmentPolicy).order_by(EnrollmentPolicy.id))]


def _policy(p: EnrollmentPolicy) -> dict:
    return {"id": p.id, "kind": p.kind, "value": p.value, "created_by": p.created_by, "created_at": _iso(p.created_at)}


def policy_match(s: Session, ek_sha256: str, serial: str | None, remote: str | None) -> str | None:
    """The first site policy that approves this TPM ("ek", "serial", "subnet"), or None."""
    rows = list(s.scalars(select(EnrollmentPolicy).order_by(EnrollmentPolicy.id)))
    address = None
    if remote:
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            address = None
    for kind in POLICY_KINDS:  # strongest first
        for p in rows:
            if p.kind != kind:
                continue
            if kind == "ek" and p.value == ek_sha256:
                return "ek"
            if kind == "serial" and serial and p.value == serial:
                return "serial"
            if kind == "subnet" and address is not None:
                net = ipaddress.ip_network(p.value)
                if address.version == net.version and address in net:
                    return "subnet"
    return None
