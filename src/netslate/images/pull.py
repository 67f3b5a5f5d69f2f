"""Delta pull: fetch an image artifact into a local cache, downloading only missing chunks.

Standard library only (plus the on-machine library `netslate.onmachine`, itself stdlib-only):
the initramfs runs this, and so does `netslate image pull`. `zstandard` is used for compressed transfer when it happens to be importable.

Steps: fetch + verify the signed manifest (and tag statement) → find chunks already in the cache
or in an existing output file (the seed) → download the rest in parallel, verifying each → write
the output to a temp file, check its whole SHA-256, fsync, rename.
"""

import base64
import hashlib
import http.client
import json
import os
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from netslate.onmachine import pinning
from netslate.onmachine import sitecert
from netslate.onmachine.envelope import SignatureError, fingerprint, parse_public_key, payload_digest
from netslate.onmachine.fsutil import atomic_write, fsync_dir, read_json
from netslate.onmachine.manifest import MAX_CHUNK_BYTES, ManifestError, valid_image_name, valid_ref
from netslate.onmachine.manifest import artifact as manifest_artifact

try:  # optional: compressed transfer
    import zstandard as _zstd
except ImportError:  # pragma: no cover - exercised on machines without it
    _zstd = None

try:  # optional: re-chunk a seed file we have no record of (needs pyfastcdc)
    from netslate.images.chunker import cut_file as _cut_file
except ImportError:  # pragma: no cover
    _cut_file = None

try:  # optional: delta groups against an earlier pull's output (needs zstandard; not in the initramfs)
    from netslate.images import delta as _delta
except ImportError:  # pragma: no cover
    _delta = None

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
RANGE_MAX_BYTES = 32 * 1024 * 1024  # one Range request covers at most this much of the artifact
RANGE_WORKERS = 4  # measured on loopback: a few large ranges beat many small ones (docs/images.md)


class PullError(Exception):
    """Anything that stops a pull. The message is one line for the user."""


@dataclass
class PullStats:
    name: str = ""
    version: int = 0
    artifact: str = ""
    manifest_digest: str = ""
    bytes_total: int = 0
    bytes_downloaded: int = 0
    bytes_on_wire: int = 0
    bytes_reused: int = 0
    chunks_total: int = 0
    chunks_downloaded: int = 0
    chunks_reused: int = 0
    chunks_from_seed: int = 0
    chunks_refetched: int = 0
    chunks_from_delta: int = 0
    delta_base_version: int = 0
    seconds: float = 0.0
    output: str = ""
    key: str = ""
    events: list = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["seconds"] = round(self.seconds, 3)
        return d


class _Http:
    """Keep-alive HTTP/1.1 connections, one per thread, with bounded timeouts."""

    def __init__(self, base_url: str, timeout: float, pin: str | None = None):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise PullError(f"server URL must be http(s)://HOST[:PORT], got {base_url!r}")
        self.scheme, self.host, self.port = u.scheme, u.hostname, u.port
        self.prefix = u.path.rstrip("/")
        self.timeout = timeout
        self.pin = pin  # sha256:HEX of the server's TLS certificate (https only; netslate.pin=)
        self.base_url = base_url.rstrip("/")
        self._local = threading.local()

    def _conn(self):
        c = getattr(self._local, "conn", None)
        if c is None:
            c = pinning.connection(self.scheme, self.host, self.port, self.timeout, self.pin)
            self._local.conn = c
        return c

    def post_json(self, path: str, obj, limit: int) -> tuple[int, dict, bytes]:
        return self.get(path, {"Content-Type": "application/json"}, limit=limit, method="POST",
                        body=json.dumps(obj).encode())

    def get(self, path: str, headers: dict | None = None, limit: int = MAX_CHUNK_BYTES,
            method: str = "GET", body: bytes | None = None) -> tuple[int, dict, bytes]:
        for attempt in range(2):  # one silent retry for a keep-alive connection the server closed
            c = self._conn()
            try:
                c.request(method, self.prefix + path, body=body, headers=headers or {})
                r = c.getresponse()
                body = r.read(limit + 1)
                if len(body) > limit:
                    c.close()
                    self._local.conn = None
                    raise PullError(f"{path}: response larger than {limit} bytes")
                return r.status, {k.lower(): v for k, v in r.getheaders()}, body
            except (http.client.HTTPException, OSError) as exc:
                c.close()
                self._local.conn = None
                if attempt == 1:
                    raise PullError(f"cannot fetch {self.base_url}{path}: {exc}") from None
        raise AssertionError("unreachable")


