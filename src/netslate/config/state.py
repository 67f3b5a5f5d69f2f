"""The rollout state row (`config_state`, id 1): current, newest and canary generation, the working
copy's base, and the change serial that wakes long-polls. Database edge.

Writers take the config write lock first (`lock`: `BEGIN IMMEDIATE` on SQLite, `SELECT ... FOR
UPDATE` elsewhere), so of two concurrent publishes exactly one wins.
"""

from __future__ import annotations

from types import SimpleNamespace

from sqlalchemy import select
from sqlalchemy.orm import Session

from netslate.config.models import ConfigState

_S = ConfigState.__table__
_NO_STATE = SimpleNamespace(current=0, latest=0, canary_generation=None, canary_path=None, serial=0)


def _new() -> ConfigState:
    return ConfigState(id=1, current=0, latest=0, working_base=0, serial=0)


def lock(s: Session) -> ConfigState:
    """Take the config write lock for this transaction and return the state row."""
    if s.get_bind().dialect.name == "sqlite":
        s.connection().exec_driver_sql("BEGIN IMMEDIATE")
        st = s.get(ConfigState, 1)
    else:
        st = s.scalar(select(ConfigState).where(ConfigState.id == 1).with_for_update())
    if st is None:
        st = _new()
        s.add(st)
        s.flush()
    return st


def read(s: Session) -> ConfigState:
    """The state row as it is (a blank one, not added, before the first change)."""
    st = s.get(ConfigState, 1)
    return st if st is not None else _new()


def read_core(conn):
    """The columns a bundle needs, with one Core query (current, latest, canary_*, serial)."""
    row = conn.execute(select(_S.c.current, _S.c.latest, _S.c.canary_generation, _S.c.canary_path, _S.c.serial).where(_S.c.id == 1)).first()
    return row if row is not None else _NO_STATE


def as_dict(st: ConfigState) -> dict:
    return {
        "current": st.current,
        "latest": st.latest,
        "canary": {"generation": st.canary_generation, "path": st.canary_path} if st.canary_generation else None,
        "working_base": st.working_base,
    }


def bump_serial(s: Session) -> int:
    """Mark a change that can alter bundles without a new generation (a placement); no write lock."""
    st = s.get(ConfigState, 1)
    if st is None:
        st = _new()
        s.add(st)
    st.serial = (st.serial or 0) + 1
    return st.serial


def serial(ctx) -> int:
    """The change serial (what the long-poll watcher compares)."""
    with ctx.db.session() as s:
        st = s.get(ConfigState, 1)
        return st.serial if st else 0
