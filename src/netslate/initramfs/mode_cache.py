"""`netslate.mode=cache`: a local disk labelled NETSLATE keeps chunks and verified versions.

Layout of the NETSLATE filesystem (mounted at /run/netslate/disk, bound to /netslate in the new root):

    pull/chunks/xx/ID     chunk cache of netslate.images.pull (verified on every use)
    versions/NAME/V.img   assembled, verified rootfs of version V (the current and the previous one)
    versions/NAME/V.json  its manifest payload + digest, written after the whole-file check
    lkg/                  the agent's last-known-good bundle (lkg/bundle.json, a signed envelope)
    persist/ENCODED       persistent paths named by netslate.persist=, bind-mounted into the new root
    boot-record.json      what was booted, from where and why (plus a short history)

At boot: ask a server for the pinned manifest; fetch only missing chunks; boot it. No server:
boot the newest verified cached version the last bundle allows, with source=cache. No usable
disk: fall back to RAM mode and say why. A disk is formatted only with netslate.disk=allow,
and only a disk that is entirely empty (no partitions, first MiB all zeros).
"""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

from netslate.initramfs import localboot, mode_ram
from netslate.initramfs import runtime as rt
from netslate.initramfs.bootargs import NoVerifiedImage
from netslate.onmachine import sitecert
from netslate.onmachine.envelope import SignatureError
from netslate.onmachine.formats import detect_format
from netslate.onmachine.fsutil import file_matches, read_json
from netslate.onmachine.manifest import stored_manifest_ok

LABEL = "NETSLATE"
DISK_PATTERNS = ("vd", "sd", "hd", "xvd", "nvme")
HISTORY = 20


# ---------------------------------------------------------------- pure helpers
def assigned_version(bundle_payload: dict | None, image: str) -> int | None:
    """The version of `image` the last-known-good bundle assigns this machine; None = no constraint.

    The bundle's `image_pin` is what the server's boot side assigned when the bundle was made (an
    explicit pin or the boot rules' answer): {"name" (or "image"), "version", ...} or "NAME@VERSION"."""
    if not isinstance(bundle_payload, dict):
        return None
    pin = bundle_payload.get("image_pin")
    if isinstance(pin, str) and "@" in pin:
        name, _, v = pin.partition("@")
        pin = {"name": name, "version": v}
    if not isinstance(pin, dict):
        return None
    if (pin.get("name") or pin.get("image")) == image and str(pin.get("version", "")).isdigit():
        return int(pin["version"])
    return None


def pick_fallback(cached: list[int], assigned: int | None) -> list[tuple[int, bool]]:
    """Cached versions to try when no server answers, best first, each with "allowed by the last bundle".

    Allowed: the assigned version, then older ones, newest first. A version newer than the
    assignment was rolled back (or not yet given to this machine): tried only when nothing allowed
    verifies, because a verified image beats the dead end."""
    ordered = sorted(set(cached), reverse=True)
    if assigned is None:
        return [(v, True) for v in ordered]
    return [(v, True) for v in ordered if v <= assigned] + [(v, False) for v in sorted(v for v in ordered if v > assigned)]


def keep_versions(current: int, last_booted: int | None, cached: list[int]) -> set[int]:
    """The current version and the previous one (the one booted before, else the newest other)."""
    keep = {current}
    if last_booted is not None and last_booted != current and last_booted in cached:
        keep.add(last_booted)
    else:
        others = sorted((v for v in cached if v != current), reverse=True)
        if others:
            keep.add(others[0])
    return keep


def persist_dir_name(path: str) -> str:
    return path.strip("/").replace("%", "%25").replace("/", "%2F")


def is_candidate_disk(name: str) -> bool:
    """Whole disks only (vda, sdb, nvme0n1), never partitions, loop, ram or optical devices."""
    if name.startswith("nvme"):
        return re.match(r"^nvme[0-9]+n[0-9]+\Z", name) is not None
    return re.match(r"^(vd|sd|hd|xvd)[a-z]+\Z", name) is not None


