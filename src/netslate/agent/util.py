"""Small stdlib helpers: atomic writes, JSON files, paths under a root directory."""

from __future__ import annotations

import json
from pathlib import Path

from netslate.fsutil import atomic_write  # noqa: F401 - re-exported for the agent's modules


def write_json(path: Path, obj, mode: int = 0o644) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), mode)


def read_json(path: Path, default=None):
    """The JSON in `path`, or `default` when it is missing or damaged (a damaged file is never fatal)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return default


def under(root: Path, path: str) -> Path:
    """`path` (absolute, as on the machine) inside `root`; refuses '..' escapes."""
    parts = [p for p in str(path).split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path {path!r} contains '..'")
    return Path(root).joinpath(*parts) if parts else Path(root)


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