def _chunk_path(cache: Path, cid: str) -> Path:
    return cache / "chunks" / cid[:2] / cid


def resolve_trust(http: _Http, cache: Path, trust: str | None) -> bytes:
    """The server public key to trust: --trust KEY or FINGERPRINT, else the key pinned in the cache
    on first use. A server presenting another key than the pinned one is refused."""
    pinned_file = cache / "trusted.pub"
    if trust and not trust.startswith("sha256:"):
        try:
            key = parse_public_key(trust)
        except SignatureError as exc:
            raise PullError(f"--trust: {exc}") from None
        return key
    if not trust and pinned_file.exists():
        return parse_public_key(pinned_file.read_text())
    status, _h, body = http.get("/api/v1/keys", limit=1 << 20)
    if status != 200:
        raise PullError(f"cannot fetch the server key: HTTP {status}")
    try:
        served = parse_public_key(json.loads(body)["keys"][0]["public_key"])
    except (ValueError, KeyError, IndexError, TypeError, SignatureError):
        raise PullError("the server's /api/v1/keys answer is malformed") from None
    if trust and fingerprint(served) != trust:
        raise PullError(f"server key {fingerprint(served)} does not match --trust {trust}")
    atomic_write(pinned_file, base64.b64encode(served) + b"\n")
    return served


def fetch_manifest(http: _Http, cache: Path, key: bytes | None, name: str, ref: str,
                   pinned_digest: str | None = None) -> tuple[dict, str]:
    """Fetch, verify and return (manifest payload, digest). Refuses forged, truncated or replayed data.

    `pinned_digest` ("sha256:HEX", e.g. from a kernel command line) must equal the digest of the
    payload. With a pinned digest and no key, the digest alone vouches for the manifest: the
    signature is not checked (there is no key to check it with), and trust-on-first-use is not used."""
    status, _h, body = http.get(f"/images/{name}/{ref}/manifest", limit=MAX_MANIFEST_BYTES)
    if status == 404:
        raise PullError(f"server has no image {name}@{ref}")
    if status != 200:
        raise PullError(f"manifest fetch failed: HTTP {status}")
    try:
        doc = json.loads(body)
    except ValueError:
        raise PullError("manifest is not valid JSON (truncated or corrupt)") from None
    if key is None:
        if not pinned_digest:
            raise PullError("manifest refused: no key and no pinned digest to check it against")
        env = doc.get("manifest") if isinstance(doc, dict) else None
        payload = env.get("payload") if isinstance(env, dict) else None
        if not isinstance(payload, dict):
            raise PullError("manifest refused: malformed envelope")
    else:
        try:
            payload = sitecert.open_signed(doc.get("manifest"), key)  # the root, or a certified site key (issue 15 §3)
        except (SignatureError, AttributeError) as exc:
            raise PullError(f"manifest refused: {exc}") from None
    if pinned_digest and payload_digest(payload) != pinned_digest:
        raise PullError(f"manifest refused: its digest {payload_digest(payload)} is not the pinned {pinned_digest}")
    if payload.get("name") != name or (ref.isdigit() and payload.get("version") != int(ref)):
        raise PullError(f"manifest refused: it is for {payload.get('name')}@{payload.get('version')}, not {name}@{ref}")
    digest = payload_digest(payload)
    if not ref.isdigit() and ref != "latest" and key is not None:
        try:
            tag = sitecert.open_signed(doc.get("tag"), key)
        except (SignatureError, AttributeError) as exc:
            raise PullError(f"tag statement refused: {exc}") from None
        if tag.get("name") != name or tag.get("tag") != ref or tag.get("manifest_digest") != digest:
            raise PullError("tag statement does not match the manifest")
        tags_file = cache / "tags.json"
        seen = read_json(tags_file, {})
        slot = f"{fingerprint(key)}|{name}|{ref}"
        if int(tag.get("seq", -1)) < int(seen.get(slot, -1)):
            raise PullError(f"replayed tag refused: {name}:{ref} seq {tag.get('seq')} is older than the {seen[slot]} already seen")
        seen[slot] = int(tag["seq"])
        atomic_write(tags_file, json.dumps(seen, sort_keys=True).encode())
    return payload, digest


