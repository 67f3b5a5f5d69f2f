"""The image library: versions, tags, imports, gc and verify.

Every /api/v1 image operation is declared once in `ImagesService`; the router and the HTTP client
come from it. What runs on the caller's machine is a plain method of the contract:
- `import_files` chunks local files; `LocalImages` stores them directly, `HttpImages` uploads the
  chunks the server lacks under an import lease (`begin_upload`, `missing_chunks`, PUT
  /api/v1/chunks/ID, `create_version`). Both run the same checks first (`ingest.collect_files`).
- `build`, `edit`, `abort_edit`, `commit` run mmdebstrap, mounts and chroot on the server's own
  files; over --server they say so in one line.
The serving endpoints outside /api/v1 (manifests, artifacts with Range, chunks, packs) stay
hand-written in `server/routers/images.py`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from netslate.errors import UserError
from netslate.images import ingest, manifest as mf, workdirs
from netslate.images.leases import UPLOAD_TTL
from netslate.names import check_name
from netslate.services.framework import Op, Service, authorize, http_client, op

# ---------- records (today's JSON, field for field) ----------


class ArtifactSummary(BaseModel):
    size: int
    sha256: str
    chunks: int  # how many
    format: str | None = Field(default=None, exclude_if=lambda v: v is None)  # rootfs only


class ImageSummary(BaseModel):
    name: str
    versions: list[int]
    latest: int | None
    tags: dict[str, int]
    bytes_latest: int


class VersionInfo(BaseModel):
    name: str
    version: int
    created_at: str
    created_by: str
    source: str
    parent_version: int | None
    note: str
    bytes_total: int
    bytes_new: int
    manifest_digest: str
    tags: list[str]
    artifacts: dict[str, ArtifactSummary]


class TagEventRecord(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)

    tag: str
    from_: int | None = Field(alias="from")
    to: int | None
    at: str
    by: str
    reason: str


class VersionDetail(VersionInfo):
    tag_history: list[TagEventRecord]


class ImageDiff(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)

    name: str
    from_: int = Field(alias="from")
    to: int
    chunks_shared: int
    chunks_new: int
    chunks_removed: int
    bytes_shared: int
    bytes_new: int
    bytes_removed: int
    bytes_total: int
    new_fraction: float


class TagMove(BaseModel):
    name: str
    tag: str
    version: int


class GcReport(BaseModel):
    chunks_removed: int
    bytes_freed: int
    chunks_referenced: int
    chunks_in_progress: int
    chunks_spared_recent: int
    temp_files_removed: int
    work_dirs_removed: int = 0  # DATA/tmp/import-* and build-* no live lease covers (issue 11 #6)
    work_bytes_freed: int = 0
    served_files_removed: int = 0  # DATA/serve files (the static front's) of versions that are gone
    served_bytes_freed: int = 0
    dry_run: bool


class VerifyReport(BaseModel):
    ok: bool
    versions_checked: int
    chunks_checked: int
    corrupt: list[str]
    missing: list[str]
    affected: list[str]


class ImportResult(BaseModel):
    name: str
    version: int
    manifest_digest: str
    artifacts: dict[str, ArtifactSummary]
    bytes_new: int
    bytes_total: int
    tag: str | None


class UploadLeaseInfo(BaseModel):
    lease: str
    ttl_seconds: float


class MissingChunks(BaseModel):
    missing: list[str]


class ChunkStored(BaseModel):
    id: str
    stored_bytes: int


class ArtifactUpload(BaseModel):
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # pydantic-core regex: $ is the end of the text
    chunks: list[list] = Field(max_length=10_000_000)
    format: str | None = Field(default=None, pattern=r"^(erofs|squashfs|ext4|raw)$")


class VersionUpload(BaseModel):
    """A version whose chunks were uploaded already (the last step of a remote import)."""

    artifacts: dict[str, ArtifactUpload]
    tag: str | None = None
    note: str = Field(default="", max_length=4096)
    source: str = Field(default="", max_length=4096)
    parent: int | None = None
    lease: str | None = None  # the import's lease (POST /api/v1/images/NAME/imports); released here


Progress = Callable[[str, int, int], None]
Warn = Callable[[str], None]


def _on_server_only(what: str) -> UserError:
    return UserError(f"image {what} works on the server's own files: run it on the server, without --server")


# ---------- the contract ----------


class ImagesService(Service):
    noun = "images"

    @op("GET", "/api/v1/images")
    def list(self) -> list[ImageSummary]:
        """Images with their versions and tags."""
        raise NotImplementedError

    @op("GET", "/api/v1/images/{name}/versions")
    def versions(self, name: str) -> list[VersionInfo]:
        """The versions of one image."""
        raise NotImplementedError

    @op("GET", "/api/v1/images/{name}/diff")
    def diff(self, name: str, a: str, b: str) -> ImageDiff:
        """Chunks and bytes shared and new between versions A and B."""
        raise NotImplementedError

    @op("GET", "/api/v1/images/{name}/{ref}")
    def show(self, name: str, ref: str) -> VersionDetail:
        """One version (NUMBER, TAG or latest): artifacts, digest, tags and tag history."""
        raise NotImplementedError

    @op("PUT", "/api/v1/images/{name}/tags/{tag}", role="operator")
    def set_tag(self, name: str, tag: str, version: int, reason: str = "") -> TagMove:
        """Point TAG at VERSION (promote or roll back); who, when and why are recorded."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/images/{name}/tags/{tag}", role="operator", status=204)
    def remove_tag(self, name: str, tag: str) -> None:
        """Remove a tag."""
        raise NotImplementedError

    @op("DELETE", "/api/v1/images/{name}/versions/{version}", role="admin", status=204)
    def remove_version(self, name: str, version: int) -> None:
        """Remove one version; refused while a tag, a boot profile or a machine pin uses it."""
        raise NotImplementedError

    @op("POST", "/api/v1/images/gc", role="admin")
    def gc(self, grace_seconds: float = 3600, dry_run: bool = False) -> GcReport:
        """Delete chunks no version references (never those of an import in progress)."""
        raise NotImplementedError

    @op("POST", "/api/v1/images/verify", role="operator")
    def verify(self, name: str | None = None, ref: str | None = None) -> VerifyReport:
        """Re-hash stored chunks; list corrupt and missing ones and the versions they affect."""
        raise NotImplementedError

    @op("POST", "/api/v1/images/{name}/imports", role="operator", status=201)
    def begin_upload(self, name: str) -> UploadLeaseInfo:
        """Start a remote import: a lease that keeps its chunks from gc until it publishes (or goes quiet)."""
        raise NotImplementedError

    @op("POST", "/api/v1/chunks/missing", role="operator")
    def missing_chunks(self, ids: Annotated[list[str], Field(max_length=1_000_000)], lease: str | None = None) -> MissingChunks:
        """Which of these chunk ids the store lacks; with a lease, all of them are leased."""
        raise NotImplementedError

    @op("POST", "/api/v1/images/{name}/versions", role="operator", status=201)
    def create_version(self, name: str, request: VersionUpload) -> ImportResult:
        """Publish a version whose chunks were uploaded; the whole artifacts are re-hashed first."""
        raise NotImplementedError

    # ---------- on the caller's side (not HTTP operations) ----------

    def upload_chunk(self, chunk_id: str, data: bytes, lease: str | None = None) -> ChunkStored:
        """Store one chunk (PUT /api/v1/chunks/ID: a raw body, hand-written route)."""
        raise NotImplementedError

    def import_files(self, name: str, rootfs: Path | None = None, kernel: Path | None = None, initrd: Path | None = None,
                     tag: str | None = None, note: str = "", progress: Progress | None = None, warn: Warn = print) -> ImportResult:
        """Make a new version of NAME from local files."""
        raise NotImplementedError

    def verify_with_progress(self, name: str | None = None, ref: str | None = None,
                             progress: Callable[[int, int], None] | None = None) -> VerifyReport:
        return self.verify(name, ref)

    def build(self, name: str, recipe: Path, tag: str | None = None, note: str = "", **callbacks: Any) -> dict:
        raise _on_server_only("build (mmdebstrap, chroot)")

    def edit(self, name: str, script: Path | None = None, shell: bool = False, resume: bool = False, **callbacks: Any) -> dict:
        raise _on_server_only("edit (loop and overlay mounts, chroot)")

    def abort_edit(self, name: str) -> dict:
        raise _on_server_only("edit --abort")

    def commit(self, name: str, message: str, tag: str | None = None, **callbacks: Any) -> dict:
        raise _on_server_only("commit (mounts the open edit)")


