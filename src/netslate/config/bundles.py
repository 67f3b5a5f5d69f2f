"""Signed per-machine bundles: the machine's document resolved from its effective generation,
its IP pool lease, templates rendered, secrets only for the machine's own credential, and the image
version the boot side assigns it (`image_pin`, from an assignment function the caller passes: the
composition root's one boot engine). Database edge over `resolution.py` (pure).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Callable

from netslate.canonical import canonical_json
from netslate.config import machines, state
from netslate.config.credentials import credential_ok
from netslate.config.generation_cache import cache_for
from netslate.config.leases import machine_lease
from netslate.config.machines import MachineView
from netslate.config.resolution import Tree, effective_generation, pool_name, render, with_lease

BUNDLE_KIND = "netslate-bundle/1"

# machine id → {"name", "version", "digest", "source"} or None; the boot engine's `assignment`
Assign = Callable[[int], "dict | None"]


def machine_facts(m) -> dict:
    """The `machine` variable of templates."""
    return {
        "id": m.id, "name": m.name, "hostname": m.hostname, "uuid": m.uuid, "serial": m.serial,
        "manufacturer": m.manufacturer, "product": m.product, "labels": dict(m.labels or {}),
        "macs": sorted(x if isinstance(x, str) else x.mac for x in m.macs), "tree_path": m.tree_path,
        "ip_address": m.ip_address,
    }


def build_payload(m: MachineView, st, cache: Tree, generation: int, authenticated: bool, now: dt.datetime | None = None,
                  ctx=None) -> tuple[dict, str]:
    """The bundle payload for one machine, and its ETag (stable while the content is).
    With `ctx`, a document in network mode 'pool' gets the machine's leased address. `image_pin` is
    `m.image_pin` (bundle() sets it from the assignment function), else None."""
    doc, _ = cache.resolve_machine(m.tree_path, m.id)
    if ctx is not None and pool_name(doc) is not None:
        doc = with_lease(doc, *machine_lease(ctx, m.id, doc))
    machine = machine_facts(m)
    facts = (m.status or {}).get("facts") or {}
    doc = render(doc, machine, facts, generation)
    removed = False
    if "secrets" in doc and not authenticated:
        doc = {k: v for k, v in doc.items() if k != "secrets"}
        removed = True
    payload = {
        "kind": BUNDLE_KIND,
        "machine_id": m.id,
        "machine_name": m.name,
        "generation": generation,
        "tree_path": m.tree_path,
        "document": doc,
        "image_pin": getattr(m, "image_pin", None),
        "authenticated": authenticated,
        "secrets_removed": removed,
    }
    etag = '"' + hashlib.sha256(canonical_json(payload)).hexdigest()[:32] + '"'
    payload["issued_at"] = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return payload, etag


def bundle(ctx, machine: str | int, credential: str | None = None, assign: Assign | None = None) -> tuple[dict, str, dict]:
    """(signed envelope, etag, info) for one machine, resolved from its effective generation.
    `assign(machine_id)` gives the bundle's `image_pin`; without it the pin is None."""
    with ctx.db.read_connection() as conn:
        m = machines.view(conn, machine)
        st = state.read_core(conn)
    m.image_pin = assign(m.id) if assign is not None else None
    authenticated = credential_ok(m, credential)
    gen = effective_generation(st, m.tree_path)
    t = cache_for(ctx).get(ctx, gen)
    payload, etag = build_payload(m, st, t, gen, authenticated, ctx=ctx)
    return ctx.signing_key.sign(payload), etag, {"serial": st.serial, "machine_id": m.id}
