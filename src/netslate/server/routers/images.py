"""Image routes the service contract cannot express: the raw chunk upload under /api/v1, and the
serving endpoints (/images/..., /chunks/...) that firmware, iPXE, initramfs and pull clients fetch.
The management API (/api/v1/images...) is generated from `netslate.services.images`."""

import re

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from netslate.images import delta, manifest as mf
from netslate.images.ranges import read_range as ranges_read
from netslate.images.chunkstore import CHUNK_ID
from netslate.images.frontend import FILES_PREFIX, FRONT_HEADER
from netslate.images.frontend_files import ServedFiles
from netslate.images.pull import pack_plan
from netslate.errors import NotFound
from netslate.names import check_name
from netslate.server import auth
from netslate.services.images import ChunkStored, LocalImages

api = APIRouter(prefix="/api/v1", tags=["images"])
serving = APIRouter(tags=["serving"])

IMMUTABLE = "public, max-age=31536000, immutable"
MAX_UPLOAD_CHUNK = 16 * 1024 * 1024


def _lib(request: Request):
    return request.app.state.parts.library


def _fronted(request: Request) -> bool:
    """Whether the nginx front proxied this request: then a stored file goes out by X-Accel-Redirect."""
    return request.headers.get(FRONT_HEADER) == "nginx"


def _served_files(request: Request) -> ServedFiles:
    files = getattr(request.app.state, "served_files", None)
    if files is None:
        files = request.app.state.served_files = ServedFiles(request.app.state.ctx.data_dir / "serve")
    return files


def _mirrored(request: Request, resolved, ids) -> None:
    """A branch server that mirrors central (issue 15 §2, `serve --mirror-from`): the chunks it
    lacks are fetched from upstream and verified against the signed manifest before they are read."""
    mirror = request.app.state.parts.mirror
    if mirror is not None and mirror.serving:
        mirror.ensure(resolved, ids)


def _manifest_document(request: Request, name: str, ref: str) -> dict:
    try:
        return _lib(request).manifest_document(name, ref)
    except NotFound:
        mirror = request.app.state.parts.mirror
        if mirror is None or not mirror.serving:
            raise
        return mirror.remote_document(name, ref)  # a mirror: not in this branch's catalog (yet), ask upstream


def _artifact_record(request: Request, name: str, ref: str, artifact: str):
    try:
        return _lib(request).artifact_record(name, ref, artifact)
    except NotFound:
        mirror = request.app.state.parts.mirror
        if mirror is None or not mirror.serving:
            raise
        resolved = mirror.remote_resolved(name, ref)
        if artifact not in resolved.artifacts:
            raise
        return resolved, resolved.artifacts[artifact]


def _accel(rel: str, headers: dict) -> Response:
    """Hand the file DATA/serve/REL to the front (which sends it, ranges included)."""
    out = {"X-Accel-Redirect": FILES_PREFIX + rel, "X-Netslate-Etag": headers["ETag"],
           "X-Netslate-Cache-Control": headers["Cache-Control"]}
    if "X-Netslate-Version" in headers:
        out["X-Netslate-Version"] = headers["X-Netslate-Version"]
    return Response(status_code=200, headers=out, media_type="application/octet-stream")


# ---------- the chunk upload of a remote import ----------


@api.put("/chunks/{chunk_id}", status_code=201)
async def upload_chunk(chunk_id: str, request: Request, lease: str | None = None, caller=auth.require("operator")) -> ChunkStored:
    """Store one chunk (raw body, or zstd with Content-Encoding: zstd), verified against its id;
    `?lease=ID` adds it to the import's lease (POST /api/v1/images/NAME/imports)."""
    if not CHUNK_ID.match(chunk_id):
        raise HTTPException(400, "not a chunk id")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_UPLOAD_CHUNK:
            raise HTTPException(413, "chunk too large")
    data = bytes(body)
    if request.headers.get("content-encoding") == "zstd":
        import zstandard

        try:
            data = zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_UPLOAD_CHUNK)
        except zstandard.ZstdError:
            raise HTTPException(400, "body is not valid zstd") from None
    service = LocalImages(request.app.state.parts, caller)
    return await run_in_threadpool(service.upload_chunk, chunk_id, data, lease)


# ---------- serving ----------


