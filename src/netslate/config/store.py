"""Database edge of the config part: working copy, publish, history, rollback, canary, placement.

Every change is one transaction with its audit entry. Publishing takes the database write lock
first (`BEGIN IMMEDIATE` on SQLite, `SELECT ... FOR UPDATE` elsewhere), so of two concurrent
publishes exactly one wins and the other sees a stale working copy and gets a Conflict.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import logging
import secrets as pysecrets
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from netslate import audit
from netslate.canonical import digest_of
from netslate.config import merge, schema, templates, tree
from netslate.config.models import ConfigGeneration, ConfigState, ConfigWorkingNode
from netslate.errors import Conflict, NotFound, UserError
from netslate.store.db import utcnow
from netslate.store.models import Machine

REDACTED = "<redacted>"
log = logging.getLogger(__name__)
MACHINE_EFFECT_LIMIT = 500  # machines listed in a diff; the count is always exact


# ---------------------------------------------------------------- helpers


def _then_sweep_leases(fn):
    """After a change that can move machines off an IP pool, release the leases they no longer use."""

    @functools.wraps(fn)
    def wrapper(ctx, *args, **kwargs):
        out = fn(ctx, *args, **kwargs)
        from netslate.config import bundles, ippools

        try:
            ippools.sweep(ctx, bundles.lease_wanted(ctx))
        except Exception:  # the change itself is committed; a later sweep or bundle catches up
            log.exception("releasing stale IP pool leases failed")
        return out

    return wrapper


def lock(s: Session) -> ConfigState:
    """Take the config write lock for this transaction and return the state row."""
    if s.get_bind().dialect.name == "sqlite":
        s.connection().exec_driver_sql("BEGIN IMMEDIATE")
        st = s.get(ConfigState, 1)
    else:
        st = s.scalar(select(ConfigState).where(ConfigState.id == 1).with_for_update())
    if st is None:
        st = ConfigState(id=1, current=0, latest=0, working_base=0, serial=0)
        s.add(st)
        s.flush()
    return st


def state(s: Session) -> ConfigState:
    st = s.get(ConfigState, 1)
    return st if st is not None else ConfigState(id=1, current=0, latest=0, working_base=0, serial=0)


def state_dict(st: ConfigState) -> dict:
    return {
        "current": st.current,
        "latest": st.latest,
        "canary": {"generation": st.canary_generation, "path": st.canary_path} if st.canary_generation else None,
        "working_base": st.working_base,
    }


def redact(doc: Any) -> Any:
    """A copy of a node or resolved document with every secret value replaced."""
    if not isinstance(doc, dict) or "secrets" not in doc or not isinstance(doc["secrets"], dict):
        return doc
    out = dict(doc)
    out["secrets"] = {k: (None if v is None else REDACTED) for k, v in doc["secrets"].items()}
    return out


def find_machine(s: Session, ident: str | int) -> Machine:
    text = str(ident)
    m = None
    if text.isdigit():
        m = s.get(Machine, int(text))
    if m is None:
        m = s.scalar(select(Machine).where(Machine.name == text))
    if m is None:
        m = s.scalar(select(Machine).where(Machine.uuid == text.lower()))
    if m is None:
        raise NotFound(f"no machine {text!r} (give its id, name or SMBIOS UUID)")
    return m


def node_key(s: Session, text: str) -> str:
    """A tree path, or '@MACHINE' (id, name or UUID) for a machine's own document."""
    if isinstance(text, str) and text.startswith("@"):
        return tree.machine_key(find_machine(s, text[1:]).id)
    return tree.normalize(text)


def display_key(s: Session, key: str) -> str:
    if tree.is_machine_key(key):
        m = s.get(Machine, int(key[1:]))
        if m is not None and m.name:
            return f"@{m.name}"
    return key


def parse_key(key: str) -> list[str]:
    """'network.interfaces.eth0.mtu' → parts; brackets keep dots: 'sysctl[net.ipv4.ip_forward]'."""
    parts: list[str] = []
    buf = ""
    i = 0
    while i < len(key):
        c = key[i]
        if c == "[":
            end = key.find("]", i)
            if end < 0:
                raise UserError(f"unbalanced '[' in key {key!r}")
            if buf:
                parts.append(buf)
                buf = ""
            parts.append(key[i + 1 : end])
            i = end + 1
            continue
        if c == ".":
            if buf:
                parts.append(buf)
            buf = ""
        else:
            buf += c
        i += 1
    if buf:
        parts.append(buf)
    if not parts or any(p == "" for p in parts):
        raise UserError(f"invalid key {key!r}: use dotted names such as network.mode or sysctl[vm.swappiness]")
    return parts


