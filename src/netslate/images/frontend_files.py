"""Files the static front serves with sendfile: materialized artifacts and chunk packs (DATA/serve).

The store keeps chunks (mostly zstd); an artifact exists only as its chunk list. Behind the nginx
front, the first request for an artifact writes it whole once (every chunk verified on the way,
atomic rename), and for a chunk pack writes its frames once; nginx then sends the file. Names are
content addresses, so a file never changes: `artifacts/<sha256>`, `packs/<manifest digest>-<artifact>-<index>`.
Bounded: past `max_bytes` the least recently built files are removed (nginx keeps an open file
until it has sent it). `image gc` removes the files of versions that are gone (`collect`).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

DEFAULT_MAX_BYTES = 64 * 2**30


class ServedFiles:
    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, rel: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(rel, threading.Lock())

    def get(self, rel: str, produce: Callable[[], Iterable[bytes]], sha256: str | None = None) -> Path:
        """The file at ROOT/rel, built from `produce()` (blocks of bytes) when absent; one builder per
        file (concurrent callers wait for it). With `sha256` the built bytes must hash to it."""
        path = self.root / rel
        if path.exists():
            return path
        with self._lock(rel):
            if path.exists():
                return path
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
            h = hashlib.sha256()
            try:
                with open(tmp, "wb") as f:
                    for block in produce():
                        h.update(block)
                        f.write(block)
                if sha256 is not None and h.hexdigest() != sha256:
                    raise ValueError(f"{rel}: assembled bytes do not match {sha256}")
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            finally:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
        self.trim()
        return path

    def trim(self) -> None:
        """Remove the oldest files until the total is under max_bytes."""
        files = []
        total = 0
        for sub in ("artifacts", "packs"):
            d = self.root / sub
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if p.name.startswith(".tmp-"):
                    continue
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                files.append((st.st_mtime, st.st_size, p))
                total += st.st_size
        if total <= self.max_bytes:
            return
        for _m, size, p in sorted(files):
            if total <= self.max_bytes:
                break
            try:
                p.unlink()
                total -= size
            except FileNotFoundError:
                pass

    def collect(self, artifact_shas: set[str], manifest_digests: set[str], grace_seconds: float = 3600,
                dry_run: bool = False, started: float | None = None) -> dict:
        """Remove the files no version needs: `artifacts/<sha256>` whose sha256 no version's artifact
        has, `packs/<digest>-...` whose manifest digest no version has, and temp files of builds
        older than the grace. Like chunks, a file touched within `grace_seconds` stays (a version
        being published, a request being answered). Returns counts for the gc report."""
        started = time.time() if started is None else started
        removed = freed = 0
        for sub, wanted in (("artifacts", lambda n: n in artifact_shas), ("packs", lambda n: n[:64] in manifest_digests)):
            d = self.root / sub
            if not d.is_dir():
                continue
            for p in d.iterdir():
                tmp = p.name.startswith(".tmp-")
                if not tmp and wanted(p.name):
                    continue
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                if st.st_mtime > started - (max(grace_seconds, 60) if tmp else grace_seconds):
                    continue
                removed += 1
                freed += st.st_size
                if not dry_run:
                    p.unlink(missing_ok=True)
        return {"served_files_removed": removed, "served_bytes_freed": freed}
