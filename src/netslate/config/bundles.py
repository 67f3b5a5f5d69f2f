"""Resolution per generation (cached), template rendering, and signed per-machine bundles.

A generation is immutable, so its resolved node chains are cached per process: resolving a
node costs one merge on top of its parent's cached result, and machines at the same node share it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select

from netslate.canonical import canonical_json
from netslate.config import merge, store, templates, tree
from netslate.config.models import ConfigState
from netslate.errors import NotFound, UserError
from netslate.store.models import Machine, MachineMac

BUNDLE_KIND = "netslate-bundle/1"


class Tree:
    """One snapshot (node key → document) with memoised resolution of node chains."""

    def __init__(self, snapshot: dict[str, dict]):
        self.snapshot = snapshot
        self._nodes: dict[str, tuple[dict, dict, tuple]] = {}
        self._lock = threading.Lock()

    def resolve_path(self, path: str) -> tuple[dict, dict, tuple]:
        """(document, provenance, chain of nodes that hold a document) for a tree path."""
        hit = self._nodes.get(path)
        if hit is not None:
            return hit
        if path == "/":
            doc = self.snapshot.get("/")
            result = (merge.resolve([("/", doc)]) + (("/",),)) if doc else ({}, {}, ())
        else:
            parent = path.rsplit("/", 1)[0] or "/"
            pdoc, pprov, pchain = self.resolve_path(parent)
            own = self.snapshot.get(path)
            result = (merge.merge(pdoc, pprov, own, path) + (pchain + (path,),)) if own else (pdoc, pprov, pchain)
        with self._lock:
            self._nodes[path] = result
        return result

    def resolve_machine(self, tree_path: str, machine_id: int) -> tuple[dict, dict]:
        doc, prov, _ = self.resolve_path(tree_path)
        own = self.snapshot.get(tree.machine_key(machine_id))
        if own:
            return merge.merge(doc, prov, own, tree.machine_key(machine_id))
        return doc, prov

    def chain(self, tree_path: str, machine_id: int) -> list[str]:
        _, _, chain = self.resolve_path(tree_path)
        out = list(chain)
        if self.snapshot.get(tree.machine_key(machine_id)):
            out.append(tree.machine_key(machine_id))
        return out


class GenerationCache:
    """Process-wide LRU of resolved generations (generation number → Tree)."""

    def __init__(self, size: int = 4):
        self.size = size
        self._trees: OrderedDict[int, Tree] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ctx, number: int) -> Tree:
        with self._lock:
            t = self._trees.get(number)
            if t is not None:
                self._trees.move_to_end(number)
                return t
        with ctx.db.session() as s:
            t = Tree(store.generation_snapshot(s, number))
        with self._lock:
            self._trees[number] = t
            while len(self._trees) > self.size:
                self._trees.popitem(last=False)
        return t


_caches: dict[str, GenerationCache] = {}


def cache_for(ctx) -> GenerationCache:
    key = str(ctx.db.url)
    c = _caches.get(key)
    if c is None:
        c = _caches.setdefault(key, GenerationCache())
    return c


# ---------------------------------------------------------------- per machine


def machine_facts(m) -> dict:
    return {
        "id": m.id, "name": m.name, "hostname": m.hostname, "uuid": m.uuid, "serial": m.serial,
        "manufacturer": m.manufacturer, "product": m.product, "labels": dict(m.labels or {}),
        "macs": sorted(x if isinstance(x, str) else x.mac for x in m.macs), "tree_path": m.tree_path,
        "ip_address": m.ip_address,
    }


@dataclass
class MachineView:
    """The columns a bundle needs, read with two Core queries (the ORM costs ~5x more per request)."""

    id: int
    name: str | None
    hostname: str | None
    uuid: str | None
    serial: str | None
    manufacturer: str | None
    product: str | None
    labels: dict
    tree_path: str
    ip_address: str | None
    status: dict
    credential_sha256: str | None
    macs: list = field(default_factory=list)
    image_pin: dict | None = None  # what the boot side assigns it now (image_assignment), set by bundle()


_M = Machine.__table__
_MM = MachineMac.__table__
_S = ConfigState.__table__
_COLS = [_M.c.id, _M.c.name, _M.c.hostname, _M.c.uuid, _M.c.serial, _M.c.manufacturer, _M.c.product, _M.c.labels,
         _M.c.tree_path, _M.c.ip_address, _M.c.status, _M.c.credential_sha256]
_NO_STATE = SimpleNamespace(current=0, latest=0, canary_generation=None, canary_path=None, serial=0)


def load_machine(conn, ident) -> MachineView:
    text = str(ident)
    row = None
    if text.isdigit():
        row = conn.execute(select(*_COLS).where(_M.c.id == int(text))).first()
    if row is None:
        row = conn.execute(select(*_COLS).where(_M.c.name == text)).first()
    if row is None:
        row = conn.execute(select(*_COLS).where(_M.c.uuid == text.lower())).first()
    if row is None:
        raise NotFound(f"no machine {text!r} (give its id, name or SMBIOS UUID)")
    m = MachineView(*row)
    m.macs = [r[0] for r in conn.execute(select(_MM.c.mac).where(_MM.c.machine_id == m.id))]
    return m


def image_assignment(ctx, machine_id: int) -> dict | None:
    """The image version the boot side assigns the machine now, for the bundle's `image_pin`:
    {"name", "version", "digest", "source"} (explicit boot pin, else the active boot rules, else the
    site's default profile; a tag resolved to its version), or None (no boot part, or no single
    image version: local disk, menu, no rule, held). Cached by the boot engine per snapshot."""
    try:
        from netslate.boot.engine import engine_for
    except ImportError:  # the boot part is optional for this one
        return None
    return engine_for(ctx).assignment(machine_id)


def load_state(conn):
    row = conn.execute(select(_S.c.current, _S.c.latest, _S.c.canary_generation, _S.c.canary_path, _S.c.serial).where(_S.c.id == 1)).first()
    return row if row is not None else _NO_STATE


def effective_generation(st, tree_path: str) -> int:
    if st.canary_generation is not None and st.canary_path and tree.under(tree_path, st.canary_path):
        return st.canary_generation
    return st.current


def render(doc: dict, machine: dict, facts: dict, generation: int) -> dict:
    """Render the hostname and file templates for one machine; returns a new document if anything changed."""
    hostname = doc.get("hostname")
    files = doc.get("files")
    if not (isinstance(hostname, str) and "{" in hostname) and not (files and any("template" in f for f in files)):
        return doc
    variables = {"machine": machine, "facts": facts, "generation": generation}
    out = dict(doc)
    if isinstance(hostname, str):
        try:
            out["hostname"] = templates.render(hostname, variables).strip()
        except UserError as exc:
            raise UserError(f"machine {machine['id']}: /hostname: {exc}") from None
    if files:
        new_files = []
        for i, f in enumerate(files):
            if "template" in f:
                try:
                    text = templates.render(f["template"], variables)
                except UserError as exc:
                    raise UserError(f"machine {machine['id']}: /files/{i} ({f.get('path')}): {exc}") from None
                f = {k: v for k, v in f.items() if k != "template"}
                f["content"] = text
                f["templated"] = True
            new_files.append(f)
        out["files"] = new_files
    return out


def pool_name(doc: dict) -> str | None:
    """The IP pool a resolved document leases from, if its network mode is 'pool'."""
    net = doc.get("network")
    if isinstance(net, dict) and net.get("mode") == "pool":
        return str(net.get("pool") or "")
    return None


def with_lease(doc: dict, lease: dict | None, error: str | None) -> dict:
    """The document with the machine's leased address (or why there is none) under `network`."""
    net = dict(doc.get("network") or {})
    if lease is not None:
        net["lease"] = lease
    if error is not None:
        net["lease_error"] = error
    return {**doc, "network": net}


