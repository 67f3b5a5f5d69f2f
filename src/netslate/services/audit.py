"""The audit log: who did what, when — read with filters, one page at a time (newest first).

Entries are written by the parts in the same transaction as the change (`netslate.audit.record`);
this service only reads them. Reading needs the viewer role: the log names users and machines.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel

from netslate import audit
from netslate.errors import UserError
from netslate.services.framework import Service, op

MAX_LIMIT = 500


class AuditRecord(BaseModel):
    id: int
    at: str | None
    actor: str  # token:NAME, user:NAME, machine:ID, local:USER, boot, ...
    action: str  # machine.approve, config.publish, auth.login, ...
    target: str
    detail: dict[str, Any]


class AuditPage(BaseModel):
    total: int
    offset: int
    limit: int
    entries: list[AuditRecord]


class AuditService(Service):
    noun = "audit"

    @op("GET", "/api/v1/audit", role="viewer")
    def list(self, actor: str | None = None, action: str | None = None, target: str | None = None,
             since: str | None = None, until: str | None = None, offset: int = 0, limit: int = 50) -> AuditPage:
        """Audit entries, newest first. actor/target exact or a prefix ending in ':' (user:); action
        exact or a prefix ending in '.' (machine.); since/until ISO times (UTC)."""
        raise NotImplementedError


def _time(value: str | None, what: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"{what} must be an ISO time such as 2025-01-31 or 2025-01-31T08:00:00Z") from None
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None) if t.tzinfo else t


class LocalAudit(AuditService):
    def list(self, actor: str | None = None, action: str | None = None, target: str | None = None,
             since: str | None = None, until: str | None = None, offset: int = 0, limit: int = 50) -> AuditPage:
        if not 1 <= limit <= MAX_LIMIT:
            raise UserError(f"limit must be between 1 and {MAX_LIMIT}")
        if offset < 0:
            raise UserError("offset must not be negative")
        with self.parts.ctx.db.session() as s:
            total, rows = audit.entries(s, actor, action, target, _time(since, "since"), _time(until, "until"), offset, limit)
        return AuditPage(total=total, offset=offset, limit=limit, entries=[AuditRecord(**r) for r in rows])