# ---------------------------------------------------------------- the disk
class Layout:
    def __init__(self, root: Path, image: str):
        self.root = root
        self.pull = root / "pull"
        self.versions = root / "versions" / image
        self.lkg = root / "lkg"
        self.persist = root / "persist"
        self.record = root / "boot-record.json"
        for d in (self.pull, self.versions, self.lkg, self.persist):
            d.mkdir(parents=True, exist_ok=True)

    def img(self, v: int) -> Path:
        return self.versions / f"{v}.img"

    def meta(self, v: int) -> Path:
        return self.versions / f"{v}.json"

    def cached(self) -> list[int]:
        out = []
        for p in self.versions.glob("*.json"):
            if p.stem.isdigit() and self.img(int(p.stem)).exists():
                out.append(int(p.stem))
        return out


def find_labelled() -> str | None:
    proc = rt.run(["findfs", f"LABEL={LABEL}"], timeout=30)
    dev = proc.stdout.strip()
    return dev if proc.returncode == 0 and dev.startswith("/dev/") else None


def find_empty_disk() -> str | None:
    """The first whole disk with no partitions whose first MiB is all zeros."""
    for sysdir in sorted(Path("/sys/block").glob("*")):
        name = sysdir.name
        if not is_candidate_disk(name):
            continue
        try:
            if (sysdir / "removable").read_text().strip() == "1" or (sysdir / "ro").read_text().strip() == "1":
                continue
            if int((sysdir / "size").read_text()) * 512 < 64 * 1024 * 1024:
                continue
        except (OSError, ValueError):
            continue
        if any(p.name.startswith(name) for p in sysdir.iterdir()):
            continue  # has partitions
        try:
            with open(f"/dev/{name}", "rb") as f:
                head = f.read(1024 * 1024)
        except OSError:
            continue
        if head.count(0) == len(head):
            return f"/dev/{name}"
    return None


def mkfs(dev: str) -> bool:
    rt.log(f"formatting {dev} as ext4 labelled {LABEL} (the profile allows it: netslate.disk=allow)")
    proc = rt.run(["mkfs.ext4", "-F", "-q", "-L", LABEL, "-E", "lazy_itable_init=1,lazy_journal_init=1", dev], timeout=600)
    if proc.returncode != 0:
        rt.log(f"mkfs.ext4 {dev} failed: {(proc.stderr or proc.stdout).strip()[-200:]}")
        return False
    return True


def open_disk(env: rt.Env) -> tuple[Path | None, str, str | None]:
    """Mount the NETSLATE filesystem. Returns (mount point or None, what happened, device)."""
    allow = env.args.disk_allow
    target = rt.RUN / "disk"
    dev = find_labelled()
    note = ""
    if dev:
        proc = rt.run(["e2fsck", "-p", dev], timeout=600)
        if proc.returncode >= 4:
            rt.log(f"NETSLATE disk {dev} is damaged (e2fsck exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-200:]}")
            if not allow:
                return None, f"NETSLATE disk {dev} is damaged and netslate.disk=allow is not given", dev
            if not mkfs(dev):
                return None, f"NETSLATE disk {dev} is damaged and could not be reformatted", dev
            note = f"reformatted damaged disk {dev}"
    else:
        if not allow:
            return None, "no NETSLATE disk, and the profile does not allow taking one (netslate.disk=allow)", None
        dev = find_empty_disk()
        if dev is None:
            return None, "no NETSLATE disk and no empty disk to format", None
        if localboot.is_uefi():  # GPT with an EFI system partition, so the firmware can boot the disk
            disk, dev = dev, localboot.make_uefi_layout(dev)
            if dev is None:
                return None, f"could not partition {disk} for UEFI", disk
            if not mkfs(dev):
                localboot.wipe_layout(disk)  # else a GPT without NETSLATE would never be taken again
                return None, f"could not format {dev}", dev
        elif not mkfs(dev):
            return None, f"could not format {dev}", dev
        note = f"formatted {dev}"
    try:
        rt.mount(dev, target, "ext4", "rw,noatime")
    except OSError as exc:
        rt.log(str(exc))
        if allow and mkfs(dev):
            try:
                rt.mount(dev, target, "ext4", "rw,noatime")
                return target, f"reformatted {dev} after a failed mount", dev
            except OSError as exc2:
                rt.log(str(exc2))
        return None, f"cannot mount NETSLATE disk {dev}", dev
    try:  # a disk we cannot write to is not a cache
        (target / ".probe").write_bytes(b"ok")
        (target / ".probe").unlink()
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            rt.umount(target)
            return None, f"NETSLATE disk {dev} is not writable: {exc}", dev
    return target, note, dev


