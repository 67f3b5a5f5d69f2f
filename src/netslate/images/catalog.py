"""The image catalog in the database: images, versions (signed manifests), tags and their history.

Every read and write of the images tables goes through here; `versioning.py` holds the pure
rules and dict shapes it uses.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import Callable, Iterable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as DbIntegrityError

from netslate import audit
from netslate.canonical import canonical_json
from netslate.errors import Conflict, NotFound, UserError
from netslate.images import manifest as mf
from netslate.images.models import Image, ImageTag, ImageVersion, TagEvent
from netslate.images.versioning import Resolved, artifact_summary, check_tag_name, iso, parse_ref, tags_of
from netslate.names import check_name

# fn(name, version) -> reasons the version is in use (e.g. a boot profile or a machine pin)
InUseCheck = Callable[[str, int], list[str]]


class Catalog:
    def __init__(self, ctx, store):
        self.ctx = ctx
        self.store = store
        self._manifests: dict[tuple[int, str], dict] = {}
        self._cache_lock = threading.Lock()

    # ---------- reading ----------

    def _image(self, s, name: str) -> Image:
        img = s.scalar(select(Image).where(Image.name == name))
        if img is None:
            raise NotFound(f"no image named {name!r}")
        return img

    def _version_row(self, s, name: str, ref: str | int) -> tuple[ImageVersion, str | None]:
        img = self._image(s, name)
        kind, value = parse_ref(ref)
        tag = None
        if kind == "number":
            number = value
        elif kind == "latest":
            number = s.scalar(select(func.max(ImageVersion.version)).where(ImageVersion.image_id == img.id))
            if number is None:
                raise NotFound(f"image {name!r} has no versions")
        else:
            row = s.get(ImageTag, (img.id, value))
            if row is None:
                raise NotFound(f"image {name!r} has no tag {value!r}")
            number, tag = row.version, value
        v = s.scalar(select(ImageVersion).where(ImageVersion.image_id == img.id, ImageVersion.version == number))
        if v is None:
            raise NotFound(f"image {name!r} has no version {number}")
        return v, tag

    def _tags(self, s, image_id: int) -> dict[str, int]:
        return {t.tag: t.version for t in s.scalars(select(ImageTag).where(ImageTag.image_id == image_id))}

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
        with self.ctx.db.read_session() as s:
            v, tag = self._version_row(s, name, ref)
            return Resolved(name, v.version, v.manifest_digest, self._envelope(v), tag)

    def artifact_record(self, name: str, ref: str, artifact: str) -> tuple[Resolved, dict]:
        r = self.resolve(name, ref)
        if artifact not in r.artifacts:
            raise NotFound(f"{name}@{r.version} has no {artifact}")
        return r, r.artifacts[artifact]

    def manifest_document(self, name: str, ref: str) -> dict:
        """What GET /images/NAME/REF/manifest serves: the signed manifest, and a signed tag statement."""
        with self.ctx.db.read_session() as s:
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
                latest = s.scalar(select(ImageVersion).where(ImageVersion.image_id == img.id).order_by(ImageVersion.version.desc()))
                out.append({
                    "name": img.name,
                    "versions": versions,
                    "latest": versions[-1] if versions else None,
                    "tags": dict(sorted(self._tags(s, img.id).items())),
                    "bytes_latest": latest.bytes_total if latest else 0,
                })
            return out

    def _version_info(self, img: Image, v: ImageVersion, tags: dict[str, int]) -> dict:
        manifest = self._envelope(v)["payload"]
        return {
            "name": img.name,
            "version": v.version,
            "created_at": iso(v.created_at),
            "created_by": v.created_by,
            "source": v.source,
            "parent_version": v.parent_version,
            "note": v.note,
            "bytes_total": v.bytes_total,
            "bytes_new": v.bytes_new,
            "manifest_digest": v.manifest_digest,
            "tags": tags_of(v.version, tags),
            "artifacts": {k: artifact_summary(a) for k, a in manifest["artifacts"].items()},
        }

    def list_versions(self, name: str) -> list[dict]:
        with self.ctx.db.session() as s:
            img = self._image(s, name)
            tags = self._tags(s, img.id)
            rows = s.scalars(select(ImageVersion).where(ImageVersion.image_id == img.id).order_by(ImageVersion.version))
            return [self._version_info(img, v, tags) for v in rows]

    def show(self, name: str, ref: str = "latest") -> dict:
        with self.ctx.db.session() as s:
            v, _ = self._version_row(s, name, ref)
            img = s.get(Image, v.image_id)
            info = self._version_info(img, v, self._tags(s, img.id))
            info["tag_history"] = [
                {"tag": e.tag, "from": e.old_version, "to": e.new_version, "at": iso(e.at), "by": e.actor, "reason": e.reason}
                for e in s.scalars(select(TagEvent).where(TagEvent.image_id == img.id).order_by(TagEvent.id))
            ]
            return info

    def diff(self, name: str, a: str, b: str) -> dict:
        return {"name": name, **mf.diff(self.resolve(name, a).manifest, self.resolve(name, b).manifest)}

    def referenced_chunks(self) -> set[str]:
        ids: set[str] = set()
        with self.ctx.db.session() as s:
            for (mj,) in s.execute(select(ImageVersion.manifest_json)):
                ids.update(mf.chunk_sizes(json.loads(mj)["payload"]))
        return ids

    def referenced_served(self) -> tuple[set[str], set[str]]:
        """(artifact sha256s, manifest digests without `sha256:`) of every version: the names the
        static front's files (DATA/serve, images/frontend_files.py) are made under."""
        shas: set[str] = set()
        digests: set[str] = set()
        with self.ctx.db.session() as s:
            for mj, digest in s.execute(select(ImageVersion.manifest_json, ImageVersion.manifest_digest)):
                digests.add(digest.removeprefix("sha256:"))
                shas.update(a["sha256"] for a in json.loads(mj)["payload"]["artifacts"].values())
        return shas, digests

    # ---------- writing ----------

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
        """Publish stored chunks as a new version: one transaction, retried if another import won the number.

        The caller knows the chunks are there: a local import stored or found each one under its
        lease, an upload re-hashed them all; `Library.register_version` checks for other callers."""
        check_name(name, "image name")
        if tag:
            check_tag_name(tag)
        actor = actor or audit.default_actor()
        for art, rec in records.items():
            if art not in mf.ARTIFACTS:
                raise UserError(f"unknown artifact {art!r}: use {', '.join(mf.ARTIFACTS)}")
            try:
                mf.check_chunk_list(rec.chunks, rec.size)
            except ValueError as exc:
                raise UserError(f"{art}: {exc}") from None
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
            "artifacts": {k: artifact_summary(r.as_dict()) for k, r in records.items()},
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
        check_tag_name(tag)
        actor = actor or audit.default_actor()
        with self.ctx.db.session(write=True) as s:  # the first move of a tag too: last writer wins
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

    def remove_version(self, name: str, version: int | str, actor: str | None = None, in_use: Iterable[InUseCheck] = ()) -> None:
        """Remove one version unless a tag points to it or an `in_use` check names a user of it."""
        actor = actor or audit.default_actor()
        with self.ctx.db.session() as s:
            v, _ = self._version_row(s, name, version)
            if not str(version).isdigit():
                raise UserError("name a version number to remove, not a tag")
            tags = [t.tag for t in s.scalars(select(ImageTag).where(ImageTag.image_id == v.image_id, ImageTag.version == v.version))]
            reasons = [f"tag {t!r} points to it" for t in tags]
            for check in in_use:
                reasons += check(name, v.version)
            if reasons:
                raise Conflict(f"{name}@{v.version} is in use: {'; '.join(reasons)}")
            s.delete(v)
            audit.record(s, actor, "image.version.remove", f"{name}@{v.version}")
