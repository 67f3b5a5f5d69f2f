"""Importing files as a new version: the input checks (shared by local and remote imports),
chunking, storing under an import lease, and publishing through the catalog."""

from __future__ import annotations

import errno
import gc
import hashlib
import mmap
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from netslate.errors import UserError
from netslate.images import chunker, manifest as mf, workdirs
from netslate.images.chunkstore import CHUNK_ID, ChunkCorrupt
from netslate.images.leases import ImportLease, UploadLease
from netslate.images.ranges import whole_sha256
from netslate.images.rootfs import prepare_rootfs
from netslate.images.versioning import check_tag_name
from netslate.names import check_name

Warn = Callable[[str], None]
ArtifactProgress = Callable[[str, int, int], None]


def collect_files(name: str, work: Path, rootfs: Path | None = None, kernel: Path | None = None,
                  initrd: Path | None = None, tag: str | None = None, warn: Warn = print) -> dict[str, tuple[Path, str | None]]:
    """artifact → (file, format) for an import, after every check an import makes wherever it runs:
    names, at least a rootfs or a kernel, kernel and initrd are files, the rootfs source becomes an
    uncompressed filesystem image in `work` (with the same warnings)."""
    check_name(name, "image name")
    if tag:
        check_tag_name(tag)
    if rootfs is None and kernel is None:
        raise UserError("an image version needs at least a rootfs or a kernel")
    for art, path in (("kernel", kernel), ("initrd", initrd)):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{art} file {path} does not exist")
    files: dict[str, tuple[Path, str | None]] = {}
    if rootfs is not None:
        files["rootfs"] = prepare_rootfs(Path(rootfs), work, name, warn=warn)
    for art, path in (("kernel", kernel), ("initrd", initrd)):
        if path is not None:
            files[art] = (Path(path), None)
    return files


def source_of(files: dict[str, tuple[Path, str | None]]) -> str:
    return " ".join(f"{k}={p}" for k, (p, _f) in sorted(files.items()))


# The ingest pipeline (issue 14 goal 3): the file is mapped once and read once. This thread finds
# the chunk boundaries (FastCDC, ~3 GB/s) and feeds the whole-file SHA-256 (hashlib releases the GIL);
# a pool hashes each chunk and compresses and writes it (SHA-256, zstd and file writes release the
# GIL too), so an import keeps both cores busy. Batches of ~1 MiB keep the per-task overhead low;
# results are taken in order, so the chunk list is the same whatever the number of workers.
BATCH_BYTES = 1 << 20
WORKERS = max(1, min(4, os.cpu_count() or 1))


def _pipeline(path: Path, work: Callable[[memoryview, list[tuple[int, int]]], tuple[list[str], set[str]]],
              progress: Callable[[int, int], None] | None, workers: int) -> tuple[str, list[list], set[str]]:
    """(whole-file sha256, chunk list, union of work's second results) of a file, `work(view, cuts)`
    running on `workers` threads over batches of chunks in file order."""
    total = os.path.getsize(path)
    whole = hashlib.sha256()
    chunks: list[list] = []
    extra: set[str] = set()
    if total == 0:
        return whole.hexdigest(), chunks, extra
    # The pipeline makes only acyclic objects (lists, tuples, str): cyclic GC passes over the
    # whole heap here were up to ~10 % of an import's CPU samples (perf) and find nothing to free.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        return _pipeline_file(path, work, progress, workers, total, whole, chunks, extra)
    finally:
        if gc_was_on:
            gc.enable()


