"""Delta pull: fetch an image artifact into a local cache, downloading only missing chunks.

Standard library only (plus netslate.crypto, itself stdlib-only): booting machines and the agent
run this. `zstandard` is used for compressed transfer when it happens to be importable.

Steps: fetch + verify the signed manifest (and tag statement) → find chunks already in the cache
or in an existing output file (the seed) → download the rest in parallel, verifying each → write
the output to a temp file, check its whole SHA-256, fsync, rename.
"""

import base64
import hashlib
import http.client
import json
import os
import re
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from netslate.crypto.envelope import SignatureError, fingerprint, open_envelope, parse_public_key, payload_digest

try:  # optional: compressed transfer
    import zstandard as _zstd
except ImportError:  # pragma: no cover - exercised on machines without it
    _zstd = None

try:  # optional: re-chunk a seed file we have no record of (needs pyfastcdc)
    from netslate.images.chunker import cut_file as _cut_file
except ImportError:  # pragma: no cover
    _cut_file = None

_CHUNK_ID = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_CHUNK_BYTES = 16 * 1024 * 1024


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

    def __init__(self, base_url: str, timeout: float):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise PullError(f"server URL must be http(s)://HOST[:PORT], got {base_url!r}")
        self.scheme, self.host, self.port = u.scheme, u.hostname, u.port
        self.prefix = u.path.rstrip("/")
        self.timeout = timeout
        self.base_url = base_url.rstrip("/")
        self._local = threading.local()

    def _conn(self):
        c = getattr(self._local, "conn", None)
        if c is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            c = cls(self.host, self.port, timeout=self.timeout)
            self._local.conn = c
        return c

    def get(self, path: str, headers: dict | None = None, limit: int = MAX_CHUNK_BYTES) -> tuple[int, dict, bytes]:
        for attempt in range(2):  # one silent retry for a keep-alive connection the server closed
            c = self._conn()
            try:
                c.request("GET", self.prefix + path, headers=headers or {})
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


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return default


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
    _atomic_write(pinned_file, base64.b64encode(served) + b"\n")
    return served


def fetch_manifest(http: _Http, cache: Path, key: bytes, name: str, ref: str) -> tuple[dict, str]:
    """Fetch, verify and return (manifest payload, digest). Refuses forged, truncated or replayed data."""
    status, _h, body = http.get(f"/images/{name}/{ref}/manifest", limit=MAX_MANIFEST_BYTES)
    if status == 404:
        raise PullError(f"server has no image {name}@{ref}")
    if status != 200:
        raise PullError(f"manifest fetch failed: HTTP {status}")
    try:
        doc = json.loads(body)
    except ValueError:
        raise PullError("manifest is not valid JSON (truncated or corrupt)") from None
    try:
        payload = open_envelope(doc.get("manifest"), key)
    except (SignatureError, AttributeError) as exc:
        raise PullError(f"manifest refused: {exc}") from None
    if payload.get("name") != name or (ref.isdigit() and payload.get("version") != int(ref)):
        raise PullError(f"manifest refused: it is for {payload.get('name')}@{payload.get('version')}, not {name}@{ref}")
    digest = payload_digest(payload)
    if not ref.isdigit() and ref != "latest":
        try:
            tag = open_envelope(doc.get("tag"), key)
        except (SignatureError, AttributeError) as exc:
            raise PullError(f"tag statement refused: {exc}") from None
        if tag.get("name") != name or tag.get("tag") != ref or tag.get("manifest_digest") != digest:
            raise PullError("tag statement does not match the manifest")
        tags_file = cache / "tags.json"
        seen = _read_json(tags_file, {})
        slot = f"{fingerprint(key)}|{name}|{ref}"
        if int(tag.get("seq", -1)) < int(seen.get(slot, -1)):
            raise PullError(f"replayed tag refused: {name}:{ref} seq {tag.get('seq')} is older than the {seen[slot]} already seen")
        seen[slot] = int(tag["seq"])
        _atomic_write(tags_file, json.dumps(seen, sort_keys=True).encode())
    return payload, digest


