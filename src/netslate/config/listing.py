"""The working copy's nodes, listed (the dashboard's configuration tree)."""

from __future__ import annotations

from sqlalchemy import select

from netslate.config import tree
from netslate.config.models import ConfigWorkingNode
from netslate.config.workingcopy import display_key


def _leaves(doc, prefix: str = "") -> int:
    if isinstance(doc, dict) and doc:
        return sum(_leaves(v, f"{prefix}{k}.") for k, v in doc.items())
    return 1


def working_nodes(ctx) -> list[dict]:
    """Every node of the working copy, tree paths first in path order, then machines' own documents."""
    with ctx.db.session() as s:
        rows = list(s.scalars(select(ConfigWorkingNode)))
        out = [{"path": display_key(s, r.path), "key": r.path, "level": tree.level(r.path),
                "settings": _leaves(r.document) if r.document else 0, "revision": r.revision,
                "updated_by": r.updated_by, "updated_at": r.updated_at.isoformat() + "Z" if r.updated_at else None} for r in rows]
    return sorted(out, key=lambda n: (tree.is_machine_key(n["key"]), n["key"]))
