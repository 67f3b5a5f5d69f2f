"""Node documents, pure: validation, dotted keys, redaction of secrets, per-node diffs.

No I/O. The working copy (`workingcopy.py`) and the generations (`generations.py`) use these on
documents they read from the database.
"""

from __future__ import annotations

import copy
from typing import Any

from netslate.config import merge, schema, templates
from netslate.errors import NotFound, UserError

REDACTED = "<redacted>"
UNSET = "<unset>"


class _Missing:
    pass


MISSING = _Missing()


def redact(doc: Any) -> Any:
    """A copy of a node or resolved document with every secret value replaced."""
    if not isinstance(doc, dict) or "secrets" not in doc or not isinstance(doc["secrets"], dict):
        return doc
    out = dict(doc)
    out["secrets"] = {k: (None if v is None else REDACTED) for k, v in doc["secrets"].items()}
    return out


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


def with_value(doc: dict, key: str, value: Any) -> dict:
    """A copy of `doc` with dotted `key` set to `value` (maps on the way are created)."""
    parts = parse_key(key)
    out = copy.deepcopy(doc)
    cur = out
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value
    return out


def without_value(doc: dict, key: str, where: str) -> dict:
    """A copy of `doc` without dotted `key` (maps left empty go too); NotFound if `doc` does not set it."""
    parts = parse_key(key)
    out = copy.deepcopy(doc)
    trail = []
    cur = out
    for p in parts[:-1]:
        if not isinstance(cur.get(p), dict):
            raise NotFound(f"{where} does not set {key}")
        trail.append((cur, p))
        cur = cur[p]
    if parts[-1] not in cur:
        raise NotFound(f"{where} does not set {key}")
    del cur[parts[-1]]
    for parent, p in reversed(trail):  # drop maps left empty
        if parent[p] == {}:
            del parent[p]
    return out


def check_document(doc: Any) -> dict:
    """Validate a node document against the schema and parse its templates; returns it normalised."""
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


def shown(value: Any, secret: bool) -> Any:
    if value is MISSING:
        return UNSET
    if secret and value is not None and value != {}:
        return REDACTED
    return value


def node_diff(old: dict[str, dict], new: dict[str, dict]) -> list[dict]:
    """Per node: added/changed/removed leaves, secrets redacted. Deterministic order."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = merge.flatten(old.get(key, {})), merge.flatten(new.get(key, {}))
        if a == b:
            continue
        changes = []
        for ptr in sorted(set(a) | set(b)):
            if a.get(ptr, MISSING) == b.get(ptr, MISSING):
                continue
            secret = ptr.startswith("/secrets/") or ptr == "/secrets"
            changes.append({"key": ptr, "old": shown(a.get(ptr, MISSING), secret), "new": shown(b.get(ptr, MISSING), secret)})
        state = "added" if key not in old else "removed" if key not in new else "changed"
        out.append({"node": key, "state": state, "changes": changes})
    return out


def leaf_changes(a: dict, b: dict) -> list[dict]:
    """Changed leaves between two flattened (pointer → value) documents."""
    return [{"key": p, "old": a.get(p, UNSET), "new": b.get(p, UNSET)}
            for p in sorted(set(a) | set(b)) if a.get(p, MISSING) != b.get(p, MISSING)]
