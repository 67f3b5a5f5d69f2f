"""Temporary work directories of the images part, each covered by a lease (issue 11 #6).

`DATA/tmp/import-ID/` (a local import: the uncompressed squashfs it builds) and `DATA/tmp/build-ID/`
(an image build: the whole root tree) can be gigabytes. Each has a lease next to it,
`DATA/tmp/PREFIX-ID.lock`, `flock`ed by its owner before the directory exists and for as long as
it works; the lease is live exactly while its lock is held, so a killed owner's directory is known
dead at once. `sweep` (run by `image gc` and at the start of every import and build) removes every
such directory no live lease covers, and unlocked leases without a directory.

A directory without a lease file is dead too: owners always create the lease first (directories
left by older versions, which had no leases, are removed by the next sweep).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import uuid
from pathlib import Path

from netslate.errors import UserError
from netslate.images import mounts

PREFIXES = ("import", "build")
_ENTRY = re.compile(r"^(?P<prefix>[a-z][a-z-]*?)-(?P<id>[A-Za-z0-9_]+)(?P<lock>\.lock)?\Z")


def _lock_exclusive_new(path: Path):
    """Create and lock `path`; retried if a sweep removed the file between open and flock."""
    while True:
        f = open(path, "a+")
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()  # a sweep took the file while it was unlocked: take a fresh one


class WorkDir:
    """`with WorkDir(tmp_dir, "import") as path:` a fresh directory, removed on the way out,
    whose lease (`path.lock`) is held for as long as the block runs."""

    def __init__(self, tmp_dir: Path, prefix: str):
        self.tmp_dir = Path(tmp_dir)
        self.prefix = prefix
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        ident = uuid.uuid4().hex
        self.lock_path = self.tmp_dir / f"{prefix}-{ident}.lock"
        self._lock = _lock_exclusive_new(self.lock_path)
        self.path = self.tmp_dir / f"{prefix}-{ident}"
        self.path.mkdir()

    def close(self) -> None:
        try:
            mounts.safe_rmtree(self.path)
        finally:
            self.lock_path.unlink(missing_ok=True)
            self._lock.close()

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        self.close()


def _remove(path: Path) -> int:
    """Size in bytes of what was removed (a directory's files, or a file)."""
    size = 0
    try:
        if path.is_dir() and not path.is_symlink():
            for root, _dirs, files in os.walk(path):
                for name in files:
                    try:
                        size += os.lstat(os.path.join(root, name)).st_size
                    except OSError:
                        pass
            try:
                mounts.safe_rmtree(path)  # a dead build may have left /proc or a bind of /dev mounted
            except UserError:
                return 0  # still mounted (not root?): kept, never deleted through a mount
        else:
            size = path.lstat().st_size
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
    return size


def sweep(tmp_dir: Path, prefixes: tuple[str, ...] = PREFIXES, dry_run: bool = False) -> dict:
    """Remove work directories (and files) of the given prefixes that no live lease covers.
    Returns {"removed": [names], "bytes": total}."""
    tmp_dir = Path(tmp_dir)
    removed: list[str] = []
    total = 0
    if not tmp_dir.is_dir():
        return {"removed": removed, "bytes": total}
    for entry in sorted(tmp_dir.iterdir()):
        m = _ENTRY.match(entry.name)
        if m is None or m["prefix"] not in prefixes:
            continue
        lock_path = entry if m["lock"] else tmp_dir / (entry.name + ".lock")
        try:
            f = open(lock_path)
        except FileNotFoundError:
            f = None
        if f is None:
            if not m["lock"]:  # no lease at all: nobody owns it
                removed.append(entry.name)
                total += 0 if dry_run else _remove(entry)
            continue
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live owner
            work = tmp_dir / entry.name.removesuffix(".lock")
            if work.exists() or work.is_symlink():
                removed.append(work.name)
                total += 0 if dry_run else _remove(work)
            if not dry_run:
                lock_path.unlink(missing_ok=True)  # still holding its lock: no owner can take it meanwhile
    return {"removed": sorted(set(removed)), "bytes": total}