# ---------- the local implementation ----------


def _need(caller, role: str) -> None:
    authorize(caller, Op("POST", "", role))


class LocalImages(ImagesService):
    @property
    def library(self):
        return self.parts.library

    def _in_use(self) -> list:
        """What else uses a version: the boot part's profiles and pins."""
        from netslate.boot.store import versions_in_use  # SQLAlchemy: not at import (CLI start-up)

        ctx = self.parts.ctx
        return [lambda name, version: versions_in_use(ctx, name, version)]

    def list(self) -> list[ImageSummary]:
        return [ImageSummary(**i) for i in self.library.list_images()]

    def versions(self, name: str) -> list[VersionInfo]:
        return [VersionInfo(**v) for v in self.library.list_versions(_image_name(name))]

    def diff(self, name: str, a: str, b: str) -> ImageDiff:
        return ImageDiff(**self.library.diff(_image_name(name), a, b))

    def show(self, name: str, ref: str) -> VersionDetail:
        return VersionDetail(**self.library.show(_image_name(name), ref))

    def set_tag(self, name: str, tag: str, version: int, reason: str = "") -> TagMove:
        return TagMove(**self.library.set_tag(name, version, tag, actor=self.actor, reason=reason))

    def remove_tag(self, name: str, tag: str) -> None:
        self.library.remove_tag(name, tag, actor=self.actor)

    def remove_version(self, name: str, version: int) -> None:
        self.library.remove_version(name, version, actor=self.actor, in_use=self._in_use())

    def gc(self, grace_seconds: float = 3600, dry_run: bool = False) -> GcReport:
        return GcReport(**self.library.gc(grace_seconds=grace_seconds, dry_run=dry_run))

    def verify(self, name: str | None = None, ref: str | None = None) -> VerifyReport:
        return self.verify_with_progress(name, ref)

    def verify_with_progress(self, name=None, ref=None, progress=None) -> VerifyReport:
        return VerifyReport(**self.library.verify(name, ref or None, progress=progress))

    def begin_upload(self, name: str) -> UploadLeaseInfo:
        _image_name(name)
        return UploadLeaseInfo(lease=ingest.open_upload(self.library).id, ttl_seconds=UPLOAD_TTL)

    def missing_chunks(self, ids: list[str], lease: str | None = None) -> MissingChunks:
        return MissingChunks(missing=ingest.missing_chunks(self.library, ids, lease))

    def upload_chunk(self, chunk_id: str, data: bytes, lease: str | None = None) -> ChunkStored:
        _need(self.caller, "operator")
        return ChunkStored(id=chunk_id, stored_bytes=ingest.store_uploaded_chunk(self.library, chunk_id, data, lease))

    def create_version(self, name: str, request: VersionUpload) -> ImportResult:
        records = {k: mf.ArtifactRecord(a.size, a.sha256, a.chunks, a.format) for k, a in request.artifacts.items()}
        return ImportResult(**ingest.publish_upload(self.library, name, records, request.lease, tag=request.tag, note=request.note,
                                                    source=request.source, actor=self.actor, parent=request.parent))

    def import_files(self, name, rootfs=None, kernel=None, initrd=None, tag=None, note="", progress=None, warn=print) -> ImportResult:
        _need(self.caller, "operator")
        return ImportResult(**self.library.import_files(name, rootfs=rootfs, kernel=kernel, initrd=initrd, tag=tag, note=note,
                                                        actor=self.actor, progress=progress, warn=warn))

    # build and edit import yaml, mounts and more: loaded only when used (CLI start-up time)
    def build(self, name, recipe, tag=None, note="", **callbacks) -> dict:
        from netslate.images.build import build_image

        _need(self.caller, "operator")
        return build_image(self.parts.ctx, name, recipe, tag=tag, note=note, **callbacks)

    def edit(self, name, script=None, shell=False, resume=False, **callbacks) -> dict:
        from netslate.images import edit as ed

        _need(self.caller, "operator")
        return ed.run(self.parts.ctx, name, script=script, shell=shell, resume=resume, **callbacks)

    def abort_edit(self, name) -> dict:
        from netslate.images import edit as ed

        _need(self.caller, "operator")
        return ed.abort(self.parts.ctx, name)

    def commit(self, name, message, tag=None, **callbacks) -> dict:
        from netslate.images import edit as ed

        _need(self.caller, "operator")
        return ed.commit(self.parts.ctx, name, message, tag=tag, actor=self.actor, **callbacks)