def _seed_record_path(cache: Path, output: Path) -> Path:
    return cache / "seeds" / (hashlib.sha256(str(output).encode()).hexdigest() + ".json")


def _seed_maps(cache: Path, output: Path, exclude: Path) -> list[tuple[Path, dict[str, tuple[int, int]]]]:
    """Files that may hold chunks we need, each with {chunk_id: (offset, size)} to verify:
    every earlier pull output recorded in the cache (e.g. the previous version), and the output
    file itself (from its record, or by re-chunking it when pyfastcdc is importable)."""
    maps: list[tuple[Path, dict[str, tuple[int, int]]]] = []
    seen: set[Path] = {exclude}
    seeds_dir = cache / "seeds"
    records = sorted(seeds_dir.glob("*.json")) if seeds_dir.is_dir() else []
    own = _seed_record_path(cache, output)
    for rec_path in [own] + [r for r in records if r != own]:
        record = read_json(rec_path, None)
        if not record or not isinstance(record.get("chunks"), list):
            continue
        path = Path(str(record.get("output", "")))
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        found: dict[str, tuple[int, int]] = {}
        for entry in record["chunks"]:
            if isinstance(entry, list) and len(entry) == 3:
                found.setdefault(str(entry[2]), (int(entry[0]), int(entry[1])))
        maps.append((path, found))
    if output not in seen and output.is_file() and _cut_file is not None:
        maps.append((output, {p.chunk_id: (p.offset, p.size) for p in _cut_file(output)}))
    return maps


def pull(
    server: str,
    name: str,
    ref: str,
    cache_dir: str | os.PathLike,
    output: str | os.PathLike,
    artifact: str = "rootfs",
    trust: str | None = None,
    workers: int = 8,
    timeout: float = 30.0,
    retries: int = 3,
    progress=None,
    pinned_digest: str | None = None,
    range_min_chunks: int = 32,
    pin: str | None = None,
) -> PullStats:
    """Pull NAME@REF's artifact into `output`. `progress(done_bytes, total_bytes)` is called as work completes.

    `pinned_digest`: the manifest must have this digest. Without `trust` it replaces the key
    check (the initramfs with only `netslate.manifest=` on its command line); with `trust` both apply."""
    started = time.monotonic()
    if not valid_image_name(name):
        raise PullError(f"invalid image name {name!r}")
    if not valid_ref(ref):
        raise PullError(f"invalid version or tag {ref!r}")
    cache = Path(cache_dir)
    output = Path(output).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    http = _Http(server, timeout, pin)
    key = resolve_trust(http, cache, trust) if (trust or not pinned_digest) else None
    payload, digest = fetch_manifest(http, cache, key, name, ref, pinned_digest)
    arts = payload.get("artifacts")
    if not isinstance(arts, dict) or artifact not in arts:
        raise PullError(f"{name}@{payload['version']} has no {artifact}")
    try:  # the chunk entries must tile the artifact: then the verified chunks are the whole file
        art = manifest_artifact(payload, artifact)
    except ManifestError as exc:
        raise PullError(f"manifest has a malformed chunk list: {exc}") from None
    chunks = art["chunks"]
    stats = PullStats(name=name, version=payload["version"], artifact=artifact, manifest_digest=digest,
                      bytes_total=art["size"], chunks_total=len(chunks), output=str(output), key=fingerprint(key) if key else "pinned-digest")
    unique: dict[str, int] = {}
    positions: dict[str, list[int]] = {}
    for off, size, cid in chunks:
        unique.setdefault(cid, size)
        positions.setdefault(cid, []).append(off)
    output.parent.mkdir(parents=True, exist_ok=True)
    # The output is assembled in place in a hidden partial file, kept if the pull is interrupted:
    # the next run finds the chunks already in it (resume) and fetches only the rest.
    partial = output.parent / f".{output.name}.partial"
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _fill(fd, partial, cache, output, art, chunks, unique, positions, stats, http, name, payload,
              artifact, workers, retries, range_min_chunks, progress)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, output)
    fsync_dir(output.parent)
    atomic_write(_seed_record_path(cache, output),
                  json.dumps({"output": str(output), "name": name, "version": payload["version"], "chunks": chunks,
                              "artifact": artifact, "manifest_digest": digest}).encode())
    stats.seconds = time.monotonic() - started
    return stats


