"""IP pool leases seen from the config side: which pool a machine's effective document asks for,
its lease for a bundle, explain's read-only view, and the sweep of leases no machine wants any more.

`ippools.py` keeps the pools and lease rows; this module decides, from resolution, who wants which.
"""

from __future__ import annotations

import logging
from typing import Callable

from netslate.config import ippools, machines, state
from netslate.config.generation_cache import cache_for
from netslate.config.resolution import effective_generation, pool_name

log = logging.getLogger(__name__)

NO_POOL_NAMED = "network.mode is 'pool' but network.pool names no pool"


def lease_wanted(ctx) -> Callable[[int, str], bool]:
    """(machine id, pool name) → does that machine still resolve to that pool (in its effective generation)?"""
    with ctx.db.engine.connect() as conn:
        st = state.read_core(conn)

    def wants(machine_id: int, pool: str) -> bool:
        with ctx.db.engine.connect() as conn:
            tree_path = machines.tree_path_of(conn, machine_id)
        if tree_path is None:
            return False
        gen = effective_generation(st, tree_path)
        doc, _ = cache_for(ctx).get(ctx, gen).resolve_machine(tree_path, machine_id)
        return pool_name(doc) == pool

    return wants


def machine_lease(ctx, machine_id: int, doc: dict) -> tuple[dict | None, str | None]:
    """(lease, error) for a resolved document in pool mode: leases an address if needed."""
    name = pool_name(doc)
    if not name:
        return None, NO_POOL_NAMED
    try:
        return ippools.lease_for(ctx, machine_id, name, wants=lease_wanted(ctx)), None
    except ippools.PoolError as exc:
        return None, str(exc)


def explain_lease(ctx, machine_id: int, doc: dict) -> dict | None:
    """Explain's view of the pool lease, read only: the held address, or why there is none yet."""
    name = pool_name(doc)
    if name is None:
        return None
    held = ippools.current_lease(ctx, machine_id)
    if held is not None and held["pool"] == name:
        return held
    if not name:
        return {"pool": None, "error": NO_POOL_NAMED}
    try:
        pool = ippools.show_pool(ctx, name)
    except ippools.NotFound:
        return {"pool": name, "error": f"IP pool {name!r} does not exist"}
    if pool["free"] <= 0:
        return {"pool": name, "error": f"IP pool {name!r} is exhausted: all {pool['size']} addresses are leased "
                                       "(stale leases are reclaimed at the next bundle request)"}
    return {"pool": name, "address": None, "note": "no address leased yet; the next bundle request leases one"}


def sweep_stale(ctx) -> None:
    """After a change that can move machines off an IP pool, release the leases they no longer use."""
    try:
        ippools.sweep(ctx, lease_wanted(ctx))
    except Exception:  # the change itself is committed; a later sweep or bundle catches up
        log.exception("releasing stale IP pool leases failed")
