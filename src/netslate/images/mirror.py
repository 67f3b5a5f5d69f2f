"""Chunk mirrors (issue 15 §2): a branch server as a verified pull-through mirror of the central
chunk store.

The branch reads the catalog (versions, signed manifests, tags, boot rules) from its own standby
(docs/sites.md); what it lacks is chunks, which live only where an image was imported. A `Mirror`:

- **verifies** every manifest it uses against the pinned root (`ctx.signing_key.public_bytes`; a
  site key's chain and the newest revocation statement are checked by `sitecert.open_signed`), and
  checks that its digest is the one the catalog records;
- **fetches** a chunk only if a verified manifest lists it, from the upstream server (`GET
  /packs/...` for prefetch, `GET /chunks/ID` for one chunk), and stores it only when the
  uncompressed bytes have the manifest's size and hash to the chunk's id: a tampered or truncated
  chunk is refused, counted, and never written;
- fetches a chunk **once** when several requests want it at the same time (in this process: the
  later callers wait for the first; across `serve --workers` processes a duplicate fetch is
  harmless, the store writes atomically);
- **prefetches** every version the site's machines are assigned (`assigned_versions`) in a
  background thread: bounded (`workers` parallel packs, a time-out per request), resumable (a
  chunk already stored is never fetched again, so a pass cut short continues where it stopped),
  with per-version progress in `DATA/mirror/state.json` (read by `netslate mirror status`).

What a pass fetched and refused, and the upstream's availability, are in `status()`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from netslate.discovery import store as discovery
from netslate.errors import NotFound, Unavailable, UserError
from netslate.fsutil import atomic_write
from netslate.images.pull import MAX_MANIFEST_BYTES, PullError, _Http, pack_path, pack_plan
from netslate.images.versioning import Resolved
from netslate.inventory import store as inventory
from netslate.onmachine import sitecert
from netslate.onmachine.envelope import SignatureError, payload_digest
from netslate.onmachine.manifest import MAX_CHUNK_BYTES, ManifestError, check_chunk_list, valid_image_name, valid_ref

try:
    import zstandard as _zstd
except ImportError:  # pragma: no cover - a server always has it (the chunk store needs it)
    _zstd = None

log = logging.getLogger("netslate.mirror")

MIRROR_DIR = "mirror"
CONFIG_FILE = "config.json"  # {"upstream", "site"}: written by the server, read by `mirror status` without it
STATE_FILE = "state.json"  # per version: last sync, last error, fetched counters
PACK_KIND_RAW, PACK_KIND_ZSTD, PACK_KIND_MISSING = 0, 1, 2
DEFAULT_INTERVAL = 60.0  # seconds between prefetch passes (a pass also starts at server start)
INDEX_REFRESH_SECONDS = 2.0  # a chunk nobody's verified manifest lists: look for new versions at most this often
MAX_REASONS = 5


class MirrorRefused(UserError):
    """Upstream data that does not verify (a forged manifest, a chunk that does not hash to its id)."""

    http_status = 502


def now_iso(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


# ---------------------------------------------------------------- what the site needs


@dataclass
class Wanted:
    name: str
    version: int
    reasons: list[str] = field(default_factory=list)
    why_count: int = 0

    def because(self, reason: str) -> None:
        self.why_count += 1
        if len(self.reasons) < MAX_REASONS and reason not in self.reasons:
            self.reasons.append(reason)


def assigned_versions(ctx, engine, site: str | None) -> list[Wanted]:
    """Every image version the machines of `site` may boot (every site when None), newest first:
    - every tagged version (tags are what profiles and pins usually name, and what `pull` asks for);
    - every version an image boot profile resolves to now (rules choose among profiles);
    - every known machine of the site: the version its boot decision assigns it (`BootEngine.assignment`:
      pins, rules, site default profile), else its boot pin; the site from its `site` label, else its
      last address's discovery subnet, else `default`.
    `engine` is the boot engine (its public `snapshot`, `assignment`, `site_of_address`)."""
    out: dict[tuple[str, int], Wanted] = {}

    def add(name: str, version: int, reason: str) -> None:
        key = (name, int(version))
        w = out.get(key)
        if w is None:
            w = out[key] = Wanted(name, int(version))
        w.because(reason)

    for img in ctx.library.list_images():
        for tag, version in img["tags"].items():
            add(img["name"], version, f"tag {tag}")
    snap = engine.snapshot()
    for pname, profile in sorted(snap.profiles.items()):
        if profile.get("kind") == "image" and profile.get("image"):
            t = snap.target(profile["image"], str(profile.get("ref") or "latest"))
            if not t.error:
                add(t.name, t.version, f"profile {pname}")
    for m in inventory.list_machines(ctx):
        msite = (m.get("labels") or {}).get("site") or engine.site_of_address(snap, m.get("ip_address")) or "default"
        if site is not None and msite != site:
            continue
        label = m.get("name") or f"id:{m['id']}"
        a = engine.assignment(m["id"])
        if a is not None:
            add(a["name"], a["version"], f"{a['source']} for {label}")
        elif m["id"] in snap.pins:  # a pin the decision does not use now (a held machine, no kernel): still its version
            pin = snap.pins[m["id"]]
            add(pin[0], pin[1], f"boot pin for {label}")
    return sorted(out.values(), key=lambda w: (w.name, -w.version))


# ---------------------------------------------------------------- the mirror


def mirror_dir(ctx) -> Path:
    return Path(ctx.data_dir) / MIRROR_DIR


def read_config(ctx) -> dict:
    try:
        data = json.loads((mirror_dir(ctx) / CONFIG_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def check_upstream(url: str) -> str:
    url = (url or "").strip().rstrip("/")
    if not re.match(r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?\Z|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?\Z", url):
        raise UserError(f"--mirror-from must be an http(s)://HOST[:PORT] URL or `discovery`, got {url[:80]!r}")
    return url


def upstream_from_discovery(ctx, site: str | None) -> str:
    """The URL of a live registered server of another site (the central servers), for `--mirror-from discovery`."""
    for srv in discovery.list_servers(ctx):
        if srv["alive"] and srv["site"] != site and srv["addresses"]:
            host = srv["addresses"][0]
            return f"http://{'[' + host + ']' if ':' in host else host}:{srv['port']}"
    raise UserError("--mirror-from discovery: no live server of another site is registered (`netslate server list`)")


def serve_options(ctx, mirror_from: str, site: str | None, interval: float) -> dict:
    """Validate `netslate serve --mirror-from` into app options (UserError on bad input)."""
    if not 1 <= interval <= 86400:
        raise UserError("--mirror-interval must be 1..86400 seconds")
    upstream = upstream_from_discovery(ctx, site) if mirror_from == "discovery" else check_upstream(mirror_from)
    return {"mirror_from": upstream, "mirror_interval": float(interval)}


class Mirror:
    def __init__(self, ctx, upstream: str, site: str | None, wanted: Callable[[], list[Wanted]],
                 interval: float = DEFAULT_INTERVAL, workers: int = 2, timeout: float = 30.0, serving: bool = False):
        self.ctx = ctx
        self.serving = serving  # True in `serve --mirror-from`: the serving routes pull through it
        self.upstream = check_upstream(upstream)
        self.site = site
        self.wanted = wanted
        self.interval = float(interval)
        self.workers = max(1, int(workers))
        self.timeout = float(timeout)
        self.http = _Http(self.upstream, timeout)
        self.dir = mirror_dir(ctx)
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}
        self._verified: dict[str, dict[str, int]] = {}  # manifest digest → {chunk id: size}
        self._index: dict[str, int] = {}  # chunk id → size, over every verified manifest
        self._complete: set[str] = set()  # manifest digests a pass found whole here (gc spares a version's chunks)
        self._index_at = -INDEX_REFRESH_SECONDS
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()
        self.counters = {"upstream_requests": 0, "upstream_failures": 0, "chunks_fetched": 0, "bytes_fetched": 0,
                         "chunks_refused": 0, "manifests_refused": 0, "bytes_received": 0}
        self.pass_running = False

    # ------------------------------------------------------------ verification

    def verify(self, resolved) -> dict[str, int]:
        """{chunk id: size} of a catalog version whose manifest the pinned root vouches for; MirrorRefused otherwise."""
        digest = resolved.manifest_digest
        hit = self._verified.get(digest)
        if hit is not None:
            return hit
        try:
            payload = sitecert.open_signed(resolved.envelope, self.ctx.signing_key.public_bytes,
                                           revocations=self.ctx.latest_revocations())
        except (SignatureError, AttributeError, TypeError, KeyError) as exc:
            self._count("manifests_refused")
            raise MirrorRefused(f"mirror: manifest of {resolved.name}@{resolved.version} refused: {exc}") from None
        if payload_digest(payload) != digest or payload.get("name") != resolved.name or payload.get("version") != resolved.version:
            self._count("manifests_refused")
            raise MirrorRefused(f"mirror: manifest of {resolved.name}@{resolved.version} refused: it does not match the catalog's digest")
        sizes: dict[str, int] = {}
        try:
            for art in (payload.get("artifacts") or {}).values():
                check_chunk_list(art["chunks"], art["size"])
                for _off, size, cid in art["chunks"]:
                    sizes[cid] = int(size)
        except (ManifestError, KeyError, TypeError, ValueError) as exc:
            self._count("manifests_refused")
            raise MirrorRefused(f"mirror: manifest of {resolved.name}@{resolved.version} refused: {exc}") from None
        with self._lock:
            if len(self._verified) >= 256:
                self._verified.pop(next(iter(self._verified)))
            self._verified[digest] = sizes
            self._index.update(sizes)
        return sizes

    def _refresh_index(self) -> None:
        """Verify the manifests of every catalog version not seen yet (a chunk asked for by id alone)."""
        with self._refresh_lock:  # concurrent callers wait for the one refresh, then read the index
            if time.monotonic() - self._index_at < INDEX_REFRESH_SECONDS:
                return
            lib = self.ctx.library
            for img in lib.list_images():
                for v in img["versions"]:
                    try:
                        r = lib.resolve(img["name"], v)
                    except NotFound:
                        continue
                    if r.manifest_digest in self._verified:
                        continue
                    try:
                        self.verify(r)
                    except MirrorRefused as exc:
                        log.warning("%s", exc)
            self._index_at = time.monotonic()

    # ------------------------------------------------------------ manifests the catalog lacks

    def _manifest_file(self, name: str, version: int) -> Path:
        return self.dir / "manifests" / name / f"{int(version)}.json"

    def remote_document(self, name: str, ref: str) -> dict:
        """GET /images/NAME/REF/manifest from upstream, for a version this branch's catalog does not
        hold (yet: standby lag; or a mirror over its own database): the manifest is verified against
        the pinned root and kept in DATA/mirror/manifests, and a tag statement must name it. With
        upstream unreachable, a kept manifest still answers a numbered ref."""
        if not valid_image_name(name) or not valid_ref(ref):
            raise NotFound(f"no image {name!r} version {ref!r}")
        try:
            status, _h, body = self._get(f"/images/{name}/{ref}/manifest", limit=MAX_MANIFEST_BYTES)
        except Unavailable:
            kept = self._manifest_file(name, int(ref)) if ref.isdigit() else None
            if kept is None or not kept.exists():
                raise
            env = json.loads(kept.read_text())
            self.verify(Resolved(name, int(ref), payload_digest(env.get("payload") or {}), env))
            return {"manifest": env, "digest": payload_digest(env["payload"]), "tag": None}
        if status == 404:
            raise NotFound(f"image {name!r} has no version or tag {ref!r} (here or at {self.upstream})")
        if status != 200:
            raise Unavailable(f"mirror: upstream {self.upstream} answered HTTP {status} for {name}@{ref}'s manifest")
        try:
            doc = json.loads(body)
            env = doc["manifest"]
            payload = env["payload"]
            version = int(payload["version"])
        except (ValueError, KeyError, TypeError):
            self._count("manifests_refused")
            raise MirrorRefused(f"mirror: manifest of {name}@{ref} from {self.upstream} refused: malformed") from None
        digest = payload_digest(payload)
        if (ref.isdigit() and version != int(ref)) or doc.get("digest") != digest:
            self._count("manifests_refused")
            raise MirrorRefused(f"mirror: manifest of {name}@{ref} from {self.upstream} refused: it is not the version asked for")
        resolved = Resolved(name, version, digest, env, None if ref.isdigit() or ref == "latest" else ref)
        self.verify(resolved)  # signature under the pinned root, digest, chunk lists
        if resolved.tag:
            try:
                tag = sitecert.open_signed(doc.get("tag"), self.ctx.signing_key.public_bytes,
                                           revocations=self.ctx.latest_revocations())
            except (SignatureError, AttributeError) as exc:
                self._count("manifests_refused")
                raise MirrorRefused(f"mirror: tag statement of {name}:{ref} from {self.upstream} refused: {exc}") from None
            if tag.get("name") != name or tag.get("tag") != ref or tag.get("manifest_digest") != digest:
                self._count("manifests_refused")
                raise MirrorRefused(f"mirror: tag statement of {name}:{ref} from {self.upstream} does not name its manifest")
        kept = self._manifest_file(name, version)
        if not kept.exists():
            kept.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(kept, json.dumps(env, sort_keys=True).encode(), mode=0o600)
        return doc

    def remote_resolved(self, name: str, ref: str) -> Resolved:
        doc = self.remote_document(name, ref)
        env = doc["manifest"]
        return Resolved(name, int(env["payload"]["version"]), doc["digest"], env)

    # ------------------------------------------------------------ fetching

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def _get(self, path: str, limit: int, headers: dict | None = None) -> tuple[int, dict, bytes]:
        self._count("upstream_requests")
        try:
            status, got, body = self.http.get(path, headers, limit=limit)
        except PullError as exc:
            self._count("upstream_failures")
            raise Unavailable(f"mirror: upstream {self.upstream} unreachable: {exc}") from None
        if status >= 500:
            self._count("upstream_failures")
        self._count("bytes_received", len(body))
        return status, got, body

    def _claim(self, ids: Iterable[str]) -> tuple[list[str], list[threading.Event]]:
        """Split ids into those this caller fetches (claimed) and events of fetches already running."""
        mine, waits = [], []
        store = self.ctx.chunks
        with self._lock:
            for cid in dict.fromkeys(ids):
                if store.has(cid):
                    continue
                ev = self._inflight.get(cid)
                if ev is not None:
                    waits.append(ev)
                else:
                    self._inflight[cid] = threading.Event()
                    mine.append(cid)
        return mine, waits

    def _release(self, ids: Iterable[str]) -> None:
        with self._lock:
            for cid in ids:
                ev = self._inflight.pop(cid, None)
                if ev is not None:
                    ev.set()

    def _store(self, cid: str, size: int, kind: int, raw) -> bool:
        """Decompress, check size and hash, then store. False (and counted) when it does not verify."""
        try:
            if kind == PACK_KIND_ZSTD:
                data = _zstd.ZstdDecompressor().decompress(bytes(raw), max_output_size=size)
            elif kind == PACK_KIND_RAW:
                data = bytes(raw)
            else:
                return False
        except _zstd.ZstdError:
            data = None
        if data is None or len(data) != size or hashlib.sha256(data).hexdigest() != cid:
            self._count("chunks_refused")
            log.warning("mirror: chunk %s from %s does not verify against its manifest: refused", cid, self.upstream)
            return False
        self.ctx.chunks.put(cid, data)
        with self._lock:
            self.counters["chunks_fetched"] += 1
            self.counters["bytes_fetched"] += size
        return True

    def _fetch_one(self, cid: str, size: int) -> None:
        status, got, body = self._get(f"/chunks/{cid}", limit=MAX_CHUNK_BYTES, headers={"Accept-Encoding": "zstd"})
        if status == 404:
            raise NotFound(f"mirror: upstream {self.upstream} has no chunk {cid}")
        if status != 200:
            raise Unavailable(f"mirror: upstream {self.upstream} answered HTTP {status} for chunk {cid}")
        kind = PACK_KIND_ZSTD if got.get("content-encoding") == "zstd" else PACK_KIND_RAW  # the stored form, as we accept zstd
        if not self._store(cid, size, kind, body):
            raise MirrorRefused(f"mirror: chunk {cid} from {self.upstream} does not match its manifest: refused")

    def _fetch_pack(self, resolved, artifact: str, index: int, pack: list[str], sizes: dict[str, int]) -> set[str]:
        """One cacheable pack of the version; returns the chunks it stored (verified)."""
        limit = sum(sizes[c] for c in pack) + 5 * len(pack) + 4096
        status, _h, body = self._get(pack_path(resolved.name, resolved.version, artifact, resolved.manifest_digest, index), limit)
        done: set[str] = set()
        if status != 200:
            return done
        view, pos = memoryview(body), 0
        for cid in pack:
            if pos + 5 > len(body):
                break
            kind, length = body[pos], int.from_bytes(body[pos + 1:pos + 5], "big")
            raw = view[pos + 5:pos + 5 + length]
            pos += 5 + length
            if self.ctx.chunks.has(cid) or kind == PACK_KIND_MISSING:
                continue
            if self._store(cid, sizes[cid], kind, raw):
                done.add(cid)
        return done

    def _wait(self, waits: list[threading.Event]) -> None:
        deadline = time.monotonic() + self.timeout * 2
        for ev in waits:
            ev.wait(max(0.0, deadline - time.monotonic()))

    def ensure(self, resolved, ids: Iterable[str]) -> None:
        """Make the given chunks of a catalog version present (the serving routes call this before
        reading chunks). Nothing to do when they are; else verify the manifest and fetch the rest."""
        if resolved.manifest_digest in self._complete:
            return
        store = self.ctx.chunks
        ids = [c for c in ids if not store.has(c)]
        if not ids:
            return
        sizes = self.verify(resolved)
        unknown = [c for c in ids if c not in sizes]
        if unknown:
            raise MirrorRefused(f"mirror: chunk {unknown[0]} is not in {resolved.name}@{resolved.version}'s manifest")
        mine, waits = self._claim(ids)
        try:
            for cid in mine:
                self._fetch_one(cid, sizes[cid])
        finally:
            self._release(mine)
        self._wait(waits)
        still = [c for c in ids if not store.has(c)]
        if still:
            raise Unavailable(f"mirror: chunk {still[0]} could not be fetched from {self.upstream}")

    def pull_through(self, cid: str) -> bool:
        """A chunk asked for by id alone (GET /chunks/ID): fetched when a verified manifest lists it.
        True when it is present afterwards; False when no manifest lists it (the route answers 404)."""
        if self.ctx.chunks.has(cid):
            return True
        size = self._index.get(cid)
        if size is None:
            self._refresh_index()
            size = self._index.get(cid)
        if size is None:
            return False
        mine, waits = self._claim([cid])
        try:
            if mine:
                self._fetch_one(cid, size)
        finally:
            self._release(mine)
        self._wait(waits)
        return self.ctx.chunks.has(cid)

    # ------------------------------------------------------------ prefetch

    def _state(self) -> dict:
        try:
            data = json.loads((self.dir / STATE_FILE).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_version(self, key: str, **fields) -> None:
        with self._state_lock:
            state = self._state()
            state.setdefault("versions", {}).setdefault(key, {}).update(fields)
            atomic_write(self.dir / STATE_FILE, json.dumps(state, sort_keys=True).encode(), mode=0o600)

    def _save_pass(self, **fields) -> None:
        with self._state_lock:
            state = self._state()
            state.setdefault("pass", {}).update(fields)
            atomic_write(self.dir / STATE_FILE, json.dumps(state, sort_keys=True).encode(), mode=0o600)

    def prefetch_version(self, name: str, version: int) -> dict:
        """Fetch every missing chunk of one version (packs first, stragglers one by one)."""
        from concurrent.futures import ThreadPoolExecutor

        key = f"{name}@{version}"
        fetched_before = self.counters["bytes_fetched"]
        try:
            resolved = self.ctx.library.resolve(name, version)
            sizes = self.verify(resolved)
            store = self.ctx.chunks
            jobs = []
            for artifact, art in sorted(resolved.artifacts.items()):
                for index, pack in enumerate(pack_plan(art["chunks"])):
                    need = [c for c in pack if not store.has(c)]
                    if need:
                        # a pack we mostly lack comes whole (one cacheable GET), else its chunks one by one
                        whole = sum(sizes[c] for c in need) * 2 >= sum(sizes[c] for c in pack)
                        jobs.append((artifact, index, pack, whole))

            def run(job) -> None:
                artifact, index, pack, whole = job
                if self._stop.is_set():
                    return
                mine, waits = self._claim(pack)
                try:
                    got = self._fetch_pack(resolved, artifact, index, pack, sizes) if mine and whole else set()
                    for cid in mine:
                        if cid not in got and not store.has(cid) and not self._stop.is_set():
                            self._fetch_one(cid, sizes[cid])
                finally:
                    self._release(mine)
                self._wait(waits)

            with ThreadPoolExecutor(self.workers, thread_name_prefix="mirror") as pool:
                for f in [pool.submit(run, j) for j in jobs]:
                    f.result()
            missing = sum(1 for c in sizes if not store.has(c))
            result = {"error": None, "missing": missing}
            if missing == 0:
                self._complete.add(resolved.manifest_digest)
                self._save_version(key, last_sync=now_iso(), last_error=None, digest=resolved.manifest_digest)
            else:
                result["error"] = f"{missing} chunks still missing (stopped)"
                self._save_version(key, last_error=result["error"])
        except (UserError, OSError) as exc:
            result = {"error": str(exc), "missing": None}
            self._save_version(key, last_error=str(exc), last_error_at=now_iso())
        result["bytes_fetched"] = self.counters["bytes_fetched"] - fetched_before
        return result

    def prefetch(self) -> dict:
        """One pass over every assigned version. Returns {"versions", "errors", "bytes_fetched", "seconds"}."""
        started = time.monotonic()
        self.pass_running = True
        errors, bytes_fetched, n = [], 0, 0
        try:
            wanted = self.wanted()
            for w in wanted:
                if self._stop.is_set():
                    errors.append("stopped")
                    break
                r = self.prefetch_version(w.name, w.version)
                n += 1
                bytes_fetched += r["bytes_fetched"]
                if r["error"]:
                    errors.append(f"{w.name}@{w.version}: {r['error']}")
        except (UserError, OSError) as exc:  # e.g. the catalog is out of reach
            errors.append(str(exc))
        finally:
            self.pass_running = False
        seconds = round(time.monotonic() - started, 3)
        self._save_pass(finished_at=now_iso(), seconds=seconds, versions=n, errors=errors[:20], bytes_fetched=bytes_fetched)
        return {"versions": n, "errors": errors, "bytes_fetched": bytes_fetched, "seconds": seconds}

    # ------------------------------------------------------------ background

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / CONFIG_FILE, json.dumps({"upstream": self.upstream, "site": self.site}).encode(), mode=0o600)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="chunk-mirror", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                r = self.prefetch_exclusive()
                if r and r["errors"]:
                    log.warning("mirror pass: %d versions, %d errors (first: %s)", r["versions"], len(r["errors"]), r["errors"][0])
            except Exception as exc:  # keep the loop alive; the state file says what went wrong
                log.error("mirror pass failed: %s", exc)
            self._wake.wait(self.interval)
            self._wake.clear()

    def prefetch_exclusive(self, wait: float = 0.0) -> dict | None:
        """A pass, one at a time per data dir (threads, `serve --workers N`, a CLI `mirror sync`):
        when another pass runs, wait up to `wait` seconds for it to end, then pass; None on time-out."""
        self.dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + max(0.0, wait)
        fd = os.open(self.dir / "prefetch.lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        return None
                    time.sleep(0.2)
            return self.prefetch()
        finally:
            os.close(fd)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout * 2 + 5)

    def health(self) -> dict:
        """ok while the prefetch loop runs: an upstream out of reach (a WAN outage) is what the mirror
        is for, so it shows as `errors` of the last pass, not as an unhealthy server (/healthz 503)."""
        state = self._state().get("pass", {})
        errors = state.get("errors") or []
        return {"ok": self._thread is not None and self._thread.is_alive(), "upstream": self.upstream,
                "last_pass": state.get("finished_at"), "errors": len(errors), **self.counters}


# ---------------------------------------------------------------- status (server or not)


def status(ctx, wanted: list[Wanted], mirror: Mirror | None) -> dict:
    """Per wanted version: chunks and bytes present/missing (from this data dir's chunk store), last
    sync and last error (the state file). Works without a running server: `netslate mirror status`."""
    config = read_config(ctx)
    try:
        state = json.loads((mirror_dir(ctx) / STATE_FILE).read_text())
    except (OSError, ValueError):
        state = {}
    store = ctx.chunks
    rows = []
    for w in wanted:
        key = f"{w.name}@{w.version}"
        saved = (state.get("versions") or {}).get(key, {})
        row = {"name": w.name, "version": w.version, "digest": "", "reasons": w.reasons, "assigned_by": w.why_count,
               "chunks_total": 0, "chunks_present": 0, "chunks_missing": 0, "bytes_total": 0, "bytes_present": 0,
               "bytes_missing": 0, "complete": False, "last_sync": saved.get("last_sync"), "last_error": saved.get("last_error")}
        try:
            r = ctx.library.resolve(w.name, w.version)
        except NotFound as exc:
            row["last_error"] = str(exc)
            rows.append(row)
            continue
        row["digest"] = r.manifest_digest
        sizes: dict[str, int] = {}
        for art in r.artifacts.values():
            for _off, size, cid in art["chunks"]:
                sizes[cid] = size
        present = {c for c in sizes if store.has(c)}
        row.update(chunks_total=len(sizes), chunks_present=len(present), chunks_missing=len(sizes) - len(present),
                   bytes_total=sum(sizes.values()), bytes_present=sum(sizes[c] for c in present))
        row["bytes_missing"] = row["bytes_total"] - row["bytes_present"]
        row["complete"] = row["chunks_missing"] == 0
        rows.append(row)
    last = state.get("pass") or {}
    upstream = mirror.upstream if mirror is not None else config.get("upstream")
    return {
        "configured": bool(upstream),
        "upstream": upstream,
        "site": mirror.site if mirror is not None else config.get("site"),
        "running": mirror is not None and mirror._thread is not None and mirror._thread.is_alive(),
        "pass_running": bool(mirror and mirror.pass_running),
        "last_pass": last.get("finished_at"),
        "last_pass_seconds": last.get("seconds"),
        "last_pass_errors": last.get("errors") or [],
        "counters": dict(mirror.counters) if mirror is not None else {},
        "versions": rows,
    }