# ---------------------------------------------------------------- versions
def verified_cached(layout: Layout, v: int, digest: str | None = None) -> dict | None:
    """The stored manifest of version v if its image file still matches it (and `digest` if given)."""
    meta = read_json(layout.meta(v))
    if not stored_manifest_ok(meta, digest):
        return None
    art = meta["payload"].get("artifacts", {}).get("rootfs") or {}
    if not file_matches(layout.img(v), art.get("size", -1), art.get("sha256", "")):
        rt.log(f"cached version {v} does not match its manifest; discarded")
        layout.img(v).unlink(missing_ok=True)
        layout.meta(v).unlink(missing_ok=True)
        return None
    return meta


def prune(layout: Layout, keep: set[int]) -> None:
    """Drop versions outside `keep` and chunks none of the kept versions uses."""
    used: set[str] = set()
    for v in layout.cached():
        if v not in keep:
            layout.img(v).unlink(missing_ok=True)
            layout.meta(v).unlink(missing_ok=True)
            continue
        meta = read_json(layout.meta(v)) or {}
        for _o, _s, cid in ((meta.get("payload") or {}).get("artifacts", {}).get("rootfs") or {}).get("chunks", []):
            used.add(cid)
    chunks = layout.pull / "chunks"
    if chunks.is_dir():
        for sub in chunks.iterdir():
            for f in sub.iterdir():
                if f.name not in used:
                    f.unlink(missing_ok=True)
    for p in layout.versions.glob(".pull-*"):
        p.unlink(missing_ok=True)


def update(env: rt.Env, layout: Layout, payload: dict, digest: str, last_booted: int | None) -> tuple[int, dict]:
    """Make the assigned version present and verified on disk, fetching only missing chunks.
    Returns (version, stats dict). Raises rt.FetchFailed or OSError."""
    v = int(payload["version"])
    if verified_cached(layout, v, digest):
        rt.log(f"rootfs {env.args.image}@{v} is cached and verified: downloaded 0 bytes")
        return v, {"bytes_downloaded": 0, "chunks_downloaded": 0,
                   "bytes_total": payload["artifacts"]["rootfs"]["size"], "chunks_total": len(payload["artifacts"]["rootfs"]["chunks"])}
    for attempt in range(2):
        try:
            stats, server = rt.fetch_rootfs(env, layout.pull, layout.img(v))
            break
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or attempt == 1:
                raise
            rt.log("NETSLATE disk is full; keeping only the previous version and retrying")
            prune(layout, {last_booted} if last_booted is not None else set())
    rt.log(rt.bytes_line(stats, server))
    rt.write_text(layout.meta(v), json.dumps({"payload": payload, "digest": digest, "verified_at": rt.now_iso()}))
    return v, {k: getattr(stats, k) for k in ("bytes_downloaded", "chunks_downloaded", "bytes_total", "chunks_total")}


def lkg_payload(env: rt.Env, layout: Layout) -> dict | None:
    """The last-known-good bundle's payload. With a key pinned at boot its signature must hold
    (else it is ignored); without one, the copy the agent verified and saved is taken as is."""
    bundle = read_json(layout.lkg / "bundle.json")
    if not isinstance(bundle, dict):
        return None
    key = env.key_bytes
    if key is None:
        return bundle.get("payload") if isinstance(bundle.get("payload"), dict) else None
    try:  # the root, or a site key it certified and has not revoked (the agent keeps the newest list here)
        revocations = read_json(layout.lkg / "revocations.json")
        try:
            known = sitecert.open_revocations(revocations, key) if isinstance(revocations, dict) else None
        except SignatureError:
            known = None
        return sitecert.open_signed(bundle, key, revocations=known)
    except (SignatureError, AttributeError, TypeError, ValueError) as exc:
        rt.log(f"last-known-good bundle ignored: {exc}")
        return None


def kept_metas(layout: Layout, current: int, meta: dict) -> dict[int, dict]:
    """{version: stored manifest} of the cached versions, the current one first (for local boot)."""
    out = {current: meta}
    for v in sorted(layout.cached(), reverse=True):
        m = read_json(layout.meta(v))
        if v != current and stored_manifest_ok(m):
            out[v] = m
    return out


