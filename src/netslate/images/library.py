"""The image library: versions, tags, import, gc and verify over the chunk store and the database."""

import bisect
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as DbIntegrityError

from netslate import audit
from netslate.canonical import canonical_json
from netslate.errors import Conflict, NotFound, UserError
from netslate.images import chunker, manifest as mf
from netslate.images.chunkstore import ChunkCorrupt, ChunkMissing
from netslate.images.models import Image, ImageTag, ImageVersion, TagEvent
from netslate.images.rootfs import prepare_rootfs
from netslate.names import check_name

Progress = Callable[[int], None]


def _iso(t: dt.datetime) -> str:
    return t.replace(microsecond=0).isoformat() + "Z"


@dataclass
class Resolved:
    name: str
    version: int
    manifest_digest: str
    envelope: dict
    tag: str | None = None

    @property
    def manifest(self) -> dict:
        return self.envelope["payload"]

    @property
    def artifacts(self) -> dict:
        return self.manifest["artifacts"]


class ImportLease:
    """Marks an import in progress: GC spares every chunk id listed in a locked lease file."""

    def __init__(self, imports_dir: Path):
        imports_dir.mkdir(parents=True, exist_ok=True)
        self.path = imports_dir / f"{uuid.uuid4().hex}.lease"
        self._f = open(self.path, "a+")
        fcntl.flock(self._f, fcntl.LOCK_EX)

    def note(self, chunk_id: str) -> None:
        self._f.write(chunk_id + "\n")

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
        """Chunk ids of live leases; stale lease files (owner died) are removed."""
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
        return ids


