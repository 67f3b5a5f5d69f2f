"""The UEFI Secure Boot path in the TFTP root: Debian's signed shim and netboot GRUB, the GRUB
configuration per machine (from the same boot decision as the iPXE script), and the kernel + initrd
of every image version those files boot (GRUB fetches them over TFTP: Debian's netboot GRUB has no
HTTP module, see grub.py).

Layout (under the TFTP root, next to tftp.py's files):

    shimx64.efi                 Debian shim-signed (/usr/lib/shim/shimx64.efi.signed): signed by Microsoft's
                                UEFI CA, carries Debian's CA; option 67 / pxe-service for arch 7 and 9
    grubx64.efi                 Debian grub-efi-amd64-signed grubnetx64.efi.signed (signed by Debian);
                                shim loads `grubx64.efi` from the directory it came from
    grub/grub.cfg               the loader (static): the machine's file by MAC, then UUID, else unknown
    grub/grub.cfg-01-<mac>      per machine; grub/grub.cfg-<uuid>; grub/netslate-unknown.cfg
    images/<name>/<version>/kernel, initrd
                                copies of the artifacts the GRUB files name (verified by size + SHA-256)

Files are written only when their content differs, each atomically; generated files and staged
artifacts no longer wanted are removed (never a file an operator put there).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from netslate.boot import grub, ipxe, tftp
from netslate.boot.decide import BootSnapshot, Decision, ScriptSettings, decide, image_boot
from netslate.errors import UserError
from netslate.fsutil import atomic_write
from netslate.names import check_name

log = logging.getLogger("netslate.secureboot")

SHIM = "shimx64.efi"
GRUB = "grubx64.efi"
SOURCES = {
    SHIM: Path("/usr/lib/shim/shimx64.efi.signed"),
    GRUB: Path("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"),
}
# Rows for `netslate boot files`: (path under the TFTP root, where it comes from, what it is for).
FILES = (
    (SHIM, "Debian shim-signed", "UEFI Secure Boot, first stage (option 93 arch 7/9 with efi_binary shimx64.efi)"),
    (GRUB, "Debian grub-efi-amd64-signed (grubnetx64)", "UEFI Secure Boot, second stage: shim loads it, it reads grub/"),
    (grub.LOADER, "netslate (static)", "GRUB: picks grub/grub.cfg-01-<mac> or grub/grub.cfg-<uuid>"),
    ("grub/grub.cfg-01-<mac>, grub/grub.cfg-<uuid>", "netslate (per machine)", "GRUB: the machine's boot decision"),
    ("images/<name>/<version>/kernel, initrd", "netslate (image artifacts)", "GRUB: kernel and initrd over TFTP"),
)
STAGED_LIST = "images/.netslate-staged.json"  # which artifact copies netslate put there
GRUB_ARCH = "x86_64"  # what iPXE reports as ${buildarch} on x86-64 UEFI: rules matching arch see the same
RETRY_UNKNOWN_S = 30


# ------------------------------------------------------------------------------ from a decision (pure)


def grub_text(cfg: ScriptSettings, snap: BootSnapshot, d: Decision, base: str, comments: list[str],
              wait_s: int = 30) -> str | None:
    """The GRUB file of one decision: its image, its menu, the local disk, or a wait screen (held, no
    rule, image missing). The image and arguments are the ones the iPXE script of `d` boots."""
    if d.kind == "local":
        return grub.render_local(comments)
    if d.kind == "image" and d.image and d.version is not None:
        t = snap.target(d.image, str(d.version))
        prof = _profile(snap, d)
        b = image_boot(cfg, t, prof, base)
        entry = grub.GrubEntry("ns_boot", b.title, grub.path_of_url(b.kernel_url),
                               grub.path_of_url(b.initrd_url) if b.initrd_url else None, b.args)
        return grub.render_boot(entry, comments + [f"image {b.title}" + (" (pinned)" if d.pinned else "")],
                                local_fallback=prof.get("mode") == "cache")
    if d.kind == "menu" and d.image:
        prof = _profile(snap, d)
        entries = []
        for v in snap.versions(d.image):
            t = snap.target(d.image, str(v["version"]))
            if t.error:
                continue
            b = image_boot(cfg, t, prof, base)
            tags = sorted(v.get("tags") or [])
            title = f"{b.title}" + (f" [{', '.join(tags)}]" if tags else "") + (" *" if t.version == d.version else "")
            entries.append(grub.GrubEntry(f"ns_v{int(t.version)}", grub.safe_text(title), grub.path_of_url(b.kernel_url),
                                          grub.path_of_url(b.initrd_url) if b.initrd_url else None, b.args))
        default = f"ns_v{int(d.version)}" if d.version is not None else None
        return grub.render_menu(f"{d.image} - choose a version", entries, default, comments=comments)
    why = d.detail or d.kind
    return grub.render_wait([grub.safe_text(f"cannot boot here: {why}")], wait_s, comments)


def _profile(snap: BootSnapshot, d: Decision) -> dict:
    prof = snap.profiles.get(d.profile or "") or {}
    return prof if prof.get("kind") in ("image", "menu") else {"mode": "ram", "args": [], "console": None}


def grub_files(engine, base: str) -> dict[str, str]:
    """{path under the TFTP root: text}: the loader, the unknown-machine file, and one file per MAC and
    per UUID of every known machine, each from decide() with what the machine would send through iPXE
    on x86-64 UEFI (arch x86_64, platform efi). Held and unmatched machines get a wait file that reads
    the loader again, so an approval or a new rule takes effect on the next refresh."""
    base = ipxe.base_url(base)
    snap = engine.snapshot()
    files = {grub.LOADER: grub.render_loader(RETRY_UNKNOWN_S), grub.UNKNOWN: grub.render_unknown(RETRY_UNKNOWN_S)}
    for m, macs in engine.reader.machines_with_macs():
        for mac in macs:
            q = {"mac": mac, "uuid": m.uuid, "arch": GRUB_ARCH, "platform": "efi"}
            d = decide(engine.settings, snap, m, q, base)  # the site comes from the machine's label
            comments = [f"netslate GRUB file for machine {m.id} (mac {mac})",
                        f"{d.kind}: rule {d.rule or '-'}, profile {d.profile or '-'}"]
            try:
                text = grub_text(engine.settings, snap, d, base, comments)
            except ipxe.UnsafeValue as exc:  # one bad row must not stop the others
                log.error("no GRUB file for machine %s: %s", m.id, exc)
                continue
            files[grub.mac_filename(mac)] = text
            if m.uuid and macs.index(mac) == 0:  # the UUID file follows the first MAC's decision
                files[grub.uuid_filename(m.uuid)] = text
    return files


def artifacts_named(files: dict[str, str]) -> set[str]:
    """The TFTP paths the GRUB files load (/images/N/V/kernel ...)."""
    out = set()
    for text in files.values():
        for line in text.splitlines():
            parts = line.strip().split()
            if len(parts) >= 2 and parts[0] in ("linux", "initrd"):
                out.add(grub.tftp_path(parts[1]))
    return out


# ------------------------------------------------------------------------------ I/O


def install_loaders(root: Path) -> list[str]:
    """Copy shim and GRUB into the TFTP root (as they are: their signatures are what the firmware checks)."""
    missing = [str(src) for src in SOURCES.values() if not src.exists()]
    if missing:
        raise UserError(f"Secure Boot loaders missing: {', '.join(missing)} (install Debian shim-signed, grub-efi-amd64-signed)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for name, src in SOURCES.items():
        data = src.read_bytes()
        if not tftp.same_content(root / name, data):
            atomic_write(root / name, data)
            written.append(name)
    return written


def write_grub(root: Path, files: dict[str, str]) -> list[str]:
    """Write {grub/...: text}; remove generated grub/ files no longer wanted. Returns paths changed."""
    return tftp.write_generated(root, "grub", files, grub.GENERATED_MARK)


def _artifact_parts(path: str) -> tuple[str, str, str]:
    parts = path.strip("/").split("/")
    if len(parts) != 4 or parts[0] != "images" or parts[3] not in ("kernel", "initrd") or not parts[2].isdigit():
        raise UserError(f"not an image artifact path: {path!r:.80}")
    return check_name(parts[1], "image name"), parts[2], parts[3]


def stage_artifacts(root: Path, library, paths: set[str]) -> list[str]:
    """Copy each named artifact out of the image library into the TFTP root (streamed, checked
    against the manifest's SHA-256, renamed into place); remove copies netslate staged before that
    no file names any more. Returns the paths written or removed."""
    root = Path(root)
    listing = root / STAGED_LIST
    try:
        staged = json.loads(listing.read_text())
    except (FileNotFoundError, ValueError):
        staged = {}
    changed = []
    for path in sorted(paths):
        name, version, art = _artifact_parts(path)
        _resolved, record = library.artifact_record(name, version, art)
        dest = root / path.lstrip("/")
        if staged.get(path) == record["sha256"] and dest.exists() and dest.stat().st_size == record["size"]:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".tmp-{os.getpid()}-{dest.name}"
        h = hashlib.sha256()
        try:
            with open(tmp, "wb") as f:
                for block in library.read_range(record, 0, record["size"]):
                    h.update(block)
                    f.write(block)
            if h.hexdigest() != record["sha256"]:
                raise UserError(f"{path}: assembled artifact does not match its SHA-256")
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        staged[path] = record["sha256"]
        changed.append(path)
    for path in [p for p in staged if p not in paths]:
        (root / path.lstrip("/")).unlink(missing_ok=True)
        d = (root / path.lstrip("/")).parent
        while d != root and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
            d = d.parent
        del staged[path]
        changed.append(path)
    listing.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(listing, json.dumps(staged, sort_keys=True, indent=1).encode())
    return changed


def stage(root: Path, engine, base: str) -> dict:
    """Everything the Secure Boot path needs in the TFTP root: loaders, GRUB files, artifacts."""
    root = Path(root)
    loaders = install_loaders(root)
    files = grub_files(engine, base)
    changed = write_grub(root, files)
    arts = stage_artifacts(root, engine.ctx.library, artifacts_named(files))
    return {"loaders": loaders, "grub": changed, "artifacts": arts}


def remove_staged(root: Path) -> None:
    """Drop every staged artifact copy (tests, or switching the path off)."""
    shutil.rmtree(Path(root) / "images", ignore_errors=True)
