"""Chunk mirrors (issue 15 §2): what a branch server's mirror holds of the versions its site's
machines are assigned, and a prefetch pass on demand. The mirror itself is `netslate.images.mirror`;
`netslate serve --mirror-from URL` runs it."""

from __future__ import annotations

import concurrent.futures
from typing import Callable

from pydantic import BaseModel

from netslate.errors import UserError
from netslate.images.mirror import assigned_versions, status as mirror_status
from netslate.services.framework import Service, op, requires

SYNC_WAIT_SECONDS = 600.0  # `mirror sync` waits this long for a running pass to end before its own


class MirrorVersion(BaseModel):
    name: str
    version: int
    digest: str
    reasons: list[str]  # why the site needs it (tags, profiles, pins, machines' assignments), first few
    assigned_by: int  # how many reasons in all
    chunks_total: int
    chunks_present: int
    chunks_missing: int
    bytes_total: int  # uncompressed bytes of its distinct chunks
    bytes_present: int
    bytes_missing: int
    complete: bool
    last_sync: str | None  # when a pass last found it complete
    last_error: str | None


class MirrorStatus(BaseModel):
    configured: bool  # false: this server mirrors nothing (no `serve --mirror-from`)
    upstream: str | None
    site: str | None
    running: bool  # the prefetch loop runs in the answering process
    pass_running: bool
    last_pass: str | None
    last_pass_seconds: float | None
    last_pass_errors: list[str]
    counters: dict[str, int]  # this process's upstream requests/failures, chunks fetched/refused, bytes fetched
    versions: list[MirrorVersion]


class MirrorPass(BaseModel):
    versions: int
    errors: list[str]
    bytes_fetched: int
    seconds: float


class MirrorService(Service):
    noun = "mirror"

    @op("GET", "/api/v1/mirror")
    def status(self) -> MirrorStatus:
        """Per assigned version: chunks and bytes present and missing, last sync, last error."""
        raise NotImplementedError

    @op("POST", "/api/v1/mirror/sync", role="operator")
    def sync(self) -> MirrorPass:
        """Run one prefetch pass now (after the running one, if any) and say what it fetched."""
        raise NotImplementedError

    @requires("operator")
    def sync_with_progress(self, progress: Callable[[int, int], None] | None = None, every: float = 0.5) -> MirrorPass:
        """`sync`, calling progress(bytes fetched, bytes missing when it started) every `every` seconds
        while the pass runs, and once at the end: the CLI's progress bar. The figures come from
        `status` (what is missing now), so this works the same locally and over --server."""
        if progress is None:
            return self.sync()

        def missing() -> int | None:
            st = self.status()
            return sum(v.bytes_missing for v in st.versions) if st.configured else None

        start = missing()
        if start is None:
            return self.sync()  # not a mirror: sync says so
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mirror-sync") as pool:
            running = pool.submit(self.sync)
            while True:
                try:
                    result = running.result(timeout=every)
                    break
                except concurrent.futures.TimeoutError:
                    left = missing()
                    progress(min(start, max(0, start - (left or 0))), start)
        left = missing()
        progress(min(start, max(0, start - (left or 0))), start)
        return result


class LocalMirror(MirrorService):
    def status(self) -> MirrorStatus:
        m = self.parts.mirror
        wanted = assigned_versions(self.parts.ctx, self.parts.boot_engine, m.site) if m is not None else []
        return MirrorStatus(**mirror_status(self.parts.ctx, wanted, m))

    def sync(self) -> MirrorPass:
        m = self.parts.mirror
        if m is None:
            raise UserError("this server is not a chunk mirror (start it with `netslate serve --site SITE --mirror-from URL`)")
        result = m.prefetch_exclusive(wait=SYNC_WAIT_SECONDS)
        if result is None:
            raise UserError(f"a prefetch pass is still running after {SYNC_WAIT_SECONDS:.0f} s; see `netslate mirror status`")
        return MirrorPass(**result)