class Library:
    def __init__(self, ctx):
        self.ctx = ctx
        self.store = ctx.chunks
        self.imports_dir = ctx.data_dir / "imports"
        self.tmp_dir = ctx.data_dir / "tmp"
        self._manifests: dict[tuple[int, str], dict] = {}
        self._cache_lock = threading.Lock()
        # Checks that refuse `rm` of a version in use: fn(name, version) -> [reasons]. Boot pins and
        # profiles always count, whether the CLI works locally or through a server.
        self.usage_checks: list[Callable[[str, int], list[str]]] = [self._boot_usage]

    def _boot_usage(self, name: str, version: int) -> list[str]:
        from netslate.boot.store import versions_in_use

        return versions_in_use(self.ctx, name, version)

    # ---------- reading ----------

    def _image(self, s, name: str) -> Image:
        img = s.scalar(select(Image).where(Image.name == name))
        if img is None:
            raise NotFound(f"no image named {name!r}")
        return img

    def _version_row(self, s, name: str, ref: str | int) -> tuple[ImageVersion, str | None]:
        img = self._image(s, name)
        ref = str(ref)
        tag = None
        if ref.isdigit():
            number = int(ref)
        elif ref == "latest":
            number = s.scalar(select(func.max(ImageVersion.version)).where(ImageVersion.image_id == img.id))
            if number is None:
                raise NotFound(f"image {name!r} has no versions")
        else:
            check_name(ref, "tag")
            row = s.get(ImageTag, (img.id, ref))
            if row is None:
                raise NotFound(f"image {name!r} has no tag {ref!r}")
            number, tag = row.version, ref
        v = s.scalar(select(ImageVersion).where(ImageVersion.image_id == img.id, ImageVersion.version == number))
        if v is None:
            raise NotFound(f"image {name!r} has no version {number}")
        return v, tag

    def _envelope(self, v: ImageVersion) -> dict:
        """The parsed signed manifest of a version row. Versions are immutable, so parsed manifests
        are cached by (row id, digest); a large image's manifest is megabytes of JSON."""
        key = (v.id, v.manifest_digest)
        with self._cache_lock:
            env = self._manifests.get(key)
        if env is None:
            env = json.loads(v.manifest_json)
            with self._cache_lock:
                if len(self._manifests) >= 64:
                    self._manifests.pop(next(iter(self._manifests)))
                self._manifests[key] = env
        return env

    def resolve(self, name: str, ref: str | int = "latest") -> Resolved:
        with self.ctx.db.session() as s:
            v, tag = self._version_row(s, name, ref)
            return Resolved(name, v.version, v.manifest_digest, self._envelope(v), tag)

    def manifest_document(self, name: str, ref: str) -> dict:
        """What GET /images/NAME/REF/manifest serves: the signed manifest, and a signed tag statement."""
        with self.ctx.db.session() as s:
            v, tag = self._version_row(s, name, ref)
            doc = {"manifest": self._envelope(v), "digest": v.manifest_digest, "tag": None}
            if tag:
                row = s.get(ImageTag, (v.image_id, tag))
                doc["tag"] = self.ctx.signing_key.sign(mf.tag_statement(name, tag, row.version, row.seq, v.manifest_digest))
            return doc

    def list_images(self) -> list[dict]:
        with self.ctx.db.session() as s:
            out = []
            for img in s.scalars(select(Image).order_by(Image.name)):
                versions = list(s.scalars(select(ImageVersion.version).where(ImageVersion.image_id == img.id).order_by(ImageVersion.version)))
                tags = {t.tag: t.version for t in s.scalars(select(ImageTag).where(ImageTag.image_id == img.id))}
                latest = s.scalar(select(ImageVersion).where(ImageVersion.image_id == img.id).order_by(ImageVersion.version.desc()))
                out.append({
                    "name": img.name,
                    "versions": versions,
                    "latest": versions[-1] if versions else None,
                    "tags": dict(sorted(tags.items())),
                    "bytes_latest": latest.bytes_total if latest else 0,
                })
            return out

    def _version_info(self, s, img: Image, v: ImageVersion, tags: dict[str, int]) -> dict:
        manifest = self._envelope(v)["payload"]
        return {
            "name": img.name,
            "version": v.version,
            "created_at": _iso(v.created_at),
            "created_by": v.created_by,
            "source": v.source,
            "parent_version": v.parent_version,
            "note": v.note,
            "bytes_total": v.bytes_total,
            "bytes_new": v.bytes_new,
            "manifest_digest": v.manifest_digest,
            "tags": sorted(t for t, ver in tags.items() if ver == v.version),
            "artifacts": {
                k: {"size": a["size"], "sha256": a["sha256"], "chunks": len(a["chunks"]), **({"format": a["format"]} if "format" in a else {})}
                for k, a in manifest["artifacts"].items()
            },
        }

    def list_versions(self, name: str) -> list[dict]:
        with self.ctx.db.session() as s:
            img = self._image(s, name)
            tags = {t.tag: t.version for t in s.scalars(select(ImageTag).where(ImageTag.image_id == img.id))}
            rows = s.scalars(select(ImageVersion).where(ImageVersion.image_id == img.id).order_by(ImageVersion.version))
            return [self._version_info(s, img, v, tags) for v in rows]

    def show(self, name: str, ref: str = "latest") -> dict:
        with self.ctx.db.session() as s:
            v, _ = self._version_row(s, name, ref)
            img = s.get(Image, v.image_id)
            tags = {t.tag: t.version for t in s.scalars(select(ImageTag).where(ImageTag.image_id == img.id))}
            info = self._version_info(s, img, v, tags)
            info["tag_history"] = [
                {"tag": e.tag, "from": e.old_version, "to": e.new_version, "at": _iso(e.at), "by": e.actor, "reason": e.reason}
                for e in s.scalars(select(TagEvent).where(TagEvent.image_id == img.id).order_by(TagEvent.id))
            ]
            return info

    def diff(self, name: str, a: str, b: str) -> dict:
        ma = self.resolve(name, a).manifest
        mb = self.resolve(name, b).manifest
        return {"name": name, **mf.diff(ma, mb)}

    # ---------- writing ----------

    def import_files(
        self,
        name: str,
        rootfs: Path | None = None,
        kernel: Path | None = None,
        initrd: Path | None = None,
        tag: str | None = None,
        note: str = "",
        source: str = "",
        actor: str | None = None,
        parent: int | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        warn: Callable[[str], None] = print,
    ) -> dict:
        """Chunk and store the given files, then publish them as the next version in one transaction."""
        check_name(name, "image name")
        if tag:
            check_name(tag, "tag")
        if rootfs is None and kernel is None:
            raise UserError("an image version needs at least a rootfs or a kernel")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="import-", dir=self.tmp_dir))
        lease = ImportLease(self.imports_dir)
        try:  # noqa: SIM105 - ENOSPC anywhere below becomes one clear error
            files: dict[str, tuple[Path, str | None]] = {}
            if rootfs is not None:
                files["rootfs"] = prepare_rootfs(Path(rootfs), work, name, warn=warn)
            for art, path in (("kernel", kernel), ("initrd", initrd)):
                if path is not None:
                    if not Path(path).is_file():
                        raise UserError(f"{art} file {path} does not exist")
                    files[art] = (Path(path), None)
            records: dict[str, mf.ArtifactRecord] = {}
            bytes_new = 0
            for art, (path, fmt) in files.items():
                record, new = self._store_file(path, fmt, lease, lambda done, total, a=art: progress and progress(a, done, total))
                records[art] = record
                bytes_new += new
            lease.flush()
            self.store.sync()
            src = source or " ".join(f"{k}={p}" for k, (p, _f) in sorted(files.items()))
            return self.register_version(name, records, tag=tag, note=note, source=src, actor=actor, parent=parent, bytes_new=bytes_new)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(f"disk full while importing {name!r} into {self.ctx.data_dir}; no version was created") from None
            raise
        finally:
            lease.close()
            shutil.rmtree(work, ignore_errors=True)

    def _store_file(self, path: Path, fmt: str | None, lease: ImportLease, progress) -> tuple[mf.ArtifactRecord, int]:
        """Chunk and hash in this thread; compress and write in a small pool (zstd, hashing and file
        I/O release the GIL, so an import uses both cores)."""
        from concurrent.futures import ThreadPoolExecutor

        total = os.path.getsize(path)
        whole = hashlib.sha256()
        chunks: list[list] = []
        new_bytes = 0
        done = 0
        pending = []
        with ThreadPoolExecutor(max_workers=2) as pool:
            for piece in chunker.cut_file(path):
                whole.update(piece.data)
                lease.note(piece.chunk_id)
                pending.append((piece.size, pool.submit(self.store.put, piece.chunk_id, piece.data)))
                chunks.append([piece.offset, piece.size, piece.chunk_id])
                done += piece.size
                if len(pending) >= 64:  # bound memory: at most 64 chunks in flight
                    for size, fut in pending:
                        if fut.result():
                            new_bytes += size
                    pending.clear()
                    if progress:
                        progress(done, total)
            for size, fut in pending:
                if fut.result():
                    new_bytes += size
        if progress:
            progress(total, total)
        return mf.ArtifactRecord(size=total, sha256=whole.hexdigest(), chunks=chunks, format=fmt), new_bytes

    def register_version(
        self,
        name: str,
        records: dict[str, mf.ArtifactRecord],
        tag: str | None = None,
        note: str = "",
        source: str = "",
        actor: str | None = None,
        parent: int | None = None,
        bytes_new: int | None = None,
    ) -> dict:
        """Publish stored chunks as a new version: one transaction, retried if another import won the number."""
        check_name(name, "image name")
        actor = actor or audit.default_actor()
        for art, rec in records.items():
            if art not in mf.ARTIFACTS:
                raise UserError(f"unknown artifact {art!r}: use {', '.join(mf.ARTIFACTS)}")
            try:
                mf.check_chunk_list(rec.chunks, rec.size)
            except ValueError as exc:
                raise UserError(f"{art}: {exc}") from None
            missing = [c for _o, _s, c in rec.chunks if not self.store.has(c)]
            if missing:
                raise UserError(f"{art}: {len(missing)} chunks are not in the store (first {missing[0]})")
        bytes_total = sum(r.size for r in records.values())
        for attempt in range(8):
            try:
                with self.ctx.db.session() as s:
                    img = s.scalar(select(Image).where(Image.name == name))
                    if img is None:
                        img = Image(name=name)
                        s.add(img)
                        s.flush()
                    latest = s.scalar(select(func.max(ImageVersion.version)).where(ImageVersion.image_id == img.id)) or 0
                    number = latest + 1
                    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
                    payload = mf.build_manifest(name, number, created.isoformat().replace("+00:00", "Z"), records)
                    envelope = self.ctx.signing_key.sign(payload)
                    digest = mf.digest(payload)
                    if bytes_new is None:
                        bytes_new = self._bytes_new_against(s, img.id, payload)
                    s.add(ImageVersion(
                        image_id=img.id, version=number, created_at=created.replace(tzinfo=None), created_by=actor,
                        source=source, parent_version=parent if parent is not None else (latest or None), note=note,
                        bytes_total=bytes_total, bytes_new=bytes_new,
                        manifest_json=canonical_json(envelope).decode(), manifest_digest=digest,
                    ))
                    s.flush()
                    audit.record(s, actor, "image.version.create", f"{name}@{number}", digest=digest, note=note, source=source)
                    if tag:
                        self._move_tag(s, img, tag, number, actor, f"set at import of version {number}")
                break
            except DbIntegrityError:
                if attempt == 7:
                    raise Conflict(f"could not allocate a version number for {name!r}: too many concurrent imports")
                time.sleep(0.05 * (attempt + 1))
        return {
            "name": name,
            "version": number,
            "manifest_digest": digest,
            "artifacts": {k: {"size": r.size, "sha256": r.sha256, "chunks": len(r.chunks), **({"format": r.format} if r.format else {})} for k, r in records.items()},
            "bytes_new": bytes_new,
            "bytes_total": bytes_total,
            "tag": tag,
        }

    def _bytes_new_against(self, s, image_id: int, payload: dict) -> int:
        seen: set[str] = set()
        for (mj,) in s.execute(select(ImageVersion.manifest_json).where(ImageVersion.image_id == image_id)):
            seen.update(mf.chunk_sizes(json.loads(mj)["payload"]))
        return sum(size for cid, size in mf.chunk_sizes(payload).items() if cid not in seen)

    def _move_tag(self, s, img: Image, tag: str, version: int, actor: str, reason: str) -> None:
        row = s.get(ImageTag, (img.id, tag))
        event = TagEvent(image_id=img.id, tag=tag, old_version=row.version if row else None, new_version=version, actor=actor, reason=reason)
        s.add(event)
        s.flush()
        if row is None:
            s.add(ImageTag(image_id=img.id, tag=tag, version=version, seq=event.id))
        else:
            row.version, row.seq = version, event.id
        audit.record(s, actor, "image.tag.move", f"{img.name}:{tag}", old=event.old_version, new=version, reason=reason)

    def set_tag(self, name: str, version: int | str, tag: str, actor: str | None = None, reason: str = "") -> dict:
        check_name(tag, "tag")
        if tag in ("latest",) or tag.isdigit():
            raise UserError(f"{tag!r} cannot be a tag name")
        actor = actor or audit.default_actor()
        with self.ctx.db.session() as s:
            v, _ = self._version_row(s, name, version)
            img = s.get(Image, v.image_id)
            self._move_tag(s, img, tag, v.version, actor, reason)
        return {"name": name, "tag": tag, "version": v.version}

    def remove_tag(self, name: str, tag: str, actor: str | None = None, reason: str = "") -> None:
        actor = actor or audit.default_actor()
        with self.ctx.db.session() as s:
            img = self._image(s, name)
            row = s.get(ImageTag, (img.id, tag))
            if row is None:
                raise NotFound(f"image {name!r} has no tag {tag!r}")
            s.add(TagEvent(image_id=img.id, tag=tag, old_version=row.version, new_version=None, actor=actor, reason=reason))
            s.delete(row)
            audit.record(s, actor, "image.tag.remove", f"{name}:{tag}", old=row.version, reason=reason)

    def remove_version(self, name: str, version: int | str, actor: str | None = None) -> None:
        actor = actor or audit.default_actor()
        with self.ctx.db.session() as s:
            v, _ = self._version_row(s, name, version)
            if not str(version).isdigit():
                raise UserError("name a version number to remove, not a tag")
            tags = [t.tag for t in s.scalars(select(ImageTag).where(ImageTag.image_id == v.image_id, ImageTag.version == v.version))]
            reasons = [f"tag {t!r} points to it" for t in tags]
            for check in self.usage_checks:
                reasons += check(name, v.version)
            if reasons:
                raise Conflict(f"{name}@{v.version} is in use: {'; '.join(reasons)}")
            s.delete(v)
            audit.record(s, actor, "image.version.remove", f"{name}@{v.version}")

    # ---------- maintenance ----------

    def referenced_chunks(self) -> set[str]:
        ids: set[str] = set()
        with self.ctx.db.session() as s:
            for (mj,) in s.execute(select(ImageVersion.manifest_json)):
                ids.update(mf.chunk_sizes(json.loads(mj)["payload"]))
        return ids

    def gc(self, grace_seconds: float = 3600, dry_run: bool = False) -> dict:
        """Delete chunks no version references. Spares chunks of imports in progress (their leases)
        and anything touched within the grace period (uploads not yet registered)."""
        started = time.time()
        in_progress = ImportLease.active_ids(self.imports_dir)  # leases first, then the database
        referenced = self.referenced_chunks()
        keep = in_progress | referenced
        removed = freed = kept_recent = 0
        for cid, path in list(self.store.iter_ids()):
            if cid in keep:
                continue
            st = path.stat()
            if st.st_mtime > started - grace_seconds:
                kept_recent += 1
                continue
            removed += 1
            freed += st.st_size
            if not dry_run:
                path.unlink(missing_ok=True)
        temps = 0
        for tmp in self.store.temp_files():
            if tmp.stat().st_mtime < started - max(grace_seconds, 60):
                temps += 1
                if not dry_run:
                    tmp.unlink(missing_ok=True)
        return {"chunks_removed": removed, "bytes_freed": freed, "chunks_referenced": len(referenced),
                "chunks_in_progress": len(in_progress), "chunks_spared_recent": kept_recent,
                "temp_files_removed": temps, "dry_run": dry_run}

    def verify(self, name: str | None = None, ref: str | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
        """Re-hash stored chunks of every (or one image's, or one version's) version."""
        targets: list[Resolved] = []
        if name and ref:
            targets = [self.resolve(name, ref)]
        else:
            names = [name] if name else [i["name"] for i in self.list_images()]
            for n in names:
                targets += [self.resolve(n, v["version"]) for v in self.list_versions(n)]
        wanted: dict[str, list[str]] = {}
        for r in targets:
            for art, a in r.artifacts.items():
                for _o, _s, cid in a["chunks"]:
                    wanted.setdefault(cid, []).append(f"{r.name}@{r.version}:{art}")
        corrupt, missing = [], []
        for i, cid in enumerate(sorted(wanted)):
            try:
                self.store.read(cid, verify=True)
            except ChunkMissing:
                missing.append(cid)
            except (ChunkCorrupt, Exception):
                corrupt.append(cid)
            if progress:
                progress(i + 1, len(wanted))
        bad_versions = sorted({u for cid in corrupt + missing for u in wanted[cid]})
        return {"ok": not corrupt and not missing, "versions_checked": len(targets), "chunks_checked": len(wanted),
                "corrupt": corrupt, "missing": missing, "affected": bad_versions}

    # ---------- serving ----------

    def artifact_record(self, name: str, ref: str, artifact: str) -> tuple[Resolved, dict]:
        r = self.resolve(name, ref)
        if artifact not in r.artifacts:
            raise NotFound(f"{name}@{r.version} has no {artifact}")
        return r, r.artifacts[artifact]

    def read_range(self, record: dict, start: int, end: int, block: int = 1 << 20) -> Iterator[bytes]:
        """Yield bytes [start, end) of an artifact in blocks of about `block` bytes (verified: a corrupt
        chunk stops the stream). Blocks, not chunks, because each yield costs a thread hop when served."""
        chunks = record["chunks"]
        offsets = [c[0] for c in chunks]
        i = max(bisect.bisect_right(offsets, start) - 1, 0)
        pending: list[bytes] = []
        pending_len = 0
        while i < len(chunks) and start < end:
            off, size, cid = chunks[i]
            data = self.store.read(cid, verify=True)
            lo = start - off
            hi = min(size, end - off)
            piece = data[lo:hi] if (lo or hi != size) else data
            pending.append(piece)
            pending_len += len(piece)
            if pending_len >= block:
                yield b"".join(pending)
                pending, pending_len = [], 0
            start = off + hi
            i += 1
        if pending:
            yield b"".join(pending)
