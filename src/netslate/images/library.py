"""The image library: one object over the chunk store and the catalog, what `ctx.library` gives.

It only delegates; the work lives in modules named for their concern:
- `versioning.py`: pure version logic (references, tag names, version/artifact dicts);
- `catalog.py`: the database (versions, signed manifests, tags, tag history);
- `ingest.py`: import checks, chunking and storing, publishing (local and uploaded imports);
- `leases.py` + `maintenance.py`: import leases, gc and verify;
- `ranges.py`: reading byte ranges of an artifact (serving).

What counts as "in use" for `remove_version` beyond tags (boot profiles, machine pins) is not
the images part's knowledge: callers pass checks in (`Library(ctx, in_use=[...])` or per call).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from netslate.errors import UserError
from netslate.images import delta, ingest, maintenance, ranges
from netslate.images.frontend_files import ServedFiles
from netslate.images.leases import ImportLease  # noqa: F401  (older imports)
from netslate.images.versioning import Resolved  # noqa: F401  (older imports)

if TYPE_CHECKING:
    from netslate.images.catalog import Catalog, InUseCheck


class Library:
    def __init__(self, ctx, in_use: Iterable["InUseCheck"] = ()):
        self.ctx = ctx
        self.data_dir: Path = ctx.data_dir
        self.store = ctx.chunks
        self.imports_dir = ctx.data_dir / "imports"
        self.tmp_dir = ctx.data_dir / "tmp"
        self.in_use: list[InUseCheck] = list(in_use)
        self._catalog: Catalog | None = None
        self._catalog_lock = threading.Lock()

    @property
    def catalog(self) -> "Catalog":
        """Built on first use: it imports SQLAlchemy, which an import loads beside its chunking."""
        if self._catalog is None:
            with self._catalog_lock:
                if self._catalog is None:
                    from netslate.images.catalog import Catalog

                    self._catalog = Catalog(self.ctx, self.store)
        return self._catalog

    def open_catalog(self) -> "Catalog":
        """The catalog over an open database (migrated, signing key loaded): everything a publish needs."""
        _ = self.ctx.db, self.ctx.signing_key
        return self.catalog

    # ---------- reading ----------

    def resolve(self, name: str, ref: str | int = "latest") -> Resolved:
        return self.catalog.resolve(name, ref)

    def manifest_document(self, name: str, ref: str) -> dict:
        return self.catalog.manifest_document(name, ref)

    def list_images(self) -> list[dict]:
        return self.catalog.list_images()

    def list_versions(self, name: str) -> list[dict]:
        return self.catalog.list_versions(name)

    def show(self, name: str, ref: str = "latest") -> dict:
        return self.catalog.show(name, ref)

    def diff(self, name: str, a: str, b: str) -> dict:
        return self.catalog.diff(name, a, b)

    def artifact_record(self, name: str, ref: str, artifact: str) -> tuple[Resolved, dict]:
        return self.catalog.artifact_record(name, ref, artifact)

    def read_range(self, record: dict, start: int, end: int, block: int = 1 << 20) -> Iterator[bytes]:
        return ranges.read_range(self.store, record, start, end, block)

    # ---------- writing ----------

    def import_files(self, name: str, rootfs: Path | None = None, kernel: Path | None = None, initrd: Path | None = None,
                     tag: str | None = None, note: str = "", source: str = "", actor: str | None = None,
                     parent: int | None = None, progress: Callable[[str, int, int], None] | None = None,
                     warn: Callable[[str], None] = print) -> dict:
        """Chunk and store the given files, then publish them as the next version in one transaction."""
        return ingest.import_files(self, name, rootfs=rootfs, kernel=kernel, initrd=initrd, tag=tag, note=note, source=source,
                                   actor=actor, parent=parent, progress=progress, warn=warn)

    def register_version(self, name: str, records: dict, **kw) -> dict:
        """Publish chunks some other way put in the store; refused when one is missing."""
        for art, rec in records.items():
            missing = [c for _o, _s, c in rec.chunks if not self.store.has(c)]
            if missing:
                raise UserError(f"{art}: {len(missing)} chunks are not in the store (first {missing[0]})")
        return self.catalog.register_version(name, records, **kw)

    def set_tag(self, name: str, version: int | str, tag: str, actor: str | None = None, reason: str = "") -> dict:
        return self.catalog.set_tag(name, version, tag, actor=actor, reason=reason)

    def remove_tag(self, name: str, tag: str, actor: str | None = None, reason: str = "") -> None:
        self.catalog.remove_tag(name, tag, actor=actor, reason=reason)

    def remove_version(self, name: str, version: int | str, actor: str | None = None, in_use: Iterable[InUseCheck] = ()) -> None:
        """Refused while a tag points to it, or any `in_use` check (given here or to the Library) names a user."""
        self.catalog.remove_version(name, version, actor=actor, in_use=[*self.in_use, *in_use])

    # ---------- maintenance ----------

    def referenced_chunks(self) -> set[str]:
        return self.catalog.referenced_chunks()

    def gc(self, grace_seconds: float = 3600, dry_run: bool = False) -> dict:
        started = time.time()
        result = maintenance.collect_garbage(self.store, self.imports_dir, self.catalog.referenced_chunks, grace_seconds, dry_run,
                                             tmp_dir=self.tmp_dir)
        # the static front's files (DATA/serve) of versions that are gone, with the chunks' grace
        result.update(ServedFiles(self.data_dir / "serve").collect(*self.catalog.referenced_served(), grace_seconds,
                                                                    dry_run, started))
        if not dry_run:  # cached delta groups (DATA/deltas) of versions that are gone
            delta.drop_cache_for(self)
        return result

    def verify(self, name: str | None = None, ref: str | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
        """Re-hash stored chunks of every (or one image's, or one version's) version."""
        if name and ref:
            targets = [self.resolve(name, ref)]
        else:
            names = [name] if name else [i["name"] for i in self.list_images()]
            targets = [self.resolve(n, v["version"]) for n in names for v in self.list_versions(n)]
        return maintenance.verify_chunks(self.store, targets, progress)
