"""Delta groups at the edges: the server builds (and caches) group N of an update A → B; the pull
client fetches the groups it needs, decodes them with its own copy of A's bytes and verifies every
chunk. The plan — which chunks, against which old bytes — is `deltaplan.plan` (pure).

URL: `GET /deltas/{A digest hex}/{B digest hex}/{artifact}/{N}` — one zstd frame of group N's
new chunks, concatenated in plan order, compressed with the group's old bytes as a prefix
dictionary. Named by both manifest digests, it never changes (`Cache-Control: immutable`).
A client without A, with a corrupt A, or facing a server that no longer has A simply fetches
those chunks whole (`/chunks/ID`); every chunk is checked against its SHA-256 id either way.

Needs `zstandard` (the pull client imports this module only when it can; the initramfs does not).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path

import zstandard

from netslate.images import deltaplan
from netslate.images.chunkstore import ChunkCorrupt, ChunkMissing

DIGEST_HEX = re.compile(r"^[0-9a-f]{64}\Z")


class DeltaUnavailable(Exception):
    """No such group: an unknown manifest digest, artifact or group number."""


def _params(dict_bytes: int, data_bytes: int) -> zstandard.ZstdCompressionParameters:
    return zstandard.ZstdCompressionParameters.from_level(
        deltaplan.ZSTD_LEVEL, window_log=deltaplan.window_log(dict_bytes, data_bytes),
        hash_log=deltaplan.ZSTD_HASH_LOG, chain_log=deltaplan.ZSTD_CHAIN_LOG, search_log=deltaplan.ZSTD_SEARCH_LOG)


def _dict(base: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def encode(base: bytes, data: bytes) -> bytes:
    """data compressed as one zstd frame with `base` as its prefix dictionary."""
    if not base:
        return zstandard.ZstdCompressor(compression_params=_params(0, len(data))).compress(data)
    return zstandard.ZstdCompressor(compression_params=_params(len(base), len(data)), dict_data=_dict(base)).compress(data)


def decode(base: bytes, body: bytes, size: int) -> bytes:
    """The inverse of `encode`; at most `size` bytes out (raises zstandard.ZstdError on bad input)."""
    dctx = zstandard.ZstdDecompressor(dict_data=_dict(base)) if base else zstandard.ZstdDecompressor()
    return dctx.decompress(body, max_output_size=size)


# ---------- the server side ----------

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_plans: dict[tuple[str, str, str], tuple[list, list]] = {}


def manifest_by_digest(library, digest: str) -> dict | None:
    """The manifest payload of the version (of any image) with this digest; None when none has it."""
    # imported here: the pull client imports this module for decoding and needs no database
    from sqlalchemy import select

    from netslate.images.models import ImageVersion

    with library.ctx.db.session() as s:
        v = s.scalar(select(ImageVersion).where(ImageVersion.manifest_digest == digest).limit(1))
        return json.loads(v.manifest_json)["payload"] if v is not None else None


def _plan_for(library, from_hex: str, to_hex: str, artifact: str) -> tuple[list, list]:
    key = (from_hex, to_hex, artifact)
    hit = _plans.get(key)
    if hit is not None:
        return hit
    old_m = manifest_by_digest(library, "sha256:" + from_hex)
    new_m = manifest_by_digest(library, "sha256:" + to_hex)
    if old_m is None or new_m is None:
        raise DeltaUnavailable("no version with that manifest digest")
    old_art, new_art = old_m["artifacts"].get(artifact), new_m["artifacts"].get(artifact)
    if old_art is None or new_art is None:
        raise DeltaUnavailable(f"no {artifact} in both versions")
    result = (old_art["chunks"], deltaplan.plan(old_art["chunks"], new_art["chunks"]))
    if len(_plans) >= 32:
        _plans.pop(next(iter(_plans)))
    _plans[key] = result
    return result


def cache_path(data_dir: Path, from_hex: str, to_hex: str, artifact: str, n: int) -> Path:
    return Path(data_dir) / "deltas" / to_hex[:2] / f"{to_hex}.{from_hex}.{artifact}.{n}.zst"


def group_frame(library, from_hex: str, to_hex: str, artifact: str, n: int) -> bytes:
    """Group n of the update from_hex → to_hex (manifest digests, hex), built once and kept in
    DATA/deltas/ (a cache: deleting it only costs recomputation)."""
    if not (DIGEST_HEX.match(from_hex) and DIGEST_HEX.match(to_hex)) or from_hex == to_hex:
        raise DeltaUnavailable("not a pair of manifest digests")
    path = cache_path(library.data_dir, from_hex, to_hex, artifact, n)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    old, groups = _plan_for(library, from_hex, to_hex, artifact)
    if not 0 <= n < len(groups):
        raise DeltaUnavailable("no such delta group")
    with _locks_guard:
        lock = _locks.setdefault(str(path), threading.Lock())
    with lock:  # 500 machines asking for one group at once: it is built once
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        group = groups[n]
        store = library.store
        try:
            base = b"".join(store.read(cid, verify=True) for _o, _l, entries in deltaplan.base_ranges(old, group)
                            for _off, _size, cid in entries)
            data = b"".join(store.read(cid, verify=True) for cid, _size in group.chunks)
        except (ChunkMissing, ChunkCorrupt) as exc:  # the whole-chunk path reports it to the client
            raise DeltaUnavailable(f"chunk {exc} is missing or corrupt") from None
        frame = encode(base, data)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
        tmp.write_bytes(frame)
        os.replace(tmp, path)
    with _locks_guard:
        _locks.pop(str(path), None)
    return frame


def drop_cache_for(library) -> int:
    """Remove cached groups of versions that are gone (image gc); returns the files removed."""
    # imported here like manifest_by_digest: the pull client never needs the database
    from sqlalchemy import select

    from netslate.images.models import ImageVersion

    root = Path(library.data_dir) / "deltas"
    if not root.is_dir():
        return 0
    with library.ctx.db.session() as s:
        live = {d.removeprefix("sha256:") for d in s.scalars(select(ImageVersion.manifest_digest))}
    removed = 0
    for sub in root.iterdir():
        for p in sub.iterdir() if sub.is_dir() else ():
            if p.name.startswith(".tmp-"):
                continue
            parts = p.name.split(".")
            if not (len(parts) == 5 and parts[0] in live and parts[1] in live):
                p.unlink(missing_ok=True)
                removed += 1
    return removed


# ---------- the client side ----------


def pick_base(seeds: list[dict], name: str, artifact: str, digest: str, new_ids: set[str]) -> dict | None:
    """The seed record (an earlier pull's output: its chunk list, file and manifest digest) that
    shares the most chunks with the new version: the old version groups are decoded against."""
    best, best_shared = None, 0
    for rec in seeds:
        if rec.get("artifact", "rootfs") != artifact or rec.get("name") != name:
            continue
        d = rec.get("manifest_digest")
        if not isinstance(d, str) or not d.startswith("sha256:") or d == digest or not isinstance(rec.get("chunks"), list):
            continue
        shared = sum(1 for e in rec["chunks"] if isinstance(e, list) and len(e) == 3 and e[2] in new_ids)
        if shared > best_shared:
            best, best_shared = rec, shared
    return best


def read_base(path: Path, old: list, group: deltaplan.Group) -> bytes | None:
    """The group's dictionary read from the old artifact file, every chunk in it verified; None
    when the file no longer holds those chunks."""
    parts = []
    try:
        with open(path, "rb") as f:
            for off, length, entries in deltaplan.base_ranges(old, group):
                f.seek(off)
                buf = f.read(length)
                if len(buf) != length:
                    return None
                view = memoryview(buf)
                for o, s, cid in entries:
                    if hashlib.sha256(view[o - off:o - off + s]).hexdigest() != cid:
                        return None
                parts.append(buf)
    except OSError:
        return None
    return b"".join(parts)


def fetch_groups(http, record: dict, new_chunks: list, missing: set[str], digest: str, artifact: str,
                 place, workers: int = 4, limit_factor: int = 2) -> list[tuple[str, int, int]]:
    """Fetch, decode and verify the delta groups that hold missing chunks; `place(cid, data)` puts a
    verified chunk into the output. Returns (chunk id, size, wire bytes) for every chunk placed; a
    group that fails (HTTP error, bad frame, a chunk whose hash is wrong) places nothing of its own."""
    from concurrent.futures import ThreadPoolExecutor

    old = record["chunks"]
    path = Path(record["output"])
    from_hex, to_hex = record["manifest_digest"].removeprefix("sha256:"), digest.removeprefix("sha256:")
    groups = deltaplan.plan(old, new_chunks)

    def one(n: int, group: deltaplan.Group) -> list[tuple[str, int, int]]:
        base = read_base(path, old, group)
        if base is None:
            return []
        try:
            status, _h, body = http.get(f"/deltas/{from_hex}/{to_hex}/{artifact}/{n}", {}, limit=group.size * limit_factor + 65536)
        except Exception:  # noqa: BLE001 - any transport failure: these chunks go the whole-chunk way
            return []
        if status != 200:
            return []
        try:
            data = decode(base, body, group.size)
        except zstandard.ZstdError:
            return []
        if len(data) != group.size:
            return []
        view = memoryview(data)
        pos, good = 0, []
        for cid, size in group.chunks:
            piece = view[pos:pos + size]
            pos += size
            if hashlib.sha256(piece).hexdigest() != cid:
                return []  # a tampered or wrong frame: nothing from it is used
            good.append((cid, piece))
        out = []
        wire = len(body)  # the whole frame is counted once, on the first chunk placed from it
        for cid, piece in good:
            if cid in missing:
                place(cid, piece)
                out.append((cid, len(piece), wire))
                wire = 0
        return out

    wanted = [(n, g) for n, g in enumerate(groups) if any(cid in missing for cid, _s in g.chunks)]
    if not wanted:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(wanted)))) as pool:
        results = list(pool.map(lambda ng: one(*ng), wanted))
    return [item for r in results for item in r]
