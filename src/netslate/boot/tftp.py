"""The TFTP root dnsmasq serves: iPXE binaries, pxelinux for legacy clients, pxelinux.cfg files.

Layout (default DATA/tftp):

    undionly.kpxe  ipxe.efi  snponly.efi        Debian `ipxe` (/usr/lib/ipxe)
    lpxelinux.0  pxelinux.0                     Debian `pxelinux` (/usr/lib/PXELINUX); lpxelinux
                                                fetches kernel/initrd over HTTP
    ldlinux.c32  menu.c32  libutil.c32  libcom32.c32   Debian `syslinux-common`
    pxelinux.cfg/default                        menu of every image profile + local disk
    pxelinux.cfg/01-<mac>  pxelinux.cfg/<uuid>  one per known machine the rules send to an image

Files are copied or written only when their content differs, each atomically.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from netslate.errors import UserError
from netslate.fsutil import atomic_write

log = logging.getLogger("netslate.tftp")

IPXE_DIR = Path("/usr/lib/ipxe")
PXELINUX_DIR = Path("/usr/lib/PXELINUX")
SYSLINUX_BIOS_DIR = Path("/usr/lib/syslinux/modules/bios")
SOURCES = {
    "undionly.kpxe": IPXE_DIR / "undionly.kpxe",
    "ipxe.efi": IPXE_DIR / "ipxe.efi",
    "snponly.efi": IPXE_DIR / "snponly.efi",
    "lpxelinux.0": PXELINUX_DIR / "lpxelinux.0",
    "pxelinux.0": PXELINUX_DIR / "pxelinux.0",
    "ldlinux.c32": SYSLINUX_BIOS_DIR / "ldlinux.c32",
    "menu.c32": SYSLINUX_BIOS_DIR / "menu.c32",
    "libutil.c32": SYSLINUX_BIOS_DIR / "libutil.c32",
    "libcom32.c32": SYSLINUX_BIOS_DIR / "libcom32.c32",
}
GENERATED_MARK = "# netslate: generated"


def _same(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
    except FileNotFoundError:
        return False


def install_binaries(root: Path) -> list[str]:
    """Copy the boot loaders into the TFTP root. Returns the names written (changed)."""
    missing = [str(src) for src in SOURCES.values() if not src.exists()]
    if missing:
        raise UserError(f"boot loaders missing: {', '.join(missing)} (install Debian ipxe, pxelinux, syslinux-common)")
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for name, src in SOURCES.items():
        data = src.read_bytes()
        if not _same(root / name, data):
            atomic_write(root / name, data)
            written.append(name)
    return written


def write_pxelinux(root: Path, files: dict[str, str]) -> list[str]:
    """Write {relative path: text} under root/pxelinux.cfg; remove generated files no longer wanted.
    Refuses any path outside pxelinux.cfg/. Returns the paths written or removed."""
    cfg = root / "pxelinux.cfg"
    cfg.mkdir(parents=True, exist_ok=True)
    changed = []
    wanted = set()
    for rel, text in files.items():
        parts = rel.split("/")
        if len(parts) != 2 or parts[0] != "pxelinux.cfg" or parts[1] in ("", ".", "..") or "\\" in rel or "\0" in rel:
            raise UserError(f"refusing pxelinux file outside pxelinux.cfg/: {rel!r:.80}")
        wanted.add(parts[1])
        data = text.encode()
        if not _same(cfg / parts[1], data):
            atomic_write(cfg / parts[1], data)
            changed.append(rel)
    for p in cfg.iterdir():
        if p.name in wanted or not p.is_file() or p.name.startswith(".tmp-"):
            continue
        try:
            head = p.read_bytes()[:64].decode("utf-8", "replace")
        except OSError:
            continue
        if head.startswith(GENERATED_MARK):  # never delete a file an operator put there
            p.unlink()
            changed.append(f"pxelinux.cfg/{p.name}")
    return changed


def populate(root: Path, engine=None, base_url: str | None = None) -> dict:
    """Binaries, plus pxelinux.cfg files when a boot engine and a base URL are given."""
    root = Path(root)
    written = install_binaries(root)
    pxe: list[str] = []
    if engine is not None and base_url:
        try:
            pxe = write_pxelinux(root, engine.pxelinux_files(base_url))
        except Exception as exc:  # a bad row must not stop TFTP; the binaries are in place
            log.error("pxelinux.cfg not updated: %s", exc)
    return {"root": str(root), "binaries": written, "pxelinux": pxe}
