"""Turning a directory, tarball or image file into an uncompressed filesystem image to chunk.

We build EROFS without compression (mkfs.erofs): compressed squashfs defeats chunking, because
a small change re-compresses whole blocks. See docs/images.md for the measurement.
"""

import shutil
import struct
import subprocess
import tarfile
import tempfile
import uuid
from pathlib import Path

from netslate.errors import UserError

UUID_NAMESPACE = uuid.UUID("5b6f1e0c-4c1b-4d7e-9a53-6e657473c1a7")


def detect_format(path: Path) -> str:
    """erofs | squashfs | ext4 | raw, from the superblock magic."""
    with open(path, "rb") as f:
        head = f.read(1100)
    if head[:4] == b"hsqs":
        return "squashfs"
    if len(head) >= 1028 and struct.unpack_from("<I", head, 1024)[0] == 0xE0F5E1E2:
        return "erofs"
    if len(head) >= 1082 and struct.unpack_from("<H", head, 1080)[0] == 0xEF53:
        return "ext4"
    return "raw"


def squashfs_is_compressed(path: Path) -> bool:
    with open(path, "rb") as f:
        sb = f.read(96)
    flags = struct.unpack_from("<H", sb, 24)[0]
    data_uncompressed = bool(flags & 0x0002)
    return not data_uncompressed


def build_erofs(source_dir: Path, output: Path, image_name: str) -> None:
    """Uncompressed EROFS; a UUID fixed per image name keeps the superblock stable across versions."""
    if shutil.which("mkfs.erofs") is None:
        raise UserError("mkfs.erofs not found: install erofs-utils (make deps does)")
    fs_uuid = str(uuid.uuid5(UUID_NAMESPACE, image_name))
    cmd = ["mkfs.erofs", "--quiet", f"-U{fs_uuid}", "--preserve-mtime", str(output), str(source_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"mkfs.erofs failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")


def extract_tarball(tarball: Path, dest: Path) -> None:
    """Extract with GNU tar, keeping owners, modes, devices and xattrs (as root)."""
    if not tarfile.is_tarfile(tarball):
        raise UserError(f"{tarball} is not a tar archive")
    cmd = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tarball), "-C", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"extracting {tarball} failed: {proc.stderr.strip()[:300]}")


def prepare_rootfs(source: Path, work_dir: Path, image_name: str, warn=print) -> tuple[Path, str]:
    """Return (filesystem image file, format) for a DIR, TARBALL or IMAGEFILE source."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"rootfs source {source} does not exist")
    if source.is_dir():
        out = work_dir / "rootfs.erofs"
        build_erofs(source, out, image_name)
        return out, "erofs"
    fmt = detect_format(source)
    if fmt in ("erofs", "ext4", "raw") and not tarfile.is_tarfile(source):
        return source, fmt
    if fmt == "squashfs":
        if squashfs_is_compressed(source):
            warn(f"warning: {source} is a compressed squashfs; compressed images defeat chunking "
                 "(later versions will share few chunks). Rebuild with mksquashfs -noI -noD -noF -noX, or import the directory.")
        return source, fmt
    tree = Path(tempfile.mkdtemp(prefix="tree-", dir=work_dir))
    extract_tarball(source, tree)
    out = work_dir / "rootfs.erofs"
    build_erofs(tree, out, image_name)
    shutil.rmtree(tree, ignore_errors=True)
    return out, "erofs"