@serving.get("/images/{name}/{ref}/manifest")
def get_manifest(name: str, ref: str, request: Request):
    check_name(name, "image name")
    doc = _manifest_document(request, name, ref)
    headers = {"Cache-Control": "no-cache"} if not ref.isdigit() else {"Cache-Control": IMMUTABLE, "ETag": f'"{doc["digest"]}"'}
    return JSONResponse(doc, headers=headers)


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)\Z")


@serving.head("/images/{name}/{ref}/{artifact}", include_in_schema=False)
def head_artifact(name: str, ref: str, artifact: str, request: Request):
    return get_artifact(name, ref, artifact, request)


@serving.get("/images/{name}/{ref}/{artifact}")
def get_artifact(name: str, ref: str, artifact: str, request: Request):
    """The whole artifact, assembled from chunks on the fly; single byte ranges supported."""
    check_name(name, "image name")
    if artifact not in mf.ARTIFACTS:
        raise HTTPException(404, f"unknown artifact {artifact!r}")
    lib = _lib(request)
    resolved, record = _artifact_record(request, name, ref, artifact)
    size = record["size"]
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": f'"{record["sha256"]}"',
        "Cache-Control": IMMUTABLE if ref.isdigit() else "no-cache",
        "X-Netslate-Version": str(resolved.version),
    }
    if _fronted(request) and size > 0:
        # The front serves the artifact from a file written once (chunks verified), with sendfile.
        store = request.app.state.ctx.chunks
        sha = record["sha256"]
        _mirrored(request, resolved, [c for _o, _n, c in record["chunks"]])
        _served_files(request).get(f"artifacts/{sha}", lambda: ranges_read(store, record, 0, size), sha256=sha)
        return _accel(f"artifacts/{sha}", headers)
    start, end, status = 0, size, 200
    rng = request.headers.get("range")
    if rng:
        m = _RANGE.match(rng.strip())
        if not m or (not m.group(1) and not m.group(2)):
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)) + 1, size) if m.group(2) else size
        else:
            start = max(size - int(m.group(2)), 0)
        if start >= size or start >= end:
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    _mirrored(request, resolved, [c for o, n, c in record["chunks"] if o < end and o + n > start])
    return StreamingResponse(lib.read_range(record, start, end), status_code=status, headers=headers,
                             media_type="application/octet-stream")


class PackRequest(BaseModel):
    ids: list[str] = Field(max_length=8192)


PACK_RAW, PACK_ZSTD, PACK_MISSING = 0, 1, 2


OCTETS = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}


def _frames(store, ids: list[str]):
    block: list[bytes] = []
    size = 0
    for cid in ids:
        found = store.locate(cid)
        try:
            data = found[0].read_bytes() if found else b""
        except FileNotFoundError:
            found, data = None, b""
        kind = PACK_MISSING if found is None else PACK_ZSTD if found[1] == "zstd" else PACK_RAW
        block.append(bytes([kind]) + len(data).to_bytes(4, "big"))
        block.append(data)
        size += len(data) + 5
        if size >= 1 << 20:
            yield b"".join(block)
            block, size = [], 0
    if block:
        yield b"".join(block)


@serving.post("/chunks/pack", response_class=StreamingResponse,
              responses={200: {"description": "the framed chunks", **OCTETS}})
def get_pack(body: PackRequest, request: Request):
    """Many chunks in one response, each as stored (zstd or raw), framed as
    `<1 byte: 0 raw | 1 zstd | 2 missing><4 bytes big-endian length><bytes>`. The client
    decompresses and verifies; the server only reads files. Not cacheable: kept for older clients;
    current clients GET /packs/... (cacheable) and /chunks/ID."""
    if any(not CHUNK_ID.match(c) for c in body.ids):
        raise HTTPException(400, "not a chunk id")
    store = request.app.state.ctx.chunks
    return StreamingResponse(_frames(store, body.ids), media_type="application/octet-stream", headers={"Cache-Control": "no-store"})


_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_plans: dict[tuple[str, str], list[list[str]]] = {}


@serving.head("/packs/{name}/{version}/{artifact}/{digest}/{index}", include_in_schema=False)
def head_pack_by_manifest(name: str, version: str, artifact: str, digest: str, index: str, request: Request):
    return get_pack_by_manifest(name, version, artifact, digest, index, request)


@serving.get("/packs/{name}/{version}/{artifact}/{digest}/{index}", response_class=StreamingResponse,
             responses={200: {"description": "the framed chunks", **OCTETS}})