def check_document(doc: Any) -> dict:
    doc = schema.validate_document(doc)
    for src in _templates_in(doc):
        templates.check(src)
    return doc


def _templates_in(doc: dict):
    if isinstance(doc.get("hostname"), str):
        yield doc["hostname"]
    for key in ("files", "files+"):
        for f in doc.get(key) or []:
            if isinstance(f, dict) and isinstance(f.get("template"), str):
                yield f["template"]


def working_snapshot(s: Session) -> dict[str, dict]:
    return {n.path: n.document for n in s.scalars(select(ConfigWorkingNode).order_by(ConfigWorkingNode.path)) if n.document}


def generation_row(s: Session, number: int) -> ConfigGeneration:
    row = s.get(ConfigGeneration, number)
    if row is None:
        raise NotFound(f"no config generation {number}")
    return row


def generation_snapshot(s: Session, number: int) -> dict[str, dict]:
    return {} if number == 0 else generation_row(s, number).snapshot


# ---------------------------------------------------------------- working copy


def get_node(ctx, path: str, generation: int | None = None, reveal: bool = False) -> dict:
    with ctx.db.session() as s:
        key = node_key(s, path)
        st = state(s)
        if generation is None:
            row = s.get(ConfigWorkingNode, key)
            doc = row.document if row else {}
            info = {"revision": row.revision if row else 0, "source": "working copy", "base_generation": st.working_base}
        else:
            doc = generation_snapshot(s, generation).get(key, {})
            info = {"source": f"generation {generation}", "generation": generation}
        return {"path": display_key(s, key), "key": key, "level": tree.level(key), "document": doc if reveal else redact(doc), **info}


def _write_node(s: Session, key: str, doc: dict, actor: str) -> ConfigWorkingNode:
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


def put_node(ctx, path: str, doc: Any, actor: str, expect_revision: int | None = None) -> dict:
    """Replace one node's working document (apply / edit / API PUT)."""
    doc = check_document(doc if doc is not None else {})
    with ctx.db.session() as s:
        key = node_key(s, path)
        row = s.get(ConfigWorkingNode, key)
        have = row.revision if row else 0
        if expect_revision is not None and expect_revision != have:
            raise Conflict(f"{path} changed in the working copy while you edited it (revision {have}, you started from {expect_revision}); nothing was written")
        row = _write_node(s, key, doc, actor)
        s.flush()
        return {"path": display_key(s, key), "revision": row.revision}


def set_value(ctx, path: str, key: str, value: Any, actor: str) -> dict:
    parts = parse_key(key)
    with ctx.db.session() as s:
        nkey = node_key(s, path)
        row = s.get(ConfigWorkingNode, nkey)
        doc = copy.deepcopy(row.document) if row else {}
        cur = doc
        for p in parts[:-1]:
            nxt = cur.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
                cur[p] = nxt
            cur = nxt
        cur[parts[-1]] = value
        check_document(doc)
        row = _write_node(s, nkey, doc, actor)
        s.flush()
        return {"path": display_key(s, nkey), "revision": row.revision}


def unset_value(ctx, path: str, key: str, actor: str) -> dict:
    parts = parse_key(key)
    with ctx.db.session() as s:
        nkey = node_key(s, path)
        row = s.get(ConfigWorkingNode, nkey)
        doc = copy.deepcopy(row.document) if row else {}
        trail = []
        cur = doc
        for p in parts[:-1]:
            if not isinstance(cur.get(p), dict):
                raise NotFound(f"{path} does not set {key}")
            trail.append((cur, p))
            cur = cur[p]
        if parts[-1] not in cur:
            raise NotFound(f"{path} does not set {key}")
        del cur[parts[-1]]
        for parent, p in reversed(trail):  # drop maps left empty
            if parent[p] == {}:
                del parent[p]
        row = _write_node(s, nkey, doc, actor)
        s.flush()
        return {"path": display_key(s, nkey), "revision": row.revision}


