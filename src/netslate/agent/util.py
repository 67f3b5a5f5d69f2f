"""Small stdlib helpers: atomic writes, JSON files, paths under a root directory.

Atomic writes, JSON reads and canonical JSON come from the on-machine library (one copy, shared
with the initramfs and the server)."""

from __future__ import annotations

import json
from pathlib import Path

from netslate.onmachine.envelope import canonical  # noqa: F401 - re-exported for the agent's modules
from netslate.onmachine.fsutil import atomic_write, read_json  # noqa: F401 - re-exported


def write_json(path: Path, obj, mode: int = 0o644) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), mode)


def under(root: Path, path: str) -> Path:
    """`path` (absolute, as on the machine) inside `root`; refuses '..' escapes."""
    parts = [p for p in str(path).split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path {path!r} contains '..'")
    return Path(root).joinpath(*parts) if parts else Path(root)
