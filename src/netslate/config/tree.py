"""Tree paths: `/` (fleet defaults) → site → cluster → pool → folder (folders nest).

A machine sits at one tree path (`machines.tree_path`) and may carry its own document, kept
under the node key `@<machine id>`. Pure functions only.
"""

from __future__ import annotations

from netslate.errors import UserError
from netslate.names import check_name

LEVELS = ("root", "site", "cluster", "pool")
MAX_DEPTH = 16


def normalize(path: str) -> str:
    """Check and normalise a tree path: '/', '/site-a', '/site-a/c1/pool-x/folder/sub'."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise UserError(f"invalid tree path {path!r}: it starts with '/' (for example /site-a/cluster-1)")
    parts = [p for p in path.split("/") if p]
    if len(parts) > MAX_DEPTH:
        raise UserError(f"invalid tree path: more than {MAX_DEPTH} levels")
    for p in parts:
        check_name(p, "tree path segment")
    return "/" + "/".join(parts)


def level(path: str) -> str:
    if path.startswith("@"):
        return "machine"
    depth = 0 if path == "/" else path.count("/")
    return LEVELS[depth] if depth < len(LEVELS) else "folder"


def ancestors(path: str) -> list[str]:
    """'/a/b/c' → ['/', '/a', '/a/b', '/a/b/c'] (farthest first)."""
    out = ["/"]
    if path == "/":
        return out
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        out.append("/" + "/".join(parts[:i]))
    return out


def under(path: str, subtree: str) -> bool:
    return subtree == "/" or path == subtree or path.startswith(subtree + "/")


def machine_key(machine_id: int) -> str:
    return f"@{machine_id}"


def is_machine_key(key: str) -> bool:
    return key.startswith("@")
