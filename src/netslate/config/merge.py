"""Deep merge with provenance. Pure functions, deterministic, bounded.

Rules (farther node first, nearer node last; the nearer one wins):
- maps merge key by key, recursively;
- a scalar (or a list, or a map meeting a non-map) replaces what was inherited;
- `KEY: null` removes the inherited value;
- lists are replaced as a whole, unless written as `KEY+:` (append) or `KEY-:` (remove).
  Within one document the order is: remove first, then append. A `KEY-` item removes inherited
  items equal to it, or, when it is a string, map items whose identity (`name`, else `path`,
  else `where`) equals it. An appended map item with the identity of an inherited one replaces
  that item in place; an appended scalar already present is not added twice.

Provenance maps a JSON pointer (RFC 6901) of every leaf to the node it came from. Leaves are
scalars, empty maps, and list items (a list item's whole value comes from one node).
"""

from __future__ import annotations

from typing import Any

from netslate.errors import UserError

MAX_DEPTH = 32
MAX_NODES = 200_000  # total values visited in one merge
IDENTITY_KEYS = ("name", "path", "where")


def escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


def unescape(segment: str) -> str:
    return segment.replace("~1", "/").replace("~0", "~")


def pointer(parts: list[str]) -> str:
    return "".join("/" + escape(str(p)) for p in parts)


def identity(item: Any) -> Any:
    if isinstance(item, dict):
        for key in IDENTITY_KEYS:
            if key in item:
                return (key, item[key])
    return None


class _Budget:
    __slots__ = ("left",)

    def __init__(self, n: int):
        self.left = n

    def spend(self, n: int = 1) -> None:
        self.left -= n
        if self.left < 0:
            raise UserError(f"configuration too large to merge (more than {MAX_NODES} values)")


def _leaves(value: Any, prefix: str, source: str, out: dict, depth: int, budget: _Budget) -> None:
    budget.spend()
    if depth > MAX_DEPTH:
        raise UserError(f"configuration nested deeper than {MAX_DEPTH} levels at {prefix or '/'}")
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _leaves(v, prefix + "/" + escape(k), source, out, depth + 1, budget)
    elif isinstance(value, list):
        for i in range(len(value)):
            out[f"{prefix}/{i}"] = source
        if not value:
            out[prefix] = source
    else:
        out[prefix] = source


def _drop_prefix(prov: dict, prefix: str) -> None:
    dead = [p for p in prov if p == prefix or p.startswith(prefix + "/")]
    for p in dead:
        del prov[p]


def _list_prov(prov: dict, prefix: str) -> list[str | None]:
    """Per-item sources of the list at `prefix` (as it stands)."""
    out = []
    i = 0
    while f"{prefix}/{i}" in prov:
        out.append(prov[f"{prefix}/{i}"])
        i += 1
    return out


def _apply_list_forms(base: Any, remove: list | None, append: list | None, base_src: list, source: str):
    items = list(base) if isinstance(base, list) else []
    srcs = list(base_src) if isinstance(base, list) else []
    if len(srcs) != len(items):
        srcs = [None] * len(items)
    if remove:
        names = {r for r in remove if isinstance(r, (str, int)) and not isinstance(r, bool)}
        keep_items, keep_srcs = [], []
        for item, src in zip(items, srcs):
            ident = identity(item)
            if item in remove or (ident is not None and ident[1] in names):
                continue
            keep_items.append(item)
            keep_srcs.append(src)
        items, srcs = keep_items, keep_srcs
    if append:
        for item in append:
            ident = identity(item)
            if ident is not None:
                at = next((i for i, old in enumerate(items) if identity(old) == ident), None)
                if at is not None:
                    items[at] = item
                    srcs[at] = source
                    continue
            elif item in items:
                continue
            items.append(item)
            srcs.append(source)
    return items, srcs


def _merge_into(base: dict, base_prov: dict, doc: dict, source: str, prefix: str, depth: int, budget: _Budget) -> dict:
    """Return a new map = base overlaid with doc; update base_prov in place."""
    if depth > MAX_DEPTH:
        raise UserError(f"configuration nested deeper than {MAX_DEPTH} levels at {prefix or '/'}")
    out = dict(base)
    forms: dict[str, dict] = {}
    for key in sorted(doc):  # sorted: the result never depends on key order
        value = doc[key]
        budget.spend()
        if len(key) > 1 and key[-1] in "+-":
            forms.setdefault(key[:-1], {})[key[-1]] = value
            continue
        path = prefix + "/" + escape(key)
        if value is None:
            if key in out:
                del out[key]
                _drop_prefix(base_prov, path)
            continue
        old = out.get(key)
        if isinstance(value, dict):
            if not isinstance(old, dict):
                _drop_prefix(base_prov, path)
                old = {}
            if not old:
                base_prov.pop(path, None)
            merged = _merge_into(old, base_prov, value, source, path, depth + 1, budget)
            if merged or not value:
                out[key] = merged
                if not merged:
                    base_prov[path] = source  # an explicit empty map is a leaf
            else:  # every key was removed with null: the map goes too
                out.pop(key, None)
                _drop_prefix(base_prov, path)
        else:
            _drop_prefix(base_prov, path)
            out[key] = value
            _leaves(value, path, source, base_prov, depth + 1, budget)
    for key in sorted(forms):
        path = prefix + "/" + escape(key)
        f = forms[key]
        old = out.get(key)
        items, srcs = _apply_list_forms(old, f.get("-"), f.get("+"), _list_prov(base_prov, path), source)
        budget.spend(len(items))
        _drop_prefix(base_prov, path)
        out[key] = items
        for i, s in enumerate(srcs):
            base_prov[f"{path}/{i}"] = s if s is not None else source
        if not items:
            base_prov[path] = source
    return out


def merge(base: dict, base_prov: dict, doc: dict, source: str) -> tuple[dict, dict]:
    """Overlay `doc` (from node `source`) on an already resolved (base, provenance). Inputs untouched."""
    prov = dict(base_prov)
    budget = _Budget(MAX_NODES)
    result = _merge_into(base or {}, prov, doc or {}, source, "", 0, budget)
    return result, prov


def resolve(chain: list[tuple[str, dict]]) -> tuple[dict, dict]:
    """Merge documents from the farthest node (root) to the nearest. Returns (document, provenance)."""
    doc: dict = {}
    prov: dict = {}
    for source, d in chain:
        doc, prov = merge(doc, prov, d, source)
    return doc, prov


def get_pointer(doc: Any, ptr: str) -> Any:
    cur = doc
    if ptr == "":
        return cur
    for raw in ptr.split("/")[1:]:
        seg = unescape(raw)
        if isinstance(cur, list):
            cur = cur[int(seg)]
        else:
            cur = cur[seg]
    return cur


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf pointer → value (lists as whole values), for diffs."""
    out: dict[str, Any] = {}
    if prefix == "" and doc == {}:
        return out
    if isinstance(doc, dict) and doc:
        for k in sorted(doc):
            out.update(flatten(doc[k], prefix + "/" + escape(k)))
    else:
        out[prefix or "/"] = doc
    return out
