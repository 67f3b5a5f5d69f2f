"""The audit log: who did what, when. Written in the same transaction as the change itself."""

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from netslate.store.models import AuditEntry


def record(session: Session, actor: str, action: str, target: str, **detail: Any) -> None:
    session.add(AuditEntry(actor=actor, action=action, target=target, detail=detail))


def default_actor() -> str:
    import getpass
    import os

    return os.environ.get("NETSLATE_ACTOR") or f"local:{getpass.getuser()}"


def entries(session: Session, actor: str | None = None, action: str | None = None, target: str | None = None,
            since=None, until=None, offset: int = 0, limit: int = 50) -> tuple[int, list[dict[str, Any]]]:
    """(how many entries match, one page of them, newest first). `actor`/`target` match exactly or,
    ending in ':', as a prefix ('user:' = every user); `action` exactly or, ending in '.', as a prefix."""
    conds = []
    for column, value, sep in ((AuditEntry.actor, actor, ":"), (AuditEntry.target, target, ":"), (AuditEntry.action, action, ".")):
        if value:
            if value.endswith(sep):
                escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                conds.append(column.like(escaped + "%", escape="\\"))
            else:
                conds.append(column == value)
    if since is not None:
        conds.append(AuditEntry.at >= since)
    if until is not None:
        conds.append(AuditEntry.at < until)
    total = session.scalar(select(func.count()).select_from(AuditEntry).where(*conds)) or 0
    rows = session.scalars(select(AuditEntry).where(*conds).order_by(AuditEntry.id.desc()).offset(offset).limit(limit))
    return total, [{"id": e.id, "at": e.at.isoformat() + "Z" if e.at else None, "actor": e.actor, "action": e.action,
                    "target": e.target, "detail": e.detail or {}} for e in rows]