def lease_wanted(ctx) -> "callable":
    """(machine id, pool name) → does that machine still resolve to that pool? (for ippools)."""
    with ctx.db.engine.connect() as conn:
        st = load_state(conn)

    def wants(machine_id: int, pool: str) -> bool:
        with ctx.db.engine.connect() as conn:
            row = conn.execute(select(_M.c.tree_path).where(_M.c.id == machine_id)).first()
        if row is None:
            return False
        gen = effective_generation(st, row[0])
        doc, _ = cache_for(ctx).get(ctx, gen).resolve_machine(row[0], machine_id)
        return pool_name(doc) == pool

    return wants


def machine_lease(ctx, machine_id: int, doc: dict) -> tuple[dict | None, str | None]:
    """(lease, error) for a resolved document in pool mode: leases an address if needed."""
    from netslate.config import ippools

    name = pool_name(doc)
    if not name:
        return None, "network.mode is 'pool' but network.pool names no pool"
    try:
        return ippools.lease_for(ctx, machine_id, name, wants=lease_wanted(ctx)), None
    except ippools.PoolError as exc:
        return None, str(exc)


def build_payload(m: Machine, st, cache: Tree, generation: int, authenticated: bool, now: dt.datetime | None = None,
                  ctx=None) -> tuple[dict, str]:
    """The bundle payload for one machine, and its ETag (stable while the content is).
    With `ctx`, a document in network mode 'pool' gets the machine's leased address. `image_pin` is
    `m.image_pin` (bundle() sets it from image_assignment), else None."""
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