def _image_name(name: str) -> str:
    return check_name(name, "image name")


# ---------- the HTTP client: the generated one, plus the upload of a remote import ----------


class HttpImages(http_client(ImagesService)):
    def upload_chunk(self, chunk_id: str, data: bytes, lease: str | None = None) -> ChunkStored:
        import zstandard

        response = self.api.request("PUT", f"/api/v1/chunks/{chunk_id}", params={"lease": lease} if lease else None,
                                    content=zstandard.ZstdCompressor(level=3).compress(data),
                                    headers={"Content-Encoding": "zstd", "Content-Type": "application/octet-stream"})
        return ChunkStored(**response.json())

    def import_files(self, name, rootfs=None, kernel=None, initrd=None, tag=None, note="", progress=None, warn=print) -> ImportResult:
        """Chunk here, upload only the chunks the server lacks under an import lease, then publish."""
        tmp = Path(tempfile.gettempdir())
        workdirs.sweep(tmp, prefixes=("netslate-import",))  # left by killed remote imports (issue 11 #6)
        workdir = workdirs.WorkDir(tmp, "netslate-import")
        work = workdir.path
        try:
            files = ingest.collect_files(name, work, rootfs=rootfs, kernel=kernel, initrd=initrd, tag=tag, warn=warn)
            lease = self.begin_upload(name).lease
            artifacts = {}
            for art, (path, fmt) in files.items():
                record, pieces = ingest.chunk_list(path)
                missing = set(self.missing_chunks([c[2] for c in pieces], lease).missing)
                done = 0
                with open(path, "rb") as f:
                    for off, size, cid in pieces:
                        if cid in missing:
                            f.seek(off)
                            self.upload_chunk(cid, f.read(size), lease)
                            missing.discard(cid)
                        done += size
                        if progress:
                            progress(art, done, record.size)
                artifacts[art] = ArtifactUpload(size=record.size, sha256=record.sha256, chunks=pieces, format=fmt)
            return self.create_version(name, VersionUpload(artifacts=artifacts, tag=tag, note=note, source=ingest.source_of(files), lease=lease))
        finally:
            workdir.close()


HTTP_CLASS = "HttpImages"
