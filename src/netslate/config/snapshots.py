"""Whole-tree snapshots (node key → document) read from the database: the working copy's, and a
published generation's (generation 0 is the empty tree)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from netslate.config.models import ConfigGeneration, ConfigWorkingNode
from netslate.errors import NotFound


def working_snapshot(s: Session) -> dict[str, dict]:
    return {n.path: n.document for n in s.scalars(select(ConfigWorkingNode).order_by(ConfigWorkingNode.path)) if n.document}


def generation_row(s: Session, number: int) -> ConfigGeneration:
    row = s.get(ConfigGeneration, number)
    if row is None:
        raise NotFound(f"no config generation {number}")
    return row


def generation_snapshot(s: Session, number: int) -> dict[str, dict]:
    return {} if number == 0 else generation_row(s, number).snapshot