def bind_persist(env: rt.Env, layout: Layout) -> list[str]:
    done = []
    for path in env.args.persist:
        src = layout.persist / persist_dir_name(path)
        src.mkdir(parents=True, exist_ok=True)
        dst = Path(str(rt.NEWROOT) + path)
        try:
            dst.mkdir(parents=True, exist_ok=True)
            rt.mount(str(src), dst, None, "bind")
            done.append(path)
        except OSError as exc:
            rt.log(f"persistent path {path} not kept: {exc}")
    return done


def boot(env: rt.Env) -> dict:
    a = env.args
    root, note, dev = open_disk(env)
    if root is None:
        rt.log(f"cache mode unavailable: {note}; booting in RAM")
        rec = mode_ram.boot(env, reason=f"cache mode unavailable: {note}")
        if a.persist:
            rt.log("persistent paths are not kept in RAM mode")
        return rec
    if note:
        rt.log(note)
    layout = Layout(root, a.image)
    previous = read_json(layout.record, {}) or {}
    last_booted = previous.get("version") if previous.get("image") == a.image else None
    version = meta = None
    source, reason, server, stats = "server", note, None, {}
    disk_error = False
    try:
        if not env.net:
            raise rt.FetchFailed("no network", unreachable=True)
        payload, digest, server = rt.check_manifest(env, layout.pull)
        version, stats = update(env, layout, payload, digest, last_booted)
        meta = {"payload": payload, "digest": digest}
    except rt.FetchFailed as exc:
        reason = ("server unreachable" if exc.unreachable else "server answer refused") + f": {exc}"
        rt.log(f"{reason}; trying the cached versions")
    except OSError as exc:
        disk_error = True
        reason = f"update failed on the NETSLATE disk: {exc}"
        rt.log(f"{reason}; trying the cached versions")
    if version is None:
        source = "cache"
        assigned = assigned_version(lkg_payload(env, layout), a.image)
        if assigned is not None:
            rt.log(f"last-known-good bundle assigns {a.image}@{assigned}; cached versions up to it are allowed")
        for v, allowed in pick_fallback(layout.cached(), assigned):
            meta = verified_cached(layout, v)
            if meta:
                version = v
                if not allowed:
                    reason += f"; no allowed version verifies, booting {a.image}@{v} (newer than the assigned {assigned})"
                    rt.log(f"no cached version up to {a.image}@{assigned} verifies; booting {a.image}@{v}, the only verified one")
                break
        if version is None and disk_error:
            # The server is fine, the disk is not (full, failing): RAM still gives a verified boot.
            rt.log(f"no verified cached version of {a.image}; booting in RAM")
            return mode_ram.boot(env, reason=reason)
        if version is None:
            raise NoVerifiedImage(f"cache mode: {reason}; no verified cached version of {a.image}")
    else:
        prune(layout, keep_versions(version, last_booted, layout.cached()))
    fmt = meta["payload"]["artifacts"]["rootfs"].get("format") or detect_format(layout.img(version))
    try:
        rt.mount_root(layout.img(version), fmt, a.init)
    except OSError as exc:
        raise NoVerifiedImage(f"cache mode: {exc}") from None
    kept = bind_persist(env, layout)
    try:
        (rt.NEWROOT / "netslate").mkdir(exist_ok=True)
        rt.mount(str(root), rt.NEWROOT / "netslate", None, "bind")
    except OSError as exc:
        rt.log(f"NETSLATE disk not bound at /netslate: {exc}")
    local = {"installed": None, "reason": "kept as it was (booted from the cache)"}
    if source == "server" and server:
        local = localboot.update(env, root, a.image, kept_metas(layout, version, meta), server, env.cmdline, dev)
    record = {
        "local_boot": local,
        "mode": "cache", "image": a.image, "version": version, "manifest_digest": meta["digest"],
        "source": source, "server": server, "reason": reason, "format": fmt, "disk": dev,
        "disk_mount": str(root), "lkg_dir": "/netslate/lkg", "persisted": kept,
        "cached_versions": sorted(layout.cached()), "booted_at": rt.now_iso(), **stats,
    }
    history = (previous.get("history") or [])[-(HISTORY - 1):] + [
        {k: record[k] for k in ("version", "source", "reason", "booted_at")} | {"bytes_downloaded": stats.get("bytes_downloaded", 0)}]
    rt.write_text(layout.record, json.dumps(record | {"history": history}, indent=1, sort_keys=True) + "\n")
    return record