def _fill(fd, partial, cache, output, art, chunks, unique, positions, stats, http, name, payload, artifact,
          workers, retries, range_min_chunks, progress) -> None:
    """Put every chunk of the artifact into the partial file (verified), then check the whole SHA-256."""
    resuming = os.fstat(fd).st_size > 0  # a partial file left by an interrupted pull
    if os.fstat(fd).st_size != art["size"]:
        os.ftruncate(fd, art["size"])
    lock = threading.Lock()

    def place(cid: str, data) -> None:
        for off in positions[cid]:
            os.pwrite(fd, data, off)

    have: set[str] = set()
    # 1. Resume: chunks already in place in the partial file from an interrupted run.
    for cid, offs in (positions.items() if resuming else ()):
        data = os.pread(fd, unique[cid], offs[0])
        if len(data) == unique[cid] and hashlib.sha256(data).hexdigest() == cid:
            if len(offs) > 1:
                place(cid, data)
            have.add(cid)
    stats.chunks_from_seed += len(have)
    # 2. Chunk files in the cache (re-hashed; a corrupt one is discarded and fetched again).
    for cid in unique:
        if cid in have:
            continue
        path = os.path.join(cache, "chunks", cid[:2], cid)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        if hashlib.sha256(data).hexdigest() == cid:
            place(cid, data)
            have.add(cid)
        else:
            os.unlink(path)
            stats.chunks_refetched += 1
            stats.events.append(f"corrupt cached chunk {cid[:12]} discarded")
    # 3. Seeds: earlier outputs recorded in the cache, and the existing output file.
    if len(have) < len(unique):
        for path, found in _seed_maps(cache, output, partial):
            wanted = [cid for cid in unique if cid not in have and cid in found]
            if not wanted:
                continue
            with open(path, "rb") as f:
                for cid in wanted:
                    off, size = found[cid]
                    f.seek(off)
                    data = f.read(size)
                    if len(data) == unique[cid] and hashlib.sha256(data).hexdigest() == cid:
                        place(cid, data)
                        have.add(cid)
                        stats.chunks_from_seed += 1
    stats.chunks_reused = len(have)
    stats.bytes_reused = sum(unique[c] for c in have)
    missing = [c for c in unique if c not in have]
    if missing and _delta is not None:  # delta groups first (images/delta.py); what they miss goes below
        missing = _fetch_deltas(cache, output, stats, http, name, artifact, chunks, missing, place, workers)
    done_bytes = stats.bytes_reused + stats.bytes_downloaded
    if progress:
        progress(done_bytes, stats.bytes_total)
    accept = {"Accept-Encoding": "zstd"} if _zstd is not None else {}

    def fetch(cid: str) -> tuple[str, int, int]:
        """One chunk from /chunks/ID (zstd when possible), verified, placed, and kept in the cache."""
        last = ""
        for attempt in range(retries + 1):
            try:
                status, headers, body = http.get(f"/chunks/{cid}", accept)
            except PullError as exc:
                last = str(exc)
            else:
                if status == 200:
                    wire = len(body)
                    data = body
                    if headers.get("content-encoding") == "zstd":
                        if _zstd is None:
                            raise PullError("server sent zstd without being asked")
                        try:
                            data = _zstd.ZstdDecompressor().decompress(body, max_output_size=MAX_CHUNK_BYTES)
                        except _zstd.ZstdError:
                            data = b""
                    if hashlib.sha256(data).hexdigest() == cid:
                        place(cid, data)
                        atomic_write(_chunk_path(cache, cid), data, durable=False)
                        return cid, len(data), wire
                    last = f"chunk {cid[:12]} failed verification"
                elif status == 404:
                    raise PullError(f"server is missing chunk {cid}")
                else:
                    last = f"chunk {cid[:12]}: HTTP {status}"
            if attempt < retries:
                time.sleep(min(0.2 * 2**attempt, 2.0))
        raise PullError(f"{last} (after {retries + 1} attempts); no output written")

    runs, singles = plan_fetches(chunks, set(missing), range_min_chunks, RANGE_MAX_BYTES)
    artifact_path = f"/images/{name}/{payload['version']}/{artifact}"

    def get_patiently(path: str, headers: dict | None, limit: int) -> tuple[int, dict, bytes]:
        """A GET retried (backoff, honouring a short Retry-After) while the server is saturated
        (429/502/503/504) or the connection fails: a storm makes a pull slow, not failed."""
        for attempt in range(retries + 2):
            try:
                status, h, body = http.get(path, headers, limit=limit)
            except PullError:
                status, h, body = 0, {}, b""
            if status not in (0, 429, 502, 503, 504) or attempt == retries + 1:
                return status, h, body
            wait = min(0.25 * 2**attempt, 4.0)
            ra = h.get("retry-after", "")
            if ra.isdigit():
                wait = min(max(wait, float(ra)), 10.0)
            time.sleep(wait)
        return 0, {}, b""

    def fetch_pack(index: int, pack: list[str]) -> list[tuple[str, int, int]]:
        """One chunk pack of this manifest (`GET /packs/...`, immutable, cacheable), each chunk as
        stored (zstd or raw); the chunks still missing are decompressed, verified and placed here.
        Anything wrong (an old server without packs, a bad frame, a hash) falls back to per-chunk fetches."""
        wanted = {c for c in pack if c in missing_set}
        limit = sum(unique[c] for c in pack) + 5 * len(pack) + 4096
        status, _h, body = get_patiently(pack_path(name, payload["version"], artifact, stats.manifest_digest, index), None, limit)
        out, done = [], set()
        view = memoryview(body)
        pos = 0
        dctx = _zstd.ZstdDecompressor()
        for cid in pack:
            if status != 200 or pos + 5 > len(body):
                break
            kind, length = body[pos], int.from_bytes(body[pos + 1:pos + 5], "big")
            raw = view[pos + 5:pos + 5 + length]
            pos += 5 + length
            if cid not in wanted or cid in done:
                continue
            try:
                data = dctx.decompress(raw, max_output_size=unique[cid]) if kind == 1 else raw if kind == 0 else None
            except _zstd.ZstdError:
                data = None
            if data is not None and len(data) == unique[cid] and hashlib.sha256(data).hexdigest() == cid:
                place(cid, data)
                done.add(cid)
                out.append((cid, len(data), length))
        if out and status == 200:  # the frames of chunks we already had count as wire bytes too
            cid0, size0, wire0 = out[0]
            out[0] = (cid0, size0, wire0 + len(body) - sum(w for _c, _s, w in out))
        return out + [fetch(cid) for cid in pack if cid in wanted and cid not in done]

    missing_set = set(missing)
    packs: list[tuple[int, list[str]]] = []
    if _zstd is not None and missing:
        # Cold or mostly-missing packs go as one GET each; a pack we mostly have, chunk by chunk.
        runs, singles = [], []
        for index, pack in enumerate(pack_plan(chunks)):
            need = [c for c in pack if c in missing_set]
            if not need:
                continue
            if sum(unique[c] for c in need) * 2 >= sum(unique[c] for c in pack):
                packs.append((index, pack))
            else:
                singles.extend(need)

    def fetch_run(run: list) -> list[tuple[str, int, int]]:
        """One Range request for consecutive chunks, split and verified chunk by chunk, written in
        place. Anything wrong (status, length, a hash) falls back to per-chunk fetches."""
        start, end = run[0][0], run[-1][0] + run[-1][1]
        status, _h, body = get_patiently(artifact_path, {"Range": f"bytes={start}-{end - 1}"}, end - start)
        out, redo = [], []
        view = memoryview(body)
        for off, size, cid in run:
            data = view[off - start:off - start + size]
            if status == 206 and len(body) == end - start and hashlib.sha256(data).hexdigest() == cid:
                place(cid, data)
                out.append((cid, size, size))
            else:
                redo.append(cid)
        return out + [fetch(cid) for cid in redo]

    if missing:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, RANGE_WORKERS))) as run_pool, \
                ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [run_pool.submit(fetch_run, run) for run in runs]
            futures += [run_pool.submit(fetch_pack, i, p) for i, p in packs]
            futures += [pool.submit(lambda c: [fetch(c)], cid) for cid in singles]
            try:
                for fut in as_completed(futures):
                    for _cid, size, wire in fut.result():
                        with lock:
                            stats.chunks_downloaded += 1
                            stats.bytes_downloaded += size
                            stats.bytes_on_wire += wire
                            done_bytes += size
                    if progress:
                        progress(done_bytes, stats.bytes_total)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    # Every chunk was verified against its id and the signed chunk list tiles the artifact exactly
    # (checked before fetching), so the assembled file is the artifact; no second full read needed.


