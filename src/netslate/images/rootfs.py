"""Turning a directory, tarball or image file into an uncompressed filesystem image to chunk.

We build an UNCOMPRESSED squashfs (mksquashfs -noI -noD -noF -noX): compressed squashfs defeats
chunking because a small change re-compresses whole blocks, and erofs-utils 1.5 (Debian 12) lays
files out so that a small change moves most of the image (measured: 95 % new bytes for a 5 %
change, against 12 % for uncompressed squashfs). See docs/images.md.
"""

import shutil
import struct
import tarfile
import tempfile
from pathlib import Path

from netslate.errors import UserError
from netslate.images import children
from netslate.onmachine.formats import detect_format  # the one format rule (the initramfs mounts by it)


def squashfs_is_compressed(path: Path) -> bool:
    with open(path, "rb") as f:
        sb = f.read(96)
    flags = struct.unpack_from("<H", sb, 24)[0]
    data_uncompressed = bool(flags & 0x0002)
    return not data_uncompressed


def build_squashfs(source_dir: Path, output: Path) -> None:
    """Uncompressed squashfs; squashfs sorts directory entries, so unchanged files keep their place."""
    if shutil.which("mksquashfs") is None:
        raise UserError("mksquashfs not found: install squashfs-tools (make deps does)")
    cmd = ["mksquashfs", str(source_dir), str(output), "-noI", "-noD", "-noF", "-noX",
           "-mkfs-time", "0", "-no-progress", "-quiet", "-noappend"]
    proc = children.run(cmd, capture_output=True, text=True)  # dies with us (issue 11 #6)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"mksquashfs failed: {tail[0]}")


def is_tarball(path: Path) -> bool:
    """A tar archive (plain or compressed) with at least one member. `tarfile.is_tarfile` alone
    also says yes to any file that starts with 512 zero bytes (an empty archive's end): a raw disk
    or filesystem image (btrfs, XFS, a partition table's gap) would become an empty squashfs."""
    try:
        with tarfile.open(path) as archive:
            return archive.next() is not None
    except (tarfile.TarError, OSError, EOFError):
        return False


def extract_tarball(tarball: Path, dest: Path) -> None:
    """Extract with GNU tar, keeping owners, modes, devices and xattrs (as root)."""
    if not is_tarball(tarball):
        raise UserError(f"{tarball} is not a tar archive")
    cmd = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tarball), "-C", str(dest)]
    proc = children.run(cmd, capture_output=True, text=True)  # dies with us (issue 11 #6)
    if proc.returncode != 0:
        raise UserError(f"extracting {tarball} failed: {proc.stderr.strip()[:300]}")


def prepare_rootfs(source: Path, work_dir: Path, image_name: str, warn=print) -> tuple[Path, str]:
    """Return (filesystem image file, format) for a DIR, TARBALL or IMAGEFILE source."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"rootfs source {source} does not exist")
    if source.is_dir():
        out = work_dir / "rootfs.squashfs"
        build_squashfs(source, out)
        return out, "squashfs"
    fmt = detect_format(source)
    if fmt in ("erofs", "ext4"):
        return source, fmt
    if fmt == "raw" and not is_tarball(source):
        return source, fmt
    if fmt == "squashfs":
        if squashfs_is_compressed(source):
            warn(f"warning: {source} is a compressed squashfs; compressed images defeat chunking "
                 "(later versions will share few chunks). Rebuild with mksquashfs -noI -noD -noF -noX, or import the directory.")
        return source, fmt
    tree = Path(tempfile.mkdtemp(prefix="tree-", dir=work_dir))
    extract_tarball(source, tree)
    out = work_dir / "rootfs.squashfs"
    build_squashfs(tree, out)
    shutil.rmtree(tree, ignore_errors=True)
    return out, "squashfs"
