"""The shared working copy (`config_working`): read, replace, set and unset node documents, and the
diff against the generation it is based on (per node, and per machine). Database edge.

Every write is one transaction; a node's revision counts its writes so that `edit` can refuse to
overwrite a change made while the editor was open.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from netslate.config import machines, merge, secrets, state, tree
from netslate.config.documents import check_document, leaf_changes, node_diff, redact, with_value, without_value
from netslate.config.models import ConfigWorkingNode
from netslate.config.resolution import Tree
from netslate.config.snapshots import generation_snapshot, working_snapshot
from netslate.errors import Conflict
from netslate.store.db import utcnow

MACHINE_EFFECT_LIMIT = 500  # machines listed in a diff; the count is always exact


def node_key(s: Session, text: str) -> str:
    """A tree path, or '@MACHINE' (id, name or UUID) for a machine's own document."""
    if isinstance(text, str) and text.startswith("@"):
        return tree.machine_key(machines.find(s, text[1:]).id)
    return tree.normalize(text)


def display_key(s: Session, key: str) -> str:
    """'@NAME' for a machine's own document when the machine has a name, else the key itself."""
    if tree.is_machine_key(key):
        name = machines.name_of(s, int(key[1:]))
        if name:
            return f"@{name}"
    return key


def get_node(ctx, path: str, generation: int | None = None, reveal: bool = False) -> dict:
    """A node's document in the working copy (or in generation N); secrets redacted unless `reveal`."""
    with ctx.db.session() as s:
        key = node_key(s, path)
        st = state.read(s)
        if generation is None:
            row = s.get(ConfigWorkingNode, key)
            doc = row.document if row else {}
            info = {"revision": row.revision if row else 0, "source": "working copy", "base_generation": st.working_base}
        else:
            doc = generation_snapshot(s, generation).get(key, {})
            info = {"source": f"generation {generation}", "generation": generation}
        shown = secrets.open_document(ctx.data_dir, doc) if reveal else redact(doc)
        return {"path": display_key(s, key), "key": key, "level": tree.level(key), "document": shown, **info}


def write_node(s: Session, key: str, doc: dict, actor: str) -> ConfigWorkingNode:
    row = s.get(ConfigWorkingNode, key)
    if row is None:
        row = ConfigWorkingNode(path=key, document=doc, revision=1, updated_by=actor, updated_at=utcnow())
        s.add(row)
    else:
        row.document = doc
        row.revision = row.revision + 1
        row.updated_by = actor
        row.updated_at = utcnow()
    return row


def load_snapshot(s: Session, snapshot: dict, actor: str) -> None:
    """Make the working copy equal `snapshot` (nodes not in it are dropped)."""
    for row in s.scalars(select(ConfigWorkingNode)):
        if row.path not in snapshot:
            s.delete(row)
    for key, doc in snapshot.items():
        row = s.get(ConfigWorkingNode, key)
        if row is None or row.document != doc:
            write_node(s, key, doc, actor)


def put_node(ctx, path: str, doc: Any, actor: str, expect_revision: int | None = None) -> dict:
    """Replace one node's working document (apply / edit / API PUT). Secret values are stored sealed."""
    secrets.check_input(doc)
    doc = check_document(doc if doc is not None else {})
    with ctx.db.session(write=True) as s:  # expect_revision is checked under the write lock
        key = node_key(s, path)
        row = s.get(ConfigWorkingNode, key)
        have = row.revision if row else 0
        if expect_revision is not None and expect_revision != have:
            raise Conflict(f"{path} changed in the working copy while you edited it (revision {have}, you started from {expect_revision}); nothing was written")
        doc = secrets.seal_document(ctx.data_dir, doc, row.document if row else None)
        row = write_node(s, key, doc, actor)
        s.flush()
        return {"path": display_key(s, key), "revision": row.revision}


def set_value(ctx, path: str, key: str, value: Any, actor: str) -> dict:
    """Set one dotted key of a node's working document (validated as a whole first; secrets stored sealed)."""
    secrets.check_input(None, key, value)
    with ctx.db.session(write=True) as s:  # read-modify-write: no concurrent set is lost
        nkey = node_key(s, path)
        row = s.get(ConfigWorkingNode, nkey)
        doc = with_value(row.document if row else {}, key, value)
        check_document(doc)
        doc = secrets.seal_document(ctx.data_dir, doc, row.document if row else None)
        row = write_node(s, nkey, doc, actor)
        s.flush()
        return {"path": display_key(s, nkey), "revision": row.revision}


def unset_value(ctx, path: str, key: str, actor: str) -> dict:
    """Remove one dotted key from a node's working document (the value is inherited again)."""
    with ctx.db.session(write=True) as s:
        nkey = node_key(s, path)
        row = s.get(ConfigWorkingNode, nkey)
        doc = without_value(row.document if row else {}, key, path)
        row = write_node(s, nkey, doc, actor)
        s.flush()
        return {"path": display_key(s, nkey), "revision": row.revision}


def _resolved_secret_free(t: Tree, machine_id: int, tree_path: str) -> dict:
    doc, _ = t.resolve_machine(tree_path, machine_id)
    return redact(doc)


def machine_effect(s: Session, old: dict, new: dict) -> dict:
    """Which machines' resolved documents change between two snapshots (before templates)."""
    t_old, t_new = Tree(old), Tree(new)
    changed = []
    count = 0
    total = 0
    touched = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
    memo: dict[str, tuple[dict, dict]] = {}  # machines at one path without own documents share a result
    for mid, name, tree_path in machines.placements(s):
        total += 1
        mkey = tree.machine_key(mid)
        chain = set(tree.ancestors(tree_path)) | {mkey}
        if not (chain & touched):
            continue
        shared = mkey not in old and mkey not in new
        if shared and tree_path in memo:
            a, b = memo[tree_path]
        else:
            a = merge.flatten(_resolved_secret_free(t_old, mid, tree_path))
            b = merge.flatten(_resolved_secret_free(t_new, mid, tree_path))
            if shared:
                memo[tree_path] = (a, b)
        if a == b:
            continue
        count += 1
        if len(changed) < MACHINE_EFFECT_LIMIT:
            changed.append({"id": mid, "name": name, "tree_path": tree_path, "changes": leaf_changes(a, b)})
    return {"machines_total": total, "machines_changed": count, "machines": changed, "truncated": count > len(changed)}


def diff(ctx, machines: bool = True) -> dict:
    """What publishing the working copy would change: per node, and (with `machines`) per machine."""
    with ctx.db.session() as s:
        st = state.read(s)
        base = generation_snapshot(s, st.working_base)
        work = working_snapshot(s)
        nodes = node_diff(base, work)
        for n in nodes:
            n["node"] = display_key(s, n["node"])
        out = {**state.as_dict(st), "stale": st.working_base != st.latest, "nodes": nodes}
        if machines:
            out["effect"] = machine_effect(s, base, work) if nodes else {"machines_total": None, "machines_changed": 0, "machines": [], "truncated": False}
        return out