def reset_working(ctx, actor: str) -> dict:
    """Throw the working copy away and start again from the newest generation."""
    with ctx.db.session() as s:
        st = lock(s)
        _load_working(s, generation_snapshot(s, st.latest), actor)
        st.working_base = st.latest
        audit.record(s, actor, "config.reset", "config/working", base=st.latest)
        return {"working_base": st.latest}


def _load_working(s: Session, snapshot: dict, actor: str) -> None:
    for row in s.scalars(select(ConfigWorkingNode)):
        if row.path not in snapshot:
            s.delete(row)
    for key, doc in snapshot.items():
        row = s.get(ConfigWorkingNode, key)
        if row is None or row.document != doc:
            _write_node(s, key, doc, actor)


# ---------------------------------------------------------------- diff


def node_diff(old: dict[str, dict], new: dict[str, dict]) -> list[dict]:
    """Per node: added/changed/removed leaves, secrets redacted. Deterministic order."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = merge.flatten(old.get(key, {})), merge.flatten(new.get(key, {}))
        if a == b:
            continue
        changes = []
        for ptr in sorted(set(a) | set(b)):
            if a.get(ptr, _MISSING) == b.get(ptr, _MISSING):
                continue
            secret = ptr.startswith("/secrets/") or ptr == "/secrets"
            changes.append({
                "key": ptr,
                "old": _shown(a.get(ptr, _MISSING), secret),
                "new": _shown(b.get(ptr, _MISSING), secret),
            })
        state_ = "added" if key not in old else "removed" if key not in new else "changed"
        out.append({"node": key, "state": state_, "changes": changes})
    return out


class _Missing:
    pass


_MISSING = _Missing()


def _shown(value: Any, secret: bool) -> Any:
    if value is _MISSING:
        return "<unset>"
    if secret and value is not None and value != {}:
        return REDACTED
    return value


def _resolved_secret_free(tree_obj, m: Machine) -> dict:
    doc, _ = tree_obj.resolve_machine(m.tree_path, m.id)
    return redact(doc)


def machine_effect(s: Session, old: dict, new: dict) -> dict:
    """Which machines' resolved documents change between two snapshots (before templates)."""
    from netslate.config.bundles import Tree

    t_old, t_new = Tree(old), Tree(new)
    changed = []
    count = 0
    total = 0
    touched = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
    memo: dict[str, tuple[dict, dict]] = {}  # machines at one path without own documents share a result
    for m in s.scalars(select(Machine).order_by(Machine.id)):
        total += 1
        mkey = tree.machine_key(m.id)
        chain = set(tree.ancestors(m.tree_path)) | {mkey}
        if not (chain & touched):
            continue
        shared = mkey not in old and mkey not in new
        if shared and m.tree_path in memo:
            a, b = memo[m.tree_path]
        else:
            a = merge.flatten(_resolved_secret_free(t_old, m))
            b = merge.flatten(_resolved_secret_free(t_new, m))
            if shared:
                memo[m.tree_path] = (a, b)
        if a == b:
            continue
        count += 1
        if len(changed) < MACHINE_EFFECT_LIMIT:
            changes = [
                {"key": p, "old": a.get(p, "<unset>"), "new": b.get(p, "<unset>")}
                for p in sorted(set(a) | set(b)) if a.get(p, _MISSING) != b.get(p, _MISSING)
            ]
            changed.append({"id": m.id, "name": m.name, "tree_path": m.tree_path, "changes": changes})
    return {"machines_total": total, "machines_changed": count, "machines": changed, "truncated": count > len(changed)}


def diff(ctx, machines: bool = True) -> dict:
    with ctx.db.session() as s:
        st = state(s)
        base = generation_snapshot(s, st.working_base)
        work = working_snapshot(s)
        nodes = node_diff(base, work)
        for n in nodes:
            n["node"] = display_key(s, n["node"])
        out = {
            **state_dict(st),
            "stale": st.working_base != st.latest,
            "nodes": nodes,
        }
        if machines:
            out["effect"] = machine_effect(s, base, work) if nodes else {"machines_total": None, "machines_changed": 0, "machines": [], "truncated": False}
        return out


# ---------------------------------------------------------------- publish, promote, rollback


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