def _pipeline_file(path, work, progress, workers, total, whole, chunks, extra) -> tuple[str, list[list], set[str]]:
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        try:
            mm.madvise(mmap.MADV_SEQUENTIAL)
        except (AttributeError, OSError):  # pragma: no cover - not everywhere
            pass
        view = memoryview(mm)
        try:
            pending: deque = deque()

            def take() -> None:
                cuts, fut = pending.popleft()
                ids, more = fut.result()
                extra.update(more)
                chunks.extend([o, size, cid] for (o, size), cid in zip(cuts, ids))
                if progress:
                    progress(cuts[-1][0] + cuts[-1][1], total)

            with ThreadPoolExecutor(max_workers=workers) as pool:
                batch: list[tuple[int, int]] = []
                batch_bytes = 0
                for off, size in chunker.boundaries(view):
                    batch.append((off, size))
                    batch_bytes += size
                    if batch_bytes >= BATCH_BYTES:
                        pending.append((batch, pool.submit(work, view, batch)))
                        whole.update(view[batch[0][0]:off + size])
                        batch, batch_bytes = [], 0
                        while len(pending) > 4 * workers:  # bound memory and keep results in order
                            take()
                if batch:
                    pending.append((batch, pool.submit(work, view, batch)))
                    whole.update(view[batch[0][0]:])
                while pending:
                    take()
        finally:
            try:
                view.release()
                mm.close()
            except BufferError:  # slices still held by an exception's traceback: the mapping goes with them
                pass
    return whole.hexdigest(), chunks, extra


def _hash_batch(view: memoryview, cuts: list[tuple[int, int]]) -> tuple[list[str], set[str]]:
    return [hashlib.sha256(view[o:o + n]).hexdigest() for o, n in cuts], set()


def chunk_list(path: Path, workers: int = WORKERS) -> tuple[mf.ArtifactRecord, list]:
    """The record of a file (size, sha256, chunk list) without storing anything (remote imports)."""
    sha, pieces, _ = _pipeline(Path(path), _hash_batch, None, workers)
    return mf.ArtifactRecord(size=os.path.getsize(path), sha256=sha, chunks=pieces), pieces


def store_file(store, path: Path, fmt: str | None, lease: ImportLease, progress, workers: int = WORKERS) -> tuple[mf.ArtifactRecord, int]:
    """Chunk, hash, compress and store a file in one pass on `workers` threads; (record, new bytes)."""

    note_lock = threading.Lock()  # the lease file is one text stream shared by the workers

    def work(view: memoryview, cuts: list[tuple[int, int]]) -> tuple[list[str], set[str]]:
        ids, _ = _hash_batch(view, cuts)
        with note_lock:  # listed before stored: a gc that runs now spares them
            lease.note_many(ids)
        written = set()
        for (o, n), cid in zip(cuts, ids):
            if store.put(cid, view[o:o + n]):
                written.add(cid)
        return ids, written

    sha, chunks, written = _pipeline(Path(path), work, progress, workers)
    # New bytes: each chunk this import wrote, once (two workers may both write a repeated chunk)
    sizes = {cid: size for _o, size, cid in chunks}
    new_bytes = sum(sizes[cid] for cid in written)
    total = os.path.getsize(path)
    if progress:
        progress(total, total)
    return mf.ArtifactRecord(size=total, sha256=sha, chunks=chunks, format=fmt), new_bytes


def disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def import_files(library, name: str, rootfs: Path | None = None, kernel: Path | None = None, initrd: Path | None = None,
                 tag: str | None = None, note: str = "", source: str = "", actor: str | None = None,
                 parent: int | None = None, progress: ArtifactProgress | None = None, warn: Warn = print) -> dict:
    """Chunk and store the given files under an import lease, then publish them as the next
    version in one transaction (`library`: store, catalog, imports_dir, tmp_dir, data_dir)."""
    # The catalog opens on another thread while this one chunks: in a CLI that is SQLAlchemy's
    # import, the migration check and the signing key (~0.2 s of GIL-holding work), and the
    # chunking leaves room for it (hashing, compression and writes release the GIL; issue 14 goal 3).
    opener = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netslate-open-catalog")
    opening = opener.submit(library.open_catalog)
    workdirs.sweep(library.tmp_dir)  # what killed imports and builds left behind (issue 11 #6)
    workdir = workdirs.WorkDir(library.tmp_dir, "import")  # leased: gc spares it while we run
    work = workdir.path
    lease = ImportLease(library.imports_dir)
    try:  # noqa: SIM105 - ENOSPC anywhere below becomes one clear error
        files = collect_files(name, work, rootfs=rootfs, kernel=kernel, initrd=initrd, tag=tag, warn=warn)
        records: dict[str, mf.ArtifactRecord] = {}
        bytes_new = 0
        for art, (path, fmt) in files.items():

            def report(done: int, total: int, a: str = art) -> None:
                if opening.done() and opening.exception() is not None:  # no database: stop now, not after the file
                    raise opening.exception()
                if progress:
                    progress(a, done, total)

            record, new = store_file(library.store, path, fmt, lease, report)
            records[art] = record
            bytes_new += new
        lease.flush()
        library.store.sync()
        catalog = opening.result()
        return catalog.register_version(name, records, tag=tag, note=note, source=source or source_of(files),
                                        actor=actor, parent=parent, bytes_new=bytes_new)
    except OSError as exc:
        if disk_full(exc):
            raise UserError(f"disk full while importing {name!r} into {library.data_dir}; no version was created") from None
        raise
    finally:
        lease.close()
        workdir.close()
        opener.shutdown(wait=True)  # an error above: the opening still ends before we return


# ---------- the server side of a remote import: lease, missing chunks, uploads, publish ----------


def open_upload(library) -> UploadLease:
    """Start a remote import: a lease that keeps its chunks from gc until it publishes or expires."""
    return UploadLease.open(library.imports_dir)


def missing_chunks(library, ids: list[str], lease_id: str | None = None) -> list[str]:
    """Which of these chunk ids the store lacks. With a lease, all of them are leased first (the
    ones present too: gc must not take them before the version is published)."""
    bad = [c for c in ids if not CHUNK_ID.match(c)]
    if bad:
        raise UserError(f"not a chunk id: {bad[0][:80]!r}")
    unique = list(dict.fromkeys(ids))
    if lease_id:
        UploadLease.existing(library.imports_dir, lease_id).note(unique)
    missing = []
    for c in unique:
        found = library.store.locate(c)
        if found is None:
            missing.append(c)
        elif lease_id:
            try:
                os.utime(found[0])  # like a local import reusing a chunk
            except FileNotFoundError:
                missing.append(c)
    return missing


def store_uploaded_chunk(library, chunk_id: str, data: bytes, lease_id: str | None = None) -> int:
    """Store one uploaded chunk after checking it hashes to its id; bytes written (0: had it)."""
    if not CHUNK_ID.match(chunk_id):
        raise UserError("not a chunk id")
    if lease_id:
        UploadLease.existing(library.imports_dir, lease_id).note([chunk_id])
    try:
        return library.store.put_verified(chunk_id, data)
    except ChunkCorrupt as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        if disk_full(exc):
            raise UserError(f"disk full while storing chunk {chunk_id[:12]}… in {library.data_dir}; no version was created") from None
        raise


def publish_upload(library, name: str, records: dict[str, mf.ArtifactRecord], lease_id: str | None = None,
                   tag: str | None = None, note: str = "", source: str = "", actor: str | None = None,
                   parent: int | None = None) -> dict:
    """Publish uploaded chunks as a version: every artifact is re-assembled and re-hashed here first."""
    check_name(name, "image name")
    if tag:
        check_tag_name(tag)
    lease = UploadLease.existing(library.imports_dir, lease_id) if lease_id else None
    try:
        for art, rec in records.items():
            try:
                mf.check_chunk_list(rec.chunks, rec.size)
            except ValueError as exc:
                raise UserError(f"{art}: {exc}") from None
            try:
                got = whole_sha256(library.store, rec.as_dict())
            except Exception:
                raise UserError(f"{art}: chunks are missing or corrupt in the store") from None
            if got != rec.sha256:
                raise UserError(f"{art}: chunks do not add up to sha256 {rec.sha256}")
        library.store.sync()
        return library.catalog.register_version(name, records, tag=tag, note=note, source=source, actor=actor, parent=parent)
    finally:
        if lease is not None:
            lease.close()
