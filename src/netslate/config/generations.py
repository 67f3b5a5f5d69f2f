"""Generations: publish the working copy (optionally as a canary), promote, roll back, reset the
working copy, history, a generation's diff, and the rollout status. Database edge.

Every change is one transaction with its audit entry, under the config write lock (`state.lock`).
After a change that can move machines between IP pools, stale leases are released
(`leases.sweep_stale`).
"""

from __future__ import annotations

import copy

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from netslate import audit
from netslate.canonical import digest_of
from netslate.config import leases, state, tree
from netslate.config.documents import node_diff
from netslate.config.models import ConfigGeneration, ConfigState, ConfigWorkingNode
from netslate.config.snapshots import generation_row, generation_snapshot, working_snapshot
from netslate.config.workingcopy import load_snapshot
from netslate.errors import Conflict, UserError
from netslate.store.db import utcnow


def _new_generation(s: Session, st: ConfigState, snapshot: dict, actor: str, message: str, kind: str,
                    canary: str | None = None, rollback_of: int | None = None) -> ConfigGeneration:
    old = generation_snapshot(s, st.latest)
    number = st.latest + 1
    nd = node_diff(old, snapshot)
    row = ConfigGeneration(
        number=number, author=actor, message=message, kind=kind, canary_path=canary,
        rollback_of=rollback_of, snapshot=snapshot, diff={"nodes": nd}, digest=digest_of(snapshot),
        created_at=utcnow(),
    )
    s.add(row)
    st.latest = number
    st.serial = st.serial + 1
    return row


def publish(ctx, message: str, actor: str, canary: str | None = None, expect_base: int | None = None) -> dict:
    """Turn the working copy into the next generation, atomically (effective at once, or for a canary subtree)."""
    if not message or not message.strip():
        raise UserError("a publish needs a message (-m TEXT)")
    if canary is not None:
        canary = tree.normalize(canary)
    try:
        with ctx.db.session() as s:
            st = state.lock(s)
            if expect_base is not None and expect_base != st.latest:
                raise Conflict(f"generation {st.latest} is the newest, but you expected to publish on top of {expect_base}; review `netslate config diff` again")
            if st.working_base != st.latest:
                raise Conflict(
                    f"the working copy is based on generation {st.working_base} but generation {st.latest} was published since; "
                    "nothing was published (see `netslate config diff`, then `netslate config reset` to start again from the newest generation)"
                )
            if st.canary_generation is not None:
                raise Conflict(f"generation {st.canary_generation} is still a canary on {st.canary_path}: run `netslate config promote` or `netslate config rollback` first")
            snapshot = working_snapshot(s)
            if snapshot == generation_snapshot(s, st.latest) and st.latest > 0:
                raise UserError("nothing to publish: the working copy equals generation %d" % st.latest)
            row = _new_generation(s, st, snapshot, actor, message.strip(), "publish", canary=canary)
            if canary is not None:
                st.canary_generation = row.number
                st.canary_path = canary
            else:
                st.current = row.number
            st.working_base = row.number
            audit.record(s, actor, "config.publish", f"config/generation/{row.number}",
                         message=row.message, canary=canary, digest=row.digest, diff=row.diff)
            s.flush()
            out = {"generation": row.number, "digest": row.digest, "changes": len(row.diff["nodes"]), **state.as_dict(st)}
    except IntegrityError:
        raise Conflict("another publish won the race for this generation number; nothing was published") from None
    leases.sweep_stale(ctx)
    return out


def promote(ctx, actor: str) -> dict:
    """Make the pending canary generation effective for every machine."""
    with ctx.db.session() as s:
        st = state.lock(s)
        if st.canary_generation is None:
            raise UserError("no canary is pending")
        gen, path = st.canary_generation, st.canary_path
        st.current = gen
        st.canary_generation = None
        st.canary_path = None
        st.serial = st.serial + 1
        audit.record(s, actor, "config.promote", f"config/generation/{gen}", canary=path)
        out = {"generation": gen, "promoted_from": path, **state.as_dict(st)}
    leases.sweep_stale(ctx)
    return out


def rollback(ctx, number: int, message: str, actor: str) -> dict:
    """Publish a new generation whose content equals generation `number` (machines see it as newer)."""
    if not message or not message.strip():
        raise UserError("a rollback needs a message (-m TEXT)")
    with ctx.db.session() as s:
        st = state.lock(s)
        target = generation_snapshot(s, number) if number != 0 else {}
        if number != 0:
            generation_row(s, number)
        working_clean = working_snapshot(s) == generation_snapshot(s, st.latest) and st.working_base == st.latest
        row = _new_generation(s, st, copy.deepcopy(target), actor, message.strip(), "rollback", rollback_of=number)
        dropped_canary = st.canary_path
        st.current = row.number
        st.canary_generation = None
        st.canary_path = None
        if working_clean:  # nobody has pending edits: follow the rollback
            load_snapshot(s, target, actor)
            st.working_base = row.number
        audit.record(s, actor, "config.rollback", f"config/generation/{row.number}", message=row.message,
                     rollback_of=number, dropped_canary=dropped_canary, digest=row.digest, diff=row.diff)
        s.flush()
        out = {"generation": row.number, "rollback_of": number, "working_copy_followed": working_clean, **state.as_dict(st)}
    leases.sweep_stale(ctx)
    return out


def reset_working(ctx, actor: str) -> dict:
    """Throw the working copy away and start again from the newest generation."""
    with ctx.db.session() as s:
        st = state.lock(s)
        load_snapshot(s, generation_snapshot(s, st.latest), actor)
        st.working_base = st.latest
        audit.record(s, actor, "config.reset", "config/working", base=st.latest)
        return {"working_base": st.latest}


def history(ctx, limit: int = 100) -> list[dict]:
    """Published generations, newest first."""
    with ctx.db.session() as s:
        rows = s.scalars(select(ConfigGeneration).order_by(ConfigGeneration.number.desc()).limit(limit))
        st = state.read(s)
        return [{
            "generation": r.number, "created_at": r.created_at.isoformat() + "Z", "author": r.author,
            "message": r.message, "kind": r.kind, "canary_path": r.canary_path, "rollback_of": r.rollback_of,
            "digest": r.digest, "nodes_changed": len(r.diff.get("nodes", [])),
            "current": r.number == st.current, "canary": r.number == st.canary_generation,
        } for r in rows]


def generation_diff(ctx, number: int) -> dict:
    """What generation `number` changed, per node (secrets redacted)."""
    with ctx.db.session() as s:
        row = generation_row(s, number)
        return {"generation": number, "message": row.message, "author": row.author, "nodes": row.diff.get("nodes", [])}


def status(ctx) -> dict:
    """Current, newest and canary generations, the working copy's base, whether it is stale, its node count."""
    with ctx.db.session() as s:
        st = state.read(s)
        return {**state.as_dict(st), "stale": st.working_base != st.latest,
                "nodes": s.scalar(select(func.count()).select_from(ConfigWorkingNode)) or 0}
