"""The audit log: who did what, when. Written in the same transaction as the change itself."""

from typing import Any

from sqlalchemy.orm import Session

from netslate.store.models import AuditEntry


def record(session: Session, actor: str, action: str, target: str, **detail: Any) -> None:
    session.add(AuditEntry(actor=actor, action=action, target=target, detail=detail))


def default_actor() -> str:
    import getpass
    import os

    return os.environ.get("NETSLATE_ACTOR") or f"local:{getpass.getuser()}"