def _fetch_deltas(cache, output, stats, http, name, artifact, chunks, missing, place, workers) -> list[str]:
    """Fetch the missing chunks as delta groups against the earlier pull output that shares most
    with this version (`netslate.images.delta`); returns the chunks still missing."""
    records = [read_json(p, None) or {} for p in sorted((cache / "seeds").glob("*.json"))] if (cache / "seeds").is_dir() else []
    base = _delta.pick_base(records, name, artifact, stats.manifest_digest, {c[2] for c in chunks})
    if base is None or not Path(str(base.get("output", ""))).is_file():
        return missing
    got = _delta.fetch_groups(http, base, chunks, set(missing), stats.manifest_digest, artifact, place, workers=min(workers, 4))
    for _cid, size, wire in got:
        stats.chunks_downloaded += 1
        stats.chunks_from_delta += 1
        stats.bytes_downloaded += size
        stats.bytes_on_wire += wire
    if got:
        stats.delta_base_version = int(base.get("version") or 0)
    done = {c for c, _s, _w in got}
    return [c for c in missing if c not in done]


PACK_BYTES = 8 * 1024 * 1024  # raw bytes per chunk pack (about 128 chunks of 64 KiB)


def pack_plan(chunks: list, max_bytes: int = PACK_BYTES) -> list[list[str]]:
    """The chunk packs of an artifact: its distinct chunk ids in first-occurrence order, cut into
    packs of at most `max_bytes` of chunk data (at least one chunk each). Client and server both
    compute it from the signed chunk list, so `/packs/NAME/VERSION/ARTIFACT/DIGEST/INDEX` names
    immutable content: a cache may keep it forever. Pure function."""
    packs: list[list[str]] = []
    seen: set[str] = set()
    size = 0
    for _off, length, cid in chunks:
        if cid in seen:
            continue
        seen.add(cid)
        if not packs or (packs[-1] and size + length > max_bytes):
            packs.append([])
            size = 0
        packs[-1].append(cid)
        size += length
    return packs