@_then_sweep_leases
def publish(ctx, message: str, actor: str, canary: str | None = None, expect_base: int | None = None) -> dict:
    if not message or not message.strip():
        raise UserError("a publish needs a message (-m TEXT)")
    if canary is not None:
        canary = tree.normalize(canary)
    try:
        with ctx.db.session() as s:
            st = lock(s)
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
            return {"generation": row.number, "digest": row.digest, "changes": len(row.diff["nodes"]), **state_dict(st)}
    except IntegrityError:
        raise Conflict("another publish won the race for this generation number; nothing was published") from None


@_then_sweep_leases
def promote(ctx, actor: str) -> dict:
    with ctx.db.session() as s:
        st = lock(s)
        if st.canary_generation is None:
            raise UserError("no canary is pending")
        gen, path = st.canary_generation, st.canary_path
        st.current = gen
        st.canary_generation = None
        st.canary_path = None
        st.serial = st.serial + 1
        audit.record(s, actor, "config.promote", f"config/generation/{gen}", canary=path)
        return {"generation": gen, "promoted_from": path, **state_dict(st)}


@_then_sweep_leases
def rollback(ctx, number: int, message: str, actor: str) -> dict:
    """Publish a new generation whose content equals generation `number` (machines see it as newer)."""
    if not message or not message.strip():
        raise UserError("a rollback needs a message (-m TEXT)")
    with ctx.db.session() as s:
        st = lock(s)
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
            _load_working(s, target, actor)
            st.working_base = row.number
        audit.record(s, actor, "config.rollback", f"config/generation/{row.number}", message=row.message,
                     rollback_of=number, dropped_canary=dropped_canary, digest=row.digest, diff=row.diff)
        s.flush()
        return {"generation": row.number, "rollback_of": number, "working_copy_followed": working_clean, **state_dict(st)}


def history(ctx, limit: int = 100) -> list[dict]:
    with ctx.db.session() as s:
        rows = s.scalars(select(ConfigGeneration).order_by(ConfigGeneration.number.desc()).limit(limit))
        st = state(s)
        out = []
        for r in rows:
            out.append({
                "generation": r.number, "created_at": r.created_at.isoformat() + "Z", "author": r.author,
                "message": r.message, "kind": r.kind, "canary_path": r.canary_path, "rollback_of": r.rollback_of,
                "digest": r.digest, "nodes_changed": len(r.diff.get("nodes", [])),
                "current": r.number == st.current, "canary": r.number == st.canary_generation,
            })
        return out


def generation_diff(ctx, number: int) -> dict:
    with ctx.db.session() as s:
        row = generation_row(s, number)
        return {"generation": number, "message": row.message, "author": row.author, "nodes": row.diff.get("nodes", [])}


def status(ctx) -> dict:
    with ctx.db.session() as s:
        st = state(s)
        return {**state_dict(st), "stale": st.working_base != st.latest,
                "nodes": s.scalar(select(func.count()).select_from(ConfigWorkingNode)) or 0}


# ---------------------------------------------------------------- machines: placement, credentials


@_then_sweep_leases
def place(ctx, machine: str, path: str, actor: str) -> dict:
    path = tree.normalize(path)
    with ctx.db.session() as s:
        m = find_machine(s, machine)
        old = m.tree_path
        m.tree_path = path
        st = lock_free_bump(s)
        audit.record(s, actor, "config.place", f"machine/{m.id}", old=old, new=path)
        return {"id": m.id, "name": m.name, "tree_path": path, "previous": old, "serial": st}


def lock_free_bump(s: Session) -> int:
    st = s.get(ConfigState, 1)
    if st is None:
        st = ConfigState(id=1, current=0, latest=0, working_base=0, serial=0)
        s.add(st)
    st.serial = (st.serial or 0) + 1
    return st.serial


def credential_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def enroll(ctx, machine: str, actor: str) -> dict:
    """Issue a new per-machine credential (the old one stops working). Shown once; stored hashed."""
    token = "nsm_" + pysecrets.token_urlsafe(32)
    with ctx.db.session() as s:
        m = find_machine(s, machine)
        replaced = m.credential_sha256 is not None
        m.credential_sha256 = credential_hash(token)
        audit.record(s, actor, "machine.enroll", f"machine/{m.id}", replaced=replaced)
        return {"id": m.id, "name": m.name, "credential": token, "replaced": replaced}


def credential_ok(m: Machine, token: str | None) -> bool:
    if not token or not m.credential_sha256:
        return False
    return hmac.compare_digest(m.credential_sha256, credential_hash(token))
