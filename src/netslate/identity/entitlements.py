"""Roles and pool entitlements for people, and the one resolution that says why.

An entitlement grants a role (admin/operator/viewer) or a desktop pool to a directory group or a
single user. A directory group counts only when some entitlement names it (it is "registered");
every other group found for a user is listed as ignored by `explain`, so a group that "does not
stick" shows up with the reason (OpenUDS #145). Group subjects match a group's name (its cn)
or its full DN, case-insensitively; user subjects match the login name, case-insensitively.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from netslate import audit
from netslate.errors import NotFound, UserError
from netslate.identity.caller import ROLES
from netslate.identity.models import Entitlement
from netslate.names import check_name

SUBJECT_KINDS = ("group", "user")
GRANTS = ("role", "pool")


def norm_dn(value: str) -> str:
    """Lower-case, without the spaces around ',' and '=' that directories print differently."""
    parts = [p.strip() for p in value.split(",")]
    return ",".join("=".join(s.strip() for s in p.split("=", 1)) for p in parts).lower()


def _check_subject(kind: str, subject: str) -> str:
    if kind not in SUBJECT_KINDS:
        raise UserError(f"unknown subject kind {kind!r}: choose group or user")
    subject = (subject or "").strip()
    if not subject or len(subject) > 1024 or any(ord(c) < 32 for c in subject):
        raise UserError(f"invalid {kind} {subject!r}: 1-1024 printable characters")
    return subject


def add_entitlement(ctx, subject_kind: str, subject: str, grant: str, value: str, actor: str) -> dict:
    subject = _check_subject(subject_kind, subject)
    if grant == "role":
        if value not in ROLES:
            raise UserError(f"unknown role {value!r}: choose one of {', '.join(ROLES)}")
    elif grant == "pool":
        check_name(value, "pool name")
    else:
        raise UserError(f"unknown grant {grant!r}: choose role or pool")
    with ctx.db.session(write=True) as s:
        for row in s.scalars(select(Entitlement).where(Entitlement.subject_kind == subject_kind, Entitlement.grant == grant,
                                                       Entitlement.value == value)):
            if _same_subject(subject_kind, row.subject, subject):
                raise UserError(f"{subject_kind} {subject!r} already has {grant} {value!r} (entitlement #{row.id})")
        row = Entitlement(subject_kind=subject_kind, subject=subject, grant=grant, value=value)
        s.add(row)
        s.flush()
        audit.record(s, actor, "entitlement.add", f"{subject_kind}:{subject}", grant=grant, value=value, id=row.id)
        return _plain(row)


def list_entitlements(ctx) -> list[dict]:
    with ctx.db.session() as s:
        return [_plain(r) for r in s.scalars(select(Entitlement).order_by(Entitlement.id))]


def remove_entitlement(ctx, ident: int, actor: str) -> dict:
    with ctx.db.session(write=True) as s:
        row = s.get(Entitlement, ident)
        if row is None:
            raise NotFound(f"no entitlement #{ident}")
        out = _plain(row)
        s.delete(row)
        audit.record(s, actor, "entitlement.remove", f"{row.subject_kind}:{row.subject}", grant=row.grant, value=row.value, id=ident)
        return out


def _plain(row: Entitlement) -> dict:
    return {"id": row.id, "subject_kind": row.subject_kind, "subject": row.subject, "grant": row.grant, "value": row.value}


def _same_subject(kind: str, a: str, b: str) -> bool:
    if kind == "group":
        return norm_dn(a) == norm_dn(b)
    return a.lower() == b.lower()


# ---------------------------------------------------------------- resolution


@dataclass
class Resolution:
    """What a person resolves to: role, pools, and for each group whether it counted and why."""

    user: str
    role: str | None = None
    pools: list[str] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)  # {name, dn, registered, grants: [...]}
    reasons: list[str] = field(default_factory=list)


def _group_matches(subject: str, group: dict) -> bool:
    s = norm_dn(subject)
    return s == (group.get("name") or "").lower() or (bool(group.get("dn")) and s == norm_dn(group["dn"]))


def resolve(ctx, user: str, groups: list[dict], local_role: str | None = None, session=None) -> Resolution:
    """Role and pools of `user` with directory `groups` ([{name, dn}]) and a local user's own role."""
    if session is None:
        with ctx.db.session() as s:
            return resolve(ctx, user, groups, local_role, s)
    rows = list(session.scalars(select(Entitlement).order_by(Entitlement.id)))
    out = Resolution(user=user)
    roles: list[str] = []
    pools: set[str] = set()
    if local_role:
        roles.append(local_role)
        out.reasons.append(f"local user {user}: role {local_role}")

    def grant(row: Entitlement, via: str) -> str:
        if row.grant == "role":
            roles.append(row.value)
        else:
            pools.add(row.value)
        text = f"{via} → {row.grant} {row.value} (entitlement #{row.id})"
        out.reasons.append(text)
        return f"{row.grant} {row.value}"

    for row in rows:
        if row.subject_kind == "user" and row.subject.lower() == user.lower():
            grant(row, f"user {user}")
    for g in groups:
        matched = [r for r in rows if r.subject_kind == "group" and _group_matches(r.subject, g)]
        entry = {"name": g.get("name"), "dn": g.get("dn"), "registered": bool(matched), "grants": [],
                 "nested": bool(g.get("nested"))}
        for row in matched:
            entry["grants"].append(grant(row, f"group {g.get('name')}"))
        if not matched:
            out.reasons.append(f"group {g.get('name')} ({g.get('dn') or 'no DN'}): no entitlement names it, ignored")
        out.groups.append(entry)
    out.role = max(roles, key=ROLES.index) if roles else None
    out.pools = sorted(pools)
    if out.role is None and not out.pools:
        out.reasons.append(f"{user} has no role and no pool: nothing registered matches")
    return out
