"""Placing a machine in the tree (`config place`): takes effect at once (not staged in the working
copy), is audited, wakes long-polls through the change serial, and releases leases it made stale."""

from __future__ import annotations

from netslate import audit
from netslate.config import leases, machines, state, tree


def place(ctx, machine: str, path: str, actor: str) -> dict:
    path = tree.normalize(path)
    with ctx.db.session() as s:
        m = machines.find(s, machine)
        old = machines.set_tree_path(s, m, path)
        serial = state.bump_serial(s)
        audit.record(s, actor, "config.place", f"machine/{m.id}", old=old, new=path)
        out = {"id": m.id, "name": m.name, "tree_path": path, "previous": old, "serial": serial}
    leases.sweep_stale(ctx)
    return out