def get_pack_by_manifest(name: str, version: str, artifact: str, digest: str, index: str, request: Request):
    """Chunk pack INDEX of ARTIFACT in version VERSION whose manifest digest is sha256:DIGEST: the
    chunks of `netslate.images.pull.pack_plan` (computed from the signed chunk list by server and
    client alike), framed as POST /chunks/pack frames them. The URL names immutable content, so it
    is cacheable forever (Cache-Control immutable, strong ETag): what site caches keep."""
    check_name(name, "image name")
    if not version.isdigit() or not index.isdigit() or not _HEX64.match(digest) or artifact not in mf.ARTIFACTS:
        raise HTTPException(404, "no such pack")
    resolved, record = _artifact_record(request, name, version, artifact)
    if resolved.manifest_digest != f"sha256:{digest}":
        raise HTTPException(404, "no such pack: the version has another manifest")
    key = (digest, artifact)
    plan = _plans.get(key)
    if plan is None:
        plan = pack_plan(record["chunks"])
        if len(_plans) > 256:
            _plans.clear()
        _plans[key] = plan
    i = int(index)
    if i >= len(plan):
        raise HTTPException(404, "no such pack")
    etag = f'"{digest}-{artifact}-{i}"'
    headers = {"Cache-Control": IMMUTABLE, "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    if request.method != "HEAD":
        _mirrored(request, resolved, plan[i])
    store = request.app.state.ctx.chunks
    if _fronted(request):
        rel = f"packs/{digest}-{artifact}-{i}"
        _served_files(request).get(rel, lambda: _frames(store, plan[i]))
        return _accel(rel, headers)
    if request.method == "HEAD":
        return Response(status_code=200, headers=headers, media_type="application/octet-stream")
    return StreamingResponse(_frames(store, plan[i]), media_type="application/octet-stream", headers=headers)


@serving.get("/deltas/{from_digest}/{to_digest}/{artifact}/{index}",
             responses={200: {"description": "one zstd frame: the group's new chunks", **OCTETS}})
def get_delta_group(from_digest: str, to_digest: str, artifact: str, index: str, request: Request):
    """Delta group INDEX of the update from the version whose manifest digest is sha256:FROM to
    sha256:TO (`netslate.images.delta`, planned by `deltaplan.plan` on both sides): the group's new
    chunks as one zstd frame against the old chunks they replace. Immutable, cacheable forever."""
    if not index.isdigit() or artifact not in mf.ARTIFACTS:
        raise HTTPException(404, "no such delta group")
    etag = f'"{to_digest}-{from_digest}-{artifact}-{index}"'
    headers = {"Cache-Control": IMMUTABLE, "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    try:
        frame = delta.group_frame(_lib(request), from_digest, to_digest, artifact, int(index))
    except delta.DeltaUnavailable as exc:
        raise HTTPException(404, f"no such delta group: {exc}") from None
    return Response(frame, headers=headers, media_type="application/octet-stream")


@serving.head("/chunks/{chunk_id}", include_in_schema=False)
def head_chunk(chunk_id: str, request: Request):
    return get_chunk(chunk_id, request)


@serving.get("/chunks/{chunk_id}")
def get_chunk(chunk_id: str, request: Request):
    """One immutable chunk. Raw by default; the stored zstd form if the client accepts zstd."""
    if not CHUNK_ID.match(chunk_id):
        raise HTTPException(404, "not a chunk id")
    store = request.app.state.ctx.chunks
    found = store.locate(chunk_id)
    mirror = request.app.state.parts.mirror
    if found is None and mirror is not None and mirror.serving and mirror.pull_through(chunk_id):  # issue 15 §2
        found = store.locate(chunk_id)
    if found is None:
        raise HTTPException(404, "no such chunk")
    path, encoding = found
    wants_zstd = "zstd" in request.headers.get("accept-encoding", "")
    headers = {"Cache-Control": IMMUTABLE, "ETag": f'"{chunk_id}"', "Vary": "Accept-Encoding"}
    if request.headers.get("if-none-match") == f'"{chunk_id}"':
        return Response(status_code=304, headers=headers)
    try:
        stored = path.read_bytes()
    except FileNotFoundError:
        raise HTTPException(404, "no such chunk") from None
    if encoding == "zstd" and wants_zstd:
        headers["Content-Encoding"] = "zstd"
        body = stored
    elif encoding == "zstd":
        import zstandard

        body = zstandard.ZstdDecompressor().decompress(stored)
    else:
        body = stored
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return Response(status_code=200, headers=headers)
    return Response(body, headers=headers, media_type="application/octet-stream")
