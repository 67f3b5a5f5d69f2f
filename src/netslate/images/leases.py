"""Import leases: what garbage collection must spare while an import is in progress.

Two kinds live in `DATA/imports/`:
- `ID.lease`: a local import in this process. The file is `flock`ed by its importer for as long
  as the import runs; a lease nobody holds is stale (the importer died) and is removed.
- `ID.upload`: an import whose chunks arrive over HTTP (a remote `image import`). Its requests
  may reach any server worker, so no process holds it; it lives while it was touched within
  `UPLOAD_TTL` seconds (every request of the import appends to it) and is removed after that.

Both list one chunk id per line. GC reads leases before the database, so a chunk is always
covered by one or the other.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
import uuid
from pathlib import Path

from netslate.errors import NotFound, UserError

UPLOAD_TTL = 900.0  # seconds an upload lease survives without a request of its import
_LEASE_ID = re.compile(r"^[0-9a-f]{32}\Z")


class ImportLease:
    """Marks a local import in progress: GC spares every chunk id listed in a locked lease file."""

    def __init__(self, imports_dir: Path):
        imports_dir.mkdir(parents=True, exist_ok=True)
        self.path = imports_dir / f"{uuid.uuid4().hex}.lease"
        self._f = open(self.path, "a+")
        fcntl.flock(self._f, fcntl.LOCK_EX)

    def note(self, chunk_id: str) -> None:
        """List a chunk before it is stored: flushed at once, so a gc that runs now sees it."""
        self.note_many([chunk_id])

    def note_many(self, chunk_ids: list[str]) -> None:
        """List a batch of chunks in one write (ingest notes a batch before storing any of it)."""
        self._f.write("".join(c + "\n" for c in chunk_ids))
        self._f.flush()

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        try:
            self._f.close()
        except OSError:
            pass  # e.g. disk full while flushing a lease nobody needs any more

    @staticmethod
    def active_ids(imports_dir: Path) -> set[str]:
        """Chunk ids of every live lease (local and upload); stale lease files are removed."""
        return active_ids(imports_dir)


class UploadLease:
    """The lease of a remote import, named by an id the client sends with each request."""

    def __init__(self, imports_dir: Path, lease_id: str):
        if not _LEASE_ID.match(lease_id or ""):
            raise UserError(f"not an import lease id: {str(lease_id)[:80]!r}")
        self.id = lease_id
        self.path = imports_dir / f"{lease_id}.upload"

    @classmethod
    def open(cls, imports_dir: Path) -> "UploadLease":
        imports_dir.mkdir(parents=True, exist_ok=True)
        lease = cls(imports_dir, uuid.uuid4().hex)
        lease.path.touch(exist_ok=False)
        return lease

    @classmethod
    def existing(cls, imports_dir: Path, lease_id: str) -> "UploadLease":
        lease = cls(imports_dir, lease_id)
        if not lease._alive():
            raise NotFound(f"import lease {lease_id} is unknown or expired (after {UPLOAD_TTL:.0f} s without a request); start the import again")
        return lease

    def _alive(self) -> bool:
        try:
            return self.path.stat().st_mtime > time.time() - UPLOAD_TTL
        except FileNotFoundError:
            return False

    def note(self, chunk_ids) -> None:
        """Append chunk ids (one write, so concurrent workers do not interleave lines) and renew."""
        text = "".join(c + "\n" for c in chunk_ids)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            if text:
                os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.utime(self.path)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


def active_ids(imports_dir: Path) -> set[str]:
    """Chunk ids of live leases; stale lease files (owner died, upload expired) are removed."""
    ids: set[str] = set()
    if not imports_dir.exists():
        return ids
    for p in imports_dir.glob("*.lease"):
        try:
            f = open(p)
        except FileNotFoundError:
            continue
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                ids.update(line.strip() for line in f if line.strip())
                continue
            p.unlink(missing_ok=True)  # nobody holds it: the importer is gone
    deadline = time.time() - UPLOAD_TTL
    for p in imports_dir.glob("*.upload"):
        try:
            if p.stat().st_mtime <= deadline:
                p.unlink(missing_ok=True)  # the remote importer stopped talking
                continue
            ids.update(line.strip() for line in p.read_text().splitlines() if line.strip())
        except FileNotFoundError:
            continue
    return ids
