"""Explain one machine's configuration: its resolved document (secrets redacted, templates not
rendered), the chain of nodes it came from, and for every leaf the node that set it."""

from __future__ import annotations

from netslate.config import machines, state, tree
from netslate.config.documents import redact
from netslate.config.generation_cache import cache_for
from netslate.config.leases import explain_lease
from netslate.config.resolution import effective_generation
from netslate.config.snapshots import generation_row
from netslate.config.workingcopy import display_key


def explain(ctx, machine: str | int, generation: int | None = None) -> dict:
    """Resolved document (secrets redacted, templates not rendered) and, per leaf, the node it came from."""
    with ctx.db.session() as s:
        m = machines.find(s, machine)
        st = state.read(s)
        gen = effective_generation(st, m.tree_path) if generation is None else generation
        if generation is not None and generation != 0:
            generation_row(s, generation)
        t = cache_for(ctx).get(ctx, gen)
        doc, prov = t.resolve_machine(m.tree_path, m.id)
        chain = t.chain(m.tree_path, m.id)
        ip_lease = explain_lease(ctx, m.id, doc)
        return {
            "machine": {"id": m.id, "name": m.name, "tree_path": m.tree_path},
            "generation": gen,
            "canary": gen == st.canary_generation,
            "chain": [{"node": display_key(s, c), "level": tree.level(c)} for c in chain],
            "document": redact(doc),
            "sources": {p: display_key(s, src) for p, src in sorted(prov.items())},
            "note": "templates are shown unrendered; secret values are never shown",
            **({"ip_lease": ip_lease} if ip_lease is not None else {}),
        }
