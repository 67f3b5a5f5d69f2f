"""The TFTP root dnsmasq serves: iPXE binaries, pxelinux for legacy clients, pxelinux.cfg files.

Layout (default DATA/tftp; every file and its purpose: bootfiles.ROWS, `netslate boot files`):

    ipxe-bios/lpxelinux.0 ldlinux.c32 ipxe.lkrn pxelinux.cfg/default netslate.ipxe
                                                the loop-free BIOS loader for DHCP servers that
                                                give one option 67 to every client (bootfiles.py)

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
import re
from pathlib import Path

from netslate.boot import bootfiles
from netslate.errors import UserError
from netslate.fsutil import atomic_write

log = logging.getLogger("netslate.tftp")

SOURCES = bootfiles.sources()  # {path under the root: Debian file}; the rows live in bootfiles.ROWS
GENERATED_MARK = "# netslate: generated"


def same_content(path: Path, data: bytes) -> bool:
    """True if `path` holds exactly `data` (a missing file holds nothing): the TFTP root's writers
    (here and boot/secureboot) rewrite a file only when this is False."""
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except FileNotFoundError:
        return False


def install_binaries(root: Path, boot_url: str | None = None) -> list[str]:
    """Copy the boot loaders into the TFTP root and write the loop-free BIOS loader's config and
    script (`boot_url`: the server's boot URL, e.g. http://10.0.0.1:8080/boot.ipxe, built into the
    script as the last-resort server address). Returns the names written (changed)."""
    sources = bootfiles.sources()  # at call time: rows added after import count too
    missing = [str(src) for src in sources.values() if not src.exists()]
    if missing:
        raise UserError(f"boot loaders missing: {', '.join(missing)} (install Debian ipxe, pxelinux, syslinux-common)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    base = boot_url.rsplit("/", 1)[0] if boot_url and boot_url.endswith("/boot.ipxe") else boot_url
    items = [(name, src.read_bytes()) for name, src in sources.items()]
    items += [(name, text.encode()) for name, text in bootfiles.generated(base).items()]
    for name, data in items:
        if not same_content(root / name, data):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(root / name, data)
            written.append(name)
    return written


def write_pxelinux(root: Path, files: dict[str, str]) -> list[str]:
    """Write {relative path: text} under root/pxelinux.cfg; remove generated files no longer wanted.
    Refuses any path outside pxelinux.cfg/. Returns the paths written or removed."""
    return write_generated(root, "pxelinux.cfg", files, GENERATED_MARK)


def write_generated(root: Path, subdir: str, files: dict[str, str], mark: str) -> list[str]:
    """Write {"SUBDIR/NAME": text} under root/SUBDIR (only when changed, atomically); remove files
    there that netslate generated (they start with `mark`) and no longer wants, never an operator's
    own. Refuses any path outside SUBDIR/. Returns the paths written or removed."""
    folder = Path(root) / subdir
    folder.mkdir(parents=True, exist_ok=True)
    changed, wanted = [], set()
    for rel, text in files.items():
        parts = rel.split("/")
        if len(parts) != 2 or parts[0] != subdir or parts[1] in ("", ".", "..") or "\\" in rel or "\0" in rel:
            raise UserError(f"refusing file outside {subdir}/: {rel!r:.80}")
        wanted.add(parts[1])
        data = text.encode()
        if not same_content(folder / parts[1], data):
            atomic_write(folder / parts[1], data)
            changed.append(rel)
    for p in folder.iterdir():
        if p.name in wanted or not p.is_file() or p.name.startswith(".tmp-"):
            continue
        try:
            head = p.read_bytes()[:64].decode("utf-8", "replace")
        except OSError:
            continue
        if head.startswith(mark):
            p.unlink()
            changed.append(f"{subdir}/{p.name}")
    return changed


def populate(root: Path, engine=None, base_url: str | None = None) -> dict:
    """Binaries and the BIOS loader, plus pxelinux.cfg files when a boot engine and a base URL are given."""
    root = Path(root)
    written = install_binaries(root, base_url)
    pxe: list[str] = []
    if engine is not None and base_url:
        try:
            pxe = write_pxelinux(root, engine.pxelinux_files(base_url))
        except Exception as exc:  # a bad row must not stop TFTP; the binaries are in place
            log.error("pxelinux.cfg not updated: %s", exc)
    return {"root": str(root), "binaries": written, "pxelinux": pxe}


def listing(root: Path) -> dict:
    """What the TFTP root serves: every bootfiles row (present or not, size, sha256), then the
    per-machine pxelinux.cfg files that are there now. For `netslate boot files`."""
    root = Path(root)
    files = []
    for r in list(bootfiles.ROWS) + list(bootfiles.PATTERNS):
        entry = {"path": r.path, "package": r.package, "firmware": r.firmware, "purpose": r.purpose,
                 "option67": r.option67, "loops_with_plain_dhcp": r.loops_with_plain_dhcp,
                 "source": str(r.source) if r.source else None, "present": False, "size": None, "sha256": None}
        if "<" not in r.path:
            p = root / r.path
            if p.is_file():
                data = p.read_bytes()
                entry.update(present=True, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        files.append(entry)
    machines = []
    for sub, prefix in (("pxelinux.cfg", ""), ("grub", "grub.cfg-")):
        d = root / sub
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.is_file() and p.name != "default" and p.name.startswith(prefix) and p.name != "grub.cfg" \
                        and not p.name.startswith(".tmp-"):
                    machines.append(f"{sub}/{p.name}")
    return {"root": str(root), "files": files, "per_machine": machines}


_SENT = re.compile(r"dnsmasq-tftp(?:\[\d+\])?: sent (\S+) to (\S+)\s*$")


def sent_files(log_path: Path, root: Path, max_bytes: int = 4 << 20) -> list[tuple[str, str]]:
    """(file under the TFTP root, client address) for every TFTP transfer in dnsmasq's log, oldest first
    (its last `max_bytes`)."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    prefix = str(Path(root).resolve()).rstrip("/") + "/"
    out = []
    for line in text.splitlines():
        m = _SENT.search(line)
        if m:
            f = m.group(1)
            out.append((f[len(prefix):] if f.startswith(prefix) else f.lstrip("/"), m.group(2)))
    return out


def machine_file(root: Path, path: str, macs: list[str], uuid: str | None) -> dict | None:
    """The per-machine file a TFTP path reads next (pxelinux: pxelinux.cfg/01-<mac> then <uuid>;
    GRUB: grub/grub.cfg-01-<mac> then -<uuid>) and the image it names: {file, image, local} or None."""
    names = [bootfiles._macfile(m) for m in macs] + ([uuid.lower()] if uuid else [])
    if path == "pxelinux":
        candidates = [f"pxelinux.cfg/{n}" for n in names] + ["pxelinux.cfg/default"]
    elif path == "grub":
        candidates = [f"grub/grub.cfg-{n}" for n in names]
    else:
        return None
    for rel in candidates:
        p = Path(root) / rel
        if p.is_file():
            text = p.read_text(errors="replace")
            m = re.search(r"netslate\.image=(\S+)", text)
            menu = rel.endswith("/default")
            return {"file": rel, "image": None if menu or not m else m.group(1),
                    "local": not menu and m is None}
    return None
