"""Resolution, pure: a snapshot's node chains merged (memoised), the generation effective for a
tree path, template rendering for one machine, and the IP pool a resolved document asks for.

No I/O. The per-process cache of resolved generations is `generation_cache.py`; bundles and
explain (`bundles.py`, `explain.py`) read the database and call these.
"""

from __future__ import annotations

import threading

from netslate.config import merge, templates, tree
from netslate.errors import UserError


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


def effective_generation(st, tree_path: str) -> int:
    """The generation a machine at `tree_path` gets: the canary's under the canary subtree, else the current one.
    `st` has `current`, `canary_generation` and `canary_path` (the config state row or a Core row)."""
    if st.canary_generation is not None and st.canary_path and tree.under(tree_path, st.canary_path):
        return st.canary_generation
    return st.current


def render(doc: dict, machine: dict, facts: dict, generation: int) -> dict:
    """Render the hostname and file templates for one machine; returns a new document if anything changed."""
    hostname = doc.get("hostname")
    files = doc.get("files")
    if not (isinstance(hostname, str) and "{" in hostname) and not (files and any("template" in f for f in files)):
        return doc
    variables = {"machine": machine, "facts": templates.facts_view(facts), "generation": generation}
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