def pack_path(name: str, version: int, artifact: str, digest: str, index: int) -> str:
    """The URL path of one chunk pack (digest: the manifest digest, "sha256:HEX" or HEX)."""
    return f"/packs/{name}/{int(version)}/{artifact}/{digest.removeprefix('sha256:')}/{int(index)}"


def plan_fetches(chunks: list, missing: set, min_run: int, max_bytes: int) -> tuple[list[list], list[str]]:
    """Split missing chunks into runs of >= min_run consecutive chunks (fetched as one Range request
    each, at most max_bytes) and single chunks (fetched from /chunks/ID, zstd-compressed).

    A cold cache is one long run: few requests instead of one per ~64 KiB chunk, which is what
    limits a per-chunk pull on a Python server. A delta pull is mostly scattered single chunks,
    which keep their compressed transfer. Pure function."""
    runs: list[list] = []
    singles: list[str] = []
    taken: set[str] = set()
    cur: list = []

    def close():
        if len(cur) >= min_run:
            runs.append(list(cur))
        else:
            singles.extend(c[2] for c in cur)
        cur.clear()

    for entry in chunks:
        off, size, cid = entry
        if cid in missing and cid not in taken:
            taken.add(cid)
            if cur and (cur[-1][0] + cur[-1][1] != off or off + size - cur[0][0] > max_bytes):
                close()
            cur.append(entry)
        elif cur:
            close()
    if cur:
        close()
    return runs, singles