def _seed_candidates(cache: Path, output: Path, artifact_chunks: list) -> dict[str, tuple[int, int]]:
    """Where chunks might sit in an existing output file: offsets recorded at the last pull, plus the
    new manifest's own offsets (an unchanged prefix). Returns {chunk_id: (offset, size)} to verify."""
    found: dict[str, tuple[int, int]] = {}
    record = _read_json(cache / "seeds" / (hashlib.sha256(str(output).encode()).hexdigest() + ".json"), None)
    if record and isinstance(record.get("chunks"), list):
        for off, size, cid in record["chunks"]:
            found.setdefault(cid, (off, size))
    elif _cut_file is not None:
        for piece in _cut_file(output):
            found.setdefault(piece.chunk_id, (piece.offset, piece.size))
    for off, size, cid in artifact_chunks:
        found.setdefault(cid, (off, size))
    return found


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
) -> PullStats:
    """Pull NAME@REF's artifact into `output`. `progress(done_bytes, total_bytes)` is called as work completes."""
    started = time.monotonic()
    if not _NAME.match(name) or ".." in name:
        raise PullError(f"invalid image name {name!r}")
    if not (ref.isdigit() or (_NAME.match(ref) and ".." not in ref)):
        raise PullError(f"invalid version or tag {ref!r}")
    cache = Path(cache_dir)
    output = Path(output).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    http = _Http(server, timeout)
    key = resolve_trust(http, cache, trust)
    payload, digest = fetch_manifest(http, cache, key, name, ref)
    art = payload["artifacts"].get(artifact)
    if art is None:
        raise PullError(f"{name}@{payload['version']} has no {artifact}")
    chunks = art["chunks"]
    for entry in chunks:
        if not (isinstance(entry, list) and len(entry) == 3 and _CHUNK_ID.match(str(entry[2]))):
            raise PullError("manifest has a malformed chunk entry")
    stats = PullStats(name=name, version=payload["version"], artifact=artifact, manifest_digest=digest,
                      bytes_total=art["size"], chunks_total=len(chunks), output=str(output), key=fingerprint(key))
    unique: dict[str, int] = {}
    for _off, size, cid in chunks:
        unique.setdefault(cid, size)

    def cached_ok(cid: str) -> bool:
        p = _chunk_path(cache, cid)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            return False
        if hashlib.sha256(data).hexdigest() == cid:
            return True
        p.unlink(missing_ok=True)  # corrupt cache entry: fetch it again
        stats.chunks_refetched += 1
        stats.events.append(f"corrupt cached chunk {cid[:12]} discarded")
        return False

    have = {cid for cid in unique if cached_ok(cid)}
    # Seed from an existing output file (e.g. the previous version): verify each candidate by hash.
    if output.exists() and len(have) < len(unique):
        candidates = _seed_candidates(cache, output, chunks)
        with open(output, "rb") as f:
            for cid in unique:
                if cid in have or cid not in candidates:
                    continue
                off, size = candidates[cid]
                f.seek(off)
                data = f.read(size)
                if len(data) == size and hashlib.sha256(data).hexdigest() == cid:
                    _atomic_write(_chunk_path(cache, cid), data)
                    have.add(cid)
                    stats.chunks_from_seed += 1
    stats.chunks_reused = len(have)
    stats.bytes_reused = sum(unique[c] for c in have)
    missing = [c for c in unique if c not in have]
    done_bytes = stats.bytes_reused
    if progress:
        progress(done_bytes, stats.bytes_total)
    lock = threading.Lock()
    accept = {"Accept-Encoding": "zstd"} if _zstd is not None else {}

    def fetch(cid: str) -> tuple[str, int, int]:
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
                        _atomic_write(_chunk_path(cache, cid), data)
                        return cid, len(data), wire
                    last = f"chunk {cid[:12]} failed verification"
                elif status == 404:
                    raise PullError(f"server is missing chunk {cid}")
                else:
                    last = f"chunk {cid[:12]}: HTTP {status}"
            if attempt < retries:
                time.sleep(min(0.2 * 2**attempt, 2.0))
        raise PullError(f"{last} (after {retries + 1} attempts); no output written")

    if missing:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(fetch, cid) for cid in missing]
            try:
                for fut in as_completed(futures):
                    _cid, size, wire = fut.result()
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
    _assemble(cache, output, chunks, art["size"], art["sha256"])
    seeds = cache / "seeds"
    _atomic_write(seeds / (hashlib.sha256(str(output).encode()).hexdigest() + ".json"),
                  json.dumps({"output": str(output), "name": name, "version": payload["version"], "chunks": chunks}).encode())
    stats.seconds = time.monotonic() - started
    return stats


def _assemble(cache: Path, output: Path, chunks: list, size: int, sha256: str) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pull-", dir=output.parent)
    whole = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for _off, csize, cid in chunks:
                data = _chunk_path(cache, cid).read_bytes()
                if len(data) != csize or hashlib.sha256(data).hexdigest() != cid:
                    _chunk_path(cache, cid).unlink(missing_ok=True)
                    raise PullError(f"cached chunk {cid[:12]} changed during the pull; run again")
                whole.update(data)
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if whole.hexdigest() != sha256:
            raise PullError("assembled artifact does not match the manifest's sha256")
        if os.path.getsize(tmp) != size:
            raise PullError("assembled artifact has the wrong size")
        os.replace(tmp, output)
        dfd = os.open(output.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