def bundle(ctx, machine: str | int, credential: str | None = None, allow_unauthenticated: bool = True) -> tuple[dict, str, dict]:
    """(signed envelope, etag, info) for one machine, resolved from its effective generation."""
    with ctx.db.engine.connect() as conn:
        m = load_machine(conn, machine)
        st = load_state(conn)
    m.image_pin = image_assignment(ctx, m.id)
    authenticated = store.credential_ok(m, credential)
    gen = effective_generation(st, m.tree_path)
    t = cache_for(ctx).get(ctx, gen)
    payload, etag = build_payload(m, st, t, gen, authenticated, ctx=ctx)
    return ctx.signing_key.sign(payload), etag, {"serial": st.serial, "machine_id": m.id}


def explain(ctx, machine: str | int, generation: int | None = None) -> dict:
    """Resolved document (secrets redacted, templates not rendered) and, per leaf, the node it came from."""
    with ctx.db.session() as s:
        m = store.find_machine(s, machine)
        st = store.state(s)
        gen = effective_generation(st, m.tree_path) if generation is None else generation
        if generation is not None and generation != 0:
            store.generation_row(s, generation)
        t = cache_for(ctx).get(ctx, gen)
        doc, prov = t.resolve_machine(m.tree_path, m.id)
        chain = t.chain(m.tree_path, m.id)
        ip_lease = _explain_lease(ctx, m.id, doc)
        return {
            "machine": {"id": m.id, "name": m.name, "tree_path": m.tree_path},
            "generation": gen,
            "canary": gen == st.canary_generation,
            "chain": [{"node": store.display_key(s, c), "level": tree.level(c)} for c in chain],
            "document": store.redact(doc),
            "sources": {p: store.display_key(s, src) for p, src in sorted(prov.items())},
            "note": "templates are shown unrendered; secret values are never shown",
            **({"ip_lease": ip_lease} if ip_lease is not None else {}),
        }


def _explain_lease(ctx, machine_id: int, doc: dict) -> dict | None:
    """Explain's view of the pool lease, read only: the held address, or why there is none yet."""
    from netslate.config import ippools

    name = pool_name(doc)
    if name is None:
        return None
    held = ippools.current_lease(ctx, machine_id)
    if held is not None and held["pool"] == name:
        return held
    if not name:
        return {"pool": None, "error": "network.mode is 'pool' but network.pool names no pool"}
    try:
        pool = ippools.show_pool(ctx, name)
    except ippools.NotFound:
        return {"pool": name, "error": f"IP pool {name!r} does not exist"}
    if pool["free"] <= 0:
        return {"pool": name, "error": f"IP pool {name!r} is exhausted: all {pool['size']} addresses are leased "
                                       "(stale leases are reclaimed at the next bundle request)"}
    return {"pool": name, "address": None, "note": "no address leased yet; the next bundle request leases one"}


def warm(ctx, number: int, paths: list[str]) -> int:
    """Resolve every node chain of a generation ahead of the first bundle request."""
    t = cache_for(ctx).get(ctx, number)
    for p in paths:
        t.resolve_path(p)
    return len(paths)


def warm_all(ctx) -> int:
    """Warm the chain cache of the effective generations for every occupied tree path."""
    with ctx.db.session() as s:
        st = store.state(s)
        paths = [p for (p,) in s.execute(select(Machine.tree_path).distinct())]
        gens = {st.current} | ({st.canary_generation} if st.canary_generation else set())
    return sum(warm(ctx, g, paths) for g in gens)
