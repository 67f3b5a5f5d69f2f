"""Garbage collection of unreferenced chunks, and re-verification of stored ones."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from netslate.images import workdirs
from netslate.images.chunkstore import ChunkCorrupt, ChunkMissing
from netslate.images.leases import active_ids


def collect_garbage(store, imports_dir: Path, referenced: Callable[[], set[str]], grace_seconds: float = 3600,
                    dry_run: bool = False, tmp_dir: Path | None = None) -> dict:
    """Delete chunks no version references. Spares chunks of imports in progress (their leases)
    and anything touched within the grace period. Removes the work directories of imports and
    builds no live lease covers (`tmp_dir`), and chunk temp files whose writer died."""
    started = time.time()
    in_progress = active_ids(imports_dir)  # leases first, then the database
    refs = referenced()
    keep = in_progress | refs
    removed = freed = kept_recent = 0
    for cid, path in list(store.iter_ids()):
        if cid in keep:
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if st.st_mtime > started - grace_seconds:
            kept_recent += 1
            continue
        removed += 1
        freed += st.st_size
        if not dry_run:
            path.unlink(missing_ok=True)
    temps = 0
    for tmp in store.temp_files():
        try:
            old = tmp.stat().st_mtime < started - max(grace_seconds, 60)
        except FileNotFoundError:
            continue  # renamed into place meanwhile
        if old or store.temp_owner_dead(tmp):
            temps += 1
            if not dry_run:
                tmp.unlink(missing_ok=True)
    swept = workdirs.sweep(tmp_dir, dry_run=dry_run) if tmp_dir is not None else {"removed": [], "bytes": 0}
    return {"chunks_removed": removed, "bytes_freed": freed, "chunks_referenced": len(refs),
            "chunks_in_progress": len(in_progress), "chunks_spared_recent": kept_recent,
            "temp_files_removed": temps, "work_dirs_removed": len(swept["removed"]),
            "work_bytes_freed": swept["bytes"], "dry_run": dry_run}


def verify_chunks(store, targets: list, progress: Callable[[int, int], None] | None = None) -> dict:
    """Re-hash the stored chunks of the given versions (`Resolved`s); name the corrupt and missing ones."""
    wanted: dict[str, list[str]] = {}
    for r in targets:
        for art, a in r.artifacts.items():
            for _o, _s, cid in a["chunks"]:
                wanted.setdefault(cid, []).append(f"{r.name}@{r.version}:{art}")
    corrupt, missing = [], []
    for i, cid in enumerate(sorted(wanted)):
        try:
            store.read(cid, verify=True)
        except ChunkMissing:
            missing.append(cid)
        except (ChunkCorrupt, Exception):
            corrupt.append(cid)
        if progress:
            progress(i + 1, len(wanted))
    bad_versions = sorted({u for cid in corrupt + missing for u in wanted[cid]})
    return {"ok": not corrupt and not missing, "versions_checked": len(targets), "chunks_checked": len(wanted),
            "corrupt": corrupt, "missing": missing, "affected": bad_versions}
