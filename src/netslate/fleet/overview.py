"""The fleet at a glance, counted by the database (GROUP BY), never row by row in Python.

- states: the stored machine state, or `offline` when the last agent report is older than the cut-off
  (the per-machine view also says offline when a boot started and never reported; the counts here do
  not look at boot events — a slightly simpler rule that keeps the dashboard one query);
- apart: machines running from a cached image, from a last-known-good (cached) configuration, or on
  the image's defaults (no configuration);
- what the agents last reported running: per image and version, and per configuration generation.
"""

from __future__ import annotations

from sqlalchemy import and_, case, func, select

from netslate.store.models import Machine


def _fleet(key: str):
    return Machine.status["fleet"][key].as_string()


def _grouped(*columns, where=None):
    """SELECT columns..., count(*) GROUP BY columns, through a subquery: PostgreSQL does not see a
    JSON path with bound parameters in SELECT and in GROUP BY as the same expression (GroupingError)."""
    inner = select(*(c.label(f"c{i}") for i, c in enumerate(columns)))
    sub = (inner.where(where) if where is not None else inner).subquery()
    cols = list(sub.c)
    return select(*cols, func.count()).group_by(*cols)


def counts(ctx, offline_before: str) -> dict:
    received = _fleet("received_at")
    state = case((and_(received.is_not(None), received < offline_before), "offline"), else_=Machine.state)
    with ctx.db.session() as s:
        states: dict[str, int] = {}
        apart = {"image_from_cache": 0, "config_from_cache": 0, "image_defaults": 0}
        total = 0
        for st, image_source, config_source, n in s.execute(_grouped(state, _fleet("image_source"), _fleet("config_source"))):
            states[st] = states.get(st, 0) + n
            total += n
            apart["image_from_cache"] += n if image_source == "cache" else 0
            apart["config_from_cache"] += n if config_source == "cache" else 0
            apart["image_defaults"] += n if config_source == "none" else 0
        version = _fleet("version")
        images = [{"image": i, "version": int(v) if v is not None else None, "machines": n}
                  for i, v, n in s.execute(_grouped(_fleet("image"), version, where=_fleet("image").is_not(None)))]
        generation = _fleet("generation")
        generations = [{"generation": int(g) if g is not None else None, "machines": n}
                       for g, n in s.execute(_grouped(generation, where=received.is_not(None)))]
    return {"machines": total, "states": states, **apart, "images": images, "generations": generations}
